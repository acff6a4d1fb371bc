//! What /proc says about a process: command line, comm, start time, network namespace, sockets.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use observer_core::model::ProcessKey;

fn proc_path(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

/// `/proc/<pid>/cmdline` with arguments separated by spaces (None for kernel threads or gone
/// processes).
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(proc_path(pid, "cmdline")).ok()?;
    parse_cmdline(&raw)
}

pub fn parse_cmdline(raw: &[u8]) -> Option<String> {
    let parts: Vec<String> =
        raw.split(|b| *b == 0).filter(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

pub fn comm(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(proc_path(pid, "comm")).ok()?;
    Some(s.trim_end_matches('\n').to_string())
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot) and the state letter.
pub fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // "pid (comm with spaces) S ppid ..." : comm can contain anything, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Fields after the state are 4..; starttime is field 22, the 19th after the state.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Whether `key` names a process that is alive now (not reused, not a zombie).
pub fn is_alive(key: &ProcessKey) -> bool {
    let Ok(stat) = std::fs::read_to_string(proc_path(key.pid, "stat")) else { return false };
    let Some((state, ticks)) = parse_stat(&stat) else { return false };
    if state == 'Z' || state == 'X' {
        return false;
    }
    start_matches(key.start_ns, ticks, clock_ticks_per_second())
}

/// A live process's key, its start time read from /proc (tests only: the daemon takes start
/// times from the kernel).
#[cfg(test)]
pub fn key_of(pid: u32) -> ProcessKey {
    let stat = std::fs::read_to_string(proc_path(pid, "stat")).unwrap();
    let (_, ticks) = parse_stat(&stat).unwrap();
    ProcessKey { pid, start_ns: ticks * (1_000_000_000 / clock_ticks_per_second()) }
}

/// Whether a start time in ns since boot (the kernel's `start_boottime`) is the one /proc shows
/// in clock ticks. An unknown start time (0) matches anything.
pub fn start_matches(start_ns: u64, ticks: u64, hz: u64) -> bool {
    if start_ns == 0 {
        return true;
    }
    let expected = start_ns / (1_000_000_000 / hz);
    expected.abs_diff(ticks) <= 1
}

/// Inode number of the process's network namespace.
pub fn netns_inode(pid: u32) -> Option<u32> {
    std::fs::metadata(proc_path(pid, "ns/net")).ok().map(|m| m.ino() as u32)
}

/// A path that enters network namespace `netns`: `/proc/<pid>/ns/net` of one of `pids` in it,
/// else of any process in it, else a namespace named by `ip netns` (`/run/netns`). None if
/// nothing holds it that can be opened.
pub fn netns_path(netns: u32, pids: &[u32]) -> Option<PathBuf> {
    if let Some(pid) = pids.iter().find(|pid| netns_inode(**pid) == Some(netns)) {
        return Some(proc_path(*pid, "ns/net"));
    }
    let is = |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.ino() as u32 == netns);
    let procs = std::fs::read_dir("/proc").ok()?.flatten();
    let pids = procs.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok());
    if let Some(path) = pids.map(|pid| proc_path(pid, "ns/net")).find(|p| is(p)) {
        return Some(path);
    }
    let named = std::fs::read_dir("/run/netns").ok()?.flatten();
    named.map(|e| e.path()).find(|p| is(p))
}

/// Socket inodes (`socket:[N]`) among the fds of `pid`, and whether reading them was denied
/// (processes of other users, or with capabilities the daemon lacks).
pub fn socket_inodes(pid: u32) -> (Vec<u32>, bool) {
    let dir = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
        Ok(dir) => dir,
        Err(e) => return (Vec::new(), e.kind() == ErrorKind::PermissionDenied),
    };
    let mut denied = false;
    let inodes = dir
        .flatten()
        .filter_map(|e| {
            std::fs::read_link(e.path()).map_err(|e| denied |= e.kind() == ErrorKind::PermissionDenied).ok()
        })
        .filter_map(|t| {
            let t = t.to_str()?;
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect();
    (inodes, denied)
}

/// Inode number of our own network namespace.
pub fn own_netns_inode() -> Option<u32> {
    std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_parsed_after_the_last_parenthesis() {
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 300 0 0 0 2 1 0 0 20 0 1 0 123456 10000 200 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(stat), Some(('S', 123456)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn start_times_in_ns_match_ticks() {
        assert!(start_matches(1_234_560_000_000, 123456, 100));
        assert!(start_matches(1_234_569_999_999, 123456, 100));
        assert!(!start_matches(1_300_000_000_000, 123456, 100));
        assert!(start_matches(0, 5, 100));
    }

    #[test]
    fn cmdline_joins_arguments() {
        assert_eq!(parse_cmdline(b"python3\0-c\0print(1)\0"), Some("python3 -c print(1)".into()));
        assert_eq!(parse_cmdline(b""), None);
    }

    #[test]
    fn our_own_process_is_alive_with_its_real_start_time() {
        let pid = std::process::id();
        let ProcessKey { start_ns, .. } = key_of(pid);
        assert!(is_alive(&ProcessKey { pid, start_ns }));
        assert!(!is_alive(&ProcessKey { pid, start_ns: start_ns + 10_000_000_000 }));
        assert!(netns_inode(pid).is_some());
    }
}
