//! One boot of a kernel and initramfs in QEMU, serial console captured to a file, every wait
//! bounded: QEMU is killed when init does not start in time or the whole run overstays.

use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// Printed by /init as soon as it runs: the boot is over.
pub const INIT_MARK: &str = "vmtest-init: up";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Accel {
    /// Hardware virtualisation (`-cpu host`): fast where nested KVM works.
    Kvm,
    /// QEMU's emulator (`-cpu max`): slow, works everywhere.
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

pub struct Vm<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub serial: PathBuf,
    pub accel: Accel,
    /// How long the kernel may take to start /init.
    pub boot_limit: Duration,
    /// How long the whole run may take.
    pub limit: Duration,
}

/// How a boot ended.
pub enum End {
    /// QEMU exited by itself (init powered off, or the kernel panicked with `panic=-1`).
    Exited,
    /// /init did not print [`INIT_MARK`] within the boot limit (QEMU killed, or it died).
    NoInit(String),
    /// The run overstayed its limit (QEMU killed).
    TimedOut,
}

pub struct Boot {
    pub end: End,
    /// From QEMU's start to [`INIT_MARK`].
    pub boot_time: Option<Duration>,
    pub wall: Duration,
}

impl Vm<'_> {
    /// Boot, calling `line` with each serial line as it arrives; QEMU's own messages go to
    /// `<serial>.qemu`.
    pub fn run(&self, mut line: impl FnMut(&str)) -> Result<Boot> {
        let qemu_log = self.serial.with_extension("qemu");
        let _ = std::fs::remove_file(&self.serial);
        let mut child = self.spawn(&qemu_log)?;
        let started = Instant::now();
        let mut reader: Option<BufReader<std::fs::File>> = None;
        let mut boot_time = None;
        let end = loop {
            let exited = child.try_wait()?.is_some();
            if reader.is_none() {
                reader = std::fs::File::open(&self.serial).ok().map(BufReader::new);
            }
            if let Some(r) = reader.as_mut() {
                read_lines(r, exited, |l| {
                    if boot_time.is_none() && l.contains(INIT_MARK) {
                        boot_time = Some(started.elapsed());
                    }
                    line(l);
                })?;
            }
            if exited {
                break if boot_time.is_some() { End::Exited } else { End::NoInit(qemu_tail(&qemu_log)) };
            }
            if boot_time.is_none() && started.elapsed() > self.boot_limit {
                kill(&mut child);
                break End::NoInit(format!("no output from /init within {:?}", self.boot_limit));
            }
            if started.elapsed() > self.limit {
                kill(&mut child);
                break End::TimedOut;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Ok(Boot { end, boot_time, wall: started.elapsed() })
    }

    fn spawn(&self, qemu_log: &Path) -> Result<Child> {
        let cpu = match self.accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        };
        let log = std::fs::File::create(qemu_log)?;
        Command::new("qemu-system-x86_64")
            .args(["-accel", self.accel.name(), "-cpu", cpu, "-smp", "2", "-m", "1536"])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", self.serial.display()))
            .arg("-kernel")
            .arg(self.vmlinuz)
            .arg("-initrd")
            .arg(self.initrd)
            // quiet: only the kernel's errors interleave with the suite's lines.
            .args(["-append", "console=ttyS0 panic=-1 quiet random.trust_cpu=on"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting qemu-system-x86_64")
    }
}

/// The lines written since the last call; a partial last line waits for its end, unless QEMU
/// has exited (`last`).
fn read_lines(r: &mut BufReader<std::fs::File>, last: bool, mut each: impl FnMut(&str)) -> Result<()> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if !buf.ends_with(b"\n") && !last {
            r.seek(SeekFrom::Current(-(n as i64)))?;
            return Ok(());
        }
        each(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']));
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn qemu_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "QEMU exited before /init ran".into()
    } else {
        format!("QEMU exited before /init ran: {tail}")
    }
}
