//! 1,000 keys from 4 concurrent clients while the leader is SIGKILLed 3 times and
//! restarted: every acknowledged write survives on all three, the controllers converge to
//! the same applied index and state digest, and no term had two leaders. Beside them, the
//! chaos harness's KV workload (reads, writes and compare-and-sets on 4 contended keys)
//! records its history, which must be linearizable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use steward_chaos::check::linearizable;
use steward_chaos::workload::kv::{self, KvMix};
use steward_runtime::tls::ServerKind;
use steward_tests::{wait_for, ProcCluster};

use crate::common::{assert_all_present, assert_one_leader_per_term, write_all};

/// The KV workload's connections: the test admin, to a controller.
fn connector() -> kv::Connect {
    Arc::new(|addr: String| {
        Box::pin(async move {
            steward_tests::channel(&addr, ServerKind::Controller, Duration::from_secs(5))
                .await
                .ok()
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_three_leader_kills() -> anyhow::Result<()> {
    let mut cluster = ProcCluster::start(3, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let addrs = cluster.addrs();
    let acked = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let history = tokio::spawn(kv::run(
        KvMix::default(),
        addrs.split(',').map(str::to_string).collect(),
        connector(),
        stop.clone(),
    ));
    let mut writers = Vec::new();
    for c in 0..4 {
        let keys = (0..250)
            .map(|i| (format!("chaos/{c}/{i:04}"), format!("v{c}-{i}")))
            .collect();
        writers.push(tokio::spawn(write_all(addrs.clone(), keys, acked.clone())));
    }

    for round in 1..=3u64 {
        let target = round * 200;
        wait_for("writes to progress", Duration::from_secs(60), || {
            let n = acked.load(Ordering::Relaxed);
            async move { (n >= target).then_some(()) }
        })
        .await?;
        let (leader, term) = cluster.wait_leader(Duration::from_secs(20)).await?;
        cluster.kill(leader);
        let (new_leader, new_term) = cluster.wait_leader(Duration::from_secs(20)).await?;
        assert_ne!(new_leader, leader);
        assert!(new_term > term, "term must grow: {term} -> {new_term}");
        cluster.spawn(leader)?;
    }

    let mut all = Vec::new();
    for w in writers {
        all.extend(w.await?);
    }
    assert_eq!(all.len(), 1000, "every write is eventually acknowledged");
    let (applied, digest) = cluster.wait_converged(Duration::from_secs(30)).await?;
    // Concurrent writes share log entries (the proposer batches them), so the applied
    // index counts entries, not writes: it only has to cover the three elections' entries.
    assert!(applied >= 3, "applied index {applied}");
    assert_eq!(digest.len(), 64);
    for id in 1..=3 {
        assert_all_present(&cluster.node(id).api_addr, "chaos/", &all).await;
    }
    assert_one_leader_per_term(&cluster.leaderships());
    stop.cancel();
    let history = history.await?;
    let answered = history.iter().filter(|o| o.completed.is_some()).count();
    assert!(answered >= 100, "the KV workload got {answered} answers");
    match linearizable::check(&history) {
        Ok(checked) => eprintln!(
            "kv history: {} operations on {} keys ({} answered, {} dropped): linearizable",
            checked.ops, checked.keys, answered, checked.dropped
        ),
        Err(v) => panic!("{v}"),
    }
    Ok(())
}

/// The harness can fail: a follower cut off from Raft (nftables) keeps serving stale
/// reads (`READ_CONSISTENCY_STALE`, the bug of serving reads without the leader's quorum
/// check), while writes are acknowledged through the leader. The linearizability checker
/// must reject that history, naming a read that saw the past.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_stale_reads_from_a_partitioned_follower() -> anyhow::Result<()> {
    use steward_tests::netfilter::{skip_unless_available, RaftPartition};
    if !skip_unless_available("the_checker_catches_stale_reads") {
        return Ok(());
    }
    let cluster = ProcCluster::start_on(3, "", &[], true)?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let f = cluster.node(follower);
    let _partition = RaftPartition::isolate_controller(&cluster, follower)?;

    let stop = tokio_util::sync::CancellationToken::new();
    let writers = tokio::spawn(kv::run(
        KvMix {
            clients: 2,
            read_percent: 0,
            cas_percent: 0,
            ..KvMix::default()
        },
        vec![cluster.node(leader).api_addr.clone()],
        connector(),
        stop.clone(),
    ));
    let readers = tokio::spawn(kv::run(
        KvMix {
            clients: 2,
            first_client: 100,
            read_percent: 100,
            stale_reads: true,
            ..KvMix::default()
        },
        vec![f.api_addr.clone()],
        connector(),
        stop.clone(),
    ));
    // Every key written 20 times through the leader while the readers read throughout:
    // reads that began after an acknowledged write are bound to be among them.
    wait_for("writes to pile up", Duration::from_secs(30), || {
        let a = cluster.node(leader).api_addr.clone();
        async move {
            let mut c = steward_tests::admin_client(&a, Duration::from_secs(5))
                .await
                .ok()?;
            let r = c
                .kv_list(steward_proto::v1::KvListRequest {
                    prefix: "chaos/kv/".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            (r.entries.len() >= 4 && r.entries.iter().all(|e| e.version >= 20)).then_some(())
        }
    })
    .await?;
    stop.cancel();
    let mut history = writers.await?;
    history.extend(readers.await?);
    let stale = history
        .iter()
        .filter(|o| matches!(o.outcome, steward_chaos::history::Outcome::Read(_)))
        .count();
    assert!(stale > 0, "the partitioned follower answered no read");
    match linearizable::check(&history) {
        Err(v @ linearizable::Verdict::NotLinearizable { .. }) => {
            eprintln!("caught, as it must be:\n{v}");
        }
        other => panic!("stale reads passed the checker: {other:?}"),
    }
    Ok(())
}
