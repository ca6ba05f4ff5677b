//! steward-tests: the cluster harness shared by the integration tests (`it/`) and the
//! benchmarks (`src/bin/`).
//!
//! `ProcCluster` spawns real `steward controller` processes on loopback, on ports chosen at
//! run time, each with its own data dir and log file, and offers the fault switches the
//! tests need: SIGKILL, SIGTERM, restart, wiping a data dir. Waits are on conditions with a
//! deadline (`wait_for`), never on fixed sleeps.

pub mod cluster;
pub mod etcd;
pub mod netfilter;
pub mod pki;

pub use cluster::{
    admin_client, agent_tls_flags, channel, free_port, http_get, kill_allocations, spawn_agent,
    steward_bin, steward_next_bin, wait_for, AgentGuard, ProcCluster,
};
pub use pki::steward_cmd;
