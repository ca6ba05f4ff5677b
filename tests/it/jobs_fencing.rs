//! Fencing with real processes: an agent cut off from the controllers (its traffic dropped
//! with nftables while it keeps running) stops its work before the work starts on another
//! node, by the two tasks' own records on this machine's clock, and does not restart it
//! once the network heals. A paused agent (SIGSTOP past down_after) kills its stale work as
//! soon as it runs again and never restarts it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{leader_client, JOBS_AGENT_FLAGS, JOBS_LIVENESS};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use steward_proto::v1::{ListAllocationsRequest, ListNodesRequest, SubmitJobRequest};
use steward_tests::netfilter::{skip_unless_available, AddressCut};
use steward_tests::{spawn_agent, wait_for, AgentGuard, ProcCluster};

/// The loopback address the cut-off agent's connections come from.
const CUT_IP: &str = "127.0.0.77";

async fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let file = data_dir.join("node-id");
    wait_for("the agent's node id", Duration::from_secs(20), || async {
        std::fs::read_to_string(&file)
            .ok()
            .map(|s| s.trim().to_string())
    })
    .await
}

async fn wait_health(cluster: &ProcCluster, node: &str, health: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("node {node} {health}"),
        Duration::from_secs(30),
        || async {
            let mut c = leader_client(cluster).await.ok()?;
            let nodes = c
                .list_nodes(ListNodesRequest {
                    node_id: node.to_string(),
                    with_inventory: false,
                })
                .await
                .ok()?
                .into_inner()
                .nodes;
            (nodes.first()?.health == health).then_some(())
        },
    )
    .await
}

/// The running allocation of `job` on `node`: its id.
async fn running_on(cluster: &ProcCluster, job: &str, node: &str) -> anyhow::Result<String> {
    wait_for(
        &format!("{job} running on {node}"),
        Duration::from_secs(30),
        || async {
            let mut c = leader_client(cluster).await.ok()?;
            let allocs = c
                .list_allocations(ListAllocationsRequest {
                    job_id: job.to_string(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .allocations;
            allocs
                .into_iter()
                .find(|a| a.node_id == node && a.state == "running")
                .map(|a| a.id)
        },
    )
    .await
}

/// A record the task wrote: nanoseconds since the epoch, one line per event.
fn stamps(dir: &Path, file: &str) -> Vec<u128> {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn alloc_dir(agent_dir: &Path, alloc: &str) -> PathBuf {
    agent_dir.join("allocs").join(alloc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_agent_stops_its_work_before_it_runs_elsewhere() -> anyhow::Result<()> {
    if !skip_unless_available(
        "jobs_fencing::a_cut_off_agent_stops_its_work_before_it_runs_elsewhere",
    ) {
        return Ok(());
    }
    let cluster = ProcCluster::start_with(3, JOBS_LIVENESS)?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let a_dir = cluster.dir.path().join("agent-a");
    let mut flags = JOBS_AGENT_FLAGS.to_vec();
    flags.extend(["--source-ip", CUT_IP]);
    let mut agent_a = AgentGuard::new(
        &a_dir,
        spawn_agent(
            &a_dir,
            &cluster.addrs(),
            &flags,
            Some(&cluster.dir.path().join("agent-a.log")),
        )?,
    );
    let node_a = node_id(&a_dir).await?;
    wait_health(&cluster, &node_a, "ready").await?;

    // The task records when it starts and when SIGTERM stops it (nanoseconds, this clock).
    let script = "trap 'date +%s%N >> stopped; exit 0' TERM; date +%s%N >> started; while :; do sleep 0.05; done";
    let spec = serde_json::json!({
        "name": "fenced",
        "command": "/bin/sh",
        "args": ["-c", script],
        "kill_timeout": "5s",
        "resources": { "gpus": 1, "cpu_millicores": 10, "memory_mib": 64 },
    });
    let job = leader_client(&cluster)
        .await?
        .submit_job(SubmitJobRequest {
            spec_json: spec.to_string(),
            request_id: None,
        })
        .await?
        .into_inner()
        .job_id;
    let first = running_on(&cluster, &job, &node_a).await?;
    let first_dir = alloc_dir(&a_dir, &first);
    wait_for("the task started", Duration::from_secs(10), || async {
        (!stamps(&first_dir, "started").is_empty()).then_some(())
    })
    .await?;

    let b_dir = cluster.dir.path().join("agent-b");
    let agent_b = AgentGuard::new(
        &b_dir,
        spawn_agent(
            &b_dir,
            &cluster.addrs(),
            JOBS_AGENT_FLAGS,
            Some(&cluster.dir.path().join("agent-b.log")),
        )?,
    );
    let node_b = node_id(&b_dir).await?;
    wait_health(&cluster, &node_b, "ready").await?;

    // Cut agent A off; it keeps running.
    let cut = AddressCut::drop_address(CUT_IP)?;
    let second = running_on(&cluster, &job, &node_b).await?;
    let second_dir = alloc_dir(&b_dir, &second);
    let started = wait_for(
        "the replacement started",
        Duration::from_secs(10),
        || async { stamps(&second_dir, "started").first().copied() },
    )
    .await?;
    // The agent and the shim both fence (whichever is first): the task may see SIGTERM twice.
    let stopped = stamps(&first_dir, "stopped");
    assert!(!stopped.is_empty(), "the cut-off task was stopped");
    assert!(
        stopped[0] < started,
        "the cut-off task stopped ({}) before its replacement started ({started})",
        stopped[0]
    );
    println!(
        "fencing: the cut-off task stopped {:.2} s before its replacement started",
        (started - stopped[0]) as f64 / 1e9
    );
    let fin = std::fs::read_to_string(first_dir.join("final.json"))?;
    assert!(fin.contains("\"lost\"") && fin.contains("fenced"), "{fin}");
    assert!(agent_a.is_running(), "agent A kept running");

    // The network heals: A comes back ready and never starts the old task again.
    cut.heal();
    wait_health(&cluster, &node_a, "ready").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stamps(&first_dir, "started").len(),
        1,
        "never restarted after healing"
    );

    // Pause B past down_after: the task moves back to A; once B runs again it kills its
    // stale copy at once and never restarts it.
    let b_pid = Pid::from_raw(agent_b.id() as i32);
    kill(b_pid, Signal::SIGSTOP)?;
    let third = running_on(&cluster, &job, &node_a).await;
    kill(b_pid, Signal::SIGCONT)?;
    let third = third?;
    let third_dir = alloc_dir(&a_dir, &third);
    let third_started = wait_for(
        "the third copy started",
        Duration::from_secs(10),
        || async { stamps(&third_dir, "started").first().copied() },
    )
    .await?;
    let stale_stopped = stamps(&second_dir, "stopped");
    assert!(
        !stale_stopped.is_empty(),
        "the paused agent's shim fenced its task"
    );
    assert!(
        stale_stopped[0] < third_started,
        "the paused agent's task stopped ({}) before the next copy started ({third_started})",
        stale_stopped[0]
    );
    println!(
        "fencing (paused agent): its shim stopped the task {:.2} s before the next copy started",
        (third_started - stale_stopped[0]) as f64 / 1e9
    );
    wait_for(
        "the paused agent's stale task stopped",
        Duration::from_secs(5),
        || async { (!stamps(&second_dir, "stopped").is_empty()).then_some(()) },
    )
    .await?;
    wait_health(&cluster, &node_b, "ready").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        stamps(&second_dir, "started").len(),
        1,
        "the paused agent never restarted it"
    );
    assert_eq!(stamps(&third_dir, "started").len(), 1);
    drop((agent_a, agent_b));
    Ok(())
}
