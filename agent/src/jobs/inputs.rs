//! Staging a job's inputs on this node before its task starts.
//!
//! ```text
//!  supervisor ──stage(inputs)──► leader: GetObject(NAME@VERSION) -> manifest, holders
//!     missing chunks ──copy_one (verified, kept in the chunk store)──► from peers:
//!         staged copies on other nodes first (spread by chunk and node), then replicas
//!     ALLOC_DIR/inputs/NAME ◄── the chunks in order, re-hashed, the whole-content hash
//!                               checked, written to a temp file, renamed, read-only
//!     ALLOC_DIR/inputs.json ◄── what was staged and where each chunk came from
//! ```
//!
//! The chunks stay in this node's store and are reported like any replica: the leader
//! keeps them here while an allocation reading them runs (they are not trimmed as
//! surplus), so the next node to stage the same version pulls some from this one, and the
//! scheduler's locality preference sees what this node holds.
//!
//! Each allocation gets its own copy of each input file, never a hard link into the chunk
//! store: a task that writes its input must not change the store (or another task's
//! input), and a file of many content-defined chunks cannot be one link anyway.
//!
//! Limits: [`STAGE_PARALLELISM`] chunks pulled at a time per allocation; every pull has
//! the peer call deadline; a chunk no source serves fails the staging, and the task with
//! it, with the reasons.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use steward_core::chunk::{ChunkId, ObjectHash};
use steward_core::objects::{Manifest, VersionSelector};
use steward_proto::v1::{CopyOutcome, GetObjectRequest};
use steward_runtime::transport::{self, ChannelPool};

use crate::chunks::ChunkStore;

/// Chunks one allocation's staging pulls at a time.
pub const STAGE_PARALLELISM: usize = 4;
/// Where inputs are staged, under the allocation's directory.
pub const INPUTS_DIR: &str = "inputs";
/// The record of what was staged, in the allocation's directory.
pub const INPUTS_RECORD: &str = "inputs.json";

/// What staging one input did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagedInput {
    /// The reference as the job gives it (pinned: `NAME@VERSION`).
    pub reference: String,
    pub name: String,
    pub version: u64,
    pub path: PathBuf,
    pub bytes: u64,
    /// Hex of the whole-content hash, checked over the staged file.
    pub content_hash: String,
    /// Distinct chunks the node held already.
    pub chunks_local: u64,
    /// Distinct chunks pulled, per node they came from.
    pub chunks_from: BTreeMap<String, u64>,
}

/// The staged path of input `object` in the allocation directory `alloc_dir` (object
/// names are checked to be safe relative paths).
pub fn input_path(alloc_dir: &Path, object: &str) -> PathBuf {
    alloc_dir.join(INPUTS_DIR).join(object)
}

pub struct Stager {
    store: Arc<ChunkStore>,
    /// Connections to peers (agents' chunk services).
    pool: Arc<ChannelPool>,
    /// Connections to the leader's admin API.
    controllers: Arc<ChannelPool>,
    node_id: String,
}

impl Stager {
    pub fn new(
        store: Arc<ChunkStore>,
        pool: Arc<ChannelPool>,
        controllers: Arc<ChannelPool>,
        node_id: String,
    ) -> Self {
        Stager {
            store,
            pool,
            controllers,
            node_id,
        }
    }

    /// Stages every input of an allocation of job `job_id` in `alloc_dir`, reading
    /// manifests from the leader at `leader_addr`; records them in `inputs.json`.
    pub async fn stage_all(
        &self,
        leader_addr: &str,
        alloc_dir: &Path,
        job_id: &str,
        inputs: &[String],
    ) -> Result<Vec<StagedInput>, String> {
        let mut staged = Vec::with_capacity(inputs.len());
        for input in inputs {
            staged.push(
                self.stage(leader_addr, alloc_dir, job_id, input)
                    .await
                    .map_err(|e| format!("staging input `{input}`: {e}"))?,
            );
        }
        let json = serde_json::to_vec_pretty(&staged).map_err(|e| e.to_string())?;
        std::fs::write(alloc_dir.join(INPUTS_RECORD), json)
            .map_err(|e| format!("recording the staged inputs: {e}"))?;
        Ok(staged)
    }

    async fn stage(
        &self,
        leader_addr: &str,
        alloc_dir: &Path,
        job_id: &str,
        reference: &str,
    ) -> Result<StagedInput, String> {
        let (name, selector) = VersionSelector::parse_reference(reference)?;
        let channel = self
            .controllers
            .get(leader_addr)
            .map_err(|e| e.to_string())?;
        let reply = transport::admin_client(channel)
            .get_object(GetObjectRequest {
                reference: reference.to_string(),
                consistency: 0,
            })
            .await
            .map_err(|s| format!("asking the leader for it: {}: {}", s.code(), s.message()))?
            .into_inner();
        let version = reply.version.as_ref().map_or(0, |v| v.version);
        // A version number (what acceptance pins) must name the version the job saw.
        if matches!(selector, VersionSelector::Number(_)) {
            steward_core::jobs::check_pinned_version(
                job_id,
                reference,
                reply.version.as_ref().map_or(0, |v| v.created_revision),
            )?;
        }
        let manifest = steward_proto::conv::manifest_from_pb(
            reply
                .manifest
                .as_ref()
                .ok_or("the leader sent no manifest")?,
        )?;
        manifest.validate()?;
        // Distinct chunks in order of first appearance, as `locations` lists them.
        let mut seen = std::collections::HashSet::new();
        let distinct: Vec<ChunkId> = manifest
            .chunks
            .iter()
            .filter(|c| seen.insert(c.id))
            .map(|c| c.id)
            .collect();
        if reply.locations.len() != distinct.len() {
            return Err(format!(
                "the leader listed holders for {} chunks, the manifest has {}",
                reply.locations.len(),
                distinct.len()
            ));
        }
        let addr_of: HashMap<String, String> = reply.node_addrs.clone().into_iter().collect();
        let mut chunks_local = 0u64;
        let mut wanted = Vec::new();
        for (id, holders) in distinct.iter().zip(&reply.locations) {
            // Present here: touched, so a garbage collection pass in progress keeps it.
            if self.store.touch_if_present(id) {
                chunks_local += 1;
                continue;
            }
            let nodes = self.source_order(id, &holders.nodes, holders.spread as usize);
            let sources: Vec<(String, String)> = nodes
                .into_iter()
                .filter_map(|n| addr_of.get(&n).map(|a| (n, a.clone())))
                .collect();
            wanted.push((*id, sources));
        }
        let mut chunks_from: BTreeMap<String, u64> = BTreeMap::new();
        let mut pulls = futures::stream::iter(wanted)
            .map(|(id, sources)| async move {
                let addrs: Vec<String> = sources.iter().map(|(_, a)| a.clone()).collect();
                let r = crate::chunks::service::copy_one(&self.store, &self.pool, &addrs, id).await;
                (id, sources, r)
            })
            .buffer_unordered(STAGE_PARALLELISM);
        while let Some((id, sources, r)) = pulls.next().await {
            match CopyOutcome::try_from(r.outcome) {
                Ok(CopyOutcome::Copied) => {
                    let node = sources
                        .iter()
                        .find(|(_, a)| *a == r.detail)
                        .map_or_else(|| r.detail.clone(), |(n, _)| n.clone());
                    *chunks_from.entry(node).or_default() += 1;
                }
                Ok(CopyOutcome::AlreadyPresent) => chunks_local += 1,
                _ => {
                    return Err(format!(
                        "chunk {id}: no source served it ({})",
                        if r.detail.is_empty() {
                            "no holder is known"
                        } else {
                            &r.detail
                        }
                    ))
                }
            }
        }
        drop(pulls);
        let path = input_path(alloc_dir, &name);
        let (store, target, m) = (self.store.clone(), path.clone(), manifest.clone());
        tokio::task::spawn_blocking(move || materialize(&store, &m, &target))
            .await
            .map_err(|e| e.to_string())??;
        Ok(StagedInput {
            reference: reference.to_string(),
            name,
            version,
            path,
            bytes: manifest.size,
            content_hash: manifest.content_hash.to_string(),
            chunks_local,
            chunks_from,
        })
    }

    /// The nodes to pull `chunk` from, best first: the leader lists ready copies outside
    /// the placement (`spread` of them) first; this node starts at its own place among
    /// them, so many nodes staging at once spread over the copies.
    fn source_order(&self, chunk: &ChunkId, nodes: &[String], spread: usize) -> Vec<String> {
        let mut nodes: Vec<String> = nodes
            .iter()
            .filter(|n| **n != self.node_id)
            .cloned()
            .collect();
        let spread = spread.min(nodes.len());
        if spread > 1 {
            let mut h = blake3::Hasher::new();
            h.update(chunk.as_bytes());
            h.update(self.node_id.as_bytes());
            let start =
                (u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().unwrap_or_default())
                    % spread as u64) as usize;
            nodes[..spread].rotate_left(start);
        }
        nodes
    }
}

/// Writes the version's bytes to `target` from the local store: each chunk verified as it
/// is read, the whole-content hash checked, then renamed into place read-only.
fn materialize(store: &ChunkStore, manifest: &Manifest, target: &Path) -> Result<(), String> {
    let dir = target.parent().ok_or("an input path has a parent")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let file_name = target
        .file_name()
        .ok_or("an input path has a file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.steward-staging"));
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?,
    );
    let mut content = ObjectHash::content_hasher();
    for c in &manifest.chunks {
        // `get` re-hashes: a chunk that rotted since it was pulled is never written.
        let bytes = store
            .get(&c.id)
            .map_err(|e| format!("reading chunk {}: {e}", c.id))?;
        content.update(&bytes);
        file.write_all(&bytes)
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    }
    let file = file
        .into_inner()
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    file.sync_all()
        .map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
    if ObjectHash::from_hash(content.finalize()) != manifest.content_hash {
        let _ = std::fs::remove_file(&tmp);
        return Err("the staged bytes do not hash to the version's content hash".into());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))
        .map_err(|e| format!("making {} read-only: {e}", tmp.display()))?;
    std::fs::rename(&tmp, target).map_err(|e| format!("renaming into {}: {e}", target.display()))
}
