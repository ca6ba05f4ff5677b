//! steward-agent: the per-machine agent.
//!
//! This slice holds the hardware inventory: host facts from procfs/sysfs (`hardware::host`)
//! and GPUs through a narrow [`hardware::GpuProbe`] trait, with NVML (nvml-wrapper) for real
//! GPUs and simulated GPUs for development and tests; and the daemon (`daemon`): persistent
//! node id, registration and heartbeats to the leader. Telemetry streaming, fault injection
//! and metrics come with the rest of the agent issue.
//!
//! Must not depend on: steward-controller, rocksdb. NVML appears only in `hardware::nvml`.

pub mod daemon;
pub mod hardware;
pub mod metrics;
