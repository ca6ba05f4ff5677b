//! The operator snapshot file (`steward operator snapshot save | restore | inspect`).
//!
//! Layout: the 16-byte magic `STEWARD-SNAPSHOT`, a codec-encoded [`SnapshotFile`], then the
//! 32-byte BLAKE3 of everything before it. `decode` verifies the magic, the checksum, the
//! format version and the state digest before anything uses the contents.

use serde::{Deserialize, Serialize};
use steward_core::{codec, ClusterState};

pub const MAGIC: &[u8; 16] = b"STEWARD-SNAPSHOT";
/// Format of the file's envelope (header and state record); the state inside carries its
/// own version, so files of earlier formats restore (migrated).
const FILE_FORMAT: u8 = 1;
/// Largest snapshot file accepted: the largest state any cluster can hold
/// (`MAX_ENCODED_STATE_BYTES`), plus the header and checksum. `save` can never write a file
/// that `inspect` and `restore` refuse.
pub const MAX_SNAPSHOT_FILE_BYTES: usize =
    steward_core::state::MAX_ENCODED_STATE_BYTES as usize + 1024 * 1024;

/// What the file says about the state it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub cluster_name: String,
    /// Controller that produced it.
    pub taken_by: u64,
    pub applied_index: u64,
    pub applied_term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub keys: u64,
    /// BLAKE3 of the encoded state (same as `steward status`'s digest at that index).
    pub state_digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub header: SnapshotHeader,
    /// `ClusterState` in the codec.
    pub state: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("not a Steward snapshot file (bad magic)")]
    BadMagic,
    #[error("snapshot file is truncated")]
    Truncated,
    #[error("snapshot file is corrupt: checksum mismatch")]
    Checksum,
    #[error("snapshot file is {0} bytes, the limit is {MAX_SNAPSHOT_FILE_BYTES}")]
    TooLarge(usize),
    #[error("snapshot state digest {found} does not match its header {expected}")]
    Digest { expected: String, found: String },
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
}

pub fn encode(header: SnapshotHeader, state: &ClusterState) -> Result<Vec<u8>, SnapshotFileError> {
    let file = SnapshotFile {
        header,
        state: state.encode()?,
    };
    let mut out = MAGIC.to_vec();
    out.extend(codec::encode_as("snapshot file", FILE_FORMAT, &file)?);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

/// Verifies and decodes a snapshot file.
pub fn decode(bytes: &[u8]) -> Result<(SnapshotHeader, ClusterState), SnapshotFileError> {
    if bytes.len() > MAX_SNAPSHOT_FILE_BYTES {
        return Err(SnapshotFileError::TooLarge(bytes.len()));
    }
    if bytes.len() < MAGIC.len() + 32 {
        return Err(if bytes.starts_with(&MAGIC[..bytes.len().min(16)]) {
            SnapshotFileError::Truncated
        } else {
            SnapshotFileError::BadMagic
        });
    }
    if &bytes[..16] != MAGIC {
        return Err(SnapshotFileError::BadMagic);
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(SnapshotFileError::Checksum);
    }
    let file: SnapshotFile = codec::decode_as("snapshot file", FILE_FORMAT, &body[16..])?;
    // The digest is over the state record as written (in its own format), so a file of an
    // older format verifies before it is migrated.
    let found = blake3::hash(&file.state).to_hex().to_string();
    if found != file.header.state_digest {
        return Err(SnapshotFileError::Digest {
            expected: file.header.state_digest,
            found,
        });
    }
    let state = ClusterState::decode(&file.state)?;
    Ok((file.header, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use steward_core::Command;

    #[test]
    fn round_trip_and_corruption_detected() {
        let mut state = ClusterState::default();
        state.apply(Command::KvPut {
            key: "k".into(),
            value: b"v".to_vec(),
            expected_revision: None,
        });
        let header = SnapshotHeader {
            cluster_name: "t".into(),
            taken_by: 1,
            applied_index: 3,
            applied_term: 1,
            voters: vec![1, 2, 3],
            learners: vec![],
            keys: 1,
            state_digest: state.digest().expect("digest"),
        };
        let bytes = encode(header.clone(), &state).expect("encode");
        let (h, s) = decode(&bytes).expect("decode");
        assert_eq!((h, s), (header, state));
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 1;
        assert!(matches!(decode(&bad), Err(SnapshotFileError::Checksum)));
        assert!(matches!(
            decode(b"hello world, not a snapshot at all......"),
            Err(SnapshotFileError::BadMagic)
        ));
        assert!(matches!(
            decode(&bytes[..20]),
            Err(SnapshotFileError::Truncated)
        ));
    }
}
