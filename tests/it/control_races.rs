//! Races of the control plane, each with a black-box test on real processes:
//!
//! - node health: an agent paused and resumed around `down_after` again and again ends
//!   `ready` (health transitions are conditional, and the detector reconciles with the
//!   committed state on every tick); a restored snapshot in which a live node is down is
//!   healed on the next tick.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;
use steward_proto::v1::ListNodesRequest;
use steward_tests::{spawn_agent, steward_cmd, wait_for, ProcCluster};

/// Fast liveness so that 100 pauses around `down_after` fit in about a minute.
const FAST_LIVENESS: &str = "[liveness]\nsuspect_after = \"300ms\"\ndown_after = \"600ms\"\n";
const AGENT_FLAGS: &[&str] = &["--heartbeat-interval", "100ms"];

/// The health the leader reports for `node`.
async fn node_health(cluster: &ProcCluster, node: &str) -> Option<String> {
    for id in cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| cluster.is_running(*id))
    {
        if let Ok(mut c) = cluster.client(id).await {
            if let Ok(r) = c
                .list_nodes(ListNodesRequest {
                    node_id: node.to_string(),
                    with_inventory: false,
                })
                .await
            {
                return r.into_inner().nodes.first().map(|n| n.health.clone());
            }
        }
    }
    None
}

async fn wait_registered(
    cluster: &ProcCluster,
    data_dir: &std::path::Path,
) -> anyhow::Result<String> {
    let id = wait_for("the node id", Duration::from_secs(20), || async {
        std::fs::read_to_string(data_dir.join("node-id"))
            .ok()
            .map(|s| s.trim().to_string())
    })
    .await?;
    wait_for("the node to be ready", Duration::from_secs(20), || async {
        (node_health(cluster, &id).await.as_deref() == Some("ready")).then_some(())
    })
    .await?;
    Ok(id)
}

/// Waits until `node` is ready and then stays ready for `hold`.
async fn settles_ready(cluster: &ProcCluster, node: &str, hold: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ready_since: Option<Instant> = None;
    loop {
        let h = node_health(cluster, node).await;
        match (h.as_deref(), ready_since) {
            (Some("ready"), Some(t)) if t.elapsed() >= hold => return Ok(()),
            (Some("ready"), None) => ready_since = Some(Instant::now()),
            (Some("ready"), Some(_)) => {}
            _ => ready_since = None,
        }
        if Instant::now() > deadline {
            anyhow::bail!("node {node} did not settle ready: last seen {h:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts one agent on `cluster` (logging to `agent.log` in the cluster's dir) and waits
/// until its node is ready; the agent and its node id.
async fn start_agent(cluster: &ProcCluster) -> anyhow::Result<(std::process::Child, String)> {
    let data_dir = cluster.dir.path().join("agent");
    let agent = spawn_agent(
        &data_dir,
        &cluster.addrs(),
        &[],
        Some(&cluster.dir.path().join("agent.log")),
    )?;
    let node = wait_registered(cluster, &data_dir).await?;
    Ok((agent, node))
}

/// Polls controller `id` every 100 ms until `until` for `node`'s health: the last health
/// other than ready it reported ("ready" if none), and then the node's events there.
async fn watch_node_at(
    cluster: &ProcCluster,
    id: u64,
    node: &str,
    until: Instant,
) -> anyhow::Result<(String, Vec<steward_proto::v1::NodeEventPb>)> {
    let mut c = cluster.client(id).await?;
    let mut worst = "ready".to_string();
    while Instant::now() < until {
        let asked = c.list_nodes(ListNodesRequest {
            node_id: node.to_string(),
            with_inventory: false,
        });
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), asked).await {
            if let Some(n) = r.into_inner().nodes.first() {
                if n.health != "ready" {
                    worst = n.health.clone();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = c
        .node_events(steward_proto::v1::NodeEventsRequest {
            node_id: node.to_string(),
        })
        .await?
        .into_inner()
        .events;
    Ok((worst, events))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_paused_around_down_after_100_times_ends_ready() -> anyhow::Result<()> {
    // Every "down" is held back 300 ms before it is proposed, so the "ready" of the next
    // heartbeat can overtake it.
    let cluster = ProcCluster::start_opts(
        3,
        FAST_LIVENESS,
        &[("FAILPOINTS", "proposer-delay-node-down=return(300)")],
    )?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let data_dir = cluster.dir.path().join("agent");
    let mut agent = spawn_agent(
        &data_dir,
        &cluster.addrs(),
        AGENT_FLAGS,
        Some(&cluster.dir.path().join("agent.log")),
    )?;
    let node = wait_registered(&cluster, &data_dir).await?;
    let pid = Pid::from_raw(agent.id() as i32);
    let mut rng = rand::rng();
    for _ in 0..100 {
        kill(pid, Signal::SIGSTOP)?;
        // Around down_after (600 ms): sometimes just short of it, sometimes past it.
        tokio::time::sleep(Duration::from_millis(rng.random_range(450..800))).await;
        kill(pid, Signal::SIGCONT)?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..250))).await;
    }
    let result = settles_ready(&cluster, &node, Duration::from_secs(1)).await;
    let _ = agent.kill();
    let _ = agent.wait();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_snapshot_with_a_live_node_down_is_healed() -> anyhow::Result<()> {
    let cluster = ProcCluster::start_with(3, FAST_LIVENESS)?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let dir = cluster.dir.path().to_path_buf();
    let data_dir = dir.join("agent");
    let spawn = || {
        spawn_agent(
            &data_dir,
            &cluster.addrs(),
            AGENT_FLAGS,
            Some(&dir.join("agent.log")),
        )
    };
    let mut agent = spawn()?;
    let node = wait_registered(&cluster, &data_dir).await?;
    // Down in the snapshot.
    agent.kill()?;
    agent.wait()?;
    wait_for("the node to be down", Duration::from_secs(10), || async {
        (node_health(&cluster, &node).await.as_deref() == Some("down")).then_some(())
    })
    .await?;
    let snap = dir.join("down.snap");
    let cli = |args: &[&str]| {
        steward_cmd()
            .args(["--addr", &cluster.addrs()])
            .args(args)
            .output()
    };
    let out = cli(&[
        "operator",
        "snapshot",
        "save",
        snap.to_str().expect("utf-8"),
    ])?;
    assert!(out.status.success(), "save: {out:?}");
    // The node comes back, then the old state is restored over it.
    let mut agent = spawn()?;
    settles_ready(&cluster, &node, Duration::from_millis(500)).await?;
    let out = cli(&[
        "operator",
        "snapshot",
        "restore",
        snap.to_str().expect("utf-8"),
    ])?;
    assert!(out.status.success(), "restore: {out:?}");
    let result = settles_ready(&cluster, &node, Duration::from_secs(1)).await;
    let _ = agent.kill();
    let _ = agent.wait();
    result
}

/// Runs the CLI against `addrs`; (success, stdout + stderr).
fn cli(addrs: &str, args: &[&str]) -> (bool, String) {
    let out = steward_cmd()
        .args(["--addr", addrs])
        .args(args)
        .output()
        .expect("run steward");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn wait_cluster_level(cluster: &ProcCluster, level: u32) -> anyhow::Result<()> {
    let reached = wait_for(
        "the cluster's feature level",
        Duration::from_secs(20),
        || async {
            let (leader, _) = cluster.wait_leader(Duration::from_secs(5)).await.ok()?;
            let s = cluster.local_status(leader).await?;
            (s.cluster_level >= level).then_some(())
        },
    )
    .await;
    if reached.is_err() {
        // Say why: each controller's level, role and cluster-level worker, and the end of
        // its log (the cluster's logs are gone once the test returns its error).
        for id in cluster.nodes.keys() {
            let worker = cluster.local_status(*id).await.map(|s| {
                let w = s
                    .workers
                    .iter()
                    .find(|w| w.name == "cluster-level")
                    .cloned();
                format!(
                    "level {} leader {:?} worker {w:?}",
                    s.cluster_level, s.leader_id
                )
            });
            let log = cluster.log_text(*id);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "controller {id}: {worker:?}\nlog tail (newest first):\n{}",
                tail.join("\n")
            );
        }
    }
    reached
}

/// A compare-and-set create through a follower is applied on the leader and its answer is
/// lost, twice (a test-only fail point). The CLI retries with the same request id and
/// reports the write's own success: never "revision mismatch" for its own value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_answer_is_lost_reports_its_own_success() -> anyhow::Result<()> {
    let cluster =
        ProcCluster::start_opts(3, "", &[("FAILPOINTS", "api-write-reply-lost=2*return")])?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    wait_cluster_level(&cluster, 2).await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let via = cluster.node(follower).api_addr.clone();
    let (ok, out) = cli(
        &via,
        &["kv", "put", "lost/k", "mine", "--cas", "0", "-o", "json"],
    );
    assert!(ok, "the create was applied; the CLI must say so: {out}");
    let reply: serde_json::Value = serde_json::from_str(&out)?;
    let revision = reply["revision"].as_u64().expect("revision");
    let (ok, out) = cli(&via, &["kv", "get", "lost/k", "-o", "json"]);
    assert!(ok, "{out}");
    let entry: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(entry["value"], "mine");
    assert_eq!(entry["version"], 1, "applied once: {entry}");
    assert_eq!(entry["create_revision"].as_u64(), Some(revision));
    Ok(())
}

/// Compare-and-set creates through a follower while the leader is SIGKILLed, three times:
/// a create reported refused must not hold the client's own value (it could only be the
/// client's own earlier, retried attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_during_leader_kills_are_never_refused_by_their_own_retry() -> anyhow::Result<()> {
    let mut cluster = ProcCluster::start(3, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    wait_cluster_level(&cluster, 2).await?;
    let all = cluster.addrs();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        tokio::task::spawn_blocking(move || {
            let mut outcomes = Vec::new();
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || i < 40 {
                let key = format!("kill/{i:04}");
                let (ok, out) = cli(&all, &["kv", "put", &key, &format!("v{i}"), "--cas", "0"]);
                outcomes.push((key, format!("v{i}"), ok, out));
                i += 1;
            }
            outcomes
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
        cluster.kill(leader);
        cluster.wait_leader(Duration::from_secs(20)).await?;
        cluster.spawn(leader)?;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = writer.await?;
    cluster.wait_converged(Duration::from_secs(30)).await?;
    let addrs = cluster.addrs();
    let mut refused_own = Vec::new();
    for (key, value, ok, out) in &outcomes {
        if !ok && out.contains("revision mismatch") {
            let (_, got) = cli(&addrs, &["kv", "get", key]);
            if got.trim() == value {
                refused_own.push((key.clone(), out.clone()));
            }
        }
    }
    assert!(
        refused_own.is_empty(),
        "{} of {} creates were reported refused while holding the client's own value: {:?}",
        refused_own.len(),
        outcomes.len(),
        &refused_own[..refused_own.len().min(3)]
    );
    Ok(())
}

/// The leader's Raft traffic is cut (nftables) while an agent still reaches its API: the
/// majority elects a new leader, the old one stops accepting heartbeats once its quorum
/// lease lapses, the agent moves to the new leader, and the node is never marked down (nor
/// even suspect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_leaves_a_partitioned_leader_and_is_never_marked_down() -> anyhow::Result<()> {
    use steward_tests::netfilter::{skip_unless_available, RaftPartition};
    if !skip_unless_available("agent_leaves_a_partitioned_leader") {
        return Ok(());
    }
    let cluster = ProcCluster::start_on(3, "", &[], true)?;
    let (old_leader, old_term) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let (mut agent, node) = start_agent(&cluster).await?;

    let partition = RaftPartition::isolate_controller(&cluster, old_leader)?;
    let started = Instant::now();

    // The majority elects another leader.
    let (new_leader, new_term) = wait_for("a new leader", Duration::from_secs(10), || async {
        for id in (1..=3).filter(|id| *id != old_leader) {
            let s = cluster.local_status(id).await?;
            if s.responder_state == "leader" && s.term > old_term {
                return Some((id, s.term));
            }
        }
        None
    })
    .await?;
    // Past the new leader's down_after (5 s), its view of the node is checked throughout.
    let (worst, events) = watch_node_at(
        &cluster,
        new_leader,
        &node,
        started + Duration::from_secs(8),
    )
    .await?;
    partition.heal();
    let _ = agent.kill();
    let _ = agent.wait();
    let downs: Vec<_> = events.iter().filter(|e| e.to == "down").collect();
    assert!(
        downs.is_empty(),
        "the live node was marked down by leader {new_leader} (term {new_term}): {downs:?}"
    );
    // The old leader refuses heartbeats within its lease (about 200 ms), so the agent
    // reaches the new leader well within suspect_after (2 s) of its election.
    assert_eq!(
        worst, "ready",
        "the node was {worst} at the new leader during the partition: the agent stayed with the old leader"
    );
    let log = std::fs::read_to_string(cluster.dir.path().join("agent.log")).unwrap_or_default();
    let new_addr = &cluster.node(new_leader).api_addr;
    assert!(
        log.lines()
            .any(|l| l.contains("following the leader") && l.contains(new_addr.as_str())),
        "the agent never moved to the new leader at {new_addr}"
    );
    Ok(())
}

/// A controller that hangs (SIGSTOP: its kernel still accepts connections, nothing
/// answers) does not hold up the agent's leader search, which runs in the heartbeat loop
/// every `LEADER_RECHECK` (5 s): the search stops once a majority answered, so heartbeats
/// go on and the node never turns suspect (2 s of silence). Waiting for every controller,
/// each recheck stalled heartbeats for the 2 s call timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_controller_does_not_stall_heartbeats() -> anyhow::Result<()> {
    let cluster = ProcCluster::start(3, "")?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let (mut agent, node) = start_agent(&cluster).await?;
    let hung = (1..=3).find(|id| *id != leader).expect("a follower");
    let pid = Pid::from_raw(cluster.pid(hung).expect("running") as i32);
    kill(pid, Signal::SIGSTOP)?;
    // Three leader rechecks, watching the node's health at the leader throughout.
    let watched = watch_node_at(
        &cluster,
        leader,
        &node,
        Instant::now() + Duration::from_secs(16),
    )
    .await;
    kill(pid, Signal::SIGCONT)?;
    let _ = agent.kill();
    let _ = agent.wait();
    let (worst, events) = watched?;
    let not_ready: Vec<_> = events.iter().filter(|e| e.to != "ready").collect();
    assert!(
        not_ready.is_empty() && worst == "ready",
        "with controller {hung} hung the node was {worst}; events {not_ready:?}"
    );
    Ok(())
}

/// A state larger than format 1's 32 MiB snapshot-file limit: `save` writes a file that
/// `inspect` reads and `restore` puts back (in chunks through the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_files_hold_any_state_the_cluster_can_hold() -> anyhow::Result<()> {
    use steward_proto::v1::KvPutRequest;
    let cluster = ProcCluster::start(3, "")?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    wait_cluster_level(&cluster, 2).await?;
    // 40 MiB of values, written by 16 clients.
    let addr = cluster.node(leader).api_addr.clone();
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let mut c = crate::common::connect(&addr).await.expect("connect");
                for i in (w..20_000).step_by(16) {
                    c.kv_put(KvPutRequest {
                        key: format!("big/{i:06}"),
                        value: vec![b'v'; 2048],
                        expected_revision: None,
                        request_id: None,
                    })
                    .await
                    .expect("put");
                }
            })
        })
        .collect();
    for w in writers {
        w.await?;
    }
    let file = cluster.dir.path().join("big.snap");
    let f = file.to_str().expect("utf-8");
    let addrs = cluster.addrs();
    let (ok, out) = cli(&addrs, &["operator", "snapshot", "save", f]);
    assert!(ok, "save: {out}");
    let size = std::fs::metadata(&file)?.len();
    assert!(size > 32 << 20, "the file is {size} bytes");
    let (ok, out) = cli(
        &addrs,
        &["operator", "snapshot", "inspect", f, "-o", "json"],
    );
    assert!(ok, "inspect refuses the file save wrote: {out}");
    let (ok, out) = cli(&addrs, &["kv", "delete", "big/000000"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &addrs,
        &["operator", "snapshot", "restore", f, "-o", "json"],
    );
    assert!(ok, "restore refuses the file save wrote: {out}");
    let restored: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(restored["keys"], 20_000);
    let (ok, out) = cli(&addrs, &["kv", "get", "big/000000"]);
    assert!(
        ok && out.trim().len() == 2048,
        "the deleted key is back: {out}"
    );
    cluster.wait_converged(Duration::from_secs(60)).await?;
    Ok(())
}

/// A restore whose leader loses office halfway starts over and finishes instead of
/// failing: a fail point holds the restore after each staged chunk, and leadership is
/// moved while it waits. (Before, the next chunk's proposal failed with "not the leader"
/// and the operator's restore failed; that is what CI hit on a loaded machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_survives_a_leadership_change_halfway() -> anyhow::Result<()> {
    use steward_proto::v1::KvPutRequest;
    let cluster =
        ProcCluster::start_opts(3, "", &[("FAILPOINTS", "restore-chunk-delay=return(400)")])?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    wait_cluster_level(&cluster, 2).await?;
    // 2 MiB of values: four restore chunks.
    let mut c = crate::common::connect(&cluster.node(leader).api_addr)
        .await
        .expect("connect");
    const KEYS: usize = 1_000;
    for i in 0..KEYS {
        c.kv_put(KvPutRequest {
            key: format!("moved/{i:04}"),
            value: vec![b'v'; 2048],
            expected_revision: None,
            request_id: None,
        })
        .await?;
    }
    let file = cluster.dir.path().join("moved.snap");
    let f = file.to_str().expect("utf-8").to_string();
    let addrs = cluster.addrs();
    let (ok, out) = cli(&addrs, &["operator", "snapshot", "save", &f]);
    assert!(ok, "save: {out}");
    let (ok, out) = cli(&addrs, &["kv", "delete", "moved/0000"]);
    assert!(ok, "{out}");
    let restoring = {
        let (addrs, f) = (addrs.clone(), f.clone());
        std::thread::spawn(move || {
            cli(
                &addrs,
                &["operator", "snapshot", "restore", &f, "-o", "json"],
            )
        })
    };
    wait_for(
        "the leader to stage the restore's first chunk",
        Duration::from_secs(60),
        || async {
            cluster
                .log_text(leader)
                .contains("restore chunk staged")
                .then_some(())
        },
    )
    .await?;
    let to = cluster
        .nodes
        .keys()
        .copied()
        .find(|id| *id != leader)
        .expect("another voter");
    let (ok, out) = cli(
        &addrs,
        &["operator", "raft", "transfer-leader", &to.to_string()],
    );
    assert!(ok, "transfer-leader: {out}");
    let (ok, out) = restoring.join().expect("the restore thread");
    assert!(ok, "a leadership change failed the restore: {out}");
    let restored: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(restored["keys"], KEYS);
    assert!(
        cluster.log_text(leader).contains("restore abandoned"),
        "the first leader never abandoned its attempt: the transfer came too late to test anything"
    );
    let (ok, out) = cli(&addrs, &["kv", "get", "moved/0000"]);
    assert!(
        ok && out.trim().len() == 2048,
        "the deleted key is back: {out}"
    );
    cluster.wait_converged(Duration::from_secs(60)).await?;
    Ok(())
}

/// A registration the leader refuses for good (here a test-only fail point refuses every
/// registration after the first) is reported loudly by the agent, which keeps
/// heartbeating: the node stays ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_registration_does_not_silence_the_node() -> anyhow::Result<()> {
    let cluster = ProcCluster::start_opts(
        3,
        FAST_LIVENESS,
        &[("FAILPOINTS", "register-node-refuse=1*off->return")],
    )?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let data_dir = cluster.dir.path().join("agent");
    let log = cluster.dir.path().join("agent.log");
    let start = |label: &str| {
        let mut flags = AGENT_FLAGS.to_vec();
        flags.extend(["--label", label]);
        spawn_agent(&data_dir, &cluster.addrs(), &flags, Some(&log))
    };
    let mut agent = start("rack=r1")?;
    let node = wait_registered(&cluster, &data_dir).await?;
    agent.kill()?;
    agent.wait()?;
    // New labels: the leader asks for a registration, and refuses it.
    let mut agent = start("rack=r2")?;
    wait_for(
        "the refusal in the agent's log",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&log)
                .ok()
                .filter(|t| t.contains("refused this machine's registration"))
        },
    )
    .await?;
    // Well past down_after (600 ms), the node is still ready: heartbeats went on.
    let result = settles_ready(&cluster, &node, Duration::from_secs(3)).await;
    let _ = agent.kill();
    let _ = agent.wait();
    result
}

/// Founding members know each other's API addresses from the first log entry: a write sent
/// to a follower the moment it knows the leader is forwarded, never answered "the leader's
/// API address is not registered yet".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_from_the_first_moment() -> anyhow::Result<()> {
    use steward_proto::v1::KvPutRequest;
    let cluster = ProcCluster::start(3, "")?;
    let (follower, leader) = wait_for(
        "a follower that knows the leader",
        Duration::from_secs(20),
        || async {
            for id in 1..=3 {
                let s = cluster.local_status(id).await?;
                if s.responder_state == "follower" {
                    if let Some(l) = s.leader_id {
                        return Some((id, l));
                    }
                }
            }
            None
        },
    )
    .await?;
    let mut c = cluster.client(follower).await?;
    let r = c
        .kv_put(KvPutRequest {
            key: "first".into(),
            value: b"write".to_vec(),
            expected_revision: None,
            request_id: None,
        })
        .await;
    assert!(
        r.is_ok(),
        "follower {follower} could not forward to leader {leader}: {r:?}"
    );
    Ok(())
}

/// `steward node remove`: refused while the node is ready, done once its agent is gone;
/// the node leaves `node list` and its removal is an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_node_is_removed() -> anyhow::Result<()> {
    let cluster = ProcCluster::start_with(3, FAST_LIVENESS)?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    wait_cluster_level(&cluster, 2).await?;
    let data_dir = cluster.dir.path().join("agent");
    let mut agent = spawn_agent(&data_dir, &cluster.addrs(), AGENT_FLAGS, None)?;
    let node = wait_registered(&cluster, &data_dir).await?;
    let addrs = cluster.addrs();
    let (ok, out) = cli(&addrs, &["node", "remove", &node]);
    assert!(!ok && out.contains("is ready"), "{out}");
    agent.kill()?;
    agent.wait()?;
    wait_for("the node to be down", Duration::from_secs(10), || async {
        (node_health(&cluster, &node).await.as_deref() == Some("down")).then_some(())
    })
    .await?;
    let (ok, out) = cli(&addrs, &["node", "remove", &node]);
    assert!(ok, "{out}");
    assert_eq!(node_health(&cluster, &node).await, None, "still listed");
    let (ok, out) = cli(&addrs, &["node", "events", &node, "-o", "json"]);
    assert!(ok, "{out}");
    let events: serde_json::Value = serde_json::from_str(&out)?;
    let last = events.as_array().and_then(|e| e.last()).expect("events");
    assert_eq!(last["to"], "removed", "{last}");
    let (ok, out) = cli(&addrs, &["node", "remove", &node]);
    assert!(!ok && out.contains("not found"), "{out}");
    Ok(())
}
