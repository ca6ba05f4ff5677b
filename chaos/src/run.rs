//! Runs a scenario on a cluster's machines ([`Nodes`]: a local lab with every controller
//! and agent in its own network namespace, or staging nodes from an inventory), the
//! scenario's workloads recording what clients saw, its fault schedule applied through an
//! [`UndoGuard`], then every checker on the records.
//!
//! ```text
//!  Scenario ──► Nodes (local | staging) ──► workloads (KV, jobs, objects) ──► history ─┐
//!                    ▲                      monitor (who leads, term) ──► samples ──────┤──► checkers ──► Report
//!                    └─ fault tasks (one per firing: apply, wait, undo) ────────────────┘
//! ```
//!
//! Times in the report count from the run's epoch (the workloads' start). A fault's time
//! to detect is how long until the controllers report another leader or a higher term; its
//! time to recover is how long after it ended until the first write invoked after its end
//! was answered.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use steward_proto::v1::admin_client::AdminClient;
use steward_proto::v1::{KvGetRequest, ListNodesRequest, ReadConsistency, StatusRequest};
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::check::placement;
use crate::check::{linearizable, raft};
use crate::fault::UndoGuard;
use crate::harness::netns::{self, Direction};
use crate::history::{KvCall, Nanos, Op, Outcome};
use crate::local::LocalNodes;
use crate::nodes::{Nodes, Victim};
use crate::scenario::{Action, Firing, Scenario, Target};
use crate::workload::jobs::{self, JobMix, Submitted};
use crate::workload::kv::{self, KvMix};
use crate::workload::objects::{self as object_workload, ObjCall, ObjOutcome, ObjectMix};

/// How often the monitor asks every controller who leads.
const MONITOR_EVERY: Duration = Duration::from_millis(200);
/// Deadline of one monitor or final-read call.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the run waits for the first leader, and for a leader to aim a fault at.
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How long, after every fault is undone, the controllers have to converge.
const CONVERGE_WAIT: Duration = Duration::from_secs(60);
/// The client number of the reads the runner makes at the end (every key once).
const FINAL_READER: u32 = u32::MAX;

/// Objects the object workload writes (`chaos/obj-0..`).
const OBJECTS: u32 = 4;
/// Tries of each acknowledged version's read-back at the end of a run.
const FINAL_OBJECT_READ_TRIES: u32 = 3;
/// Deadline of one `steward object` call.
const OBJECT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agents have to register and report ready.
const AGENTS_READY_WAIT: Duration = Duration::from_secs(60);

/// A bug of a known class, reintroduced on purpose through a fail point of the test build
/// of `steward`, to prove that the harness catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bug {
    /// Reads answered from the local state without the leader's quorum check: a
    /// controller cut off in a minority serves the past (etcd's and Consul's stale reads).
    ReadSkipBarrier,
    /// Agents (and their tasks' shims) never fence: an agent cut off from the controllers
    /// keeps its tasks running while they are placed again elsewhere (split brain).
    AgentSkipFence,
}

impl Bug {
    pub const ALL: [Bug; 2] = [Bug::ReadSkipBarrier, Bug::AgentSkipFence];

    pub fn name(self) -> &'static str {
        match self {
            Bug::ReadSkipBarrier => "read-skip-barrier",
            Bug::AgentSkipFence => "agent-skip-fence",
        }
    }

    pub fn parse(text: &str) -> anyhow::Result<Bug> {
        Bug::ALL
            .into_iter()
            .find(|b| b.name() == text)
            .ok_or_else(|| {
                let names: Vec<_> = Bug::ALL.iter().map(|b| b.name()).collect();
                anyhow!("unknown bug {text:?}; known: {}", names.join(", "))
            })
    }

    /// The `FAILPOINTS` setting (of controllers and agents) that switches it on.
    fn failpoints(self) -> String {
        format!("{}=return", self.name())
    }
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Seeds every random choice (targets, workload keys and values): printed with every
    /// report, so that a run can be repeated.
    pub seed: u64,
    pub bug: Option<Bug>,
    /// Print each fault as it fires (to stderr).
    pub progress: bool,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub bug: Option<Bug>,
    /// How long the workloads ran.
    pub ran_ms: u64,
    pub faults: Vec<FaultRecord>,
    pub operations: OperationCounts,
    pub invariants: Vec<InvariantResult>,
    /// Faults that could not be undone (a local cluster was torn down anyway; a staging
    /// cluster is left with them, and the report names them).
    pub undo_failures: Vec<String>,
}

impl Report {
    /// Whether no invariant was violated and every fault was undone.
    pub fn passed(&self) -> bool {
        self.undo_failures.is_empty()
            && self
                .invariants
                .iter()
                .all(|i| i.verdict != Verdict::Violated)
    }

    /// The invariant called `name`.
    pub fn invariant(&self, name: &str) -> Option<&InvariantResult> {
        self.invariants.iter().find(|i| i.name == name)
    }
}

/// One line per scenario run: its verdict, the worst time to detect and to recover over
/// its faults, and its operations (`make chaos`).
pub fn render_table(rows: &[(String, Result<Report, String>)]) -> String {
    use std::fmt::Write;
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v}"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<26} {:<8} {:>6} {:>10} {:>11} {:>8} {:>7} {:>13}",
        "scenario",
        "verdict",
        "faults",
        "detect ms",
        "recover ms",
        "ops ok",
        "failed",
        "indeterminate"
    );
    for (name, r) in rows {
        match r {
            Err(e) => {
                let _ = writeln!(
                    out,
                    "{name:<26} {:<8} {}",
                    "ERROR",
                    e.lines().next().unwrap_or("")
                );
            }
            Ok(r) => {
                let detect = r.faults.iter().filter_map(|f| f.detect_ms).max();
                let recover = r.faults.iter().filter_map(|f| f.recover_ms).max();
                let _ = writeln!(
                    out,
                    "{:<26} {:<8} {:>6} {:>10} {:>11} {:>8} {:>7} {:>13}",
                    name,
                    if r.passed() { "passed" } else { "FAILED" },
                    r.faults.len(),
                    ms(detect),
                    ms(recover),
                    r.operations.ok,
                    r.operations.failed,
                    r.operations.indeterminate
                );
            }
        }
    }
    let _ = writeln!(out, "(detect and recover: the slowest fault of the run)");
    out
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub action: String,
    /// The controllers it hit, resolved when it fired.
    pub targets: Vec<String>,
    pub at_ms: u64,
    /// When it was undone (`None`: a one-shot fault, or it failed).
    pub until_ms: Option<u64>,
    /// Until the controllers reported another leader or a higher term.
    pub detect_ms: Option<u64>,
    /// From its end until the first write invoked after its end was answered.
    pub recover_ms: Option<u64>,
    /// Why it was not applied, if it was not.
    pub error: Option<String>,
    /// What it did, when there is more to say (bit-rot: the files damaged).
    pub note: Option<String>,
    #[serde(skip)]
    leader_before: Option<(u64, u64)>,
    /// The node ids of the agents it hit.
    #[serde(skip)]
    agent_nodes: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct OperationCounts {
    pub ok: usize,
    /// Certainly not applied.
    pub failed: usize,
    /// Unknown: timed out or the answer was lost.
    pub indeterminate: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Held,
    Violated,
    /// Not decided (a search out of budget): neither a pass nor a failure.
    Inconclusive,
}

#[derive(Debug, Clone, Serialize)]
pub struct InvariantResult {
    pub name: String,
    pub verdict: Verdict,
    /// What was checked, or the counterexample.
    pub detail: String,
}

impl InvariantResult {
    pub(crate) fn new(name: &str, verdict: Verdict, detail: impl Into<String>) -> Self {
        InvariantResult {
            name: name.into(),
            verdict,
            detail: detail.into(),
        }
    }
}

/// The names of the invariants a report carries.
pub mod invariant {
    pub const LINEARIZABLE: &str = "kv-linearizable";
    pub const ONE_LEADER_PER_TERM: &str = "one-leader-per-term";
    pub const CONVERGED: &str = "controllers-converge";
    pub const RECOVERY: &str = "recovers-within-bound";
    pub const FAULTS_APPLIED: &str = "faults-applied";
    pub const SINGLE_RUN: &str = "no-task-on-two-nodes";
    pub const OBJECTS: &str = "objects-bit-exact";
    pub const RF_RESTORED: &str = "rf-restored-within-bound";
    pub const RESCHEDULED: &str = "jobs-rescheduled-within-bound";
    pub const GPU_FAULTS: &str = "gpu-faults-handled";
    pub const DISK_FULL: &str = "disk-full-handled";
    pub const NO_OVERCOMMIT: &str = "no-gpu-overcommitted";
}

/// What the fault tasks and the monitor share.
struct Env {
    /// The cluster's machines: a local lab, or staging nodes.
    nodes: Arc<dyn Nodes>,
    /// How the harness acts on the cluster as its admin.
    admin: Admin,
    /// Controller id -> API address.
    api: BTreeMap<u64, String>,
    guard: Arc<UndoGuard>,
    epoch: Instant,
    connect: kv::Connect,
    /// (at, leader, term) as the monitor saw it: the leader of the highest term reported.
    leaders: Mutex<Vec<(Nanos, u64, u64)>>,
    /// (at, node id, health) as the monitor saw the agents.
    node_health: Mutex<Vec<(Nanos, String, String)>>,
    /// The wall clock at `epoch` (ms since the Unix epoch): task records use the wall clock.
    wall_epoch_ms: u64,
    /// Where the clients write their files.
    scratch: std::path::PathBuf,
    seed: u64,
    rng: Mutex<rand_chacha::ChaCha8Rng>,
    progress: bool,
    /// The GPUs each GPU fault hit (one per victim), by fault index.
    gpu_picks: Mutex<BTreeMap<usize, Vec<GpuPick>>>,
    /// Undos that failed during the checks (starting the controllers after the replay).
    late_undo_failures: Mutex<Vec<String>>,
}

/// The GPU a GPU fault hit, and the tasks running on it then.
#[derive(Debug, Clone)]
struct GpuPick {
    node: String,
    gpu: u64,
    uuid: String,
    /// (job, task index) of each allocation running on it.
    tasks: Vec<(String, serde_json::Value)>,
}

impl Env {
    fn now(&self) -> Nanos {
        self.epoch.elapsed().as_nanos() as Nanos
    }

    fn say(&self, what: &str) {
        if self.progress {
            eprintln!("[{:>8.3} s] {what}", self.now() as f64 / 1e9);
        }
    }

    async fn status(&self, id: u64) -> Option<steward_proto::v1::StatusReply> {
        let addr = self.api.get(&id)?.clone();
        let call = async {
            let ch = (self.connect)(addr).await?;
            AdminClient::new(ch)
                .status(StatusRequest {
                    consistency: ReadConsistency::Stale as i32,
                })
                .await
                .ok()
                .map(|r| r.into_inner())
        };
        tokio::time::timeout(PROBE_TIMEOUT, call)
            .await
            .ok()
            .flatten()
    }

    /// Every agent's (node id, health), as the cluster reports them.
    async fn node_healths(&self) -> Option<Vec<(String, String)>> {
        let (id, _) = self.leader_now().await?;
        let addr = self.api.get(&id)?.clone();
        let call = async {
            let ch = (self.connect)(addr).await?;
            AdminClient::new(ch)
                .list_nodes(ListNodesRequest::default())
                .await
                .ok()
                .map(|r| {
                    r.into_inner()
                        .nodes
                        .into_iter()
                        .map(|n| (n.id, n.health))
                        .collect()
                })
        };
        tokio::time::timeout(PROBE_TIMEOUT, call)
            .await
            .ok()
            .flatten()
    }

    /// The leader of the highest term any controller reports, as (id, term).
    async fn leader_now(&self) -> Option<(u64, u64)> {
        let ids: Vec<u64> = self.api.keys().copied().collect();
        let replies = futures::future::join_all(ids.iter().map(|id| self.status(*id))).await;
        replies
            .into_iter()
            .flatten()
            .filter(|s| s.responder_state == "leader")
            .map(|s| (s.responder_id, s.term))
            .max_by_key(|(_, term)| *term)
    }

    async fn wait_leader(&self, within: Duration) -> Option<(u64, u64)> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.leader_now().await {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(MONITOR_EVERY).await;
        }
    }

    /// The controllers or agents `target` names now.
    async fn resolve(&self, target: &Target) -> anyhow::Result<Vec<Victim>> {
        let n = self.api.len() as u64;
        let leader = || async {
            self.wait_leader(LEADER_WAIT)
                .await
                .map(|(id, _)| id)
                .ok_or_else(|| anyhow!("no leader to aim at within {LEADER_WAIT:?}"))
        };
        let controllers = |ids: Vec<u64>| ids.into_iter().map(Victim::Controller).collect();
        Ok(match target {
            Target::Leader => controllers(vec![leader().await?]),
            Target::Follower => {
                let l = leader().await?;
                let others: Vec<u64> = self.api.keys().copied().filter(|i| *i != l).collect();
                let pick = self.rng().random_range(0..others.len());
                controllers(vec![others[pick]])
            }
            Target::Minority => {
                let l = leader().await?;
                let mut others: Vec<u64> = self.api.keys().copied().filter(|i| *i != l).collect();
                let size = ((n - 1) / 2) as usize;
                let mut chosen = vec![l];
                let mut rng = self.rng();
                while chosen.len() < size {
                    let at = rng.random_range(0..others.len());
                    chosen.push(others.remove(at));
                }
                controllers(chosen)
            }
            Target::Controller(id) => {
                let id = u64::from(*id);
                if !self.api.contains_key(&id) {
                    bail!("the cluster has no controller {id}");
                }
                controllers(vec![id])
            }
            Target::AnyAgent => {
                // Among the agents running tasks, if any: a fault on an idle agent proves
                // little about the work's failover.
                let agents = self.nodes.agents();
                if agents.is_empty() {
                    bail!("the scenario aims at an agent, but its cluster has none");
                }
                let nodes = self.nodes.clone();
                let busy: Vec<u32> = tokio::task::block_in_place(|| {
                    agents
                        .iter()
                        .copied()
                        .filter(|i| nodes.task_runs(*i).iter().any(|r| r.stopped_ms.is_none()))
                        .collect()
                });
                let pool: Vec<u32> = if busy.is_empty() { agents } else { busy };
                vec![Victim::Agent(pool[self.rng().random_range(0..pool.len())])]
            }
            Target::Agent(i) => {
                if !self.nodes.agents().contains(i) {
                    bail!("the cluster has no agent {i}");
                }
                vec![Victim::Agent(*i)]
            }
        })
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, rand_chacha::ChaCha8Rng> {
        self.rng.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn controllers_arg(&self) -> String {
        self.api.values().cloned().collect::<Vec<_>>().join(",")
    }

    /// Applies the firing's action to `victims` through the guard; the undo ids.
    /// Blocking.
    fn apply(
        &self,
        scenario: &Scenario,
        firing: &Firing,
        victims: &[Victim],
    ) -> Result<Vec<u64>, String> {
        let fault = &scenario.faults[firing.fault];
        let mut undo_ids = Vec::new();
        let agent_of = |v: Victim, what: &str| match v {
            Victim::Agent(i) => Ok(i),
            Victim::Controller(_) => Err(format!("{what} needs an agent, not {}", v.name())),
        };
        match fault.action {
            Action::Kill => {
                for &v in victims {
                    let nodes = self.nodes.clone();
                    undo_ids.push(self.guard.apply_tracked(
                        format!("kill -9 of {}", v.name()),
                        || self.nodes.kill(v),
                        move || nodes.start(v),
                    )?);
                }
            }
            Action::Pause => {
                for &v in victims {
                    let nodes = self.nodes.clone();
                    undo_ids.push(self.guard.apply_tracked(
                        format!("pause of {}", v.name()),
                        || self.nodes.pause(v),
                        move || nodes.resume(v),
                    )?);
                }
            }
            Action::Partition | Action::PartitionOneWay => {
                // Both: the victims cut off from every other host. One way: the victims'
                // packets dropped at the other hosts, while theirs still reach the victims.
                let direction = match fault.action {
                    Action::Partition => Direction::Both,
                    _ => Direction::OneWay,
                };
                let partition = Arc::new(Mutex::new(None));
                let (p, nodes) = (partition.clone(), self.nodes.clone());
                let names: Vec<String> = victims.iter().map(|v| v.name()).collect();
                undo_ids.push(self.guard.apply_tracked(
                    format!(
                        "{} partition of {}",
                        match direction {
                            Direction::Both => "full",
                            Direction::OneWay => "one-way",
                        },
                        names.join(", ")
                    ),
                    || {
                        let id = self.nodes.partition(victims, direction)?;
                        *p.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
                        Ok(())
                    },
                    move || match partition.lock().unwrap_or_else(|p| p.into_inner()).take() {
                        Some(id) => nodes.heal(id),
                        None => Ok(()),
                    },
                )?);
            }
            Action::BitRot => {
                // One-shot, not undone: finding and mending it is the cluster's job.
                let count = fault.chunks.unwrap_or(8) as usize;
                for &v in victims {
                    let i = agent_of(v, "bit-rot")?;
                    let rotted =
                        self.nodes
                            .bit_rot(i, count, self.seed ^ firing.at.as_millis() as u64)?;
                    self.say(&format!(
                        "flipped a bit in {rotted} chunk files of {}",
                        v.name()
                    ));
                }
            }
            Action::Netem => {
                let settings = fault.netem.clone().ok_or("netem settings missing")?;
                let netem = netns::Netem {
                    delay: settings.delay,
                    jitter: settings.jitter,
                    loss_percent: settings.loss * 100.0,
                    duplicate_percent: settings.duplicate * 100.0,
                    reorder_percent: settings.reorder * 100.0,
                };
                for &v in victims {
                    let nodes = self.nodes.clone();
                    undo_ids.push(self.guard.apply_tracked(
                        format!("netem on {}", v.name()),
                        || self.nodes.netem(v, &netem),
                        move || nodes.clear_netem(v),
                    )?);
                }
            }
            Action::GpuXid | Action::GpuEcc | Action::GpuLost => {
                // Through the simulated GPUs' fault RPC (`steward node fault`), on a GPU
                // that runs a task when one does; cleared at the fault's end.
                let addrs = self.controllers_arg();
                for &v in victims {
                    let i = agent_of(v, "a GPU fault")?;
                    let node = self
                        .nodes
                        .node_id(i)
                        .ok_or_else(|| format!("{} has no node id yet", v.name()))?;
                    // Allocations name GPUs by UUID; the fault RPC takes the index.
                    let mut used: BTreeMap<String, Vec<(String, serde_json::Value)>> =
                        BTreeMap::new();
                    let allocs = admin_json(&self.admin, &addrs, &["alloc", "list"]);
                    if allocs.is_none() {
                        self.say("listing allocations failed: the GPU fault picks GPU 0");
                    }
                    for a in allocs
                        .as_ref()
                        .and_then(|v| v.as_array())
                        .into_iter()
                        .flatten()
                        .filter(|a| a["node"] == node.as_str() && a["state"] == "running")
                    {
                        for g in a["gpus"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|g| g.as_str())
                        {
                            used.entry(g.to_string()).or_default().push((
                                a["job"].as_str().unwrap_or_default().to_string(),
                                a["task"].clone(),
                            ));
                        }
                    }
                    let gpus: Vec<(u64, String)> =
                        admin_json(&self.admin, &addrs, &["node", "show", &node])
                            .and_then(|v| v["telemetry"]["gpus"].as_array().cloned())
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|g| {
                                Some((g["index"].as_u64()?, g["uuid"].as_str()?.to_string()))
                            })
                            .collect();
                    let busy: Vec<&(u64, String)> =
                        gpus.iter().filter(|(_, u)| used.contains_key(u)).collect();
                    let (gpu, uuid) = if !busy.is_empty() {
                        let n = self.rng().random_range(0..busy.len());
                        busy[n].clone()
                    } else {
                        gpus.first()
                            .cloned()
                            .ok_or_else(|| format!("{} reports no GPUs", v.name()))?
                    };
                    let (kind, code) = match fault.action {
                        Action::GpuXid => ("xid", fault.xid.map(|x| x.to_string())),
                        Action::GpuEcc => ("ecc-double-bit", None),
                        _ => ("fell-off-bus", None),
                    };
                    let g = gpu.to_string();
                    let mut args = vec!["node", "fault", &node, "--gpu", &g, kind];
                    if let Some(code) = &code {
                        args.push(code);
                    }
                    let (admin, addrs2, node2, g2) =
                        (self.admin.clone(), addrs.clone(), node.clone(), g.clone());
                    undo_ids.push(self.guard.apply_tracked(
                        format!("{kind} on GPU {gpu} of {}", v.name()),
                        || admin_cli(&self.admin, &addrs, &args),
                        move || {
                            admin_cli(
                                &admin,
                                &addrs2,
                                &["node", "fault", &node2, "--gpu", &g2, "clear"],
                            )
                        },
                    )?);
                    self.gpu_picks
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(firing.fault)
                        .or_default()
                        .push(GpuPick {
                            node,
                            gpu,
                            tasks: used.remove(&uuid).unwrap_or_default(),
                            uuid,
                        });
                }
            }
            Action::DiskFull => {
                for &v in victims {
                    let i = agent_of(v, "disk-full")?;
                    let nodes = self.nodes.clone();
                    undo_ids.push(self.guard.apply_tracked(
                        format!("disk full on {}", v.name()),
                        || self.nodes.fill_disk(i),
                        // Whatever the fill got to, even if it failed half-way.
                        move || nodes.free_disk(i),
                    )?);
                }
            }
            Action::ClockSkew => {
                if let Some(why) = self.nodes.clock_skew_unavailable() {
                    return Err(format!("clock-skew cannot be applied: {why}"));
                }
                let offset = faketime_offset(fault.offset.as_deref().unwrap_or("+0s"))?;
                for &v in victims {
                    let nodes = self.nodes.clone();
                    undo_ids.push(self.guard.apply_tracked(
                        format!("clock of {} moved {offset} s", v.name()),
                        || self.nodes.set_clock(v, &offset),
                        move || nodes.set_clock(v, "+0"),
                    )?);
                }
            }
            Action::Membership => {
                // The victim leaves the group (it keeps running), and is added back as a
                // learner and promoted at the fault's end, as an operator replacing a
                // member would.
                for &v in victims {
                    let Victim::Controller(id) = v else {
                        return Err(format!(
                            "membership changes need a controller, not {}",
                            v.name()
                        ));
                    };
                    let (raft_addr, api_addr) = self
                        .nodes
                        .controller_addrs(id)
                        .ok_or_else(|| format!("no controller {id}"))?;
                    let addrs = self.controllers_arg();
                    let id = id.to_string();
                    let id2 = id.clone();
                    let (admin, addrs2) = (self.admin.clone(), addrs.clone());
                    undo_ids.push(self.guard.apply_tracked(
                        format!("removal of controller {id} from the group"),
                        // A retry after a lost answer finds the change made: done.
                        || {
                            admin_cli_unless(
                                &self.admin,
                                &addrs,
                                &["operator", "raft", "remove-peer", &id],
                                "is not a member",
                            )
                        },
                        move || {
                            admin_cli_unless(
                                &admin,
                                &addrs2,
                                &[
                                    "operator",
                                    "raft",
                                    "add-learner",
                                    &id2,
                                    &raft_addr,
                                    &api_addr,
                                ],
                                "is already a member",
                            )?;
                            admin_cli(&admin, &addrs2, &["operator", "raft", "promote", &id2])
                        },
                    )?);
                }
            }
        }
        Ok(undo_ids)
    }
}

/// How long an admin call of a fault (a membership change) is retried: leaders may be
/// killed meanwhile.
const ADMIN_RETRY_FOR: Duration = Duration::from_secs(30);

/// Runs `steward ARGS` as the harness's admin against `addrs` until it succeeds or
/// [`ADMIN_RETRY_FOR`] passes; the last error otherwise. Blocking (fault actions are).
fn admin_cli(admin: &Admin, addrs: &str, args: &[&str]) -> Result<(), String> {
    admin_cli_unless(admin, addrs, args, "")
}

/// [`admin_cli`], also done when the error says `already` (non-empty): the change was made
/// by an earlier try whose answer was lost.
fn admin_cli_unless(
    admin: &Admin,
    addrs: &str,
    args: &[&str],
    already: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + ADMIN_RETRY_FOR;
    loop {
        let out = admin
            .command()
            .args(args)
            .env("STEWARD_ADDR", addrs)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running steward: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || (!already.is_empty() && stderr.contains(already)) {
            return Ok(());
        }
        let err = format!(
            "steward {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if Instant::now() >= deadline {
            return Err(err);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `steward -o json ARGS` as the harness's admin against `addrs`, once; blocking.
fn admin_json(admin: &Admin, addrs: &str, args: &[&str]) -> Option<serde_json::Value> {
    let out = admin
        .command()
        .args(["-o", "json"])
        .args(args)
        .env("STEWARD_ADDR", addrs)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// After a GPU fault: when (run ms) the GPU was committed as failed, and when every task
/// that ran on it was running again on another GPU (or had completed); each `None` if not
/// within `within`.
async fn follow_gpu_fault(
    env: &Env,
    pick: &GpuPick,
    within: Duration,
) -> (Option<u64>, Option<u64>) {
    let deadline = Instant::now() + within;
    let addrs = env.controllers_arg();
    let call = PROBE_TIMEOUT * 10;
    let mut failed_at = None;
    while Instant::now() < deadline {
        if failed_at.is_none() {
            let nodes =
                object_workload::steward_json(&env.admin, &addrs, &["node", "list"], call).await;
            let health = nodes
                .as_ref()
                .and_then(|v| v.as_array())
                .and_then(|ns| ns.iter().find(|n| n["id"] == pick.node.as_str()))
                .and_then(|n| {
                    n["gpus"]
                        .as_array()?
                        .iter()
                        .find(|g| g["uuid"] == pick.uuid.as_str())
                        .map(|g| g["health"].clone())
                });
            if health.is_some_and(|h| h == "failed") {
                failed_at = Some(env.now() / 1_000_000);
            }
        }
        if failed_at.is_some() {
            // With ended ones: a task that finished meanwhile needs no other GPU.
            let allocs = object_workload::steward_json(
                &env.admin,
                &addrs,
                &["alloc", "list", "--all"],
                call,
            )
            .await;
            let allocs = allocs.as_ref().and_then(|v| v.as_array());
            let moved = |(job, task): &(String, serde_json::Value)| {
                allocs.into_iter().flatten().any(|a| {
                    let on_failed_gpu = a["node"] == pick.node.as_str()
                        && a["gpus"]
                            .as_array()
                            .is_some_and(|g| g.iter().any(|u| u == pick.uuid.as_str()));
                    a["job"] == job.as_str()
                        && a["task"] == *task
                        && (a["state"] == "complete" || (a["state"] == "running" && !on_failed_gpu))
                })
            };
            if allocs.is_some() && pick.tasks.iter().all(moved) {
                return (failed_at, Some(env.now() / 1_000_000));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    (failed_at, None)
}

/// When (run ms) every node of `nodes` reported its chunk store's space low (`low`), or
/// no longer low; `None` if not within `within`.
async fn wait_space_low(env: &Env, nodes: &[String], low: bool, within: Duration) -> Option<u64> {
    if nodes.is_empty() {
        // No node id to ask about: nothing can be claimed.
        return None;
    }
    let deadline = Instant::now() + within;
    let addrs = env.controllers_arg();
    while Instant::now() < deadline {
        let mut all = true;
        for node in nodes {
            let v = object_workload::steward_json(
                &env.admin,
                &addrs,
                &["node", "show", node],
                PROBE_TIMEOUT * 10,
            )
            .await;
            all &= v.is_some_and(|v| v["chunk_store"]["space_low"] == low);
        }
        if all {
            return Some(env.now() / 1_000_000);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// Each disk-full fault: the agent reported its space low (and so took no new chunks)
/// while full, and not low within the recovery bound after the space came back.
fn disk_full_verdict(faults: &[FaultRecord], scenario: &Scenario) -> Option<InvariantResult> {
    let fulls: Vec<&FaultRecord> = faults
        .iter()
        .filter(|f| f.error.is_none() && f.action == Action::DiskFull.name())
        .collect();
    if fulls.is_empty() {
        return None;
    }
    let bound = scenario.pass.recover_within.as_millis() as u64;
    let bad: Vec<String> = fulls
        .iter()
        .filter_map(|f| match (f.detect_ms, f.recover_ms) {
            (None, _) => Some(format!(
                "disk full at {} ms on {}: the agent never reported its space low",
                f.at_ms,
                f.targets.join(", ")
            )),
            (_, None) => Some(format!(
                "disk full at {} ms on {}: space still low {bound} ms after it came back",
                f.at_ms,
                f.targets.join(", ")
            )),
            _ => None,
        })
        .collect();
    Some(if bad.is_empty() {
        InvariantResult::new(
            invariant::DISK_FULL,
            Verdict::Held,
            format!("{} disk-full faults: space low reported while full, cleared within {bound} ms after", fulls.len()),
        )
    } else {
        InvariantResult::new(invariant::DISK_FULL, Verdict::Violated, bad.join("\n"))
    })
}

/// Stops every controller and replays its committed log ([`crate::replay`]): no GPU held
/// beyond its capacity at any applied index, on any controller.
/// Starting them again is an undo in the run's guard: an interrupted replay starts them
/// too, and a failure to is one of the report's undo failures.
async fn overcommit_verdict(env: &Env) -> InvariantResult {
    let nodes = env.nodes.clone();
    let stopped = Arc::new(Mutex::new(None));
    let stop = stopped.clone();
    let restart = env.guard.apply_tracked(
        "the controllers stopped for the log replay",
        || {
            tokio::task::block_in_place(|| {
                let s = env.nodes.stop_controllers()?;
                *stop.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
                Ok(())
            })
        },
        move || nodes.after_replay(),
    );
    let restart = match restart {
        Ok(id) => id,
        Err(e) => {
            return InvariantResult::new(
                invariant::NO_OVERCOMMIT,
                Verdict::Inconclusive,
                format!("the controllers' logs could not be read: {e}"),
            )
        }
    };
    let stopped = stopped.lock().unwrap_or_else(|p| p.into_inner()).take();
    let verdict = match &stopped {
        Some(s) => replay_verdict(&s.data_dirs).await,
        None => InvariantResult::new(
            invariant::NO_OVERCOMMIT,
            Verdict::Inconclusive,
            "the controllers' logs were not copied",
        ),
    };
    drop(stopped);
    if let Some(e) = tokio::task::block_in_place(|| env.guard.undo(restart)) {
        env.late_undo_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }
    verdict
}

/// Replays each controller's committed log in `dirs` into [`placement::check_grants`].
async fn replay_verdict(dirs: &[(u64, std::path::PathBuf)]) -> InvariantResult {
    let mut lines = Vec::new();
    let mut grants_total = 0;
    for (id, dir) in dirs {
        match crate::replay::replay_data_dir(dir).await {
            Err(e) => {
                return InvariantResult::new(
                    invariant::NO_OVERCOMMIT,
                    Verdict::Inconclusive,
                    format!("controller {id}: its log could not be replayed: {e:#}"),
                )
            }
            Ok(r) => match placement::check_grants(&r.grants) {
                Err(o) => {
                    return InvariantResult::new(
                        invariant::NO_OVERCOMMIT,
                        Verdict::Violated,
                        format!("controller {id}'s log, {o}"),
                    )
                }
                Ok(n) => {
                    grants_total += n;
                    lines.push(format!("{id}: {}..={}", r.from_index, r.to_index));
                }
            },
        }
    }
    InvariantResult::new(
        invariant::NO_OVERCOMMIT,
        Verdict::Held,
        format!(
            "committed logs replayed (controller: indexes {}), {grants_total} GPU holds and releases, no GPU over 1000 milli",
            lines.join(", ")
        ),
    )
}

/// Each GPU fault: the GPU committed as failed, and its tasks running on another GPU,
/// within the scenario's rescheduling bound.
fn gpu_verdict(faults: &[FaultRecord], scenario: &Scenario) -> Option<InvariantResult> {
    let gpu_faults: Vec<&FaultRecord> = faults
        .iter()
        .filter(|f| f.error.is_none() && f.action.starts_with("gpu-"))
        .collect();
    if gpu_faults.is_empty() {
        return None;
    }
    let bound = scenario.pass.jobs_rescheduled_within.as_millis() as u64;
    let late: Vec<String> = gpu_faults
        .iter()
        .filter(|f| f.recover_ms.is_none_or(|r| r > bound))
        .map(|f| match f.detect_ms {
            None => format!("{} at {} ms on {}: the GPU was never marked failed", f.action, f.at_ms, f.targets.join(", ")),
            Some(d) => format!(
                "{} at {} ms on {}: marked failed after {d} ms, its tasks not running elsewhere within {bound} ms",
                f.action,
                f.at_ms,
                f.targets.join(", ")
            ),
        })
        .collect();
    Some(if late.is_empty() {
        InvariantResult::new(
            invariant::GPU_FAULTS,
            Verdict::Held,
            format!(
                "{} GPU faults: each GPU marked failed and its tasks moved within {bound} ms",
                gpu_faults.len()
            ),
        )
    } else {
        InvariantResult::new(invariant::GPU_FAULTS, Verdict::Violated, late.join("\n"))
    })
}

/// libfaketime's offset for `offset` ("+30s", "-5m"): signed whole seconds.
fn faketime_offset(offset: &str) -> Result<String, String> {
    let (sign, rest) = match offset.trim().split_at_checked(1) {
        Some(("+", r)) => ("+", r),
        Some(("-", r)) => ("-", r),
        _ => ("+", offset.trim()),
    };
    let d = humantime::parse_duration(rest.trim())
        .map_err(|e| format!("clock offset `{offset}`: {e}"))?;
    Ok(format!("{sign}{}", d.as_secs()))
}

/// Runs `scenario` on a local cluster in network namespaces (needs root).
pub async fn run_local(scenario: &Scenario, options: &RunOptions) -> anyhow::Result<Report> {
    check_workloads(scenario, scenario.cluster.agents)?;
    let nodes = Arc::new(LocalNodes::start(
        scenario,
        options.bug.map(Bug::failpoints),
    )?);
    let scratch = nodes.dir();
    run_on(nodes, Admin::Harness, scratch, scenario, options).await
}

/// Refuses a scenario whose workloads need agents the cluster does not have.
pub(crate) fn check_workloads(scenario: &Scenario, agents: u32) -> anyhow::Result<()> {
    for (name, wanted) in [
        ("object", scenario.workload.objects.is_some()),
        ("job", scenario.workload.jobs.is_some()),
    ] {
        if wanted && agents == 0 {
            bail!(
                "scenario {}: the {name} workload needs agents, and the cluster has none",
                scenario.name
            );
        }
    }
    Ok(())
}

/// Runs `scenario` on `nodes` (started, or running): waits for a leader and ready agents,
/// drives the workloads and the faults, checks, and undoes every fault whatever happened.
/// `scratch`: where the clients write their files.
pub(crate) async fn run_on(
    nodes: Arc<dyn Nodes>,
    admin: Admin,
    scratch: std::path::PathBuf,
    scenario: &Scenario,
    options: &RunOptions,
) -> anyhow::Result<Report> {
    if scenario.faults.iter().any(|f| f.action == Action::Netem) {
        if let Some(why) = nodes.netem_unavailable() {
            bail!("scenario {} needs netem: {why}", scenario.name);
        }
    }
    if scenario
        .faults
        .iter()
        .any(|f| f.action == Action::ClockSkew)
    {
        if let Some(why) = nodes.clock_skew_unavailable() {
            bail!("scenario {} needs clock skew: {why}", scenario.name);
        }
    }
    let guard = UndoGuard::new();
    let env = Arc::new(Env {
        api: nodes.controllers(),
        nodes,
        connect: admin.connector(),
        admin,
        guard: guard.clone(),
        epoch: Instant::now(),
        leaders: Mutex::new(Vec::new()),
        node_health: Mutex::new(Vec::new()),
        wall_epoch_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        rng: Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(options.seed)),
        progress: options.progress,
        gpu_picks: Mutex::new(BTreeMap::new()),
        late_undo_failures: Mutex::new(Vec::new()),
        scratch,
        seed: options.seed,
    });
    env.say(&format!("on {}", env.nodes.describe()));
    let first = env
        .wait_leader(LEADER_WAIT)
        .await
        .ok_or_else(|| anyhow!("no leader within {LEADER_WAIT:?} of starting the run"))?;
    env.say(&format!("controller {} leads in term {}", first.0, first.1));
    if !env.nodes.agents().is_empty() {
        start_agents(&env).await?;
    }
    let result = drive(&env, scenario, options).await;
    // Whatever happened: every fault undone before the cluster goes.
    let mut undo_failures = std::mem::take(
        &mut *env
            .late_undo_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    undo_failures.extend(tokio::task::block_in_place(|| guard.undo_all()));
    let mut report = match result {
        Ok(r) => r,
        Err(e) if undo_failures.is_empty() => return Err(e),
        Err(e) => {
            return Err(e.context(format!(
                "the run failed, and these faults could not be undone: {}",
                undo_failures.join("; ")
            )))
        }
    };
    report.undo_failures = undo_failures;
    Ok(report)
}

/// Starts every agent (one that runs already is left alone) and waits until the cluster
/// reports each ready.
async fn start_agents(env: &Env) -> anyhow::Result<()> {
    let agents = env.nodes.agents();
    let count = agents.len();
    tokio::task::block_in_place(|| {
        for &i in &agents {
            env.nodes.start(Victim::Agent(i)).map_err(|e| anyhow!(e))?;
        }
        anyhow::Ok(())
    })?;
    let deadline = Instant::now() + AGENTS_READY_WAIT;
    loop {
        let ids: Vec<String> = tokio::task::block_in_place(|| {
            agents
                .iter()
                .filter_map(|i| env.nodes.node_id(*i))
                .collect()
        });
        if ids.len() == count {
            if let Some(healths) = env.node_healths().await {
                let ready = ids
                    .iter()
                    .filter(|id| healths.iter().any(|(n, h)| n == *id && h == "ready"))
                    .count();
                if ready == count {
                    env.say(&format!("{count} agents ready"));
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            bail!("the agents were not all ready within {AGENTS_READY_WAIT:?} ({} of {count} have a node id; logs: agent-N.log in a local run's dir)", ids.len());
        }
        tokio::time::sleep(MONITOR_EVERY).await;
    }
}

async fn drive(
    env: &Arc<Env>,
    scenario: &Scenario,
    options: &RunOptions,
) -> anyhow::Result<Report> {
    let mut tasks = tokio::task::JoinSet::new();
    let stop_monitor = CancellationToken::new();
    {
        let (env, stop) = (env.clone(), stop_monitor.clone());
        let has_agents = !env.nodes.agents().is_empty();
        tasks.spawn(async move {
            while !stop.is_cancelled() {
                if let Some((id, term)) = env.leader_now().await {
                    let at = env.now();
                    env.leaders
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((at, id, term));
                }
                if has_agents {
                    if let Some(healths) = env.node_healths().await {
                        let at = env.now();
                        env.node_health
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend(healths.into_iter().map(|(n, h)| (at, n, h)));
                    }
                }
                tokio::time::sleep(MONITOR_EVERY).await;
            }
        });
    }

    let stop_workload = CancellationToken::new();
    let workload = scenario.workload.kv.as_ref().map(|w| {
        let mix = KvMix {
            clients: w.clients,
            keys: w.keys,
            read_percent: w.read_percent,
            cas_percent: w.cas_percent,
            seed: options.seed,
            epoch: Some(env.epoch),
            ..KvMix::default()
        };
        tokio::spawn(kv::run(
            mix,
            env.api.values().cloned().collect(),
            env.connect.clone(),
            stop_workload.clone(),
        ))
    });

    let job_workload = scenario.workload.jobs.as_ref().map(|w| {
        let mix = JobMix {
            per_second: w.per_second,
            gpus: w.gpus,
            runtime: w.runtime,
            epoch: env.epoch,
            call_timeout: Duration::from_secs(5),
        };
        tokio::spawn(jobs::run(
            mix,
            env.api.values().cloned().collect(),
            env.connect.clone(),
            stop_workload.clone(),
        ))
    });

    let object_run = scenario.workload.objects.as_ref().map(|w| {
        let mix = ObjectMix {
            clients: w.clients,
            objects: OBJECTS,
            size_bytes: w.size_bytes,
            put_percent: 30,
            tag_percent: 10,
            tag_read_percent: 15,
            addrs: env.controllers_arg(),
            scratch: env.scratch.join("object-clients"),
            call_timeout: OBJECT_CALL_TIMEOUT,
            epoch: env.epoch,
            seed: options.seed,
            admin: env.admin.clone(),
        };
        (
            mix.clone(),
            tokio::spawn(object_workload::run(mix, stop_workload.clone())),
        )
    });

    // Each firing in its own task: apply at its time, undo at its end.
    let firings = scenario.firings();
    let records: Arc<Mutex<Vec<FaultRecord>>> = Arc::new(Mutex::new(Vec::new()));
    let mut fault_tasks = tokio::task::JoinSet::new();
    for firing in firings.clone() {
        let (env, scenario, records) = (env.clone(), scenario.clone(), records.clone());
        fault_tasks.spawn(async move {
            tokio::time::sleep_until((env.epoch + firing.at).into()).await;
            let action = scenario.faults[firing.fault].action;
            let leader_before = env.leader_now().await;
            let mut record = FaultRecord {
                action: action.name().to_string(),
                targets: Vec::new(),
                at_ms: env.now() / 1_000_000,
                until_ms: None,
                detect_ms: None,
                recover_ms: None,
                error: None,
                note: None,
                leader_before,
                agent_nodes: Vec::new(),
            };
            let applied = match env.resolve(&scenario.faults[firing.fault].target).await {
                Err(e) => Err(format!("{e:#}")),
                Ok(targets) => {
                    record.targets = targets.iter().map(|v| v.name()).collect();
                    record.agent_nodes = tokio::task::block_in_place(|| {
                        targets
                            .iter()
                            .filter_map(|v| match v {
                                Victim::Agent(i) => env.nodes.node_id(*i),
                                Victim::Controller(_) => None,
                            })
                            .collect()
                    });
                    record.at_ms = env.now() / 1_000_000;
                    // Fault actions block (processes, admin commands with retries, filling
                    // a disk): off this worker, so the clients and the monitor keep time.
                    tokio::task::block_in_place(|| env.apply(&scenario, &firing, &targets))
                }
            };
            match applied {
                Err(e) => {
                    env.say(&format!(
                        "fault {} on {} not applied: {e}",
                        record.action,
                        record.targets.join(", ")
                    ));
                    record.error = Some(e);
                }
                Ok(undo_ids)
                    if matches!(action, Action::GpuXid | Action::GpuEcc | Action::GpuLost) =>
                {
                    let picks = env
                        .gpu_picks
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&firing.fault)
                        .unwrap_or_default();
                    let at = record.at_ms;
                    let (mut detect, mut recover) = (Some(0), Some(0));
                    let mut notes = Vec::new();
                    for pick in &picks {
                        env.say(&format!(
                            "{} on GPU {} of node {} ({} tasks on it)",
                            record.action,
                            pick.gpu,
                            pick.node,
                            pick.tasks.len()
                        ));
                        let (failed, moved) =
                            follow_gpu_fault(&env, pick, scenario.pass.jobs_rescheduled_within)
                                .await;
                        detect = detect
                            .zip(failed.map(|t| t.saturating_sub(at)))
                            .map(|(a, b)| a.max(b));
                        recover = recover
                            .zip(moved.map(|t| t.saturating_sub(at)))
                            .map(|(a, b)| a.max(b));
                        notes.push(format!(
                            "GPU {}: {} tasks on it",
                            pick.gpu,
                            pick.tasks.len()
                        ));
                    }
                    if !picks.is_empty() {
                        record.detect_ms = detect;
                        record.recover_ms = recover;
                        record.note = Some(notes.join("; "));
                    }
                    if let Some(until) = firing.until {
                        tokio::time::sleep_until((env.epoch + until).into()).await;
                        let mut failed = Vec::new();
                        for id in undo_ids {
                            failed.extend(tokio::task::block_in_place(|| env.guard.undo(id)));
                        }
                        record.until_ms = Some(env.now() / 1_000_000);
                        if !failed.is_empty() {
                            record.error = Some(format!("undoing it: {}", failed.join("; ")));
                        }
                    }
                }
                Ok(undo_ids) if action == Action::DiskFull => {
                    env.say(&format!("disk full on {}", record.targets.join(", ")));
                    let bound = scenario.pass.recover_within;
                    let until = firing.until.unwrap_or(firing.at + bound);
                    let at = record.at_ms;
                    let low = wait_space_low(
                        &env,
                        &record.agent_nodes,
                        true,
                        until.saturating_sub(firing.at),
                    )
                    .await;
                    record.detect_ms = low.map(|t| t.saturating_sub(at));
                    tokio::time::sleep_until((env.epoch + until).into()).await;
                    let mut failed = Vec::new();
                    for id in undo_ids {
                        failed.extend(tokio::task::block_in_place(|| env.guard.undo(id)));
                    }
                    let end = env.now() / 1_000_000;
                    record.until_ms = Some(end);
                    env.say(&format!(
                        "disk full on {} undone",
                        record.targets.join(", ")
                    ));
                    if !failed.is_empty() {
                        record.error = Some(format!("undoing it: {}", failed.join("; ")));
                    }
                    let ok = wait_space_low(&env, &record.agent_nodes, false, bound).await;
                    record.recover_ms = ok.map(|t| t.saturating_sub(end));
                }
                Ok(undo_ids) if action == Action::BitRot => {
                    let _ = undo_ids;
                    let count = scenario.faults[firing.fault].chunks.unwrap_or(8) as u64;
                    let (found, repaired) = follow_bit_rot(
                        &env,
                        &record.agent_nodes,
                        count,
                        scenario.pass.rf_restored_within,
                    )
                    .await;
                    let at = record.at_ms;
                    record.detect_ms = found.map(|t| t.saturating_sub(at));
                    record.recover_ms = repaired.map(|t| t.saturating_sub(at));
                    record.note = Some(format!("{count} chunk files damaged"));
                }
                Ok(undo_ids) => {
                    env.say(&format!(
                        "{} on {}",
                        record.action,
                        record.targets.join(", ")
                    ));
                    if let Some(until) = firing.until {
                        tokio::time::sleep_until((env.epoch + until).into()).await;
                        let mut failed = Vec::new();
                        for id in undo_ids {
                            failed.extend(tokio::task::block_in_place(|| env.guard.undo(id)));
                        }
                        record.until_ms = Some(env.now() / 1_000_000);
                        env.say(&format!(
                            "{} on {} undone",
                            record.action,
                            record.targets.join(", ")
                        ));
                        if !failed.is_empty() {
                            record.error = Some(format!("undoing it: {}", failed.join("; ")));
                        }
                    }
                }
            }
            records
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(record);
        });
    }

    // The workloads run the scenario's duration, and long enough after the last fault's
    // end to see the cluster recover.
    let last_end = firings
        .iter()
        .map(|f| f.until.unwrap_or(f.at))
        .max()
        .unwrap_or_default();
    let run_for = scenario
        .duration
        .max(last_end + scenario.pass.recover_within);
    tokio::time::sleep_until((env.epoch + run_for).into()).await;
    while let Some(r) = fault_tasks.join_next().await {
        r.context("a fault task panicked")?;
    }
    stop_workload.cancel();
    let mut history = match workload {
        Some(w) => w.await.context("the KV workload panicked")?,
        None => Vec::new(),
    };
    let job_ops = match job_workload {
        Some(w) => w.await.context("the job workload panicked")?,
        None => Vec::new(),
    };
    let (object_mix, object_ops) = match object_run {
        Some((mix, w)) => (Some(mix), w.await.context("the object workload panicked")?),
        None => (None, Vec::new()),
    };
    let ran_ms = env.now() / 1_000_000;
    // Anything still in effect (a fault whose task failed half-way) is undone now, so the
    // cluster can converge.
    let _ = env.guard.undo_all();

    let mut invariants = Vec::new();
    let converged = converge(env).await;
    invariants.push(match &converged {
        Ok((index, digest)) => InvariantResult::new(
            invariant::CONVERGED,
            Verdict::Held,
            format!(
                "every controller applied index {index} with state digest {}",
                &digest[..16.min(digest.len())]
            ),
        ),
        Err(e) => InvariantResult::new(invariant::CONVERGED, Verdict::Violated, e.clone()),
    });
    stop_monitor.cancel();
    tasks.shutdown().await;

    let mut operations = OperationCounts::default();
    for op in &history {
        match op.outcome {
            Outcome::Read(_) | Outcome::Written | Outcome::CasFailed => operations.ok += 1,
            Outcome::Failed => operations.failed += 1,
            Outcome::Unknown => operations.indeterminate += 1,
        }
    }
    for op in &object_ops {
        match op.outcome {
            ObjOutcome::Stored { .. } | ObjOutcome::Read { .. } | ObjOutcome::Tagged => {
                operations.ok += 1
            }
            ObjOutcome::Failed(_) => operations.failed += 1,
            ObjOutcome::Unknown => operations.indeterminate += 1,
        }
    }
    for op in &job_ops {
        match op.outcome {
            Submitted::Accepted(_) => operations.ok += 1,
            Submitted::Refused(_) => operations.failed += 1,
            Submitted::Unknown => operations.indeterminate += 1,
        }
    }

    if scenario.workload.kv.is_some() {
        // Every key read once more at the end, linearizably: a lost acknowledged write
        // shows as a final read that no order explains.
        let keys: std::collections::BTreeSet<String> =
            history.iter().map(|o| o.key.clone()).collect();
        for key in keys {
            history.push(final_read(env, &key).await);
        }
        history.sort_by_key(|o| o.invoked);
        invariants.push(match linearizable::check(&history) {
            Ok(c) => InvariantResult::new(
                invariant::LINEARIZABLE,
                Verdict::Held,
                format!("{} operations on {} keys, with a final read of each ({} dropped: failed, or reads never answered)", c.ops, c.keys, c.dropped),
            ),
            Err(v @ linearizable::Verdict::Inconclusive { .. }) => {
                InvariantResult::new(invariant::LINEARIZABLE, Verdict::Inconclusive, v.to_string())
            }
            Err(v) => InvariantResult::new(invariant::LINEARIZABLE, Verdict::Violated, v.to_string()),
        });
    }

    let leaderships = tokio::task::block_in_place(|| env.nodes.leaderships());
    let seen: Vec<raft::LeaderSeen> = leaderships
        .iter()
        .map(|(term, id)| raft::LeaderSeen {
            reporter: *id,
            term: *term,
            leader: *id,
            at_ms: 0,
        })
        .chain(
            env.leaders
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(at, id, term)| raft::LeaderSeen {
                    reporter: *id,
                    term: *term,
                    leader: *id,
                    at_ms: at / 1_000_000,
                }),
        )
        .collect();
    invariants.push(match raft::check_one_leader_per_term(&seen) {
        Ok(terms) => InvariantResult::new(
            invariant::ONE_LEADER_PER_TERM,
            Verdict::Held,
            if leaderships.is_empty() {
                // Held on what was seen, which is less than it should be.
                format!(
                    "{terms} terms with a leader, from {} status samples only: the controllers' logs \
                     gave no \"became leader\" line (their log level below info, or unreadable)",
                    seen.len()
                )
            } else {
                format!(
                    "{terms} terms with a leader, from the controllers' logs and {} status samples",
                    seen.len() - leaderships.len()
                )
            },
        ),
        Err(split) => InvariantResult::new(
            invariant::ONE_LEADER_PER_TERM,
            Verdict::Violated,
            split.to_string(),
        ),
    });

    let mut faults = std::mem::take(&mut *records.lock().unwrap_or_else(|p| p.into_inner()));
    faults.sort_by_key(|f| f.at_ms);
    let leaders = env
        .leaders
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let node_health = env
        .node_health
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    measure(&mut faults, &leaders, &node_health, &history);
    if scenario.workload.kv.is_some() {
        invariants.push(recovery_verdict(&faults, scenario, !history.is_empty()));
    }
    if let Some(mix) = &object_mix {
        invariants.push(objects_verdict(mix, &object_ops).await);
        invariants.extend(rf_verdict(&faults, scenario));
    }
    invariants.extend(disk_full_verdict(&faults, scenario));
    if let Some(w) = &scenario.workload.jobs {
        // The tasks' own records, read while everything still runs.
        let mut runs: Vec<placement::TaskRun> = tokio::task::block_in_place(|| {
            env.nodes
                .agents()
                .into_iter()
                .flat_map(|i| env.nodes.task_runs(i))
                .collect()
        });
        // On the run's clock, as the faults are.
        for r in &mut runs {
            r.started_ms = r.started_ms.saturating_sub(env.wall_epoch_ms);
            r.stopped_ms = r.stopped_ms.map(|s| s.saturating_sub(env.wall_epoch_ms));
        }
        invariants.push(single_run_verdict(&runs, scenario));
        invariants.push(reschedule_verdict(&mut faults, &runs, w.runtime, scenario));
        invariants.extend(gpu_verdict(&faults, scenario));
        // Last: it stops the controllers to read their logs.
        invariants.push(overcommit_verdict(env).await);
    }
    let not_applied: Vec<String> = faults
        .iter()
        .filter_map(|f| {
            f.error
                .as_ref()
                .map(|e| format!("{} at {} ms: {e}", f.action, f.at_ms))
        })
        .collect();
    invariants.push(if not_applied.is_empty() {
        InvariantResult::new(
            invariant::FAULTS_APPLIED,
            Verdict::Held,
            format!("{} faults applied and undone", faults.len()),
        )
    } else {
        // A fault that was not injected proves nothing: the run does not pass.
        InvariantResult::new(
            invariant::FAULTS_APPLIED,
            Verdict::Violated,
            not_applied.join("\n"),
        )
    });

    Ok(Report {
        scenario: scenario.name.clone(),
        seed: options.seed,
        bug: options.bug,
        ran_ms,
        faults,
        operations,
        invariants,
        undo_failures: Vec::new(),
    })
}

/// Fills each fault's time to detect (another leader or a higher term reported) and to
/// recover (the first write invoked after its end, answered).
fn measure(
    faults: &mut [FaultRecord],
    leaders: &[(Nanos, u64, u64)],
    node_health: &[(Nanos, String, String)],
    history: &[Op],
) {
    // Bit-rot and GPU faults measure their own (found and repaired; failed and moved).
    for f in faults.iter_mut().filter(|f| {
        f.action != Action::BitRot.name()
            && f.action != Action::DiskFull.name()
            && !f.action.starts_with("gpu-")
    }) {
        let at = f.at_ms * 1_000_000;
        if !f.agent_nodes.is_empty() {
            // An agent fault is detected when the cluster stops calling the agent ready.
            f.detect_ms = node_health
                .iter()
                .find(|(t, node, health)| {
                    *t >= at && f.agent_nodes.contains(node) && health != "ready"
                })
                .map(|(t, _, _)| (t - at) / 1_000_000);
        } else if f.action == Action::Membership.name() {
            // A removal is not a loss to detect: the group shrinks on purpose.
            f.detect_ms = None;
        } else if let Some((before_id, before_term)) = f.leader_before {
            f.detect_ms = leaders
                .iter()
                .find(|(t, id, term)| *t >= at && (*id != before_id || *term > before_term))
                .map(|(t, _, _)| (t - at) / 1_000_000);
        }
        let end = f.until_ms.unwrap_or(f.at_ms) * 1_000_000;
        f.recover_ms = history
            .iter()
            .filter(|o| {
                o.client != FINAL_READER && o.invoked >= end && !matches!(o.call, KvCall::Read)
            })
            .filter(|o| matches!(o.outcome, Outcome::Written | Outcome::CasFailed))
            .filter_map(|o| o.completed)
            .min()
            .map(|done| (done - end) / 1_000_000);
    }
}

fn recovery_verdict(
    faults: &[FaultRecord],
    scenario: &Scenario,
    had_workload: bool,
) -> InvariantResult {
    if !had_workload {
        return InvariantResult::new(
            invariant::RECOVERY,
            Verdict::Inconclusive,
            "no workload ran to measure recovery",
        );
    }
    let bound = scenario.pass.recover_within.as_millis() as u64;
    let late: Vec<String> = faults
        .iter()
        .filter(|f| f.error.is_none())
        .filter(|f| f.recover_ms.is_none_or(|r| r > bound))
        .map(|f| match f.recover_ms {
            Some(r) => format!(
                "{} at {} ms: writes served again {r} ms after its end",
                f.action, f.at_ms
            ),
            None => format!(
                "{} at {} ms: no write was served after its end",
                f.action, f.at_ms
            ),
        })
        .collect();
    if late.is_empty() {
        InvariantResult::new(
            invariant::RECOVERY,
            Verdict::Held,
            format!("writes served within {bound} ms of every fault's end"),
        )
    } else {
        InvariantResult::new(
            invariant::RECOVERY,
            Verdict::Violated,
            format!("bound {bound} ms:\n{}", late.join("\n")),
        )
    }
}

/// Reads every acknowledged version back (four at a time), then checks the objects'
/// history: no wrong byte served, no acknowledged version lost.
async fn objects_verdict(mix: &ObjectMix, ops: &[object_workload::ObjOp]) -> InvariantResult {
    use futures::StreamExt;
    let acknowledged: Vec<(String, u64)> = ops
        .iter()
        .filter_map(|o| match (&o.call, &o.outcome) {
            (ObjCall::Put { .. }, ObjOutcome::Stored { version }) => {
                Some((o.name.clone(), *version))
            }
            _ => None,
        })
        .collect();
    let dir = mix.scratch.join("final");
    let _ = std::fs::create_dir_all(&dir);
    let finals: Vec<object_workload::ObjOp> =
        futures::stream::iter(acknowledged.into_iter().enumerate())
            .map(|(n, (name, version))| {
                let (mix, path) = (mix.clone(), dir.join(format!("final-{n}")));
                async move {
                    // A transient failure (a leader change, say) is not a lost version: up to
                    // three tries, a second apart.
                    let mut op =
                        object_workload::get(&mix, u32::MAX, &name, Some(version), &path).await;
                    for _ in 1..FINAL_OBJECT_READ_TRIES {
                        if !matches!(op.outcome, ObjOutcome::Failed(_)) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        op =
                            object_workload::get(&mix, u32::MAX, &name, Some(version), &path).await;
                    }
                    op
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
    match crate::check::objects::check(ops, &finals) {
        Ok(c) if c.reads == 0 => InvariantResult::new(
            invariant::OBJECTS,
            Verdict::Inconclusive,
            "no object was read: nothing to check",
        ),
        Ok(c) => InvariantResult::new(
            invariant::OBJECTS,
            Verdict::Held,
            format!(
                "{} reads (the workload's and the final read-back) returned bytes a put wrote; {} acknowledged versions read back bit-exact",
                c.reads, c.acknowledged
            ),
        ),
        Err(v) => InvariantResult::new(invariant::OBJECTS, Verdict::Violated, v.to_string()),
    }
}

/// Each bit-rot fault was found by the scrubber and every chunk was back at its
/// replication factor (fsck settled) within the scenario's bound.
fn rf_verdict(faults: &[FaultRecord], scenario: &Scenario) -> Option<InvariantResult> {
    let bound = scenario.pass.rf_restored_within.as_millis() as u64;
    let rots: Vec<&FaultRecord> = faults
        .iter()
        .filter(|f| f.action == Action::BitRot.name() && f.error.is_none())
        .collect();
    if rots.is_empty() {
        return None;
    }
    let late: Vec<String> = rots
        .iter()
        .filter(|f| f.recover_ms.is_none_or(|r| r > bound))
        .map(|f| match (f.detect_ms, f.recover_ms) {
            (None, _) => format!(
                "bit-rot at {} ms on {}: the scrubber did not find it all",
                f.at_ms,
                f.targets.join(", ")
            ),
            (Some(d), None) => format!(
                "bit-rot at {} ms on {}: found after {d} ms, not repaired",
                f.at_ms,
                f.targets.join(", ")
            ),
            (Some(d), Some(r)) => format!(
                "bit-rot at {} ms: found after {d} ms, repaired after {r} ms",
                f.at_ms
            ),
        })
        .collect();
    Some(if late.is_empty() {
        InvariantResult::new(
            invariant::RF_RESTORED,
            Verdict::Held,
            format!(
                "{} bit-rot faults found and repaired within {bound} ms",
                rots.len()
            ),
        )
    } else {
        InvariantResult::new(invariant::RF_RESTORED, Verdict::Violated, late.join("\n"))
    })
}

/// After bit-rot on `nodes`: starts a scrub pass on each, then returns when (run ms) the
/// damage was found — `count` chunks quarantined or found corrupt (by the scrub or by a
/// read meanwhile), or every started pass ended — and when fsck then saw every chunk back
/// at its replication factor; each `None` if not within `within`.
async fn follow_bit_rot(
    env: &Env,
    nodes: &[String],
    count: u64,
    within: Duration,
) -> (Option<u64>, Option<u64>) {
    if nodes.is_empty() {
        return (None, None);
    }
    let deadline = Instant::now() + within;
    let addrs = env.controllers_arg();
    let call = PROBE_TIMEOUT * 10;
    // (passes, quarantined) per node before the scrub starts.
    let mut before = Vec::new();
    for node in nodes {
        let v =
            object_workload::steward_json(&env.admin, &addrs, &["node", "show", node], call).await;
        let store = v.as_ref().map(|v| &v["chunk_store"]);
        before.push((
            store
                .and_then(|s| s["scrub"]["passes"].as_u64())
                .unwrap_or(0),
            store.and_then(|s| s["quarantined"].as_u64()).unwrap_or(0),
        ));
        if object_workload::steward_json(&env.admin, &addrs, &["node", "scrub", node], call)
            .await
            .is_none()
        {
            env.say(&format!(
                "starting a scrub on {node} failed; waiting for one"
            ));
        }
    }
    let mut found = None;
    while Instant::now() < deadline {
        if found.is_none() {
            let (mut corrupt, mut quarantined, mut passes_ended) = (0, 0, true);
            for (node, (passes0, quarantined0)) in nodes.iter().zip(&before) {
                let Some(v) = object_workload::steward_json(
                    &env.admin,
                    &addrs,
                    &["node", "show", node],
                    call,
                )
                .await
                else {
                    passes_ended = false;
                    continue;
                };
                let store = &v["chunk_store"];
                corrupt += store["scrub"]["corrupt_found"].as_u64().unwrap_or(0);
                quarantined += store["quarantined"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(*quarantined0);
                let ended = store["scrub"]["passes"].as_u64().unwrap_or(0) > *passes0
                    && store["scrub"]["running"] != true;
                passes_ended &= ended;
            }
            if corrupt.max(quarantined) >= count || passes_ended {
                found = Some(env.now() / 1_000_000);
            }
        }
        if found.is_some() {
            if let Some(f) =
                object_workload::steward_json(&env.admin, &addrs, &["fsck"], call).await
            {
                let settled = f["complete"] == true
                    && f["under_replicated"] == 0
                    && f["misplaced"] == 0
                    && f["repairs_in_flight"] == 0;
                if settled {
                    return (found, Some(env.now() / 1_000_000));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    (found, None)
}

/// No task ran on two nodes at once, by the tasks' own records.
fn single_run_verdict(runs: &[placement::TaskRun], scenario: &Scenario) -> InvariantResult {
    let slack = scenario.pass.clock_slack.as_millis() as u64;
    if runs.is_empty() {
        return InvariantResult::new(
            invariant::SINGLE_RUN,
            Verdict::Inconclusive,
            "no task started: nothing to check",
        );
    }
    match placement::check_single_runs(runs, slack) {
        Ok(_) => {
            let tasks = runs
                .iter()
                .map(|r| r.task.as_str())
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            let nodes: std::collections::BTreeSet<&str> =
                runs.iter().map(|r| r.node.as_str()).collect();
            InvariantResult::new(
                invariant::SINGLE_RUN,
                Verdict::Held,
                format!(
                    "{} runs of {tasks} tasks on {} nodes, none overlapping another node's by more than {slack} ms",
                    runs.len(),
                    nodes.len()
                ),
            )
        }
        Err(double) => {
            InvariantResult::new(invariant::SINGLE_RUN, Verdict::Violated, double.to_string())
        }
    }
}

/// After each agent fault that takes work away (kill, pause, partition), every task that
/// ran on the agent then runs again elsewhere within the scenario's bound, unless it
/// finished its runtime first.
/// Also records, as each agent fault's time to recover, when the last of its tasks ran
/// again elsewhere.
fn reschedule_verdict(
    faults: &mut [FaultRecord],
    runs: &[placement::TaskRun],
    runtime: Duration,
    scenario: &Scenario,
) -> InvariantResult {
    let bound = scenario.pass.jobs_rescheduled_within.as_millis() as u64;
    let runtime_ms = runtime.as_millis() as u64;
    let mut late = Vec::new();
    let mut moved = 0usize;
    let mut worst = 0u64;
    for f in faults
        .iter_mut()
        .filter(|f| f.error.is_none() && !f.agent_nodes.is_empty())
    {
        let mut fault_worst = None;
        if !matches!(
            f.action.as_str(),
            "kill" | "pause" | "partition" | "partition-one-way"
        ) {
            continue;
        }
        let at = f.at_ms;
        let hit = runs.iter().filter(|r| {
            f.agent_nodes.contains(&r.node)
                && r.started_ms <= at
                && r.stopped_ms.is_none_or(|s| s > at)
        });
        for r in hit {
            let again = runs
                .iter()
                .filter(|o| o.task == r.task && o.node != r.node && o.started_ms >= at)
                .map(|o| o.started_ms)
                .min();
            match again {
                Some(t) => {
                    moved += 1;
                    worst = worst.max(t - at);
                    fault_worst = Some(fault_worst.unwrap_or(0).max(t - at));
                    if t - at > bound {
                        late.push(format!(
                            "task {} ran again {} ms after {} at {} ms",
                            r.task,
                            t - at,
                            f.action,
                            f.at_ms
                        ));
                    }
                }
                // Finished its runtime where it was: nothing to move.
                None if r
                    .stopped_ms
                    .is_some_and(|s| s + 500 >= r.started_ms + runtime_ms) => {}
                None => late.push(format!(
                    "task {} (on {}) never ran again after {} at {} ms",
                    r.task, r.node, f.action, f.at_ms
                )),
            }
        }
        if fault_worst.is_some() {
            f.recover_ms = fault_worst;
        }
    }
    if late.is_empty() {
        InvariantResult::new(
            invariant::RESCHEDULED,
            Verdict::Held,
            format!("{moved} tasks ran again elsewhere, the slowest {worst} ms after its fault (bound {bound} ms)"),
        )
    } else {
        InvariantResult::new(invariant::RESCHEDULED, Verdict::Violated, late.join("\n"))
    }
}

/// Waits until every controller reports the same applied index and state digest.
async fn converge(env: &Env) -> Result<(u64, String), String> {
    let deadline = Instant::now() + CONVERGE_WAIT;
    let mut last;
    loop {
        let ids: Vec<u64> = env.api.keys().copied().collect();
        let replies = futures::future::join_all(ids.iter().map(|id| env.status(*id))).await;
        last = ids
            .iter()
            .zip(&replies)
            .map(|(id, r)| {
                (
                    *id,
                    r.as_ref()
                        .map(|s| (s.applied_index, s.state_digest.clone())),
                )
            })
            .collect::<Vec<_>>();
        if let Some(Some(first)) = last.first().map(|(_, r)| r.clone()) {
            if first.0 > 0 && last.iter().all(|(_, r)| r.as_ref() == Some(&first)) {
                return Ok(first);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(MONITOR_EVERY).await;
    }
    let seen: Vec<String> = last
        .iter()
        .map(|(id, r)| match r {
            Some((index, digest)) => format!(
                "controller {id}: applied {index}, digest {}",
                &digest[..16.min(digest.len())]
            ),
            None => format!("controller {id}: no answer"),
        })
        .collect();
    Err(format!(
        "not converged within {CONVERGE_WAIT:?} of the faults' end: {}",
        seen.join("; ")
    ))
}

/// One linearizable read of `key`, retried through every controller for up to 20 s.
async fn final_read(env: &Env, key: &str) -> Op {
    let invoked = env.now();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addrs: Vec<String> = env.api.values().cloned().collect();
    let mut i = 0;
    while Instant::now() < deadline {
        let addr = addrs[i % addrs.len()].clone();
        i += 1;
        let Some(ch) = (env.connect)(addr).await else {
            // Refused at once while a controller restarts: pause as after a failed call.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut req = tonic::Request::new(KvGetRequest {
            key: key.to_string(),
            consistency: ReadConsistency::Linearizable as i32,
        });
        req.set_timeout(Duration::from_secs(3));
        if let Ok(r) = AdminClient::new(ch).kv_get(req).await {
            let value = r
                .into_inner()
                .entry
                .map(|e| String::from_utf8_lossy(&e.value).into_owned());
            return Op {
                client: FINAL_READER,
                key: key.to_string(),
                call: KvCall::Read,
                invoked,
                completed: Some(env.now()),
                outcome: Outcome::Read(value),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Op {
        client: FINAL_READER,
        key: key.to_string(),
        call: KvCall::Read,
        invoked,
        completed: None,
        outcome: Outcome::Unknown,
    }
}

/// Channels to controllers as the harness's admin (mutual TLS unless the harness runs in
/// plaintext).
pub fn admin_connector() -> kv::Connect {
    Arc::new(|addr: String| {
        Box::pin(async move {
            if crate::harness::pki::insecure() {
                let options =
                    steward_runtime::transport::ClientOptions::new(Duration::from_millis(500))
                        .call_timeout(Duration::from_secs(5));
                return steward_runtime::transport::connect(&addr, &options)
                    .await
                    .ok();
            }
            crate::harness::cluster::channel(
                &addr,
                steward_runtime::tls::ServerKind::Controller,
                Duration::from_secs(5),
            )
            .await
            .ok()
        })
    })
}

/// The report as text: the faults, the operations, each invariant's verdict.
pub fn render_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scenario {}  seed {}{}",
        r.scenario,
        r.seed,
        r.bug
            .map_or(String::new(), |b| format!("  bug {}", b.name()))
    );
    let _ = writeln!(out, "ran {:.1} s", r.ran_ms as f64 / 1000.0);
    let _ = writeln!(out, "\nfaults ({}):", r.faults.len());
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    for f in &r.faults {
        let _ = writeln!(
            out,
            "  {:>7} ms  {:<18} {}  until {}  detect {}  recover {}{}",
            f.at_ms,
            f.action,
            f.targets.join(", "),
            f.until_ms.map_or("-".to_string(), |u| format!("{u} ms")),
            ms(f.detect_ms),
            ms(f.recover_ms),
            f.error
                .as_ref()
                .map_or(String::new(), |e| format!("  ERROR {e}"))
        );
    }
    let o = &r.operations;
    let _ = writeln!(
        out,
        "\noperations: {} ok, {} failed, {} indeterminate",
        o.ok, o.failed, o.indeterminate
    );
    let _ = writeln!(out, "\ninvariants:");
    for i in &r.invariants {
        let verdict = match i.verdict {
            Verdict::Held => "held",
            Verdict::Violated => "VIOLATED",
            Verdict::Inconclusive => "inconclusive",
        };
        let _ = writeln!(out, "  {:<24} {verdict}", i.name);
        for line in i.detail.lines() {
            let _ = writeln!(out, "      {line}");
        }
    }
    for u in &r.undo_failures {
        let _ = writeln!(out, "could not undo {u}");
    }
    let _ = writeln!(
        out,
        "\n{} (seed {})",
        if r.passed() { "PASSED" } else { "FAILED" },
        r.seed
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_offsets_become_signed_seconds_and_nonsense_is_refused() {
        assert_eq!(faketime_offset("+30s").unwrap(), "+30");
        assert_eq!(faketime_offset("-5m").unwrap(), "-300");
        assert_eq!(faketime_offset("90s").unwrap(), "+90");
        assert!(faketime_offset("+soon").unwrap_err().contains("+soon"));
    }
}
