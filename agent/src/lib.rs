//! steward-agent: the per-machine agent (hardware inventory through NVML behind a trait,
//! telemetry, chunk store, replication, job runner).
//!
//! Not built yet: this crate holds the place in the layout so that the dependency
//! direction (`core <- proto <- agent`, never agent <-> controller) is fixed from the start.
//! The agent issue fills it in.
