//! steward-proto: the gRPC schema of Steward (package `steward.v1`) and the conversions
//! between its messages and steward-core's types (`conv/`).
//!
//! Four services, each with its own audience: `RaftService` (controller to controller),
//! `Admin` (operators and scripts), `AgentControl` (agents), and on each agent `AgentApi`
//! and `ChunkService` (chunk bytes: clients and peer agents). Evolve by adding fields and
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
/// The deadline a client gives one `Admin.SnapshotRestore` call. The state travels through
/// Raft in many entries and the controller starts over after a leadership change, so a
/// restore may take far longer than other admin calls; the controller starts no new step
/// once most of this has passed.
pub const SNAPSHOT_RESTORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);
/// Bytes of chunk data per `ChunkService` message (puts and gets stream a chunk in pieces).
pub const CHUNK_DATA_PER_MESSAGE: usize = 1024 * 1024;
/// Largest `ChunkService` message accepted or sent: one piece of chunk data and its fields.
pub const MAX_CHUNK_MESSAGE_BYTES: usize = 2 * 1024 * 1024;
/// Largest Raft message accepted or sent, in bytes (AppendEntries batches and snapshot chunks
/// are sized well below this; a restored snapshot travels as one log entry).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use prost::Message;

    /// Every method of every Steward service has an authorization rule
    /// (`steward_core::authz::METHODS`), and every rule names a method that exists: a new
    /// RPC cannot ship without deciding who may call it.
    #[test]
    fn every_method_has_exactly_one_authorization_rule() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let mut served = std::collections::BTreeSet::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    served.insert(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        assert!(served.len() > 50, "{} methods", served.len());
        for path in &served {
            assert!(
                steward_core::authz::rule_for(path).is_some(),
                "{path} has no authorization rule in steward_core::authz::METHODS"
            );
        }
        for (service, method, _) in steward_core::authz::METHODS {
            let path = format!("/{service}/{method}");
            let standard = service.starts_with("grpc.");
            assert!(
                standard || served.contains(&path),
                "{path} has a rule but Steward serves no such method"
            );
        }
    }
}
