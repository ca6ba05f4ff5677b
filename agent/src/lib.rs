//! steward-agent: the per-machine agent.
//!
//! - `hardware`: the static inventory. Host facts come from procfs/sysfs (`hardware::host`),
//!   and GPUs come through the narrow [`hardware::GpuProbe`] trait: NVML (`hardware::nvml`)
//!   for real GPUs, or simulated ones (`hardware::simulated`) with load and fault injection.
//! - `telemetry`: the sampler thread, the GPU event thread, the event log, and GPU health.
//! - `daemon`: node id, inventory, start-up, heartbeats carrying telemetry summaries;
//!   `link`: finding the leader and keeping the registration.
//! - `jobs`: running the allocations placed on this node (shim, isolation, restarts,
//!   fencing, re-adoption after an agent restart).
//! - `procfs`: procfs and filesystem readers shared by `hardware` and `telemetry`.
//! - `api`: the agent's own gRPC API. `metrics`: Prometheus `/metrics`. `config`: settings.
//!
//! Must not depend on: steward-controller, rocksdb. NVML appears only in `hardware::nvml`.

pub mod api;
pub mod chunks;
pub mod config;
pub mod daemon;
pub mod hardware;
pub mod jobs;
pub mod link;
pub mod metrics;
pub mod procfs;
pub mod telemetry;

/// Arms the fail points named in the `FAILPOINTS` environment variable (`name=actions;...`,
/// see the `fail` crate), in the agent and in its shims. They exist only in builds with the
/// `failpoints` feature, which the test suite turns on (a workspace build's `steward` has
/// them, inert unless `FAILPOINTS` is set); a build of the binary alone has none, and this
/// does nothing.
pub fn arm_failpoints() {
    #[cfg(feature = "failpoints")]
    if let Ok(points) = std::env::var("FAILPOINTS") {
        tracing::warn!(%points, "fail points armed (a test-only feature)");
        std::mem::forget(fail::FailScenario::setup());
    }
}
