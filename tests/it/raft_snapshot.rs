//! A controller stopped while 10,000 entries are written (snapshot and purge thresholds set
//! low) rejoins and converges through a snapshot install.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use steward_tests::{wait_for, ProcCluster};

use crate::common::{assert_all_present, write_all};

const LOW_THRESHOLDS: &str = "snapshot_after_entries = 500\nkeep_entries_after_snapshot = 100\nsnapshot_chunk_bytes = 65536\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_controller_catches_up_by_snapshot() -> anyhow::Result<()> {
    let mut cluster = ProcCluster::start(3, LOW_THRESHOLDS)?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let lagger = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.wait_converged(Duration::from_secs(20)).await?;
    let before = cluster
        .local_status(lagger)
        .await
        .expect("status")
        .last_log_index;
    assert_eq!(
        cluster.terminate(lagger, Duration::from_secs(10)),
        Some(0),
        "clean SIGTERM exit"
    );

    let addrs = cluster.addrs();
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..16)
        .map(|c| {
            let keys = (0..625)
                .map(|i| (format!("snap/{c:02}/{i:04}"), format!("{i}")))
                .collect();
            tokio::spawn(write_all(addrs.clone(), keys, acked.clone()))
        })
        .collect();
    let mut all = Vec::new();
    for w in writers {
        all.extend(w.await?);
    }
    assert_eq!(all.len(), 10_000);

    // The leader must have purged past what the stopped controller holds.
    wait_for(
        "the leader to purge its log",
        Duration::from_secs(30),
        || async {
            let s = cluster.local_status(leader).await?;
            (s.purged_index.unwrap_or(0) > before).then_some(())
        },
    )
    .await?;

    cluster.spawn(lagger)?;
    cluster.wait_converged(Duration::from_secs(60)).await?;
    let s = cluster.local_status(lagger).await.expect("status");
    assert!(
        s.snapshots_installed >= 1,
        "controller {lagger} caught up without a snapshot: {s:?}"
    );
    assert_all_present(&cluster.node(lagger).api_addr, "snap/", &all).await;
    Ok(())
}

/// A follower SIGKILLed again and again while it installs a multi-megabyte snapshot in small
/// chunks restarts every time (no hole between its stored snapshot and its log) and finally
/// converges with every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_killed_during_snapshot_installs_recovers() -> anyhow::Result<()> {
    use rand::Rng;
    let mut cluster = ProcCluster::start(
        3,
        "snapshot_after_entries = 300\nkeep_entries_after_snapshot = 50\nsnapshot_chunk_bytes = 32768\n",
    )?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let lagger = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.wait_converged(Duration::from_secs(20)).await?;
    cluster.kill(lagger);

    let mut all = write_round(cluster.addrs(), 0).await;
    let mut rng = rand::rng();
    for round in 1..=6 {
        cluster.spawn(lagger)?;
        let pause = rng.random_range(100..600);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        cluster.kill(lagger);
        // More writes, so the next install carries a newer snapshot.
        all.extend(write_round(cluster.addrs(), round).await);
    }
    assert_eq!(all.len(), 7 * 800);
    cluster.spawn(lagger)?;
    cluster
        .wait_converged(Duration::from_secs(90))
        .await
        .expect("the restarted follower converges");
    let s = cluster.local_status(lagger).await.expect("status");
    assert!(
        s.snapshots_installed >= 1,
        "controller {lagger} caught up without a snapshot: {s:?}"
    );
    assert_all_present(&cluster.node(lagger).api_addr, "big/", &all).await;
    let log = cluster.log_text(lagger);
    assert!(
        !log.contains("panicked") && !log.contains("StorageError"),
        "controller {lagger} reported a storage problem:\n{}",
        log.lines()
            .filter(|l| l.contains("panicked") || l.contains("StorageError"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// 800 keys of 4 KiB from 8 writers; the acknowledged ones.
async fn write_round(addrs: String, round: usize) -> Vec<(String, String)> {
    let value = "x".repeat(4096);
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|c| {
            let keys = (0..100)
                .map(|i| (format!("big/{round:02}/{c}/{i:03}"), format!("{i}{value}")))
                .collect();
            tokio::spawn(write_all(addrs.clone(), keys, acked.clone()))
        })
        .collect();
    let mut all = Vec::new();
    for w in writers {
        all.extend(w.await.expect("writer"));
    }
    all
}
