//! Running the allocations the controllers place on this node.
//!
//! ```text
//!  leader ──WatchAllocations (full lists)──► watch task ──reconcile──► one supervisor per
//!                                                                      allocation
//!  supervisor: alloc dir, cgroup, `steward agent-shim` (starts the task, rotates its logs,
//!              records its exit status), restarts in place with back-off, stops on order
//!  supervisor ──AllocReport──► reporter task ──ReportAllocations (batched)──► leader
//!  heartbeat acks ──► fence task: no ack for `fence_after` ⇒ stop on_disconnect=stop work
//! ```
//!
//! Invariants:
//! - An allocation is started at most once per generation on this node: its directory
//!   (`DATA_DIR/allocs/ID`) records the generation, the shim's pid and start time, and a
//!   final record once it ended; a final record means never start it again (a returning
//!   agent never restarts work that moved, and work it fenced stays stopped).
//! - Anything this agent runs that is not in the leader's latest list has ended or moved:
//!   it is stopped. The list is level-triggered, so a lost update changes nothing.
//! - A restarted agent re-adopts running shims by pid and start time (`/proc`), so an agent
//!   restart neither kills nor restarts the work.

pub mod inputs;
pub mod isolation;
pub mod shim;
mod supervisor;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use steward_core::job::{JobSpec, OnDisconnect};
use steward_proto::v1::agent_control_client::AgentControlClient;
use steward_proto::v1::{
    AllocReportPb, AllocationPb, ReportAllocationsRequest, WatchAllocationsRequest,
};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

pub use isolation::{Isolation, IsolationMode};

/// Grace between SIGTERM and SIGKILL when an allocation is fenced (its own `kill_timeout`
/// when shorter): fencing must finish before the controller declares the node down.
pub const FENCE_KILL_GRACE: Duration = Duration::from_secs(1);
/// How often the fence is checked (by the agent, and by each shim).
pub const FENCE_CHECK: Duration = Duration::from_millis(100);
/// The fence lease file in the data dir: the CLOCK_MONOTONIC time (ns) after which work
/// that must not run disconnected stops. The agent moves it forward on every acknowledged
/// heartbeat; every shim reads it, so the work stops even when the agent itself is paused,
/// crashed or being upgraded.
pub const FENCE_LEASE_FILE: &str = "fence-lease";
/// How long an ended allocation's directory (logs, exit status) is kept once the leader no
/// longer lists it.
pub const ALLOC_DIR_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How often ended allocations' directories are considered for removal.
const ALLOC_DIR_GC_EVERY: Duration = Duration::from_secs(60);

/// CLOCK_MONOTONIC now, in nanoseconds: comparable between the agent and its shims (one
/// clock for the whole machine, running while a process is stopped).
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

/// This boot's id: CLOCK_MONOTONIC restarts from 0 at boot, so a lease names its boot.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The fence lease's deadline, when the file holds one written in this boot, clamped to
/// at most `now + fence_after` (a lease never extends the fence beyond one renewal).
pub fn read_fence_lease(path: &Path, fence_after: Duration) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let (boot, deadline) = text.trim().split_once(' ')?;
    if boot != boot_id() {
        return None;
    }
    let deadline: u64 = deadline.parse().ok()?;
    Some(deadline.min(monotonic_ns() + fence_after.as_nanos() as u64))
}

/// The lease file's contents for `deadline` (CLOCK_MONOTONIC ns) in this boot.
fn fence_lease_text(deadline: u64) -> String {
    format!("{} {deadline}", boot_id())
}
/// Most reports sent in one call.
pub const MAX_REPORTS_PER_CALL: usize = 1024;
/// Pause before watching again after the stream broke.
const REWATCH_PAUSE: Duration = Duration::from_millis(200);

/// What the agent keeps about one allocation in its directory (`alloc.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocRecord {
    pub id: String,
    pub job: String,
    pub task: u32,
    pub generation: u64,
    pub gpus: Vec<String>,
    pub gpu_milli: u32,
    pub cpu_millicores: u64,
    pub memory_mib: u64,
    pub spec: JobSpec,
    pub rendezvous: Option<(String, u32, u32, u32, u32)>,
}

/// How an allocation ended on this node (`final.json`): it is never started again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalRecord {
    pub state: String,
    pub exit_code: Option<i32>,
    pub restarts: u32,
    pub reason: String,
}

/// The shim of a running allocation (`pid.json`), to re-adopt it after an agent restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PidRecord {
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22): a reused pid has
    /// another.
    pub start_ticks: u64,
    pub restarts: u32,
}

/// Why a supervisor must stop its task.
#[derive(Debug, Clone, PartialEq)]
pub struct StopOrder {
    pub grace: Duration,
    /// The state to report once stopped ("stopped", or "lost" for fencing).
    pub report_as: &'static str,
    pub reason: String,
}

struct Running {
    generation: u64,
    on_disconnect: OnDisconnect,
    stop: watch::Sender<Option<StopOrder>>,
}

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub node_id: String,
    pub data_dir: PathBuf,
    /// The `steward` binary, which runs the shim (`steward agent-shim`).
    pub shim_exe: PathBuf,
    pub fence_after: Duration,
    /// Where connections to the controllers come from.
    pub source_ip: Option<std::net::IpAddr>,
    /// Mutual TLS to the controllers (`None`: plaintext).
    pub tls: Option<steward_runtime::tls::Tls>,
    pub isolation: Isolation,
}

/// The agent's allocation runner (shared by its tasks and the agent API).
pub struct Runner {
    config: RunnerConfig,
    running: Mutex<HashMap<String, Running>>,
    reports: mpsc::UnboundedSender<AllocReportPb>,
    /// CLOCK_MONOTONIC (ns) when the last acknowledged heartbeat was sent.
    last_ack: Mutex<u64>,
    /// The fence in effect (ms): the configured one, shortened if the leader's down_after
    /// needs it.
    fence_after_ms: std::sync::atomic::AtomicU64,
    /// Allocations (and generations) that ended here in this process: never started again,
    /// even if their `final.json` could not be written.
    ended: Mutex<std::collections::HashSet<(String, u64)>>,
    /// The leader's latest list, locked while it is reconciled (one reconcile at a time);
    /// reconciled again when an allocation whose id the list gives another generation (an
    /// id reused after a restore) has finished stopping.
    latest: Mutex<Vec<AllocationPb>>,
    last_dir_gc: Mutex<Option<Instant>>,
    /// The current leader's API address and client, set by the heartbeat loop.
    leader: watch::Sender<Option<(String, AgentControlClient<Channel>)>>,
    /// Stages jobs' inputs from the chunk store and peers (None: an agent without a chunk
    /// store, which refuses jobs with inputs).
    stager: Option<Arc<inputs::Stager>>,
}

impl Runner {
    pub fn allocs_dir(&self) -> PathBuf {
        self.config.data_dir.join("allocs")
    }

    pub fn alloc_dir(&self, id: &str) -> PathBuf {
        self.allocs_dir().join(id)
    }

    pub fn isolation(&self) -> &Isolation {
        &self.config.isolation
    }

    /// A heartbeat sent at `sent_mono_ns` (CLOCK_MONOTONIC) was acknowledged by a leader:
    /// the fence clock starts again from when it was sent (before the leader heard it: the
    /// conservative end), and the lease file the shims read moves forward.
    pub fn heartbeat_acknowledged(&self, sent_mono_ns: u64) {
        let mut last = self.last_ack.lock().unwrap_or_else(|p| p.into_inner());
        *last = (*last).max(sent_mono_ns);
        let deadline = *last + self.fence_after().as_nanos() as u64;
        drop(last);
        let dir = &self.config.data_dir;
        let tmp = dir.join(format!("{FENCE_LEASE_FILE}.tmp"));
        let written = std::fs::write(&tmp, fence_lease_text(deadline))
            .and_then(|_| std::fs::rename(&tmp, dir.join(FENCE_LEASE_FILE)));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot renew the fence lease; the shims will fence their work");
        }
    }

    /// The fence in effect.
    pub fn fence_after(&self) -> Duration {
        Duration::from_millis(
            self.fence_after_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The fence lease file the shims read.
    pub fn fence_lease_path(&self) -> PathBuf {
        self.config.data_dir.join(FENCE_LEASE_FILE)
    }

    /// The leader's `down_after`: if the fence could end after it, shorten the fence (and
    /// say so loudly) rather than let a cut-off node's work overlap its replacement.
    pub fn leader_down_after(&self, down_after: Duration) {
        if down_after.is_zero() {
            return;
        }
        let budget = down_after
            .mul_f64(0.9)
            .saturating_sub(FENCE_KILL_GRACE + FENCE_CHECK);
        let current = self.fence_after();
        if current > budget {
            let fence = budget.max(FENCE_CHECK);
            self.fence_after_ms.store(
                fence.as_millis() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            tracing::error!(
                configured_ms = current.as_millis() as u64,
                now_ms = fence.as_millis() as u64,
                leader_down_after_ms = down_after.as_millis() as u64,
                "fence_after is too long for the leader's down_after; shortened (set --controller-down-after to match the controllers)"
            );
        }
    }

    /// The leader to watch and report to changed (`None`: none known).
    /// The leader's API address, once one is known.
    pub async fn leader_addr(&self) -> String {
        let mut rx = self.leader.subscribe();
        loop {
            if let Some((addr, _)) = rx.borrow_and_update().as_ref() {
                return addr.clone();
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn stager(&self) -> Option<&Arc<inputs::Stager>> {
        self.stager.as_ref()
    }

    pub fn set_leader(&self, leader: Option<(String, AgentControlClient<Channel>)>) {
        self.leader.send_replace(leader);
    }

    fn report(&self, r: AllocReportPb) {
        let _ = self.reports.send(r);
    }

    /// Starts the runner: re-adopts what runs, then watches, reports and fences until
    /// `stop` is cancelled (the agent stops; the tasks keep running, and the next agent
    /// re-adopts them).
    pub fn start(
        config: RunnerConfig,
        stager: Option<Arc<inputs::Stager>>,
        stop: tokio_util::sync::CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(config.data_dir.join("allocs"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        // The fence clock continues from the lease the previous agent left (an agent that
        // was away for long finds its work fenced already), or starts now.
        let fence_ns = config.fence_after.as_nanos() as u64;
        let last_ack =
            read_fence_lease(&config.data_dir.join(FENCE_LEASE_FILE), config.fence_after)
                .map_or_else(monotonic_ns, |deadline| deadline.saturating_sub(fence_ns));
        let runner = Arc::new(Runner {
            fence_after_ms: std::sync::atomic::AtomicU64::new(config.fence_after.as_millis() as u64),
            config,
            running: Mutex::new(HashMap::new()),
            reports: tx,
            last_ack: Mutex::new(last_ack),
            ended: Mutex::new(Default::default()),
            latest: Mutex::new(Vec::new()),
            last_dir_gc: Mutex::new(None),
            leader: watch::channel(None).0,
            stager,
        });
        tracing::info!(
            isolation = runner.isolation().name(),
            "allocation runner started"
        );
        runner.readopt();
        for task in [
            Box::pin(report_loop(runner.clone(), rx))
                as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
            Box::pin(watch_loop(runner.clone())),
            Box::pin(fence_loop(runner.clone())),
        ] {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = task => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
        Ok(runner)
    }

    /// Re-adopts the shims still running from before this agent started; reports the
    /// allocations that ended meanwhile.
    fn readopt(self: &Arc<Self>) {
        let Ok(entries) = std::fs::read_dir(self.allocs_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let dir = e.path();
            let Some(record) = read_json::<AllocRecord>(&dir.join("alloc.json")) else {
                continue;
            };
            if dir.join("final.json").exists() {
                continue;
            }
            let pid = read_json::<PidRecord>(&dir.join("pid.json"));
            match pid
                .clone()
                .filter(|p| supervisor::alive(p.pid, p.start_ticks))
            {
                Some(p) => {
                    tracing::info!(alloc = %record.id, pid = p.pid, "re-adopting a running allocation");
                    self.supervise(record, Some(p));
                }
                None => {
                    // Ended while the agent was away: report how, never restart it here.
                    self.ended
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert((record.id.clone(), record.generation));
                    let fin = supervisor::conclude_away(
                        &self.config.isolation,
                        &dir,
                        &record,
                        pid.as_ref(),
                    );
                    self.report(report_of(&record, &fin));
                }
            }
        }
    }

    /// Starts a supervisor for `record` (with `adopt`, for a shim already running).
    fn supervise(self: &Arc<Self>, record: AllocRecord, adopt: Option<PidRecord>) {
        let (stop_tx, stop_rx) = watch::channel(None);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                record.id.clone(),
                Running {
                    generation: record.generation,
                    on_disconnect: record.spec.on_disconnect,
                    stop: stop_tx,
                },
            );
        let runner = self.clone();
        tokio::spawn(async move {
            let key = (record.id.clone(), record.generation);
            supervisor::run(runner.clone(), record, adopt, stop_rx).await;
            let (id, generation) = key.clone();
            runner
                .ended
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key);
            runner
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            // The list may give this id a new generation that waited for this one to stop.
            let latest = runner.latest.lock().unwrap_or_else(|p| p.into_inner());
            if latest
                .iter()
                .any(|a| a.id == id && a.generation != generation && a.desired != "stop")
            {
                runner.apply_list(&latest);
            }
        });
    }

    /// Removes the directories of allocations that ended here more than
    /// [`ALLOC_DIR_RETENTION`] ago and that the leader no longer lists.
    fn collect_dirs(&self, listed: &BTreeMap<String, AllocationPb>) {
        {
            let mut last = self.last_dir_gc.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < ALLOC_DIR_GC_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let Ok(entries) = std::fs::read_dir(self.allocs_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let old = std::fs::metadata(e.path().join("final.json"))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > ALLOC_DIR_RETENTION));
            if old && !listed.contains_key(&id) {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!(alloc = %id, error = %err, "cannot remove an ended allocation's directory");
                }
            }
        }
    }

    /// Brings what runs here in line with the leader's list.
    fn reconcile(self: &Arc<Self>, list: Vec<AllocationPb>) {
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        *latest = list;
        self.apply_list(&latest);
    }

    /// [`Runner::reconcile`]'s work; the caller holds `latest`.
    fn apply_list(self: &Arc<Self>, list: &[AllocationPb]) {
        let listed: BTreeMap<String, AllocationPb> =
            list.iter().map(|a| (a.id.clone(), a.clone())).collect();
        self.collect_dirs(&listed);
        // Running here but not listed (ended or moved), or asked to stop, or another
        // generation: stop.
        let stops: Vec<(watch::Sender<Option<StopOrder>>, StopOrder)> = {
            let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running
                .iter()
                .filter_map(|(id, r)| {
                    let why = match listed.get(id) {
                        None => {
                            Some("no longer assigned to this node (it ended or moved)".to_string())
                        }
                        Some(a) if a.generation != r.generation => {
                            Some("moved (new generation)".into())
                        }
                        Some(a) if a.desired == "stop" => Some(if a.stop_reason.is_empty() {
                            "asked to stop".into()
                        } else {
                            a.stop_reason.clone()
                        }),
                        _ => None,
                    }?;
                    let grace = listed
                        .get(id)
                        .and_then(|a| JobSpec::from_json(&a.spec_json).ok())
                        .map_or(Duration::from_secs(30), |s| s.kill_timeout);
                    Some((
                        r.stop.clone(),
                        StopOrder {
                            grace,
                            report_as: "stopped",
                            reason: why,
                        },
                    ))
                })
                .collect()
        };
        for (tx, order) in stops {
            tx.send_if_modified(|o| {
                let new = o.is_none();
                if new {
                    *o = Some(order.clone());
                }
                new
            });
        }
        for (id, a) in listed {
            let known = self
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&id);
            if known {
                continue;
            }
            let dir = self.alloc_dir(&id);
            let ended_here = self
                .ended
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&(id.clone(), a.generation));
            let recorded = read_json::<AllocRecord>(&dir.join("alloc.json"));
            match (read_json::<FinalRecord>(&dir.join("final.json")), recorded) {
                // Ended here before: say so again (the first report may have been lost),
                // never start it again.
                (Some(fin), Some(rec)) if rec.generation == a.generation => {
                    self.report(report_of(&rec, &fin));
                    continue;
                }
                _ if ended_here => continue,
                // An older generation's directory under a reused id (after a restore of an
                // older state): stale.
                (Some(_), Some(_)) => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                _ => {}
            }
            if a.desired == "stop" {
                // Never started here: nothing to stop.
                self.report(AllocReportPb {
                    alloc_id: a.id.clone(),
                    generation: a.generation,
                    state: "stopped".into(),
                    exit_code: None,
                    restarts: 0,
                    reason: "stopped before it started".into(),
                });
                continue;
            }
            match record_of(&a) {
                Ok(record) => self.supervise(record, None),
                Err(e) => self.report(AllocReportPb {
                    alloc_id: a.id.clone(),
                    generation: a.generation,
                    state: "failed".into(),
                    exit_code: None,
                    restarts: 0,
                    reason: format!("the agent cannot read the job spec: {e}"),
                }),
            }
        }
    }

    /// Fences: no heartbeat acknowledged for `fence_after`, so stop the work that must not
    /// run while this node is cut off (it will be placed elsewhere once the node is down).
    fn fence_if_cut_off(&self) {
        // Test builds: the split-brain bug of a node that keeps its work while cut off,
        // reintroduced on purpose (with the shim's). The chaos harness must catch it
        // (`steward-chaos run --bug agent-skip-fence`).
        fail::fail_point!("agent-skip-fence", |_| ());
        let last = *self.last_ack.lock().unwrap_or_else(|p| p.into_inner());
        let silent = Duration::from_nanos(monotonic_ns().saturating_sub(last));
        if silent < self.fence_after() {
            return;
        }
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for (id, r) in running.iter() {
            if r.on_disconnect != OnDisconnect::Stop {
                continue;
            }
            // A stop already under way with a longer grace (a cancel's kill_timeout) is cut
            // short too: the fence must end before the node is declared down.
            let fenced = r.stop.send_if_modified(|o| {
                let new = o.as_ref().is_none_or(|o| o.grace > FENCE_KILL_GRACE);
                if new {
                    *o = Some(StopOrder {
                        grace: FENCE_KILL_GRACE,
                        report_as: "lost",
                        reason: format!(
                            "fenced: no heartbeat acknowledged by a leader for {} ms",
                            silent.as_millis()
                        ),
                    });
                }
                new
            });
            if fenced {
                tracing::warn!(alloc = %id, silent_ms = silent.as_millis() as u64, "fencing: stopping an allocation while cut off from the controllers");
            }
        }
    }

    /// Ids of the allocations with a supervisor here.
    pub fn running_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }
}

fn record_of(a: &AllocationPb) -> Result<AllocRecord, String> {
    let spec = JobSpec::from_json(&a.spec_json).map_err(|e| e.to_string())?;
    Ok(AllocRecord {
        id: a.id.clone(),
        job: a.job_id.clone(),
        task: a.task,
        generation: a.generation,
        gpus: a.gpus.clone(),
        gpu_milli: a.gpu_milli,
        cpu_millicores: a.cpu_millicores,
        memory_mib: a.memory_mib,
        spec,
        rendezvous: a.rendezvous.as_ref().map(|r| {
            (
                r.master_addr.clone(),
                r.master_port,
                r.rank,
                r.world_size,
                r.local_rank,
            )
        }),
    })
}

pub(crate) fn report_of(record: &AllocRecord, fin: &FinalRecord) -> AllocReportPb {
    AllocReportPb {
        alloc_id: record.id.clone(),
        generation: record.generation,
        state: fin.state.clone(),
        exit_code: fin.exit_code,
        restarts: fin.restarts,
        reason: fin.reason.clone(),
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

pub(crate) fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
    shim::write_durably(dir, name, &bytes)
}

/// Follows the leader's list of this node's allocations.
async fn watch_loop(runner: Arc<Runner>) {
    let mut leaders = runner.leader.subscribe();
    let mut after = 0u64;
    loop {
        let leader = leaders.borrow_and_update().clone();
        let Some((addr, _)) = leader else {
            let _ = leaders.changed().await;
            continue;
        };
        // A channel of its own: the heartbeat client's per-call deadline would cut the stream.
        let options =
            crate::link::controller_options(runner.config.source_ip, runner.config.tls.as_ref());
        let mut client = match steward_runtime::transport::connect(&addr, &options).await {
            Ok(ch) => steward_runtime::transport::agent_control_client(ch),
            Err(e) => {
                tracing::debug!(error = %e, %addr, "cannot reach the leader to watch assignments");
                tokio::time::sleep(REWATCH_PAUSE).await;
                continue;
            }
        };
        let request = WatchAllocationsRequest {
            node_id: runner.config.node_id.clone(),
            after_revision: after,
        };
        match client.watch_allocations(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    tokio::select! {
                        msg = stream.message() => match msg {
                            Ok(Some(update)) => {
                                after = after.max(update.revision);
                                runner.reconcile(update.allocations);
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!(%status, "assignment stream ended");
                                break;
                            }
                        },
                        _ = leaders.changed() => break,
                    }
                }
            }
            Err(status) => tracing::debug!(%status, "watching assignments failed"),
        }
        tokio::time::sleep(REWATCH_PAUSE).await;
    }
}

/// Sends reports to the leader, batched; keeps the latest per allocation until one is
/// accepted, so a leader change loses nothing.
async fn report_loop(runner: Arc<Runner>, mut rx: mpsc::UnboundedReceiver<AllocReportPb>) {
    let mut pending: BTreeMap<String, AllocReportPb> = BTreeMap::new();
    let mut backoff = Duration::from_millis(100);
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => {
                    pending.insert(r.alloc_id.clone(), r);
                }
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            pending.insert(r.alloc_id.clone(), r);
        }
        let client = runner.leader.borrow().clone();
        let Some((_, mut client)) = client else {
            tokio::time::sleep(backoff).await;
            continue;
        };
        let batch: Vec<AllocReportPb> = pending
            .values()
            .take(MAX_REPORTS_PER_CALL)
            .cloned()
            .collect();
        let request = ReportAllocationsRequest {
            node_id: runner.config.node_id.clone(),
            reports: batch.clone(),
        };
        match client.report_allocations(request).await {
            Ok(_) => {
                backoff = Duration::from_millis(100);
                for r in batch {
                    if pending.get(&r.alloc_id) == Some(&r) {
                        pending.remove(&r.alloc_id);
                    }
                }
            }
            Err(status) => {
                tracing::debug!(%status, "reporting allocations failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn fence_loop(runner: Arc<Runner>) {
    let mut tick = tokio::time::interval(FENCE_CHECK);
    loop {
        tick.tick().await;
        runner.fence_if_cut_off();
    }
}
