//! Manifests and versions of objects <-> `ManifestPb`, `ObjectVersionPb`.

use steward_core::chunk::{ChunkId, ObjectHash};
use steward_core::objects::{ChunkRef, Manifest, ObjectVersion};

use crate::v1::{ChunkRefPb, ManifestPb, ObjectVersionPb};

/// A chunk id from its 32 raw bytes.
pub fn chunk_id_from_pb(bytes: &[u8]) -> Result<ChunkId, String> {
    let raw: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("a chunk id is 32 bytes, got {}", bytes.len()))?;
    Ok(ChunkId::from_hash(blake3::Hash::from_bytes(raw)))
}

pub fn manifest_to_pb(m: &Manifest) -> ManifestPb {
    ManifestPb {
        chunks: m
            .chunks
            .iter()
            .map(|c| ChunkRefPb {
                id: c.id.as_bytes().to_vec(),
                size: c.size,
            })
            .collect(),
        size: m.size,
        content_hash: m.content_hash.as_bytes().to_vec(),
    }
}

/// Checks the ids' and hash's lengths; the limits are checked where the manifest is used.
pub fn manifest_from_pb(pb: &ManifestPb) -> Result<Manifest, String> {
    let hash: [u8; 32] = pb
        .content_hash
        .as_slice()
        .try_into()
        .map_err(|_| format!("a content hash is 32 bytes, got {}", pb.content_hash.len()))?;
    Ok(Manifest {
        chunks: pb
            .chunks
            .iter()
            .map(|c| {
                Ok(ChunkRef {
                    id: chunk_id_from_pb(&c.id)?,
                    size: c.size,
                })
            })
            .collect::<Result<_, String>>()?,
        size: pb.size,
        content_hash: ObjectHash::from_hash(blake3::Hash::from_bytes(hash)),
    })
}

pub fn version_to_pb(number: u64, v: &ObjectVersion, tags: Vec<String>) -> ObjectVersionPb {
    ObjectVersionPb {
        version: number,
        size: v.manifest.size,
        chunks: v.manifest.chunks.len() as u32,
        created_unix_ms: v.created_ms,
        labels: v.labels.clone().into_iter().collect(),
        rf: u32::from(v.rf),
        tags,
        content_hash: v.manifest.content_hash.to_string(),
        created_revision: v.created_revision,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_bad_lengths_are_refused() {
        let m = Manifest {
            chunks: vec![ChunkRef {
                id: ChunkId::of(b"x"),
                size: 1,
            }],
            size: 1,
            content_hash: ObjectHash::from_hash(blake3::hash(b"x")),
        };
        assert_eq!(
            manifest_from_pb(&manifest_to_pb(&m)).expect("round trip"),
            m
        );
        let mut pb = manifest_to_pb(&m);
        pb.chunks[0].id.pop();
        assert!(manifest_from_pb(&pb).unwrap_err().contains("32 bytes"));
        let mut pb = manifest_to_pb(&m);
        pb.content_hash.clear();
        assert!(manifest_from_pb(&pb).is_err());
    }
}
