//! Workloads that run beside the faults and record what their clients saw.
//!
//! - [`kv`]: reads, writes and compare-and-sets on a few contended keys.

pub mod kv;
