//! Child processes: helpers killed with the test that spawned them, bounded waits, one-shot
//! commands.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Children die with the thread that spawned them (a test), even if the test panics.
pub(crate) fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
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

pub fn read_all(mut r: impl std::io::Read) -> String {
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    s
}
