//! `make bench-raft`: three controllers on loopback with fsync on; KV puts through the
//! admin API at 1, 16 and 256 concurrent clients (committed writes/s, p50/p99 latency),
//! side by side with a 3-member etcd on the same loopback and disk, loaded the same way
//! (same client counts, value size and duration, through the etcd-client crate), with
//! Steward's figures as ratios to etcd's; write latency while `status` is polled; leader
//! failover time (SIGKILL to first committed write), median of 10. Prints a raw fsync
//! reference measured in the same run on the same disk.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use steward_proto::v1::admin_client::AdminClient;
use steward_proto::v1::KvPutRequest;
use steward_tests::ProcCluster;
use tonic::transport::Channel;

/// How long each concurrency level runs.
const RUN: Duration = Duration::from_secs(5);
/// Channels (HTTP/2 connections) the clients share.
const CHANNELS: usize = 8;
const FAILOVERS: usize = 10;

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    steward_tests::channel(
        addr,
        steward_runtime::tls::ServerKind::Controller,
        Duration::from_secs(5),
    )
    .await
}

fn fsync_reference(dir: &std::path::Path) -> anyhow::Result<Duration> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let mut samples = Vec::new();
    for _ in 0..200 {
        f.write_all(&[7u8; 4096])?;
        let t = Instant::now();
        f.sync_data()?;
        samples.push(t.elapsed());
    }
    samples.sort();
    std::fs::remove_file(path)?;
    Ok(samples[samples.len() / 2])
}

/// A controller's `/metrics` samples by series (name and labels), or empty when it cannot
/// be read.
fn scrape(metrics_addr: &str) -> HashMap<String, f64> {
    let text = steward_tests::http_get(metrics_addr, "/metrics").unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, v)| Some((series.to_string(), v.trim().parse().ok()?)))
        .collect()
}

/// Each controller's `/metrics` before and after one level.
struct Scrapes {
    before: BTreeMap<u64, HashMap<String, f64>>,
    after: BTreeMap<u64, HashMap<String, f64>>,
}

impl Scrapes {
    /// How much `series` grew on controller `id` during the level. `None` when either
    /// scrape of that controller failed; a series first seen after the level started
    /// (a follower's `{peer}` histogram) grew from 0.
    fn delta(&self, id: u64, series: &str) -> Option<f64> {
        let before = self.before.get(&id).filter(|m| !m.is_empty())?;
        Some(self.after.get(&id)?.get(series)? - before.get(series).unwrap_or(&0.0))
    }

    /// The mean of histogram `name` (with `labels`, e.g. `{peer="2"}`) on `id` during the
    /// level.
    fn mean(&self, id: u64, name: &str, labels: &str) -> Option<f64> {
        let sum = self.delta(id, &format!("{name}_sum{labels}"))?;
        let count = self.delta(id, &format!("{name}_count{labels}"))?;
        (count > 0.0).then(|| sum / count)
    }

    /// Where a write's time went on the controllers (means over the level; builds without
    /// the stage histograms print nothing): the leader's proposal time split into its own
    /// synced log append, the faster follower's AppendEntries round trip (which holds that
    /// follower's synced append), apply, and the rest: openraft's hand-offs between its
    /// tasks and, under load, waiting behind the entries in flight. The split is exact for
    /// a lone writer; under load the stage means are per call, not per entry. The client's
    /// time also holds two gRPC hops to and from the leader.
    fn breakdown(&self, leader: u64) -> Option<String> {
        let ms = 1000.0;
        let proposal = self.mean(leader, "steward_raft_proposal_seconds", "")? * ms;
        let append = self.mean(leader, "steward_raft_log_append_seconds", "")? * ms;
        let apply = self.mean(leader, "steward_raft_apply_seconds", "")? * ms;
        let per_entry = self.mean(leader, "steward_raft_entry_commands", "")?;
        let (peer, round_trip) = self
            .after
            .keys()
            .filter(|id| **id != leader)
            .filter_map(|id| {
                let rtt = self.mean(
                    leader,
                    "steward_raft_peer_append_seconds",
                    &format!("{{peer=\"{id}\"}}"),
                )?;
                Some((*id, rtt * ms))
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        let follower_append = self.mean(peer, "steward_raft_log_append_seconds", "")? * ms;
        let rest = proposal - append - round_trip - apply;
        Some(format!(
            "{per_entry:.1} commands/entry; proposal {proposal:.2} ms = leader log append {append:.2} + follower {peer} round trip {round_trip:.2} (its log append {follower_append:.2}) + apply {apply:.2} + hand-offs and queueing {rest:.2}",
        ))
    }
}

/// Runs `clients` writers for [`RUN`]: writer `c` calls `put(c, n)` for n = 0, 1, ...
/// (true: the write committed). Committed writes/s and the latency histogram.
async fn run_writers<P, Fut>(
    what: &str,
    clients: usize,
    put: P,
) -> anyhow::Result<(f64, Histogram<u64>)>
where
    P: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (stop, put) = (stop.clone(), put.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let (mut n, mut errors) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if put(c, n).await {
                    let _ = hist.record(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
                n += 1;
            }
            (hist, errors)
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Histogram::<u64>::new(3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        total.add(h)?;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    if errors > 0 {
        eprintln!("  ({errors} failed {what} writes at {clients} clients)");
    }
    Ok((total.len() as f64 / secs, total))
}

/// Steward's writes/s and latency histogram at `clients` concurrent clients. Each writer
/// is a client with request ids, like the CLI: at-most-once writes.
async fn throughput(
    addr: &str,
    clients: usize,
    round: usize,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let mut channels = Vec::new();
    for _ in 0..CHANNELS.min(clients) {
        channels.push(channel(addr).await?);
    }
    let client_ids: Arc<Vec<u64>> = Arc::new((0..clients).map(|_| rand::random()).collect());
    // BENCH_RAFT_NO_IDS=1: plain writes without request ids (to compare with builds that
    // have no at-most-once sessions).
    let with_ids = std::env::var("BENCH_RAFT_NO_IDS").is_err();
    run_writers("Steward", clients, move |c, n| {
        let mut client = AdminClient::new(channels[c % channels.len()].clone());
        let req = KvPutRequest {
            key: format!("bench/{round}/{c}/{n}"),
            value: vec![b'x'; 100],
            expected_revision: None,
            request_id: with_ids.then_some(steward_proto::v1::RequestId {
                client: client_ids[c],
                seq: n + 1,
            }),
        };
        async move { client.kv_put(req).await.is_ok() }
    })
    .await
}

/// Writes `keys` values of `value_bytes` through `clients` concurrent writers.
async fn preload(addr: &str, keys: usize, value_bytes: usize) -> anyhow::Result<()> {
    let ch = channel(addr).await?;
    let clients = 16;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = AdminClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            for n in (c..keys).step_by(clients) {
                let req = KvPutRequest {
                    key: format!("preload/{n:08}"),
                    value: vec![b'p'; value_bytes],
                    expected_revision: None,
                    request_id: None,
                };
                client.kv_put(req).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// One client's write latency for `RUN`, with `status` polled every 100 ms meanwhile when
/// `poll` is set; returns (write histogram, status histogram).
async fn writes_while_polling(
    addr: &str,
    poll: bool,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let mut client = AdminClient::new(channel(addr).await?);
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            while poll && !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = Instant::now();
                if client
                    .status(steward_proto::v1::StatusRequest::default())
                    .await
                    .is_ok()
                {
                    let _ = hist.record(t.elapsed().as_micros() as u64);
                }
            }
            hist
        })
    };
    let mut client = AdminClient::new(channel(addr).await?);
    let mut hist = Histogram::<u64>::new(3)?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN {
        let req = KvPutRequest {
            key: format!("poll/{poll}/{n}"),
            value: vec![b'x'; 100],
            expected_revision: None,
            request_id: None,
        };
        n += 1;
        let t = Instant::now();
        client.kv_put(req).await?;
        hist.record(t.elapsed().as_micros() as u64)?;
    }
    stop.store(true, Ordering::Relaxed);
    Ok((hist, poller.await?))
}

/// etcd's writes/s and latency histogram at `clients` concurrent clients.
async fn etcd_throughput(
    url: &str,
    clients: usize,
    round: usize,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let mut conns = Vec::new();
    for _ in 0..CHANNELS.min(clients) {
        conns.push(etcd_client::Client::connect([url], None).await?.kv_client());
    }
    run_writers("etcd", clients, move |c, n| {
        let mut client = conns[c % conns.len()].clone();
        async move {
            client
                .put(format!("bench/{round}/{c}/{n}"), vec![b'x'; 100], None)
                .await
                .is_ok()
        }
    })
    .await
}

async fn first_write(addrs: &[String]) -> Duration {
    let start = Instant::now();
    loop {
        for a in addrs {
            if let Ok(ch) = channel(a).await {
                let mut c = AdminClient::new(ch);
                let req = KvPutRequest {
                    key: "bench/failover".into(),
                    value: b"1".to_vec(),
                    expected_revision: None,
                    request_id: None,
                };
                if c.kv_put(req).await.is_ok() {
                    return start.elapsed();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // BENCH_RAFT_NODES=1 measures a single controller (no replication), for comparison.
    let nodes: u64 = std::env::var("BENCH_RAFT_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut cluster = ProcCluster::start(nodes, "")?;
    let (leader, _) = cluster.wait_leader(Duration::from_secs(30)).await?;
    let fsync = fsync_reference(cluster.dir.path())?;
    println!(
        "bench-raft: {nodes} controllers on loopback, fsync on, 100-byte values, {RUN:?} per level"
    );
    println!(
        "reference: raw 4 KiB write+fdatasync on the same disk, median {:.0} us",
        fsync.as_secs_f64() * 1e6
    );
    let leader_addr = cluster.node(leader).api_addr.clone();
    let metrics_addrs: Vec<(u64, String)> = cluster
        .nodes
        .iter()
        .map(|(id, n)| (*id, n.metrics_addr.clone()))
        .collect();
    let etcd = steward_tests::etcd::EtcdCluster::start(cluster.dir.path())?;
    let etcd_url = etcd.leader_url().await?;
    let etcd_version = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default();
    println!("peer: 3-member etcd on the same loopback and disk, default fsync ({etcd_version})");
    println!(
        "{:>8} | {:>9} {:>7} {:>7} | {:>9} {:>7} {:>7} | {:>9} {:>9}",
        "clients",
        "steward/s",
        "p50 ms",
        "p99 ms",
        "etcd/s",
        "p50 ms",
        "p99 ms",
        "ratio w/s",
        "ratio p99"
    );
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    // BENCH_RAFT_CLIENTS=1,16 runs only those levels; BENCH_RAFT_QUICK=1 skips the status
    // polling and failover parts (for quick comparisons while tuning).
    let levels: Vec<usize> = std::env::var("BENCH_RAFT_CLIENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 256]);
    let quick = std::env::var("BENCH_RAFT_QUICK").as_deref() == Ok("1");
    for (round, clients) in levels.into_iter().enumerate() {
        // Alternate which system goes first, so neither always runs on a warmer machine.
        let scrape_all = || {
            metrics_addrs
                .iter()
                .map(|(id, addr)| (*id, scrape(addr)))
                .collect::<BTreeMap<_, _>>()
        };
        let steward = || async {
            let before = scrape_all();
            let s = throughput(&leader_addr, clients, round).await?;
            let scrapes = Scrapes {
                before,
                after: scrape_all(),
            };
            let stages = scrapes.breakdown(leader);
            anyhow::Ok((s, stages))
        };
        let ((s, stages), e) = if round % 2 == 0 {
            let s = steward().await?;
            (s, etcd_throughput(&etcd_url, clients, round).await?)
        } else {
            let e = etcd_throughput(&etcd_url, clients, round).await?;
            (steward().await?, e)
        };
        println!(
            "{clients:>8} | {:>9.0} {:>7.2} {:>7.2} | {:>9.0} {:>7.2} {:>7.2} | {:>8.2}x {:>8.2}x",
            s.0,
            ms(&s.1, 0.5),
            ms(&s.1, 0.99),
            e.0,
            ms(&e.1, 0.5),
            ms(&e.1, 0.99),
            s.0 / e.0,
            ms(&s.1, 0.99) / ms(&e.1, 0.99),
        );
        if let Some(stages) = stages {
            println!("{:>8}   Steward's stages (means): {stages}", "");
        }
    }
    println!(
        "(ratio w/s above 1: Steward commits more; ratio p99 below 1: Steward's tail is shorter)"
    );

    if quick {
        return Ok(());
    }
    // Apply latency while an operator polls `steward status` ten times a second, on a
    // state of PRELOAD_KEYS x PRELOAD_VALUE bytes (status digests the whole state).
    const PRELOAD_KEYS: usize = 20_000;
    const PRELOAD_VALUE: usize = 2048;
    preload(&leader_addr, PRELOAD_KEYS, PRELOAD_VALUE).await?;
    println!(
        "one client's writes on a {} MiB state, without and with `status` polled every 100 ms:",
        (PRELOAD_KEYS * PRELOAD_VALUE) >> 20
    );
    for poll in [false, true] {
        let (w, s) = writes_while_polling(&leader_addr, poll).await?;
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        print!(
            "  {:<16} write p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            if poll {
                "status polled:"
            } else {
                "no polling:"
            },
            ms(&w, 0.5),
            ms(&w, 0.99),
            w.max() as f64 / 1000.0
        );
        if poll {
            print!(
                "; status p50 {:.2} ms, p99 {:.2} ms",
                ms(&s, 0.5),
                ms(&s, 0.99)
            );
        }
        println!();
    }

    if nodes < 3 {
        return Ok(());
    }
    let mut times = Vec::new();
    for _ in 0..FAILOVERS {
        let (leader, _) = cluster.wait_leader(Duration::from_secs(30)).await?;
        let survivors: Vec<String> = (1..=3)
            .filter(|id| *id != leader)
            .map(|id| cluster.node(id).api_addr.clone())
            .collect();
        cluster.kill(leader);
        let t = first_write(&survivors).await;
        times.push(t);
        cluster.spawn(leader)?;
        cluster.wait_converged(Duration::from_secs(30)).await?;
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "failover (SIGKILL leader -> first committed write), {FAILOVERS} runs: median {:.0} ms, min {:.0} ms, max {:.0} ms",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
    Ok(())
}
