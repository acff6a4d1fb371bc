//! What the daemon reads from the host, outside its own programs: processes and their exits,
//! containers and pods, the kernel's socket table (sock_diag), the start-up snapshot and who
//! holds a socket.

pub mod cgroup;
pub mod exits;
pub mod holders;
pub mod procfs;
pub mod snapshot;
pub mod sock_diag;
