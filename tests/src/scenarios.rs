//! The clients, servers and bystanders the tests drive: the Python scenarios of
//! `tests/scenarios`, on the host or inside a network namespace.

use std::process::Command;

use serde_json::Value;

use crate::paths::scenario;
use crate::processes::Proc;

fn python() -> Command {
    Command::new("python3")
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

/// `tests/scenarios/http_server.py` on `host` with `mode`; returns (process, port).
pub fn http_server(host: &str, mode: &str) -> (Proc, u16) {
    http_server_in(None, host, mode)
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
