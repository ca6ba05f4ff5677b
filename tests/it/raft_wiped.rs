//! Restarting a controller whose data dir was wiped, under the same id, is refused with a
//! clear message; the rest of the group keeps working.

use std::time::Duration;

use steward_tests::{wait_for, ProcCluster};

use crate::common::Writer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_controller_is_refused() -> anyhow::Result<()> {
    let mut cluster = ProcCluster::start(3, "")?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    // Every controller has registered its incarnation.
    wait_for(
        "all incarnations recorded",
        Duration::from_secs(20),
        || async {
            let s = cluster.local_status(leader).await?;
            (s.members.len() == 3 && s.members.iter().all(|m| m.incarnation != 0)).then_some(())
        },
    )
    .await?;
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    assert_eq!(cluster.terminate(victim, Duration::from_secs(10)), Some(0));
    std::fs::remove_dir_all(&cluster.node(victim).data_dir)?;
    cluster.spawn(victim)?;
    let code = cluster.wait_exit(victim, Duration::from_secs(30));
    let log = cluster.log_text(victim);
    assert!(
        matches!(code, Some(c) if c != 0),
        "wiped controller must exit with an error, got {code:?}\n{log}"
    );
    assert!(log.contains("remove-peer"), "message names the fix:\n{log}");
    assert!(log.contains("new id"), "message names the fix:\n{log}");

    let mut w = Writer::new(&cluster.addrs());
    assert!(w.put("still-works", "yes").await);
    Ok(())
}
