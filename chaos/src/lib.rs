//! steward-chaos: the chaos harness. Breaks a cluster on purpose (fault actions in
//! network namespaces, or on staging nodes) while workloads record what clients saw, then
//! checks Steward's promises on the records.
//!
//! Built so far: the records ([`history`]), the checkers ([`check`]), the KV workload
//! ([`workload`]), scenario files ([`scenario`]) and the first fault actions with their
//! undo guard ([`fault`]). Network namespaces, the remaining fault actions and the
//! `steward-chaos` command come next (ARCHITECTURE.md, "Chaos harness"); today's runs
//! live in `tests/it/` on the process harness of steward-tests.

pub mod check;
pub mod fault;
pub mod history;
pub mod scenario;
pub mod workload;
