//! The replicated key-value namespace for cluster metadata (like Consul KV or Nomad
//! Variables): its entry type, limits and validation rules.
//!
//! Revisions come from the cluster revision, which grows by one with every change (as in
//! etcd), and compare-and-set compares a key's `mod_revision`, with 0 meaning "the key must
//! not exist".

use serde::{Deserialize, Serialize};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most entries one `list` returns; callers page with `start_after`.
pub const MAX_LIST_LIMIT: usize = 10_000;
/// Most key and value bytes one `list` returns (but always at least one entry): a page
/// fits in gRPC's default 4 MiB receive limit, so any client can read it.
pub const MAX_LIST_BYTES: usize = 3 * 1024 * 1024;

/// One key's value and its revision history markers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    /// Shared, so that copying the state's map (copy-on-write) never copies values.
    pub value: std::sync::Arc<[u8]>,
    /// Revision at which the key was created (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last write to the key; what compare-and-set compares.
    pub mod_revision: u64,
    /// Number of writes since creation, starting at 1.
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvValidationError {
    #[error("key is empty")]
    EmptyKey,
    #[error("key is {len} bytes, the limit is {MAX_KEY_BYTES}")]
    KeyTooLong { len: usize },
    #[error("key contains a control character at byte {at}")]
    ControlCharacter { at: usize },
    #[error("keys under `{RESERVED_PREFIX}` are Steward's own")]
    Reserved,
    #[error("value is {len} bytes, the limit is {MAX_VALUE_BYTES}")]
    ValueTooLarge { len: usize },
}

/// Keys under this prefix belong to Steward itself (access tokens, `crate::acl`): the KV
/// API neither shows nor takes them.
pub const RESERVED_PREFIX: &str = "_steward/";

/// Checks a key an operator gives against the namespace's rules.
pub fn validate_key(key: &str) -> Result<(), KvValidationError> {
    if key.is_empty() {
        return Err(KvValidationError::EmptyKey);
    }
    if key.starts_with(RESERVED_PREFIX) {
        return Err(KvValidationError::Reserved);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KvValidationError::KeyTooLong { len: key.len() });
    }
    if let Some((at, _)) = key.char_indices().find(|(_, c)| c.is_control()) {
        return Err(KvValidationError::ControlCharacter { at });
    }
    Ok(())
}

/// Checks a value's size.
pub fn validate_value(value: &[u8]) -> Result<(), KvValidationError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvValidationError::ValueTooLarge { len: value.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(validate_key(""), Err(KvValidationError::EmptyKey));
        assert_eq!(
            validate_key("_steward/acl/tokens/x"),
            Err(KvValidationError::Reserved)
        );
        assert!(validate_key("_stewardish").is_ok());
        assert_eq!(
            validate_key("a\nb"),
            Err(KvValidationError::ControlCharacter { at: 1 })
        );
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(validate_key(&long)
            .unwrap_err()
            .to_string()
            .contains("limit is 1024"));
        assert!(validate_key("jobs/train-7").is_ok());
        assert!(validate_value(&vec![0; MAX_VALUE_BYTES + 1]).is_err());
        assert!(validate_value(b"ok").is_ok());
    }
}
