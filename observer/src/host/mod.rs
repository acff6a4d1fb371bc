//! What the daemon reads from the host, outside its own programs: processes and their exits,
//! containers and pods, the kernel's socket table (sock_diag), the start-up snapshot and who
//! holds a socket, network namespaces and their ephemeral port ranges.

pub mod cgroup;
pub mod exits;
pub mod holders;
pub mod netns;
pub mod port_range;
pub mod procfs;
pub mod snapshot;
pub mod sock_diag;
