//! The process harness: real `steward controller` and `steward agent` processes, each with
//! its own data dir, log file and certificates, and the switches that break them. Shared by
//! `steward-chaos` and the integration tests (steward-tests re-exports it), so there is one.
//!
//! - [`cluster`]: controllers on loopback ([`cluster::ProcCluster`]), agents, waits on
//!   conditions with deadlines;
//! - [`netns`]: hosts in Linux network namespaces on one bridge, each with its own
//!   address, and the network faults between them (nftables, tc netem);
//! - [`netfilter`]: nftables rules on loopback for tests that stay in one namespace;
//! - [`pki`]: the test CA and certificates (every harness cluster runs mutual TLS).

pub mod cluster;
pub mod netfilter;
pub mod netns;
pub mod pki;
