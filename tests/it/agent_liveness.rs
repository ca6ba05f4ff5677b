//! Real processes: 3 controllers and 5 agents with simulated GPUs. A SIGKILLed agent is
//! `down` within 6 s by the controllers' clock and `ready` again within 3 s of restarting;
//! an agent SIGSTOPped for 1 s is never marked down; killing the leader marks no agent
//! down; and with both cores saturated by CPU hogs for 60 s, no agent is marked down.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use steward_proto::v1::{ListNodesRequest, NodeEventsRequest};
use steward_tests::{spawn_agent, wait_for, ProcCluster};

struct Agent {
    data_dir: std::path::PathBuf,
    child: Option<Child>,
}

fn start_agent(dir: &std::path::Path, i: usize, controllers: &str) -> anyhow::Result<Agent> {
    let data_dir = dir.join(format!("agent-{i}"));
    let child = spawn_agent(
        &data_dir,
        controllers,
        &["--label", &format!("rack=r{i}")],
        Some(&dir.join(format!("agent-{i}.log"))),
    )?;
    Ok(Agent {
        data_dir,
        child: Some(child),
    })
}

fn node_id(agent: &Agent) -> Option<String> {
    std::fs::read_to_string(agent.data_dir.join("node-id"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// node id -> health, from the leader.
async fn health(cluster: &ProcCluster) -> Option<BTreeMap<String, String>> {
    for id in cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| cluster.is_running(*id))
    {
        if let Ok(mut c) = cluster.client(id).await {
            if let Ok(r) = c
                .list_nodes(ListNodesRequest {
                    node_id: String::new(),
                    with_inventory: false,
                })
                .await
            {
                return Some(
                    r.into_inner()
                        .nodes
                        .into_iter()
                        .map(|n| (n.id, n.health))
                        .collect(),
                );
            }
        }
    }
    None
}

const AGENTS: usize = 5;

/// Starts `AGENTS` agents and waits until the leader holds them all `ready`.
async fn start_fleet(
    cluster: &ProcCluster,
    dir: &std::path::Path,
) -> anyhow::Result<(Vec<Agent>, Vec<String>)> {
    let controllers = cluster.addrs();
    let agents: Vec<Agent> = (0..AGENTS)
        .map(|i| start_agent(dir, i, &controllers))
        .collect::<anyhow::Result<_>>()?;
    let ids: Vec<String> = wait_for(
        "agents to write their ids",
        Duration::from_secs(10),
        || async { agents.iter().map(node_id).collect::<Option<Vec<_>>>() },
    )
    .await?;
    wait_for("every node ready", Duration::from_secs(30), || async {
        let h = health(cluster).await?;
        (ids.iter()
            .all(|id| h.get(id).map(String::as_str) == Some("ready")))
        .then_some(())
    })
    .await?;
    Ok((agents, ids))
}

fn stop_fleet(agents: &mut [Agent]) {
    for a in agents {
        if let Some(mut c) = a.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every health-change event, from the leader.
async fn events(cluster: &ProcCluster) -> anyhow::Result<Vec<steward_proto::v1::NodeEventPb>> {
    let (leader, _) = cluster.wait_leader(Duration::from_secs(10)).await?;
    let mut c = cluster.client(leader).await?;
    Ok(c.node_events(NodeEventsRequest {
        node_id: String::new(),
    })
    .await?
    .into_inner()
    .events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_fail_and_return_and_survive_leader_loss() -> anyhow::Result<()> {
    let mut cluster = ProcCluster::start(3, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let dir = tempfile::tempdir()?;
    let controllers = cluster.addrs();
    let (mut agents, ids) = start_fleet(&cluster, dir.path()).await?;
    let result = async {
        // SIGKILL agent 0: down within 6 s of silence by the leader's clock (the
        // transition's reason carries the silence the leader measured).
        let killed = Instant::now();
        if let Some(mut c) = agents[0].child.take() {
            c.kill()?;
            c.wait()?;
        }
        wait_for("agent 0 down", Duration::from_secs(15), || async {
            (health(&cluster).await?.get(&ids[0]).map(String::as_str) == Some("down")).then_some(())
        })
        .await?;
        let took = killed.elapsed();
        let down = events(&cluster)
            .await?
            .into_iter()
            .find(|e| e.node_id == ids[0] && e.to == "down")
            .expect("a down event");
        let silent_ms: u64 = down
            .reason
            .strip_prefix("no heartbeat for ")
            .and_then(|r| r.strip_suffix(" ms"))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("reason {:?}", down.reason));
        eprintln!("agent SIGKILL -> down: {silent_ms} ms of silence by the leader's clock, {took:?} by the test's");
        assert!((5_000..6_000).contains(&silent_ms), "down after {silent_ms} ms of silence");
        assert!(took < Duration::from_secs(8), "down after {took:?}");

        // Restart it with the same data dir: same node, ready again.
        let restarted = Instant::now();
        agents[0] = start_agent(dir.path(), 0, &controllers)?;
        wait_for("agent 0 ready", Duration::from_secs(15), || async {
            (health(&cluster).await?.get(&ids[0]).map(String::as_str) == Some("ready"))
                .then_some(())
        })
        .await?;
        let took = restarted.elapsed();
        eprintln!("agent restart -> ready: {took:?}");
        assert!(took < Duration::from_secs(3), "ready after {took:?}");

        // SIGSTOP agent 1 for 1 s, and kill the leader: watch 7 s, nobody may go down.
        let pid = Pid::from_raw(agents[1].child.as_ref().expect("running").id() as i32);
        kill(pid, Signal::SIGSTOP)?;
        let stopped = Instant::now();
        let (leader, _) = cluster.wait_leader(Duration::from_secs(10)).await?;
        cluster.kill(leader);
        let watch_until = Instant::now() + Duration::from_secs(7);
        let mut resumed = false;
        while Instant::now() < watch_until {
            if !resumed && stopped.elapsed() >= Duration::from_secs(1) {
                kill(pid, Signal::SIGCONT)?;
                resumed = true;
            }
            if let Some(h) = health(&cluster).await {
                let down: Vec<_> = h.iter().filter(|(_, s)| s.as_str() == "down").collect();
                assert!(down.is_empty(), "marked down: {down:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !resumed {
            kill(pid, Signal::SIGCONT)?;
        }
        // The only down event in the history is agent 0's.
        let events = events(&cluster).await?;
        let downs: Vec<_> = events
            .iter()
            .filter(|e| e.to == "down")
            .map(|e| e.node_id.clone())
            .collect();
        assert_eq!(downs, vec![ids[0].clone()], "events: {events:?}");
        anyhow::Ok(())
    }
    .await;
    stop_fleet(&mut agents);
    result
}

/// How long the CPU hogs run.
const HOG_WINDOW: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_cpus_cause_no_false_down() -> anyhow::Result<()> {
    let cluster = ProcCluster::start(3, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let dir = tempfile::tempdir()?;
    let (mut agents, ids) = start_fleet(&cluster, dir.path()).await?;
    // One busy loop per core, at normal priority.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut hogs: Vec<Child> = (0..cores)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let result = async {
        let started = Instant::now();
        let mut polls = 0u32;
        let mut suspects = std::collections::BTreeSet::new();
        while started.elapsed() < HOG_WINDOW {
            if let Some(h) = health(&cluster).await {
                polls += 1;
                let down: Vec<_> = h.iter().filter(|(_, s)| s.as_str() == "down").collect();
                assert!(down.is_empty(), "marked down under CPU load after {:?}: {down:?}", started.elapsed());
                suspects.extend(h.iter().filter(|(_, s)| s.as_str() == "suspect").map(|(id, _)| id.clone()));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("{cores} CPU hogs for {HOG_WINDOW:?}: {polls} health polls, nodes ever suspect: {suspects:?}");
        assert!(polls >= 10, "the controllers answered only {polls} polls under load");
        let downs: Vec<_> = events(&cluster).await?.into_iter().filter(|e| e.to == "down").collect();
        assert!(downs.is_empty(), "down events: {downs:?}");
        let h = health(&cluster).await.unwrap_or_default();
        assert_eq!(h.len(), ids.len());
        anyhow::Ok(())
    }
    .await;
    for h in &mut hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
    stop_fleet(&mut agents);
    result
}
