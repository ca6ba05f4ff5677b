//! steward-proto: the gRPC schema of Steward (package `steward.v1`) and the conversions
//! between its messages and steward-core's types (`conv/`).
//!
//! Three services, each with its own audience: `RaftService` (controller to controller),
//! `Admin` (operators and scripts) and `AgentControl` (agents). Evolve by adding fields and
//! RPCs, never by changing one in place.
//!
//! Must not depend on: tokio runtime details, rocksdb, nvml.

pub mod conv;

/// Generated code for package `steward.v1`.
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("steward.v1");
}

/// Encoded `FileDescriptorSet` of every Steward proto file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/steward_descriptor.bin"));

/// Largest admin/agent API message accepted or sent, in bytes.
pub const MAX_API_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// Largest Raft message accepted or sent, in bytes (AppendEntries batches and snapshot chunks
/// are sized well below this; a restored snapshot travels as one log entry).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
