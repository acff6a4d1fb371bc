//! The container and pod of a running process, from its `/proc/<pid>/cgroup`.

use observer_core::container::{Container, parse};

/// The container and pod of process `pid` (None if its cgroup file cannot be read: gone, or no
/// /proc).
pub fn read(pid: u32) -> Option<Container> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok().map(|text| parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        // Whatever this test runs in, its own cgroup file parses.
        let c = read(std::process::id()).expect("/proc/self/cgroup");
        assert_eq!(c, parse(&std::fs::read_to_string("/proc/self/cgroup").unwrap()));
        assert_eq!(read(u32::MAX), None);
    }
}
