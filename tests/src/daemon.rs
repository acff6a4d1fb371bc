//! The daemon under test: starting and stopping it, waiting for it, and its API.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{http_get, http_get_text};
use crate::net::free_port;
use crate::paths::workspace_root;
use crate::processes::{die_with_parent, wait_timeout};

/// The daemon as shipped: `OBSERVER_BIN`, else the workspace's release build.
pub fn observer_bin() -> PathBuf {
    let p = std::env::var_os("OBSERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/observer"));
    assert!(p.exists(), "{} does not exist: run the tests with `cargo xtask test`", p.display());
    p
}

/// The daemon built with the `bench` feature (its benchmark programs and hidden `--bench-*`
/// flags): `OBSERVER_BENCH_BIN`, which must be set. The shipped binary has neither, so the tests
/// of that scaffolding cannot run without it, and they fail rather than pass unchecked.
pub fn observer_bench_bin() -> PathBuf {
    let p = std::env::var_os("OBSERVER_BENCH_BIN").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "OBSERVER_BENCH_BIN is not set: these tests need the daemon built with the `bench` feature \
             (run them with `cargo xtask test`, which builds it and sets OBSERVER_BENCH_BIN)"
        )
    });
    assert!(p.exists(), "OBSERVER_BENCH_BIN={} does not exist: run the tests with `cargo xtask test`", p.display());
    p
}

/// A running `observer daemon`.
pub struct Daemon {
    child: Option<Child>,
    pub api: String,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(extra: &[&str]) -> Daemon {
        Daemon::start_wrapped(&[], extra)
    }

    /// Start the daemon through a wrapper command (`wrapper... observer daemon ...`), e.g. to run
    /// it in a namespace or with fewer privileges.
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Daemon {
        Daemon::spawn(&observer_bin(), wrapper, extra)
    }

    /// Start the daemon of binary `bin` (e.g. [`observer_bench_bin`]) instead of the shipped one.
    pub fn start_bin(bin: &Path, extra: &[&str]) -> Daemon {
        Daemon::spawn(bin, &[], extra)
    }

    fn spawn(bin: &Path, wrapper: &[&str], extra: &[&str]) -> Daemon {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("observer-e2e-{}-{port}.log", std::process::id()));
        let logf = std::fs::File::create(&log).expect("log file");
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(["daemon", "--listen", &listen, "--log-level", "info"]).args(extra).stdout(Stdio::null()).stderr(logf);
        die_with_parent(&mut cmd, libc::SIGTERM);
        let child = cmd.spawn().expect("spawn observer daemon");
        let d = Daemon { child: Some(child), api: format!("http://{listen}"), log };
        d.wait_healthy();
        d
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(s) = std::net::TcpStream::connect(self.api.trim_start_matches("http://")) {
                drop(s);
                if http_get(&format!("{}/healthz", self.api)).0 == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("daemon did not become healthy:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        http_get(&format!("{}{path}", self.api))
    }

    pub fn process(&self, pid: u32) -> Option<Value> {
        match self.get(&format!("/api/v1/processes/{pid}")) {
            (200, v) => Some(v),
            (404, _) => None,
            (s, v) => panic!("GET process {pid}: HTTP {s}: {v}"),
        }
    }

    pub fn metrics(&self) -> String {
        http_get_text(&format!("{}/metrics", self.api))
    }

    /// Poll the process document until `pred` holds; panic with the last document after
    /// `timeout`.
    pub fn wait_process(&self, pid: u32, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(v) = self.process(pid) {
                if pred(&v) {
                    return v;
                }
                last = Some(v);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "timed out after {timeout:?} waiting for pid {pid}: {what}\nlast document: {}",
            last.map(|v| serde_json::to_string_pretty(&v).unwrap()).unwrap_or_else(|| "404".into())
        );
    }

    /// Send `signal` and wait for the daemon to exit.
    pub fn stop_with(mut self, signal: libc::c_int) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill of our child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = wait_timeout(&mut child, Duration::from_secs(20)).expect("daemon did not exit within 20 s");
        (status, self.log_text())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            if wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// One daemon shared by the tests of a test binary, started from a thread that lives as long
/// as the binary (so that it is not killed when the first test ends).
pub fn shared_daemon() -> &'static Daemon {
    shared_daemon_with(&[])
}

/// The same, started with `args` by whichever test comes first (a test binary uses one set).
pub fn shared_daemon_with(args: &'static [&'static str]) -> &'static Daemon {
    static D: OnceLock<&'static Daemon> = OnceLock::new();
    D.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let d: &'static Daemon = Box::leak(Box::new(Daemon::start(args)));
            tx.send(d).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("daemon started")
    })
}
