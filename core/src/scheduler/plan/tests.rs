//! Unit and property tests of queue scheduling and preemption.

use proptest::prelude::*;

use super::*;
use crate::scheduler::frag::TypicalTasks;
use crate::scheduler::policy::Policy;

fn models() -> GpuModels {
    let mut m = GpuModels::default();
    for name in ["T4", "A100", "H100"] {
        m.intern(name).expect("model");
    }
    m
}

fn node(name: &str, model: u8, gpus: u8) -> NodeState {
    NodeState::new(name.into(), model, gpus, 32_000, 128_000).expect("node")
}

fn whole(k: u8) -> TaskShape {
    TaskShape {
        min_gpu_mem_mib: 0,
        cpu: 2000,
        mem: 4000,
        num_gpu: k,
        gpu_milli: 1000,
        models: 0,
    }
}

fn job(name: &str, priority: u32, task: TaskShape, count: u32, gang: bool) -> PendingJob {
    PendingJob {
        name: name.into(),
        priority,
        weight: 1.0,
        task,
        count,
        gang,
        locality: Vec::new(),
    }
}

fn scheduler(policy: Policy, n: usize) -> Scheduler {
    Scheduler::new(policy, TypicalTasks::default(), (0..n as u32).collect(), 7)
}

#[test]
fn explanations_name_the_problem() {
    let m = models();
    let mut t4 = node("t4-node", 0, 4);
    let mut task = whole(4);
    task.models = (1 << 1) | (1 << 2);
    assert_eq!(
        explain(&t4, &task, &m).as_deref(),
        Some("gpu model T4 not in [A100, H100]")
    );
    t4.place(&whole(2), &[0, 1]);
    assert_eq!(
        explain(&t4, &whole(4), &m).as_deref(),
        Some("needs 4 whole GPUs, 2 free")
    );
    t4.mark_unhealthy(2);
    assert_eq!(
        explain(&t4, &whole(2), &m).as_deref(),
        Some("needs 2 whole GPUs, 1 free (1 unhealthy)")
    );
    t4.cordoned = true;
    assert_eq!(
        explain(&t4, &whole(1), &m).as_deref(),
        Some("node is cordoned")
    );
}

#[test]
fn gang_is_all_or_nothing_and_exclusions_hold() {
    let m = models();
    let mut nodes = vec![node("a", 0, 8), node("b", 0, 8), node("c", 0, 8)];
    nodes[2].cordoned = true;
    nodes[1].mark_unhealthy(0);
    let queue = vec![
        job("big-gang", 500, whole(8), 2, true),
        job("fits", 400, whole(4), 2, true),
    ];
    let mut s = scheduler(Policy::BestFit, nodes.len());
    let d = schedule(&mut s, &mut nodes, &queue, &m);
    assert!(
        matches!(&d[0], Decision::Rejected { job, .. } if job == "big-gang"),
        "{d:?}"
    );
    match &d[1] {
        Decision::Placed {
            placements,
            unplaced: 0,
            ..
        } => {
            assert!(
                placements.iter().all(|p| p.node != 2),
                "never on a cordoned node"
            );
            assert!(
                placements
                    .iter()
                    .all(|p| !(p.node == 1 && p.gpus.contains(&0))),
                "never an unhealthy GPU"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn multi_gpu_tasks_prefer_one_topology_group() {
    let mut n = node("a", 0, 8);
    n.gpu_group = [0, 0, 0, 0, 1, 1, 1, 1];
    n.place(&whole(1), &[0]);
    let mut s = scheduler(Policy::BestFit, 1);
    let p = s.place(&[n], &whole(4)).expect("fits");
    assert_eq!(p.gpus, vec![4, 5, 6, 7], "the intact group");
}

#[test]
fn locality_breaks_ties() {
    let nodes = vec![node("a", 0, 8), node("b", 0, 8)];
    let mut s = scheduler(Policy::BestFit, 2);
    assert_eq!(
        s.place_near(&nodes, &whole(1), &[0.0, 1.0]).map(|p| p.node),
        Some(1)
    );
    assert_eq!(
        s.place_near(&nodes, &whole(1), &[]).map(|p| p.node),
        Some(0)
    );
}

#[test]
fn preemption_picks_the_fewest_victims() {
    let mut nodes = vec![node("a", 0, 4), node("b", 0, 4)];
    let one = whole(1);
    let two = whole(2);
    let mut running = Vec::new();
    for (i, (n, shape, gpus, prio)) in [
        (0, one, vec![0], 10),
        (0, one, vec![1], 10),
        (0, two, vec![2, 3], 10),
        (1, two, vec![0, 1], 10),
        (1, two, vec![2, 3], 900),
    ]
    .into_iter()
    .enumerate()
    {
        nodes[n].place(&shape, &gpus);
        running.push(RunningTask {
            id: format!("r{i}"),
            node: n,
            gpus,
            shape,
            priority: prio,
            preemptible: true,
        });
    }
    let plan = plan_preemption(&nodes, &running, &whole(2), 500, 100).expect("a plan");
    assert_eq!(plan.victims.len(), 1);
    assert!(plan
        .victims
        .iter()
        .all(|&v| running[v].priority + 100 <= 500));
    assert!(plan_preemption(&nodes, &running, &whole(4), 500, 100).is_some());
    assert!(
        plan_preemption(&nodes, &running, &whole(4), 50, 100).is_none(),
        "gap not met"
    );
}

fn arb_task() -> impl Strategy<Value = TaskShape> {
    prop_oneof![
        (1u8..=4).prop_map(whole),
        (100u16..=900).prop_map(|m| TaskShape {
            min_gpu_mem_mib: 0,
            cpu: 1000,
            mem: 1000,
            num_gpu: 1,
            gpu_milli: m,
            models: 0
        }),
        (500i64..=8000).prop_map(|c| TaskShape {
            min_gpu_mem_mib: 0,
            cpu: c,
            mem: 1000,
            num_gpu: 0,
            gpu_milli: 0,
            models: 0
        }),
    ]
}

fn arb_cluster() -> impl Strategy<Value = Vec<NodeState>> {
    proptest::collection::vec((1u8..=8, 0u8..3, any::<bool>()), 1..6).prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (g, m, cordon))| {
                let mut n = node(&format!("n{i}"), m, g);
                n.cordoned = cordon && i > 0;
                n
            })
            .collect()
    })
}

fn arb_queue() -> impl Strategy<Value = Vec<PendingJob>> {
    proptest::collection::vec((0u32..1000, arb_task(), 1u32..4, any::<bool>()), 1..12).prop_map(
        |jobs| {
            jobs.into_iter()
                .enumerate()
                .map(|(i, (p, t, c, g))| job(&format!("j{i}"), p, t, c, g))
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn queue_scheduling_invariants(cluster in arb_cluster(), queue in arb_queue(), pol in 0usize..7) {
        let policy = Policy::ALL[pol];
        let m = models();
        let mut nodes = cluster.clone();
        let mut s = scheduler(policy, nodes.len());
        let decisions = schedule(&mut s, &mut nodes, &queue, &m);
        // Replay the placements on the original cluster: nothing is allocated twice and
        // no capacity is exceeded (place() panics on a GPU underflow).
        let mut replay = cluster.clone();
        let by_name = |name: &str| queue.iter().find(|j| j.name == name).expect("job");
        let mut served = Vec::new();
        for d in &decisions {
            match d {
                Decision::Placed { job, placements, unplaced, .. } => {
                    let j = by_name(job);
                    prop_assert!(!(j.gang && *unplaced > 0), "gang {} partly placed", job);
                    prop_assert_eq!(placements.len() as u32 + unplaced, j.count);
                    for p in placements {
                        prop_assert!(!replay[p.node].cordoned);
                        let gpus = &p.gpus;
                        prop_assert_eq!(gpus.len(), if j.task.wants_gpu() { j.task.num_gpu as usize } else { 0 });
                        let mut uniq = gpus.clone();
                        uniq.sort_unstable();
                        uniq.dedup();
                        prop_assert_eq!(uniq.len(), gpus.len(), "a task got one GPU twice");
                        prop_assert!(fits(&replay[p.node], &j.task));
                        replay[p.node].place(&j.task, gpus);
                        prop_assert!(replay[p.node].cpu_free >= 0 && replay[p.node].mem_free >= 0);
                    }
                    served.push(j.priority);
                }
                Decision::Rejected { job, reasons } => {
                    let j = by_name(job);
                    prop_assert_eq!(reasons.len(), cluster.len());
                    // Priority order: a rejected single task did not fit on the state made
                    // only by jobs served before it (same or higher priority).
                    if j.count == 1 {
                        prop_assert!(replay.iter().all(|n| !fits(n, &j.task)), "{} rejected but fits", job);
                    }
                    served.push(j.priority);
                }
            }
        }
        prop_assert!(served.windows(2).all(|w| w[0] >= w[1]), "served out of priority order: {:?}", served);
        prop_assert_eq!(&replay, &nodes);
    }

    #[test]
    fn preemption_plans_are_sound(cluster in arb_cluster(), tasks in proptest::collection::vec((arb_task(), 0u32..1000, any::<bool>()), 0..16), want in arb_task(), prio in 0u32..1000, gap in 0u32..300) {
        let mut nodes = cluster;
        let mut running = Vec::new();
        let mut s = scheduler(Policy::BestFit, nodes.len());
        for (i, (t, p, pre)) in tasks.into_iter().enumerate() {
            if let Some(pl) = s.place(&nodes, &t) {
                nodes[pl.node].place(&t, &pl.gpus);
                s.node_changed(pl.node);
                running.push(RunningTask { id: format!("r{i}"), node: pl.node, gpus: pl.gpus, shape: t, priority: p, preemptible: pre });
            }
        }
        if let Some(plan) = plan_preemption(&nodes, &running, &want, prio, gap) {
            let mut after = nodes[plan.node].clone();
            for &v in &plan.victims {
                let r = &running[v];
                prop_assert!(r.preemptible && r.priority + gap <= prio, "victim {} not evictable", r.id);
                prop_assert_eq!(r.node, plan.node);
                after.remove(&r.shape, &r.gpus);
            }
            prop_assert!(fits(&after, &want), "the plan does not make room");
            prop_assert!(plan.victims.len() <= MAX_VICTIMS);
        }
    }
}
