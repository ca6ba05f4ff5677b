//! Storage repair, rebalancing and trimming: the leader's loop that keeps every referenced
//! chunk at its replication factor, spread over failure domains, where the layout puts it.
//!
//! Each pass surveys the chunks (`Survey`): the layout from the registered nodes (a node
//! down longer than `repair_delay` outside maintenance, or draining, loses its place), what
//! each node can do now (ready, disk above its floor), and the holders the agents reported
//! (`replicas.rs`); `steward_core::objects::repair::assess` decides per chunk. Copies go
//! most urgent first (one live replica left, then below the factor, badly spread,
//! misplaced) as `CopyChunks` calls to the target agents, which pull from live holders and
//! verify: bytes never pass through a controller. Throttles: at most
//! `copies_per_node` calls in flight per target (each up to `CHUNKS_PER_COPY` chunks), and
//! a cluster-wide budget of `repair_bandwidth` bytes per second. A surplus replica (every
//! placed node holds the chunk live) is removed from the node outside its place.
//! `steward fsck` reads the same survey.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use steward_core::chunk::ChunkId;
use steward_core::node::NodeHealth;
use steward_core::objects::placement::{Layout, LayoutNode};
use steward_core::objects::repair::{assess, Assessment, NodeView, Risk};
use steward_core::objects::ChunkUse;
use steward_core::state::ClusterState;
use steward_proto::v1::{CopyChunksRequest, CopyOutcome, HasChunksRequest, RemoveChunksRequest};
use steward_runtime::transport::{self, ChannelPool, ClientOptions};
use steward_runtime::{Next, Worker, WorkerError};

use super::liveness::LivenessTracker;
use super::replicas::ReplicaTracker;
use crate::raft::RaftHandle;

/// The feature level that brought objects.
const LEVEL: u32 = 4;
/// Time between passes while there is work; and when there is none.
const BUSY_TICK: Duration = Duration::from_millis(500);
const IDLE_TICK: Duration = Duration::from_secs(2);
/// The loop rests at least this many times as long as its last survey took (so surveys
/// use at most a quarter of one core on a large store).
const SURVEY_DUTY: u32 = 3;
/// Chunks per `CopyChunks` call.
pub const CHUNKS_PER_COPY: usize = 64;
/// Chunks per `RemoveChunks` call.
const CHUNKS_PER_TRIM: usize = 1_000;
/// Sources named per copy call (the agent takes at most 16).
const MAX_SOURCES: usize = 16;
/// Deadline of one copy call.
const COPY_TIMEOUT: Duration = Duration::from_secs(120);

/// The repair loop's settings (`[storage]` in the controller's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairTuning {
    /// How long a down node keeps its place before its chunks are copied elsewhere
    /// (chunks left with one live replica are copied at once).
    pub repair_delay: Duration,
    /// Cluster-wide copy budget, bytes per second.
    pub bandwidth_bytes_per_sec: u64,
    /// Copy calls in flight per target node.
    pub copies_per_node: usize,
}

impl Default for RepairTuning {
    fn default() -> Self {
        RepairTuning {
            repair_delay: Duration::from_secs(5 * 60),
            bandwidth_bytes_per_sec: 200 << 20,
            copies_per_node: 2,
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One chunk's standing in a survey.
pub struct ChunkStanding {
    pub id: ChunkId,
    pub need: ChunkUse,
    pub holders: Vec<usize>,
    pub assessment: Assessment,
}

/// The storage layout and every referenced chunk's assessment, at one moment.
pub struct Survey {
    pub layout: Layout,
    pub views: Vec<NodeView>,
    pub addrs: Vec<Option<String>>,
    pub health: Vec<NodeHealth>,
    pub maintenance: Vec<bool>,
    /// Out of the layout: down past `repair_delay` outside maintenance, or draining.
    pub out: Vec<bool>,
    pub chunks: Vec<ChunkStanding>,
    /// Replicas of referenced chunks known per node (layout index).
    pub replicas_per_node: Vec<u64>,
    /// Every live node has reported its full list to this leader.
    pub complete: bool,
}

/// Per layout node, the chunks of the inputs of the allocations that run (or are about to
/// run) there.
fn staged_inputs(state: &ClusterState, layout: &Layout) -> HashMap<usize, HashSet<ChunkId>> {
    let mut out: HashMap<usize, HashSet<ChunkId>> = HashMap::new();
    for a in state.allocs.values().filter(|a| !a.state.is_terminal()) {
        let Some(job) = state.jobs.get(&a.job).filter(|j| !j.spec.inputs.is_empty()) else {
            continue;
        };
        let Some(node) = layout.index_of(&a.node) else {
            continue;
        };
        for v in job
            .spec
            .inputs
            .iter()
            .filter_map(|i| state.version_named(i))
        {
            out.entry(node)
                .or_default()
                .extend(v.manifest.chunks.iter().map(|c| c.id));
        }
    }
    out
}

impl Survey {
    /// Surveys every referenced chunk, or only those in `only`.
    pub fn take(
        state: &ClusterState,
        liveness: &LivenessTracker,
        replicas: &ReplicaTracker,
        repair_delay: Duration,
        only: Option<&HashSet<ChunkId>>,
    ) -> Survey {
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for (id, n) in state.nodes.iter() {
            if n.inventory.agent.api_addr.is_some() {
                nodes.push(LayoutNode::from_labels(id, &n.labels));
            }
        }
        let layout = Layout::new(nodes);
        // When each node last went down (the leader's clock on the event).
        let mut down_since: HashMap<&str, u64> = HashMap::new();
        for e in state.node_events.iter() {
            if e.to == Some(NodeHealth::Down) {
                down_since.insert(e.node.as_str(), e.at_unix_ms);
            }
        }
        let now = now_ms();
        let (mut views, mut health, mut maintenance, mut out) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for n in layout.nodes() {
            let rec = &state.nodes[&n.id];
            addrs.push(rec.inventory.agent.api_addr.clone());
            let in_maintenance = state
                .node_storage
                .get(&n.id)
                .is_some_and(|s| s.maintenance.is_some());
            let draining = state
                .node_scheduling
                .get(&n.id)
                .is_some_and(|s| s.drain.is_some());
            let live = rec.health == NodeHealth::Ready;
            let down_long = rec.health == NodeHealth::Down
                && now.saturating_sub(down_since.get(n.id.as_str()).copied().unwrap_or(0))
                    >= repair_delay.as_millis() as u64;
            let full = liveness
                .telemetry(&n.id)
                .is_some_and(|t| t.chunk_space_low == Some(true));
            let is_out = draining || (down_long && !in_maintenance);
            views.push(NodeView {
                live,
                usable: live && !draining && !full,
                placed: !is_out,
            });
            health.push(rec.health);
            maintenance.push(in_maintenance);
            out.push(is_out);
        }
        let (names, holders) = replicas.snapshot();
        let index: Vec<Option<usize>> = names.iter().map(|n| layout.index_of(n)).collect();
        let complete = layout
            .nodes()
            .iter()
            .zip(&views)
            .all(|(n, v)| !v.live || replicas.has_full_report(&n.id));
        let staged = staged_inputs(state, &layout);
        let mut replicas_per_node = vec![0u64; layout.nodes().len()];
        let mut chunks = Vec::with_capacity(state.chunk_refs().len());
        for (id, need) in state.chunk_refs().iter() {
            if only.is_some_and(|o| !o.contains(id)) {
                continue;
            }
            let held: Vec<usize> = holders
                .get(id)
                .map(|h| h.iter().filter_map(|x| index[*x as usize]).collect())
                .unwrap_or_default();
            for h in &held {
                replicas_per_node[*h] += 1;
            }
            let mut assessment = assess(&layout, &views, id, usize::from(need.rf), &held);
            // A node running a job that reads the chunk keeps its staged copy (it serves
            // the job's peers too); it becomes surplus when the job ends there.
            assessment
                .trim
                .retain(|h| !staged.get(h).is_some_and(|s| s.contains(id)));
            if assessment.risk == Some(Risk::Misplaced)
                && assessment.copy_to.is_empty()
                && assessment.trim.is_empty()
            {
                assessment.risk = None;
            }
            chunks.push(ChunkStanding {
                id: *id,
                need: *need,
                holders: held,
                assessment,
            });
        }
        Survey {
            layout,
            views,
            addrs,
            health,
            maintenance,
            out,
            chunks,
            replicas_per_node,
            complete,
        }
    }

    pub fn addr(&self, i: usize) -> Option<&str> {
        self.addrs[i].as_deref()
    }

    /// Node `i` of the layout with the agent address it registered (None: none known).
    fn node_addr(&self, i: usize) -> Option<NodeAddr> {
        Some(NodeAddr {
            node: self.layout.nodes()[i].id.clone(),
            addr: self.addr(i)?.to_string(),
        })
    }
}

/// A node and the address its agent registered: calls check that this node answers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct NodeAddr {
    node: String,
    addr: String,
}

/// What the repair loop is doing, for `fsck` and `status`.
#[derive(Debug, Default, Clone)]
pub struct RepairStatus {
    pub copies_in_flight: usize,
    pub chunks_in_flight: usize,
    pub copied_chunks: u64,
    pub copied_bytes: u64,
    pub trimmed: u64,
    pub failed_copies: u64,
}

/// A token bucket: `rate` bytes per second, at most one second's worth saved up. A batch
/// goes whenever the balance is positive and may take it below zero; the debt is repaid
/// before the next one, so the long-run rate is `rate` whatever the batch sizes.
struct Budget {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn new(rate: u64) -> Self {
        Budget {
            rate: rate as f64,
            tokens: rate as f64,
            at: Instant::now(),
        }
    }

    fn take(&mut self, bytes: u64) -> bool {
        self.take_at(bytes, Instant::now())
    }

    fn take_at(&mut self, bytes: u64, now: Instant) -> bool {
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate);
        self.at = now;
        if self.tokens > 0.0 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

struct Shared {
    status: Mutex<RepairStatus>,
    /// Chunks with a copy in flight, and the calls in flight per target.
    pending: Mutex<(HashSet<ChunkId>, HashMap<String, usize>)>,
}

pub struct RepairWorker {
    raft: RaftHandle,
    liveness: Arc<LivenessTracker>,
    replicas: Arc<ReplicaTracker>,
    tuning: RepairTuning,
    pool: Arc<ChannelPool>,
    budget: Budget,
    shared: Arc<Shared>,
    last_detail: String,
}

/// A handle on the loop's status, for the API.
#[derive(Clone)]
pub struct RepairHandle(Arc<Shared>);

impl RepairHandle {
    pub fn status(&self) -> RepairStatus {
        let mut s = self
            .0
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let pending = self.0.pending.lock().unwrap_or_else(|p| p.into_inner());
        s.chunks_in_flight = pending.0.len();
        s.copies_in_flight = pending.1.values().sum();
        s
    }
}

impl RepairWorker {
    pub fn new(
        raft: RaftHandle,
        liveness: Arc<LivenessTracker>,
        replicas: Arc<ReplicaTracker>,
        tuning: RepairTuning,
    ) -> (Self, RepairHandle) {
        let tls = raft.peers().tls();
        let shared = Arc::new(Shared {
            status: Mutex::new(RepairStatus::default()),
            pending: Mutex::new((HashSet::new(), HashMap::new())),
        });
        (
            RepairWorker {
                raft,
                liveness,
                replicas,
                budget: Budget::new(tuning.bandwidth_bytes_per_sec),
                tuning,
                pool: Arc::new(ChannelPool::new(
                    ClientOptions::new(Duration::from_secs(2))
                        .call_timeout(COPY_TIMEOUT)
                        .tls(tls, steward_runtime::tls::ServerKind::Agent),
                )),
                shared: shared.clone(),
                last_detail: String::new(),
            },
            RepairHandle(shared),
        )
    }

    /// Sends the copies the survey asks for, most urgent first, within the throttles.
    fn dispatch_copies(&mut self, survey: &Survey) -> usize {
        let mut order: Vec<&ChunkStanding> = survey
            .chunks
            .iter()
            .filter(|c| !c.assessment.copy_to.is_empty() && !c.assessment.sources.is_empty())
            .collect();
        order.sort_by_key(|c| c.assessment.risk.unwrap_or(Risk::Misplaced));
        let mut batches: BTreeMap<usize, Vec<&ChunkStanding>> = BTreeMap::new();
        {
            let pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for c in order {
                if pending.0.contains(&c.id) {
                    continue;
                }
                // One target per chunk per pass: the next pass adds the next.
                let target = c.assessment.copy_to[0];
                let batch = batches.entry(target).or_default();
                if batch.len() < CHUNKS_PER_COPY * self.tuning.copies_per_node {
                    batch.push(c);
                }
            }
        }
        let mut sent = 0;
        for (target, chunks) in batches {
            let Some(addr) = survey.addr(target).map(str::to_string) else {
                continue;
            };
            let node = survey.layout.nodes()[target].id.clone();
            for batch in chunks.chunks(CHUNKS_PER_COPY) {
                {
                    let pending = self
                        .shared
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if pending.1.get(&node).copied().unwrap_or(0) >= self.tuning.copies_per_node {
                        break;
                    }
                }
                let bytes: u64 = batch.iter().map(|c| u64::from(c.need.size)).sum();
                if !self.budget.take(bytes) {
                    return sent;
                }
                let mut sources: Vec<String> = Vec::new();
                for c in batch {
                    for s in &c.assessment.sources {
                        if let Some(a) = survey.addr(*s) {
                            if !sources.iter().any(|x| x == a) && sources.len() < MAX_SOURCES {
                                sources.push(a.to_string());
                            }
                        }
                    }
                }
                let ids: Vec<ChunkId> = batch.iter().map(|c| c.id).collect();
                {
                    let mut pending = self
                        .shared
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    pending.0.extend(ids.iter().copied());
                    *pending.1.entry(node.clone()).or_default() += 1;
                }
                sent += ids.len();
                tokio::spawn(copy_batch(
                    self.pool.clone(),
                    self.replicas.clone(),
                    self.shared.clone(),
                    node.clone(),
                    addr.clone(),
                    ids,
                    sources,
                ));
            }
        }
        sent
    }

    /// Removes surplus replicas: each only after every node the chunk is placed on has
    /// answered that it holds it (the tracker may be a report behind), and not again while
    /// a removal of it is in flight.
    fn dispatch_trims(&self, survey: &Survey) -> usize {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut by_node: BTreeMap<usize, Vec<(ChunkId, Vec<NodeAddr>)>> = BTreeMap::new();
        for c in &survey.chunks {
            if c.assessment.trim.is_empty() || pending.0.contains(&c.id) {
                continue;
            }
            // Every placed node must be askable: a chunk whose placed nodes cannot all be
            // asked (none placed, an address unknown) keeps its surplus copies.
            let Some(placed) = survey
                .layout
                .place_where(&c.id, usize::from(c.need.rf), |i| survey.views[i].placed)
                .into_iter()
                .map(|i| survey.node_addr(i))
                .collect::<Option<Vec<NodeAddr>>>()
                .filter(|p| !p.is_empty())
            else {
                continue;
            };
            pending.0.insert(c.id);
            for t in &c.assessment.trim {
                by_node.entry(*t).or_default().push((c.id, placed.clone()));
            }
        }
        drop(pending);
        let mut n = 0;
        for (node, chunks) in by_node {
            let id = survey.layout.nodes()[node].id.clone();
            let Some(addr) = survey.addr(node).map(str::to_string) else {
                self.release(chunks.iter().map(|(c, _)| *c));
                continue;
            };
            for batch in chunks.chunks(CHUNKS_PER_TRIM) {
                n += batch.len();
                tokio::spawn(trim_batch(
                    self.pool.clone(),
                    self.replicas.clone(),
                    self.shared.clone(),
                    id.clone(),
                    addr.clone(),
                    batch.to_vec(),
                ));
            }
        }
        n
    }

    /// Forgets that `chunks` have work in flight.
    fn release(&self, chunks: impl IntoIterator<Item = ChunkId>) {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for c in chunks {
            pending.0.remove(&c);
        }
    }
}

/// Removes surplus replicas of `batch` (chunk, its placed nodes) from `node`, once each
/// placed node confirms (HasChunks) that it holds the chunk.
async fn trim_batch(
    pool: Arc<ChannelPool>,
    replicas: Arc<ReplicaTracker>,
    shared: Arc<Shared>,
    node: String,
    addr: String,
    batch: Vec<(ChunkId, Vec<NodeAddr>)>,
) {
    let mut asks: BTreeMap<&NodeAddr, Vec<ChunkId>> = BTreeMap::new();
    for (id, placed) in &batch {
        for a in placed {
            asks.entry(a).or_default().push(*id);
        }
    }
    let mut unconfirmed: HashSet<ChunkId> = HashSet::new();
    for (placed, ids) in &asks {
        let answer = match pool.get_node(&placed.addr, &placed.node) {
            Ok(ch) => transport::chunk_client(ch)
                .has_chunks(HasChunksRequest {
                    chunk_ids: ids.iter().map(ToString::to_string).collect(),
                    node_id: placed.node.clone(),
                })
                .await
                .map(|r| r.into_inner().present)
                .ok(),
            Err(_) => None,
        };
        match answer {
            Some(present) if present.len() == ids.len() => {
                unconfirmed.extend(
                    ids.iter()
                        .zip(present)
                        .filter(|(_, here)| !here)
                        .map(|(id, _)| *id),
                );
            }
            _ => unconfirmed.extend(ids.iter().copied()),
        }
    }
    let remove: Vec<ChunkId> = batch
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !unconfirmed.contains(id))
        .collect();
    if !unconfirmed.is_empty() {
        tracing::debug!(%node, chunks = unconfirmed.len(), "surplus replicas kept: a placed node did not confirm its copy");
    }
    if !remove.is_empty() {
        if let Ok(ch) = pool.get_node(&addr, &node) {
            let req = RemoveChunksRequest {
                chunk_ids: remove.iter().map(ToString::to_string).collect(),
                node_id: node.clone(),
            };
            match transport::chunk_client(ch).remove_chunks(req).await {
                Ok(r) => {
                    replicas.remove(&node, remove.iter().copied());
                    shared
                        .status
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .trimmed += u64::from(r.into_inner().removed);
                }
                Err(s) => tracing::debug!(%node, %s, "trimming surplus replicas failed"),
            }
        }
    }
    let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
    for (id, _) in &batch {
        pending.0.remove(id);
    }
}

async fn copy_batch(
    pool: Arc<ChannelPool>,
    replicas: Arc<ReplicaTracker>,
    shared: Arc<Shared>,
    node: String,
    addr: String,
    ids: Vec<ChunkId>,
    sources: Vec<String>,
) {
    let result = match pool.get_node(&addr, &node) {
        Ok(ch) => transport::chunk_client(ch)
            .copy_chunks(CopyChunksRequest {
                chunk_ids: ids.iter().map(ToString::to_string).collect(),
                sources,
                node_id: node.clone(),
            })
            .await
            .map(|r| r.into_inner().results)
            .map_err(|s| format!("{}: {}", s.code(), s.message())),
        Err(e) => Err(e.to_string()),
    };
    let (mut copied, mut bytes, mut failed) = (Vec::new(), 0u64, 0u64);
    match result {
        Ok(results) => {
            for r in results {
                let Ok(id) = ChunkId::parse(&r.chunk_id) else {
                    continue;
                };
                match CopyOutcome::try_from(r.outcome) {
                    Ok(CopyOutcome::Copied) => {
                        bytes += r.bytes;
                        copied.push(id);
                    }
                    Ok(CopyOutcome::AlreadyPresent) => copied.push(id),
                    _ => {
                        failed += 1;
                        tracing::debug!(%node, chunk = %id, detail = %r.detail, "repair copy failed");
                    }
                }
            }
        }
        Err(e) => {
            failed += ids.len() as u64;
            tracing::debug!(%node, error = %e, "repair copy call failed");
        }
    }
    let n = copied.len() as u64;
    if let Err(e) = replicas.record(&node, copied) {
        tracing::warn!(%node, error = %e, "copied replicas not tracked");
    }
    {
        let mut s = shared.status.lock().unwrap_or_else(|p| p.into_inner());
        s.copied_chunks += n;
        s.copied_bytes += bytes;
        s.failed_copies += failed;
    }
    let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
    for id in &ids {
        pending.0.remove(id);
    }
    if let Some(c) = pending.1.get_mut(&node) {
        *c = c.saturating_sub(1);
    }
}

impl Worker for RepairWorker {
    fn name(&self) -> String {
        "storage-repair".into()
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        if !self.raft.is_leader() || self.raft.cluster_level() < LEVEL {
            return Ok(Next::Wait(IDLE_TICK));
        }
        let state = self.raft.view().copy().state.clone();
        if state.chunk_refs().is_empty() {
            return Ok(Next::Wait(IDLE_TICK));
        }
        let (liveness, replicas, delay) = (
            self.liveness.clone(),
            self.replicas.clone(),
            self.tuning.repair_delay,
        );
        let started = Instant::now();
        let survey = tokio::task::spawn_blocking(move || {
            Survey::take(&state, &liveness, &replicas, delay, None)
        })
        .await
        .map_err(|e| -> WorkerError { format!("survey: {e}").into() })?;
        // A pass over a million chunks takes seconds: the loop rests SURVEY_DUTY times as
        // long as the survey took, so it uses at most a share of one core.
        let rest = started.elapsed() * SURVEY_DUTY;
        // Only act on a view every live node has reported: before that, a chunk would look
        // under-replicated merely because its holders have not spoken yet.
        if !survey.complete {
            self.last_detail = "waiting for the agents' chunk lists".into();
            return Ok(Next::Wait(BUSY_TICK.max(rest)));
        }
        let copies = self.dispatch_copies(&survey);
        let trims = self.dispatch_trims(&survey);
        let at_risk = survey
            .chunks
            .iter()
            .filter(|c| c.assessment.risk.is_some_and(|r| r <= Risk::BadlySpread))
            .count();
        let status = RepairHandle(self.shared.clone()).status();
        self.last_detail = format!(
            "{} chunks, {at_risk} at risk; {} copied ({} MiB), {} trimmed, {} failed",
            survey.chunks.len(),
            status.copied_chunks,
            status.copied_bytes >> 20,
            status.trimmed,
            status.failed_copies
        );
        Ok(Next::Wait(
            if copies + trims > 0 || at_risk > 0 {
                BUSY_TICK
            } else {
                IDLE_TICK
            }
            .max(rest),
        ))
    }

    fn detail(&self) -> String {
        self.last_detail.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_its_rate_whatever_the_batch_size() {
        for batch in [1u64 << 20, 64 << 20, 256 << 20] {
            let rate = 100u64 << 20;
            let start = Instant::now();
            let mut b = Budget::new(rate);
            b.at = start;
            let mut sent = 0u64;
            // 60 s in steps of 10 ms.
            for step in 1..=6_000u64 {
                let now = start + Duration::from_millis(step * 10);
                while b.take_at(batch, now) {
                    sent += batch;
                }
            }
            let per_sec = sent as f64 / 60.0;
            // One second's worth up front, and at most one batch ahead.
            let most = (rate * 61 + batch) as f64 / 60.0;
            assert!(
                per_sec >= rate as f64 * 0.98 && per_sec <= most,
                "batches of {} MiB: {:.1} MiB/s against {} MiB/s",
                batch >> 20,
                per_sec / 1048576.0,
                rate >> 20
            );
        }
    }
}
