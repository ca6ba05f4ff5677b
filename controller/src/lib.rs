//! steward-controller: one member of the Raft group that holds Steward's cluster state.
//!
//! Code map:
//! - `typ`: the single openraft type declaration and aliases;
//! - `store/`: RocksDB log store and state machine (`RaftLogStorage`, `RaftStateMachine`);
//! - `network/`: Raft RPCs over tonic, with the incarnation fence;
//! - `api/`: the admin and agent-facing gRPC services, forwarding, leadership transfer;
//! - `snapshot_file`: the operator snapshot file format;
//! - `config`: typed, validated configuration;
//! - `server`: assembly, workers and ordered shutdown.
//!
//! Decisions live in steward-core (`ClusterState::apply`); this crate is the runtime.
//! Must not depend on: steward-agent, nvml.

pub mod api;
pub mod config;
pub mod elections;
pub mod metrics;
pub mod network;
pub mod server;
pub mod snapshot_file;
pub mod store;
pub mod typ;

pub use config::{ControllerConfig, ControllerConfigFile, RaftTuning};
pub use server::{Controller, ControllerError};
