//! `make bench-jobs`: what jobs cost, on 3 local controllers.
//!
//! 1. Placement throughput: 1,000 simulated nodes of 8 H100s registered and heartbeating
//!    (in this process); batches of 1-GPU tasks submitted at once; allocations committed
//!    through Raft per second, from the first submission until every task is placed
//!    (3 rounds, median). Nomad's C1M figure is 3,750/s on 5 servers.
//! 2. Submit -> running on an idle cluster: 2 real agents; 1-GPU jobs submitted one at a
//!    time; the time from the submit call to the task's own first instruction (it writes
//!    the clock), p50 and p99. The Kubernetes pod-startup SLO is p99 <= 5 s.
//! 3. The same with Slurm (`slurmctld` and `slurmd` on localhost, 1-CPU jobs through
//!    `sbatch`), when Slurm is installed: the ratio comes from the same run.
//! 4. Node SIGKILL -> its allocations running elsewhere: 5 runs, median and max, from the
//!    node being declared down and from the kill.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use steward_core::inventory::{GpuInfo, Inventory};
use steward_proto::v1::admin_client::AdminClient;
use steward_proto::v1::agent_control_client::AgentControlClient;
use steward_proto::v1::{
    CancelJobRequest, GetJobRequest, HeartbeatRequest, ListJobsRequest, ListNodesRequest,
    RegisterNodeRequest, SetNodeSchedulingRequest, SubmitJobRequest,
};
use steward_tests::{spawn_agent, wait_for, ProcCluster};
use tonic::transport::Channel;

const SIM_NODES: usize = 1_000;
const GPUS_PER_NODE: usize = 8;
/// Tasks placed per throughput round (three rounds fit the fleet's 8,000 GPUs).
const TASKS_PER_ROUND: usize = 2_400;
const TASKS_PER_JOB: usize = 100;
const STARTUP_SAMPLES: usize = 60;
const FAILOVER_RUNS: usize = 5;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn sim_inventory(node: usize) -> Inventory {
    let mut inv = Inventory::default();
    inv.host.cpu.threads = 256;
    inv.host.memory_total_bytes = Some(2 << 40);
    inv.gpus = (0..GPUS_PER_NODE)
        .map(|i| GpuInfo {
            index: i as u32,
            uuid: format!("GPU-bench-{node:05}-{i}"),
            name: "NVIDIA H100 80GB HBM3".into(),
            memory_total_mib: Some(81_559),
            simulated: true,
            ..Default::default()
        })
        .collect();
    inv
}

fn job_spec(name: &str, tasks: usize, script: &str) -> String {
    serde_json::json!({
        "name": name,
        "command": "/bin/sh",
        "args": ["-c", script],
        "tasks": tasks,
        "restart": { "mode": "never" },
        "resources": { "gpus": 1, "cpu_millicores": 10, "memory_mib": 64 },
    })
    .to_string()
}

async fn admin(cluster: &ProcCluster) -> anyhow::Result<AdminClient<Channel>> {
    let (leader, _) = cluster.wait_leader(Duration::from_secs(30)).await?;
    cluster.client(leader).await
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

/// Part 1: allocations committed per second with a simulated fleet.
async fn placement_throughput() -> anyhow::Result<f64> {
    let cluster = ProcCluster::start(3, "")?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(30)).await?;
    let addr = cluster.node(leader).api_addr.clone();
    // One connection acts for the whole simulated fleet (the fleet certificate).
    let ch = steward_runtime::transport::connect(
        &addr,
        &steward_tests::pki::fleet_options(Duration::from_secs(2)),
    )
    .await?;
    let mut control = AgentControlClient::new(ch.clone());
    for i in 0..SIM_NODES {
        control
            .register_node(RegisterNodeRequest {
                node_id: format!("sim-{i:05}"),
                hostname: format!("sim-{i}"),
                labels: Default::default(),
                inventory_json: Vec::new(),
                inventory_digest: "d".into(),
                inventory: Some((&sim_inventory(i)).into()),
            })
            .await?;
    }
    // The fleet heartbeats every second, as agents do.
    let beating = stop_flag();
    for shard in 0..8usize {
        let mut c = AgentControlClient::new(ch.clone());
        let stop = beating.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                for i in (shard..SIM_NODES).step_by(8) {
                    seq += 1;
                    let _ = c
                        .heartbeat(HeartbeatRequest {
                            node_id: format!("sim-{i:05}"),
                            seq,
                            inventory_digest: "d".into(),
                            telemetry: None,
                        })
                        .await;
                }
                tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
            }
        });
    }
    let mut c = admin(&cluster).await?;
    println!(
        "placement throughput: {SIM_NODES} simulated nodes x {GPUS_PER_NODE} H100 (heartbeating every 1 s), rounds of {TASKS_PER_ROUND} 1-GPU tasks in jobs of {TASKS_PER_JOB}"
    );
    let mut rates = Vec::new();
    for round in 1..=3 {
        let started = Instant::now();
        let mut ids = Vec::new();
        for j in 0..TASKS_PER_ROUND / TASKS_PER_JOB {
            ids.push(
                submit(
                    &mut c,
                    job_spec(&format!("r{round}-j{j}"), TASKS_PER_JOB, "true"),
                )
                .await?,
            );
        }
        let submitted = started.elapsed();
        wait_for("every task placed", Duration::from_secs(300), || {
            let mut c = c.clone();
            let ids = ids.clone();
            async move {
                let jobs = c
                    .list_jobs(ListJobsRequest::default())
                    .await
                    .ok()?
                    .into_inner()
                    .jobs;
                let placed: u32 = jobs
                    .iter()
                    .filter(|j| ids.contains(&j.id))
                    .map(|j| j.placed_tasks)
                    .sum();
                (placed as usize >= TASKS_PER_ROUND).then_some(())
            }
        })
        .await?;
        let elapsed = started.elapsed();
        let rate = TASKS_PER_ROUND as f64 / elapsed.as_secs_f64();
        println!(
            "  round {round}: {TASKS_PER_ROUND} allocations committed in {:.2} s ({:.2} s to submit): {rate:.0} allocations/s",
            elapsed.as_secs_f64(),
            submitted.as_secs_f64()
        );
        rates.push(rate);
    }
    beating.store(true, std::sync::atomic::Ordering::Relaxed);
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!("  median: {median:.0} allocations/s (Nomad C1M: 3,750/s on 5 servers)");
    Ok(median)
}

fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

struct Agents {
    dirs: Vec<PathBuf>,
    children: Vec<std::process::Child>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn start_agents(cluster: &ProcCluster, n: usize, flags: &[&str]) -> anyhow::Result<Agents> {
    let mut agents = Agents {
        dirs: Vec::new(),
        children: Vec::new(),
    };
    for i in 0..n {
        let dir = cluster.dir.path().join(format!("agent-{i}"));
        agents
            .children
            .push(spawn_agent(&dir, &cluster.addrs(), flags, None)?);
        agents.dirs.push(dir);
    }
    wait_for("the agents ready", Duration::from_secs(30), || async {
        let mut c = admin(cluster).await.ok()?;
        let nodes = c
            .list_nodes(ListNodesRequest::default())
            .await
            .ok()?
            .into_inner()
            .nodes;
        (nodes.iter().filter(|n| n.health == "ready").count() >= n).then_some(())
    })
    .await?;
    Ok(agents)
}

fn read_stamp(path: &Path) -> Option<u128> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Part 2: submit -> the task's first instruction, ms, sorted.
async fn startup_latency(cluster: &ProcCluster, agents: &Agents) -> anyhow::Result<Vec<f64>> {
    let mut c = admin(cluster).await?;
    let mut samples = Vec::new();
    for i in 0..STARTUP_SAMPLES {
        let t0 = now_ns();
        let id = submit(
            &mut c,
            job_spec(&format!("start-{i}"), 1, "date +%s%N > started"),
        )
        .await?;
        let alloc = format!("{id}.0.1");
        let started = wait_for("the task started", Duration::from_secs(30), || async {
            agents
                .dirs
                .iter()
                .find_map(|d| read_stamp(&d.join("allocs").join(&alloc).join("started")))
        })
        .await?;
        samples.push((started.saturating_sub(t0)) as f64 / 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// Part 3: Slurm's submit -> start on this machine, ms, sorted; `None` when Slurm is not
/// installed.
async fn slurm_latency() -> anyhow::Result<Option<Vec<f64>>> {
    let have = |bin: &str| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !["slurmctld", "slurmd", "sbatch", "munged"]
        .iter()
        .all(|b| have(b))
    {
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // munge: a key and a private socket.
    std::fs::write(
        d.join("munge.key"),
        (0..1024).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>(),
    )?;
    std::process::Command::new("chmod")
        .args(["600"])
        .arg(d.join("munge.key"))
        .status()?;
    let socket = d.join("munge.socket");
    let mut munged = std::process::Command::new("munged")
        .args(["--foreground", "--force", "--key-file"])
        .arg(d.join("munge.key"))
        .arg("--socket")
        .arg(&socket)
        .arg("--pid-file")
        .arg(d.join("munged.pid"))
        .arg("--log-file")
        .arg(d.join("munged.log"))
        .arg("--seed-file")
        .arg(d.join("munged.seed"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let host = std::process::Command::new("hostname").arg("-s").output()?;
    let host = String::from_utf8_lossy(&host.stdout).trim().to_string();
    let (ctld_port, d_port) = (steward_tests::free_port(), steward_tests::free_port());
    let conf = format!(
        "ClusterName=bench\nSlurmctldHost={host}\nSlurmctldPort={ctld_port}\nSlurmdPort={d_port}\n\
         AuthType=auth/munge\nAuthInfo=socket={}\nCredType=cred/munge\n\
         SlurmUser=root\nSlurmdUser=root\nStateSaveLocation={}\nSlurmdSpoolDir={}\n\
         SlurmctldPidFile={}\nSlurmdPidFile={}\nSlurmctldLogFile={}\nSlurmdLogFile={}\n\
         ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSwitchType=switch/none\n\
         MpiDefault=none\nReturnToService=2\nSchedulerType=sched/backfill\nSelectType=select/cons_tres\n\
         SelectTypeParameters=CR_Core\nJobCompType=jobcomp/none\nJobAcctGatherType=jobacct_gather/none\n\
         NodeName={host} CPUs=2 State=UNKNOWN\nPartitionName=bench Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
        socket.display(),
        d.join("state").display(),
        d.join("spool").display(),
        d.join("ctld.pid").display(),
        d.join("d.pid").display(),
        d.join("ctld.log").display(),
        d.join("d.log").display(),
    );
    std::fs::create_dir_all(d.join("state"))?;
    std::fs::create_dir_all(d.join("spool"))?;
    let conf_path = d.join("slurm.conf");
    std::fs::write(&conf_path, conf)?;
    let mut ctld = std::process::Command::new("slurmctld")
        .args(["-D", "-i", "-f"])
        .arg(&conf_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut slurmd = std::process::Command::new("slurmd")
        .args(["-D", "-f"])
        .arg(&conf_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let env = [("SLURM_CONF", conf_path.display().to_string())];
    let sbatch = |script: &str| {
        std::process::Command::new("sbatch")
            .envs(env.iter().cloned())
            .args(["--quiet", "-c", "1", "-o", "/dev/null", "--wrap", script])
            .current_dir(d)
            .status()
    };
    let ready = wait_for("slurm accepting jobs", Duration::from_secs(30), || async {
        let probe = d.join("probe");
        sbatch(&format!("date +%s%N > {}", probe.display()))
            .ok()?
            .success()
            .then_some(())
    })
    .await;
    let mut samples = Vec::new();
    if ready.is_ok() {
        wait_for("slurm's first job", Duration::from_secs(30), || async {
            read_stamp(&d.join("probe"))
        })
        .await?;
        for i in 0..STARTUP_SAMPLES {
            let file = d.join(format!("started-{i}"));
            let t0 = now_ns();
            sbatch(&format!("date +%s%N > {}", file.display()))?;
            let started = wait_for("the slurm job started", Duration::from_secs(60), || async {
                read_stamp(&file)
            })
            .await?;
            samples.push(started.saturating_sub(t0) as f64 / 1e6);
        }
    }
    for child in [&mut slurmd, &mut ctld, &mut munged] {
        let _ = child.kill();
        let _ = child.wait();
    }
    ready?;
    samples.sort_by(f64::total_cmp);
    Ok(Some(samples))
}

/// Part 4: one node's 4 one-GPU tasks after a SIGKILL of its agent: (after down, after
/// kill), seconds.
async fn failover_once(
    cluster: &ProcCluster,
    others: &[String],
    run: usize,
    flags: &[&str],
) -> anyhow::Result<(f64, f64)> {
    let mut c = admin(cluster).await?;
    let set = |node: &str, cordoned: bool| SetNodeSchedulingRequest {
        node_id: node.to_string(),
        cordoned,
        drain_deadline_ms: None,
    };
    for n in others {
        c.set_node_scheduling(set(n, true)).await?;
    }
    let dir = cluster.dir.path().join(format!("victim-{run}"));
    let mut victim = spawn_agent(&dir, &cluster.addrs(), flags, None)?;
    let node = wait_for("the victim's node id", Duration::from_secs(20), || async {
        std::fs::read_to_string(dir.join("node-id"))
            .ok()
            .map(|s| s.trim().to_string())
    })
    .await?;
    let job = submit(
        &mut c,
        job_spec(&format!("failover-{run}"), 4, "exec sleep 600"),
    )
    .await?;
    let running_on = |c: AdminClient<Channel>, job: String, node: String, elsewhere: bool| async move {
        let mut c = c;
        let j = c
            .get_job(GetJobRequest { job_id: job })
            .await
            .ok()?
            .into_inner();
        let n = j
            .allocations
            .iter()
            .filter(|a| a.state == "running" && (a.node_id == node) != elsewhere)
            .count();
        (n == 4).then(Instant::now)
    };
    wait_for(
        "the tasks running on the victim",
        Duration::from_secs(30),
        || running_on(c.clone(), job.clone(), node.clone(), false),
    )
    .await?;
    for n in others {
        c.set_node_scheduling(set(n, false)).await?;
    }
    let killed = Instant::now();
    let _ = victim.kill();
    let _ = victim.wait();
    let down = wait_for("the victim down", Duration::from_secs(30), || {
        let mut c = c.clone();
        let node = node.clone();
        async move {
            let n = c
                .list_nodes(ListNodesRequest {
                    node_id: node,
                    with_inventory: false,
                })
                .await
                .ok()?
                .into_inner()
                .nodes;
            (n.first()?.health == "down").then(Instant::now)
        }
    })
    .await?;
    let moved = wait_for(
        "the tasks running elsewhere",
        Duration::from_secs(60),
        || running_on(c.clone(), job.clone(), node.clone(), true),
    )
    .await?;
    c.cancel_job(CancelJobRequest { job_id: job }).await?;
    Ok((
        moved.saturating_duration_since(down).as_secs_f64(),
        moved.duration_since(killed).as_secs_f64(),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    placement_throughput().await?;

    let cluster = ProcCluster::start(3, "")?;
    cluster.wait_leader(Duration::from_secs(30)).await?;
    let agents = start_agents(&cluster, 2, &[]).await?;
    let steward = startup_latency(&cluster, &agents).await?;
    let (s50, s99) = (percentile(&steward, 0.5), percentile(&steward, 0.99));
    println!(
        "submit -> running, 1-GPU jobs on an idle cluster ({STARTUP_SAMPLES} jobs, one at a time): p50 {s50:.1} ms, p99 {s99:.1} ms (Kubernetes SLO: p99 <= 5 s)"
    );
    match slurm_latency().await {
        Ok(Some(slurm)) => {
            let (l50, l99) = (percentile(&slurm, 0.5), percentile(&slurm, 0.99));
            println!(
                "slurm on the same machine (sbatch, 1-CPU jobs): p50 {l50:.1} ms, p99 {l99:.1} ms; Steward / Slurm: p50 {:.2}x, p99 {:.2}x",
                s50 / l50,
                s99 / l99
            );
        }
        Ok(None) => println!("slurm: not installed (slurmctld, slurmd, sbatch, munged); `make bench-deps` installs slurm-wlm"),
        Err(e) => println!("slurm: could not be measured: {e:#}"),
    }

    let mut c = admin(&cluster).await?;
    let others: Vec<String> = c
        .list_nodes(ListNodesRequest::default())
        .await?
        .into_inner()
        .nodes
        .into_iter()
        .map(|n| n.id)
        .collect();
    let mut after_down = Vec::new();
    let mut after_kill = Vec::new();
    for run in 0..FAILOVER_RUNS {
        let (d, k) = failover_once(&cluster, &others, run, &[]).await?;
        println!(
            "  failover run {}: running elsewhere {d:.2} s after down, {k:.2} s after SIGKILL",
            run + 1
        );
        after_down.push(d);
        after_kill.push(k);
    }
    for v in [&mut after_down, &mut after_kill] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "node SIGKILL -> its 4 tasks running elsewhere ({FAILOVER_RUNS} runs, default down_after 5 s): after down median {:.2} s, max {:.2} s; after the kill median {:.2} s, max {:.2} s",
        percentile(&after_down, 0.5),
        after_down.last().copied().unwrap_or(f64::NAN),
        percentile(&after_kill, 0.5),
        after_kill.last().copied().unwrap_or(f64::NAN),
    );
    drop(agents);
    Ok(())
}
