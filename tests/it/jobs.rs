//! Jobs end to end with real processes: 3 controllers and 4 agents with 8 simulated H100s
//! each. Tasks record the GPUs they see; an agent is SIGKILLed and its work runs elsewhere
//! (the time is printed); an agent restarted within 2 s keeps its tasks' pids; cancel kills
//! a whole process tree; a crashing task restarts with back-off and then fails; a task over
//! its memory limit is reported out of memory; logs come back through `steward job logs`.
//! And, with nftables: an agent cut off from the controllers stops its work before the
//! work starts elsewhere, and does not restart it when the network heals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::{leader_client, JOBS_AGENT_FLAGS, JOBS_LIVENESS};
use steward_proto::v1::admin_client::AdminClient;
use steward_proto::v1::{
    AllocationPb, CancelJobRequest, GetJobRequest, JobPb, ListAllocationsRequest, ListNodesRequest,
    SubmitJobRequest,
};
use steward_tests::{spawn_agent, steward_cmd, wait_for, ProcCluster};
use tonic::transport::Channel;

/// No snapshot during the test: the whole log stays for the replay at the end.
const KEEP_LOG: &str = "[raft]\nsnapshot_after_entries = 1000000\n";

struct Agent {
    data_dir: PathBuf,
    log: PathBuf,
    node: String,
    child: Option<Child>,
}

impl Agent {
    fn start(cluster: &ProcCluster, name: &str) -> anyhow::Result<Agent> {
        let data_dir = cluster.dir.path().join(name);
        let log = cluster.dir.path().join(format!("{name}.log"));
        let child = spawn_agent(&data_dir, &cluster.addrs(), JOBS_AGENT_FLAGS, Some(&log))?;
        Ok(Agent {
            data_dir,
            log,
            node: String::new(),
            child: Some(child),
        })
    }

    fn restart(&mut self, cluster: &ProcCluster) -> anyhow::Result<()> {
        let log = self.log.with_extension("restarted.log");
        let child = spawn_agent(
            &self.data_dir,
            &cluster.addrs(),
            JOBS_AGENT_FLAGS,
            Some(&log),
        )?;
        self.child = Some(child);
        Ok(())
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn alloc_dir(&self, alloc: &str) -> PathBuf {
        self.data_dir.join("allocs").join(alloc)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.sigkill();
        steward_tests::kill_allocations(&self.data_dir);
    }
}

/// Waits until every agent's node is registered and ready; fills in their node ids.
async fn wait_ready(cluster: &ProcCluster, agents: &mut [Agent]) -> anyhow::Result<()> {
    for a in agents.iter_mut() {
        let id_file = a.data_dir.join("node-id");
        a.node = wait_for("the agent's node id", Duration::from_secs(20), || async {
            std::fs::read_to_string(&id_file)
                .ok()
                .map(|s| s.trim().to_string())
        })
        .await?;
    }
    let want: Vec<String> = agents.iter().map(|a| a.node.clone()).collect();
    wait_for("every node ready", Duration::from_secs(30), || async {
        let mut c = leader_client(cluster).await.ok()?;
        let nodes = c
            .list_nodes(ListNodesRequest::default())
            .await
            .ok()?
            .into_inner()
            .nodes;
        want.iter()
            .all(|w| nodes.iter().any(|n| &n.id == w && n.health == "ready"))
            .then_some(())
    })
    .await
}

/// Jobs record the GPUs they see and their own pid, then sleep (or run `tail`).
fn spec(
    name: &str,
    priority: u32,
    gpus: u32,
    milli: u32,
    tasks: u32,
    gang: bool,
    tail: &str,
) -> String {
    let script = format!(
        "echo \"gpus=$CUDA_VISIBLE_DEVICES\" > seen; echo $$ > task.pid; echo \"started $STEWARD_ALLOC_ID\"; {tail}"
    );
    serde_json::json!({
        "name": name,
        "command": "/bin/sh",
        "args": ["-c", script],
        "priority": priority,
        "tasks": tasks,
        "gang": gang,
        "kill_timeout": "2s",
        "restart": { "attempts": 2, "delay": "100ms" },
        "reschedule": { "attempts": 0 },
        "resources": {
            "gpus": gpus,
            "gpu_milli": milli,
            "cpu_millicores": 10,
            "memory_mib": 64,
        },
    })
    .to_string()
}

async fn submit(c: &mut AdminClient<Channel>, spec_json: String) -> anyhow::Result<String> {
    Ok(c.submit_job(SubmitJobRequest {
        spec_json,
        request_id: None,
    })
    .await?
    .into_inner()
    .job_id)
}

async fn job(cluster: &ProcCluster, id: &str) -> Option<JobPb> {
    let mut c = leader_client(cluster).await.ok()?;
    c.get_job(GetJobRequest {
        job_id: id.to_string(),
    })
    .await
    .ok()
    .map(|r| r.into_inner())
}

async fn live_allocs(cluster: &ProcCluster) -> anyhow::Result<Vec<AllocationPb>> {
    let mut c = leader_client(cluster).await?;
    Ok(c.list_allocations(ListAllocationsRequest::default())
        .await?
        .into_inner()
        .allocations)
}

/// Waits until every task of `jobs` runs; returns their running allocations.
async fn wait_running(
    cluster: &ProcCluster,
    jobs: &[(String, u32)],
    timeout: Duration,
) -> anyhow::Result<Vec<AllocationPb>> {
    wait_for("every task running", timeout, || async {
        let allocs = live_allocs(cluster).await.ok()?;
        let running: Vec<AllocationPb> = allocs
            .into_iter()
            .filter(|a| a.state == "running")
            .collect();
        jobs.iter()
            .all(|(j, n)| running.iter().filter(|a| &a.job_id == j).count() as u32 == *n)
            .then_some(running)
    })
    .await
}

fn agent_of<'a>(agents: &'a [Agent], node: &str) -> &'a Agent {
    agents
        .iter()
        .find(|a| a.node == node)
        .expect("an agent runs every node")
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_on_their_gpus_and_move_when_an_agent_dies() -> anyhow::Result<()> {
    let mut cluster = ProcCluster::start_with(3, &format!("{JOBS_LIVENESS}{KEEP_LOG}"))?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let mut agents = (1..=4)
        .map(|i| Agent::start(&cluster, &format!("agent-{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    wait_ready(&cluster, &mut agents).await?;
    let mut c = leader_client(&cluster).await?;

    // 40 jobs on all 32 GPUs, biggest first: a 2x8 gang, 8, 4, 2 and 1 GPUs, two half GPUs,
    // then 33 CPU-only jobs of mixed priorities.
    let sleep = "exec sleep 600";
    let mut jobs = Vec::new();
    for (name, prio, gpus, milli, tasks, gang) in [
        ("gang", 900, 8, 0, 2, true),
        ("eight", 800, 8, 0, 1, false),
        ("four", 500, 4, 0, 1, false),
        ("two", 400, 2, 0, 1, false),
        ("one", 300, 1, 0, 1, false),
        ("half-a", 200, 0, 500, 1, false),
        ("half-b", 200, 0, 500, 1, false),
    ] {
        let id = submit(&mut c, spec(name, prio, gpus, milli, tasks, gang, sleep)).await?;
        jobs.push((id, tasks));
    }
    for i in 0..33u32 {
        let name = format!("cpu-{i}");
        let id = submit(
            &mut c,
            spec(&name, 100 + 10 * (i % 5), 0, 0, 1, false, sleep),
        )
        .await?;
        jobs.push((id, 1));
    }
    assert_eq!(jobs.len(), 40);
    let running = wait_running(&cluster, &jobs, Duration::from_secs(60)).await?;
    // Each task saw exactly its assigned GPUs, by UUID.
    for a in &running {
        let dir = agent_of(&agents, &a.node_id).alloc_dir(&a.id);
        let seen = wait_for("the task's record", Duration::from_secs(10), || async {
            read_trimmed(&dir.join("seen")).filter(|s| s.starts_with("gpus="))
        })
        .await?;
        assert_eq!(seen, format!("gpus={}", a.gpus.join(",")), "{}", a.id);
    }
    // No GPU holds more than 1000 milli; the gang's members have their rendezvous.
    let mut held: BTreeMap<&str, u32> = BTreeMap::new();
    for a in &running {
        for g in &a.gpus {
            *held.entry(g).or_default() += a.gpu_milli;
        }
    }
    assert!(held.values().all(|&m| m <= 1000), "{held:?}");
    let gang: Vec<&AllocationPb> = running.iter().filter(|a| a.job_id == jobs[0].0).collect();
    let ranks: Vec<u32> = gang
        .iter()
        .filter_map(|a| a.rendezvous.as_ref().map(|r| r.rank))
        .collect();
    assert_eq!(ranks.len(), 2);
    assert_ne!(gang[0].node_id, gang[1].node_id);

    // Logs come back through the CLI, from the agent (once the task has written them).
    let one = running.iter().find(|a| a.job_id == jobs[4].0).expect("one");
    let want = format!("started {}", one.id);
    wait_for(
        "the task's output through `steward job logs`",
        Duration::from_secs(10),
        || async {
            let out = steward_cmd()
                .args(["--addr", &cluster.addrs(), "job", "logs", &jobs[4].0])
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains(&want)
                .then_some(())
        },
    )
    .await?;

    // Room for what will move: the gang ends (cancelled), freeing two nodes.
    c.cancel_job(CancelJobRequest {
        job_id: jobs[0].0.clone(),
    })
    .await?;
    wait_for("the gang stopped", Duration::from_secs(20), || async {
        let j = job(&cluster, &jobs[0].0).await?;
        j.allocations
            .iter()
            .all(|a| a.state == "stopped")
            .then_some(())
    })
    .await?;

    // SIGKILL the agent of the one-GPU job: its work runs elsewhere once the node is down.
    let victim_node = one.node_id.clone();
    let moved: Vec<(String, u32)> = {
        let mut m: BTreeMap<String, u32> = BTreeMap::new();
        for a in running.iter().filter(|a| a.node_id == victim_node) {
            *m.entry(a.job_id.clone()).or_default() += 1;
        }
        m.into_iter().collect()
    };
    let victim = agents
        .iter()
        .position(|a| a.node == victim_node)
        .expect("victim");
    let killed_at = Instant::now();
    agents[victim].sigkill();
    let down_at = wait_for("the node down", Duration::from_secs(20), || async {
        let mut c = leader_client(&cluster).await.ok()?;
        let n = c
            .list_nodes(ListNodesRequest {
                node_id: victim_node.clone(),
                with_inventory: false,
            })
            .await
            .ok()?
            .into_inner()
            .nodes;
        (n.first()?.health == "down").then(Instant::now)
    })
    .await?;
    let elsewhere = wait_for(
        "the lost work running elsewhere",
        Duration::from_secs(30),
        || async {
            let allocs = live_allocs(&cluster).await.ok()?;
            moved
                .iter()
                .all(|(j, n)| {
                    allocs
                        .iter()
                        .filter(|a| {
                            &a.job_id == j && a.state == "running" && a.node_id != victim_node
                        })
                        .count() as u32
                        >= *n
                })
                .then(Instant::now)
        },
    )
    .await?;
    let after_down = elsewhere.duration_since(down_at);
    println!(
        "agent loss: {} jobs running elsewhere {:.2} s after the node was down ({:.2} s after SIGKILL)",
        moved.len(),
        after_down.as_secs_f64(),
        elsewhere.duration_since(killed_at).as_secs_f64()
    );
    assert!(after_down <= Duration::from_secs(10), "{after_down:?}");

    // An agent SIGKILLed and restarted within 2 s keeps its tasks (same pids, same state).
    let eight = live_allocs(&cluster)
        .await?
        .into_iter()
        .find(|a| a.job_id == jobs[1].0 && a.state == "running")
        .expect("the eight-GPU task runs");
    let host = agents
        .iter()
        .position(|a| a.node == eight.node_id)
        .expect("host");
    let dir = agents[host].alloc_dir(&eight.id);
    let task_pid: i32 = read_trimmed(&dir.join("task.pid"))
        .expect("task pid")
        .parse()?;
    agents[host].sigkill();
    agents[host].restart(&cluster)?;
    let restarted_log = agents[host].log.with_extension("restarted.log");
    let adopted = format!("re-adopting a running allocation alloc={}", eight.id);
    wait_for(
        "the restarted agent re-adopted its task",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(&restarted_log)
                .ok()?
                .contains(&adopted)
                .then_some(())
        },
    )
    .await?;
    let after = job(&cluster, &jobs[1].0).await.expect("job");
    let same = after
        .allocations
        .iter()
        .find(|a| a.id == eight.id)
        .expect("alloc");
    assert_eq!(same.state, "running");
    assert!(pid_alive(task_pid), "the task survived the agent's restart");
    assert_eq!(
        read_trimmed(&dir.join("task.pid")).expect("pid"),
        task_pid.to_string()
    );

    // Cancel kills the whole tree, a child that ignores SIGTERM included.
    let stubborn = submit(
        &mut c,
        spec("stubborn", 100, 0, 0, 1, false, "(trap '' TERM; while true; do sleep 1; done) & echo $! > child.pid; trap '' TERM; while true; do sleep 1; done"),
    )
    .await?;
    let st = wait_running(&cluster, &[(stubborn.clone(), 1)], Duration::from_secs(30)).await?;
    let st = st.iter().find(|a| a.job_id == stubborn).expect("stubborn");
    let st_dir = agent_of(&agents, &st.node_id).alloc_dir(&st.id);
    let pids: Vec<i32> = ["task.pid", "child.pid"]
        .iter()
        .map(|f| {
            let p = st_dir.join(f);
            async move {
                wait_for("pid files", Duration::from_secs(10), || async {
                    read_trimmed(&p)?.parse().ok()
                })
                .await
            }
        })
        .collect::<futures::future::JoinAll<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    c.cancel_job(CancelJobRequest {
        job_id: stubborn.clone(),
    })
    .await?;
    wait_for(
        "the cancelled tree gone",
        Duration::from_secs(15),
        || async { pids.iter().all(|&p| !pid_alive(p)).then_some(()) },
    )
    .await?;
    wait_for(
        "the allocation stopped",
        Duration::from_secs(10),
        || async {
            let j = job(&cluster, &stubborn).await?;
            (j.status == "cancelled" && j.allocations.iter().all(|a| a.state == "stopped"))
                .then_some(())
        },
    )
    .await?;

    // A crashing task restarts in place with back-off, then fails per its policy.
    let crash = submit(&mut c, spec("crash", 100, 0, 0, 1, false, "exit 3")).await?;
    let j = wait_for(
        "the crashing job failed",
        Duration::from_secs(30),
        || async {
            let j = job(&cluster, &crash).await?;
            (j.status == "failed").then_some(j)
        },
    )
    .await?;
    let a = &j.allocations[0];
    assert_eq!(
        (a.state.as_str(), a.restarts, a.exit_code),
        ("failed", 2, Some(3)),
        "{a:?}"
    );
    assert!(
        j.events
            .iter()
            .any(|e| e.message.contains("restarted in place (2 so far)")),
        "{:?}",
        j.events
    );

    // Over its memory limit: killed and reported as out of memory.
    let mut oom: serde_json::Value = serde_json::from_str(&spec(
        "oom",
        100,
        0,
        0,
        1,
        false,
        "exec python3 -c 'x = bytearray(512 * 1024 * 1024); print(len(x))'",
    ))?;
    oom["restart"] = serde_json::json!({"mode": "never"});
    // A whole CPU: at 10 mCPU (1 % of a core, enforced) freeing 512 MiB takes long.
    oom["resources"]["cpu_millicores"] = 1000.into();
    let oom = submit(&mut c, oom.to_string()).await?;
    let j = wait_for("the greedy job ended", Duration::from_secs(30), || async {
        let j = job(&cluster, &oom).await?;
        j.status
            .ne("running")
            .then_some(())
            .and(j.status.ne("pending").then_some(j))
    })
    .await?;
    let a = &j.allocations[0];
    assert_eq!(j.status, "failed", "{a:?}");
    assert!(
        a.reason.contains("out of memory") || a.exit_code.is_some_and(|c| c != 0),
        "{a:?}"
    );
    println!("memory limit: {}", a.reason);

    // Replaying the committed log: no GPU (or milli share) or CPU over-committed at any
    // applied index.
    drop(agents);
    let data_dir = cluster.node(1).data_dir.clone();
    assert_eq!(cluster.terminate(1, Duration::from_secs(10)), Some(0));
    let replayed = replay_checks_capacity(&data_dir).await?;
    println!("log replay: {replayed} entries, no GPU or CPU over-committed at any index");
    Ok(())
}

/// Replays controller `id`'s whole committed log (it must be stopped) through
/// `ClusterState::apply`, checking after every entry that no GPU holds more than 1000
/// milli and no node more CPU than it has; returns the number of entries replayed.
async fn replay_checks_capacity(data_dir: &Path) -> anyhow::Result<usize> {
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    use steward_controller::raft::store::{open_stores, Db};
    let db = Db::open(&data_dir.join("raft"))?;
    let (mut log, _sm) = open_stores(&db, Default::default()).await?;
    let state = log.get_log_state().await?;
    assert!(
        state.last_purged_log_id.is_none(),
        "the whole log is kept for the replay"
    );
    let last = state.last_log_id.map_or(0, |l| l.index);
    let entries = log.try_get_log_entries(0..=last).await?;
    let mut s = steward_core::ClusterState::default();
    for e in &entries {
        if let openraft::EntryPayload::Normal(c) = &e.payload {
            s.apply(c.clone());
        }
        let mut gpus: BTreeMap<&str, u32> = BTreeMap::new();
        let mut cpu: BTreeMap<&str, u64> = BTreeMap::new();
        for a in s.allocs.values().filter(|a| a.holds_capacity()) {
            for g in &a.gpus {
                *gpus.entry(g).or_default() += u32::from(a.gpu_milli);
            }
            *cpu.entry(&a.node).or_default() += a.cpu_millicores;
        }
        for (g, m) in &gpus {
            assert!(
                *m <= 1000,
                "GPU {g} holds {m} milli at log index {}",
                e.log_id.index
            );
        }
        for (n, c) in &cpu {
            let cap = steward_core::jobs::NodeCapacity::of(&s.nodes[*n].inventory).cpu_millicores;
            assert!(
                *c <= cap,
                "node {n} holds {c} of {cap} mCPU at log index {}",
                e.log_id.index
            );
        }
    }
    Ok(entries.len())
}
