//! Membership 3 -> 4 -> 5 -> remove the leader -> back to 3, with writes flowing
//! throughout and none lost; then a leadership transfer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use steward_proto::v1::{
    AddLearnerRequest, PromoteRequest, RemovePeerRequest, TransferLeaderRequest,
};
use steward_tests::{wait_for, ProcCluster};

use crate::common::{assert_all_present, write_until};

async fn with_any<T, F, Fut>(cluster: &ProcCluster, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut(steward_proto::v1::admin_client::AdminClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let ids: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| cluster.is_running(*id))
        .collect();
    let mut last = String::new();
    for _ in 0..20 {
        for id in &ids {
            if let Ok(c) = cluster.client(*id).await {
                match f(c).await {
                    Ok(v) => return Ok(v),
                    Err(s) if s.code() == tonic::Code::Unavailable => {
                        last = s.message().to_string()
                    }
                    Err(s) => anyhow::bail!("{what}: {s}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("{what}: {last}")
}

async fn voters(cluster: &ProcCluster) -> anyhow::Result<Vec<u64>> {
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let s = cluster
        .local_status(leader)
        .await
        .ok_or_else(|| anyhow::anyhow!("status"))?;
    Ok(s.members
        .iter()
        .filter(|m| m.role == 1)
        .map(|m| m.id)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_remove_leader_shrink_to_three() -> anyhow::Result<()> {
    let mut cluster = ProcCluster::start(3, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    for id in [4, 5] {
        cluster.add_node(id)?;
    }
    let all_addrs = (1..=5)
        .map(|id| cluster.node(id).api_addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|c| {
            tokio::spawn(write_until(
                all_addrs.clone(),
                format!("m/{c}/"),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    // Writes are flowing before the first membership change.
    wait_for("writes before growing", Duration::from_secs(30), || {
        let now = acked.load(Ordering::Relaxed);
        async move { (now >= 20).then_some(()) }
    })
    .await?;

    for id in [4u64, 5] {
        cluster.spawn(id)?;
        let (raft_addr, api_addr) = (
            cluster.node(id).raft_addr.clone(),
            cluster.node(id).api_addr.clone(),
        );
        with_any(&cluster, "add-learner", |mut c| {
            let req = AddLearnerRequest {
                id,
                raft_addr: raft_addr.clone(),
                api_addr: api_addr.clone(),
            };
            async move { c.add_learner(req).await }
        })
        .await?;
        with_any(&cluster, "promote", |mut c| async move {
            c.promote(PromoteRequest { id }).await
        })
        .await?;
        let v = voters(&cluster).await?;
        assert!(v.contains(&id), "{id} is a voter: {v:?}");
    }
    assert_eq!(voters(&cluster).await?.len(), 5);

    // Remove the leader itself.
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    with_any(&cluster, "remove leader", |mut c| async move {
        c.remove_peer(RemovePeerRequest { id: leader }).await
    })
    .await?;
    cluster.kill(leader);
    let (new_leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    assert_ne!(new_leader, leader);
    // And one follower, back to 3.
    let v = voters(&cluster).await?;
    assert_eq!(v.len(), 4, "{v:?}");
    let follower = *v.iter().find(|id| **id != new_leader).expect("a follower");
    with_any(&cluster, "remove follower", |mut c| async move {
        c.remove_peer(RemovePeerRequest { id: follower }).await
    })
    .await?;
    cluster.kill(follower);
    let v = voters(&cluster).await?;
    assert_eq!(v.len(), 3, "{v:?}");

    // Writes kept flowing: wait for a few more, then stop.
    let n = acked.load(Ordering::Relaxed);
    wait_for("writes after shrinking", Duration::from_secs(30), || {
        let now = acked.load(Ordering::Relaxed);
        async move { (now >= n + 20).then_some(()) }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in writers {
        all.extend(w.await?);
    }
    eprintln!(
        "membership test: {} writes acknowledged, {n} before shrinking",
        all.len()
    );
    assert!(
        all.len() as u64 >= n + 20,
        "only {} writes acknowledged",
        all.len()
    );
    cluster.wait_converged(Duration::from_secs(30)).await?;
    for id in &v {
        assert_all_present(&cluster.node(*id).api_addr, "m/", &all).await;
    }

    // Leadership transfer to a chosen voter.
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let to = *v.iter().find(|id| **id != leader).expect("another voter");
    let reply = with_any(&cluster, "transfer", |mut c| async move {
        c.transfer_leader(TransferLeaderRequest { to }).await
    })
    .await?
    .into_inner();
    assert_eq!(reply.leader_id, to);
    Ok(())
}
