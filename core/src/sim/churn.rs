//! The live loop on a trace: arrivals and departures replayed on a simulated clock through
//! the controller's own scheduling round ([`crate::jobs::round::schedule_round`]) and the
//! committed state's `apply`, so admission, priority order, preemption, gangs and the
//! capacity re-check are the code the controller runs, not a model of it.
//!
//! Each trace task becomes a one-task job. Its class (`qos`) gives its priority:
//! Guaranteed 300, LS 200, Burstable 100, BE 0, and only BE is preemptible. Once placed it
//! runs for its lifetime in the trace and completes; a preempted task is placed again and
//! starts over. The simulated agents start a placed task at once and stop an evicted one
//! at once.
//!
//! Times. The trace records the tasks deleted while it observed the cluster: it opens at
//! the first `deletion_time`. A task created earlier was running then: it enters when the
//! trace opens and lives until its deletion; the others enter at `creation_time`.
//!
//! Pace. At the trace's own times ([`Pace::Trace`]) the cluster is almost idle (the
//! default trace offers 0.6 % of its GPU capacity: most tasks live minutes, arrivals span
//! 34 days), so every policy places everything at once. [`Pace::Load`] compresses the
//! arrival times by one factor, keeping every lifetime, and replays [`CYCLES`] copies of
//! the trace back to back: the first warms the cluster up, the figures are over the
//! last, and the factor is the one that makes the GPU demand offered over that window the
//! given share of capacity.
//!
//! Rounds: all events at one instant are applied in one stamped entry. A round then runs
//! if something waits and the last round began at least `round_interval_ms` ago (else one
//! is due then); after an eviction another runs at once, as the controller's loop does
//! after each change, up to [`MAX_ROUNDS_PER_INSTANT`]. Without an eviction a second round
//! could place nothing more: a round tries every waiting job against capacity that only
//! shrinks as it places.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::command::{Command, CommandResult};
use crate::inventory::{GpuInfo, Inventory};
use crate::job::JobSpec;
use crate::jobs::round::{collection_due, schedule_round, RoundConfig, DEFAULT_PREEMPTION_GAP};
use crate::jobs::{AllocReport, AllocState};
use crate::scheduler::frag::{node_fragment, TypicalTasks};
use crate::scheduler::model::GPU_MILLI;
use crate::scheduler::Policy;
use crate::state::ClusterState;

use super::{mean_sd, Trace};

/// Copies of the trace a compressed replay runs back to back; the first warms up.
pub const CYCLES: u64 = 2;
/// Points of the reported timeline over the measured window.
pub const TIMELINE_POINTS: usize = 100;
/// The default least time between rounds, simulated ms (the controller loop's tick).
pub const DEFAULT_ROUND_INTERVAL_MS: u64 = 1_000;
/// Most rounds run at one simulated instant (a preemption takes two: evict, then place).
pub const MAX_ROUNDS_PER_INSTANT: usize = 16;
/// The cluster clock when the replay starts (ms); trace times are added to it.
pub const CLOCK_START_MS: u64 = 1_000_000;
/// Finished jobs kept in the state (the controller's default `jobs.history`).
pub const HISTORY: u32 = 5_000;
/// Finished jobs beyond [`HISTORY`] that make a collection due.
pub const COLLECT_BATCH: u32 = 1_000;
/// How often finished jobs are collected, simulated ms (the controller's `COLLECT_EVERY`).
pub const COLLECT_EVERY_MS: u64 = 30_000;
/// Largest arrival compression searched for a load.
const MAX_SPEEDUP: f64 = 1e9;

/// A task's class in the trace (`qos`), which sets its priority and whether it may be
/// evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QosClass {
    Guaranteed,
    LatencySensitive,
    Burstable,
    BestEffort,
}

impl QosClass {
    pub const ALL: [QosClass; 4] = [
        QosClass::Guaranteed,
        QosClass::LatencySensitive,
        QosClass::Burstable,
        QosClass::BestEffort,
    ];

    /// The trace's spelling: `Guaranteed`, `LS`, `Burstable`, `BE`.
    pub fn parse(qos: &str) -> Option<Self> {
        match qos {
            "Guaranteed" => Some(QosClass::Guaranteed),
            "LS" => Some(QosClass::LatencySensitive),
            "Burstable" => Some(QosClass::Burstable),
            "BE" => Some(QosClass::BestEffort),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::LatencySensitive => "LS",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BE",
        }
    }

    pub fn priority(self) -> u32 {
        match self {
            QosClass::Guaranteed => 300,
            QosClass::LatencySensitive => 200,
            QosClass::Burstable => 100,
            QosClass::BestEffort => 0,
        }
    }

    pub fn preemptible(self) -> bool {
        self == QosClass::BestEffort
    }
}

/// How fast the trace's arrivals are replayed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// At the trace's own times.
    Trace,
    /// Arrivals compressed until the offered GPU demand is this share of capacity (0.9 is
    /// 90 %), lifetimes kept.
    Load(f64),
}

impl Pace {
    pub fn label(&self) -> String {
        match self {
            Pace::Trace => "trace times".into(),
            Pace::Load(l) => format!("load {:.0} %", l * 100.0),
        }
    }
}

/// One task of the replay.
#[derive(Debug, Clone)]
pub struct ChurnTask {
    /// Index into `Trace::tasks`.
    pub task: usize,
    /// Simulated arrival, ms after the first arrival.
    pub arrive_ms: u64,
    pub runtime_ms: u64,
    pub class: QosClass,
    pub spec: JobSpec,
}

/// The replay's tasks in arrival order, with the pace that produced them.
#[derive(Debug, Clone)]
pub struct ChurnWorkload {
    pub tasks: Vec<ChurnTask>,
    /// Arrivals are this many times denser than in the trace.
    pub speedup: f64,
    /// GPU demand offered over the window, share of capacity.
    pub offered_load: f64,
    /// The measured window, ms after the first arrival.
    pub window_ms: (u64, u64),
    /// Copies of the trace replayed back to back; the first warms the cluster up.
    pub cycles: u32,
}

/// Builds the replay of `trace` at `pace` (see the module). Needs the task list's
/// `creation_time`, `deletion_time` and `qos` columns.
pub fn workload(trace: &Trace, pace: Pace) -> Result<ChurnWorkload, String> {
    struct Raw {
        task: usize,
        /// Entry into the observation, trace seconds after it opens.
        enter_s: u64,
        runtime_s: u64,
        gpus: f64,
        class: QosClass,
    }
    let mut timed = Vec::with_capacity(trace.tasks.len());
    for t in &trace.tasks {
        let Some(timing) = &t.timing else {
            return Err(format!(
                "task {} has no creation_time, deletion_time and qos: the churn replay needs \
                 a task list with lifetimes (the shared default trace has them; \
                 openb_pod_list_multigpu20.csv does not)",
                t.name
            ));
        };
        let class = QosClass::parse(&timing.qos).ok_or_else(|| {
            format!(
                "task {}: qos `{}` is not one of Guaranteed, LS, Burstable, BE",
                t.name, timing.qos
            )
        })?;
        timed.push((timing, class));
    }
    if timed.is_empty() {
        return Err("the task list is empty".into());
    }
    let capacity = trace.gpu_capacity() as f64;
    if capacity <= 0.0 {
        return Err("the cluster has no GPUs".into());
    }
    // The trace records the tasks deleted while it observed: it opens at the first
    // deletion. A task created before was running then, and enters when it opens.
    let opens = timed.iter().map(|(t, _)| t.deleted_s).min().unwrap_or(0);
    let mut raw: Vec<Raw> = timed
        .iter()
        .enumerate()
        .map(|(i, (t, class))| {
            let enter = t.created_s.max(opens);
            Raw {
                task: i,
                enter_s: enter - opens,
                runtime_s: t.deleted_s - enter,
                gpus: trace.tasks[i].shape.gpu_total() as f64 / f64::from(GPU_MILLI),
                class: *class,
            }
        })
        .collect();
    raw.sort_by_key(|r| (r.enter_s, r.task));
    let last = raw[raw.len() - 1].enter_s;
    if last == 0 {
        return Err("every task arrives at one instant: there is no churn to replay".into());
    }
    let cycles: u64 = match pace {
        Pace::Trace => 1,
        Pace::Load(_) => CYCLES,
    };
    // A copy follows the previous one after the mean gap between arrivals.
    let period = last + (last / raw.len() as u64).max(1);
    let window = match cycles {
        1 => (0.0, last as f64),
        n => (period as f64, ((n - 1) * period + last) as f64),
    };
    // GPU-time offered within the window, over its length and capacity, when runtimes
    // are `k` times the trace's relative to the arrivals (`k` is the speedup).
    let offered = |k: f64| -> f64 {
        let mut sum = 0.0;
        for c in 0..cycles {
            for r in &raw {
                let a = (c * period + r.enter_s) as f64;
                let end = (a + k * r.runtime_s as f64).min(window.1);
                sum += r.gpus * (end - a.max(window.0)).max(0.0);
            }
        }
        sum / (capacity * (window.1 - window.0))
    };
    let speedup = match pace {
        Pace::Trace => 1.0,
        Pace::Load(load) => {
            if !(load > 0.0 && load.is_finite()) {
                return Err(format!(
                    "load {load} must be a positive share (0.9 is 90 %)"
                ));
            }
            let most = offered(MAX_SPEEDUP);
            if most < load {
                return Err(format!(
                    "the trace cannot offer {:.0} % of GPU capacity: at most {:.0} %",
                    load * 100.0,
                    most * 100.0
                ));
            }
            let (mut lo, mut hi) = (1e-6f64, MAX_SPEEDUP);
            for _ in 0..100 {
                let mid = (lo * hi).sqrt();
                if offered(mid) < load {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            if (offered(hi) - load).abs() > 0.01 * load {
                return Err(format!(
                    "the trace offers at least {:.1} % of GPU capacity at any pace: {:.1} % \
                     cannot be reached",
                    offered(hi) * 100.0,
                    load * 100.0
                ));
            }
            hi
        }
    };
    let ms = |s: f64| (s * 1000.0 / speedup).round() as u64;
    let mut tasks = Vec::with_capacity(raw.len() * cycles as usize);
    for c in 0..cycles {
        for r in &raw {
            let mut spec = job_spec(trace, r.task, r.class)?;
            if c > 0 {
                spec.name = format!("{}-cycle{}", spec.name, c + 1);
            }
            tasks.push(ChurnTask {
                task: r.task,
                arrive_ms: ms((c * period + r.enter_s) as f64),
                // A lifetime of 0 s still runs for a moment.
                runtime_ms: (r.runtime_s * 1000).max(1),
                class: r.class,
                spec,
            });
        }
    }
    Ok(ChurnWorkload {
        tasks,
        speedup,
        offered_load: offered(speedup),
        window_ms: (ms(window.0), ms(window.1).max(ms(window.0) + 1)),
        cycles: cycles as u32,
    })
}

/// The job a trace task is submitted as. A task asking for no CPU or memory asks for the
/// least a job may (1 mCPU, 1 MiB).
fn job_spec(trace: &Trace, i: usize, class: QosClass) -> Result<JobSpec, String> {
    let t = &trace.tasks[i];
    let s = &t.shape;
    let mut spec = JobSpec::from_toml(&format!(
        "name = \"{}\"\ncommand = \"simulated\"\n[resources]\ncpu_millicores = 1\nmemory_mib = 1\n",
        t.name.replace(['"', '\\'], "_")
    ))
    .map_err(|e| format!("task {}: {e}", t.name))?;
    let r = &mut spec.resources;
    r.cpu_millicores = s.cpu.max(1) as u64;
    r.memory_mib = s.mem.max(1) as u64;
    if s.num_gpu > 0 && s.gpu_milli >= GPU_MILLI {
        r.gpus = u32::from(s.num_gpu);
    } else if s.num_gpu > 0 && s.gpu_milli > 0 {
        r.gpu_milli = u32::from(s.gpu_milli);
    }
    if s.wants_gpu() {
        r.gpu_models = t
            .key
            .spec
            .split('|')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(String::from)
            .collect();
    }
    spec.priority = class.priority();
    spec.preemptible = class.preemptible();
    spec.validate()
        .map_err(|e| format!("task {}: {e}", t.name))?;
    Ok(spec)
}

/// The replay's settings besides the workload.
#[derive(Debug, Clone)]
pub struct ChurnSettings {
    pub policy: Policy,
    pub preemption_gap: u32,
    /// Least simulated time between two rounds' starts, ms: events in between wait for
    /// the next round, as they wait for the controller's loop to come round.
    pub round_interval_ms: u64,
}

impl ChurnSettings {
    pub fn new(policy: Policy) -> Self {
        ChurnSettings {
            policy,
            preemption_gap: DEFAULT_PREEMPTION_GAP,
            round_interval_ms: DEFAULT_ROUND_INTERVAL_MS,
        }
    }
}

/// One point of the timeline: means over its stretch of the window (fragmentation at its
/// end).
#[derive(Debug, Clone, Copy, Default)]
pub struct ChurnSample {
    /// End of the stretch, ms after the window's start.
    pub at_ms: u64,
    /// GPU capacity allocated, %.
    pub alloc_pct: f64,
    /// Free GPU capacity the typical task cannot use (the FGD measure), % of capacity.
    pub frag_pct: f64,
    /// Free GPU capacity while GPU tasks wait, up to their demand, % of capacity: what
    /// the queue could have run were the free capacity in the right places.
    pub idle_while_queued_pct: f64,
    /// Tasks waiting, mean.
    pub queued: f64,
}

/// Queueing delays of one class: arrival to first start, tasks arriving in the window.
#[derive(Debug, Clone)]
pub struct ClassDelays {
    pub class: QosClass,
    pub tasks: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
    /// Tasks of the class that never started (nothing could ever run them, or the replay
    /// ended with them waiting).
    pub never_started: usize,
}

#[derive(Debug, Clone)]
pub struct ChurnResult {
    pub policy: Policy,
    pub timeline: Vec<ChurnSample>,
    /// Means over the window.
    pub alloc_pct: f64,
    pub frag_pct: f64,
    pub idle_while_queued_pct: f64,
    pub delays: Vec<ClassDelays>,
    /// Allocations evicted for higher-priority tasks.
    pub preemptions: usize,
    /// Placements the state refused (a round's plan that no longer fit): always 0 here,
    /// since nothing moves between a round and its apply.
    pub refused: usize,
    pub started: usize,
    pub never_started: usize,
    pub rounds: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A running allocation's task ends (index into the tasks, its generation).
    Finish(usize, u64),
    Arrive(usize),
    /// The next scheduling round is due (after the instant's other events).
    Round,
}

/// Time-weighted sums over the window's timeline stretches.
struct Timeline {
    start: u64,
    end: u64,
    sums: Vec<[f64; 4]>,
}

impl Timeline {
    /// The end of stretch `i` (absolute ms); stretches split the window in whole ms.
    fn boundary(&self, i: usize) -> u64 {
        let len = u128::from(self.end - self.start);
        self.start + (len * (i as u128 + 1) / TIMELINE_POINTS as u128) as u64
    }

    /// The stretch holding `t` (`start <= t < end`).
    fn index(&self, t: u64) -> usize {
        let len = u128::from(self.end - self.start).max(1);
        let mut i = ((u128::from(t - self.start) * TIMELINE_POINTS as u128 / len) as usize)
            .min(TIMELINE_POINTS - 1);
        while i < TIMELINE_POINTS - 1 && self.boundary(i) <= t {
            i += 1;
        }
        i
    }

    /// Adds `values` held over `[from, to)` (absolute simulated ms).
    fn add(&mut self, from: u64, to: u64, values: [f64; 4]) {
        let (mut t, to) = (from.max(self.start), to.min(self.end));
        while t < to {
            let i = self.index(t);
            let stretch_end = self.boundary(i).min(to).max(t + 1);
            let dt = (stretch_end - t) as f64;
            for (s, v) in self.sums[i].iter_mut().zip(values) {
                *s += v * dt;
            }
            t = stretch_end;
        }
    }

    /// Stretch `i`'s length, ms.
    fn width(&self, i: usize) -> f64 {
        let begin = if i == 0 {
            self.start
        } else {
            self.boundary(i - 1)
        };
        (self.boundary(i) - begin).max(1) as f64
    }
}

/// The per-task bookkeeping of a replay.
#[derive(Clone, Default)]
struct TaskRun {
    first_start_ms: Option<u64>,
    /// The live allocation and when its task ends.
    running: Option<(String, u64)>,
}

/// Replays `workload` on `trace`'s nodes with `settings`; `typical` is the reference
/// distribution of the fragmentation figure (the same for every policy).
pub fn run(
    trace: &Trace,
    workload: &ChurnWorkload,
    typical: &TypicalTasks,
    settings: &ChurnSettings,
) -> Result<ChurnResult, String> {
    let mut state = ClusterState::default();
    state.apply(Command::SetClusterLevel { level: 3 });
    let mut nodes = Vec::with_capacity(trace.nodes.len());
    for n in &trace.nodes {
        let mut inv = Inventory::default();
        inv.host.cpu.threads = u32::try_from((n.cpu_total.max(0) + 999) / 1000)
            .map_err(|_| format!("node {}: CPU out of range", n.name))?;
        inv.host.memory_total_bytes = Some(n.mem_total.max(0) as u64 * 1024 * 1024);
        inv.gpus = (0..n.gpus)
            .map(|i| GpuInfo {
                index: u32::from(i),
                uuid: format!("GPU-{}-{i}", n.name),
                name: trace.models.name(n.model).to_string(),
                ..Default::default()
            })
            .collect();
        nodes.push(Command::RegisterNodeTyped {
            node: n.name.clone(),
            hostname: n.name.clone(),
            labels: BTreeMap::new(),
            inventory: Box::new(inv),
            registration_digest: String::new(),
        });
    }
    let registered = state.apply(Command::Stamped {
        at_unix_ms: CLOCK_START_MS,
        commands: nodes,
    });
    if let CommandResult::Batch(results) = registered {
        if let Some(bad) = results
            .iter()
            .find(|r| !matches!(r, CommandResult::NodeRegistered { .. }))
        {
            return Err(format!("registering the trace's nodes: {bad:?}"));
        }
    }
    let capacity_milli = trace.gpu_capacity() as f64 * f64::from(GPU_MILLI);
    let gpu_of = |i: usize| trace.tasks[workload.tasks[i].task].shape.gpu_total();
    let config = RoundConfig {
        policy: settings.policy,
        preemption_gap: settings.preemption_gap,
        ..RoundConfig::default()
    };

    let mut runs = vec![TaskRun::default(); workload.tasks.len()];
    let mut by_job: HashMap<String, usize> = HashMap::new();
    let mut by_alloc: HashMap<String, usize> = HashMap::new();
    let mut events: BinaryHeap<Reverse<(u64, Event)>> = workload
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| Reverse((CLOCK_START_MS + t.arrive_ms, Event::Arrive(i))))
        .collect();
    let mut timeline = Timeline {
        start: CLOCK_START_MS + workload.window_ms.0,
        end: CLOCK_START_MS + workload.window_ms.1,
        sums: vec![[0.0; 4]; TIMELINE_POINTS],
    };
    let mut frag_at = vec![f64::NAN; TIMELINE_POINTS];
    let (mut allocated, mut queued_milli, mut queued) = (0i64, 0i64, 0usize);
    let (mut preemptions, mut refused, mut rounds) = (0usize, 0usize, 0usize);
    let mut last_t = CLOCK_START_MS;
    let mut next_collect = CLOCK_START_MS + COLLECT_EVERY_MS;
    let (mut last_round, mut round_pending): (Option<u64>, bool) = (None, false);

    while let Some(Reverse((now, _))) = events.peek().copied() {
        // The state held over [last_t, now).
        let free = capacity_milli - allocated as f64;
        timeline.add(
            last_t,
            now,
            [
                allocated as f64 / capacity_milli * 100.0,
                0.0,
                free.min(queued_milli as f64).max(0.0) / capacity_milli * 100.0,
                queued as f64,
            ],
        );
        // Fragmentation at the stretch ends passed.
        for (i, f) in frag_at.iter_mut().enumerate() {
            let end = timeline.boundary(i);
            if f.is_nan() && end <= now && end > last_t {
                *f = fragmentation(trace, &state, typical) / capacity_milli * 100.0;
            }
        }
        last_t = now;

        // Every event of this instant, in one stamped entry.
        let mut commands = Vec::new();
        let mut arrivals = Vec::new();
        while let Some(Reverse((t, ev))) = events.peek().copied() {
            if t != now {
                break;
            }
            events.pop();
            match ev {
                Event::Arrive(i) => {
                    commands.push(Command::SubmitJob {
                        spec: Box::new(workload.tasks[i].spec.clone()),
                    });
                    arrivals.push(i);
                }
                Event::Round => round_pending = false,
                Event::Finish(i, generation) => {
                    // An allocation evicted since has no end: its task's new one has its own.
                    let current = runs[i]
                        .running
                        .as_ref()
                        .is_some_and(|(a, _)| state.allocs[a].generation == generation);
                    if !current {
                        continue;
                    }
                    let (alloc, _) = runs[i].running.take().expect("checked");
                    let a = &state.allocs[&alloc];
                    allocated -= gpu_of(i);
                    by_alloc.remove(&alloc);
                    commands.push(report(&a.node, &alloc, generation, AllocState::Complete));
                }
            }
        }
        if now >= next_collect {
            next_collect = now + COLLECT_EVERY_MS;
            // Collected in batches: a collection walks every finished job.
            if collection_due(&state, 0, HISTORY + COLLECT_BATCH) {
                commands.push(Command::CollectJobs {
                    finished_before_ms: 0,
                    keep_at_most: HISTORY,
                });
            }
        }
        let results = match state.apply(Command::Stamped {
            at_unix_ms: now,
            commands,
        }) {
            CommandResult::Batch(r) => r,
            other => return Err(format!("applying the events: {other:?}")),
        };
        let mut submitted = arrivals.into_iter();
        for r in results {
            match r {
                CommandResult::JobSubmitted { job, .. } => {
                    let i = submitted.next().expect("one result per submission");
                    by_job.insert(job, i);
                    queued += 1;
                    queued_milli += gpu_of(i);
                }
                CommandResult::JobRefused { reason } => {
                    return Err(format!("a trace task was refused: {reason}"));
                }
                _ => {}
            }
        }

        // Rounds until one changes nothing, as the controller's loop does; with nothing
        // waiting a round decides nothing, so none runs. A round not yet due is put off.
        if queued > 0 && last_round.is_some_and(|t| now < t + settings.round_interval_ms) {
            if !round_pending {
                let at = last_round.unwrap_or(now) + settings.round_interval_ms;
                events.push(Reverse((at, Event::Round)));
                round_pending = true;
            }
            continue;
        }
        for attempt in 0..MAX_ROUNDS_PER_INSTANT {
            if queued == 0 {
                break;
            }
            last_round = Some(now);
            let round = schedule_round(&state, &config);
            rounds += 1;
            // A round tries every waiting job (up to `max_jobs`) against capacity that
            // only shrinks as it places, so the next one can place more only when this one
            // evicted (room appears once the victims stop) or left jobs unconsidered.
            let again = round.preempted > 0 || (round.placed > 0 && queued > config.max_jobs);
            let mut stops = Vec::new();
            for c in &round.commands {
                if let Command::StopAllocations { stops: s } = c {
                    stops.extend(s.iter().cloned());
                }
            }
            let results = match state.apply(Command::Stamped {
                at_unix_ms: now,
                commands: round.commands,
            }) {
                CommandResult::Batch(r) => r,
                other => return Err(format!("applying a round: {other:?}")),
            };
            let mut started = Vec::new();
            for r in results {
                match r {
                    CommandResult::AllocationsPlaced { allocs, .. } => started.extend(allocs),
                    CommandResult::PlacementRefused { .. } => refused += 1,
                    _ => {}
                }
            }
            // The simulated agents: evicted tasks stop at once, placed ones start at once.
            let mut reports = Vec::new();
            for s in stops {
                let Some(&i) = by_alloc.get(&s.alloc) else {
                    continue;
                };
                let a = &state.allocs[&s.alloc];
                if a.state.is_terminal() {
                    continue;
                }
                reports.push(report(&a.node, &s.alloc, s.generation, AllocState::Failed));
                by_alloc.remove(&s.alloc);
                runs[i].running = None;
                allocated -= gpu_of(i);
                queued += 1;
                queued_milli += gpu_of(i);
                preemptions += 1;
            }
            for id in started {
                let a = &state.allocs[&id];
                let Some(&i) = by_job.get(&a.job) else {
                    return Err(format!("allocation {id} of an unknown job {}", a.job));
                };
                let generation = a.generation;
                reports.push(report(&a.node, &id, generation, AllocState::Running));
                let end = now + workload.tasks[i].runtime_ms;
                runs[i].running = Some((id.clone(), end));
                runs[i].first_start_ms.get_or_insert(now);
                by_alloc.insert(id, i);
                allocated += gpu_of(i);
                queued -= 1;
                queued_milli -= gpu_of(i);
                events.push(Reverse((end, Event::Finish(i, generation))));
            }
            if !reports.is_empty() {
                state.apply(Command::Stamped {
                    at_unix_ms: now,
                    commands: reports,
                });
            }
            if !again {
                break;
            }
            if attempt + 1 == MAX_ROUNDS_PER_INSTANT && !round_pending {
                // Still evicting after the most rounds one instant gets: go on next time.
                events.push(Reverse((now + settings.round_interval_ms, Event::Round)));
                round_pending = true;
            }
        }
    }

    let total = |k: usize| -> f64 {
        timeline.sums.iter().map(|s| s[k]).sum::<f64>() / (timeline.end - timeline.start) as f64
    };
    let samples: Vec<ChurnSample> = timeline
        .sums
        .iter()
        .zip(&frag_at)
        .enumerate()
        .map(|(i, (s, &f))| {
            let w = timeline.width(i);
            ChurnSample {
                at_ms: timeline.boundary(i) - timeline.start,
                alloc_pct: s[0] / w,
                frag_pct: if f.is_nan() { 0.0 } else { f },
                idle_while_queued_pct: s[2] / w,
                queued: s[3] / w,
            }
        })
        .collect();
    let frags: Vec<f64> = frag_at.iter().copied().filter(|f| !f.is_nan()).collect();
    let delays = QosClass::ALL
        .iter()
        .map(|&class| {
            let mut waits: Vec<u64> = Vec::new();
            let mut never_started = 0;
            for (t, r) in workload.tasks.iter().zip(&runs) {
                if t.class != class || t.arrive_ms < workload.window_ms.0 {
                    continue;
                }
                match r.first_start_ms {
                    Some(s) => waits.push(s - (CLOCK_START_MS + t.arrive_ms)),
                    None => never_started += 1,
                }
            }
            waits.sort_unstable();
            ClassDelays {
                class,
                tasks: waits.len() + never_started,
                p50_ms: percentile(&waits, 0.50),
                p99_ms: percentile(&waits, 0.99),
                never_started,
            }
        })
        .filter(|d| d.tasks > 0)
        .collect();
    let started = runs.iter().filter(|r| r.first_start_ms.is_some()).count();
    Ok(ChurnResult {
        policy: settings.policy,
        timeline: samples,
        alloc_pct: total(0),
        frag_pct: mean_sd(&frags).0,
        idle_while_queued_pct: total(2),
        delays,
        preemptions,
        refused,
        started,
        never_started: runs.len() - started,
        rounds,
    })
}

fn report(node: &str, alloc: &str, generation: u64, state: AllocState) -> Command {
    Command::ReportAllocations {
        node: node.to_string(),
        reports: vec![AllocReport {
            alloc: alloc.to_string(),
            generation,
            state,
            exit_code: match state {
                AllocState::Complete => Some(0),
                AllocState::Failed => Some(137),
                _ => None,
            },
            restarts: 0,
            reason: String::new(),
        }],
    }
}

/// The nearest-rank percentile of sorted `values` (0 when empty).
fn percentile(values: &[u64], q: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// The free GPU capacity (milli) the typical task cannot use, over the cluster as the state
/// holds it.
fn fragmentation(trace: &Trace, state: &ClusterState, typical: &TypicalTasks) -> f64 {
    trace
        .nodes
        .iter()
        .map(|n| {
            let mut cpu_free = n.cpu_total;
            let mut gpu_free: Vec<u16> = vec![GPU_MILLI; n.gpus as usize];
            if let Some(u) = state.node_usage(&n.name) {
                cpu_free -= u.cpu_millicores as i64;
                for (i, g) in gpu_free.iter_mut().enumerate() {
                    let held = u
                        .gpu_milli
                        .get(&format!("GPU-{}-{i}", n.name))
                        .copied()
                        .unwrap_or(0);
                    *g = GPU_MILLI.saturating_sub(held.min(1000) as u16);
                }
            }
            node_fragment(n.model, cpu_free, &gpu_free, typical)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str =
        "sn,cpu_milli,memory_mib,gpu,model\nn0,32000,65536,2,T4\nn1,32000,65536,2,T4\n";
    const HEADER: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n";

    fn trace(rows: &[&str]) -> Trace {
        Trace::parse(NODES, &format!("{HEADER}{}\n", rows.join("\n"))).expect("trace")
    }

    fn run_one(t: &Trace, pace: Pace) -> (ChurnWorkload, ChurnResult) {
        let w = workload(t, pace).expect("workload");
        let typical = super::super::typical_tasks(t);
        let r = run(t, &w, &typical, &ChurnSettings::new(Policy::Steward)).expect("runs");
        (w, r)
    }

    #[test]
    fn an_uncontended_trace_starts_everything_at_once_and_allocation_is_time_weighted() {
        // The trace opens at its first deletion, t=100 s: p0 and p2, created before, were
        // running then and enter at once.
        let t = trace(&[
            "p0,1000,1024,1,1000,,LS,Running,0,100,0",
            "p1,1000,1024,2,1000,,BE,Running,100,600,100",
            "p2,1000,1024,1,500,,LS,Running,50,1100,50",
            "p3,1000,1024,1,1000,,LS,Running,600,1100,600",
        ]);
        let (w, r) = run_one(&t, Pace::Trace);
        assert_eq!((w.window_ms, w.cycles), ((0, 500_000), 1));
        assert_eq!((r.started, r.never_started, r.preemptions), (4, 0, 0));
        assert!(r.delays.iter().all(|d| d.p99_ms == 0), "{:?}", r.delays);
        // Over [0, 500 s): p1 (2 GPUs) and p2 (half of one) of 4 run throughout; p0 lasts
        // a moment (its lifetime in the observation is 0).
        assert!((r.alloc_pct - 62.5).abs() < 0.01, "{}", r.alloc_pct);
        assert_eq!(r.idle_while_queued_pct, 0.0);
    }

    #[test]
    fn a_latency_sensitive_task_preempts_best_effort_work_which_runs_again_later() {
        // Four BE tasks fill the 4 GPUs; an LS task needing one arrives 100 s after the
        // trace opens (at the first deletion, the CPU-only task `o`).
        let t = trace(&[
            "o,1000,1024,0,0,,BE,Running,0,100,0",
            "b0,1000,1024,1,1000,,BE,Running,0,1000,0",
            "b1,1000,1024,1,1000,,BE,Running,0,1000,0",
            "b2,1000,1024,1,1000,,BE,Running,0,1000,0",
            "b3,1000,1024,1,1000,,BE,Running,0,1000,0",
            "ls,1000,1024,1,1000,,LS,Running,200,500,200",
        ]);
        let (_, r) = run_one(&t, Pace::Trace);
        assert_eq!(r.preemptions, 1);
        assert_eq!(r.never_started, 0, "the evicted task runs again");
        let ls = r
            .delays
            .iter()
            .find(|d| d.class == QosClass::LatencySensitive)
            .expect("LS delays");
        assert!(ls.p99_ms <= DEFAULT_ROUND_INTERVAL_MS, "{ls:?}");
        let be = r
            .delays
            .iter()
            .find(|d| d.class == QosClass::BestEffort)
            .expect("BE delays");
        assert_eq!(be.p99_ms, 0, "first starts count: all BE started at once");
        assert_eq!(r.refused, 0);
    }

    #[test]
    fn a_compressed_replay_offers_the_load_asked_for() {
        let rows: Vec<String> = (0..40)
            .map(|i| {
                let created = 1000 + i * 100;
                format!(
                    "t{i},1000,1024,1,1000,,LS,Running,{created},{},0",
                    created + 300
                )
            })
            .collect();
        let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
        let t = trace(&rows);
        // At its own pace about 3 of the 4 GPUs are busy: 90 % needs faster arrivals.
        let w = workload(&t, Pace::Load(0.9)).expect("reachable");
        assert!((w.offered_load - 0.9).abs() < 0.01, "{}", w.offered_load);
        assert!(w.speedup > 1.0, "{}", w.speedup);
        assert_eq!(w.cycles as u64, CYCLES);
        assert_eq!(w.tasks.len(), 40 * CYCLES as usize);
        let names: std::collections::BTreeSet<&str> =
            w.tasks.iter().map(|t| t.spec.name.as_str()).collect();
        assert_eq!(
            names.len(),
            w.tasks.len(),
            "each copy's jobs have their own names"
        );
        assert!(workload(&t, Pace::Load(0.0)).is_err());
        let err = workload(&t, Pace::Load(50.0)).expect_err("more than the tasks can offer");
        assert!(err.contains("cannot offer"), "{err}");
    }

    #[test]
    fn the_timeline_counts_every_millisecond_of_an_uneven_window() {
        for len in [1u64, 99, 100, 101, 12_345, 733_981] {
            let mut t = Timeline {
                start: 1_000,
                end: 1_000 + len,
                sums: vec![[0.0; 4]; TIMELINE_POINTS],
            };
            t.add(0, u64::MAX, [1.0, 0.0, 0.0, 0.0]);
            let total: f64 = t.sums.iter().map(|s| s[0]).sum();
            assert_eq!(total, len as f64, "window of {len} ms");
            if len >= TIMELINE_POINTS as u64 {
                for i in 0..TIMELINE_POINTS {
                    assert!((t.sums[i][0] / t.width(i) - 1.0).abs() < 1e-9, "{len}: {i}");
                }
            }
        }
    }

    #[test]
    fn a_task_list_without_lifetimes_is_refused_clearly() {
        let t = Trace::parse(
            NODES,
            "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1000,1024,1,1000\n",
        )
        .expect("trace");
        let err = workload(&t, Pace::Trace).expect_err("no lifetimes");
        assert!(err.contains("creation_time"), "{err}");
        let bad = Trace::parse(
            NODES,
            &format!("{HEADER}p0,1000,1024,1,1000,,XX,Running,0,10,0\n"),
        )
        .expect("trace");
        let err = workload(&bad, Pace::Trace).expect_err("unknown class");
        assert!(err.contains("qos `XX`"), "{err}");
        let backwards = Trace::parse(
            NODES,
            &format!("{HEADER}p0,1000,1024,1,1000,,LS,Running,10,5,0\n"),
        );
        assert!(backwards.is_err(), "deleted before created");
    }
}
