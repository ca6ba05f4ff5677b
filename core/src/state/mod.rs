//! The replicated cluster state and its deterministic transition function.
//!
//! `ClusterState` is what the Raft state machine holds and what snapshots contain. It is
//! plain data with ordered maps, so its encoding (and therefore [`ClusterState::digest`])
//! is identical on every controller that applied the same log prefix. The large maps are
//! persistent (`imbl`): cloning the state is O(1), so snapshots, `status` and operator
//! snapshot files encode a clone without holding up `apply`.
//!
//! Stored as a versioned record (`codec::Record`): format 4 is this layout (objects and
//! node storage settings added); formats 1, 2 and 3 are frozen in `v1`, `v2` and `v3` and
//! migrated on load.

mod imbl_de;
mod sessions;
pub mod v1;
pub mod v2;
pub mod v3;

use std::collections::BTreeMap;

use imbl::{OrdMap, Vector};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError, Record};
use crate::command::{Command, CommandResult};
use crate::features::BASE_LEVEL;
use crate::inventory::Inventory;
use crate::jobs::{Allocation, JobRecord, NodeScheduling, NodeUsage};
use crate::kv::KvEntry;
use crate::node::{NodeEvent, NodeHealth, NodeRecord, MAX_NODE_EVENTS};
use crate::objects::{ChunkUse, NodeStorage, ObjectRecord};
use crate::ControllerId;

pub use sessions::{
    ClientSession, MAX_RESULTS_PER_CLIENT, MAX_SESSIONS, MIN_IDLE_TO_FORGET_MS, SESSION_TTL_MS,
};

/// Largest the cluster state may grow (approximately: keys, values, node records and a
/// staged restore), in bytes. A write that would pass it is refused with `StateFull`.
pub const MAX_STATE_BYTES: u64 = 512 * 1024 * 1024;
/// The encoded state is at most its counted size plus this, which covers what is not
/// counted one by one: request sessions (at most about 176 MiB, see `sessions`), node
/// events (10,000 of a few hundred bytes), controller records and encoding overhead.
pub const MAX_UNCOUNTED_BYTES: u64 = 256 * 1024 * 1024;
/// Largest encoded state any controller can hold: what snapshot files must accept.
pub const MAX_ENCODED_STATE_BYTES: u64 = MAX_STATE_BYTES + MAX_UNCOUNTED_BYTES;

/// Counted bytes of one KV entry beyond its key and value (revisions, lengths).
const KV_ENTRY_OVERHEAD: u64 = 48;
/// Counted bytes of one node record beyond its strings and inventory.
const NODE_OVERHEAD: u64 = 96;

/// What the cluster remembers about one controller's data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    /// Random id made when the controller's data dir was created.
    pub incarnation: u64,
    /// Address of its admin/agent API, as it last registered.
    pub api_addr: String,
    /// Cluster revision at which it was first recorded.
    pub recorded_at: u64,
}

/// An operator restore being received, chunk by chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRestore {
    pub restore: u64,
    /// The staged cluster-state record so far.
    pub data: StagedBytes,
}

/// Bytes received in chunks, shared between copies of the state: copying the state (for a
/// status digest, a snapshot) copies a list of pointers, never the staged bytes. Encoded
/// exactly as a `Vec<u8>` (format 2 stored it as one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StagedBytes {
    chunks: Vec<std::sync::Arc<[u8]>>,
    len: usize,
}

impl StagedBytes {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, chunk: Vec<u8>) {
        self.len += chunk.len();
        self.chunks.push(chunk.into());
    }

    /// BLAKE3 of all the bytes, hex.
    pub fn digest(&self) -> String {
        let mut h = blake3::Hasher::new();
        for c in &self.chunks {
            h.update(c);
        }
        h.finalize().to_hex().to_string()
    }

    /// All the bytes, in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for c in &self.chunks {
            v.extend_from_slice(c);
        }
        v
    }
}

impl From<Vec<u8>> for StagedBytes {
    fn from(v: Vec<u8>) -> Self {
        let mut s = StagedBytes::default();
        s.push(v);
        s
    }
}

impl Serialize for StagedBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for byte in self.chunks.iter().flat_map(|c| c.iter()) {
            seq.serialize_element(byte)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for StagedBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(deserializer).map(StagedBytes::from)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Revision of the last change; grows by one with every change, like etcd's revision.
    pub revision: u64,
    /// The metadata key-value namespace.
    #[serde(deserialize_with = "imbl_de::ord_map")]
    pub kv: OrdMap<String, KvEntry>,
    /// Incarnation of each controller's data dir, used to refuse a wiped member.
    pub controllers: BTreeMap<ControllerId, ControllerRecord>,
    /// Agents' machines by node id.
    #[serde(deserialize_with = "imbl_de::ord_map")]
    pub nodes: OrdMap<String, NodeRecord>,
    /// Health changes, oldest first, at most [`MAX_NODE_EVENTS`].
    #[serde(deserialize_with = "imbl_de::vector")]
    pub node_events: Vector<NodeEvent>,
    /// The cluster's feature level (`crate::features`): commands above it are refused.
    pub cluster_level: u32,
    /// The cluster's clock: the latest leader time stamped on an entry (never goes back).
    pub clock_unix_ms: u64,
    /// Clients' request sessions, for at-most-once writes.
    #[serde(deserialize_with = "imbl_de::ord_map")]
    pub sessions: OrdMap<u64, ClientSession>,
    pub pending_restore: Option<PendingRestore>,
    /// Jobs by id (`NAME-REVISION`), running and finished (until collected).
    #[serde(deserialize_with = "imbl_de::ord_map")]
    pub jobs: OrdMap<String, JobRecord>,
    /// Allocations by id (`JOB.TASK.N`).
    #[serde(deserialize_with = "imbl_de::ord_map")]
    pub allocs: OrdMap<String, Allocation>,
    /// Cordons, drains and GPU health by node id (absent: schedulable, all GPUs healthy).
    #[serde(deserialize_with = "imbl_de::ord_map")]
    pub node_scheduling: OrdMap<String, NodeScheduling>,
    /// Objects by name: versions (chunk manifests), tags, retention (`crate::objects`).
    #[serde(deserialize_with = "imbl_de::ord_map")]
    pub objects: OrdMap<String, ObjectRecord>,
    /// Nodes' storage settings (maintenance) by node id (absent: none).
    #[serde(deserialize_with = "imbl_de::ord_map")]
    pub node_storage: OrdMap<String, NodeStorage>,
    /// Counted size (not stored: recomputed when a state is decoded).
    #[serde(skip)]
    pub(crate) counted_bytes: u64,
    /// What the live allocations hold on each node (not stored: rebuilt when a state is
    /// decoded).
    #[serde(skip)]
    pub(crate) usage: OrdMap<String, NodeUsage>,
    /// Every chunk the objects' versions reference (not stored: rebuilt when a state is
    /// decoded).
    #[serde(skip)]
    pub(crate) chunk_refs: OrdMap<crate::chunk::ChunkId, ChunkUse>,
}

impl Default for ClusterState {
    fn default() -> Self {
        ClusterState {
            revision: 0,
            kv: OrdMap::new(),
            controllers: BTreeMap::new(),
            nodes: OrdMap::new(),
            node_events: Vector::new(),
            cluster_level: BASE_LEVEL,
            clock_unix_ms: 0,
            sessions: OrdMap::new(),
            pending_restore: None,
            jobs: OrdMap::new(),
            allocs: OrdMap::new(),
            node_scheduling: OrdMap::new(),
            objects: OrdMap::new(),
            node_storage: OrdMap::new(),
            counted_bytes: 0,
            usage: OrdMap::new(),
            chunk_refs: OrdMap::new(),
        }
    }
}

impl Record for ClusterState {
    const KIND: &'static str = "cluster state";
    const VERSION: u8 = 4;
    const OLDEST: u8 = 1;

    fn migrate(version: u8, body: &[u8]) -> Result<Self, CodecError> {
        match version {
            1 => Ok(codec::decode_body::<v1::ClusterState>(Self::KIND, body)?.into_current()),
            2 => Ok(codec::decode_body::<v2::ClusterState>(Self::KIND, body)?.into_current()),
            3 => Ok(codec::decode_body::<v3::ClusterState>(Self::KIND, body)?.into_current()),
            _ => Err(CodecError::Migration {
                what: Self::KIND,
                from: version,
                message: "no migration from this version".into(),
            }),
        }
    }
}

/// Whether applying produced a change that takes a revision.
fn result_changes(result: &CommandResult) -> bool {
    match result {
        CommandResult::KvPut { .. }
        | CommandResult::KvDeleted { .. }
        | CommandResult::ControllerRegistered
        | CommandResult::ControllerForgotten
        | CommandResult::Restored { .. }
        | CommandResult::NodeRegistered { .. }
        | CommandResult::NodeHealthSet { changed: true, .. }
        | CommandResult::NodeRemoved { .. }
        | CommandResult::ClusterLevelSet { changed: true, .. }
        | CommandResult::JobSubmitted { .. }
        | CommandResult::JobUpdated { changed: true, .. }
        | CommandResult::AllocationsPlaced { .. }
        | CommandResult::NodeSchedulingSet { changed: true, .. }
        | CommandResult::GpuHealthSet { changed: true, .. } => true,
        CommandResult::AllocationsStopped { stopped, .. } => *stopped > 0,
        CommandResult::AllocationsReported { applied, .. } => *applied > 0,
        CommandResult::JobsCollected { jobs, .. } => *jobs > 0,
        CommandResult::ObjectVersionPut { changed, .. }
        | CommandResult::TagMoved { changed, .. }
        | CommandResult::NodeMaintenanceSet { changed, .. } => *changed,
        CommandResult::ObjectDeleted { .. } => true,
        #[cfg(feature = "next-level")]
        CommandResult::LevelProbeApplied { .. } => true,
        CommandResult::Nothing
        | CommandResult::SessionsFull { .. }
        | CommandResult::RevisionMismatch { .. }
        | CommandResult::IncarnationConflict { .. }
        | CommandResult::NodeHealthSet { changed: false, .. }
        | CommandResult::UnknownNode { .. }
        | CommandResult::Batch(_)
        | CommandResult::NodeHealthConflict { .. }
        | CommandResult::RequestForgotten { .. }
        | CommandResult::FeatureNotEnabled { .. }
        | CommandResult::StateFull { .. }
        | CommandResult::RestoreStaged { .. }
        | CommandResult::RestoreRejected { .. }
        | CommandResult::ClusterLevelSet { changed: false, .. }
        | CommandResult::JobRefused { .. }
        | CommandResult::UnknownJob { .. }
        | CommandResult::JobUpdated { changed: false, .. }
        | CommandResult::PlacementRefused { .. }
        | CommandResult::NodeSchedulingSet { changed: false, .. }
        | CommandResult::UnknownGpu { .. }
        | CommandResult::GpuHealthConflict { .. }
        | CommandResult::GpuHealthSet { changed: false, .. }
        | CommandResult::NodeBusy { .. }
        | CommandResult::ObjectRefused { .. }
        | CommandResult::UnknownObject { .. }
        | CommandResult::TagConflict { .. } => false,
    }
}

fn kv_size(key: &str, e: &KvEntry) -> u64 {
    (key.len() + e.value.len()) as u64 + KV_ENTRY_OVERHEAD
}

fn node_size(id: &str, n: &NodeRecord) -> u64 {
    let labels: usize = n.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    let inventory = codec::encode_as("inventory", 1, &n.inventory).map_or(0, |b| b.len());
    (id.len() + n.hostname.len() + n.registration_digest.len() + labels + inventory) as u64
        + NODE_OVERHEAD
}

impl ClusterState {
    /// Applies one committed command. Pure and deterministic: every change takes the next
    /// revision; a refused command changes nothing.
    pub fn apply(&mut self, command: Command) -> CommandResult {
        if let Some(refused) = self.gate(&command) {
            return refused;
        }
        match command {
            Command::Batch(commands) => {
                CommandResult::Batch(commands.into_iter().map(|c| self.apply(c)).collect())
            }
            Command::Stamped {
                at_unix_ms,
                commands,
            } => {
                self.advance_clock(at_unix_ms);
                CommandResult::Batch(commands.into_iter().map(|c| self.apply(c)).collect())
            }
            Command::Request { id, command } => self.apply_request(id, *command),
            other => {
                let revision = self.revision + 1;
                let result = self.apply_at(revision, other);
                match &result {
                    CommandResult::Restored { revision, .. } => self.revision = *revision,
                    r if result_changes(r) => self.revision = revision,
                    _ => {}
                }
                result
            }
        }
    }

    /// Refuses a command above the cluster's feature level (raising the level itself is
    /// checked by its proposer: every member must support it).
    fn gate(&self, command: &Command) -> Option<CommandResult> {
        let needs = match command {
            Command::SetClusterLevel { .. } => self.cluster_level,
            c => c.level(),
        };
        (needs > self.cluster_level).then(|| CommandResult::FeatureNotEnabled {
            kind: command.kind().to_string(),
            needs,
            cluster_level: self.cluster_level,
        })
    }

    fn apply_at(&mut self, revision: u64, command: Command) -> CommandResult {
        match command {
            Command::KvPut {
                key,
                value,
                expected_revision,
            } => self.kv_put(revision, key, value, expected_revision),
            Command::KvDelete {
                key,
                expected_revision,
            } => {
                if let Some(expected) = expected_revision {
                    let actual = self.kv.get(&key).map_or(0, |e| e.mod_revision);
                    if actual != expected {
                        return CommandResult::RevisionMismatch {
                            key,
                            expected,
                            actual,
                        };
                    }
                }
                let existed = self.remove_kv(&key);
                CommandResult::KvDeleted { existed, revision }
            }
            Command::RegisterController {
                controller,
                incarnation,
                api_addr,
            } => match self.controllers.get_mut(&controller) {
                Some(rec) if rec.incarnation != incarnation => CommandResult::IncarnationConflict {
                    controller,
                    recorded: rec.incarnation,
                    reported: incarnation,
                },
                Some(rec) => {
                    rec.api_addr = api_addr;
                    CommandResult::ControllerRegistered
                }
                None => {
                    self.controllers.insert(
                        controller,
                        ControllerRecord {
                            incarnation,
                            api_addr,
                            recorded_at: revision,
                        },
                    );
                    CommandResult::ControllerRegistered
                }
            },
            Command::ForgetController { controller } => {
                self.controllers.remove(&controller);
                CommandResult::ControllerForgotten
            }
            Command::RestoreStateV1 { state } => self.restore(revision, state.into_current()),
            Command::RegisterNode {
                node,
                hostname,
                labels,
                inventory,
                inventory_digest,
            } => self.register_node(
                revision,
                node,
                hostname,
                labels,
                Inventory::from_json_lenient(&inventory),
                inventory_digest,
            ),
            Command::RegisterNodeTyped {
                node,
                hostname,
                labels,
                inventory,
                registration_digest,
            } => self.register_node(
                revision,
                node,
                hostname,
                labels,
                *inventory,
                registration_digest,
            ),
            Command::SetNodeHealth {
                node,
                health,
                reason,
            } => match self.nodes.get(&node).map(|r| r.health) {
                None => CommandResult::UnknownNode { node },
                Some(current) => self.set_health(revision, node, current, health, reason),
            },
            Command::TransitionNodeHealth {
                node,
                from,
                to,
                reason,
            } => match self.nodes.get(&node).map(|r| r.health) {
                None => CommandResult::UnknownNode { node },
                Some(actual) if actual != from => CommandResult::NodeHealthConflict {
                    node,
                    expected: from,
                    actual,
                },
                Some(current) => self.set_health(revision, node, current, to, reason),
            },
            Command::RemoveNode { node } if self.removal_would_duplicate(&node) => {
                CommandResult::NodeBusy {
                    health: self.nodes[&node].health,
                    allocations: self.live_allocs_on(&node).len() as u32,
                    node,
                }
            }
            Command::RemoveNode { node } => match self.nodes.remove(&node) {
                None => CommandResult::UnknownNode { node },
                Some(rec) => {
                    self.counted_bytes = self.counted_bytes.saturating_sub(node_size(&node, &rec));
                    self.node_lost(revision, &node, true);
                    self.node_scheduling.remove(&node);
                    self.node_storage.remove(&node);
                    self.push_event(NodeEvent {
                        revision,
                        at_unix_ms: self.clock_unix_ms,
                        node,
                        from: Some(rec.health),
                        to: None,
                        reason: "removed by an operator".into(),
                    });
                    CommandResult::NodeRemoved { revision }
                }
            },
            Command::RestoreChunk {
                restore,
                offset,
                data,
            } => self.restore_chunk(restore, offset, data),
            Command::RestoreCommit {
                restore,
                bytes,
                digest,
            } => self.restore_commit(revision, restore, bytes, &digest),
            Command::SubmitJob { spec } => self.submit_job(revision, *spec),
            Command::CancelJob { job } => self.cancel_job(revision, job),
            Command::PlaceAllocations { job, placements } => {
                self.place_allocations(revision, job, placements)
            }
            Command::StopAllocations { stops } => self.stop_allocations(revision, stops),
            Command::ReportAllocations { node, reports } => {
                self.report_allocations(revision, node, reports)
            }
            Command::SetJobPendingReason { job, reason } => {
                self.set_pending_reason(revision, job, reason)
            }
            Command::SetNodeScheduling {
                node,
                cordoned,
                drain_deadline_ms,
            } => self.set_node_scheduling(revision, node, cordoned, drain_deadline_ms),
            Command::TransitionGpuHealth {
                node,
                gpu,
                from,
                to,
                reason,
            } => self.transition_gpu_health(revision, node, gpu, from, to, reason),
            Command::CollectJobs {
                finished_before_ms,
                keep_at_most,
            } => self.collect_jobs(revision, finished_before_ms, keep_at_most),
            Command::SetClusterLevel { level } if level <= self.cluster_level => {
                CommandResult::ClusterLevelSet {
                    level: self.cluster_level,
                    changed: false,
                    revision: revision - 1,
                }
            }
            Command::SetClusterLevel { level } => {
                self.cluster_level = level;
                CommandResult::ClusterLevelSet {
                    level,
                    changed: true,
                    revision,
                }
            }
            Command::PutObjectVersion { put } => self.put_object_version(revision, *put),
            Command::MoveObjectTag {
                name,
                tag,
                to,
                expected,
            } => self.move_object_tag(revision, name, tag, to, expected),
            Command::DeleteObject {
                name,
                version,
                force,
            } => self.delete_object(revision, name, version, force),
            Command::SetNodeMaintenance { node, on, reason } => {
                self.set_node_maintenance(revision, node, on, reason)
            }
            #[cfg(feature = "next-level")]
            Command::LevelProbe { note } => {
                let key = "steward/level-probe".to_string();
                let r = self.kv_put(revision, key, note.into_bytes(), None);
                match r {
                    CommandResult::KvPut { revision } => {
                        CommandResult::LevelProbeApplied { revision }
                    }
                    other => other,
                }
            }
            Command::Batch(_) | Command::Stamped { .. } | Command::Request { .. } => {
                unreachable!("wrappers are applied by `apply`")
            }
        }
    }

    fn kv_put(
        &mut self,
        revision: u64,
        key: String,
        value: Vec<u8>,
        expected_revision: Option<u64>,
    ) -> CommandResult {
        let current = self.kv.get(&key);
        if let Some(expected) = expected_revision {
            let actual = current.map_or(0, |e| e.mod_revision);
            if actual != expected {
                return CommandResult::RevisionMismatch {
                    key,
                    expected,
                    actual,
                };
            }
        }
        let value: std::sync::Arc<[u8]> = value.into();
        let entry = match current {
            Some(old) => KvEntry {
                value,
                create_revision: old.create_revision,
                mod_revision: revision,
                version: old.version + 1,
            },
            None => KvEntry {
                value,
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            },
        };
        let old = current.map_or(0, |e| kv_size(&key, e));
        if let Some(full) = self.refuse_growth(old, kv_size(&key, &entry)) {
            return full;
        }
        self.insert_kv(key, entry);
        CommandResult::KvPut { revision }
    }

    /// `StateFull` when replacing `old` counted bytes with `new` passes the limit.
    pub(crate) fn refuse_growth(&self, old: u64, new: u64) -> Option<CommandResult> {
        let would_be = self.counted_bytes.saturating_sub(old) + new;
        (new > old && would_be > MAX_STATE_BYTES).then_some(CommandResult::StateFull {
            limit: MAX_STATE_BYTES,
            would_be,
        })
    }

    /// Inserts a KV entry, keeping the counted size.
    pub(crate) fn insert_kv(&mut self, key: String, entry: KvEntry) {
        let added = kv_size(&key, &entry);
        if let Some(old) = self.kv.insert(key.clone(), entry) {
            self.counted_bytes = self.counted_bytes.saturating_sub(kv_size(&key, &old));
        }
        self.counted_bytes += added;
    }

    fn remove_kv(&mut self, key: &str) -> bool {
        match self.kv.remove(key) {
            Some(old) => {
                self.counted_bytes = self.counted_bytes.saturating_sub(kv_size(key, &old));
                true
            }
            None => false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn register_node(
        &mut self,
        revision: u64,
        node: String,
        hostname: String,
        labels: BTreeMap<String, String>,
        inventory: Inventory,
        registration_digest: String,
    ) -> CommandResult {
        let existing = self.nodes.get(&node).cloned();
        let record = NodeRecord {
            hostname,
            labels,
            inventory,
            registration_digest,
            health: existing.as_ref().map_or(NodeHealth::Ready, |r| r.health),
            health_since: existing.as_ref().map_or(revision, |r| r.health_since),
            registered_at: existing.as_ref().map_or(revision, |r| r.registered_at),
        };
        let old = existing.as_ref().map_or(0, |r| node_size(&node, r));
        let new = node_size(&node, &record);
        if let Some(full) = self.refuse_growth(old, new) {
            return full;
        }
        self.counted_bytes = self.counted_bytes.saturating_sub(old) + new;
        self.nodes.insert(node.clone(), record);
        if existing.is_none() {
            self.push_event(NodeEvent {
                revision,
                at_unix_ms: self.clock_unix_ms,
                node,
                from: None,
                to: Some(NodeHealth::Ready),
                reason: "registered".into(),
            });
        }
        CommandResult::NodeRegistered { revision }
    }

    fn set_health(
        &mut self,
        revision: u64,
        node: String,
        current: NodeHealth,
        health: NodeHealth,
        reason: String,
    ) -> CommandResult {
        if current == health {
            // Nothing changes: report the current revision, take none.
            return CommandResult::NodeHealthSet {
                changed: false,
                revision: revision - 1,
            };
        }
        if let Some(rec) = self.nodes.get_mut(&node) {
            rec.health = health;
            rec.health_since = revision;
        }
        self.push_event(NodeEvent {
            revision,
            at_unix_ms: self.clock_unix_ms,
            node: node.clone(),
            from: Some(current),
            to: Some(health),
            reason,
        });
        if health == NodeHealth::Down {
            self.node_lost(revision, &node, false);
        }
        CommandResult::NodeHealthSet {
            changed: true,
            revision,
        }
    }

    pub(crate) fn push_event(&mut self, event: NodeEvent) {
        if self.node_events.len() >= MAX_NODE_EVENTS {
            self.node_events.pop_front();
        }
        self.node_events.push_back(event);
    }

    fn advance_clock(&mut self, at_unix_ms: u64) {
        let before = self.clock_unix_ms;
        self.clock_unix_ms = before.max(at_unix_ms);
        sessions::expire(self, before);
    }

    fn restore_chunk(&mut self, restore: u64, offset: u64, data: Vec<u8>) -> CommandResult {
        let staged = match &self.pending_restore {
            _ if offset == 0 => 0,
            Some(p) if p.restore == restore && p.data.len() as u64 == offset => offset,
            Some(p) => {
                return CommandResult::RestoreRejected {
                    reason: format!(
                        "chunk at offset {offset} of restore {restore:x} does not follow the staged restore {:x} ({} bytes)",
                        p.restore,
                        p.data.len()
                    ),
                }
            }
            None => {
                return CommandResult::RestoreRejected {
                    reason: format!(
                        "chunk at offset {offset} of restore {restore:x}, but no restore is staged"
                    ),
                }
            }
        };
        let old = self
            .pending_restore
            .as_ref()
            .map_or(0, |p| p.data.len() as u64);
        let new = staged + data.len() as u64;
        if new > MAX_ENCODED_STATE_BYTES {
            return CommandResult::RestoreRejected {
                reason: format!(
                    "a restored state of over {new} bytes is larger than any state ({MAX_ENCODED_STATE_BYTES} bytes)"
                ),
            };
        }
        self.counted_bytes = self.counted_bytes.saturating_sub(old) + new;
        match &mut self.pending_restore {
            Some(p) if offset > 0 => p.data.push(data),
            slot => {
                *slot = Some(PendingRestore {
                    restore,
                    data: data.into(),
                })
            }
        }
        CommandResult::RestoreStaged {
            restore,
            bytes: new,
        }
    }

    fn restore_commit(
        &mut self,
        revision: u64,
        restore: u64,
        bytes: u64,
        digest: &str,
    ) -> CommandResult {
        let reject = |reason: String| CommandResult::RestoreRejected { reason };
        let Some(p) = &self.pending_restore else {
            return reject(format!("restore {restore:x} has nothing staged"));
        };
        if p.restore != restore || p.data.len() as u64 != bytes {
            return reject(format!(
                "restore {restore:x} of {bytes} bytes does not match the staged restore {:x} of {} bytes",
                p.restore,
                p.data.len()
            ));
        }
        if p.data.digest() != digest {
            return reject(format!(
                "restore {restore:x}: the staged bytes do not match their digest"
            ));
        }
        let state = match ClusterState::decode(&p.data.to_vec()) {
            Ok(s) => s,
            Err(e) => return reject(format!("restore {restore:x}: {e}")),
        };
        self.counted_bytes = self.counted_bytes.saturating_sub(p.data.len() as u64);
        self.pending_restore = None;
        self.restore(revision, state)
    }

    /// Replaces the cluster's data with `restored`, keeping what belongs to the live
    /// cluster: its controllers, clients' sessions, feature level and clock. Revisions
    /// never go back.
    fn restore(&mut self, revision: u64, restored: ClusterState) -> CommandResult {
        let keys = restored.kv.len() as u64;
        let live = std::mem::take(self);
        *self = restored;
        self.controllers = live.controllers;
        self.sessions = live.sessions;
        self.cluster_level = live.cluster_level.max(self.cluster_level);
        self.clock_unix_ms = live.clock_unix_ms.max(self.clock_unix_ms);
        self.pending_restore = None;
        self.recount();
        // The restored revision may be older: never let revisions go back.
        let revision = revision.max(self.revision + 1).max(live.revision + 1);
        CommandResult::Restored { keys, revision }
    }

    /// Drops a staged restore. The state machine calls this on the first (blank) entry of
    /// every new leader: a restore is sent by one leader, and a leader change fails it, so
    /// nothing staged before the change can be committed. Every controller applies the
    /// same entries, so every one drops it at the same point.
    pub fn abandon_restore(&mut self) {
        if let Some(p) = self.pending_restore.take() {
            self.counted_bytes = self.counted_bytes.saturating_sub(p.data.len() as u64);
        }
    }

    /// The counted size of the state, in bytes (see [`MAX_STATE_BYTES`]).
    pub fn counted_bytes(&self) -> u64 {
        self.counted_bytes
    }

    /// Recomputes the counted size from scratch.
    fn recount(&mut self) {
        self.counted_bytes = self.kv.iter().map(|(k, e)| kv_size(k, e)).sum::<u64>()
            + self
                .nodes
                .iter()
                .map(|(id, n)| node_size(id, n))
                .sum::<u64>()
            + self
                .pending_restore
                .as_ref()
                .map_or(0, |p| p.data.len() as u64)
            + self.jobs.values().map(crate::jobs::job_size).sum::<u64>()
            + self
                .allocs
                .values()
                .map(crate::jobs::alloc_size)
                .sum::<u64>()
            + self.objects_size();
        self.rebuild_usage();
        self.rebuild_chunk_refs();
    }

    /// Entries whose key starts with `prefix`, strictly after `start_after`, at most `limit`.
    pub fn kv_list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        limit: usize,
    ) -> impl Iterator<Item = (&'a String, &'a KvEntry)> + 'a {
        use std::ops::Bound;
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        self.kv
            .range::<_, String>((lower, Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .take(limit)
    }

    /// Versioned binary encoding of the whole state.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }

    /// Decodes a state of any known format.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut state: ClusterState = codec::decode(bytes)?;
        state.recount();
        Ok(state)
    }

    /// BLAKE3 digest of the encoded state, hex. Equal on controllers that applied the same
    /// log prefix; the tests compare it across controllers.
    pub fn digest(&self) -> Result<String, CodecError> {
        Ok(blake3::hash(&self.encode()?).to_hex().to_string())
    }
}

#[cfg(test)]
mod tests;
