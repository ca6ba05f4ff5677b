//! Objects and their versions: datasets, checkpoints and model versions kept as manifests
//! of content-addressed chunks (`crate::chunk`), with tags that move atomically and
//! retention rules. This is Raft state: chunk bytes never enter it, only their ids and
//! sizes.
//!
//! - An **object** (`models/llama-8b`) has numbered **versions** (1, 2, ...). A version is
//!   immutable: its manifest (the ordered chunks and their sizes, the total size, the
//!   whole-content hash), its creation time, labels and replication factor.
//! - **Tags** (`prod`, `latest`, ...) name one version each and move with compare-and-set
//!   (`expected`: the version the tag must name now, 0 = the tag must not exist); every move
//!   is kept in a bounded history.
//! - **Retention**: keep the newest `keep_last` versions (all when unset), and with
//!   `keep_tagged` every tagged version besides. A tagged version is never deleted by an
//!   explicit delete either unless forced.
//! - **Chunk references** (`ChunkUse`, derived, never stored): how many versions reference
//!   each chunk and the highest replication factor among them. A chunk no version
//!   references is garbage; agents collect it only after a controller confirms that.
//!
//! Must not depend on: anything with I/O.

pub mod apply;
pub mod placement;
pub mod repair;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkId, ObjectHash};

/// Longest object name, in bytes.
pub const MAX_OBJECT_NAME_BYTES: usize = 256;
/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 64;
/// Chunks in one version's manifest (256 GiB at the 4 MiB average chunk). Larger data is
/// several objects (a directory put makes one object per file).
pub const MAX_CHUNKS_PER_VERSION: usize = 65_536;
/// Largest chunk a manifest may list (the agents' store limit).
pub const MAX_CHUNK_BYTES: u32 = 64 * 1024 * 1024;
/// Objects in the cluster.
pub const MAX_OBJECTS: usize = 100_000;
/// Versions kept of one object; a put beyond it is refused until versions are deleted
/// (or a `keep_last` rule deletes them).
pub const MAX_VERSIONS_PER_OBJECT: usize = 1_000;
/// Tags of one object.
pub const MAX_TAGS_PER_OBJECT: usize = 64;
/// Tag moves remembered per object (the oldest are dropped).
pub const MAX_TAG_HISTORY: usize = 100;
/// Replication factor when a put names none.
pub const DEFAULT_RF: u8 = 3;
/// Highest replication factor.
pub const MAX_RF: u8 = 7;
/// Counted bytes of one version beyond its chunk list and labels.
const VERSION_OVERHEAD: u64 = 128;
/// Counted bytes of one chunk reference in a manifest (id and size).
const CHUNK_REF_BYTES: u64 = 36;

/// One chunk of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub size: u32,
}

/// What a version's bytes are: the chunks in order, their total, the whole-content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub chunks: Vec<ChunkRef>,
    pub size: u64,
    /// BLAKE3 of the whole content with the object key (`ObjectHash::content_hasher`).
    pub content_hash: ObjectHash,
}

impl Manifest {
    /// Checks the limits and that the sizes add up.
    pub fn validate(&self) -> Result<(), String> {
        if self.chunks.len() > MAX_CHUNKS_PER_VERSION {
            return Err(format!(
                "{} chunks, over the {MAX_CHUNKS_PER_VERSION} a version may have: split the data into several objects",
                self.chunks.len()
            ));
        }
        if let Some(c) = self.chunks.iter().find(|c| c.size > MAX_CHUNK_BYTES) {
            return Err(format!(
                "chunk {} is {} bytes, over the {MAX_CHUNK_BYTES}-byte limit",
                c.id, c.size
            ));
        }
        let mut sizes: BTreeMap<ChunkId, u32> = BTreeMap::new();
        for c in &self.chunks {
            if let Some(other) = sizes.insert(c.id, c.size).filter(|s| *s != c.size) {
                return Err(format!(
                    "chunk {} is listed with {other} and {} bytes: one id is one content",
                    c.id, c.size
                ));
            }
        }
        let sum: u64 = self.chunks.iter().map(|c| u64::from(c.size)).sum();
        if sum != self.size {
            return Err(format!(
                "the chunks add up to {sum} bytes, the manifest says {}",
                self.size
            ));
        }
        Ok(())
    }

    /// The manifest's own hash (derived key of its own, so it never equals a chunk id or a
    /// content hash).
    pub fn digest(&self) -> ObjectHash {
        let mut h = ObjectHash::manifest_hasher();
        h.update(&self.size.to_le_bytes());
        h.update(self.content_hash.as_bytes());
        for c in &self.chunks {
            h.update(c.id.as_bytes());
            h.update(&c.size.to_le_bytes());
        }
        ObjectHash::from_hash(h.finalize())
    }

    /// The distinct chunks, each once, with its size.
    pub fn distinct_chunks(&self) -> BTreeMap<ChunkId, u32> {
        self.chunks.iter().map(|c| (c.id, c.size)).collect()
    }
}

/// One immutable version of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVersion {
    pub manifest: Arc<Manifest>,
    /// Cluster time the version was committed.
    pub created_ms: u64,
    pub created_revision: u64,
    pub labels: BTreeMap<String, String>,
    /// Replicas each of its chunks should have.
    pub rf: u8,
}

/// One move of a tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagEvent {
    pub at_ms: u64,
    pub revision: u64,
    pub tag: String,
    /// The version it named before (`None`: it was new).
    pub from: Option<u64>,
    /// The version it names now (`None`: removed).
    pub to: Option<u64>,
}

/// Which versions an object keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Keep the newest N versions (`None`: keep every version).
    pub keep_last: Option<u32>,
    /// Also keep every tagged version, however old.
    pub keep_tagged: bool,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_last: None,
            keep_tagged: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub versions: BTreeMap<u64, ObjectVersion>,
    /// The number the next version gets (versions are never renumbered or reused).
    pub next_version: u64,
    /// Tag -> version.
    pub tags: BTreeMap<String, u64>,
    /// Tag moves, oldest first, at most [`MAX_TAG_HISTORY`].
    pub tag_history: VecDeque<TagEvent>,
    pub retention: Retention,
    pub created_revision: u64,
    pub mod_revision: u64,
}

impl ObjectRecord {
    /// The newest version's number.
    pub fn latest(&self) -> Option<u64> {
        self.versions.keys().next_back().copied()
    }

    /// The tags naming `version`.
    pub fn tags_of(&self, version: u64) -> Vec<&str> {
        self.tags
            .iter()
            .filter(|(_, v)| **v == version)
            .map(|(t, _)| t.as_str())
            .collect()
    }
}

/// What the live versions need of one chunk (derived from the objects; not stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkUse {
    pub size: u32,
    /// Versions referencing it (a version listing a chunk twice counts once).
    pub refs: u32,
    /// The highest replication factor among them.
    pub rf: u8,
    /// How many of the referencing versions ask for `rf`.
    pub refs_at_rf: u32,
}

/// Checks an object name: 1 to 256 bytes of `[A-Za-z0-9._-]` in `/`-separated segments,
/// none empty, `.` or `..` (so a name is also a safe relative path).
pub fn validate_object_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_OBJECT_NAME_BYTES {
        return Err(format!(
            "an object name has 1 to {MAX_OBJECT_NAME_BYTES} bytes, got {}",
            name.len()
        ));
    }
    for segment in name.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(format!(
                "object name `{}`: segments between `/` may not be empty, `.` or `..`",
                name.escape_debug()
            ));
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
        {
            return Err(format!(
                "object name `{}`: `{}` is not allowed (letters, digits, `.`, `_`, `-` and `/`)",
                name.escape_debug(),
                c.escape_debug()
            ));
        }
    }
    Ok(())
}

/// Checks a tag: 1 to 64 bytes of `[a-z0-9._-]`, starting with a letter or digit.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_BYTES
        && tag.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && tag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag `{}`: 1 to {MAX_TAG_BYTES} of lowercase letters, digits, `.`, `_`, `-`, starting with a letter or digit",
            tag.escape_debug()
        ))
    }
}

/// Counted size of one version (its manifest and labels), for the state's size limit.
pub fn version_size(v: &ObjectVersion) -> u64 {
    let labels: usize = v.labels.iter().map(|(k, l)| k.len() + l.len()).sum();
    v.manifest.chunks.len() as u64 * CHUNK_REF_BYTES + labels as u64 + VERSION_OVERHEAD
}

/// Counted size of one object record.
pub fn object_size(name: &str, o: &ObjectRecord) -> u64 {
    let tags: usize = o.tags.keys().map(|t| t.len() + 8).sum();
    let history: usize = o.tag_history.iter().map(|e| e.tag.len() + 40).sum();
    name.len() as u64
        + tags as u64
        + history as u64
        + o.versions.values().map(version_size).sum::<u64>()
        + VERSION_OVERHEAD
}

/// A version named by number, tag or "the latest".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionSelector {
    Latest,
    Number(u64),
    Tag(String),
}

impl VersionSelector {
    /// `NAME`, `NAME@VERSION` or `NAME:TAG` -> the name and the selector.
    pub fn parse_reference(text: &str) -> Result<(String, VersionSelector), String> {
        let (name, selector) = if let Some((name, v)) = text.rsplit_once('@') {
            let n: u64 = v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("`{text}`: the version after `@` is a number from 1"))?;
            (name, VersionSelector::Number(n))
        } else if let Some((name, tag)) = text.rsplit_once(':') {
            validate_tag(tag)?;
            (name, VersionSelector::Tag(tag.to_string()))
        } else {
            (text, VersionSelector::Latest)
        };
        validate_object_name(name)?;
        Ok((name.to_string(), selector))
    }

    /// The version this selects in `object`.
    pub fn resolve(&self, object: &ObjectRecord) -> Option<u64> {
        match self {
            VersionSelector::Latest => object.latest(),
            VersionSelector::Number(n) => object.versions.contains_key(n).then_some(*n),
            VersionSelector::Tag(t) => object.tags.get(t).copied(),
        }
    }
}

impl std::fmt::Display for VersionSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionSelector::Latest => f.write_str("latest"),
            VersionSelector::Number(n) => write!(f, "@{n}"),
            VersionSelector::Tag(t) => write!(f, ":{t}"),
        }
    }
}

/// A node's storage settings (absent: none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeStorage {
    /// Planned downtime: while set, the node's chunks are not repaired elsewhere when it goes
    /// down (except those left with one live replica), and it stays in the layout.
    pub maintenance: Option<Maintenance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    pub since_ms: u64,
    pub reason: String,
}
