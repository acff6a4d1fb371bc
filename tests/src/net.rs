//! The host's TCP ports and the kernel's socket table.

use std::process::Command;
use std::sync::Mutex;

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    static NEXT: Mutex<u16> = Mutex::new(0);
    let mut next = NEXT.lock().unwrap();
    // Ports handed out by one test binary never repeat, so that per-peer figures of different
    // tests never mix.
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        if port != *next {
            *next = port;
            return port;
        }
    }
    panic!("the kernel handed out port {} 100 times in a row", *next);
}

/// Number of sockets `ss -Htan <filter>` lists.
pub fn ss_count(filter: &[&str]) -> usize {
    let out = Command::new("ss").arg("-Htan").args(filter).output().expect("ss");
    assert!(out.status.success(), "ss {filter:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count()
}
