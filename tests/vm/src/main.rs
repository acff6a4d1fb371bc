//! `vmsuite`: observer's smoke suite, run by `cargo xtask vmtest` inside each kernel it boots
//! (and directly on the host). It starts the release daemon, drives real clients and servers on
//! loopback and compares the daemon's figures with their own counts, exactly.
//!
//! Output, one line each: `ok NAME`, `FAIL NAME: WHY`, `skip NAME: WHY`, then
//! `vmsuite: done: A ok, B failed, C skipped ...`; the daemon's log lines are prefixed `daemon| `.
//! Exit status 1 if anything failed.
//!
//! Usage: `vmsuite run --observer PATH --busybox PATH [--openssl PATH] [--listen ADDR]
//! [--log-level LEVEL] [--tmp DIR]`; `vmsuite helper ROLE ARGS...` is the suite's own helpers.

mod cases;
mod checks;
mod daemon;
mod helpers;
mod http;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use cases::{CASES, Ctx, Outcome};
use daemon::Daemon;

/// Daemon log lines shown after a failed case.
const LOG_TAIL: usize = 60;

struct Args {
    observer: PathBuf,
    busybox: PathBuf,
    openssl: Option<PathBuf>,
    listen: String,
    log_level: String,
    tmp: PathBuf,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut a = Args {
        observer: PathBuf::new(),
        busybox: PathBuf::new(),
        openssl: None,
        listen: "127.0.0.1:9645".into(),
        log_level: "info".into(),
        tmp: std::env::temp_dir().join(format!("vmsuite-{}", std::process::id())),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?.clone();
        match flag.as_str() {
            "--observer" => a.observer = value.into(),
            "--busybox" => a.busybox = value.into(),
            "--openssl" => a.openssl = Some(value.into()),
            "--listen" => a.listen = value,
            "--log-level" => a.log_level = value,
            "--tmp" => a.tmp = value.into(),
            other => bail!("unknown option {other}"),
        }
    }
    if a.observer.as_os_str().is_empty() || a.busybox.as_os_str().is_empty() {
        bail!("--observer and --busybox are required");
    }
    Ok(a)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((cmd, rest)) if cmd == "helper" => helpers::run_role(rest).map(|()| true),
        Some((cmd, rest)) if cmd == "run" => parse(rest).and_then(|a| run(&a)),
        _ => Err(anyhow::anyhow!("usage: vmsuite run --observer PATH --busybox PATH ... | vmsuite helper ROLE ...")),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("vmsuite: {e:#}");
            std::process::exit(2);
        }
    }
}

fn print_log(lines: &[&str]) {
    for l in lines {
        println!("daemon| {l}");
    }
}

/// Start the daemon and run every case; true if none failed.
fn run(a: &Args) -> Result<bool> {
    let started = Instant::now();
    std::fs::create_dir_all(&a.tmp)?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("vmsuite: kernel {}, daemon {}", release.trim(), a.observer.display());
    let daemon = match Daemon::start(&a.observer, &a.listen, &a.log_level, a.tmp.join("observer.log")) {
        Ok(d) => d,
        Err(e) => {
            let text = format!("{e:#}");
            let (first, log) = text.split_once('\n').unwrap_or((&text, ""));
            println!("FAIL daemon_start: {first}");
            print_log(&log.lines().collect::<Vec<_>>());
            println!(
                "vmsuite: done: 0 ok, 1 failed, 0 skipped, {} not run, in {:.1} s",
                CASES.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(false);
        }
    };
    println!("ok daemon_start ({:.1} s, pid {})", started.elapsed().as_secs_f64(), daemon.pid());
    let mut ctx = Ctx {
        daemon,
        busybox: a.busybox.clone(),
        openssl: a.openssl.clone(),
        tmp: a.tmp.clone(),
        features: BTreeMap::new(),
    };
    let (mut ok, mut failed, mut skipped) = (1, 0, 0);
    for (name, case) in CASES {
        let t = Instant::now();
        let outcome = case(&mut ctx).unwrap_or_else(|e| Outcome::Fail(format!("{e:#}")));
        let secs = t.elapsed().as_secs_f64();
        match outcome {
            Outcome::Ok => {
                ok += 1;
                println!("ok {name} ({secs:.1} s)");
            }
            Outcome::Fail(why) => {
                failed += 1;
                println!("FAIL {name}: {why} ({secs:.1} s)");
            }
            Outcome::Skip(why) => {
                skipped += 1;
                println!("skip {name}: {why} ({secs:.1} s)");
            }
        }
    }
    let log = ctx.daemon.log_text();
    let lines: Vec<&str> = log.lines().collect();
    // The daemon's warnings say which features degraded and why; the tail helps with failures.
    print_log(
        &lines.iter().copied().filter(|l| l.contains("WARN") || l.contains("ERROR")).take(30).collect::<Vec<_>>(),
    );
    // The daemon's own counters (unattributed and lost events, table failures) often say why a
    // case failed.
    match http::get(&ctx.daemon.addr, "/api/v1/status") {
        Ok((_, body)) => println!("vmsuite: /api/v1/status after the cases: {}", body.trim()),
        Err(e) => println!("vmsuite: /api/v1/status after the cases: {e:#}"),
    }
    if failed > 0 {
        println!("vmsuite: the daemon's last {LOG_TAIL} log lines:");
        print_log(&lines[lines.len().saturating_sub(LOG_TAIL)..]);
    }
    println!("vmsuite: done: {ok} ok, {failed} failed, {skipped} skipped, in {:.1} s", started.elapsed().as_secs_f64());
    Ok(failed == 0)
}
