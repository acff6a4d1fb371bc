//! observer's pure core: everything between the kernel's records and the user's answers,
//! with no kernel, no I/O and no clock of its own (callers pass the time in).
//!
//! - [`event`]: decoding the kernel programs' records into socket events;
//! - [`model`]: processes, endpoints, TCP states, failure reasons, counters;
//! - [`aggregate`]: per-process and per-peer accounting of those events;
//! - [`timewait`], [`closewait`], [`tls`]: TIME_WAIT accounting, the CLOSE_WAIT verdict, TLS
//!   handshake recognition;
//! - [`lifetime`], [`rate`], [`exphist`]: connection lifetimes, rates and histograms;
//! - [`idle`], [`bursts`]: the peer's idle timeout, failed connects grouped into bursts;
//! - [`diagnosis`]: the connection-pool failure patterns found in a process's figures, with
//!   their evidence and fix;
//! - [`views`]: the API's JSON documents; [`metrics`]: the Prometheus metric families;
//! - [`container`], [`kernel_status`], [`table_audit`]: a process's container and pod, the kernel
//!   side's own figures, and the socket-table audit's decisions.

pub mod aggregate;
pub mod bursts;
pub mod closewait;
pub mod container;
pub mod diagnosis;
pub mod event;
pub mod exphist;
pub mod idle;
pub mod kernel_status;
pub mod lifetime;
pub mod metrics;
pub mod model;
pub mod rate;
pub mod table_audit;
pub mod timewait;
pub mod tls;
pub mod views;
