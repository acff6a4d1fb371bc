//! The clients and servers the cases drive, each in a process of its own (the suite's binary
//! run as `vmsuite helper ROLE ...`), so that every figure is charged to a pid that did nothing
//! else. A helper prints `port P` or `done N` on stdout (N: its own count of what succeeded) and
//! stays alive, holding its sockets, until its stdin closes.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::daemon::die_with_parent;

/// How long a helper may take to print its next line.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);
/// Per-socket read and write timeout inside the helpers.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A running helper (or an external program such as busybox httpd), killed when dropped.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Option<Receiver<String>>,
    name: String,
}

impl Helper {
    /// `vmsuite helper ARGS...`, reporting on stdout.
    pub fn spawn(args: &[&str]) -> Result<Helper> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("helper").args(args);
        Helper::start(cmd, args.join(" "), true)
    }

    /// An external program, its stdin held open (some servers quit at end of input).
    pub fn external(cmd: Command) -> Result<Helper> {
        let name = format!("{cmd:?}");
        Helper::start(cmd, name, false)
    }

    fn start(mut cmd: Command, name: String, report: bool) -> Result<Helper> {
        cmd.stdin(Stdio::piped()).stdout(if report { Stdio::piped() } else { Stdio::null() });
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        let stdin = child.stdin.take();
        let lines = child.stdout.take().map(|out| {
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        Ok(Helper { child, stdin, lines, name })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The rest of the helper's next line, which must start with `word`.
    pub fn expect(&self, word: &str) -> Result<String> {
        let rx = self.lines.as_ref().context("this helper does not report")?;
        let line = rx
            .recv_timeout(LINE_TIMEOUT)
            .map_err(|_| anyhow::anyhow!("{}: no `{word}` line within {LINE_TIMEOUT:?}", self.name))?;
        match line.strip_prefix(word) {
            Some(rest) => Ok(rest.trim().to_string()),
            None => bail!("{}: expected `{word} ...`, got {line:?}", self.name),
        }
    }

    /// Its `done N` line, which must say `want`.
    pub fn expect_done(&self, want: &str) -> Result<()> {
        let got = self.expect("done")?;
        if got != want {
            bail!("{}: its own count is {got:?}, expected {want:?}", self.name);
        }
        Ok(())
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a helper role (in the helper's own process).
pub fn run_role(args: &[String]) -> Result<()> {
    let arg = |i: usize| args.get(i).map(String::as_str).with_context(|| format!("helper {args:?}: missing argument"));
    let num = |i: usize| -> Result<usize> { Ok(arg(i)?.parse()?) };
    match arg(0)? {
        "server" => server(arg(1)?),
        "prefork" => prefork(),
        "connect-each" => report(connect_each(num(1)?, num(2)?)),
        "reuse" => report(reuse(num(1)?, num(2)?)),
        "hold" => hold(num(1)?, num(2)?),
        "refused" => report(Ok(refused(num(1)?))),
        "http-get" => report(http_get(num(1)?, num(2)?)),
        other => bail!("unknown helper role {other}"),
    }
}

/// Print `done RESULT`, then wait to be told to exit.
fn report(result: Result<impl std::fmt::Display>) -> Result<()> {
    match result {
        Ok(r) => println!("done {r}"),
        Err(e) => println!("done error: {e:#}"),
    }
    wait_for_stdin_eof();
    Ok(())
}

fn wait_for_stdin_eof() {
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

fn bind() -> Result<(TcpListener, u16)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    println!("port {port}");
    std::io::stdout().flush()?;
    Ok((l, port))
}

/// A server handling one connection at a time: `lines` answers every line until the client
/// closes, then closes; `close-first` answers one line and closes at once.
fn server(mode: &str) -> Result<()> {
    let close_first = match mode {
        "lines" => false,
        "close-first" => true,
        other => bail!("unknown server mode {other}"),
    };
    let (l, _) = bind()?;
    std::thread::spawn(move || serve(l, close_first));
    wait_for_stdin_eof();
    Ok(())
}

fn serve(l: TcpListener, close_first: bool) {
    for conn in l.incoming().map_while(Result::ok) {
        let _ = answer(conn, close_first);
    }
}

fn answer(conn: TcpStream, close_first: bool) -> Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut w = &conn;
    let mut r = BufReader::new(&conn);
    let mut line = String::new();
    while r.read_line(&mut line)? > 0 {
        w.write_all(b"rep\n")?;
        line.clear();
        if close_first {
            break;
        }
    }
    Ok(())
}

/// A prefork server: this process listens, a forked child accepts and serves (`lines`).
/// Prints `port P`, then `child PID`.
fn prefork() -> Result<()> {
    let (l, _) = bind()?;
    // SAFETY: this process has one thread here, so the child may do anything.
    let child = unsafe { libc::fork() };
    if child < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: plain prctl.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
        std::thread::spawn(move || serve(l, false));
        wait_for_stdin_eof();
        std::process::exit(0);
    }
    println!("child {child}");
    std::io::stdout().flush()?;
    wait_for_stdin_eof();
    // SAFETY: our own child.
    unsafe {
        libc::kill(child, libc::SIGKILL);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
    drop(l);
    Ok(())
}

fn connect(port: usize) -> Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port as u16))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// One request line and its reply on `s`.
fn exchange(s: &TcpStream) -> Result<()> {
    let mut w = s;
    w.write_all(b"req\n")?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    if reply != "rep\n" {
        bail!("reply {reply:?}");
    }
    Ok(())
}

/// `n` connections, one exchange each, closed by this side after the reply.
fn connect_each(port: usize, n: usize) -> Result<usize> {
    let mut ok = 0;
    for _ in 0..n {
        let s = connect(port)?;
        exchange(&s)?;
        drop(s);
        ok += 1;
    }
    Ok(ok)
}

/// One connection carrying `n` exchanges, closed by this side.
fn reuse(port: usize, n: usize) -> Result<usize> {
    let s = connect(port)?;
    for i in 0..n {
        exchange(&s).with_context(|| format!("exchange {i}"))?;
    }
    Ok(n)
}

/// `k` connections whose server closes after its reply; this side reads the end of stream and
/// keeps the sockets open (CLOSE_WAIT) until told to exit.
fn hold(port: usize, k: usize) -> Result<()> {
    let mut held = Vec::new();
    let result = (|| -> Result<usize> {
        for _ in 0..k {
            let s = connect(port)?;
            exchange(&s)?;
            let mut rest = Vec::new();
            (&s).read_to_end(&mut rest)?;
            if !rest.is_empty() {
                bail!("unexpected bytes after the reply: {rest:?}");
            }
            held.push(s);
        }
        Ok(held.len())
    })();
    report(result)
}

/// One connect to a port nobody listens on: `refused` when the kernel refused it.
fn refused(port: usize) -> String {
    match TcpStream::connect(("127.0.0.1", port as u16)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused".into(),
        Err(e) => format!("error: {e}"),
        Ok(_) => "connected".into(),
    }
}

/// `n` HTTP/1.0 GETs of `/`, one connection each, read to the end: the number answered 200.
fn http_get(port: usize, n: usize) -> Result<usize> {
    let mut ok = 0;
    for _ in 0..n {
        let mut s = connect(port)?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let head = String::from_utf8_lossy(&resp[..resp.len().min(16)]).into_owned();
        if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
            ok += 1;
        }
    }
    Ok(ok)
}
