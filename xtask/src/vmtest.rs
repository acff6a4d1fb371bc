//! `cargo xtask vmtest`: the smoke suite (tests/vm, the `vmsuite` binary) inside Debian's own
//! 5.10, 6.1 and 6.12 cloud kernels booted in QEMU, and directly on the host. Each VM boots a
//! busybox initramfs holding the release daemon, the suite and their libraries; its /init loads
//! the modules the daemon needs, runs the suite and powers off. Results come back on the serial
//! console, kept under target/vmtest/logs.

mod initramfs;
mod kernels;
mod qemu;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::{install_commands, is_root, output, root, run, step};
use qemu::{Accel, End, Vm};

/// The kernels: name on the command line, Debian suite that ships it.
const KERNELS: &[(&str, &str)] = &[("5.10", "bullseye"), ("6.1", "bookworm"), ("6.12", "trixie")];
/// Every target, in the order a full run takes them.
pub const TARGETS: &[&str] = &["5.10", "6.1", "6.12", "host"];

/// What the VMs are built from, and the Debian package that has it.
const HOST_COMMANDS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("openssl", "openssl"),
    ("/usr/share/keyrings/debian-archive-keyring.gpg", "debian-archive-keyring"),
];

/// Modules the cloud kernels build as modules and the daemon needs: sock_diag's TCP dumps
/// (TIME_WAIT reconciliation, the start-up snapshot, the socket table's audit).
const MODULES: &[&str] = &["inet_diag", "tcp_diag"];

/// Bounds on every wait. Under TCG a cloud kernel reaches /init in a few seconds; a probe of
/// KVM gives up sooner than a TCG boot would take on a slow machine.
const KVM_PROBE: Duration = Duration::from_secs(20);
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// The suite's own limit inside the VM, and QEMU's (the suite's plus boot and power-off).
const SUITE_LIMIT: Duration = Duration::from_secs(300);
const VM_LIMIT: Duration = Duration::from_secs(420);

/// Where the suite listens inside the VMs (nothing else runs there).
const VM_LISTEN: &str = "127.0.0.1:9645";

/// The figures of one target, from the suite's lines.
#[derive(Default)]
struct Tally {
    ok: u32,
    failed: u32,
    skipped: u32,
    /// Cases the suite could not run (the daemon did not start), from its closing line.
    not_run: u32,
    /// The suite printed its closing line.
    done: bool,
    /// Its own time, from that line.
    suite_secs: Option<f64>,
    /// Its exit status, from /init (VMs) or the process (host).
    exit: Option<i32>,
}

impl Tally {
    /// Count a line; true if it is one of the suite's or /init's (worth showing live).
    fn line(&mut self, line: &str) -> bool {
        let l = line.trim_start_matches(|c: char| c.is_control());
        if l.starts_with("ok ") {
            self.ok += 1;
        } else if l.starts_with("FAIL ") {
            self.failed += 1;
        } else if l.starts_with("skip ") {
            self.skipped += 1;
        } else if let Some(rest) = l.strip_prefix("vmsuite: done:") {
            self.done = true;
            self.not_run = rest
                .split(',')
                .find_map(|f| f.trim().strip_suffix(" not run"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            self.suite_secs = rest.rsplit_once(" in ").and_then(|(_, t)| t.trim_end_matches(" s").trim().parse().ok());
        } else if let Some(code) = l.strip_prefix("vmtest-exit:") {
            self.exit = code.trim().parse().ok();
        } else {
            return ["features:", "vmsuite:", "vmtest-", "daemon| "].iter().any(|p| l.starts_with(p));
        }
        true
    }

    fn passed(&self) -> bool {
        self.done && self.failed == 0 && self.exit == Some(0)
    }

    fn counts(&self) -> String {
        let not_run = if self.not_run > 0 { format!(", {} not run", self.not_run) } else { String::new() };
        format!("{} ok, {} failed, {} skipped{not_run}", self.ok, self.failed, self.skipped)
    }
}

/// One target's result.
struct Outcome {
    target: String,
    passed: bool,
    summary: String,
}

/// Binaries the suite runs.
struct Binaries {
    observer: PathBuf,
    suite: PathBuf,
    busybox: PathBuf,
    openssl: Option<PathBuf>,
}

/// Run the suite on `targets` (all if empty); fails if any target failed.
pub fn vmtest(targets: &[String], accel: &str, log_level: &str) -> Result<()> {
    if !is_root() {
        bail!("vmtest installs packages and runs the daemon on the host: run as root");
    }
    let targets: Vec<&str> =
        if targets.is_empty() { TARGETS.to_vec() } else { targets.iter().map(String::as_str).collect() };
    install_commands(HOST_COMMANDS)?;
    let bins = binaries()?;
    let work = root().join("target/vmtest");
    std::fs::create_dir_all(work.join("logs"))?;
    let mut accel = match accel {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ if !Path::new("/dev/kvm").exists() => Some(Accel::Tcg),
        _ => None,
    };
    let mut outcomes = Vec::new();
    for target in targets {
        let outcome = match KERNELS.iter().find(|(name, _)| *name == target) {
            Some(&(name, suite)) => in_vm(&work, name, suite, &bins, &mut accel, log_level),
            None => on_host(&work, &bins, log_level),
        }
        .unwrap_or_else(|e| Outcome { target: target.into(), passed: false, summary: format!("error: {e:#}") });
        println!("vmtest {}: {}", outcome.target, outcome.summary);
        outcomes.push(outcome);
    }
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let failed = outcomes.len() - passed;
    println!();
    for o in &outcomes {
        println!("  {:<5} {}", o.target, o.summary);
    }
    println!("vmtest: {passed} passed, {failed} failed");
    if failed > 0 {
        // The lines above say what failed; an error here would only add a backtrace.
        std::process::exit(1);
    }
    Ok(())
}

/// The release daemon and the suite, built; busybox and openssl from the host.
fn binaries() -> Result<Binaries> {
    let observer = crate::build()?;
    step("building the smoke suite (tests/vm)");
    run(Command::new("cargo").current_dir(root()).args(["build", "--release", "-p", "observer-vmtest"]))?;
    let which = |cmd: &str| -> Option<PathBuf> {
        let path = output(Command::new("sh").args(["-c", &format!("command -v {cmd}")])).ok()?;
        Some(PathBuf::from(path.trim())).filter(|p| p.is_absolute())
    };
    let busybox = which("busybox").context("busybox not found")?;
    let openssl = which("openssl");
    if openssl.is_none() {
        step("openssl is not installed: the TLS case will be skipped");
    }
    Ok(Binaries { observer, suite: root().join("target/release/vmsuite"), busybox, openssl })
}

/// Boot kernel `name` and run the suite in it. With `accel` unset, KVM is tried first, with a
/// short limit, and TCG is used from then on if it does not boot.
fn in_vm(
    work: &Path,
    name: &str,
    suite: &str,
    bins: &Binaries,
    accel: &mut Option<Accel>,
    log_level: &str,
) -> Result<Outcome> {
    let kernel = kernels::fetch(work, suite)?;
    let initrd = work.join(format!("initramfs-{name}.cpio.gz"));
    build_initramfs(&kernel, bins, log_level, &initrd)?;
    let serial = work.join("logs").join(format!("{name}.serial.log"));
    loop {
        let (mode, boot_limit) = match *accel {
            Some(a) => (a, BOOT_LIMIT),
            None => (Accel::Kvm, KVM_PROBE),
        };
        step(&format!("booting {name} ({}, {}), serial console in {}", kernel.release, mode.name(), serial.display()));
        let vm = Vm {
            vmlinuz: &kernel.vmlinuz,
            initrd: &initrd,
            serial: serial.clone(),
            accel: mode,
            boot_limit,
            limit: VM_LIMIT,
        };
        let mut tally = Tally::default();
        // The console's other lines (kernel messages), shown if the run fails.
        let mut console = Vec::new();
        let boot = vm.run(|l| {
            if tally.line(l) {
                println!("  {name}| {l}");
            } else {
                console.push(l.to_string());
            }
        })?;
        if let (None, End::NoInit(why)) = (*accel, &boot.end) {
            step(&format!("KVM did not boot {name} ({why}): falling back to TCG"));
            *accel = Some(Accel::Tcg);
            continue;
        }
        *accel = Some(mode);
        let reason = match &boot.end {
            End::Exited if !tally.done => Some("the suite did not finish (see the serial log)".to_string()),
            End::Exited => None,
            End::NoInit(why) => Some(why.clone()),
            End::TimedOut => Some(format!("QEMU killed after {VM_LIMIT:?}")),
        };
        let passed = reason.is_none() && tally.passed();
        if !passed {
            show_tail(&serial, &console);
        }
        let secs = |d: Option<Duration>| d.map_or("?".into(), |d| format!("{:.1} s", d.as_secs_f64()));
        let summary = format!(
            "{}: {}{} ({}, {}; boot {}, suite {}, total {:.1} s)",
            if passed { "passed" } else { "FAILED" },
            tally.counts(),
            reason.map(|r| format!("; {r}")).unwrap_or_default(),
            kernel.release,
            mode.name(),
            secs(boot.boot_time),
            tally.suite_secs.map_or("?".into(), |s| format!("{s:.1} s")),
            boot.wall.as_secs_f64()
        );
        return Ok(Outcome { target: name.into(), passed, summary });
    }
}

/// The last console lines of a failed run that are not the suite's (those were shown live).
fn show_tail(serial: &Path, console: &[String]) {
    println!("  --- last console lines besides the suite's, from {} ---", serial.display());
    for l in &console[console.len().saturating_sub(40)..] {
        println!("  | {l}");
    }
}

/// The VM's initramfs: busybox, the daemon, the suite, openssl, their libraries, the modules
/// and /init.
fn build_initramfs(kernel: &kernels::Kernel, bins: &Binaries, log_level: &str, out: &Path) -> Result<()> {
    let mut cpio = initramfs::Cpio::default();
    for d in ["proc", "sys", "tmp", "run", "bin", "sbin", "usr/bin", "usr/sbin", "etc"] {
        cpio.dir(d);
    }
    cpio.console();
    let mut programs = vec![
        (bins.busybox.clone(), "/bin/busybox".to_string()),
        (bins.observer.clone(), "/opt/vmtest/observer".into()),
        (bins.suite.clone(), "/opt/vmtest/vmsuite".into()),
    ];
    if let Some(openssl) = &bins.openssl {
        programs.push((openssl.clone(), "/usr/bin/openssl".into()));
        if let Some(dir) = initramfs::openssl_dir(openssl) {
            let cnf = Path::new(&dir).join("openssl.cnf");
            if cnf.exists() {
                cpio.copy(&cnf, &cnf.to_string_lossy(), 0o644)?;
            }
        }
    }
    let mut libs = std::collections::BTreeSet::new();
    for (src, dest) in &programs {
        cpio.copy(src, dest, 0o755)?;
        libs.extend(initramfs::libraries(src)?);
    }
    for lib in &libs {
        cpio.copy(lib, &lib.to_string_lossy(), 0o755)?;
    }
    let modules = initramfs::modules(&kernel.modules, MODULES, &bins.busybox)?;
    for m in &modules {
        cpio.file(&format!("/modules/{}.ko", m.name), 0o644, &m.body);
    }
    let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    cpio.file("/init", 0o755, init_script(&names, bins.openssl.is_some(), log_level).as_bytes());
    cpio.write_gz(out)
}

/// /init: mount the kernel's file systems, bring loopback up, load the modules, run the suite,
/// power off. Everything it prints goes to the serial console.
fn init_script(modules: &[&str], openssl: bool, log_level: &str) -> String {
    let insmod: String = modules
        .iter()
        .map(|m| format!("insmod /modules/{m}.ko || echo \"vmtest-init: insmod {m} failed\"\n"))
        .collect();
    let openssl = if openssl { " --openssl /usr/bin/openssl" } else { "" };
    let limit = SUITE_LIMIT.as_secs();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
[ -d /sys/kernel/tracing ] && mount -t tracefs tracefs /sys/kernel/tracing
ip link set lo up
echo "{mark} after $(cut -d' ' -f1 /proc/uptime) s of kernel uptime, $(uname -r), $(nproc) CPUs"
{insmod}echo "vmtest-init: modules loaded: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
[ -r /sys/kernel/btf/vmlinux ] || echo "vmtest-init: no /sys/kernel/btf/vmlinux"
timeout {limit} /opt/vmtest/vmsuite run --observer /opt/vmtest/observer --busybox /bin/busybox{openssl} --listen {VM_LISTEN} --log-level {log_level} --tmp /tmp/vmsuite
echo "vmtest-exit: $?"
poweroff -f
"#,
        mark = qemu::INIT_MARK,
    )
}

/// The suite directly on this machine, as root, its output in target/vmtest/logs/host.log.
fn on_host(work: &Path, bins: &Binaries, log_level: &str) -> Result<Outcome> {
    let listen = format!("127.0.0.1:{}", std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    let log_path = work.join("logs/host.log");
    let mut log = std::fs::File::create(&log_path)?;
    let tmp = work.join("host-tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let mut cmd = Command::new(&bins.suite);
    cmd.args(["run", "--observer"]).arg(&bins.observer).arg("--busybox").arg(&bins.busybox);
    if let Some(o) = &bins.openssl {
        cmd.arg("--openssl").arg(o);
    }
    cmd.args(["--listen", &listen, "--log-level", log_level, "--tmp"]).arg(&tmp);
    step(&format!("running the suite on the host, output in {}", log_path.display()));
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("starting vmsuite")?;
    let (tx, rx) = channel();
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || BufReader::new(stream).lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
    }
    drop(tx);
    let mut tally = Tally::default();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(SUITE_LIMIT.saturating_sub(started.elapsed())) {
            Ok(l) => {
                writeln!(log, "{l}")?;
                if tally.line(&l) {
                    println!("  host| {l}");
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    tally.exit = child.wait()?.code();
    let passed = !timed_out && tally.passed();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let summary = format!(
        "{}: {}{} ({}; suite {:.1} s)",
        if passed { "passed" } else { "FAILED" },
        tally.counts(),
        if timed_out { format!("; killed after {SUITE_LIMIT:?}") } else { String::new() },
        release.trim(),
        started.elapsed().as_secs_f64()
    );
    Ok(Outcome { target: "host".into(), passed, summary })
}
