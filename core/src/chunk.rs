//! Content addresses. A chunk id is the plain BLAKE3 hash of the chunk's bytes, written as
//! 64 lowercase hex characters; anything else is refused before a path is built from it.
//! Whole objects and manifests are hashed with BLAKE3 keys derived for that purpose
//! ([`ObjectHash`]), so an object hash can never pass for a chunk id of the same bytes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Length of a chunk id in hex characters.
pub const CHUNK_ID_HEX_LEN: usize = 64;
/// The BLAKE3 key-derivation context of whole-object hashes.
pub const OBJECT_HASH_CONTEXT: &str = "steward 2026-12 object content v1";
/// The BLAKE3 key-derivation context of manifest hashes.
pub const MANIFEST_HASH_CONTEXT: &str = "steward 2026-12 object manifest v1";

/// The BLAKE3 hash of a chunk's bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkId([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkIdError {
    #[error("a chunk id is {CHUNK_ID_HEX_LEN} hex characters, not {0} bytes")]
    Length(usize),
    #[error("a chunk id is lowercase hex (0-9, a-f); character {position} is {found:?}")]
    Character { position: usize, found: char },
}

impl ChunkId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ChunkId(*blake3::hash(bytes).as_bytes())
    }

    pub fn from_hash(hash: blake3::Hash) -> Self {
        ChunkId(*hash.as_bytes())
    }

    /// Parses the canonical spelling: exactly 64 characters of `0-9a-f`.
    pub fn parse(text: &str) -> Result<Self, ChunkIdError> {
        if text.len() != CHUNK_ID_HEX_LEN {
            return Err(ChunkIdError::Length(text.len()));
        }
        let mut out = [0u8; 32];
        for (i, c) in text.chars().enumerate() {
            let v = match c {
                '0'..='9' => c as u8 - b'0',
                'a'..='f' => c as u8 - b'a' + 10,
                _ => {
                    return Err(ChunkIdError::Character {
                        position: i,
                        found: c,
                    })
                }
            };
            out[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
        }
        Ok(ChunkId(out))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `bytes` hash to this id.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Self::of(bytes) == *self
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

impl std::str::FromStr for ChunkId {
    type Err = ChunkIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A keyed BLAKE3 hash of a whole object's bytes or of a manifest: never equal to the
/// plain hash a chunk id is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectHash([u8; 32]);

impl ObjectHash {
    /// A hasher for a whole object's bytes (fed in order).
    pub fn content_hasher() -> blake3::Hasher {
        blake3::Hasher::new_derive_key(OBJECT_HASH_CONTEXT)
    }

    /// A hasher for a manifest's canonical encoding.
    pub fn manifest_hasher() -> blake3::Hasher {
        blake3::Hasher::new_derive_key(MANIFEST_HASH_CONTEXT)
    }

    pub fn from_hash(hash: blake3::Hash) -> Self {
        ObjectHash(*hash.as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ObjectHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(blake3::Hash::from_bytes(self.0).to_hex().as_str())
    }
}

impl fmt::Debug for ObjectHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectHash({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_round_trip_and_match_their_bytes() {
        let id = ChunkId::of(b"hello");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(ChunkId::parse(&text), Ok(id));
        assert!(id.matches(b"hello") && !id.matches(b"hellO"));
    }

    #[test]
    fn bad_spellings_are_refused() {
        let good = ChunkId::of(b"x").to_string();
        assert_eq!(ChunkId::parse("../x"), Err(ChunkIdError::Length(4)));
        assert!(matches!(
            ChunkId::parse(&good.to_uppercase()),
            Err(ChunkIdError::Character { .. })
        ));
        assert_eq!(ChunkId::parse(&good[..63]), Err(ChunkIdError::Length(63)));
        let with_nul = format!("{}\0", &good[..63]);
        assert!(matches!(
            ChunkId::parse(&with_nul),
            Err(ChunkIdError::Character { position: 63, .. })
        ));
        let traversal = format!("../{}", &good[3..]);
        assert!(ChunkId::parse(&traversal).is_err());
        assert!(ChunkId::parse("").is_err());
    }

    #[test]
    fn an_object_hash_is_never_the_chunk_id_of_the_same_bytes() {
        let bytes = b"the same bytes";
        let mut h = ObjectHash::content_hasher();
        h.update(bytes);
        let object = ObjectHash::from_hash(h.finalize());
        assert_ne!(object.as_bytes(), ChunkId::of(bytes).as_bytes());
        let mut m = ObjectHash::manifest_hasher();
        m.update(bytes);
        assert_ne!(ObjectHash::from_hash(m.finalize()), object);
    }

    proptest! {
        #[test]
        fn only_canonical_spellings_parse(text in "\\PC{0,70}") {
            let canonical = text.len() == 64
                && text.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
            prop_assert_eq!(ChunkId::parse(&text).is_ok(), canonical);
            if let Ok(id) = ChunkId::parse(&text) {
                prop_assert_eq!(id.to_string(), text);
            }
        }

        #[test]
        fn any_bytes_give_an_id_that_parses_back(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let id = ChunkId::of(&bytes);
            prop_assert_eq!(ChunkId::parse(&id.to_string()), Ok(id));
        }
    }
}
