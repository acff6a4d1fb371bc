use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Builds the eBPF object (`observer-ebpf`) with its nightly (observer-ebpf/rust-toolchain.toml)
/// and bpf-linker; `src/kernel/mod.rs` embeds it.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "observer-ebpf")
        .ok_or_else(|| anyhow!("observer-ebpf package not found"))?;
    let cargo_metadata::Package { name, manifest_path, .. } = ebpf_package;
    // The daemon's `bench` feature builds the kernel object with the benchmark's programs.
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_BENCH").is_some() { &["bench"] } else { &[] };
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path.parent().ok_or_else(|| anyhow!("no parent for {manifest_path}"))?.as_str(),
        features,
        ..Default::default()
    };
    let toolchain_file = format!("{}/rust-toolchain.toml", ebpf_package.root_dir);
    println!("cargo:rerun-if-changed={toolchain_file}");
    let channel = toolchain_channel(&std::fs::read_to_string(&toolchain_file).context("reading the eBPF toolchain")?)
        .ok_or_else(|| anyhow!("no channel in {toolchain_file}"))?;
    aya_build::build_ebpf([ebpf_package], Toolchain::Custom(&channel))?;
    // With AYA_BUILD_SKIP=1 (unit tests of the user-space logic only) leave an empty object:
    // the daemon then refuses to start with a clear message.
    let object = std::path::Path::new(&std::env::var("OUT_DIR")?).join("observer");
    if !object.exists() {
        std::fs::write(&object, b"")?;
    }
    Ok(())
}

/// The `channel` of a rust-toolchain.toml.
fn toolchain_channel(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let value = l.trim().strip_prefix("channel")?.trim().strip_prefix('=')?.trim();
        Some(value.trim_matches('"').to_string())
    })
}
