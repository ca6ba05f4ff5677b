//! `make bench-tls`: what mutual TLS costs, as a ratio to plaintext measured in the same
//! run. Two identical clusters (3 controllers and 3 agents each, on loopback), one with
//! TLS (as every cluster runs by default) and one with `--insecure`; each workload runs
//! `ROUNDS` times on each, alternating which goes first, and the medians are compared:
//!
//! 1. KV writes at 16 concurrent clients (bench-raft's workload: 100-byte values through
//!    the leader, fsync on), writes/s;
//! 2. the leader's heartbeat capacity: 256 concurrent senders of 8-GPU heartbeats over one
//!    connection (bench-agent's workload), heartbeats/s;
//! 3. `steward object put` of a 64 MiB file of fresh random bytes with the CLI, as a user
//!    runs it (a new process, new connections and handshakes, 3 replicas), MiB/s.
//!
//! Aim: TLS at most 15 % slower on each (ratio at least 0.85).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_proto::v1::admin_client::AdminClient;
use steward_proto::v1::agent_control_client::AgentControlClient;
use steward_proto::v1::{HeartbeatRequest, KvPutRequest, RegisterNodeRequest};
use steward_runtime::tls::ServerKind;
use steward_tests::pki;
use steward_tests::{spawn_agent, wait_for, AgentGuard, ProcCluster};

const ROUNDS: usize = 3;
const WINDOW: Duration = Duration::from_secs(5);
const KV_CLIENTS: usize = 16;
const HB_SENDERS: usize = 256;
const HB_NODES: usize = 2_000;
const PUT_MIB: usize = 64;
const AGENTS: usize = 3;

struct Side {
    name: &'static str,
    plaintext: bool,
    cluster: ProcCluster,
    _agents: Vec<AgentGuard>,
    leader_addr: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn side(name: &'static str, plaintext: bool) -> anyhow::Result<Side> {
    let cluster = if plaintext {
        ProcCluster::start_plaintext(3, "")?
    } else {
        ProcCluster::start(3, "")?
    };
    let (leader, _) = cluster.wait_leader(Duration::from_secs(30)).await?;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let dir = cluster.dir.path().join(format!("agent-{i}"));
        let extra: &[&str] = if plaintext { &["--insecure"] } else { &[] };
        let child = spawn_agent(&dir, &cluster.addrs(), extra, None)?;
        agents.push(AgentGuard::new(&dir, child));
    }
    let leader_addr = cluster.node(leader).api_addr.clone();
    let s = Side {
        name,
        plaintext,
        cluster,
        _agents: agents,
        leader_addr,
    };
    wait_for("agents ready", Duration::from_secs(30), || async {
        let out = s.cli(&["node", "list", "-o", "json"]).ok()?;
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let ready = list
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "ready")
            .count();
        (ready == AGENTS).then_some(())
    })
    .await?;
    Ok(s)
}

/// Successful calls per second of `workers` concurrent loops over `WINDOW`; `call(worker,
/// n)` makes worker's `n`-th call and says whether it succeeded.
async fn per_second<F, Fut>(workers: usize, call: F) -> anyhow::Result<f64>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (call, done, stop) = (call.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if call(w, n).await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(WINDOW).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

impl Side {
    fn cli(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        let mut cmd = steward_tests::steward_cmd();
        if self.plaintext {
            cmd.env_remove("STEWARD_TLS_DIR")
                .env("STEWARD_INSECURE", "true");
        }
        cmd.env("STEWARD_ADDR", self.cluster.addrs())
            .args(args)
            .output()
    }

    async fn channel(&self, fleet: bool) -> anyhow::Result<tonic::transport::Channel> {
        let options = match (self.plaintext, fleet) {
            (true, _) => steward_runtime::transport::ClientOptions::new(Duration::from_secs(2)),
            (false, false) => pki::client_options(Duration::from_secs(2), ServerKind::Controller),
            (false, true) => pki::fleet_options(Duration::from_secs(2)),
        };
        Ok(steward_runtime::transport::connect(&self.leader_addr, &options).await?)
    }

    /// KV writes/s at `KV_CLIENTS` clients for `WINDOW`.
    async fn kv_writes(&self, round: usize) -> anyhow::Result<f64> {
        let ch = self.channel(false).await?;
        per_second(KV_CLIENTS, move |c, n| {
            let mut client = AdminClient::new(ch.clone());
            let req = KvPutRequest {
                key: format!("bench-tls/{round}/{c}/{n}"),
                value: vec![b'x'; 100],
                ..Default::default()
            };
            async move { client.kv_put(req).await.is_ok() }
        })
        .await
    }

    /// Registers `HB_NODES` simulated nodes (once).
    async fn register_fleet(&self) -> anyhow::Result<()> {
        let mut c = AgentControlClient::new(self.channel(true).await?);
        for i in 0..HB_NODES {
            c.register_node(RegisterNodeRequest {
                node_id: format!("sim-{i:05}"),
                hostname: format!("sim-{i}"),
                inventory_digest: "d".into(),
                inventory: Some(Default::default()),
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// Heartbeats/s the leader takes from `HB_SENDERS` senders for `WINDOW`.
    async fn heartbeats(&self) -> anyhow::Result<f64> {
        let ch = self.channel(true).await?;
        per_second(HB_SENDERS, move |t, seq| {
            let mut c = AgentControlClient::new(ch.clone());
            let req = HeartbeatRequest {
                node_id: format!("sim-{:05}", (t + HB_SENDERS * seq as usize) % HB_NODES),
                seq: seq + 1,
                inventory_digest: "d".into(),
                telemetry: None,
            };
            async move { c.heartbeat(req).await.is_ok() }
        })
        .await
    }

    /// MiB/s of one `steward object put` of `PUT_MIB` fresh random bytes (new content
    /// every time: nothing is deduplicated against an earlier round).
    fn object_put(&self, round: usize) -> anyhow::Result<f64> {
        use rand::RngCore;
        let name = format!("bench/tls-{round}");
        let file = self.cluster.dir.path().join(format!("put-{round}.bin"));
        let mut data = vec![0u8; PUT_MIB << 20];
        rand::rng().fill_bytes(&mut data);
        std::fs::write(&file, &data)?;
        drop(data);
        let started = Instant::now();
        let out = self.cli(&["object", "put", &name, file.to_str().unwrap_or_default()])?;
        let _ = std::fs::remove_file(&file);
        anyhow::ensure!(
            out.status.success(),
            "{} object put: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(PUT_MIB as f64 / started.elapsed().as_secs_f64())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tls = side("tls", false).await?;
    let plain = side("plaintext", true).await?;
    tls.register_fleet().await?;
    plain.register_fleet().await?;
    println!(
        "bench-tls: two clusters of 3 controllers and {AGENTS} agents on loopback, one with mutual TLS and one plaintext; {ROUNDS} rounds, alternating order; medians"
    );
    let mut figures: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for round in 0..ROUNDS {
        let order: [&Side; 2] = if round % 2 == 0 {
            [&tls, &plain]
        } else {
            [&plain, &tls]
        };
        for s in order {
            let kv = s.kv_writes(round).await?;
            let hb = s.heartbeats().await?;
            let put = s.object_put(round)?;
            for (what, v) in [("kv", kv), ("hb", hb), ("put", put)] {
                let e = figures.entry(what).or_default();
                if s.plaintext {
                    e.1.push(v)
                } else {
                    e.0.push(v)
                }
            }
            eprintln!(
                "  round {round} {}: kv {kv:.0}/s, heartbeats {hb:.0}/s, put {put:.1} MiB/s",
                s.name
            );
        }
    }
    println!(
        "{:<44} | {:>12} | {:>12} | {:>9}",
        "workload", "TLS", "plaintext", "TLS/plain"
    );
    for (what, label, unit) in [
        ("kv", format!("KV writes, {KV_CLIENTS} clients"), "/s"),
        (
            "hb",
            format!("heartbeat capacity, {HB_SENDERS} senders"),
            "/s",
        ),
        ("put", format!("object put, {PUT_MIB} MiB, CLI"), " MiB/s"),
    ] {
        let (t, p) = figures.remove(what).unwrap_or_default();
        let (t, p) = (median(t), median(p));
        println!(
            "{label:<44} | {:>10.1}{unit:<2} | {:>10.1}{unit:<2} | {:>8.2}x",
            t,
            p,
            t / p
        );
    }
    println!("(aim: TLS/plain at least 0.85 on each)");
    Ok(())
}
