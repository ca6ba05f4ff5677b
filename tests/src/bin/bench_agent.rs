//! `make bench-agent`: (1) one agent process with 8 simulated GPUs at 1 s heartbeats: CPU %
//! of one core and RSS, over 20 s, read from /proc; (2) the leader's heartbeat capacity:
//! many simulated agents (in this process) registered, then heartbeating as fast as they
//! can over loopback: heartbeats/s absorbed and p50/p99 latency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use steward_proto::v1::agent_api_client::AgentApiClient;
use steward_proto::v1::agent_control_client::AgentControlClient;
use steward_proto::v1::{GetTelemetryRequest, HeartbeatRequest, RegisterNodeRequest};
use steward_tests::{free_port, spawn_agent, wait_for, ProcCluster};

const AGENT_WINDOW: Duration = Duration::from_secs(20);
const SIM_AGENTS: usize = 2_000;
const CONCURRENCY: usize = 64;
const LOAD_WINDOW: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;

fn proc_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based) of /proc/PID/stat; after ")" they are 12 and 13.
    Ok(f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
}

fn proc_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = ProcCluster::start(3, "")?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(30)).await?;
    let dir = tempfile::tempdir()?;
    let api = format!("127.0.0.1:{}", free_port());
    let mut agent = spawn_agent(dir.path(), &cluster.addrs(), &["--api-addr", &api], None)?;
    let pid = agent.id();
    // A real agent's telemetry summary (8 GPUs): the simulated fleet below sends it.
    let telemetry = wait_for("the agent's telemetry", Duration::from_secs(30), || async {
        let mut c = AgentApiClient::connect(format!("http://{api}"))
            .await
            .ok()?;
        c.get_telemetry(GetTelemetryRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await; // start-up excluded from the window
    let ticks_hz = 100.0; // USER_HZ on Linux
    let t0 = proc_cpu_ticks(pid)?;
    let started = Instant::now();
    tokio::time::sleep(AGENT_WINDOW).await;
    let cpu_pct =
        (proc_cpu_ticks(pid)? - t0) as f64 / ticks_hz / started.elapsed().as_secs_f64() * 100.0;
    let rss = proc_rss_kib(pid)?;
    let _ = agent.kill();
    let _ = agent.wait();
    println!("bench-agent: one agent, 8 simulated GPUs, 1 s heartbeats, {AGENT_WINDOW:?}");
    println!(
        "  agent CPU: {cpu_pct:.2} % of one core; RSS: {:.1} MiB",
        rss as f64 / 1024.0
    );

    let addr = cluster.node(leader).api_addr.clone();
    // One connection acts for the whole simulated fleet (the fleet certificate).
    let ch = steward_runtime::transport::connect(
        &addr,
        &steward_tests::pki::fleet_options(Duration::from_secs(2)),
    )
    .await?;
    let mut c = AgentControlClient::new(ch.clone());
    for i in 0..SIM_AGENTS {
        c.register_node(RegisterNodeRequest {
            node_id: format!("sim-{i:05}"),
            hostname: format!("sim-{i}"),
            labels: Default::default(),
            inventory_json: Vec::new(),
            inventory_digest: "d".into(),
            inventory: Some(Default::default()),
        })
        .await?;
    }
    let summary_bytes = prost::Message::encoded_len(&telemetry);
    println!("leader heartbeat capacity: {SIM_AGENTS} registered nodes, {CONCURRENCY} concurrent senders over loopback, {ROUNDS} rounds of {LOAD_WINDOW:?}, each heartbeat carrying an 8-GPU telemetry summary of {summary_bytes} bytes");
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..CONCURRENCY {
            let mut c = AgentControlClient::new(ch.clone());
            let stop = stop.clone();
            let telemetry = telemetry.clone();
            tasks.push(tokio::spawn(async move {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let node = format!("sim-{:05}", (t + CONCURRENCY * seq as usize) % SIM_AGENTS);
                    seq += 1;
                    let t0 = Instant::now();
                    if c.heartbeat(HeartbeatRequest {
                        node_id: node,
                        seq,
                        inventory_digest: "d".into(),
                        telemetry: Some(telemetry.clone()),
                    })
                    .await
                    .is_ok()
                    {
                        let _ = h.record(t0.elapsed().as_micros() as u64);
                    }
                }
                h
            }));
        }
        let started = Instant::now();
        tokio::time::sleep(LOAD_WINDOW).await;
        stop.store(true, Ordering::Relaxed);
        let mut total = Histogram::<u64>::new(3)?;
        for t in tasks {
            total.add(t.await?)?;
        }
        let rate = total.len() as f64 / started.elapsed().as_secs_f64();
        let (p50, p99) = (
            total.value_at_quantile(0.5) as f64 / 1000.0,
            total.value_at_quantile(0.99) as f64 / 1000.0,
        );
        println!(
            "  round {round}: {rate:.0} heartbeats/s; latency p50 {p50:.2} ms, p99 {p99:.2} ms"
        );
        rounds.push((rate, p50, p99));
    }
    let median = |i: usize| {
        let mut v: Vec<f64> = rounds.iter().map(|r| [r.0, r.1, r.2][i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "  median: {:.0} heartbeats/s (a 1 s interval fleet of that many nodes); p50 {:.2} ms, p99 {:.2} ms",
        median(0),
        median(1),
        median(2)
    );
    Ok(())
}
