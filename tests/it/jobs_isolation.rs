//! The isolation fallback with real processes: an agent told `--isolation process-group`
//! (what a host without a writable cgroup gets) still kills a job past its memory limit
//! and reports it out of memory, still kills a whole process tree on cancel, and says
//! which isolation it uses on `/metrics`. 1 controller and 1 agent.

use std::time::Duration;

use crate::common::{
    leader_client, submit_job, wait_job, wait_nodes_ready, JOBS_AGENT_FLAGS, JOBS_LIVENESS,
};
use steward_proto::v1::CancelJobRequest;
use steward_tests::{free_port, http_get, spawn_agent, wait_for, ProcCluster};

fn spec(name: &str, memory_mib: u64, script: &str) -> String {
    serde_json::json!({
        "name": name,
        "command": "/bin/sh",
        "args": ["-c", script],
        "kill_timeout": "2s",
        "restart": { "mode": "never" },
        "resources": { "cpu_millicores": 1000, "memory_mib": memory_mib },
    })
    .to_string()
}

fn pid_alive(pid: i32) -> bool {
    // A zombie is dead: it only waits for its parent.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_group_agent_enforces_memory_and_kills_whole_trees() -> anyhow::Result<()> {
    let cluster = ProcCluster::start_with(1, JOBS_LIVENESS)?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let dir = cluster.dir.path().join("agent");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut flags = JOBS_AGENT_FLAGS.to_vec();
    flags.extend(["--isolation", "process-group", "--metrics-addr", &metrics]);
    let child = spawn_agent(
        &dir,
        &cluster.addrs(),
        &flags,
        Some(&cluster.dir.path().join("agent.log")),
    )?;
    let _agent = steward_tests::AgentGuard::new(&dir, child);
    wait_nodes_ready(&cluster, 1).await?;
    let text = wait_for("the agent's /metrics", Duration::from_secs(10), || async {
        http_get(&metrics, "/metrics")
    })
    .await?;
    let isolation: Vec<(&str, f64)> = text
        .lines()
        .filter(|l| l.starts_with("steward_agent_isolation{"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
        .collect();
    let current: Vec<&str> = isolation
        .iter()
        .filter(|(_, v)| *v == 1.0)
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(
        current,
        ["steward_agent_isolation{mode=\"process-group\"}"],
        "{isolation:?}"
    );
    assert_eq!(isolation.len(), 3, "{isolation:?}");

    // A task whose memory grows past its 64 MiB (1 MiB every 20 ms, as a leak does): the
    // shim kills it and the agent reports it out of memory. (Should a starved watch let it
    // reach the RLIMIT_DATA backstop first, the task holds what it has and waits: its
    // resident memory is over the limit all the same.)
    let greedy = submit_job(
        &cluster,
        spec(
            "greedy",
            64,
            "exec python3 -c 'import time\nx = []\ntry:\n    while True:\n        x.append(bytearray(1 << 20)); time.sleep(0.02)\nexcept MemoryError:\n    time.sleep(120)'",
        ),
    )
    .await?;
    let j = wait_job(&cluster, &greedy, "failed", |j| j.status == "failed").await?;
    let a = &j.allocations[0];
    assert!(
        a.reason.contains("out of memory") && a.reason.contains("process-group"),
        "{a:?}"
    );
    println!("memory limit without a cgroup: {}", a.reason);

    // Cancel kills the whole tree, a child that ignores SIGTERM included.
    let stubborn = submit_job(
        &cluster,
        spec(
            "stubborn",
            64,
            "(trap '' TERM; while true; do sleep 1; done) & echo $! > child.pid; echo $$ > task.pid; trap '' TERM; while true; do sleep 1; done",
        ),
    )
    .await?;
    let j = wait_job(&cluster, &stubborn, "running", |j| j.status == "running").await?;
    let alloc_dir = dir.join("allocs").join(&j.allocations[0].id);
    let mut pids = Vec::new();
    for f in ["task.pid", "child.pid"] {
        let p = alloc_dir.join(f);
        pids.push(
            wait_for("the tree's pid files", Duration::from_secs(10), || async {
                std::fs::read_to_string(&p).ok()?.trim().parse::<i32>().ok()
            })
            .await?,
        );
    }
    assert!(pids.iter().all(|&p| pid_alive(p)), "{pids:?}");
    leader_client(&cluster)
        .await?
        .cancel_job(CancelJobRequest {
            job_id: stubborn.clone(),
        })
        .await?;
    wait_for(
        "the cancelled tree gone",
        Duration::from_secs(15),
        || async { pids.iter().all(|&p| !pid_alive(p)).then_some(()) },
    )
    .await?;
    wait_job(&cluster, &stubborn, "cancelled", |j| {
        j.status == "cancelled" && j.allocations.iter().all(|a| a.state == "stopped")
    })
    .await?;
    Ok(())
}
