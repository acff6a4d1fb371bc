//! The daemon under test: started from the release binary, its stderr kept in a file, polled
//! through its API.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::http;

/// How long the daemon may take to serve /healthz: loading the programs and reading the
/// kernel's BTF is slow under an emulated CPU.
const START_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Daemon {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Daemon {
    /// Start `observer daemon` and wait for /healthz to answer 200. On failure the error carries
    /// the daemon's whole log.
    pub fn start(observer: &Path, addr: &str, log_level: &str, log: PathBuf) -> Result<Daemon> {
        let logf = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = Command::new(observer);
        cmd.args(["daemon", "--listen", addr, "--log-level", log_level]).stdout(Stdio::null()).stderr(logf);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("spawn {}", observer.display()))?;
        let mut d = Daemon { child, addr: addr.to_string(), log };
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Some(status) = d.child.try_wait()? {
                bail!("the daemon exited with {status} before serving /healthz; its log:\n{}", d.log_text());
            }
            if matches!(http::get(addr, "/healthz"), Ok((200, _))) {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("the daemon did not serve /healthz within {START_TIMEOUT:?}; its log:\n{}", d.log_text())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/processes/{pid}`: `None` while the daemon has seen no TCP activity of it.
    pub fn process(&self, pid: u32) -> Result<Option<Value>> {
        match http::get_json(&self.addr, &format!("/api/v1/processes/{pid}"))? {
            (200, v) => Ok(Some(v)),
            (404, _) => Ok(None),
            (s, v) => bail!("GET /api/v1/processes/{pid}: HTTP {s}: {v}"),
        }
    }

    /// Every pid the daemon lists.
    pub fn pids(&self) -> Result<Vec<u32>> {
        let (status, v) = http::get_json(&self.addr, "/api/v1/processes")?;
        if status != 200 {
            bail!("GET /api/v1/processes: HTTP {status}: {v}");
        }
        let list = v.as_array().context("/api/v1/processes is not an array")?;
        Ok(list.iter().filter_map(|p| p["pid"].as_u64()).map(|p| p as u32).collect())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child is killed when the suite dies, so that no daemon or helper outlives a crashed run.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
