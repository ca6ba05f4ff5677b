//! steward-chaos: the chaos harness. Breaks a cluster on purpose (fault actions in
//! network namespaces, or on staging nodes) while workloads record what clients saw, then
//! checks Steward's promises on the records.
//!
//! Built so far: the records ([`history`]), the checkers ([`check`]) and the KV workload
//! ([`workload`]). The fault
//! actions, scenarios and the `steward-chaos` command come next (ARCHITECTURE.md, "Chaos
//! harness"); today's fault tests live in `tests/it/` on the process harness of
//! steward-tests.

pub mod check;
pub mod history;
pub mod scenario;
pub mod workload;
