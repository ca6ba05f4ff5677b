//! A rolling upgrade, one controller at a time, to a build that knows one more command kind
//! (the test-only `steward-next`, feature level 5): the new kind is not proposed while any
//! member runs the current build, nothing stalls at any step, and once every member runs
//! the new build the cluster's level rises and the new kind is applied everywhere.

use std::time::Duration;

use steward_proto::v1::{
    AddLearnerRequest, KvGetRequest, KvPutRequest, PromoteRequest, ReadConsistency,
    TransferLeaderRequest,
};
use steward_tests::{steward_next_bin, wait_for, ProcCluster};

const PROBE_KEY: &str = "steward/level-probe";

/// A write succeeds and every running controller converges: nothing stalls.
async fn still_moving(cluster: &ProcCluster, step: &str, n: &mut u64) -> anyhow::Result<()> {
    *n += 1;
    let key = format!("upgrade/{n:03}");
    wait_for(
        &format!("a write after {step}"),
        Duration::from_secs(30),
        || {
            let key = key.clone();
            async move {
                for id in cluster
                    .nodes
                    .keys()
                    .copied()
                    .filter(|id| cluster.is_running(*id))
                {
                    if let Ok(mut c) = cluster.client(id).await {
                        let put = c
                            .kv_put(KvPutRequest {
                                key: key.clone(),
                                value: step.as_bytes().to_vec(),
                                expected_revision: None,
                                request_id: None,
                            })
                            .await;
                        if put.is_ok() {
                            return Some(());
                        }
                    }
                }
                None
            }
        },
    )
    .await?;
    cluster.wait_converged(Duration::from_secs(30)).await?;
    Ok(())
}

async fn cluster_level(cluster: &ProcCluster) -> anyhow::Result<u32> {
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    Ok(cluster
        .local_status(leader)
        .await
        .ok_or_else(|| anyhow::anyhow!("status"))?
        .cluster_level)
}

async fn probe_on(cluster: &ProcCluster, id: u64) -> Option<String> {
    let mut c = cluster.client(id).await.ok()?;
    let r = c
        .kv_get(KvGetRequest {
            key: PROBE_KEY.into(),
            consistency: ReadConsistency::Stale as i32,
        })
        .await
        .ok()?;
    r.into_inner()
        .entry
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_controller_at_a_time_to_a_build_with_a_new_command_kind() -> anyhow::Result<()> {
    let Some(next) = steward_next_bin() else {
        if std::env::var("STEWARD_REQUIRE_ALL_TESTS").as_deref() == Ok("1") {
            panic!("steward-next is not built (`make build-next`; `make test` builds it), and STEWARD_REQUIRE_ALL_TESTS=1");
        }
        eprintln!("SKIPPED rolling upgrade: steward-next is not built (`make build-next`)");
        return Ok(());
    };
    let mut cluster = ProcCluster::start(3, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let mut n = 0;
    still_moving(&cluster, "start", &mut n).await?;
    wait_for("cluster level 4", Duration::from_secs(20), || async {
        (cluster_level(&cluster).await.ok()? == 4).then_some(())
    })
    .await?;

    // A fourth controller runs the new build, joins, and leads.
    let (raft_addr, api_addr) = cluster.add_node(4)?;
    cluster.nodes.get_mut(&4).expect("node 4").bin = Some(next.clone());
    cluster.spawn(4)?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let mut c = cluster.client(leader).await?;
    c.add_learner(AddLearnerRequest {
        id: 4,
        raft_addr,
        api_addr,
    })
    .await?;
    c.promote(PromoteRequest { id: 4 }).await?;
    c.transfer_leader(TransferLeaderRequest { to: 4 }).await?;
    wait_for("controller 4 to lead", Duration::from_secs(20), || async {
        (cluster.wait_leader(Duration::from_secs(5)).await.ok()?.0 == 4).then_some(())
    })
    .await?;
    still_moving(&cluster, "a new-build leader", &mut n).await?;
    wait_for("the probe to wait", Duration::from_secs(10), || async {
        cluster
            .log_text(4)
            .contains("level probe waits for cluster level 5")
            .then_some(())
    })
    .await?;

    // Upgrade the other three, one at a time.
    for id in 1..=3u64 {
        assert_eq!(
            cluster_level(&cluster).await?,
            4,
            "the level rose while controller {id} still runs the current build"
        );
        for member in 1..=4 {
            assert_eq!(
                probe_on(&cluster, member).await,
                None,
                "the new kind was applied while controller {id} runs the current build"
            );
        }
        assert_eq!(
            cluster.terminate(id, Duration::from_secs(10)),
            Some(0),
            "controller {id} stops cleanly"
        );
        cluster.nodes.get_mut(&id).expect("node").bin = Some(next.clone());
        cluster.spawn(id)?;
        still_moving(&cluster, &format!("upgrading controller {id}"), &mut n).await?;
    }

    // Every member runs the new build: the level rises and the new kind applies everywhere.
    wait_for("cluster level 5", Duration::from_secs(20), || async {
        (cluster_level(&cluster).await.ok()? == 5).then_some(())
    })
    .await?;
    wait_for(
        "the probe on every controller",
        Duration::from_secs(20),
        || async {
            for id in 1..=4 {
                probe_on(&cluster, id).await?;
            }
            Some(())
        },
    )
    .await?;
    still_moving(&cluster, "the upgrade", &mut n).await?;
    Ok(())
}
