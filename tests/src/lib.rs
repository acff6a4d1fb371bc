//! Harness for observer's end-to-end tests: the real daemon against the real kernel, driven by
//! real clients and servers on loopback or in network namespaces the tests create.
//!
//! The tests need root (they load eBPF programs and create namespaces) and the release binary
//! (`cargo xtask test` builds it and sets `OBSERVER_BIN`; the tests of the benchmark's
//! scaffolding also need the `bench` build, `OBSERVER_BENCH_BIN`).
//!
//! Test files import what they use from the module that owns it.

pub mod bpf;
pub mod daemon;
pub mod diagnosis;
pub mod document;
pub mod http;
pub mod namespaces;
pub mod net;
pub mod openapi;
pub mod paths;
pub mod processes;
pub mod scenarios;
