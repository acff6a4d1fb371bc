//! The two builds of the socket programs. The daemon loads one or the other (by program name),
//! after probing what the kernel accepts: a kernel that refuses an instruction refuses the whole
//! program even where the instruction is never reached, so the choice is made when the programs
//! are compiled, not by a branch (`K::LEGACY` is a constant: the other build's code is not there).

/// What the running kernel offers the socket programs.
pub trait Kernel {
    const LEGACY: bool;
}

/// Linux 5.12 and later: compare-and-swap, the socket cookie helper and the typed current task
/// in tracing programs.
pub struct Current;

impl Kernel for Current {
    const LEGACY: bool = false;
}

/// Older kernels (5.10): no atomic instruction but a plain add, no socket cookie helper for
/// tracing programs, no typed current task. The socket table is then its hash map alone, keyed
/// by the socket's address, and the current task is read through probe reads.
pub struct Legacy;

impl Kernel for Legacy {
    const LEGACY: bool = true;
}
