//! steward-chaos: fault actions (kill, pause, partition in network namespaces), scenarios
//! and checkers (linearizability of the KV history) run against a local or staging cluster.
//!
//! Not built yet: today's fault tests live in `tests/it/raft_*.rs` on the process harness
//! of steward-tests; the chaos issue moves them here and adds partitions.
