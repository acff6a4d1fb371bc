//! Running a read inside another network namespace: on a short-lived thread, since entering a
//! namespace changes the calling thread.

use std::os::fd::AsRawFd as _;
use std::path::Path;

use anyhow::{Context as _, Result, anyhow};

/// `f`, run inside the network namespace at `netns_path` (`/proc/<pid>/ns/net`).
pub fn run_in<T: Send + 'static>(netns_path: &Path, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns = std::fs::File::open(netns_path).with_context(|| format!("opening {}", netns_path.display()))?;
    std::thread::spawn(move || {
        // SAFETY: a valid namespace fd; only this thread changes namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::Error::new(std::io::Error::last_os_error()).context("setns"));
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("the thread reading network namespace {} panicked", netns_path.display()))?
}
