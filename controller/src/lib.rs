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
/// see the `fail` crate). Fail points exist only in builds with the `failpoints` feature:
/// the test suite enables it, and since cargo unifies features across a workspace build,
/// the `steward` binary of `cargo build --workspace` (`make build`) has them too, inert
/// unless `FAILPOINTS` is set (arming them is logged as a warning). A build of the binary
/// alone (`cargo build --release -p steward-cli`, what an install should ship) has none,
/// and this does nothing.
pub fn arm_failpoints() {
    #[cfg(feature = "failpoints")]
    if let Ok(points) = std::env::var("FAILPOINTS") {
        tracing::warn!(%points, "fail points armed (a test-only feature)");
        std::mem::forget(fail::FailScenario::setup());
    }
}
