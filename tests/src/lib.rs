//! steward-tests: the integration tests (`it/`) and the benchmarks (`src/bin/`), on the
//! process harness that lives in steward-chaos (`steward_chaos::harness`, re-exported here).
//!
//! `ProcCluster` spawns real `steward controller` processes on loopback, on ports chosen at
//! run time, each with its own data dir and log file, and offers the fault switches the
//! tests need: SIGKILL, SIGTERM, restart, wiping a data dir. Waits are on conditions with a
//! deadline (`wait_for`), never on fixed sleeps.

pub mod etcd;

pub use steward_chaos::harness::{cluster, netfilter, pki};

pub use cluster::{
    admin_client, agent_tls_flags, channel, free_port, http_get, kill_allocations, spawn_agent,
    steward_bin, steward_next_bin, wait_for, AgentGuard, ProcCluster,
};
pub use pki::steward_cmd;

/// The `tests` crate's directory, read when the test runs (cargo sets
/// `CARGO_MANIFEST_DIR` for every test and `cargo run`): a test binary reused from
/// another checkout with the same target dir still reads this checkout's files.
pub fn tests_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}

/// The repository's root (the parent of [`tests_dir`]).
pub fn repo_root() -> std::path::PathBuf {
    tests_dir().join("..")
}
