//! steward-controller: one member of the Raft group that holds Steward's cluster state.
//!
//! Code map:
//! - `raft/`: openraft on RocksDB, its transport, the proposer, leadership transfer, and
//!   the [`raft::RaftHandle`] the rest of the controller uses;
//! - `api/`: the admin and agent-facing gRPC services (thin adapters, one file per area);
//! - `control/`: the leader's control loops (liveness first), as workers;
//! - `snapshot_file`: the operator snapshot file format;
//! - `metrics`: Prometheus `/metrics`;
//! - `config`: typed, validated configuration;
//! - `server`: assembly, workers and ordered shutdown.
//!
//! Decisions live in steward-core (`ClusterState::apply`, the failure detector); this crate
//! is the runtime. Must not depend on: steward-agent, nvml.

pub mod api;
pub mod config;
pub mod control;
pub mod metrics;
pub mod raft;
pub mod server;
pub mod snapshot_file;

pub use config::{ControllerConfig, ControllerConfigFile, RaftTuning};
pub use server::{Controller, ControllerError};

/// Arms the fail points named in the `FAILPOINTS` environment variable (`name=actions;...`,
/// see the `fail` crate). Only test builds have fail points (the `failpoints` feature);
/// elsewhere this does nothing.
pub fn arm_failpoints() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
