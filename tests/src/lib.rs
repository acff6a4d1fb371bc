//! Harness for observer's end-to-end tests: the real daemon against the real kernel, driven by
//! real clients and servers on loopback or in network namespaces the tests create.
//!
//! The tests need root (they load eBPF programs and create namespaces) and the release binary
//! (`cargo xtask test` builds it and sets `OBSERVER_BIN`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

pub fn observer_bin() -> PathBuf {
    let p = std::env::var_os("OBSERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/observer"));
    assert!(p.exists(), "{} does not exist: run the tests with `cargo xtask test`", p.display());
    p
}

pub fn scenario(name: &str) -> PathBuf {
    workspace_root().join("tests/scenarios").join(name)
}

/// Children die with the thread that spawned them (a test), even if the test panics.
fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    static NEXT: Mutex<u16> = Mutex::new(0);
    let mut next = NEXT.lock().unwrap();
    loop {
        // Ports handed out by one test binary never repeat, so that per-peer figures of
        // different tests never mix.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        if port != *next {
            *next = port;
            return port;
        }
    }
}

pub fn http_get(url: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut resp = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

pub fn http_get_text(url: &str) -> String {
    match http_get(url).1 {
        Value::String(s) => s,
        v => v.to_string(),
    }
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
        let port = free_port();
        let log = std::env::temp_dir().join(format!("observer-e2e-{}-{port}.log", std::process::id()));
        let logf = std::fs::File::create(&log).expect("log file");
        let listen = format!("127.0.0.1:{port}");
        let bin = observer_bin();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
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

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
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

/// A helper process (server, client, busy loop) killed when dropped.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Option<std::io::Lines<BufReader<std::process::ChildStdout>>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        die_with_parent(&mut cmd, libc::SIGKILL);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let lines = child.stdout.take().map(|o| BufReader::new(o).lines());
        Proc { child, stdin, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line of output (panics at EOF).
    pub fn line(&mut self) -> String {
        match self.lines.as_mut().and_then(|l| l.next()) {
            Some(Ok(l)) => l,
            other => {
                let status = self.child.try_wait();
                panic!("helper {} ended its output ({other:?}, status {status:?})", self.pid())
            }
        }
    }

    /// Close standard input (clients then exit) and wait.
    pub fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        wait_timeout(&mut self.child, Duration::from_secs(20)).expect("helper did not exit")
    }

    pub fn write(&mut self, s: &str) {
        self.stdin.as_mut().expect("stdin").write_all(s.as_bytes()).expect("write");
    }

    /// Send a command line to a client scenario and return its one-line answer.
    pub fn command(&mut self, cmd: &str) -> String {
        self.write(&format!("{cmd}\n"));
        self.stdin.as_mut().expect("stdin").flush().expect("flush");
        self.line()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> Command {
    Command::new("python3")
}

/// `tests/scenarios/http_server.py` on `host` with `mode`; returns (process, port).
pub fn http_server(host: &str, mode: &str) -> (Proc, u16) {
    http_server_in(None, host, mode)
}

/// `python3`, optionally run inside a network namespace.
fn python_in(netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "python3"]);
            c
        }
        None => python(),
    }
}

/// The same, optionally inside a network namespace.
pub fn http_server_in(netns: Option<&str>, host: &str, mode: &str) -> (Proc, u16) {
    let mut cmd = python_in(netns);
    cmd.arg(scenario("http_server.py")).args(["--host", host, "--port", "0", "--mode", mode]);
    spawn_http_server(cmd)
}

/// Start a `tests/scenarios/http_server.py` command line; returns (process, port) once it
/// listens.
pub fn spawn_http_server(cmd: Command) -> (Proc, u16) {
    let mut p = Proc::spawn(cmd);
    let line = p.line();
    let port = line
        .strip_prefix("LISTENING ")
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected server output {line:?}"));
    (p, port)
}

/// A client scenario of `tests/scenarios/client.py`, run (optionally) inside a network
/// namespace. Returns the process (alive until finished) and its JSON result.
pub fn client(netns: Option<&str>, args: &[&str]) -> (Proc, Value) {
    let mut cmd = python_in(netns);
    cmd.arg(scenario("client.py")).args(args);
    spawn_client(cmd)
}

/// Start a client that prints one JSON line and "DONE", then waits for its standard input to
/// close (the scenarios in `tests/scenarios`); returns the process and its JSON result.
pub fn spawn_client(cmd: Command) -> (Proc, Value) {
    let mut p = Proc::spawn(cmd);
    let result: Value = serde_json::from_str(&p.line()).expect("client JSON line");
    assert_eq!(p.line(), "DONE");
    (p, result)
}

/// A process that spins on a CPU and never touches the network.
pub fn busy_loop() -> Proc {
    let mut cmd = python();
    cmd.args(["-c", "while True: pass"]);
    Proc::spawn(cmd)
}

/// Ids of the BPF objects of one kind (`prog_id`, `link_id`) that process `pid` holds open,
/// from its file descriptors.
pub fn bpf_ids_of(pid: u32, key: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo").flatten() {
        let Ok(info) = std::fs::read_to_string(fd.path()) else { continue };
        for line in info.lines() {
            if let Some(v) = line.strip_prefix(&format!("{key}:")) {
                ids.push(v.trim().parse().unwrap());
            }
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// `recursion_misses` of the BPF program named `name` that process `pid` holds: the runs the
/// kernel skipped because the program was already running on the CPU.
pub fn recursion_misses(pid: u32, name: &str) -> u64 {
    for id in bpf_ids_of(pid, "prog_id") {
        let Some(prog) = prog_show(id) else { continue };
        if prog["name"] == name {
            return prog["recursion_misses"].as_u64().unwrap_or(0);
        }
    }
    panic!("process {pid} holds no BPF program named {name}");
}

/// `bpftool prog show` of program `id`, None if it is gone.
fn prog_show(id: u64) -> Option<Value> {
    let out = Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]).output().expect("bpftool");
    serde_json::from_slice(&out.stdout).ok()
}

/// Names of the BPF programs process `pid` holds, sorted.
pub fn prog_names_of(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = bpf_ids_of(pid, "prog_id")
        .into_iter()
        .map(|id| {
            let prog = prog_show(id).expect("bpftool prog show json");
            prog["name"].as_str().expect("program name").to_string()
        })
        .collect();
    names.sort();
    names
}

/// Number of sockets `ss -Htan <filter>` lists.
pub fn ss_count(filter: &[&str]) -> usize {
    let out = Command::new("ss").arg("-Htan").args(filter).output().expect("ss");
    assert!(out.status.success(), "ss {filter:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}

/// Run a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace with loopback up, deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("obs-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Run a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Number at a JSON path like "outbound/0/connect_failures/refused".
pub fn num(v: &Value, path: &str) -> u64 {
    let mut cur = v;
    for part in path.split('/') {
        cur = match part.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[part],
        };
    }
    cur.as_u64().unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// The outbound entry of a process document for `remote`.
pub fn outbound<'a>(doc: &'a Value, remote: &str) -> Option<&'a Value> {
    doc["outbound"].as_array()?.iter().find(|o| o["remote"] == remote)
}

/// The inbound entry of a process document for `local`.
pub fn inbound<'a>(doc: &'a Value, local: &str) -> Option<&'a Value> {
    doc["inbound"].as_array()?.iter().find(|o| o["local"] == local)
}

pub fn read_all(mut r: impl std::io::Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}

/// docs/openapi.json.
pub fn openapi() -> Value {
    let text = std::fs::read_to_string(workspace_root().join("docs/openapi.json")).expect("docs/openapi.json");
    serde_json::from_str(&text).expect("valid JSON")
}

/// Validate `body` against the documented response of `path` with `status` in `doc`
/// (docs/openapi.json), panicking with every mismatch.
pub fn check_openapi(doc: &Value, path: &str, status: u16, body: &Value) {
    let response = &doc["paths"][path]["get"]["responses"][status.to_string()];
    assert!(response.is_object(), "{path} answered {status}, which docs/openapi.json does not document");
    let schema = &response["content"]["application/json"]["schema"];
    // The schema refers to #/components/schemas/..., so validate with the whole document as
    // the root.
    let mut root = doc.clone();
    root["$ref"] = Value::String("#/$defs/__response".into());
    root["$defs"] = serde_json::json!({ "__response": schema });
    let validator = jsonschema::draft202012::new(&root).expect("docs/openapi.json schemas compile");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{path} ({status}) does not match docs/openapi.json:\n{}\n{body:#}", errors.join("\n"));
}
