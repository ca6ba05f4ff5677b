//! Conversions between steward-core types and `steward.v1` messages, one file per message.

mod kv_entry;
pub use kv_entry::kv_entry_to_pb;
mod inventory;
mod objects;
pub use objects::{chunk_id_from_pb, manifest_from_pb, manifest_to_pb, version_to_pb};
