//! 1,000 keys from 4 concurrent clients while the leader is SIGKILLed 3 times and
//! restarted: every acknowledged write survives on all three, the controllers converge to
//! the same applied index and state digest, and no term had two leaders.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use steward_tests::{wait_for, ProcCluster};

use crate::common::{assert_all_present, assert_one_leader_per_term, write_all};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_three_leader_kills() -> anyhow::Result<()> {
    let mut cluster = ProcCluster::start(3, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let addrs = cluster.addrs();
    let acked = Arc::new(AtomicU64::new(0));
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
    Ok(())
}
