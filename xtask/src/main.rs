//! Project tasks: `cargo xtask setup|build|run|test|bench|vmtest`.
//!
//! Every task sets up what it needs first, idempotently, so that the README's two commands
//! (`cargo xtask run`, `cargo xtask test`) work on a fresh machine.

mod bench;
mod vmtest;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "observer's build, run and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building, running and testing need (idempotent): rust-src for nightly,
    /// bpf-linker, tracefs, and the packages the end-to-end tests drive.
    Setup,
    /// Build the release binary at target/release/observer (eBPF object embedded).
    Build,
    /// Build, then run the daemon observing the whole host on 127.0.0.1:9645. Extra
    /// arguments go to `observer daemon` (e.g. `cargo xtask run -- --log-level debug`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then run every unit and end-to-end test, then the kernel matrix (`vmtest`: the smoke
    /// suite on Debian's 5.10, 6.1 and 6.12 kernels in QEMU and on the host). Needs root. Extra
    /// arguments go to `cargo test` (e.g. a test name filter), and the kernel matrix is left out.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build with the `bench` feature, then measure observer's overhead side by side with no
    /// tracer, a bpftrace script, libbpf-tools' tcplife and tcpstates and `ss -tanp` polling
    /// (needs root). Writes docs/benchmarks.md, docs/benchmarks.png and the README's overhead
    /// table. Cases: reuse (keep-alive, observer vs no tracer), keepalive, close (connection per
    /// request), interleaved (observer vs no tracer in alternating half-second windows, both
    /// workloads: the throughput targets are judged on it), profile (perf samples with and
    /// without observer: where its cost goes), scale (10,000 connections). Default: all.
    Bench {
        #[arg(value_parser = bench::CASES.to_vec())]
        cases: Vec<String>,
        /// Rounds per workload (every setup runs once per round).
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Pairs of windows per workload in the interleaved case.
        #[arg(long, default_value_t = bench::DEFAULT_PAIRS)]
        pairs: usize,
    },
    /// Build, then boot Debian's 5.10, 6.1 and 6.12 cloud kernels in QEMU and run the smoke suite
    /// (tests/vm) inside each, and on the host (needs root; installs QEMU and busybox). Default:
    /// every target. Artefacts and serial logs in target/vmtest.
    Vmtest {
        /// Targets to run (repeat, or separate with commas).
        #[arg(long = "kernel", value_delimiter = ',', num_args = 1.., value_parser = vmtest::TARGETS.to_vec())]
        kernels: Vec<String>,
        /// Accelerator: auto tries KVM with a short limit and falls back to TCG.
        #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
        accel: String,
        /// The daemon's --log-level inside the suite.
        #[arg(long, default_value = "info", value_parser = ["error", "warn", "info", "debug", "trace"])]
        log_level: String,
    },
}

/// bpf-linker version known to work with the eBPF toolchain's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Commands the end-to-end tests run, and the Debian package that has each.
const TEST_COMMANDS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("iptables", "iptables"),
    ("bpftool", "bpftool"),
    ("unshare", "util-linux"),
    ("setpriv", "util-linux"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("nginx", "nginx"),
    ("redis-server", "redis-server"),
    ("redis-benchmark", "redis-tools"),
    ("java", "openjdk-17-jdk-headless"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
];

/// Commands (or files) the benchmarks use.
const BENCH_COMMANDS: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("bpftrace", "bpftrace"),
    ("tcplife", "libbpf-tools"),
    ("tcpstates", "libbpf-tools"),
    ("bpftool", "bpftool"),
    ("taskset", "util-linux"),
    ("ss", "iproute2"),
    ("python3", "python3"),
    ("perf", "linux-perf"),
    (bench::FONT, "fonts-dejavu-core"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn step(msg: &str) {
    eprintln!("xtask: {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(cmd: &str) -> bool {
    succeeds(Command::new("sh").args(["-c", &format!("command -v {cmd}")]))
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

/// The kernel programs' toolchain, from observer-ebpf/rust-toolchain.toml (the one place it is
/// named).
fn ebpf_toolchain() -> Result<String> {
    let path = root().join("observer-ebpf/rust-toolchain.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| {
            Some(l.trim().strip_prefix("channel")?.trim().strip_prefix('=')?.trim().trim_matches('"').to_string())
        })
        .with_context(|| format!("no channel in {}", path.display()))
}

/// rust-src for the eBPF toolchain, and bpf-linker linked against its LLVM.
fn setup_build() -> Result<()> {
    let nightly = ebpf_toolchain()?;
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", &nightly, "--installed"]))
        .with_context(|| {
            format!("the {nightly} toolchain is needed to build the eBPF programs (rustup toolchain install {nightly})")
        })?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        step(&format!("adding rust-src to the {nightly} toolchain"));
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &nightly]))?;
    }
    let linker_ok = output(Command::new("bpf-linker").arg("--version")).is_ok_and(|v| v.contains(BPF_LINKER_VERSION));
    if !linker_ok {
        step(&format!("building bpf-linker {BPF_LINKER_VERSION} against {nightly}'s LLVM (about a minute)"));
        let sysroot = output(Command::new("rustc").args([&format!("+{nightly}"), "--print", "sysroot"]))?;
        let libdir = Path::new(sysroot.trim()).join("lib");
        let llvm = std::fs::read_dir(&libdir)?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
            .with_context(|| format!("no libLLVM-*.so in {}", libdir.display()))?;
        let llvm = llvm.trim_start_matches("lib").trim_end_matches(".so").to_string();
        let major = llvm.trim_start_matches("LLVM-").split(['-', '.']).next().unwrap_or("").to_string();
        let dir = libdir.display();
        run(Command::new("cargo")
            .args(["+stable", "install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked", "--force"])
            .args(["--no-default-features", "--features", &format!("llvm-{major},no-llvm-linking")])
            .env("RUSTFLAGS", format!("-L native={dir} -l dylib={llvm} -C link-arg=-Wl,-rpath,{dir}")))?;
    }
    Ok(())
}

/// tracefs mounted, for the bench's peers that attach through it (bpftrace, tcplife, tcpstates);
/// observer itself does not use it.
fn setup_runtime() -> Result<()> {
    if !Path::new("/sys/kernel/tracing/events").is_dir() && is_root() {
        step("mounting tracefs on /sys/kernel/tracing");
        run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))?;
    }
    Ok(())
}

/// Debian packages providing the commands (or, for absolute paths, files) that are missing.
fn install_commands(commands: &[(&str, &str)]) -> Result<()> {
    let present = |c: &str| if c.starts_with('/') { Path::new(c).exists() } else { have(c) };
    let mut missing: Vec<&str> = commands.iter().filter(|(c, _)| !present(c)).map(|(_, p)| *p).collect();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        step(&format!("installing {}", missing.join(" ")));
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

/// The real peers the end-to-end tests drive.
fn setup_test_deps() -> Result<()> {
    install_commands(TEST_COMMANDS)?;
    if !succeeds(Command::new("python3").args(["-c", "import requests, urllib3"])) {
        step("installing python requests");
        run(Command::new("python3").args(["-m", "pip", "install", "-q", "requests"]))?;
    }
    // deploy/kubernetes is checked against the Kubernetes OpenAPI schema, and its Prometheus
    // Operator resources against the operator's models (tests/e2e/deploy.rs).
    if !succeeds(
        Command::new("python3").args(["-c", "import kubernetes_validate, cloudcoil.models.prometheus_operator"]),
    ) {
        step("installing kubernetes-validate and the Prometheus Operator's models");
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "kubernetes-validate",
            "cloudcoil.models.prometheus_operator",
        ]))?;
    }
    Ok(())
}

/// The product: the release binary without optional features.
fn build() -> Result<PathBuf> {
    build_with(&[])
}

/// The release binary with the observer crate's `features` (the bench's is `bench`), copied to
/// `target/release/observer-<features>` so that the product's binary stays the product.
fn build_with(features: &[&str]) -> Result<PathBuf> {
    setup_build()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).args(["build", "--release", "-p", "observer"]);
    if features.is_empty() {
        step("building target/release/observer");
    } else {
        step(&format!("building target/release/observer with {}", features.join(", ")));
        cmd.args(["--features", &features.join(",")]);
    }
    run(&mut cmd)?;
    let built = root().join("target/release/observer");
    if features.is_empty() {
        return Ok(built);
    }
    let copy = root().join(format!("target/release/observer-{}", features.join("-")));
    std::fs::copy(&built, &copy).with_context(|| format!("copying {} to {}", built.display(), copy.display()))?;
    Ok(copy)
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => {
            setup_build()?;
            setup_runtime()?;
            setup_test_deps()?;
        }
        Task::Build => {
            let bin = build()?;
            step(&format!("built {}", bin.display()));
        }
        Task::Run { args } => {
            let bin = build()?;
            setup_runtime()?;
            if !is_root() {
                step("warning: the daemon needs root (or CAP_BPF and CAP_PERFMON)");
            }
            let listen_given = args.iter().any(|a| a == "--listen" || a.starts_with("--listen="));
            let mut cmd = Command::new(&bin);
            cmd.arg("daemon");
            if !listen_given {
                cmd.args(["--listen", "127.0.0.1:9645"]);
            }
            cmd.args(&args);
            step(&format!("running {cmd:?}"));
            let status = cmd.status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { args } => {
            if !is_root() {
                bail!("the end-to-end tests load eBPF programs and create network namespaces: run as root");
            }
            setup_runtime()?;
            setup_test_deps()?;
            // The bench build first: the product's build is the last one in target/release.
            let bench_bin = build_with(&["bench"])?;
            let bin = build()?;
            step("running unit and end-to-end tests");
            run(Command::new("cargo")
                .current_dir(root())
                .args(["test", "--release", "--workspace", "--exclude", "observer-ebpf"])
                .args(&args)
                .env("OBSERVER_BIN", &bin)
                .env("OBSERVER_BENCH_BIN", &bench_bin))?;
            if args.is_empty() {
                step("running the kernel matrix (cargo xtask vmtest)");
                vmtest::vmtest(&[], "auto", "info")?;
            }
        }
        Task::Vmtest { kernels, accel, log_level } => vmtest::vmtest(&kernels, &accel, &log_level)?,
        Task::Bench { cases, rounds, pairs } => {
            if !is_root() {
                bail!("the benchmarks load eBPF programs: run as root");
            }
            if rounds == 0 || pairs == 0 {
                bail!("--rounds and --pairs must be at least 1");
            }
            setup_runtime()?;
            install_commands(BENCH_COMMANDS)?;
            let bin = build_with(&["bench"])?;
            bench::run(&root(), &bin, &cases, rounds, pairs)?;
        }
    }
    Ok(())
}
