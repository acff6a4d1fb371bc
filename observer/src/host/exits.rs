//! Process exits, watched through pidfds: the kernel makes a process's pidfd readable when its
//! last thread has exited. Nothing runs on the exit path of the node's other tasks (a tracepoint
//! on `sched_process_exit` would run on every thread exit of the node, about 1 us each on this
//! project's test machines, with its code and data cold).

use std::io;
use std::os::fd::{FromRawFd as _, OwnedFd};

use crate::host::procfs;
use observer_core::model::ProcessKey;

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Raise the soft limit on open files to the hard one: the daemon holds one pidfd per process it
/// charges.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid rlimit structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Whether this kernel has pidfds (Linux 5.3+).
pub fn supported() -> bool {
    match pidfd_open(std::process::id()) {
        Ok(_) => true,
        Err(e) => {
            log::warn!("pidfd_open failed ({e}): process exits are found by polling /proc every 5 s");
            false
        }
    }
}

/// A pidfd on `key`'s process, readable once it has exited. None if it is no longer alive: it
/// exited, or its pid now names another process (the pidfd names whoever holds the pid when it
/// is opened, so the start time is checked once the pidfd pins it).
pub fn open(key: &ProcessKey) -> io::Result<Option<OwnedFd>> {
    match pidfd_open(key.pid) {
        Ok(fd) => Ok(procfs::is_alive(key).then_some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Wait until the process behind `fd` exits. Err if the reactor cannot watch it.
pub async fn wait(fd: OwnedFd) -> io::Result<()> {
    // SAFETY: the AsyncFd owns the pidfd and keeps it open while it is registered.
    let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
    let _ = fd.readable().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::procfs::key_of;

    #[tokio::test]
    async fn a_pidfd_turns_readable_when_its_process_exits() {
        let mut child = std::process::Command::new("sleep").arg("0.3").spawn().unwrap();
        let key = key_of(child.id());
        let fd = open(&key).unwrap().expect("the child is alive");
        let t0 = std::time::Instant::now();
        tokio::time::timeout(std::time::Duration::from_secs(5), wait(fd)).await.expect("exit seen").unwrap();
        assert!(t0.elapsed() >= std::time::Duration::from_millis(200), "readable before the exit");
        // Exited, not reaped yet: a zombie is not alive.
        assert!(open(&key).unwrap().is_none());
        child.wait().unwrap();
        assert!(open(&key).unwrap().is_none());
    }

    #[test]
    fn a_reused_pid_is_not_the_process_we_saw() {
        let me = key_of(std::process::id());
        assert!(open(&me).unwrap().is_some());
        let other = ProcessKey { start_ns: me.start_ns + 60_000_000_000, ..me };
        assert!(open(&other).unwrap().is_none());
    }
}
