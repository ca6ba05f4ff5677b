//! `steward_core::kv::KvEntry` <-> `v1::KvEntry`.

use steward_core::kv::KvEntry;

use crate::v1;

/// Builds the wire entry for `key`.
pub fn kv_entry_to_pb(key: &str, e: &KvEntry) -> v1::KvEntry {
    v1::KvEntry {
        key: key.to_string(),
        value: e.value.to_vec(),
        create_revision: e.create_revision,
        mod_revision: e.mod_revision,
        version: e.version,
    }
}

impl From<v1::KvEntry> for (String, KvEntry) {
    fn from(pb: v1::KvEntry) -> Self {
        (
            pb.key,
            KvEntry {
                value: pb.value.into(),
                create_revision: pb.create_revision,
                mod_revision: pb.mod_revision,
                version: pb.version,
            },
        )
    }
}
