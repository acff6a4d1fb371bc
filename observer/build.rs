use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Builds the eBPF object (`observer-ebpf`) with nightly and bpf-linker; `src/probes.rs` embeds it.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "observer-ebpf")
        .ok_or_else(|| anyhow!("observer-ebpf package not found"))?;
    let cargo_metadata::Package { name, manifest_path, .. } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path.parent().ok_or_else(|| anyhow!("no parent for {manifest_path}"))?.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::default())?;
    // With AYA_BUILD_SKIP=1 (unit tests of the user-space logic only) leave an empty object:
    // the daemon then refuses to start with a clear message.
    let object = std::path::Path::new(&std::env::var("OUT_DIR")?).join("observer");
    if !object.exists() {
        std::fs::write(&object, b"")?;
    }
    Ok(())
}
