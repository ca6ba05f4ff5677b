//! The PR-gating subset of the chaos scenarios (`chaos/scenarios/`), run by the harness's
//! runner on a local cluster with every controller and agent in its own network namespace:
//! leader kill loop, minority partition, one-way partition, an agent partitioned but alive,
//! an agent lost under jobs, bit-rot under object reads. Every invariant must hold, and every fault must be seen by the
//! cluster (another leader or a higher term; an agent no longer ready), or it proved
//! nothing. Then the proof that the harness can fail: known bugs switched back on through
//! fail points (reads without the quorum check, a skipped fence) must be caught.
//!
//! Network namespaces need root: each test skips with the reason when it cannot make them,
//! and fails instead under `STEWARD_REQUIRE_ALL_TESTS=1`.

use std::time::Duration;

use steward_chaos::harness::netns;
use steward_chaos::run::{self, invariant, Bug, Report, RunOptions, Verdict};
use steward_chaos::scenario::Scenario;

fn scenario(name: &str) -> Scenario {
    let path = steward_tests::repo_root()
        .join("chaos/scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn run(scenario: &Scenario, seed: u64, bug: Option<Bug>) -> Report {
    let options = RunOptions {
        seed,
        bug,
        progress: true,
    };
    let report = run::run_local(scenario, &options)
        .await
        .unwrap_or_else(|e| panic!("scenario {} (seed {seed}): {e:#}", scenario.name));
    eprintln!("{}", run::render_text(&report));
    report
}

/// Runs the shipped scenario `name`: every invariant held, and every fault on the leader
/// was detected.
async fn passes(name: &str, seed: u64) {
    if !netns::skip_unless_available(name) {
        return;
    }
    let s = scenario(name);
    let report = run(&s, seed, None).await;
    assert!(
        report.passed(),
        "scenario {name} failed (seed {seed}):\n{}",
        run::render_text(&report)
    );
    for i in &report.invariants {
        assert_eq!(
            i.verdict,
            Verdict::Held,
            "{}: every invariant must be shown, not left undecided: {}",
            i.name,
            i.detail
        );
    }
    assert_eq!(
        report.faults.len(),
        s.firings().len(),
        "every firing recorded"
    );
    assert!(!report.faults.is_empty(), "no fault fired");
    for f in &report.faults {
        assert!(
            f.detect_ms.is_some(),
            "{} at {} ms on {:?}: no change of leader or term seen",
            f.action,
            f.at_ms,
            f.targets
        );
    }
    assert!(report.operations.ok >= 10, "{:?}", report.operations);
    if s.workload.objects.is_some() {
        let rf = report
            .invariant(invariant::RF_RESTORED)
            .expect("the object workload ran");
        assert!(
            rf.detail.starts_with('1'),
            "the bit-rot fault was not checked: {}",
            rf.detail
        );
    }
    if s.workload.kv.is_some() {
        assert!(report.operations.ok >= 100, "{:?}", report.operations);
    }
    if s.workload.jobs.is_some() {
        let moved = report
            .invariant(invariant::RESCHEDULED)
            .expect("the job workload ran");
        assert!(
            moved.verdict == Verdict::Held && !moved.detail.starts_with("0 tasks"),
            "the agent fault moved no task, so it proved nothing: {}",
            moved.detail
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_leader_kill_loop() {
    passes("leader-kill-loop", 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_minority_partition() {
    passes("minority-partition", 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_one_way_partition() {
    passes("one-way-partition", 13).await;
}

/// The harness can fail: with reads answered without the leader's quorum check (fail
/// point `read-skip-barrier`, the stale-read bug Jepsen found in etcd and Consul), a
/// short minority partition must end with the KV history rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_catches_reads_without_the_quorum_check() {
    if !netns::skip_unless_available("chaos_catches_reads_without_the_quorum_check") {
        return;
    }
    let mut s = scenario("minority-partition");
    s.duration = Duration::from_secs(20);
    s.faults[0].at = Duration::from_secs(5);
    s.faults[0].duration = Some(Duration::from_secs(8));
    s.faults[0].repeat = None;
    caught(
        &s,
        14,
        Bug::ReadSkipBarrier,
        invariant::LINEARIZABLE,
        "not linearizable",
    )
    .await;
}

/// Runs `scenario` with `bug` switched on: `invariant` must be violated, with a
/// counterexample that says `says`, and the run must fail.
async fn caught(scenario: &Scenario, seed: u64, bug: Bug, invariant: &str, says: &str) {
    let report = run(scenario, seed, Some(bug)).await;
    let verdict = report
        .invariant(invariant)
        .unwrap_or_else(|| panic!("no verdict on {invariant}: its workload did not run"));
    assert_eq!(
        verdict.verdict,
        Verdict::Violated,
        "{} went unnoticed:\n{}",
        bug.name(),
        run::render_text(&report)
    );
    assert!(verdict.detail.contains(says), "{}", verdict.detail);
    assert!(!report.passed());
}

/// Bit-rot in 8 chunk files of one agent while clients put and read objects: no read
/// returns a wrong byte, every acknowledged version reads back, and the scrubber finds all
/// 8 and repair restores the replicas within the scenario's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_bit_rot() {
    passes("bit-rot", 18).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_agent_partitioned_but_alive() {
    passes("agent-partitioned-alive", 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_agent_loss_with_jobs() {
    passes("agent-loss-under-load", 16).await;
}

/// The harness can fail: with the fence switched off in the agents and their shims (fail
/// point `agent-skip-fence`), an agent cut off from the rest keeps its tasks running while
/// they start elsewhere, and the agents' own records must show a task on two nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_catches_a_skipped_fence() {
    if !netns::skip_unless_available("chaos_catches_a_skipped_fence") {
        return;
    }
    let mut s = scenario("agent-partitioned-alive");
    s.duration = Duration::from_secs(40);
    s.faults[0].at = Duration::from_secs(15);
    s.faults[0].duration = Some(Duration::from_secs(15));
    caught(
        &s,
        17,
        Bug::AgentSkipFence,
        invariant::SINGLE_RUN,
        "at once",
    )
    .await;
}

/// The staging mode's code path, in CI: a local lab handed over to unit scripts, and an
/// inventory that reaches each host through `ip netns exec` instead of SSH. Everything the
/// run does to the nodes goes through the inventory: units started, killed, paused and
/// resumed by its commands, the partition as an nftables table installed over exec, the
/// task records and the controllers' Raft logs copied back with tar, the leaders read
/// from the units' logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_staging_mode_through_an_inventory() {
    use steward_chaos::staging::{run_staging, Inventory, LocalUnits};
    if !netns::skip_unless_available("chaos_staging_mode_through_an_inventory") {
        return;
    }
    let s = scenario("staging-smoke");
    let units = LocalUnits::start(&s).expect("a local lab as units");
    let inventory = Inventory::load(units.inventory_path()).expect("the inventory it wrote");
    assert_eq!(inventory.controllers.len(), 3);
    assert_eq!(inventory.agents.len(), 2);
    assert!(inventory.controllers[0]
        .exec
        .as_deref()
        .is_some_and(|e| e.starts_with("ip netns exec ")));
    let options = RunOptions {
        seed: 19,
        bug: None,
        progress: true,
    };
    let report = run_staging(&s, &inventory, &options)
        .await
        .unwrap_or_else(|e| panic!("staging run (seed 19): {e:#}"));
    eprintln!("{}", run::render_text(&report));
    assert!(report.passed(), "{}", run::render_text(&report));
    for i in &report.invariants {
        assert_eq!(i.verdict, Verdict::Held, "{}: {}", i.name, i.detail);
    }
    assert_eq!(report.faults.len(), 3, "every firing recorded");
    for f in &report.faults {
        assert!(f.error.is_none(), "{} not applied: {:?}", f.action, f.error);
    }
    // The leader kill was seen, through the units' logs as well as the status samples.
    assert!(
        report.faults[0].detect_ms.is_some(),
        "{:?}",
        report.faults[0]
    );
    let from_logs = tokio::task::block_in_place(|| {
        use steward_chaos::nodes::Nodes;
        steward_chaos::staging::StagingNodes::new(inventory.clone()).leaderships()
    });
    assert!(
        from_logs.iter().any(|(term, _)| *term >= 2),
        "the units' logs show no leader after the kill: {from_logs:?}"
    );
    // The partition moved tasks (their records came back over exec) and the replay read
    // the controllers' logs (copied back over exec).
    let moved = report.invariant(invariant::RESCHEDULED).expect("jobs ran");
    assert!(!moved.detail.starts_with("0 tasks"), "{}", moved.detail);
    let replay = report
        .invariant(invariant::NO_OVERCOMMIT)
        .expect("jobs ran");
    assert!(replay.detail.contains("replayed"), "{}", replay.detail);
    assert!(report.operations.ok >= 50, "{:?}", report.operations);
    assert!(
        report.undo_failures.is_empty(),
        "{:?}",
        report.undo_failures
    );
    // Nothing left behind on any host: no partition table, no netem qdisc.
    for host in inventory.controllers.iter().chain(&inventory.agents) {
        let exec = host
            .exec
            .as_deref()
            .expect("LocalUnits names each host's exec");
        let words: Vec<&str> = exec.split_whitespace().collect();
        let out = std::process::Command::new(words[0])
            .args(&words[1..])
            .arg(format!("nft list tables; tc qdisc show dev {}", host.iface))
            .output()
            .expect("the host's exec runs");
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {out:?}", host.address);
        assert!(
            !shown.contains("steward_chaos") && !shown.contains("netem"),
            "{} still has a fault: {shown}",
            host.address
        );
    }
    drop(units);
}
