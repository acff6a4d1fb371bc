//! Bad set-ups are clear errors: a busy port, no root, no kernel BTF each end the daemon with one
//! line that says what is wrong.

use std::process::Command;
use std::time::Duration;

use observer_e2e::daemon::observer_bin;
use observer_e2e::net::free_port;
use observer_e2e::processes::{read_all, wait_timeout};

/// Run `wrapper... observer daemon --listen <listen>` and collect its exit code and stderr.
fn run_daemon(wrapper: &[&str], listen: &str) -> (i32, String) {
    let bin = observer_bin();
    let mut args: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
    args.push(bin.display().to_string());
    args.extend(["daemon", "--listen", listen].map(String::from));
    run(&args)
}

/// Run a shell script (that execs the daemon) in a private mount namespace.
fn run_in_mount_namespace(script: &str) -> (i32, String) {
    let args = ["unshare", "-m", "--propagation", "private", "sh", "-c", script].map(String::from);
    run(&args)
}

fn run(args: &[String]) -> (i32, String) {
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]);
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("the daemon should exit on its own");
    let stderr = read_all(child.stderr.take().unwrap());
    (status.code().unwrap_or(-1), stderr)
}

fn assert_one_line_error(code: i32, stderr: &str, needle: &str) {
    assert_eq!(code, 1, "exit code; stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("observer: ")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].contains(needle), "{:?} should mention {needle:?}", errors[0]);
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (code, stderr) = run_daemon(&[], &addr);
    assert_one_line_error(code, &stderr, &format!("cannot listen on {addr}"));
    assert!(stderr.contains("Address already in use"), "{stderr}");
}

#[test]
fn not_root_is_a_clear_error() {
    let listen = format!("127.0.0.1:{}", free_port());
    let (code, stderr) = run_daemon(&["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], &listen);
    assert_one_line_error(code, &stderr, "permission denied");
}

/// In a private mount namespace, the kernel's BTF hidden: the socket hooks are BTF tracepoints
/// and cannot be attached.
#[test]
fn missing_kernel_btf_is_a_clear_error() {
    let listen = format!("127.0.0.1:{}", free_port());
    let bin = observer_bin();
    let script =
        format!("mount --bind /dev/null /sys/kernel/btf/vmlinux && exec {} daemon --listen {listen}", bin.display());
    let (code, stderr) = run_in_mount_namespace(&script);
    assert_one_line_error(code, &stderr, "observer needs the kernel's BTF");
    // It names the kernel and the ones observer runs on.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(stderr.contains(&format!("which kernel {} lacks", release.trim())), "{stderr}");
    assert!(stderr.contains("observer runs on Linux 5.10 or later with BTF"), "{stderr}");
}
