//! Deterministic simulation of the control plane (`steward-chaos sim --seed N`).
//!
//! 3 or 5 controllers run openraft unchanged, with Steward's own type configuration and
//! apply path, over the in-memory store (`steward_controller::raft::store::memory`) and a
//! simulated network, all on one thread under tokio's paused clock: time moves only when
//! every task waits, so a run takes a fraction of its simulated time and the same seed
//! replays the same run. The seed draws everything: the network's delays and losses, the
//! faults (partitions full and one-way, crashes with restarts, message loss, slow links),
//! the clients' operations, and each controller's election timeout (openraft draws its
//! timeout from the runtime's thread RNG, which no seed reaches; a range one millisecond
//! wide, drawn by the seed at every start, makes that draw fixed).
//!
//! KV clients write, read (linearizable: `ensure_linearizable`, then the applied state)
//! and compare-and-set, recording each operation as the process runs do. At the end every
//! fault is healed, every controller restarted, the controllers must converge, and a final
//! read of every key joins the history. The same checkers as `steward-chaos run` judge it:
//! linearizability per key, one leader per term, one state digest per applied index, and a
//! write answered within a bound after the faults end.
//!
//! The run's trace digest (BLAKE3 over the history, the faults and the final digests)
//! proves replay: the same seed prints the same digest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{NetworkError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::{AnyError, ServerState, SnapshotPolicy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use steward_controller::raft::store::memory::MemDisk;
use steward_controller::raft::store::StateView;
use steward_controller::raft::typ::{
    AppendEntriesRequest, AppendEntriesResponse, ControllerNode, InstallSnapshotError,
    InstallSnapshotRequest, InstallSnapshotResponse, NodeId, Raft, RaftError, RpcError,
    VoteRequest, VoteResponse,
};
use steward_core::{Command, CommandResult};
use tokio::time::Instant;

use crate::check::{linearizable, raft as raft_check};
use crate::history::{KvCall, Nanos, Op, Outcome};
use crate::run::{invariant, InvariantResult, Verdict};

/// A known bug, reintroduced in the simulation for it to catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SimBug {
    /// Log appends acknowledged before they are durable; a crash loses them.
    AckBeforeSync,
}

impl SimBug {
    pub const ALL: [SimBug; 1] = [SimBug::AckBeforeSync];

    pub fn name(self) -> &'static str {
        match self {
            SimBug::AckBeforeSync => "ack-before-sync",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown simulation bug `{s}`; known: {}",
                    Self::ALL.map(|b| b.name()).join(", ")
                )
            })
    }
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    /// 3 or 5.
    pub controllers: u64,
    /// Simulated time with faults; the run then heals, converges and checks.
    pub duration: Duration,
    pub clients: u32,
    pub keys: u32,
    pub bug: Option<SimBug>,
}

impl SimOptions {
    pub fn new(seed: u64) -> Self {
        SimOptions {
            seed,
            controllers: if seed % 3 == 2 { 5 } else { 3 },
            duration: Duration::from_secs(20),
            clients: 4,
            keys: 3,
            bug: None,
        }
    }
}

/// Largest group the simulation runs.
pub const MAX_CONTROLLERS: u64 = 7;
/// Longest simulated fault phase.
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// One client call (write, read, compare-and-set) past this is indeterminate.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// After the last fault is healed: a write must be answered within this.
const RECOVER_WITHIN: Duration = Duration::from_secs(10);
/// After healing: every controller must apply the leader's log within this.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);
/// One-way network delay between two controllers (drawn per message).
const DELAY_US: (u64, u64) = (200, 3_000);
/// A slow link's delay (a `slow` fault).
const SLOW_DELAY_US: (u64, u64) = (20_000, 150_000);

#[derive(Debug, Clone, Serialize)]
pub struct SimFault {
    pub at_ms: u64,
    pub until_ms: u64,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    pub seed: u64,
    pub controllers: u64,
    pub bug: Option<SimBug>,
    pub simulated_ms: u64,
    pub faults: Vec<SimFault>,
    pub ops_ok: usize,
    pub ops_failed: usize,
    pub ops_indeterminate: usize,
    pub messages: u64,
    pub messages_dropped: u64,
    pub terms: usize,
    pub invariants: Vec<InvariantResult>,
    /// BLAKE3 of the history, faults and final digests: equal for equal seeds.
    pub trace_digest: String,
}

impl SimReport {
    pub fn passed(&self) -> bool {
        self.invariants
            .iter()
            .all(|i| i.verdict != Verdict::Violated)
    }

    pub fn violated(&self) -> Vec<&InvariantResult> {
        self.invariants
            .iter()
            .filter(|i| i.verdict == Verdict::Violated)
            .collect()
    }
}

/// Runs one seed on a fresh single-threaded runtime with a paused clock.
pub fn run_seed(opts: &SimOptions) -> Result<SimReport, String> {
    if !(1..=MAX_CONTROLLERS).contains(&opts.controllers) {
        return Err(format!(
            "the simulation runs 1 to {MAX_CONTROLLERS} controllers, not {}",
            opts.controllers
        ));
    }
    if opts.duration > MAX_DURATION || opts.duration.is_zero() {
        return Err(format!(
            "the fault phase must be between 1 ms and {MAX_DURATION:?}, not {:?}",
            opts.duration
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("building the simulation's runtime: {e}"))?;
    Ok(rt.block_on(simulate(opts.clone())))
}

// ---- the network ----

/// Who is up, which links are cut, and the dice for every message.
struct Net {
    state: Mutex<NetState>,
    epoch: Instant,
}

struct NetState {
    rng: ChaCha8Rng,
    /// The running controllers and their incarnation (bumped at every start).
    up: BTreeMap<NodeId, (Raft, u64)>,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Chance that one message is lost.
    loss: f64,
    /// Nodes whose links are slow.
    slow: BTreeSet<NodeId>,
    messages: u64,
    dropped: u64,
}

/// What happened to one message.
enum Fate {
    /// Delivered after this delay.
    Deliver(Duration),
    /// The link is cut or the peer is down: refused at once.
    Refused,
    /// Lost on the way: the caller waits for its deadline.
    Lost,
}

impl Net {
    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn fate(&self, from: NodeId, to: NodeId) -> Fate {
        let mut s = self.lock();
        s.messages += 1;
        if !s.up.contains_key(&to) || !s.up.contains_key(&from) || s.cut.contains(&(from, to)) {
            s.dropped += 1;
            return Fate::Refused;
        }
        let loss = s.loss;
        if loss > 0.0 && s.rng.random_bool(loss) {
            s.dropped += 1;
            return Fate::Lost;
        }
        let (lo, hi) = if s.slow.contains(&from) || s.slow.contains(&to) {
            SLOW_DELAY_US
        } else {
            DELAY_US
        };
        Fate::Deliver(Duration::from_micros(s.rng.random_range(lo..hi)))
    }

    /// The target's Raft, if it is up and still the incarnation the message was sent to.
    fn target(&self, to: NodeId) -> Option<Raft> {
        self.lock().up.get(&to).map(|(r, _)| r.clone())
    }

    fn incarnation(&self, node: NodeId) -> Option<u64> {
        self.lock().up.get(&node).map(|(_, i)| *i)
    }
}

struct SimNetworkFactory {
    net: Arc<Net>,
    from: NodeId,
    incarnation: u64,
}

struct SimConnection {
    net: Arc<Net>,
    from: NodeId,
    incarnation: u64,
    to: NodeId,
}

impl RaftNetworkFactory<steward_controller::raft::typ::TypeConfig> for SimNetworkFactory {
    type Network = SimConnection;

    async fn new_client(&mut self, target: NodeId, _node: &ControllerNode) -> SimConnection {
        SimConnection {
            net: self.net.clone(),
            from: self.from,
            incarnation: self.incarnation,
            to: target,
        }
    }
}

/// How long a refused connection takes to fail (a cut link, a peer down).
const REFUSED_AFTER: Duration = Duration::from_millis(5);

/// Every failure is a network error, never `Unreachable`: openraft backs off from an
/// unreachable peer in a `select!` whose branch order comes from tokio's unseeded RNG,
/// which would break replay by seed.
fn failed<E: std::error::Error>(why: &str) -> RpcError<E> {
    RpcError::Network(NetworkError::new(&AnyError::error(why)))
}

impl SimConnection {
    /// One request and its reply, each with its own fate; `handle` runs on the target.
    async fn call<Resp, E, F, Fut>(&self, ttl: Duration, handle: F) -> Result<Resp, RpcError<E>>
    where
        E: std::error::Error,
        F: FnOnce(Raft) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, RaftError<E>>>,
    {
        let exchange = async {
            // A crashed sender's leftover tasks send nothing.
            if self.net.incarnation(self.from) != Some(self.incarnation) {
                std::future::pending::<()>().await;
            }
            match self.net.fate(self.from, self.to) {
                Fate::Refused => {
                    tokio::time::sleep(REFUSED_AFTER).await;
                    return Err(failed("link cut or peer down"));
                }
                Fate::Lost => {
                    std::future::pending::<()>().await;
                }
                Fate::Deliver(d) => tokio::time::sleep(d).await,
            }
            let Some(target) = self.net.target(self.to) else {
                return Err(failed("peer down"));
            };
            let reply = handle(target).await;
            match self.net.fate(self.to, self.from) {
                Fate::Refused => return Err(failed("reply dropped: link cut")),
                Fate::Lost => {
                    std::future::pending::<()>().await;
                }
                Fate::Deliver(d) => tokio::time::sleep(d).await,
            }
            match reply {
                Ok(r) => Ok(r),
                Err(RaftError::Fatal(f)) => Err(failed(&format!("peer stopped: {f}"))),
                Err(e) => Err(RpcError::RemoteError(RemoteError::new(self.to, e))),
            }
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(r) => r,
            Err(_) => Err(failed("timed out")),
        }
    }
}

impl RaftNetwork<steward_controller::raft::typ::TypeConfig> for SimConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RpcError> {
        self.call(
            option.hard_ttl(),
            |r| async move { r.append_entries(rpc).await },
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse, RpcError<InstallSnapshotError>> {
        self.call(option.hard_ttl(), |r| async move {
            r.install_snapshot(rpc).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RpcError> {
        self.call(option.hard_ttl(), |r| async move { r.vote(rpc).await })
            .await
    }
}

// ---- the controllers ----

/// One simulated controller: its disk survives crashes, the rest does not.
struct SimNode {
    id: NodeId,
    disk: Arc<MemDisk>,
    running: Option<(Raft, StateView)>,
    incarnation: u64,
}

/// The cluster, shared by the clients, the nemesis and the monitor.
struct Sim {
    net: Arc<Net>,
    nodes: Mutex<BTreeMap<NodeId, SimNode>>,
    /// Election timeouts and other per-start draws.
    rng: Mutex<ChaCha8Rng>,
    /// Leaders seen, from every controller's own metrics.
    leaders: Mutex<Vec<raft_check::LeaderSeen>>,
    /// Restarts that failed (storage the controller could not start from).
    start_errors: Mutex<Vec<String>>,
}

/// Every controller restarts from what its disk kept.
pub const RESTARTS: &str = "controllers-restart";

fn member(id: NodeId) -> ControllerNode {
    ControllerNode {
        raft_addr: format!("sim-controller-{id}"),
        api_addr: String::new(),
    }
}

impl Sim {
    fn raft(&self, id: NodeId) -> Option<(Raft, StateView)> {
        self.lock_nodes().get(&id).and_then(|n| n.running.clone())
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, SimNode>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn up(&self) -> Vec<NodeId> {
        self.lock_nodes()
            .values()
            .filter(|n| n.running.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Starts (or restarts) controller `id` over its disk.
    async fn start(self: &Arc<Self>, id: NodeId) {
        let (disk, incarnation) = {
            let mut nodes = self.lock_nodes();
            let n = nodes.get_mut(&id).expect("known controller");
            if n.running.is_some() {
                return;
            }
            n.incarnation += 1;
            (n.disk.clone(), n.incarnation)
        };
        let timeout_ms = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            rng.random_range(150..300u64)
        };
        let config = openraft::Config {
            cluster_name: "steward-sim".into(),
            heartbeat_interval: 50,
            // One millisecond wide: openraft's own draw in it is fixed (see the module).
            election_timeout_min: timeout_ms,
            election_timeout_max: timeout_ms + 1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(200),
            max_in_snapshot_log_to_keep: 50,
            ..Default::default()
        }
        .validate()
        .expect("valid simulation config");
        let network = SimNetworkFactory {
            net: self.net.clone(),
            from: id,
            incarnation,
        };
        let started = match disk.open() {
            Ok((log, sm)) => {
                let view = sm.view();
                Raft::new(id, Arc::new(config), network, log, sm)
                    .await
                    .map(|raft| (raft, view))
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let (raft, view) = match started {
            Ok(r) => r,
            Err(e) => {
                // Its disk holds something it cannot start from: a finding, and it stays down.
                self.start_errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!(
                        "controller {id} could not start at {} ms: {e}",
                        self.net.now_ms()
                    ));
                return;
            }
        };
        self.net.lock().up.insert(id, (raft.clone(), incarnation));
        self.lock_nodes().get_mut(&id).expect("known").running = Some((raft.clone(), view));
        // Every time this controller believes it leads, note the term.
        let sim = self.clone();
        let mut metrics = raft.metrics();
        tokio::spawn(async move {
            let mut last_term = None;
            loop {
                let (state, term) = {
                    let m = metrics.borrow_and_update();
                    (m.state, m.current_term)
                };
                if state == ServerState::Leader && last_term != Some(term) {
                    last_term = Some(term);
                    sim.leaders.lock().unwrap_or_else(|p| p.into_inner()).push(
                        raft_check::LeaderSeen {
                            reporter: id,
                            term,
                            leader: id,
                            at_ms: sim.net.now_ms(),
                        },
                    );
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Stops controller `id` at once, as a power loss: the in-memory state goes, and so
    /// does whatever its disk acknowledged without making durable.
    async fn crash(&self, id: NodeId) {
        let running = self
            .lock_nodes()
            .get_mut(&id)
            .and_then(|n| n.running.take());
        self.net.lock().up.remove(&id);
        // The power goes first: what the dying instance's tasks write from now on is lost.
        if let Some(n) = self.lock_nodes().get(&id) {
            n.disk.crash();
        }
        if let Some((raft, _)) = running {
            let _ = raft.shutdown().await;
        }
    }

    /// Who believes it leads, with the highest term.
    fn leader(&self) -> Option<NodeId> {
        let nodes = self.lock_nodes();
        nodes
            .values()
            .filter_map(|n| {
                n.running
                    .as_ref()
                    .map(|(r, _)| (n.id, r.metrics().borrow().clone()))
            })
            .filter(|(_, m)| m.state == ServerState::Leader)
            .max_by_key(|(_, m)| m.current_term)
            .map(|(id, _)| id)
    }
}

// ---- clients ----

/// What a client last read of a key: its value and revision (for compare-and-set).
type LastRead = BTreeMap<String, (Option<String>, u64)>;

struct Client {
    id: u32,
    sim: Arc<Sim>,
    rng: ChaCha8Rng,
    keys: u32,
    seq: u64,
    last_read: LastRead,
}

impl Client {
    fn now(&self) -> Nanos {
        self.sim.net.epoch.elapsed().as_nanos() as Nanos
    }

    /// A controller to ask: the one that leads now, else any running one.
    fn pick(&mut self) -> Option<(NodeId, Raft, StateView)> {
        let id = match self.sim.leader() {
            Some(id) if self.rng.random_bool(0.9) => id,
            _ => {
                let up = self.sim.up();
                if up.is_empty() {
                    return None;
                }
                up[self.rng.random_range(0..up.len())]
            }
        };
        self.sim.raft(id).map(|(r, v)| (id, r, v))
    }

    async fn one(&mut self) -> Option<Op> {
        let key = format!("k{}", self.rng.random_range(0..self.keys));
        let (_, raft, view) = self.pick()?;
        let roll = self.rng.random_range(0..100);
        let invoked = self.now();
        let (call, outcome) = if roll < 40 {
            self.seq += 1;
            let value = format!("c{}-{}", self.id, self.seq);
            let outcome = write(&raft, &key, &value, None).await;
            (KvCall::Write(value), outcome)
        } else if roll < 75 {
            let (outcome, revision) = read(&raft, &view, &key).await;
            if let (Outcome::Read(v), Some(revision)) = (&outcome, revision) {
                // Kept for a later compare-and-set.
                self.last_read.insert(key.clone(), (v.clone(), revision));
            }
            (KvCall::Read, outcome)
        } else {
            let (expect, revision) = self.last_read.get(&key).cloned()?;
            self.seq += 1;
            let new = format!("c{}-{}", self.id, self.seq);
            let outcome = write(&raft, &key, &new, Some(revision)).await;
            (KvCall::Cas { expect, new }, outcome)
        };
        let completed = (outcome != Outcome::Unknown).then(|| self.now());
        Some(Op {
            client: self.id,
            key,
            call,
            invoked,
            completed,
            outcome,
        })
    }
}

/// A write (or, with `expected_revision`, a compare-and-set) through `raft`.
async fn write(raft: &Raft, key: &str, value: &str, expected_revision: Option<u64>) -> Outcome {
    // A controller that knows it does not lead refuses before proposing: nothing applied.
    if raft.metrics().borrow().state != ServerState::Leader {
        return Outcome::Failed;
    }
    let command = Command::KvPut {
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
        expected_revision,
    };
    match tokio::time::timeout(CALL_TIMEOUT, raft.client_write(command)).await {
        Ok(Ok(resp)) => match resp.data {
            CommandResult::KvPut { .. } => Outcome::Written,
            CommandResult::RevisionMismatch { .. } => Outcome::CasFailed,
            // Any other answer to a put is a bug in the state machine: nothing to
            // conclude about the key, so it may or may not have been written.
            _ => Outcome::Unknown,
        },
        // Proposed, then leadership was lost or the call timed out: it may still commit.
        _ => Outcome::Unknown,
    }
}

/// A linearizable read: confirm leadership with a quorum, wait for the state to catch up,
/// then read the applied state. With a value read, the key's revision (0: absent).
async fn read(raft: &Raft, view: &StateView, key: &str) -> (Outcome, Option<u64>) {
    match tokio::time::timeout(CALL_TIMEOUT, raft.ensure_linearizable()).await {
        Ok(Ok(_)) => {
            let applied = view.read();
            let entry = applied.state.kv.get(key);
            (
                Outcome::Read(entry.map(|e| String::from_utf8_lossy(&e.value).into_owned())),
                Some(entry.map_or(0, |e| e.mod_revision)),
            )
        }
        Ok(Err(_)) => (Outcome::Failed, None),
        Err(_) => (Outcome::Unknown, None),
    }
}

// ---- the nemesis ----

#[derive(Debug, Clone)]
enum Fault {
    /// Both directions between two groups.
    Partition(Vec<NodeId>),
    /// `from` cannot reach `to`; the reverse works.
    OneWay(NodeId, NodeId),
    Crash(NodeId),
    Loss(f64),
    Slow(NodeId),
}

impl Fault {
    fn describe(&self, all: &[NodeId]) -> String {
        match self {
            Fault::Partition(side) => {
                let other: Vec<NodeId> =
                    all.iter().filter(|n| !side.contains(n)).copied().collect();
                format!("partition {side:?} | {other:?}")
            }
            Fault::OneWay(a, b) => format!("one-way: {a} cannot reach {b}"),
            Fault::Crash(n) => format!("crash controller {n}, restart after"),
            Fault::Loss(p) => format!("lose {:.0} % of messages", p * 100.0),
            Fault::Slow(n) => format!("slow links to controller {n}"),
        }
    }
}

fn draw_fault(rng: &mut ChaCha8Rng, all: &[NodeId]) -> Fault {
    let pick = |rng: &mut ChaCha8Rng| all[rng.random_range(0..all.len())];
    match rng.random_range(0..100) {
        0..30 => {
            // A minority, or a majority without the others.
            let size = rng.random_range(1..all.len().max(2));
            let mut side = all.to_vec();
            while side.len() > size {
                side.remove(rng.random_range(0..side.len()));
            }
            Fault::Partition(side)
        }
        30..45 => {
            let a = pick(rng);
            let mut b = pick(rng);
            while b == a && all.len() > 1 {
                b = pick(rng);
            }
            Fault::OneWay(a, b)
        }
        45..75 => Fault::Crash(pick(rng)),
        75..88 => Fault::Loss(rng.random_range(0.05..0.4)),
        _ => Fault::Slow(pick(rng)),
    }
}

async fn apply_fault(sim: &Arc<Sim>, fault: &Fault, all: &[NodeId]) {
    match fault {
        Fault::Partition(side) => {
            let mut net = sim.net.lock();
            for a in side {
                for b in all.iter().filter(|b| !side.contains(b)) {
                    net.cut.insert((*a, *b));
                    net.cut.insert((*b, *a));
                }
            }
        }
        Fault::OneWay(a, b) => {
            sim.net.lock().cut.insert((*a, *b));
        }
        Fault::Crash(n) => sim.crash(*n).await,
        Fault::Loss(p) => sim.net.lock().loss = *p,
        Fault::Slow(n) => {
            sim.net.lock().slow.insert(*n);
        }
    }
}

async fn undo_fault(sim: &Arc<Sim>, fault: &Fault, all: &[NodeId]) {
    match fault {
        Fault::Partition(side) => {
            let mut net = sim.net.lock();
            for a in side {
                for b in all.iter().filter(|b| !side.contains(b)) {
                    net.cut.remove(&(*a, *b));
                    net.cut.remove(&(*b, *a));
                }
            }
        }
        Fault::OneWay(a, b) => {
            sim.net.lock().cut.remove(&(*a, *b));
        }
        Fault::Crash(n) => sim.start(*n).await,
        Fault::Loss(_) => sim.net.lock().loss = 0.0,
        Fault::Slow(n) => {
            sim.net.lock().slow.remove(n);
        }
    }
}

// ---- the run ----

async fn simulate(opts: SimOptions) -> SimReport {
    let mut seeds = ChaCha8Rng::seed_from_u64(opts.seed);
    let net = Arc::new(Net {
        state: Mutex::new(NetState {
            rng: ChaCha8Rng::seed_from_u64(seeds.random()),
            up: BTreeMap::new(),
            cut: BTreeSet::new(),
            loss: 0.0,
            slow: BTreeSet::new(),
            messages: 0,
            dropped: 0,
        }),
        epoch: Instant::now(),
    });
    let all: Vec<NodeId> = (1..=opts.controllers).collect();
    let nodes = all
        .iter()
        .map(|&id| {
            let disk = match opts.bug {
                Some(SimBug::AckBeforeSync) => MemDisk::acknowledging_before_sync(),
                None => MemDisk::new(),
            };
            (
                id,
                SimNode {
                    id,
                    disk,
                    running: None,
                    incarnation: 0,
                },
            )
        })
        .collect();
    let sim = Arc::new(Sim {
        net: net.clone(),
        nodes: Mutex::new(nodes),
        rng: Mutex::new(ChaCha8Rng::seed_from_u64(seeds.random())),
        leaders: Mutex::new(Vec::new()),
        start_errors: Mutex::new(Vec::new()),
    });
    for &id in &all {
        sim.start(id).await;
    }
    let (first, _) = sim.raft(1).expect("controller 1 started");
    first
        .initialize(
            all.iter()
                .map(|&id| (id, member(id)))
                .collect::<BTreeMap<_, _>>(),
        )
        .await
        .expect("a new group initializes");

    // Clients until the fault phase ends.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for c in 0..opts.clients {
        let mut client = Client {
            id: c,
            sim: sim.clone(),
            rng: ChaCha8Rng::seed_from_u64(seeds.random()),
            keys: opts.keys.max(1),
            seq: 0,
            last_read: BTreeMap::new(),
        };
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut ops = Vec::new();
            while !stop.is_cancelled() {
                if let Some(op) = client.one().await {
                    ops.push(op);
                }
                let pause = client.rng.random_range(5..60);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            ops
        }));
    }

    // The nemesis: one fault at a time, each undone before the next.
    let mut nemesis = ChaCha8Rng::seed_from_u64(seeds.random());
    let mut faults = Vec::new();
    let fault_end = net.epoch + opts.duration;
    tokio::time::sleep(Duration::from_millis(nemesis.random_range(300..1500))).await;
    while Instant::now() < fault_end {
        let fault = draw_fault(&mut nemesis, &all);
        let at_ms = net.now_ms();
        apply_fault(&sim, &fault, &all).await;
        let lasts = Duration::from_millis(nemesis.random_range(200..4000));
        tokio::time::sleep(lasts.min(fault_end.saturating_duration_since(Instant::now()))).await;
        undo_fault(&sim, &fault, &all).await;
        faults.push(SimFault {
            at_ms,
            until_ms: net.now_ms(),
            what: fault.describe(&all),
        });
        tokio::time::sleep(Duration::from_millis(nemesis.random_range(100..1500))).await;
    }
    // Heal everything that may be left, restart every controller.
    {
        let mut n = net.lock();
        n.cut.clear();
        n.loss = 0.0;
        n.slow.clear();
    }
    for &id in &all {
        sim.start(id).await;
    }
    let healed_ms = net.now_ms();
    let healed = Instant::now();
    stop.cancel();
    let mut history: Vec<Op> = Vec::new();
    let mut invariants = Vec::new();
    for c in clients {
        match c.await {
            Ok(ops) => history.extend(ops),
            // Its history is gone: nothing it saw can be checked.
            Err(e) => invariants.push(InvariantResult::new(
                "clients-ran",
                Verdict::Violated,
                format!("a client task failed: {e}"),
            )),
        }
    }

    // Recovery: a write answered within the bound.
    let recovered = recover(&sim, &mut history, healed + RECOVER_WITHIN).await;
    invariants.push(match recovered {
        Some(ms) => InvariantResult::new(
            invariant::RECOVERY,
            Verdict::Held,
            format!(
                "a write was answered {} ms after the faults ended",
                ms - healed_ms
            ),
        ),
        None => InvariantResult::new(
            invariant::RECOVERY,
            Verdict::Violated,
            format!("no write answered within {RECOVER_WITHIN:?} after the faults ended"),
        ),
    });

    // Convergence: every controller applies the leader's log; one digest per index.
    let digests = converge(&sim, &all).await;
    invariants.push(match &digests {
        Err(e) => InvariantResult::new(invariant::CONVERGED, Verdict::Violated, e.clone()),
        Ok(d) => match raft_check::check_converged(d) {
            Ok(_) => InvariantResult::new(
                invariant::CONVERGED,
                Verdict::Held,
                format!(
                    "every controller applied index {} with state digest {}",
                    d[0].1,
                    &d[0].2[..16]
                ),
            ),
            Err(e) => InvariantResult::new(invariant::CONVERGED, Verdict::Violated, e.to_string()),
        },
    });

    // A final linearizable read of every key.
    for k in 0..opts.keys.max(1) {
        let key = format!("k{k}");
        let Some(leader) = sim.leader() else { break };
        let Some((raft, view)) = sim.raft(leader) else {
            break;
        };
        let invoked = net.epoch.elapsed().as_nanos() as Nanos;
        let (outcome, _) = read(&raft, &view, &key).await;
        let completed =
            (outcome != Outcome::Unknown).then(|| net.epoch.elapsed().as_nanos() as Nanos);
        history.push(Op {
            client: u32::MAX,
            key,
            call: KvCall::Read,
            invoked,
            completed,
            outcome,
        });
    }
    history.sort_by_key(|o| o.invoked);
    let (mut ok, mut failed, mut unknown) = (0, 0, 0);
    for op in &history {
        match op.outcome {
            Outcome::Failed => failed += 1,
            Outcome::Unknown => unknown += 1,
            _ => ok += 1,
        }
    }
    invariants.insert(
        0,
        match linearizable::check(&history) {
            Ok(c) => InvariantResult::new(
                invariant::LINEARIZABLE,
                Verdict::Held,
                format!(
                    "{} operations on {} keys ({} dropped: failed or unknown reads)",
                    c.ops, c.keys, c.dropped
                ),
            ),
            Err(v @ linearizable::Verdict::Inconclusive { .. }) => InvariantResult::new(
                invariant::LINEARIZABLE,
                Verdict::Inconclusive,
                v.to_string(),
            ),
            Err(v) => {
                InvariantResult::new(invariant::LINEARIZABLE, Verdict::Violated, v.to_string())
            }
        },
    );
    let leaders = sim
        .leaders
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let terms = leaders
        .iter()
        .map(|l| l.term)
        .collect::<BTreeSet<_>>()
        .len();
    invariants.insert(
        1,
        match raft_check::check_one_leader_per_term(&leaders) {
            Ok(n) => InvariantResult::new(
                invariant::ONE_LEADER_PER_TERM,
                Verdict::Held,
                format!("{n} terms with a leader, from every controller's own metrics"),
            ),
            Err(e) => InvariantResult::new(
                invariant::ONE_LEADER_PER_TERM,
                Verdict::Violated,
                e.to_string(),
            ),
        },
    );

    let start_errors = sim
        .start_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    invariants.push(if start_errors.is_empty() {
        InvariantResult::new(
            RESTARTS,
            Verdict::Held,
            "every restart came up from its disk",
        )
    } else {
        InvariantResult::new(RESTARTS, Verdict::Violated, start_errors.join("\n"))
    });
    for &id in &all {
        sim.crash(id).await;
    }
    let mut trace = blake3::Hasher::new();
    trace.update(format!("{history:?}").as_bytes());
    trace.update(format!("{faults:?}").as_bytes());
    trace.update(format!("{digests:?}").as_bytes());
    let (messages, dropped) = {
        let n = net.lock();
        (n.messages, n.dropped)
    };
    SimReport {
        seed: opts.seed,
        controllers: opts.controllers,
        bug: opts.bug,
        simulated_ms: net.now_ms(),
        faults,
        ops_ok: ok,
        ops_failed: failed,
        ops_indeterminate: unknown,
        messages,
        messages_dropped: dropped,
        terms,
        invariants,
        trace_digest: trace.finalize().to_hex().to_string(),
    }
}

/// Writes until one is answered (each recorded); the time of the answer.
async fn recover(sim: &Arc<Sim>, history: &mut Vec<Op>, deadline: Instant) -> Option<u64> {
    let mut n = 0;
    while Instant::now() < deadline {
        if let Some((raft, _)) = sim.leader().and_then(|l| sim.raft(l)) {
            n += 1;
            let value = format!("recovery-{n}");
            let invoked = sim.net.epoch.elapsed().as_nanos() as Nanos;
            let outcome = write(&raft, "k0", &value, None).await;
            let completed =
                (outcome != Outcome::Unknown).then(|| sim.net.epoch.elapsed().as_nanos() as Nanos);
            let done = outcome == Outcome::Written;
            history.push(Op {
                client: u32::MAX - 1,
                key: "k0".into(),
                call: KvCall::Write(value),
                invoked,
                completed,
                outcome,
            });
            if done {
                return Some(sim.net.now_ms());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Waits until every controller has applied the leader's last log entry; then
/// `(controller, applied index, state digest)` for each.
async fn converge(sim: &Arc<Sim>, all: &[NodeId]) -> Result<Vec<(u64, u64, String)>, String> {
    let deadline = Instant::now() + CONVERGE_WITHIN;
    loop {
        let applied: Vec<(NodeId, Option<u64>, Option<u64>)> = all
            .iter()
            .map(|&id| match sim.raft(id) {
                Some((r, _)) => {
                    let m = r.metrics().borrow().clone();
                    (id, m.last_applied.map(|l| l.index), m.last_log_index)
                }
                None => (id, None, None),
            })
            .collect();
        let target = applied.iter().filter_map(|(_, _, l)| *l).max();
        if target.is_some() && applied.iter().all(|(_, a, _)| *a == target) {
            let mut out = Vec::new();
            for &id in all {
                let (_, view) = sim.raft(id).ok_or("a controller stopped")?;
                let a = view.copy();
                out.push((
                    id,
                    a.last_applied.map_or(0, |l| l.index),
                    a.state.digest().map_err(|e| format!("digest: {e}"))?,
                ));
            }
            return Ok(out);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not converged within {CONVERGE_WITHIN:?} after healing: (controller, applied, last log) {applied:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a range of seeds found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimSummary {
    pub seeds: u64,
    pub passed: u64,
    /// Failing seeds, each with its violated invariants (replay with `--seed`).
    pub failed: Vec<(u64, Vec<String>)>,
    /// Seeds with an inconclusive check.
    pub inconclusive: Vec<u64>,
    /// Seeds that could not run.
    pub errors: Vec<(u64, String)>,
    pub ops_ok: u64,
    pub faults: u64,
    pub simulated_s: f64,
}

/// Runs every seed of `range` on `jobs` threads (each seed on its own runtime).
pub fn run_seeds(
    range: std::ops::Range<u64>,
    jobs: usize,
    options: impl Fn(u64) -> SimOptions + Sync,
) -> SimSummary {
    let next = std::sync::atomic::AtomicU64::new(range.start);
    let summary = Mutex::new(SimSummary::default());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed >= range.end {
                    return;
                }
                let opts = options(seed);
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_seed(&opts)))
                        .unwrap_or_else(|p| {
                            let why = p
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_default();
                            Err(format!("panicked: {why}"))
                        });
                let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
                s.seeds += 1;
                match result {
                    Err(e) => s.errors.push((seed, e)),
                    Ok(r) => {
                        s.ops_ok += r.ops_ok as u64;
                        s.faults += r.faults.len() as u64;
                        s.simulated_s += r.simulated_ms as f64 / 1000.0;
                        if !r.passed() {
                            let names = r
                                .violated()
                                .iter()
                                .map(|i| {
                                    i.detail
                                        .lines()
                                        .next()
                                        .map_or(i.name.clone(), |l| format!("{}: {l}", i.name))
                                })
                                .collect();
                            s.failed.push((seed, names));
                        } else {
                            s.passed += 1;
                        }
                        if r.invariants
                            .iter()
                            .any(|i| i.verdict == Verdict::Inconclusive)
                        {
                            s.inconclusive.push(seed);
                        }
                    }
                }
            });
        }
    });
    let mut s = summary.into_inner().unwrap_or_else(|p| p.into_inner());
    s.failed.sort();
    s.errors.sort();
    s.inconclusive.sort();
    s
}

/// A range's summary as text.
pub fn render_summary(s: &SimSummary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (seed, why) in &s.failed {
        let _ = writeln!(out, "seed {seed} FAILED: {}", why.join("; "));
    }
    for (seed, e) in &s.errors {
        let _ = writeln!(out, "seed {seed} could not run: {e}");
    }
    let _ = writeln!(
        out,
        "{} seeds: {} passed, {} failed, {} inconclusive, {} not run; {} faults, {} operations ok, {:.0} s simulated",
        s.seeds,
        s.passed,
        s.failed.len(),
        s.inconclusive.len(),
        s.errors.len(),
        s.faults,
        s.ops_ok,
        s.simulated_s
    );
    if let Some((seed, _)) = s.failed.first() {
        let _ = writeln!(out, "replay one: steward-chaos sim --seed {seed}");
    }
    out
}

/// The report as text.
pub fn render_text(r: &SimReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "simulation seed {}  {} controllers{}  simulated {:.1} s",
        r.seed,
        r.controllers,
        r.bug
            .map(|b| format!("  bug {}", b.name()))
            .unwrap_or_default(),
        r.simulated_ms as f64 / 1000.0
    );
    let _ = writeln!(s, "\nfaults ({}):", r.faults.len());
    for f in &r.faults {
        let _ = writeln!(s, "  {:>7} ms .. {:>7} ms  {}", f.at_ms, f.until_ms, f.what);
    }
    let _ = writeln!(
        s,
        "\noperations: {} ok, {} failed, {} indeterminate; messages {} ({} dropped); {} terms",
        r.ops_ok, r.ops_failed, r.ops_indeterminate, r.messages, r.messages_dropped, r.terms
    );
    let _ = writeln!(s, "\ninvariants:");
    for i in &r.invariants {
        let verdict = match i.verdict {
            Verdict::Held => "held",
            Verdict::Violated => "VIOLATED",
            Verdict::Inconclusive => "inconclusive",
        };
        let _ = writeln!(s, "  {:<24} {verdict}", i.name);
        for line in i.detail.lines() {
            let _ = writeln!(s, "      {line}");
        }
    }
    let _ = writeln!(s, "\ntrace digest {}", r.trace_digest);
    let _ = writeln!(
        s,
        "{} (seed {})",
        if r.passed() { "PASSED" } else { "FAILED" },
        r.seed
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_passes_and_replays_exactly() {
        let opts = SimOptions {
            duration: Duration::from_secs(8),
            ..SimOptions::new(3)
        };
        let a = run_seed(&opts).unwrap();
        assert!(a.passed(), "{}", render_text(&a));
        assert!(a.ops_ok > 50, "{}", render_text(&a));
        assert!(!a.faults.is_empty());
        let b = run_seed(&opts).unwrap();
        assert_eq!(
            a.trace_digest, b.trace_digest,
            "the same seed must replay the same run"
        );
        let c = run_seed(&SimOptions {
            seed: 4,
            ..opts.clone()
        })
        .unwrap();
        assert_ne!(a.trace_digest, c.trace_digest);
    }

    #[test]
    fn bad_options_are_refused() {
        let mut o = SimOptions::new(1);
        o.controllers = 0;
        assert!(run_seed(&o).unwrap_err().contains("controllers"));
        let mut o = SimOptions::new(1);
        o.duration = Duration::ZERO;
        assert!(run_seed(&o).is_err());
        assert!(SimBug::parse("nope")
            .unwrap_err()
            .contains("ack-before-sync"));
    }
}
