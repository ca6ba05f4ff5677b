//! `make bench-storage`: the object store's figures, each beside a reference measured in
//! the same run on the same disk (medians of `TRIALS`).
//!
//! 1. Put and get of one object (1 GiB; `STEWARD_BENCH_STORAGE_MIB` to change) through 3
//!    controllers and 4 agents on loopback, with the `steward` CLI as a user runs it.
//!    References: BLAKE3 of the bytes in process; writing the bytes three times with fsync
//!    (what RF 3 must cost on one disk); one plain read of the file.
//! 2. Repair after a node loss (`repair_delay` 0, a budget of `REPAIR_BUDGET_MIB` MiB/s):
//!    the lost replicas' bytes over the time from the node marked down to `fsck` reporting
//!    nothing under-replicated.
//! 3. Dedup, in bytes, between two synthetic model versions (the top layers fine-tuned)
//!    and between two checkpoints of which the second appends to the first; the real-file
//!    figures are in docs/storage/dedup.md.
//! 4. Scale: a controller's state with 1 million chunk references (4 TiB logical) and its
//!    replica tracker at 3 replicas over 100 nodes, in this process: RSS growth, snapshot
//!    build (encode) time, and the survey `fsck` and repair run over every chunk.
//!
//! `STEWARD_BENCH_STORAGE_PARTS=put,repair,dedup,scale` runs only the parts named (put and
//! repair share one cluster).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use steward_controller::control::liveness::LivenessTracker;
use steward_controller::control::repair::Survey;
use steward_controller::control::replicas::ReplicaTracker;
use steward_core::chunk::{ChunkId, ObjectHash};
use steward_core::chunking::{reused_bytes, split, ChunkingParams};
use steward_core::inventory::Inventory;
use steward_core::objects::apply::PutVersion;
use steward_core::objects::{ChunkRef, Manifest};
use steward_core::{ClusterState, Command as StateCommand};
use steward_tests::{spawn_agent, steward_cmd, wait_for, AgentGuard, ProcCluster};

const TRIALS: usize = 3;
const AGENTS: usize = 4;
const REPAIR_BUDGET_MIB: u64 = 100;
const SCALE_CHUNKS: usize = 1_000_000;
const SCALE_NODES: usize = 100;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Deterministic bytes that look random.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

fn steward(cluster: &ProcCluster, args: &[&str], stdout: Stdio) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = steward_cmd()
        .args(args)
        .env("STEWARD_ADDR", cluster.addrs())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()?;
    let took = started.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "steward {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

fn fsck(cluster: &ProcCluster) -> serde_json::Value {
    steward_cmd()
        .args(["-o", "json", "fsck"])
        .env("STEWARD_ADDR", cluster.addrs())
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or(serde_json::Value::Null)
}

async fn settled(cluster: &ProcCluster, what: &str) -> anyhow::Result<()> {
    wait_for(what, Duration::from_secs(300), || async {
        let f = fsck(cluster);
        (f["complete"] == true
            && f["under_replicated"] == 0
            && f["misplaced"] == 0
            && f["repairs_in_flight"] == 0)
            .then_some(())
    })
    .await
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

/// Writes `data` to `path` and fsyncs it.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mib: usize = std::env::var("STEWARD_BENCH_STORAGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = mib << 20;
    let parts = std::env::var("STEWARD_BENCH_STORAGE_PARTS")
        .unwrap_or_else(|_| "put,repair,dedup,scale".into());
    let wants = |part: &str| parts.split(',').any(|p| p.trim() == part);
    if wants("put") || wants("repair") {
        on_a_cluster(size, mib, wants("put"), wants("repair")).await?;
    }
    if wants("dedup") {
        dedup();
    }
    if wants("scale") {
        scale();
    }
    Ok(())
}

/// Parts 1 and 2, on one cluster.
async fn on_a_cluster(
    size: usize,
    mib: usize,
    put_part: bool,
    repair_part: bool,
) -> anyhow::Result<()> {
    println!("bench-storage: {mib} MiB objects, 3 controllers and {AGENTS} agents on loopback, medians of {TRIALS}");
    let cluster = ProcCluster::start_with(
        3,
        &format!(
            "[storage]\nrepair_delay = \"0s\"\nrepair_bandwidth = \"{REPAIR_BUDGET_MIB} MiB\"\n"
        ),
    )?;
    cluster.wait_leader(Duration::from_secs(30)).await?;
    let root = cluster.dir.path().to_path_buf();
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let dir = root.join(format!("agent-{i}"));
        let child = spawn_agent(
            &dir,
            &cluster.addrs(),
            &[
                "--chunk-free-floor",
                "1GiB",
                "--heartbeat-interval",
                "200ms",
                "--chunk-gc-grace",
                "1s",
                "--chunk-gc-interval",
                "1s",
            ],
            Some(&root.join(format!("agent-{i}.log"))),
        )?;
        agents.push(AgentGuard::new(&dir, child));
    }
    wait_for("agents reporting", Duration::from_secs(60), || async {
        let f = fsck(&cluster);
        (f["complete"] == true && f["nodes"].as_array().is_some_and(|n| n.len() == AGENTS))
            .then_some(())
    })
    .await?;

    // 1. Put and get, beside the references.
    let file = root.join("object.bin");
    let (mut put, mut get, mut hash, mut three, mut read) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for trial in 0..if put_part { TRIALS } else { 0 } {
        let data = bytes(trial as u64 + 1, size);
        let t = Instant::now();
        let digest = blake3::hash(&data);
        hash.push(mib_s(size as u64, t.elapsed()));
        std::hint::black_box(digest);
        let t = Instant::now();
        for copy in 0..3 {
            write_synced(&root.join(format!("reference-{copy}.bin")), &data)?;
        }
        three.push(mib_s(size as u64, t.elapsed()));
        for copy in 0..3 {
            std::fs::remove_file(root.join(format!("reference-{copy}.bin")))?;
        }
        write_synced(&file, &data)?;
        drop(data);
        let t = Instant::now();
        let back = std::fs::read(&file)?;
        read.push(mib_s(size as u64, t.elapsed()));
        drop(back);
        let name = format!("bench/object-{trial}");
        let took = steward(
            &cluster,
            &["object", "put", &name, file.to_str().unwrap_or_default()],
            Stdio::null(),
        )?;
        put.push(mib_s(size as u64, took));
        let took = steward(&cluster, &["object", "get", &name, "-"], Stdio::null())?;
        get.push(mib_s(size as u64, took));
        steward(&cluster, &["object", "rm", &name], Stdio::null())?;
        // The chunks go with the garbage collection (1 s grace here) before the next trial.
        wait_for("chunks collected", Duration::from_secs(120), || async {
            let held: u64 = (0..AGENTS)
                .map(|i| dir_bytes(&root.join(format!("agent-{i}/chunks/data"))))
                .sum();
            (held == 0).then_some(())
        })
        .await?;
    }
    if put_part {
        let (put, get, hash, three, read) = (
            median(put),
            median(get),
            median(hash),
            median(three),
            median(read),
        );
        println!("  put:  {put:8.1} MiB/s   = {:5.1} % of writing it 3x with fsync ({three:.1} MiB/s; aim >= 70 %)", put / three * 100.0);
        println!(
        "  get:  {get:8.1} MiB/s   = {:5.1} % of the slower of BLAKE3 in process ({hash:.1} MiB/s) and one read ({read:.1} MiB/s; aim >= 50 %)",
        get / hash.min(read) * 100.0
    );
    }
    if !repair_part {
        return Ok(());
    }

    // 2. Repair after a node loss.
    let data = bytes(99, size);
    write_synced(&file, &data)?;
    drop(data);
    steward(
        &cluster,
        &[
            "object",
            "put",
            "bench/repair",
            file.to_str().unwrap_or_default(),
        ],
        Stdio::null(),
    )?;
    settled(&cluster, "the put at RF 3").await?;
    let lost = dir_bytes(&root.join("agent-0/chunks/data"));
    if let Some(mut c) = agents[0].child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let down = wait_for("agent 0 marked down", Duration::from_secs(60), || async {
        let f = fsck(&cluster);
        (f["under_replicated"].as_u64().unwrap_or(0) > 0).then(Instant::now)
    })
    .await?;
    settled(&cluster, "RF restored").await?;
    let took = down.elapsed();
    let rate = mib_s(lost, took);
    println!(
        "  repair: {:.0} MiB of lost replicas restored in {:.1} s = {rate:.1} MiB/s, {:.0} % of the {REPAIR_BUDGET_MIB} MiB/s budget (aim: within 20 %)",
        lost as f64 / 1048576.0,
        took.as_secs_f64(),
        rate / REPAIR_BUDGET_MIB as f64 * 100.0
    );
    drop(agents);
    drop(cluster);
    Ok(())
}

/// A synthetic model: 32 tensors of 8 MiB behind a small header, like a safetensors file.
fn model(seed: u64, fine_tuned_layers: usize) -> Vec<u8> {
    let mut out = br#"{"__metadata__":{"format":"pt"}}"#.to_vec();
    for layer in 0..32u64 {
        let tuned = layer >= 32 - fine_tuned_layers as u64;
        out.extend(bytes(
            if tuned {
                seed * 1000 + layer
            } else {
                layer + 1
            },
            8 << 20,
        ));
    }
    out
}

fn dedup() {
    let p = ChunkingParams::DEFAULT;
    let v1 = model(1, 0);
    let v2 = model(2, 4);
    let (a, b) = (
        split(&v1, p).unwrap_or_default(),
        split(&v2, p).unwrap_or_default(),
    );
    let reused = reused_bytes(&a, &b);
    println!(
        "  dedup, top 4 of 32 layers fine-tuned ({} MiB): {} of {} MiB re-used = {:.1} % (the unchanged layers are 87.5 %)",
        v2.len() >> 20,
        reused >> 20,
        v2.len() >> 20,
        reused as f64 / v2.len() as f64 * 100.0
    );
    let mut appended = v1.clone();
    appended.extend(bytes(7, 64 << 20));
    let c = split(&appended, p).unwrap_or_default();
    let reused = reused_bytes(&a, &c);
    let kept = a.iter().filter(|x| c.iter().any(|y| y.id == x.id)).count();
    println!(
        "  dedup, a checkpoint appending 64 MiB: {} of {} MiB re-used = {:.1} %; {kept} of the first checkpoint's {} chunks re-used (all but its last: {})",
        reused >> 20,
        appended.len() >> 20,
        reused as f64 / appended.len() as f64 * 100.0,
        a.len(),
        kept + 1 == a.len()
    );
}

fn scale() {
    let before = rss_mib();
    let mut state = ClusterState::default();
    state.apply(StateCommand::SetClusterLevel {
        level: steward_core::features::OBJECTS_LEVEL,
    });
    let nodes: Vec<String> = (0..SCALE_NODES).map(|i| format!("node-{i:03}")).collect();
    for (i, n) in nodes.iter().enumerate() {
        let mut inventory = Inventory::default();
        inventory.agent.api_addr = Some(format!("10.0.{}.{}:7800", i / 250, i % 250 + 1));
        state.apply(StateCommand::RegisterNodeTyped {
            node: n.clone(),
            hostname: n.clone(),
            labels: BTreeMap::from([("rack".to_string(), format!("r{}", i % 10))]),
            inventory: Box::new(inventory),
            registration_digest: "bench".into(),
        });
    }
    let per_object = steward_core::objects::MAX_CHUNKS_PER_VERSION;
    let chunk_size = 4u32 << 20;
    let ids: Vec<ChunkId> = (0..SCALE_CHUNKS as u64)
        .map(|i| ChunkId::of(&i.to_le_bytes()))
        .collect();
    let t = Instant::now();
    for (o, part) in ids.chunks(per_object).enumerate() {
        let manifest = Manifest {
            chunks: part
                .iter()
                .map(|id| ChunkRef {
                    id: *id,
                    size: chunk_size,
                })
                .collect(),
            size: part.len() as u64 * u64::from(chunk_size),
            content_hash: ObjectHash::from_hash(blake3::hash(&(o as u64).to_le_bytes())),
        };
        let r = state.apply(StateCommand::PutObjectVersion {
            put: Box::new(PutVersion {
                name: format!("bench/shard-{o:02}"),
                manifest,
                rf: 3,
                labels: BTreeMap::new(),
                tags: vec![],
                retention: None,
            }),
        });
        assert!(
            matches!(r, steward_core::CommandResult::ObjectVersionPut { .. }),
            "{r:?}"
        );
    }
    let applied = t.elapsed();
    let with_state = rss_mib();
    let replicas = ReplicaTracker::default();
    for (k, id) in ids.iter().enumerate() {
        for r in 0..3 {
            let _ = replicas.record(&nodes[(k * 7 + r * 31) % SCALE_NODES], [*id]);
        }
    }
    let with_tracker = rss_mib();
    let t = Instant::now();
    let encoded = state.encode().map(|e| e.len()).unwrap_or(0);
    let encode = t.elapsed();
    let liveness = LivenessTracker::new(Default::default());
    let t = Instant::now();
    let survey = Survey::take(&state, &liveness, &replicas, Duration::ZERO, None);
    let surveyed = t.elapsed();
    println!(
        "  scale: {} chunk references ({:.1} TiB logical) over {SCALE_NODES} nodes, 3 replicas each:",
        SCALE_CHUNKS,
        (SCALE_CHUNKS as u64 * u64::from(chunk_size)) as f64 / (1u64 << 40) as f64
    );
    println!(
        "    RSS +{:.0} MiB for the state, +{:.0} MiB for the replica tracker = {:.0} MiB (target <= 1024)",
        with_state - before,
        with_tracker - with_state,
        with_tracker - before
    );
    println!(
        "    applying the puts {:.1} s; snapshot build (encode, {:.0} MiB) {:.2} s (target <= 10 s); survey for fsck/repair {:.2} s over {} chunks",
        applied.as_secs_f64(),
        encoded as f64 / 1048576.0,
        encode.as_secs_f64(),
        surveyed.as_secs_f64(),
        survey.chunks.len()
    );
}
