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
