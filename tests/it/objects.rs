//! Objects end to end with real processes: 3 controllers and 5 agents on temp-dir disks,
//! driven through the `steward object` CLI like an operator would.
//!
//! - put and get bit-exact; a second version that changes a part re-sends only the changed
//!   chunks; an unchanged put makes no version;
//! - an agent below its free-space floor gets no chunks, and a direct PutChunk to it gets
//!   RESOURCE_EXHAUSTED while what it holds stays readable;
//! - tags move by compare-and-set, and readers of `NAME:prod` while it moves always get one
//!   whole version, old or new;
//! - the leader SIGKILLed during a put: the put commits whole or reports failure, no
//!   version is half-visible, and a retry succeeds;
//! - an agent SIGKILLed (`repair_delay` 0): `fsck` reports nothing under-replicated within
//!   60 s and every object reads back; restarted, its stand-ins' surplus replicas are
//!   trimmed;
//! - with `repair_delay` 2 min, an agent restarted right after it went down causes no copy;
//! - bit rot in 20 chunk files: a scrub finds 20/20, they are repaired to RF 3, and reads
//!   meanwhile return the right bytes or an error, never wrong bytes;
//! - a node added to a full layout receives its share of the chunks (copied, then the
//!   displaced replicas trimmed), within the repair budget;
//! - `steward node drain` moves a node's chunks off before it reports the node drained;
//! - a deleted object's chunks are collected from every agent once the leader confirms no
//!   version references them, and the chunks another object shares stay.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use steward_proto::v1::{ListNodesRequest, PutChunkRequest};
use steward_tests::{spawn_agent, steward_cmd, wait_for, AgentGuard, ProcCluster};
use tonic::Code;

use crate::common::leader_client;

/// Agents keep a small floor: CI disks may be small.
const FLOOR: &str = "64MiB";

struct Storage {
    cluster: ProcCluster,
    /// Held: the agents stop when the test ends.
    _agents: Vec<AgentGuard>,
    /// The agent whose disk is "full" (a floor no disk meets), when one was asked for.
    full: Option<usize>,
    extra: Vec<&'static str>,
}

impl Storage {
    async fn start(agents: usize, with_full: bool) -> anyhow::Result<Storage> {
        Self::start_with(agents, with_full, "").await
    }

    async fn start_with(agents: usize, with_full: bool, toml: &str) -> anyhow::Result<Storage> {
        Self::start_full(agents, with_full, toml, &[]).await
    }

    /// `extra`: flags every agent gets (and keeps across restarts).
    async fn start_full(
        agents: usize,
        with_full: bool,
        toml: &str,
        extra: &[&'static str],
    ) -> anyhow::Result<Storage> {
        let cluster = ProcCluster::start_with(3, toml)?;
        cluster.wait_leader(Duration::from_secs(20)).await?;
        let mut guards = Vec::new();
        for i in 0..agents {
            let dir = cluster.dir.path().join(format!("agent-{i}"));
            let floor = if with_full && i == agents - 1 {
                "1PiB"
            } else {
                FLOOR
            };
            let log = cluster.dir.path().join(format!("agent-{i}.log"));
            let child = spawn_agent(
                &dir,
                &cluster.addrs(),
                &refs(&agent_flags(i, floor, extra)),
                Some(&log),
            )?;
            guards.push(AgentGuard::new(&dir, child));
        }
        let s = Storage {
            cluster,
            _agents: guards,
            full: with_full.then_some(agents - 1),
            extra: extra.to_vec(),
        };
        // Every agent registered, ready, and its chunk store reported in a heartbeat.
        wait_for("agents ready", Duration::from_secs(30), || async {
            let mut c = leader_client(&s.cluster).await.ok()?;
            let nodes = c
                .list_nodes(ListNodesRequest {
                    node_id: String::new(),
                    with_inventory: true,
                })
                .await
                .ok()?
                .into_inner()
                .nodes;
            (nodes.len() == agents
                && nodes.iter().all(|n| {
                    n.health == "ready" && n.telemetry.as_ref().is_some_and(|t| t.chunks.is_some())
                }))
            .then_some(())
        })
        .await?;
        Ok(s)
    }

    /// SIGKILLs agent `i` (its data stays).
    fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self._agents[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart_agent(&mut self, i: usize) -> anyhow::Result<()> {
        self.restart_agent_with_floor(i, FLOOR)
    }

    /// Restarts agent `i` (stopped) with free-space floor `floor`.
    fn restart_agent_with_floor(&mut self, i: usize, floor: &str) -> anyhow::Result<()> {
        let dir = self.agent_dir(i);
        let log = self
            .cluster
            .dir
            .path()
            .join(format!("agent-{i}.restarted.log"));
        let child = spawn_agent(
            &dir,
            &self.cluster.addrs(),
            &refs(&agent_flags(i, floor, &self.extra)),
            Some(&log),
        )?;
        self._agents[i].child = Some(child);
        Ok(())
    }

    /// Starts one more agent (the next index); returns its index.
    fn add_agent(&mut self) -> anyhow::Result<usize> {
        let i = self._agents.len();
        let dir = self.agent_dir(i);
        let log = self.cluster.dir.path().join(format!("agent-{i}.log"));
        let child = spawn_agent(
            &dir,
            &self.cluster.addrs(),
            &refs(&agent_flags(i, FLOOR, &self.extra)),
            Some(&log),
        )?;
        self._agents.push(AgentGuard::new(&dir, child));
        Ok(i)
    }

    fn agents(&self) -> usize {
        self._agents.len()
    }

    /// Live (not killed) agents holding each chunk, from the files in their stores.
    fn live_holders(&self) -> std::collections::BTreeMap<String, usize> {
        let mut holders = std::collections::BTreeMap::new();
        for i in (0..self.agents()).filter(|i| self._agents[*i].child.is_some()) {
            for id in chunks_held(self, i) {
                *holders.entry(id).or_insert(0) += 1;
            }
        }
        holders
    }

    fn node_id(&self, i: usize) -> String {
        std::fs::read_to_string(self.agent_dir(i).join("node-id"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// `steward fsck -o json` (it exits 1 while data is at risk).
    fn fsck(&self) -> serde_json::Value {
        let out = self.cli(&["-o", "json", "fsck"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Waits until fsck sees every agent's report and nothing at risk or misplaced.
    async fn wait_settled(
        &self,
        what: &str,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        wait_for(what, timeout, || async {
            let f = self.fsck();
            (f["complete"] == true
                && f["under_replicated"] == 0
                && f["misplaced"] == 0
                && f["repairs_in_flight"] == 0)
                .then_some(f)
        })
        .await
    }

    fn cli(&self, args: &[&str]) -> Output {
        steward_cmd()
            .args(args)
            .env("STEWARD_ADDR", self.cluster.addrs())
            .stdin(Stdio::null())
            .output()
            .expect("run steward")
    }

    fn cli_ok(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let out = self.cli(&full);
        assert!(
            out.status.success(),
            "steward {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    fn agent_dir(&self, i: usize) -> PathBuf {
        self.cluster.dir.path().join(format!("agent-{i}"))
    }

    /// Chunk files in agent `i`'s store.
    fn chunk_files(&self, i: usize) -> usize {
        count_files(&self.agent_dir(i).join("chunks").join("data"))
    }
}

/// Agent `i`'s flags: its floor, fast heartbeats, a `slot=aI` label (jobs pin themselves
/// to one agent with it), and `extra`.
fn agent_flags(i: usize, floor: &str, extra: &[&str]) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--chunk-free-floor",
        floor,
        "--heartbeat-interval",
        "200ms",
        "--label",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    flags.push(format!("slot=a{i}"));
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

fn refs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p)
            } else {
                1
            }
        })
        .sum()
}

/// Deterministic bytes that look random.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_dedup_and_an_agent_below_its_floor() -> anyhow::Result<()> {
    let mut s = Storage::start(5, true).await?;
    let dir = s.cluster.dir.path().to_path_buf();
    let v1 = bytes(1, 24 << 20);
    let mut v2 = v1.clone();
    v2[12 << 20..(12 << 20) + 4096].fill(0xAB);
    std::fs::write(dir.join("v1.bin"), &v1)?;
    std::fs::write(dir.join("v2.bin"), &v2)?;

    let put1 = s.cli_ok(&[
        "object",
        "put",
        "models/m",
        dir.join("v1.bin").to_str().unwrap(),
        "--tag",
        "prod",
    ]);
    let p1 = &put1["objects"][0];
    assert_eq!(p1["version"], 1);
    assert_eq!(p1["size"], v1.len() as u64);
    assert_eq!(p1["sent_bytes"], 3 * v1.len() as u64, "three replicas sent");
    let put2 = s.cli_ok(&[
        "object",
        "put",
        "models/m",
        dir.join("v2.bin").to_str().unwrap(),
    ]);
    let p2 = &put2["objects"][0];
    assert_eq!(p2["version"], 2);
    let dedup = p2["deduplicated_bytes"].as_u64().unwrap_or(0);
    assert!(
        dedup >= v2.len() as u64 / 2,
        "a 4 KiB edit re-sends only its chunk: {p2}"
    );
    let again = s.cli_ok(&[
        "object",
        "put",
        "models/m",
        dir.join("v2.bin").to_str().unwrap(),
    ]);
    assert_eq!(again["objects"][0]["version"], 2);
    assert_eq!(again["objects"][0]["created"], false);
    assert_eq!(again["objects"][0]["sent_bytes"], 0);

    for (reference, want) in [
        ("models/m:prod", &v1),
        ("models/m@2", &v2),
        ("models/m", &v2),
    ] {
        let out = dir.join("out.bin");
        s.cli_ok(&["object", "get", reference, out.to_str().unwrap()]);
        assert!(
            std::fs::read(&out)? == *want,
            "{reference} reads back bit-exact"
        );
    }

    // The full agent got nothing; the others hold every chunk between them, RF 3.
    let full = s.full.expect("a full agent");
    assert_eq!(s.chunk_files(full), 0, "no chunk placed below the floor");
    let stored: usize = (0..s.agents())
        .filter(|i| *i != full)
        .map(|i| s.chunk_files(i))
        .sum();
    let versions = s.cli_ok(&["object", "versions", "models/m"]);
    let chunks_v1 = versions["versions"][0]["chunks"].as_u64().unwrap_or(0) as usize;
    assert!(
        stored >= 3 * chunks_v1,
        "{stored} replicas for {chunks_v1} chunks"
    );

    // A direct put to the full agent: RESOURCE_EXHAUSTED, nothing written.
    let addr = std::fs::read_to_string(s.agent_dir(full).join("node-id")).ok();
    assert!(addr.is_some(), "the full agent has a node id");
    let mut c = leader_client(&s.cluster).await?;
    let node = c
        .list_nodes(ListNodesRequest {
            node_id: addr.unwrap_or_default().trim().to_string(),
            with_inventory: false,
        })
        .await?
        .into_inner()
        .nodes
        .remove(0);
    let ch = steward_tests::channel(
        &node.agent_api_addr,
        steward_runtime::tls::ServerKind::Agent,
        Duration::from_secs(10),
    )
    .await?;
    let data = b"refused below the floor".to_vec();
    let first = PutChunkRequest {
        chunk_id: steward_core::chunk::ChunkId::of(&data).to_string(),
        size: data.len() as u64,
        data: data.into(),
    };
    let e = steward_runtime::transport::chunk_client(ch)
        .put_chunk(futures::stream::iter(vec![first]))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(s.chunk_files(full), 0);

    // Tags: compare-and-set.
    let out = s.cli(&["object", "tag", "models/m", "2", "prod", "--expect", "2"]);
    assert!(!out.status.success(), "prod names 1, not 2");
    assert!(String::from_utf8_lossy(&out.stderr).contains("names version 1"));
    s.cli_ok(&["object", "tag", "models/m", "2", "prod", "--expect", "1"]);
    let history = s.cli_ok(&["object", "history", "models/m"]);
    assert_eq!(history["history"].as_array().map(Vec::len), Some(2));
    // Bad names never reach the cluster's state.
    let out = s.cli(&[
        "object",
        "put",
        "../escape",
        dir.join("v1.bin").to_str().unwrap(),
    ]);
    assert!(!out.status.success());

    // An agent that holds chunks falls below its floor (restarted with one no disk meets):
    // it keeps and serves what it has, and gets nothing new.
    let low = (0..s.agents())
        .find(|i| *i != full && s.chunk_files(*i) > 0)
        .expect("an agent holds chunks");
    let low_id = s.node_id(low);
    let kept = chunks_held(&s, low);
    s.kill_agent(low);
    s.restart_agent_with_floor(low, "1PiB")?;
    wait_for(
        "the leader to see the agent below its floor",
        Duration::from_secs(30),
        || async {
            let mut c = leader_client(&s.cluster).await.ok()?;
            let n = c
                .list_nodes(ListNodesRequest {
                    node_id: low_id.clone(),
                    with_inventory: true,
                })
                .await
                .ok()?
                .into_inner()
                .nodes;
            let t = n.first()?.telemetry.as_ref()?;
            (n.first()?.health == "ready" && t.chunk_space_low == Some(true)).then_some(())
        },
    )
    .await?;
    let v3 = bytes(3, 16 << 20);
    std::fs::write(dir.join("v3.bin"), &v3)?;
    s.cli_ok(&[
        "object",
        "put",
        "models/other",
        dir.join("v3.bin").to_str().unwrap(),
    ]);
    assert_eq!(
        chunks_held(&s, low),
        kept,
        "below its floor: nothing new placed, nothing lost"
    );
    for (reference, want) in [
        ("models/m@1", &v1),
        ("models/m@2", &v2),
        ("models/other", &v3),
    ] {
        let out = dir.join("out.bin");
        s.cli_ok(&["object", "get", reference, out.to_str().unwrap()]);
        assert!(std::fs::read(&out)? == *want, "{reference} reads back");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_a_moving_tag_get_one_whole_version() -> anyhow::Result<()> {
    let s = Storage::start(5, false).await?;
    let dir = s.cluster.dir.path().to_path_buf();
    let v1 = bytes(11, 6 << 20);
    let v2 = bytes(12, 6 << 20);
    std::fs::write(dir.join("v1.bin"), &v1)?;
    std::fs::write(dir.join("v2.bin"), &v2)?;
    s.cli_ok(&[
        "object",
        "put",
        "m",
        dir.join("v1.bin").to_str().unwrap(),
        "--tag",
        "prod",
    ]);
    s.cli_ok(&["object", "put", "m", dir.join("v2.bin").to_str().unwrap()]);
    let addrs = s.cluster.addrs();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The tag moves back and forth, by compare-and-set, until the readers are done.
    let mover = {
        let (addrs, stop) = (addrs.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut moves, mut failed) = (0usize, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (to, from) = if moves % 2 == 0 {
                    ("2", "1")
                } else {
                    ("1", "2")
                };
                let ok = steward_cmd()
                    .args(["object", "tag", "m", to, "prod", "--expect", from])
                    .env("STEWARD_ADDR", &addrs)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|st| st.success());
                if ok {
                    moves += 1;
                } else {
                    failed += 1;
                }
            }
            (moves, failed)
        })
    };
    // Two readers at once, each reading `m:prod` whole, while it moves.
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (addrs, dir, v1, v2) = (addrs.clone(), dir.clone(), v1.clone(), v2.clone());
            std::thread::spawn(move || {
                let mut seen = [0usize; 2];
                for i in 0..10 {
                    let out = dir.join(format!("read-{r}-{i}.bin"));
                    let ok = steward_cmd()
                        .args(["object", "get", "m:prod", out.to_str().unwrap_or_default()])
                        .env("STEWARD_ADDR", &addrs)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|st| st.success());
                    assert!(ok, "reader {r}: read {i} of m:prod failed");
                    let got = std::fs::read(&out).unwrap_or_default();
                    if got == v1 {
                        seen[0] += 1;
                    } else if got == v2 {
                        seen[1] += 1;
                    } else {
                        panic!(
                            "reader {r}: read {i} of m:prod is neither version ({} bytes)",
                            got.len()
                        );
                    }
                }
                seen
            })
        })
        .collect();
    let mut seen = [0usize; 2];
    for r in readers {
        let got = r.join().expect("every read was one whole version");
        seen[0] += got[0];
        seen[1] += got[1];
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (moves, failed) = mover.join().expect("mover");
    eprintln!(
        "m:prod read as v1 {} times, v2 {} times; {moves} moves",
        seen[0], seen[1]
    );
    assert_eq!(failed, 0, "every compare-and-set move succeeded in turn");
    assert!(
        moves >= 4,
        "the tag moved while the readers read ({moves} moves)"
    );
    assert!(
        seen[0] > 0 && seen[1] > 0,
        "the readers saw the tag on both versions: {seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_through_a_leader_kill_commits_whole_or_fails_and_a_retry_succeeds(
) -> anyhow::Result<()> {
    let mut s = Storage::start(5, false).await?;
    let dir = s.cluster.dir.path().to_path_buf();
    let data = bytes(21, 48 << 20);
    let file = dir.join("big.bin");
    std::fs::write(&file, &data)?;
    // The replicas the put writes before it commits: RF 3 of each distinct chunk.
    let distinct: std::collections::BTreeSet<_> =
        steward_core::chunking::split(&data, Default::default())
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .map(|c| c.id)
            .collect();
    let (leader, _) = s.cluster.wait_leader(Duration::from_secs(10)).await?;
    let before: usize = (0..s.agents()).map(|i| s.chunk_files(i)).sum();
    let mut put = steward_cmd()
        .args(["-o", "json", "object", "put", "big", file.to_str().unwrap()])
        .env("STEWARD_ADDR", s.cluster.addrs())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Kill the leader when every replica is written, as the put turns to commit (or
    // once it has ended), so the kill meets the commit, not the upload.
    let written = before + 3 * distinct.len();
    wait_for("the put's uploads to end", Duration::from_secs(60), || {
        let sent: usize = (0..s.agents()).map(|i| s.chunk_files(i)).sum();
        let done = put.try_wait().ok().flatten().is_some();
        async move { (sent >= written || done).then_some(()) }
    })
    .await?;
    s.cluster.kill(leader);
    let out = put.wait_with_output()?;
    let committed = out.status.success();
    eprintln!(
        "put during the leader kill: {}",
        if committed {
            "committed".to_string()
        } else {
            format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim())
        }
    );
    s.cluster.wait_leader(Duration::from_secs(20)).await?;
    let listed = s.cli_ok(&["object", "ls"]);
    let objects = listed["objects"].as_array().cloned().unwrap_or_default();
    if committed {
        assert_eq!(objects.len(), 1);
    }
    // Whatever is visible is whole.
    for o in &objects {
        assert_eq!(o["name"], "big");
        let got = dir.join("got.bin");
        s.cli_ok(&["object", "get", "big", got.to_str().unwrap()]);
        assert!(std::fs::read(&got)? == data, "a visible version is whole");
    }
    // A retry succeeds and reads back.
    let retry = s.cli_ok(&["object", "put", "big", file.to_str().unwrap()]);
    assert_eq!(retry["objects"][0]["version"], 1, "{retry}");
    let got = dir.join("got2.bin");
    s.cli_ok(&["object", "get", "big@1", got.to_str().unwrap()]);
    assert!(std::fs::read(&got)? == data);
    Ok(())
}

/// Waits until the leader marks `node` down.
async fn wait_down(s: &Storage, node: &str) -> anyhow::Result<()> {
    let c = leader_client(&s.cluster).await?;
    wait_for("the agent to be down", Duration::from_secs(20), || {
        let mut c = c.clone();
        let node_id = node.to_string();
        async move {
            let n = c
                .list_nodes(ListNodesRequest {
                    node_id,
                    with_inventory: false,
                })
                .await
                .ok()?
                .into_inner()
                .nodes;
            (n.first()?.health == "down").then_some(())
        }
    })
    .await
}

/// Puts `n` objects of `mib` MiB each; returns their contents by name.
fn put_objects(s: &Storage, n: usize, mib: usize) -> Vec<(String, Vec<u8>)> {
    let dir = s.cluster.dir.path();
    (0..n)
        .map(|i| {
            let name = format!("data/o{i}");
            let data = bytes(100 + i as u64, mib << 20);
            let file = dir.join(format!("o{i}.bin"));
            std::fs::write(&file, &data).expect("write");
            s.cli_ok(&["object", "put", &name, file.to_str().expect("path")]);
            (name, data)
        })
        .collect()
}

fn read_back(s: &Storage, objects: &[(String, Vec<u8>)]) {
    let out = s.cluster.dir.path().join("read.bin");
    for (name, data) in objects {
        s.cli_ok(&["object", "get", name, "-o", out.to_str().expect("path")]);
        assert!(
            std::fs::read(&out).expect("read") == *data,
            "{name} reads back bit-exact"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_agent_is_repaired_within_a_minute_and_its_return_trimmed() -> anyhow::Result<()> {
    let mut s = Storage::start_with(5, false, "[storage]\nrepair_delay = \"0s\"\n").await?;
    let objects = put_objects(&s, 4, 50);
    let before = s
        .wait_settled("the puts to settle", Duration::from_secs(60))
        .await?;
    let chunks = before["chunks"].as_u64().unwrap_or(0);
    let victim = 0;
    let victim_id = s.node_id(victim);
    let held = s.chunk_files(victim);
    assert!(held > 0, "agent {victim} holds chunks");
    let all_chunks = s.live_holders();
    assert_eq!(all_chunks.len() as u64, chunks, "every chunk on disk");
    assert!(
        all_chunks.values().all(|n| *n == 3),
        "RF 3 on disk before the loss"
    );
    s.kill_agent(victim);
    wait_down(&s, &victim_id).await?;
    let down_at = std::time::Instant::now();
    let after = wait_for(
        "fsck: nothing under-replicated",
        Duration::from_secs(60),
        || async {
            let f = s.fsck();
            (f["complete"] == true && f["under_replicated"] == 0 && f["repairs_in_flight"] == 0)
                .then_some(f)
        },
    )
    .await?;
    eprintln!(
        "{held} replicas on the lost agent; RF restored {:.1} s after it was marked down: {}",
        down_at.elapsed().as_secs_f64(),
        after["repair"]
    );
    assert_eq!(after["chunks"].as_u64(), Some(chunks));
    // Not fsck's word alone: the live agents' disks hold 3 copies of every chunk.
    let live = s.live_holders();
    let short: Vec<_> = all_chunks
        .keys()
        .filter(|id| live.get(*id).copied().unwrap_or(0) < 3)
        .collect();
    assert!(
        short.is_empty(),
        "chunks below 3 live copies on disk: {short:?}"
    );
    read_back(&s, &objects);

    // It returns with its chunks: they are its place again; the stand-ins are trimmed.
    s.restart_agent(victim)?;
    wait_for("the agent to be back", Duration::from_secs(30), || async {
        let f = s.fsck();
        f["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["node"] == victim_id.as_str() && n["health"] == "ready")
            .then_some(())
    })
    .await?;
    let settled = s
        .wait_settled("the return to settle", Duration::from_secs(60))
        .await?;
    let replicas: u64 = settled["nodes"]
        .as_array()
        .map(|n| n.iter().map(|x| x["replicas"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0);
    assert_eq!(
        replicas,
        3 * chunks,
        "no surplus replica is left: {settled}"
    );
    let on_disk: usize = (0..5).map(|i| s.chunk_files(i)).sum();
    assert_eq!(on_disk as u64, 3 * chunks, "and none on disk");
    assert_eq!(
        s.chunk_files(victim),
        held,
        "the returning agent kept its chunks"
    );
    read_back(&s, &objects);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_back_within_the_repair_delay_causes_no_copy() -> anyhow::Result<()> {
    let mut s = Storage::start_with(5, false, "[storage]\nrepair_delay = \"2m\"\n").await?;
    put_objects(&s, 2, 12);
    s.wait_settled("the puts to settle", Duration::from_secs(60))
        .await?;
    let held: Vec<_> = (0..s.agents()).map(|i| chunks_held(&s, i)).collect();
    let victim_id = s.node_id(0);
    // Copies pulled by the agents that stay up: their counters run through the test.
    let copied_in = |s: &Storage| -> u64 {
        (1..s.agents())
            .map(|i| {
                s.cli_ok(&["node", "show", &s.node_id(i)])["chunk_store"]["copied_in_chunks"]
                    .as_u64()
                    .unwrap_or(u64::MAX)
            })
            .sum()
    };
    let copied_before = copied_in(&s);
    s.kill_agent(0);
    let killed_at = std::time::Instant::now();
    wait_down(&s, &victim_id).await?;
    // Down, within the delay: under-replicated, and nothing copied.
    let f = s.fsck();
    assert!(f["under_replicated"].as_u64().unwrap_or(0) > 0, "{f}");
    s.restart_agent(0)?;
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "restarted within 10 s"
    );
    s.wait_settled("the agent's return", Duration::from_secs(30))
        .await?;
    let after: Vec<_> = (0..s.agents()).map(|i| chunks_held(&s, i)).collect();
    assert!(after == held, "no replica was copied or removed anywhere");
    assert_eq!(
        copied_in(&s),
        copied_before,
        "no agent pulled a copy while the node was away"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bit_rot_is_found_by_a_scrub_and_repaired_and_never_read() -> anyhow::Result<()> {
    // A small repair budget keeps the repair going while the readers run.
    let s = Storage::start_with(
        5,
        false,
        "[storage]\nrepair_delay = \"0s\"\nrepair_bandwidth = \"4 MiB\"\n",
    )
    .await?;
    // About 30 distinct chunks.
    let objects = put_objects(&s, 3, 40);
    s.wait_settled("the puts to settle", Duration::from_secs(60))
        .await?;
    // Flip one byte in 20 chunk files, spread over the agents, each of a different chunk
    // (so every chunk keeps good replicas).
    let mut flipped = Vec::new();
    let mut chunks_flipped = std::collections::HashSet::new();
    'agents: for round in 0.. {
        let mut any = false;
        for i in 0..s.agents() {
            let mut files = Vec::new();
            collect_files(&s.agent_dir(i).join("chunks").join("data"), &mut files);
            files.sort();
            if let Some(f) = files.get(round) {
                any = true;
                if !chunks_flipped.insert(f.file_name().map(|n| n.to_owned())) {
                    continue;
                }
                let mut b = std::fs::read(f)?;
                let at = b.len() / 2;
                b[at] ^= 0x01;
                std::fs::write(f, b)?;
                flipped.push((i, f.clone()));
                if flipped.len() == 20 {
                    break 'agents;
                }
            }
        }
        assert!(any, "fewer than 20 chunk files");
    }
    for i in 0..s.agents() {
        let out = s.cli(&["node", "scrub", &s.node_id(i)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The scrubs find them all (nothing else reads the chunks meanwhile).
    let scrub_found = || -> u64 {
        (0..s.agents())
            .map(|i| {
                s.cli_ok(&["node", "show", &s.node_id(i)])["chunk_store"]["scrub"]["corrupt_found"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum()
    };
    wait_for(
        "the scrubs find 20 of 20",
        Duration::from_secs(60),
        || async { (scrub_found() == 20).then_some(()) },
    )
    .await?;
    // Readers run through the repair (slowed by a small budget): every read returns the right bytes
    // or fails, never wrong bytes (a rotten replica is refused, the next one used).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers = {
        let (stop, objects, addrs, dir) = (
            stop.clone(),
            objects.clone(),
            s.cluster.addrs(),
            s.cluster.dir.path().join("reads"),
        );
        std::fs::create_dir_all(&dir)?;
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (name, data) in &objects {
                    let out = dir.join("out.bin");
                    let _ = std::fs::remove_file(&out);
                    let status = steward_cmd()
                        .args(["object", "get", name, out.to_str().unwrap_or_default()])
                        .env("STEWARD_ADDR", &addrs)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    if status.is_ok_and(|s| s.success()) {
                        let got = std::fs::read(&out).unwrap_or_default();
                        assert!(got == *data, "{name}: a read returned wrong bytes");
                        ok += 1;
                    } else {
                        // An error is allowed; a partial file is never left as the output.
                        assert!(!out.exists(), "{name}: a failed read left a file");
                        failed += 1;
                    }
                }
            }
            (ok, failed)
        })
    };
    let f = wait_for(
        "20 rotten chunks found and repaired",
        Duration::from_secs(90),
        || async {
            let f = s.fsck();
            (f["corrupt"].as_u64() == Some(20)
                && f["complete"] == true
                && f["under_replicated"] == 0
                && f["repairs_in_flight"] == 0)
                .then_some(f)
        },
    )
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads_ok, reads_failed) = readers.join().expect("the readers saw only right bytes");
    assert!(
        reads_ok > 0,
        "reads succeeded during the repair ({reads_failed} failed)"
    );
    assert_eq!(
        scrub_found(),
        20,
        "the reads found no more: the scrubs had them all"
    );
    let quarantined: usize = (0..s.agents())
        .map(|i| count_files(&s.agent_dir(i).join("chunks").join("quarantine")))
        .sum();
    assert_eq!(quarantined, 20, "every flipped file quarantined: {f}");
    for (i, file) in &flipped {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(
            s.agent_dir(*i)
                .join("chunks")
                .join("quarantine")
                .join(name)
                .exists(),
            "{name} quarantined on agent {i}"
        );
    }
    // Repaired to RF 3 on disk, not by fsck's word alone.
    let live = s.live_holders();
    for (i, file) in &flipped {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let copies = live.get(name).copied().unwrap_or(0);
        assert!(
            copies >= 3,
            "{name} (rotten on agent {i}) has {copies} good copies, not 3"
        );
    }
    read_back(&s, &objects);
    Ok(())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_chunks_are_collected_and_shared_ones_stay() -> anyhow::Result<()> {
    let s = Storage::start_full(
        3,
        false,
        "",
        &["--chunk-gc-grace", "1s", "--chunk-gc-interval", "1s"],
    )
    .await?;
    let dir = s.cluster.dir.path();
    // `b` shares its first half with `a`.
    let a = bytes(31, 16 << 20);
    let mut b = a[..8 << 20].to_vec();
    b.extend(bytes(32, 8 << 20));
    std::fs::write(dir.join("a.bin"), &a)?;
    std::fs::write(dir.join("b.bin"), &b)?;
    s.cli_ok(&["object", "put", "a", dir.join("a.bin").to_str().unwrap()]);
    s.cli_ok(&["object", "put", "b", dir.join("b.bin").to_str().unwrap()]);
    let before = s.wait_settled("the puts", Duration::from_secs(60)).await?;
    let only_b = s.cli_ok(&["fsck", "b"]);
    assert!(before["chunks"].as_u64() > only_b["chunks"].as_u64());
    s.cli_ok(&["object", "rm", "a"]);
    let want = 3 * only_b["chunks"].as_u64().unwrap_or(0) as usize;
    wait_for(
        "a's own chunks collected",
        Duration::from_secs(30),
        || async {
            let on_disk: usize = (0..3).map(|i| s.chunk_files(i)).sum();
            (on_disk == want).then_some(())
        },
    )
    .await?;
    let out = dir.join("b.out");
    s.cli_ok(&["object", "get", "b", out.to_str().unwrap()]);
    assert!(std::fs::read(&out)? == b, "the shared chunks stayed");
    let f = s
        .wait_settled("after the collection", Duration::from_secs(30))
        .await?;
    assert_eq!(f["under_replicated"], 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_receives_its_share_and_the_displaced_replicas_go() -> anyhow::Result<()> {
    let mut s = Storage::start(3, false).await?;
    let objects = put_objects(&s, 3, 16);
    let before = s.wait_settled("the puts", Duration::from_secs(60)).await?;
    let chunks = before["chunks"].as_u64().unwrap_or(0) as usize;
    let new = s.add_agent()?;
    let new_id = wait_for(
        "the new agent's node id",
        Duration::from_secs(20),
        || async {
            let id = s.node_id(new);
            (!id.is_empty()).then_some(id)
        },
    )
    .await?;
    // Settled with the new node in the layout and holding its place's chunks.
    let f = wait_for("rebalanced", Duration::from_secs(60), || async {
        let f = s.fsck();
        let has_new = f["nodes"].as_array()?.iter().any(|n| {
            n["node"] == new_id.as_str()
                && n["health"] == "ready"
                && n["replicas"].as_u64() > Some(0)
        });
        (has_new
            && f["complete"] == true
            && f["misplaced"] == 0
            && f["under_replicated"] == 0
            && f["repairs_in_flight"] == 0)
            .then_some(f)
    })
    .await?;
    let on_new = s.chunk_files(new);
    let total: usize = (0..4).map(|i| s.chunk_files(i)).sum();
    eprintln!("the new node holds {on_new} of {chunks} chunks");
    assert!(
        on_new > chunks / 4,
        "about 3/4 of the chunks move to the new node: {f}"
    );
    assert_eq!(total, 3 * chunks, "displaced replicas were trimmed");
    read_back(&s, &objects);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_the_nodes_chunks_off_before_it_completes() -> anyhow::Result<()> {
    let s = Storage::start(4, false).await?;
    let objects = put_objects(&s, 2, 16);
    let before = s.wait_settled("the puts", Duration::from_secs(60)).await?;
    let chunks = before["chunks"].as_u64().unwrap_or(0) as usize;
    assert!(s.chunk_files(0) > 0);
    let out = s.cli(&["node", "drain", &s.node_id(0)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no chunk left"));
    assert_eq!(s.chunk_files(0), 0, "the drained node holds nothing");
    let total: usize = (1..4).map(|i| s.chunk_files(i)).sum();
    assert_eq!(total, 3 * chunks, "RF 3 on the other three");
    read_back(&s, &objects);
    Ok(())
}

/// The chunk files of agent `i`'s store, by chunk id.
fn chunks_held(s: &Storage, i: usize) -> std::collections::BTreeSet<String> {
    let mut files = Vec::new();
    collect_files(&s.agent_dir(i).join("chunks").join("data"), &mut files);
    files
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .collect()
}

/// A job that runs on agent `slot` and reads `input`: it records the size of the staged
/// file its variable names, then sleeps until cancelled.
fn staging_job(name: &str, slot: usize, input: &str) -> String {
    serde_json::json!({
        "name": name,
        "command": "/bin/sh",
        "args": ["-c", "wc -c < \"$STEWARD_INPUT_MODELS_STAGED\" > seen.tmp && mv seen.tmp seen-size && sleep 600"],
        "inputs": [input],
        "kill_timeout": "1s",
        "reschedule": { "attempts": 0 },
        "constraints": [{ "label": "slot", "values": [format!("a{slot}")] }],
        "resources": { "cpu_millicores": 10, "memory_mib": 64 },
    })
    .to_string()
}

/// Waits until `job` runs and has recorded what it saw; returns its allocation's dir on
/// agent `slot`.
async fn wait_staged(s: &Storage, job: &str, slot: usize) -> anyhow::Result<PathBuf> {
    use steward_proto::v1::ListAllocationsRequest;
    wait_for(
        &format!("{job} running with its input"),
        Duration::from_secs(60),
        || async {
            let mut c = leader_client(&s.cluster).await.ok()?;
            let allocs = c
                .list_allocations(ListAllocationsRequest::default())
                .await
                .ok()?
                .into_inner()
                .allocations;
            let a = allocs.iter().find(|a| a.job_id == job)?;
            assert!(
                !matches!(a.state.as_str(), "failed" | "lost"),
                "{job}: {} ({})",
                a.state,
                a.reason
            );
            let dir = s.agent_dir(slot).join("allocs").join(&a.id);
            (a.state == "running" && dir.join("seen-size").exists()).then_some(dir)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_input_is_staged_verified_and_a_second_node_pulls_from_the_first(
) -> anyhow::Result<()> {
    use steward_proto::v1::{GetJobRequest, GetObjectRequest, SubmitJobRequest};
    let s = Storage::start(5, false).await?;
    let dir = s.cluster.dir.path();
    let data = bytes(41, 40 << 20);
    std::fs::write(dir.join("m.bin"), &data)?;
    s.cli_ok(&[
        "object",
        "put",
        "models/staged",
        dir.join("m.bin").to_str().unwrap(),
        "--tag",
        "prod",
    ]);
    s.wait_settled("the put", Duration::from_secs(60)).await?;
    let mut c = leader_client(&s.cluster).await?;
    let manifest = c
        .get_object(GetObjectRequest {
            reference: "models/staged:prod".into(),
            consistency: 0,
        })
        .await?
        .into_inner()
        .manifest
        .expect("manifest");
    let ids: Vec<String> = manifest
        .chunks
        .iter()
        .filter_map(|c| steward_proto::conv::chunk_id_from_pb(&c.id).ok())
        .map(|id| id.to_string())
        .collect();
    // RF 3 on 5 agents: each chunk has two agents without it. Take those of the first
    // chunk: the first stages it from a replica, the second finds it on the first.
    let held: Vec<_> = (0..5).map(|i| chunks_held(&s, i)).collect();
    let lacking: Vec<usize> = (0..5).filter(|i| !held[*i].contains(&ids[0])).collect();
    assert_eq!(lacking.len(), 2, "RF 3 of 5: {lacking:?}");
    let (first, second) = (lacking[0], lacking[1]);

    let one = c
        .submit_job(SubmitJobRequest {
            spec_json: staging_job("reader-one", first, "models/staged:prod"),
            request_id: None,
        })
        .await?
        .into_inner()
        .job_id;
    let pinned = c
        .get_job(GetJobRequest {
            job_id: one.clone(),
        })
        .await?
        .into_inner();
    assert!(
        pinned.spec_json.contains("models/staged@1"),
        "the input is pinned to the version the tag named: {}",
        pinned.spec_json
    );
    let alloc_one = wait_staged(&s, &one, first).await?;
    let staged = std::fs::read(alloc_one.join("inputs/models/staged"))?;
    assert!(staged == data, "the staged file is the version's bytes");
    assert_eq!(
        std::fs::read_to_string(alloc_one.join("seen-size"))?.trim(),
        data.len().to_string(),
        "the task read the file its STEWARD_INPUT_ variable names"
    );
    // The first node now holds every chunk, and the leader knows it.
    assert!(ids.iter().all(|id| chunks_held(&s, first).contains(id)));
    let first_node = s.node_id(first);
    wait_for(
        "the leader knows the staged copy",
        Duration::from_secs(20),
        || async {
            let out = s.cli_ok(&["chunk", "locate", &ids[0]]);
            out["holders"]
                .to_string()
                .contains(&first_node)
                .then_some(())
        },
    )
    .await?;

    let two = c
        .submit_job(SubmitJobRequest {
            spec_json: staging_job("reader-two", second, "models/staged@1"),
            request_id: None,
        })
        .await?
        .into_inner()
        .job_id;
    let alloc_two = wait_staged(&s, &two, second).await?;
    assert!(std::fs::read(alloc_two.join("inputs/models/staged"))? == data);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(alloc_two.join("inputs.json"))?)?;
    let from_first = record[0]["chunks_from"][&first_node].as_u64().unwrap_or(0);
    assert!(
        from_first >= 1,
        "the second node pulled some chunks from the first: {record}"
    );
    // Neither staged copy is trimmed while its job runs; once both jobs end, the copies
    // outside the placement are surplus and go.
    for job_id in [one, two] {
        c.cancel_job(steward_proto::v1::CancelJobRequest { job_id })
            .await?;
    }
    wait_for("staged copies trimmed", Duration::from_secs(60), || async {
        (!chunks_held(&s, first).contains(&ids[0]) && !chunks_held(&s, second).contains(&ids[0]))
            .then_some(())
    })
    .await?;
    s.wait_settled("after the jobs", Duration::from_secs(60))
        .await?;
    Ok(())
}
