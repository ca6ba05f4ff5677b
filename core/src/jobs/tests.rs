//! Jobs in `apply` and the scheduling round: the capacity re-check against stale plans
//! (a property test over interleavings), gangs whole or not at all, generation fencing,
//! node loss, restarts and reschedules, preemption, cancel, drain, GPU failure, collection,
//! and the format-2 migration.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::round::{schedule_round, RoundConfig};
use super::*;
use crate::command::{Command, CommandResult};
use crate::inventory::{GpuInfo, Inventory};
use crate::job::JobSpec;
use crate::node::NodeHealth;
use crate::state::ClusterState;

fn inventory(node: &str, gpus: usize) -> Inventory {
    let mut inv = Inventory::default();
    inv.host.cpu.threads = 64;
    inv.host.memory_total_bytes = Some(512 * 1024 * 1024 * 1024);
    inv.agent.api_addr = Some(format!("10.0.0.{}:7800", node.len()));
    inv.gpus = (0..gpus)
        .map(|i| GpuInfo {
            index: i as u32,
            uuid: gpu(node, i),
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_total_mib: Some(81_559),
            ..Default::default()
        })
        .collect();
    inv
}

fn gpu(node: &str, i: usize) -> String {
    format!("GPU-{node}-{i}")
}

/// A level-3 state with `nodes` ready nodes of `gpus` H100s each, clock at 1,000,000 ms.
fn cluster(nodes: usize, gpus: usize) -> ClusterState {
    let mut s = ClusterState::default();
    s.apply(Command::SetClusterLevel { level: 3 });
    stamp(&mut s, 1_000_000);
    for n in 0..nodes {
        let id = format!("n{n}");
        s.apply(Command::RegisterNodeTyped {
            node: id.clone(),
            hostname: id.clone(),
            labels: BTreeMap::from([("zone".to_string(), format!("z{}", n % 2))]),
            inventory: Box::new(inventory(&id, gpus)),
            registration_digest: "d".into(),
        });
    }
    s
}

fn stamp(s: &mut ClusterState, at: u64) {
    s.apply(Command::Stamped {
        at_unix_ms: at,
        commands: vec![],
    });
}

fn spec(name: &str, toml_extra: &str) -> JobSpec {
    let text = format!(
        "name = \"{name}\"\ncommand = \"true\"\n{toml_extra}\n[resources]\ncpu_millicores = 1000\nmemory_mib = 1024\n"
    );
    // Resources may be extended by the caller through `[resources]` keys appended later.
    JobSpec::from_toml(&text).expect("spec")
}

fn with_gpus(mut s: JobSpec, gpus: u32, milli: u32) -> JobSpec {
    s.resources.gpus = gpus;
    s.resources.gpu_milli = milli;
    s.validate().expect("valid");
    s
}

fn submit(s: &mut ClusterState, spec: JobSpec) -> String {
    match s.apply(Command::SubmitJob {
        spec: Box::new(spec),
    }) {
        CommandResult::JobSubmitted { job, .. } => job,
        other => panic!("submit: {other:?}"),
    }
}

fn place(job: &str, task: u32, node: &str, gpus: &[usize], milli: u16) -> Command {
    Command::PlaceAllocations {
        job: job.into(),
        placements: vec![NewAllocation {
            task,
            node: node.into(),
            gpus: gpus.iter().map(|&i| gpu(node, i)).collect(),
            gpu_milli: milli,
            cpu_millicores: 1000,
            memory_mib: 1024,
            rendezvous: None,
        }],
    }
}

fn report(
    s: &mut ClusterState,
    alloc: &str,
    state: AllocState,
    code: Option<i32>,
) -> CommandResult {
    let a = &s.allocs[alloc];
    let (node, generation) = (a.node.clone(), a.generation);
    s.apply(Command::ReportAllocations {
        node,
        reports: vec![AllocReport {
            alloc: alloc.into(),
            generation,
            state,
            exit_code: code,
            restarts: 0,
            reason: String::new(),
        }],
    })
}

/// Runs rounds (applying their commands) until one proposes nothing.
fn settle(s: &mut ClusterState) {
    for _ in 0..10 {
        let round = schedule_round(s, &RoundConfig::default());
        let placing = round
            .commands
            .iter()
            .any(|c| !matches!(c, Command::SetJobPendingReason { .. }));
        for c in round.commands {
            s.apply(c);
        }
        if !placing {
            return;
        }
    }
    panic!("rounds do not settle");
}

fn live_on(s: &ClusterState, job: &str) -> Vec<(String, String)> {
    s.allocs
        .values()
        .filter(|a| a.job == job && !a.state.is_terminal())
        .map(|a| (a.id.clone(), a.node.clone()))
        .collect()
}

#[test]
fn apply_refuses_a_placement_whose_gpu_is_taken() {
    let mut s = cluster(1, 2);
    let a = submit(&mut s, with_gpus(spec("a", ""), 1, 0));
    let b = submit(&mut s, with_gpus(spec("b", ""), 0, 600));
    // Two plans built from the same view both chose GPU 0.
    assert!(matches!(
        s.apply(place(&a, 0, "n0", &[0], 1000)),
        CommandResult::AllocationsPlaced { .. }
    ));
    let before = s.digest().expect("digest");
    match s.apply(place(&b, 0, "n0", &[0], 600)) {
        CommandResult::PlacementRefused { reason } => {
            assert!(reason.contains("0 milli free"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.digest().expect("digest"),
        before,
        "a refused plan changes nothing"
    );
    // The same task twice is refused too.
    assert!(matches!(
        s.apply(place(&a, 0, "n0", &[1], 1000)),
        CommandResult::PlacementRefused { .. }
    ));
    // Shares add up to 1000 at most.
    assert!(matches!(
        s.apply(place(&b, 0, "n0", &[1], 600)),
        CommandResult::AllocationsPlaced { .. }
    ));
    let c = submit(&mut s, with_gpus(spec("c", ""), 0, 500));
    assert!(matches!(
        s.apply(place(&c, 0, "n0", &[1], 500)),
        CommandResult::PlacementRefused { .. }
    ));
    assert!(
        matches!(
            s.apply(place(&c, 0, "n0", &[1], 400)),
            CommandResult::PlacementRefused { .. }
        ),
        "a share that differs from the spec is refused"
    );
}

#[test]
fn gangs_are_committed_whole_or_not_at_all() {
    let mut s = cluster(2, 8);
    let g = submit(
        &mut s,
        with_gpus(spec("gang", "tasks = 2\ngang = true"), 8, 0),
    );
    let p = |task: u32, node: &str| NewAllocation {
        task,
        node: node.into(),
        gpus: (0..8).map(|i| gpu(node, i)).collect(),
        gpu_milli: 1000,
        cpu_millicores: 1000,
        memory_mib: 1024,
        rendezvous: None,
    };
    // Half a gang is refused.
    assert!(matches!(
        s.apply(Command::PlaceAllocations {
            job: g.clone(),
            placements: vec![p(0, "n0")]
        }),
        CommandResult::PlacementRefused { .. }
    ));
    // A gang whose second member does not fit leaves nothing behind.
    let blocker = submit(&mut s, with_gpus(spec("blocker", ""), 1, 0));
    s.apply(place(&blocker, 0, "n1", &[3], 1000));
    let before = s.digest().expect("digest");
    assert!(matches!(
        s.apply(Command::PlaceAllocations {
            job: g.clone(),
            placements: vec![p(0, "n0"), p(1, "n1")]
        }),
        CommandResult::PlacementRefused { .. }
    ));
    assert_eq!(s.digest().expect("digest"), before);
    assert!(live_on(&s, &g).is_empty());
    // Freed, it goes in whole, and the round gives each member its rendezvous.
    let b0 = format!("{blocker}.0.1");
    report(&mut s, &b0, AllocState::Complete, Some(0));
    settle(&mut s);
    let members = live_on(&s, &g);
    assert_eq!(members.len(), 2);
    let ranks: Vec<(u32, u32)> = members
        .iter()
        .map(|(id, _)| {
            let r = s.allocs[id].rendezvous.clone().expect("rendezvous");
            assert_eq!(r.master_addr, "10.0.0.2");
            (r.rank, r.world_size)
        })
        .collect();
    assert_eq!(ranks, vec![(0, 2), (1, 2)]);
    // Losing one member stops the other; the gang is placed again whole.
    let (m0, m1) = (members[0].0.clone(), members[1].0.clone());
    report(&mut s, &m0, AllocState::Failed, Some(1));
    assert_eq!(s.allocs[&m1].desired, DesiredState::Stop);
    assert!(matches!(
        s.allocs[&m1].stop_reason,
        Some(StopReason::GangMemberEnded { .. })
    ));
    settle(&mut s);
    assert_eq!(
        live_on(&s, &g).len(),
        1,
        "nothing new while a member still stops"
    );
    report(&mut s, &m1, AllocState::Stopped, None);
    stamp(&mut s, 1_000_000 + 60_000);
    settle(&mut s);
    assert_eq!(
        live_on(&s, &g).len(),
        2,
        "placed again whole after the delay"
    );
}

#[test]
fn a_report_with_an_old_generation_changes_nothing() {
    let mut s = cluster(2, 1);
    let j = submit(&mut s, with_gpus(spec("j", ""), 1, 0));
    settle(&mut s);
    let first = live_on(&s, &j)[0].clone();
    let old_generation = s.allocs[&first.0].generation;
    // Its node goes down: lost, and placed on the other node with a new generation.
    s.apply(Command::TransitionNodeHealth {
        node: first.1.clone(),
        from: NodeHealth::Ready,
        to: NodeHealth::Down,
        reason: "silent".into(),
    });
    assert_eq!(s.allocs[&first.0].state, AllocState::Lost);
    settle(&mut s);
    let second = live_on(&s, &j)[0].clone();
    assert_ne!(second.1, first.1);
    assert!(s.allocs[&second.0].generation > old_generation);
    let before = s.digest().expect("digest");
    // The returning agent reports the old copy, with its old generation: ignored.
    let r = s.apply(Command::ReportAllocations {
        node: first.1.clone(),
        reports: vec![AllocReport {
            alloc: first.0.clone(),
            generation: old_generation,
            state: AllocState::Running,
            exit_code: None,
            restarts: 0,
            reason: String::new(),
        }],
    });
    assert!(
        matches!(
            r,
            CommandResult::AllocationsReported {
                applied: 0,
                ignored: 1,
                ..
            }
        ),
        "{r:?}"
    );
    // A report naming the new allocation with a wrong generation, or from another node.
    for (node, generation) in [
        (second.1.clone(), old_generation),
        (first.1.clone(), s.allocs[&second.0].generation),
    ] {
        s.apply(Command::ReportAllocations {
            node,
            reports: vec![AllocReport {
                alloc: second.0.clone(),
                generation,
                state: AllocState::Failed,
                exit_code: Some(1),
                restarts: 0,
                reason: String::new(),
            }],
        });
    }
    assert_eq!(s.digest().expect("digest"), before);
}

#[test]
fn failures_restart_then_reschedule_then_fail_the_job() {
    let mut s = cluster(2, 1);
    let j = submit(
        &mut s,
        with_gpus(
            spec("crash", "reschedule = { attempts = 1, delay = \"5s\" }"),
            1,
            0,
        ),
    );
    settle(&mut s);
    let a1 = live_on(&s, &j)[0].0.clone();
    report(&mut s, &a1, AllocState::Running, None);
    assert_eq!(s.jobs[&j].status, JobStatus::Running);
    report(&mut s, &a1, AllocState::Failed, Some(3));
    assert_eq!(s.jobs[&j].status, JobStatus::Pending);
    settle(&mut s);
    assert!(
        live_on(&s, &j).is_empty(),
        "not before the reschedule delay"
    );
    stamp(&mut s, 1_000_000 + 5_000);
    settle(&mut s);
    let a2 = live_on(&s, &j)[0].0.clone();
    assert_eq!(a2, format!("{j}.0.2"));
    report(&mut s, &a2, AllocState::Failed, Some(3));
    assert_eq!(s.jobs[&j].status, JobStatus::Failed);
    assert!(s.jobs[&j]
        .events
        .iter()
        .any(|e| e.message.contains("attempts spent")));
    // Finished jobs are collected with their allocations.
    let r = s.apply(Command::CollectJobs {
        finished_before_ms: u64::MAX,
        keep_at_most: 0,
    });
    assert!(
        matches!(
            r,
            CommandResult::JobsCollected {
                jobs: 1,
                allocs: 2,
                ..
            }
        ),
        "{r:?}"
    );
    assert!(s.allocs.is_empty() && s.jobs.is_empty());
}

#[test]
fn a_higher_priority_job_preempts_and_the_victim_runs_later() {
    let mut s = cluster(1, 2);
    let low = submit(
        &mut s,
        with_gpus(
            spec("low", "priority = 10\npreemptible = true\ntasks = 2"),
            1,
            0,
        ),
    );
    settle(&mut s);
    assert_eq!(live_on(&s, &low).len(), 2);
    let high = submit(&mut s, with_gpus(spec("high", "priority = 900"), 2, 0));
    let round = schedule_round(&s, &RoundConfig::default());
    assert_eq!(round.preempted, 2);
    for c in round.commands {
        s.apply(c);
    }
    // A second round does not evict again while the victims stop.
    assert_eq!(schedule_round(&s, &RoundConfig::default()).preempted, 0);
    for (id, _) in live_on(&s, &low) {
        report(&mut s, &id, AllocState::Failed, Some(143));
        assert_eq!(s.allocs[&id].state, AllocState::Preempted);
    }
    assert_eq!(s.jobs[&low].status, JobStatus::Pending);
    settle(&mut s);
    assert_eq!(live_on(&s, &high).len(), 1);
    assert!(live_on(&s, &low).is_empty());
    let h = live_on(&s, &high)[0].0.clone();
    report(&mut s, &h, AllocState::Complete, Some(0));
    settle(&mut s);
    assert_eq!(live_on(&s, &low).len(), 2, "the preempted job runs again");
    assert_eq!(s.jobs[&high].status, JobStatus::Complete);
}

#[test]
fn two_jobs_preempting_in_one_round_choose_different_victims() {
    let mut s = cluster(1, 2);
    let low = submit(
        &mut s,
        with_gpus(
            spec("low", "priority = 10\npreemptible = true\ntasks = 2"),
            1,
            0,
        ),
    );
    settle(&mut s);
    assert_eq!(live_on(&s, &low).len(), 2);
    submit(&mut s, with_gpus(spec("high-a", "priority = 900"), 1, 0));
    submit(&mut s, with_gpus(spec("high-b", "priority = 900"), 1, 0));
    let round = schedule_round(&s, &RoundConfig::default());
    let stopped: std::collections::BTreeSet<String> = round
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::StopAllocations { stops } => Some(stops.iter().map(|s| s.alloc.clone())),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(
        (round.preempted, stopped.len()),
        (2, 2),
        "each job evicts a task of its own: {stopped:?}"
    );
    for c in round.commands {
        s.apply(c);
    }
    for (id, _) in live_on(&s, &low) {
        report(&mut s, &id, AllocState::Failed, Some(143));
    }
    settle(&mut s);
    let running = s
        .allocs
        .values()
        .filter(|a| a.state == AllocState::Pending && a.job != low)
        .count();
    assert_eq!(
        running, 2,
        "both high-priority jobs run after one eviction each"
    );
}

#[test]
fn one_eviction_makes_room_for_two_tasks_of_a_higher_priority_job() {
    let mut s = cluster(1, 8);
    let low = submit(
        &mut s,
        with_gpus(spec("low", "priority = 0\npreemptible = true"), 8, 0),
    );
    settle(&mut s);
    assert_eq!(live_on(&s, &low).len(), 1);
    submit(
        &mut s,
        with_gpus(spec("high", "priority = 900\ntasks = 2"), 1, 0),
    );
    let round = schedule_round(&s, &RoundConfig::default());
    assert_eq!(
        round.preempted, 1,
        "the second task fits in the room the first eviction frees"
    );
}

#[test]
fn like_jobs_that_find_no_room_wait_for_the_same_reason() {
    let mut s = cluster(1, 1);
    let first = submit(&mut s, with_gpus(spec("a", ""), 1, 0));
    let second = submit(&mut s, with_gpus(spec("b", ""), 1, 0));
    let third = submit(&mut s, with_gpus(spec("c", ""), 1, 0));
    settle(&mut s);
    let placed: Vec<&String> = [&first, &second, &third]
        .into_iter()
        .filter(|j| !live_on(&s, j).is_empty())
        .collect();
    assert_eq!(placed, vec![&first], "one GPU, the oldest job");
    let (b, c) = (
        &s.jobs[&second].pending_reason,
        &s.jobs[&third].pending_reason,
    );
    assert!(b.contains("GPU"), "{b}");
    assert_eq!(b, c);
}

#[test]
fn cancel_drain_cordon_and_gpu_failure() {
    let mut s = cluster(2, 2);
    let j = submit(&mut s, with_gpus(spec("j", "tasks = 2"), 1, 0));
    s.apply(Command::SetNodeScheduling {
        node: "n1".into(),
        cordoned: true,
        drain_deadline_ms: None,
    });
    settle(&mut s);
    assert!(
        live_on(&s, &j).iter().all(|(_, n)| n == "n0"),
        "cordoned n1 takes nothing"
    );
    s.apply(Command::SetNodeScheduling {
        node: "n1".into(),
        cordoned: false,
        drain_deadline_ms: None,
    });
    // Drain n0 now: its allocations are asked to stop and placed on n1 once stopped.
    s.apply(Command::SetNodeScheduling {
        node: "n0".into(),
        cordoned: true,
        drain_deadline_ms: Some(0),
    });
    let on_n0 = live_on(&s, &j);
    assert!(on_n0
        .iter()
        .all(|(id, _)| s.allocs[id].desired == DesiredState::Stop));
    for (id, _) in &on_n0 {
        report(&mut s, id, AllocState::Stopped, None);
    }
    assert!(s.node_scheduling["n0"]
        .drain
        .as_ref()
        .expect("drain")
        .completed_at_ms
        .is_some());
    settle(&mut s);
    let moved = live_on(&s, &j);
    assert_eq!(moved.len(), 2);
    assert!(moved.iter().all(|(_, n)| n == "n1"));
    // A failed GPU stops its allocation and is not used again.
    let (victim, _) = moved
        .iter()
        .find(|(id, _)| s.allocs[id].gpus == [gpu("n1", 0)])
        .expect("on gpu 0")
        .clone();
    let r = s.apply(Command::TransitionGpuHealth {
        node: "n1".into(),
        gpu: gpu("n1", 0),
        from: GpuHealth::Healthy,
        to: GpuHealth::Failed,
        reason: "XID 79".into(),
    });
    assert!(matches!(
        r,
        CommandResult::GpuHealthSet { changed: true, .. }
    ));
    assert_eq!(s.allocs[&victim].desired, DesiredState::Stop);
    report(&mut s, &victim, AllocState::Stopped, None);
    settle(&mut s);
    assert_eq!(live_on(&s, &j).len(), 1, "no healthy GPU is free for it");
    assert!(
        s.jobs[&j].pending_reason.contains("1 unhealthy"),
        "{}",
        s.jobs[&j].pending_reason
    );
    // Cancel: everything is asked to stop, nothing is placed again.
    s.apply(Command::CancelJob { job: j.clone() });
    assert_eq!(s.jobs[&j].status, JobStatus::Cancelled);
    assert!(live_on(&s, &j)
        .iter()
        .all(|(id, _)| s.allocs[id].desired == DesiredState::Stop));
}

#[test]
fn a_job_that_can_never_fit_says_why() {
    let mut s = cluster(2, 8);
    let mut big = with_gpus(spec("big", "tasks = 2\ngang = true"), 8, 0);
    big.resources.gpu_models = vec!["A100".into()];
    let j = submit(&mut s, big);
    settle(&mut s);
    assert_eq!(s.jobs[&j].status, JobStatus::Pending);
    assert!(
        s.jobs[&j]
            .pending_reason
            .contains("no node has a GPU of model [A100]"),
        "{}",
        s.jobs[&j].pending_reason
    );
    let mut huge = with_gpus(spec("huge", ""), 1, 0);
    huge.resources.cpu_millicores = 1_000_000;
    let h = submit(&mut s, huge);
    settle(&mut s);
    let why = &s.jobs[&h].pending_reason;
    assert!(
        why.contains("can never run") && why.contains("needs 1000000 mCPU"),
        "{why}"
    );
    let mut zoned = with_gpus(spec("zoned", ""), 1, 0);
    zoned.constraints = vec![crate::job::Constraint {
        label: "zone".into(),
        operator: crate::job::ConstraintOp::Equals,
        values: vec!["z1".into()],
    }];
    let z = submit(&mut s, zoned);
    settle(&mut s);
    assert_eq!(live_on(&s, &z)[0].1, "n1", "constraints hold");
}

#[test]
fn the_format_2_state_migrates() {
    let mut s = cluster(1, 1);
    s.apply(Command::KvPut {
        key: "k".into(),
        value: b"v".to_vec(),
        expected_revision: None,
    });
    let v2 = crate::state::v2::ClusterState {
        revision: s.revision,
        kv: s.kv.clone(),
        controllers: s.controllers.clone(),
        nodes: s.nodes.clone(),
        node_events: s.node_events.clone(),
        cluster_level: 2,
        clock_unix_ms: s.clock_unix_ms,
        sessions: s.sessions.clone(),
        pending_restore: None,
    };
    let bytes = crate::codec::encode_as("cluster state", 2, &v2).expect("encode");
    let back = ClusterState::decode(&bytes).expect("migrates");
    assert_eq!(back.revision, s.revision);
    assert_eq!(back.kv, s.kv);
    assert_eq!(back.nodes, s.nodes);
    assert!(back.jobs.is_empty() && back.allocs.is_empty());
    assert_eq!(back.counted_bytes(), {
        let mut t = s.clone();
        t.cluster_level = 2;
        t.counted_bytes()
    });
    // And the current format round-trips with jobs, allocations and usage rebuilt.
    let j = submit(&mut s, with_gpus(spec("j", ""), 1, 0));
    settle(&mut s);
    let again = ClusterState::decode(&s.encode().expect("encode")).expect("decode");
    assert_eq!(again, s);
    assert_eq!(again.node_usage("n0").expect("usage").allocs, 1);
    assert_eq!(live_on(&again, &j).len(), 1);
}

/// Checks that no GPU, CPU or memory is over-committed by the live allocations.
fn assert_within_capacity(s: &ClusterState) {
    let mut gpus: BTreeMap<&str, u32> = BTreeMap::new();
    let mut cpu: BTreeMap<&str, u64> = BTreeMap::new();
    for a in s.allocs.values().filter(|a| a.holds_capacity()) {
        for g in &a.gpus {
            *gpus.entry(g).or_default() += u32::from(a.gpu_milli);
        }
        *cpu.entry(&a.node).or_default() += a.cpu_millicores;
    }
    for (g, m) in gpus {
        assert!(m <= 1000, "GPU {g} holds {m} milli");
    }
    for (n, c) in cpu {
        assert!(c <= 64_000, "node {n} holds {c} mCPU");
    }
}

/// Stale plans refused across the property test's cases (it must exercise refusals).
static REFUSED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn stale_plans_are_refused_in_some_cases() {
    stale_plans_never_over_commit();
    assert!(REFUSED.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Plans built from stale views (each round from an older copy of the state) and
    /// applied in any order never over-commit a GPU or a node.
    #[test]
    fn stale_plans_never_over_commit(
        shapes in proptest::collection::vec((0u32..4, 0u32..3, 1u32..3), 1..12),
        order in proptest::collection::vec(any::<prop::sample::Index>(), 1..40),
        ends in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut s = cluster(2, 2);
        for (i, (kind, milli, tasks)) in shapes.iter().enumerate() {
            let (gpus, share) = match kind {
                0 => (1, 0),
                1 => (2, 0),
                2 => (0, 250 + 250 * milli),
                _ => (0, 0),
            };
            let gang = if *tasks > 1 && i % 2 == 0 { "gang = true\n" } else { "" };
            submit(&mut s, with_gpus(spec(&format!("j{i}"), &format!("{gang}tasks = {tasks}")), gpus, share));
        }
        // Stale views: plans computed from copies taken at different points.
        let mut views = vec![s.clone()];
        let mut plans: Vec<Command> = Vec::new();
        let (mut placed, mut refused) = (0, 0);
        for (step, pick) in order.iter().enumerate() {
            let view = &views[pick.index(views.len())];
            let config = RoundConfig { max_jobs: 1 + step % 3, ..RoundConfig::default() };
            plans.extend(schedule_round(view, &config).commands);
            if let Some(c) = plans.pop() {
                match s.apply(c) {
                    CommandResult::AllocationsPlaced { .. } => placed += 1,
                    CommandResult::PlacementRefused { .. } => refused += 1,
                    _ => {}
                }
                assert_within_capacity(&s);
            }
            if step % 3 == 0 {
                // Some allocations end, freeing room for other stale plans.
                for e in &ends {
                    let live: Vec<String> = s.allocs.values().filter(|a| !a.state.is_terminal()).map(|a| a.id.clone()).collect();
                    if !live.is_empty() {
                        let id = &live[e.index(live.len())];
                        report(&mut s, id, AllocState::Complete, Some(0));
                    }
                }
                views.push(s.clone());
            }
        }
        for c in plans {
            match s.apply(c) {
                CommandResult::AllocationsPlaced { .. } => placed += 1,
                CommandResult::PlacementRefused { .. } => refused += 1,
                _ => {}
            }
            assert_within_capacity(&s);
        }
        prop_assert!(placed > 0, "some plan applied ({refused} refused)");
        REFUSED.fetch_add(refused, std::sync::atomic::Ordering::Relaxed);
        // The derived usage matches a rebuild from scratch.
        let rebuilt = ClusterState::decode(&s.encode().expect("encode")).expect("decode");
        for n in ["n0", "n1"] {
            prop_assert_eq!(s.node_usage(n), rebuilt.node_usage(n));
        }
    }
}

#[test]
fn a_gang_whose_member_completed_runs_again_whole_after_another_fails() {
    let mut s = cluster(2, 8);
    let g = submit(
        &mut s,
        with_gpus(
            spec(
                "gang",
                "tasks = 2\ngang = true\nreschedule = { attempts = 1, delay = \"1s\" }",
            ),
            8,
            0,
        ),
    );
    settle(&mut s);
    let members = live_on(&s, &g);
    assert_eq!(members.len(), 2);
    report(&mut s, &members[0].0, AllocState::Complete, Some(0));
    report(&mut s, &members[1].0, AllocState::Failed, Some(1));
    stamp(&mut s, 1_000_000 + 10_000);
    settle(&mut s);
    assert_eq!(
        live_on(&s, &g).len(),
        2,
        "placed again whole, the completed rank too"
    );
    assert_eq!(s.jobs[&g].status, JobStatus::Running);
}

#[test]
fn absurd_requests_are_refused_not_overflowed() {
    let huge = spec("huge", "");
    let mut bad = huge.clone();
    bad.resources.cpu_millicores = u64::MAX - 10;
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("resources.cpu_millicores"));
    // A placement that would overflow a node's counters is refused, not wrapped.
    let mut s = cluster(1, 1);
    let j = submit(&mut s, huge);
    let r = s.apply(Command::PlaceAllocations {
        job: j,
        placements: vec![NewAllocation {
            task: 0,
            node: "n0".into(),
            gpus: vec![],
            gpu_milli: 0,
            cpu_millicores: 1000,
            memory_mib: 1024,
            rendezvous: None,
        }],
    });
    assert!(
        matches!(r, CommandResult::AllocationsPlaced { .. }),
        "{r:?}"
    );
    assert_within_capacity(&s);
}

#[test]
fn a_node_near_its_allocation_limit_takes_what_fits_and_no_plan_is_refused() {
    let mut s = cluster(2, 0);
    let tiny = |name: &str, tasks: usize, gang: bool, zone: Option<&str>| {
        let mut j = spec(name, &format!("tasks = {tasks}\ngang = {gang}"));
        j.resources.cpu_millicores = 10;
        j.resources.memory_mib = 1;
        if let Some(z) = zone {
            j.constraints = vec![crate::job::Constraint {
                label: "zone".into(),
                operator: crate::job::ConstraintOp::Equals,
                values: vec![z.into()],
            }];
        }
        j.validate().expect("valid");
        j
    };
    let filler = submit(
        &mut s,
        tiny("filler", MAX_ALLOCS_PER_NODE - 1, false, Some("z0")),
    );
    settle(&mut s);
    assert_eq!(live_on(&s, &filler).len(), MAX_ALLOCS_PER_NODE - 1);
    // n0 has one slot left: a job of 3 bound to it gets one task placed, the rest wait;
    // then a gang bound to it waits whole, and a free gang goes whole to n1. No round
    // sends a plan that apply refuses.
    let three = submit(&mut s, tiny("three", 3, false, Some("z0")));
    let bound = submit(&mut s, tiny("bound-gang", 2, true, Some("z0")));
    let free = submit(&mut s, tiny("free-gang", 2, true, None));
    for _ in 0..3 {
        let round = schedule_round(&s, &RoundConfig::default());
        for c in round.commands {
            let result = s.apply(c);
            assert!(
                !matches!(result, CommandResult::PlacementRefused { .. }),
                "{result:?}"
            );
        }
    }
    assert_eq!(live_on(&s, &three).len(), 1);
    let why = &s.jobs[&three].pending_reason;
    assert!(why.contains("runs 512 allocations, its limit"), "{why}");
    assert!(live_on(&s, &bound).is_empty());
    let on: Vec<String> = live_on(&s, &free).into_iter().map(|(_, n)| n).collect();
    assert_eq!(on, ["n1", "n1"]);
}

#[test]
fn a_node_that_is_not_down_is_not_removed_while_it_holds_work() {
    let mut s = cluster(2, 8);
    let j = submit(&mut s, with_gpus(spec("j", ""), 1, 0));
    settle(&mut s);
    let (alloc, node) = live_on(&s, &j)[0].clone();
    let before = s.digest().expect("digest");
    match s.apply(Command::RemoveNode { node: node.clone() }) {
        CommandResult::NodeBusy {
            allocations: 1,
            health: NodeHealth::Ready,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(s.digest().expect("digest"), before, "nothing changed");
    assert_eq!(s.allocs[&alloc].state, AllocState::Pending);
    // Down, its work is lost (and placed elsewhere): now it may go.
    s.apply(Command::TransitionNodeHealth {
        node: node.clone(),
        from: NodeHealth::Ready,
        to: NodeHealth::Down,
        reason: "silent".into(),
    });
    assert!(matches!(
        s.apply(Command::RemoveNode { node }),
        CommandResult::NodeRemoved { .. }
    ));
}

#[test]
fn a_pinned_input_is_refused_once_its_object_was_put_again() {
    use crate::jobs::{accepted_revision, check_pinned_version, job_id};
    let id = job_id("train-my-model", 41);
    assert_eq!(id, "train-my-model-41");
    assert_eq!(accepted_revision(&id), Some(41));
    assert_eq!(accepted_revision("no-revision-here"), None);
    // Created before or at the job's acceptance: the pinned version.
    assert!(check_pinned_version(&id, "m@3", 12).is_ok());
    assert!(check_pinned_version(&id, "m@3", 41).is_ok());
    // Created later: the object was deleted and put again, the number reused.
    let e = check_pinned_version(&id, "m@3", 42).expect_err("refused");
    assert!(
        e.contains("revision 42") && e.contains("not the version the job pinned"),
        "{e}"
    );
    assert!(check_pinned_version("bad", "m@3", 1).is_err());
}
