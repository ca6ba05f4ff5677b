//! The controller's job decisions with real processes: preemption (the evicted job waits
//! and runs again later), a failed GPU (XID 79 on a GPU that runs a job: the job moves off
//! it and the GPU is not used again), cordon and drain, and a job that prints 100 MiB keeps
//! its logs under the cap. 3 controllers and 2 agents with 8 simulated H100s each.

use std::time::Duration;

use crate::common::{
    leader_client, submit_job as submit, wait_job, wait_nodes_ready, JOBS_AGENT_FLAGS,
    JOBS_LIVENESS,
};
use steward_proto::v1::agent_api_client::AgentApiClient;
use steward_proto::v1::{
    CancelJobRequest, GpuFault, InjectGpuFaultRequest, JobPb, ListAllocationsRequest,
    ListNodesRequest, NodeSchedulingRequest, PlanJobRequest, SetNodeSchedulingRequest,
    SubmitJobRequest,
};
use steward_tests::{spawn_agent, steward_cmd, wait_for, ProcCluster};

fn spec(
    name: &str,
    priority: u32,
    gpus: u32,
    tasks: u32,
    preemptible: bool,
    script: &str,
) -> String {
    serde_json::json!({
        "name": name,
        "command": "/bin/sh",
        "args": ["-c", script],
        "priority": priority,
        "tasks": tasks,
        "preemptible": preemptible,
        "kill_timeout": "2s",
        "resources": { "gpus": gpus, "cpu_millicores": 10, "memory_mib": 64 },
    })
    .to_string()
}

fn running(j: &JobPb) -> usize {
    j.allocations
        .iter()
        .filter(|a| a.state == "running")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_gpu_failure_cordon_drain_and_log_caps() -> anyhow::Result<()> {
    let cluster = ProcCluster::start_with(3, JOBS_LIVENESS)?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let mut agents = Vec::new();
    for name in ["agent-a", "agent-b"] {
        let dir = cluster.dir.path().join(name);
        let child = spawn_agent(
            &dir,
            &cluster.addrs(),
            JOBS_AGENT_FLAGS,
            Some(&cluster.dir.path().join(format!("{name}.log"))),
        )?;
        agents.push(steward_tests::AgentGuard::new(&dir, child));
    }
    let nodes = wait_nodes_ready(&cluster, 2).await?;
    // Each agent says how it isolates allocations.
    wait_for(
        "the agents' isolation in their telemetry",
        Duration::from_secs(10),
        || async {
            let n = leader_client(&cluster)
                .await
                .ok()?
                .list_nodes(ListNodesRequest {
                    node_id: String::new(),
                    with_inventory: true,
                })
                .await
                .ok()?
                .into_inner()
                .nodes;
            n.iter()
                .all(|x| {
                    x.telemetry.as_ref().is_some_and(|t| {
                        ["cgroup-v2", "cgroup-v1", "process-group"].contains(&t.isolation.as_str())
                    })
                })
                .then_some(())
        },
    )
    .await?;
    let sleep = "exec sleep 600";

    // Preemption: a low-priority preemptible job fills both nodes; a high-priority one
    // evicts one of its tasks, which waits and runs again once the high one is done.
    let low = submit(&cluster, spec("low", 10, 8, 2, true, sleep)).await?;
    wait_job(&cluster, &low, "both tasks running", |j| running(j) == 2).await?;
    let high = submit(&cluster, spec("high", 900, 8, 1, false, "sleep 3")).await?;
    let j = wait_job(&cluster, &low, "a task preempted", |j| {
        j.allocations.iter().any(|a| a.state == "preempted")
    })
    .await?;
    assert!(
        j.events
            .iter()
            .any(|e| e.message.contains(&format!("preempted by job {high}"))),
        "{:?}",
        j.events
    );
    wait_job(&cluster, &high, "complete", |j| j.status == "complete").await?;
    wait_job(&cluster, &low, "both tasks running again", |j| {
        running(j) == 2
    })
    .await?;
    leader_client(&cluster)
        .await?
        .cancel_job(CancelJobRequest {
            job_id: low.clone(),
        })
        .await?;
    wait_job(&cluster, &low, "stopped", |j| {
        j.allocations.iter().all(|a| a.state != "running")
    })
    .await?;

    // A failed GPU: XID 79 on the GPU of a running job moves the job off it for good.
    let victim = submit(&cluster, spec("on-bad-gpu", 100, 1, 1, false, sleep)).await?;
    let j = wait_job(&cluster, &victim, "running", |j| running(j) == 1).await?;
    let a = j
        .allocations
        .iter()
        .find(|a| a.state == "running")
        .expect("running")
        .clone();
    let node = nodes.iter().find(|n| n.id == a.node_id).expect("node");
    let index = node
        .gpus
        .iter()
        .position(|g| g.uuid == a.gpus[0])
        .expect("gpu index") as u32;
    let mut agent = AgentApiClient::new(
        steward_tests::channel(
            &node.agent_api_addr,
            steward_runtime::tls::ServerKind::Agent,
            Duration::from_secs(30),
        )
        .await?,
    );
    agent
        .inject_gpu_fault(InjectGpuFaultRequest {
            gpu_index: index,
            fault: GpuFault::Xid as i32,
            xid: 79,
        })
        .await?;
    let bad = a.gpus[0].clone();
    let j = wait_job(&cluster, &victim, "running on another GPU", |j| {
        j.allocations
            .iter()
            .any(|x| x.state == "running" && x.gpus[0] != bad)
    })
    .await?;
    assert!(
        j.allocations
            .iter()
            .any(|x| x.id == a.id && x.state == "stopped"),
        "{:?}",
        j.allocations
    );
    let plan = leader_client(&cluster)
        .await?
        .plan_job(PlanJobRequest {
            spec_json: spec("whole-node", 100, 8, 1, false, sleep),
        })
        .await?
        .into_inner();
    let verdict = plan
        .nodes
        .iter()
        .find(|n| n.node_id == a.node_id)
        .expect("verdict");
    assert!(verdict.reason.contains("1 unhealthy"), "{verdict:?}");
    leader_client(&cluster)
        .await?
        .cancel_job(CancelJobRequest {
            job_id: victim.clone(),
        })
        .await?;

    // Cordon keeps new work off a node; drain empties one.
    let (a_node, b_node) = (nodes[0].id.clone(), nodes[1].id.clone());
    let set = |node: &str, cordoned: bool, drain: Option<u64>| SetNodeSchedulingRequest {
        node_id: node.to_string(),
        cordoned,
        drain_deadline_ms: drain,
    };
    leader_client(&cluster)
        .await?
        .set_node_scheduling(set(&a_node, true, None))
        .await?;
    let kept = submit(&cluster, spec("kept-off", 100, 1, 2, false, sleep)).await?;
    let j = wait_job(&cluster, &kept, "running", |j| running(j) == 2).await?;
    assert!(
        j.allocations.iter().all(|x| x.node_id == b_node),
        "cordoned {a_node} took work"
    );
    leader_client(&cluster)
        .await?
        .set_node_scheduling(set(&a_node, false, None))
        .await?;
    leader_client(&cluster)
        .await?
        .set_node_scheduling(set(&b_node, true, Some(0)))
        .await?;
    wait_for("the drain complete", Duration::from_secs(30), || async {
        let s = leader_client(&cluster)
            .await
            .ok()?
            .node_scheduling(NodeSchedulingRequest {
                node_id: b_node.clone(),
            })
            .await
            .ok()?
            .into_inner();
        (s.draining && s.drain_complete && s.allocations == 0).then_some(())
    })
    .await?;
    let j = wait_job(&cluster, &kept, "moved off the drained node", |j| {
        running(j) == 2
    })
    .await?;
    assert!(j
        .allocations
        .iter()
        .filter(|x| x.state == "running")
        .all(|x| x.node_id == a_node));
    let live = leader_client(&cluster)
        .await?
        .list_allocations(ListAllocationsRequest {
            node_id: b_node.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .allocations;
    assert!(live.is_empty(), "{live:?}");
    // A ready node that runs work is not removed, --force or not: its work would be placed
    // again while its agent still runs it.
    let out = steward_cmd()
        .args([
            "--addr",
            &cluster.addrs(),
            "node",
            "remove",
            &a_node,
            "--force",
        ])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(" allocations (") && err.contains("drain it first"),
        "{err}"
    );

    // 100 MiB of output: the files stay under 10 x 10 MiB, and the tail comes back.
    // (Page cache of the log files is charged to the task's cgroup: room for it.)
    let mut loud: serde_json::Value = serde_json::from_str(&spec(
        "loud",
        100,
        0,
        1,
        false,
        "head -c 104857600 /dev/zero | tr '\\0' x; echo; echo done",
    ))?;
    loud["resources"]["memory_mib"] = 512.into();
    // A whole CPU: at 10 mCPU (1 % of a core, enforced) 100 MiB takes minutes.
    loud["resources"]["cpu_millicores"] = 1000.into();
    let loud = submit(&cluster, loud.to_string()).await?;
    let j = wait_job(&cluster, &loud, "complete", |j| j.status == "complete").await?;
    let a = &j.allocations[0];
    let dir = agents
        .iter()
        .map(|g| g.data_dir.join("allocs").join(&a.id))
        .find(|d| d.exists())
        .expect("alloc dir");
    let files: Vec<u64> = std::fs::read_dir(&dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("stdout.log"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .collect();
    let total: u64 = files.iter().sum();
    println!(
        "logs: 100 MiB printed, {} files, {total} bytes kept",
        files.len()
    );
    assert!(
        files.len() <= 10 && files.iter().all(|&f| f <= 10 * 1024 * 1024),
        "{files:?}"
    );
    assert!(total <= 100 * 1024 * 1024);
    let out = steward_cmd()
        .args([
            "--addr",
            &cluster.addrs(),
            "job",
            "logs",
            &loud,
            "--tail",
            "10",
        ])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "xxxx\ndone\n");
    drop(agents);
    Ok(())
}

/// Submits `spec_json` with request id `id` until a controller acknowledges it (a retry
/// keeps the id, so it is applied once whichever attempt got through).
async fn submit_once(
    addrs: &[String],
    spec_json: String,
    id: steward_proto::v1::RequestId,
) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut next = rand::random::<u32>() as usize;
    while std::time::Instant::now() < deadline {
        next += 1;
        let Some(mut c) = crate::common::connect(&addrs[next % addrs.len()]).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let req = SubmitJobRequest {
            spec_json: spec_json.clone(),
            request_id: Some(id),
        };
        match c.submit_job(req).await {
            Ok(r) => return Some(r.into_inner().job_id),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_through_a_leader_kill_are_recorded_once() -> anyhow::Result<()> {
    let mut cluster = ProcCluster::start_with(3, JOBS_LIVENESS)?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    let addrs: Vec<String> = cluster.addrs().split(',').map(str::to_string).collect();
    const JOBS: usize = 200;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..8usize {
        let (addrs, acked) = (addrs.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let client = rand::random::<u64>();
            let mut ids = Vec::new();
            for (seq, i) in (w..JOBS).step_by(8).enumerate() {
                let spec = spec(&format!("burst-{i}"), 100, 1, 1, false, "true");
                let id = steward_proto::v1::RequestId {
                    client,
                    seq: seq as u64 + 1,
                };
                let got = submit_once(&addrs, spec, id).await;
                if got.is_some() {
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                ids.push((i, got));
            }
            ids
        }));
    }
    wait_for(
        "a quarter acknowledged",
        Duration::from_secs(30),
        || async { (acked.load(std::sync::atomic::Ordering::Relaxed) >= JOBS / 4).then_some(()) },
    )
    .await?;
    cluster.kill(leader);
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await?);
    }
    let jobs = leader_client(&cluster)
        .await?
        .list_jobs(steward_proto::v1::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    println!(
        "leader {leader} killed during {JOBS} submissions: {} acknowledged, {} jobs recorded",
        acknowledged.iter().filter(|(_, id)| id.is_some()).count(),
        jobs.len()
    );
    for (i, id) in &acknowledged {
        let id = id
            .as_ref()
            .unwrap_or_else(|| panic!("submission {i} was never acknowledged"));
        let named: Vec<&JobPb> = jobs
            .iter()
            .filter(|j| j.name == format!("burst-{i}"))
            .collect();
        assert_eq!(named.len(), 1, "burst-{i} recorded {} times", named.len());
        assert_eq!(&named[0].id, id);
        assert!(
            matches!(named[0].status.as_str(), "pending" | "running"),
            "{:?}",
            named[0]
        );
    }
    // With no agents, every job waits and says why, once the new leader's scheduling
    // loop has had a round over it (the list above may come before that round).
    wait_for(
        "every job's pending reason",
        Duration::from_secs(30),
        || async {
            let jobs = leader_client(&cluster)
                .await
                .ok()?
                .list_jobs(steward_proto::v1::ListJobsRequest::default())
                .await
                .ok()?
                .into_inner()
                .jobs;
            (jobs.len() == JOBS && jobs.iter().all(|j| j.pending_reason.contains("no nodes")))
                .then_some(())
        },
    )
    .await?;
    Ok(())
}
