//! Conversions between steward-core types and `steward.v1` messages, one file per message.

mod kv_entry;
pub use kv_entry::kv_entry_to_pb;
mod inventory;
