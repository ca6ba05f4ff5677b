//! Commands: the only way the replicated cluster state changes.
//!
//! A command is proposed to the Raft leader, committed to a quorum's log, then applied by
//! every controller with [`crate::ClusterState::apply`].
//!
//! Both enums here are persisted (commands in the log, results in the state's request
//! sessions) in postcard, which encodes a variant by its position. So they only ever grow
//! at the end: a variant is never removed, reordered or changed, because old log entries
//! are replayed by new binaries. A new kind gets a new variant and a feature level
//! (`crate::features`), and is proposed only once every controller knows it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::inventory::Inventory;
use crate::job::JobSpec;
use crate::jobs::{AllocReport, GpuHealth, NewAllocation, StopAllocation};
use crate::node::NodeHealth;
use crate::state::v1;
use crate::ControllerId;

/// A client's request id: the client's random id and its own sequence number. A command
/// carrying one is applied at most once (Raft client sessions, Ongaro's thesis §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    pub client: u64,
    pub seq: u64,
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}.{}", self.client, self.seq)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    // ---- level 1 (format 1) ----
    /// Write `value` under `key`. With `expected_revision`, only if the key's current
    /// `mod_revision` equals it (0: only if the key does not exist).
    KvPut {
        key: String,
        value: Vec<u8>,
        expected_revision: Option<u64>,
    },
    /// Delete `key`; with `expected_revision`, only if its `mod_revision` equals it.
    KvDelete {
        key: String,
        expected_revision: Option<u64>,
    },
    /// A controller registers the incarnation of its data directory and its API address.
    /// The first incarnation reported for an id is kept; a later, different one is refused
    /// (that controller's data dir was wiped). The same incarnation may update the address.
    RegisterController {
        controller: ControllerId,
        incarnation: u64,
        api_addr: String,
    },
    /// Drop the incarnation record of a controller removed from the group, so that its id
    /// could be reused deliberately.
    ForgetController { controller: ControllerId },
    /// Format 1's operator restore, carrying a format-1 state. Replayed from old logs;
    /// never proposed (see `RestoreChunk`).
    RestoreStateV1 { state: Box<v1::ClusterState> },
    /// Format 1's node registration, with the inventory as a JSON document.
    RegisterNode {
        node: String,
        hostname: String,
        labels: BTreeMap<String, String>,
        inventory: Vec<u8>,
        inventory_digest: String,
    },
    /// Format 1's unconditional health change (see `TransitionNodeHealth`).
    SetNodeHealth {
        node: String,
        health: NodeHealth,
        reason: String,
    },
    /// Several commands in one log entry (the controller batches concurrent proposals so
    /// that they share one Raft round and one fsync). Applied in order; each gets its own
    /// result and revision.
    Batch(Vec<Command>),

    // ---- level 2 ----
    /// A batch stamped with the leader's clock when it was proposed: the cluster's clock
    /// (never going back) for request-session expiry and event times.
    Stamped {
        at_unix_ms: u64,
        commands: Vec<Command>,
    },
    /// A client request: applied at most once per request id; a repeat gets the first
    /// result back.
    Request {
        id: RequestId,
        command: Box<Command>,
    },
    /// The failure detector moves a node from `from` to `to`; nothing happens unless the
    /// node's health is `from` when this applies, so reordered or stale transitions are
    /// harmless.
    TransitionNodeHealth {
        node: String,
        from: NodeHealth,
        to: NodeHealth,
        reason: String,
    },
    /// An agent registers its machine, or re-registers it after its inventory changed.
    /// A new node starts `Ready`.
    RegisterNodeTyped {
        node: String,
        hostname: String,
        labels: BTreeMap<String, String>,
        inventory: Box<Inventory>,
        registration_digest: String,
    },
    /// Forget a retired machine (its record and registration; its events stay).
    RemoveNode { node: String },
    /// One piece of an operator restore: `data` goes at `offset` of restore `restore`'s
    /// staged state record (offset 0 starts a new restore, dropping an unfinished one).
    RestoreChunk {
        restore: u64,
        offset: u64,
        data: Vec<u8>,
    },
    /// Replace the cluster's data with restore `restore`'s staged state (a cluster-state
    /// record of any known format, `bytes` long with BLAKE3 `digest`). The live
    /// controllers' records are kept, and the revision keeps growing.
    RestoreCommit {
        restore: u64,
        bytes: u64,
        digest: String,
    },
    /// Raise the cluster's feature level (never lowers it). Proposed by the leader only
    /// when every member reported supporting `level`.
    SetClusterLevel { level: u32 },

    // ---- level 3: jobs ----
    /// A user submits a job; its id is `NAME-REVISION`.
    SubmitJob { spec: Box<JobSpec> },
    /// Stop every allocation of a job and place nothing more of it.
    CancelJob { job: String },
    /// Place tasks of `job`, all or none, each re-checked against the capacity the
    /// committed allocations hold when this applies (a gang: all its tasks).
    PlaceAllocations {
        job: String,
        placements: Vec<NewAllocation>,
    },
    /// Ask allocations (of the given generations) to stop: preemption, drain deadlines.
    StopAllocations { stops: Vec<StopAllocation> },
    /// Agents' reports of their allocations (a report of another generation is ignored).
    ReportAllocations {
        node: String,
        reports: Vec<AllocReport>,
    },
    /// Why a job waits, as the scheduler found it.
    SetJobPendingReason { job: String, reason: String },
    /// Cordon (no new placements) or drain a node (`drain_deadline_ms`: cluster time by
    /// which its allocations stop; `None` ends a drain).
    SetNodeScheduling {
        node: String,
        cordoned: bool,
        drain_deadline_ms: Option<u64>,
    },
    /// A GPU's committed health moves from `from` to `to` (conditional, like node health).
    TransitionGpuHealth {
        node: String,
        gpu: String,
        from: GpuHealth,
        to: GpuHealth,
        reason: String,
    },
    /// Forget finished jobs finished at or before `finished_before_ms`, and the oldest
    /// beyond `keep_at_most` finished jobs.
    CollectJobs {
        finished_before_ms: u64,
        keep_at_most: u32,
    },

    // ---- level 4 ----
    /// Commit a version of an object (`crate::objects`): a new version unless the newest
    /// one has the same manifest, factor and labels; its tags moved to it; retention
    /// applied.
    PutObjectVersion {
        put: Box<crate::objects::apply::PutVersion>,
    },
    /// Point `tag` of object `name` at version `to` (None: remove the tag), only if it
    /// names `expected` now (0: only if the tag does not exist; None: unconditionally).
    MoveObjectTag {
        name: String,
        tag: String,
        to: Option<u64>,
        expected: Option<u64>,
    },
    /// Delete one version, or the whole object (`version` None); tagged versions only with
    /// `force`.
    DeleteObject {
        name: String,
        version: Option<u64>,
        force: bool,
    },
    /// Planned maintenance of a node: its chunks are not repaired elsewhere while it is
    /// down (except those left with one live replica).
    SetNodeMaintenance {
        node: String,
        on: bool,
        reason: String,
    },

    // ---- level 5: exists only in the test build that checks rolling upgrades ----
    #[cfg(feature = "next-level")]
    LevelProbe { note: String },
}

impl Command {
    /// Short name for logs, metrics and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::KvPut { .. } => "kv_put",
            Command::KvDelete { .. } => "kv_delete",
            Command::RegisterController { .. } => "register_controller",
            Command::ForgetController { .. } => "forget_controller",
            Command::RestoreStateV1 { .. } => "restore_state_v1",
            Command::RegisterNode { .. } => "register_node",
            Command::SetNodeHealth { .. } => "set_node_health",
            Command::Batch(_) => "batch",
            Command::Stamped { .. } => "stamped",
            Command::Request { .. } => "request",
            Command::TransitionNodeHealth { .. } => "transition_node_health",
            Command::RegisterNodeTyped { .. } => "register_node_typed",
            Command::RemoveNode { .. } => "remove_node",
            Command::RestoreChunk { .. } => "restore_chunk",
            Command::RestoreCommit { .. } => "restore_commit",
            Command::SetClusterLevel { .. } => "set_cluster_level",
            Command::SubmitJob { .. } => "submit_job",
            Command::CancelJob { .. } => "cancel_job",
            Command::PlaceAllocations { .. } => "place_allocations",
            Command::StopAllocations { .. } => "stop_allocations",
            Command::ReportAllocations { .. } => "report_allocations",
            Command::SetJobPendingReason { .. } => "set_job_pending_reason",
            Command::SetNodeScheduling { .. } => "set_node_scheduling",
            Command::TransitionGpuHealth { .. } => "transition_gpu_health",
            Command::CollectJobs { .. } => "collect_jobs",
            Command::PutObjectVersion { .. } => "put_object_version",
            Command::MoveObjectTag { .. } => "move_object_tag",
            Command::DeleteObject { .. } => "delete_object",
            Command::SetNodeMaintenance { .. } => "set_node_maintenance",
            #[cfg(feature = "next-level")]
            Command::LevelProbe { .. } => "level_probe",
        }
    }

    /// The feature level that introduced this kind (for a wrapper, the highest level of
    /// what it carries).
    pub fn level(&self) -> u32 {
        match self {
            Command::KvPut { .. }
            | Command::KvDelete { .. }
            | Command::RegisterController { .. }
            | Command::ForgetController { .. }
            | Command::RestoreStateV1 { .. }
            | Command::RegisterNode { .. }
            | Command::SetNodeHealth { .. } => 1,
            Command::Batch(commands) => commands.iter().map(Command::level).max().unwrap_or(1),
            Command::Stamped { commands, .. } => commands
                .iter()
                .map(Command::level)
                .max()
                .unwrap_or(2)
                .max(2),
            Command::Request { command, .. } => command.level().max(2),
            Command::TransitionNodeHealth { .. }
            | Command::RegisterNodeTyped { .. }
            | Command::RemoveNode { .. }
            | Command::RestoreChunk { .. }
            | Command::RestoreCommit { .. }
            | Command::SetClusterLevel { .. } => 2,
            Command::SubmitJob { .. }
            | Command::CancelJob { .. }
            | Command::PlaceAllocations { .. }
            | Command::StopAllocations { .. }
            | Command::ReportAllocations { .. }
            | Command::SetJobPendingReason { .. }
            | Command::SetNodeScheduling { .. }
            | Command::TransitionGpuHealth { .. }
            | Command::CollectJobs { .. } => 3,
            Command::PutObjectVersion { .. }
            | Command::MoveObjectTag { .. }
            | Command::DeleteObject { .. }
            | Command::SetNodeMaintenance { .. } => 4,
            #[cfg(feature = "next-level")]
            Command::LevelProbe { .. } => 5,
        }
    }

    /// Approximate encoded size in bytes, for bounding batches and messages.
    pub fn approx_size(&self) -> usize {
        const OVERHEAD: usize = 32;
        OVERHEAD
            + match self {
                Command::KvPut { key, value, .. } => key.len() + value.len(),
                Command::KvDelete { key, .. } => key.len(),
                Command::RegisterController { api_addr, .. } => api_addr.len(),
                Command::ForgetController { .. } => 0,
                Command::RestoreStateV1 { state } => state
                    .kv
                    .iter()
                    .map(|(k, e)| k.len() + e.value.len() + 32)
                    .sum::<usize>(),
                Command::RegisterNode {
                    node,
                    hostname,
                    labels,
                    inventory,
                    inventory_digest,
                } => {
                    node.len()
                        + hostname.len()
                        + inventory.len()
                        + inventory_digest.len()
                        + labels_size(labels)
                }
                Command::SetNodeHealth { node, reason, .. }
                | Command::TransitionNodeHealth { node, reason, .. } => node.len() + reason.len(),
                Command::Batch(commands) | Command::Stamped { commands, .. } => {
                    commands.iter().map(Command::approx_size).sum()
                }
                Command::Request { command, .. } => 16 + command.approx_size(),
                Command::RegisterNodeTyped {
                    node,
                    hostname,
                    labels,
                    inventory,
                    registration_digest,
                } => {
                    node.len()
                        + hostname.len()
                        + registration_digest.len()
                        + labels_size(labels)
                        + crate::codec::encode_as("inventory", 1, inventory).map_or(0, |b| b.len())
                }
                Command::RemoveNode { node } => node.len(),
                Command::RestoreChunk { data, .. } => data.len(),
                Command::RestoreCommit { digest, .. } => digest.len(),
                Command::SetClusterLevel { .. } => 0,
                Command::SubmitJob { spec } => {
                    spec.name.len()
                        + spec.command.len()
                        + spec.args.iter().map(|a| a.len() + 2).sum::<usize>()
                        + labels_size(&spec.env)
                        + spec.inputs.iter().map(|i| i.len() + 2).sum::<usize>()
                        + 256
                }
                Command::CancelJob { job } => job.len(),
                Command::PlaceAllocations { job, placements } => {
                    job.len()
                        + placements
                            .iter()
                            .map(|p| {
                                48 + p.node.len()
                                    + p.gpus.iter().map(|g| g.len() + 1).sum::<usize>()
                                    + p.rendezvous
                                        .as_ref()
                                        .map_or(0, |r| 24 + r.master_addr.len())
                            })
                            .sum::<usize>()
                }
                Command::StopAllocations { stops } => {
                    stops.iter().map(|s| s.alloc.len() + 96).sum::<usize>()
                }
                Command::ReportAllocations { node, reports } => {
                    node.len()
                        + reports
                            .iter()
                            .map(|r| r.alloc.len() + r.reason.len() + 32)
                            .sum::<usize>()
                }
                Command::SetJobPendingReason { job, reason } => job.len() + reason.len(),
                Command::SetNodeScheduling { node, .. } => node.len() + 16,
                Command::TransitionGpuHealth {
                    node, gpu, reason, ..
                } => node.len() + gpu.len() + reason.len(),
                Command::CollectJobs { .. } => 16,
                Command::PutObjectVersion { put } => {
                    put.name.len()
                        + put.manifest.chunks.len() * 36
                        + 48
                        + labels_size(&put.labels)
                        + put.tags.iter().map(|t| t.len() + 2).sum::<usize>()
                }
                Command::MoveObjectTag { name, tag, .. } => name.len() + tag.len() + 24,
                Command::DeleteObject { name, .. } => name.len() + 16,
                Command::SetNodeMaintenance { node, reason, .. } => node.len() + reason.len(),
                #[cfg(feature = "next-level")]
                Command::LevelProbe { note } => note.len(),
            }
    }
}

fn labels_size(labels: &BTreeMap<String, String>) -> usize {
    labels.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// What applying one command produced. Returned to the proposer, and kept in request
/// sessions; deterministic on every controller. Grows only at the end (see the module).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A log entry with no command (leader blank entry or membership change).
    Nothing,
    KvPut {
        revision: u64,
    },
    KvDeleted {
        /// Whether the key existed.
        existed: bool,
        revision: u64,
    },
    /// A compare-and-set precondition failed; nothing changed.
    RevisionMismatch {
        key: String,
        expected: u64,
        /// The key's current `mod_revision`, 0 when it does not exist.
        actual: u64,
    },
    ControllerRegistered,
    /// The id is already recorded under another incarnation.
    IncarnationConflict {
        controller: ControllerId,
        recorded: u64,
        reported: u64,
    },
    ControllerForgotten,
    Restored {
        keys: u64,
        revision: u64,
    },
    NodeRegistered {
        revision: u64,
    },
    /// Health recorded; `changed` is false when it already was that.
    NodeHealthSet {
        changed: bool,
        revision: u64,
    },
    UnknownNode {
        node: String,
    },
    /// Results of a batch, in order.
    Batch(Vec<CommandResult>),

    // ---- level 2 ----
    /// A conditional health transition found the node in another health; nothing changed.
    NodeHealthConflict {
        node: String,
        expected: NodeHealth,
        actual: NodeHealth,
    },
    NodeRemoved {
        revision: u64,
    },
    /// The request is older than what the cluster remembers of its client (it keeps the
    /// last results of each client for a while): whether it was applied is unknown.
    RequestForgotten {
        id: RequestId,
    },
    /// The command's kind is newer than the cluster's feature level; nothing changed.
    FeatureNotEnabled {
        kind: String,
        needs: u32,
        cluster_level: u32,
    },
    /// The change would take the cluster state past its size limit; nothing changed.
    StateFull {
        limit: u64,
        would_be: u64,
    },
    RestoreStaged {
        restore: u64,
        bytes: u64,
    },
    /// A restore chunk or commit that does not fit the staged restore; nothing changed.
    RestoreRejected {
        reason: String,
    },
    /// The cluster's level is `level`; `changed` is false when it already was.
    ClusterLevelSet {
        level: u32,
        changed: bool,
        revision: u64,
    },
    /// Every remembered client was active too recently to be forgotten for a new one;
    /// nothing changed (retry later).
    SessionsFull {
        limit: u64,
    },

    // ---- level 3 ----
    JobSubmitted {
        job: String,
        revision: u64,
    },
    /// An invalid spec, or the job limit; nothing changed.
    JobRefused {
        reason: String,
    },
    UnknownJob {
        job: String,
    },
    /// A cancel or pending reason: `changed` is false when it already was so.
    JobUpdated {
        changed: bool,
        revision: u64,
    },
    AllocationsPlaced {
        allocs: Vec<String>,
        revision: u64,
    },
    /// A plan that does not fit the committed state (capacity taken, node not ready, task
    /// already placed); nothing of it was applied.
    PlacementRefused {
        reason: String,
    },
    AllocationsStopped {
        stopped: u32,
        revision: u64,
    },
    AllocationsReported {
        applied: u32,
        ignored: u32,
        revision: u64,
    },
    NodeSchedulingSet {
        changed: bool,
        revision: u64,
    },
    UnknownGpu {
        node: String,
        gpu: String,
    },
    GpuHealthConflict {
        node: String,
        gpu: String,
        expected: GpuHealth,
        actual: GpuHealth,
    },
    GpuHealthSet {
        changed: bool,
        revision: u64,
    },
    JobsCollected {
        jobs: u32,
        allocs: u32,
        revision: u64,
    },
    /// A node that is not down still holds live allocations: it is not removed (its work
    /// would be placed again while its agent may still run it); nothing changed.
    NodeBusy {
        node: String,
        health: NodeHealth,
        allocations: u32,
    },

    // ---- level 4 ----
    /// `version` is the version the put names: new (`created`) or the unchanged newest;
    /// `pruned`: versions the retention rule deleted.
    ObjectVersionPut {
        version: u64,
        created: bool,
        changed: bool,
        pruned: Vec<u64>,
        revision: u64,
    },
    /// An invalid request, a limit, or a version that is not there; nothing changed.
    ObjectRefused {
        reason: String,
    },
    UnknownObject {
        name: String,
    },
    /// A tag's compare-and-set failed (0: the tag does not exist); nothing changed.
    TagConflict {
        name: String,
        tag: String,
        expected: u64,
        actual: u64,
    },
    TagMoved {
        /// The version it named before.
        from: Option<u64>,
        changed: bool,
        pruned: Vec<u64>,
        revision: u64,
    },
    ObjectDeleted {
        versions: Vec<u64>,
        revision: u64,
    },
    NodeMaintenanceSet {
        changed: bool,
        revision: u64,
    },
    #[cfg(feature = "next-level")]
    LevelProbeApplied {
        revision: u64,
    },
}
