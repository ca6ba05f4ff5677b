//! Helpers shared by the tests: KV writers that record acknowledged writes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_proto::v1::admin_client::AdminClient;
use steward_proto::v1::{
    GetJobRequest, JobPb, KvListRequest, KvPutRequest, ListNodesRequest, NodeSummary,
    ReadConsistency, SubmitJobRequest,
};
use steward_tests::{wait_for, ProcCluster};
use tonic::transport::Channel;

/// Longest one key is retried before the writer gives up on it.
pub const PER_KEY_DEADLINE: Duration = Duration::from_secs(30);

pub async fn connect(addr: &str) -> Option<AdminClient<Channel>> {
    steward_tests::admin_client(addr, Duration::from_secs(5))
        .await
        .ok()
}

/// A client writing keys through any of `addrs`, moving to the next address on failure.
pub struct Writer {
    addrs: Vec<String>,
    next: usize,
    client: Option<AdminClient<Channel>>,
}

impl Writer {
    pub fn new(addrs: &str) -> Self {
        Writer {
            addrs: addrs.split(',').map(str::to_string).collect(),
            next: 0,
            client: None,
        }
    }

    /// Puts until acknowledged or `PER_KEY_DEADLINE`; returns whether it was acknowledged.
    pub async fn put(&mut self, key: &str, value: &str) -> bool {
        let deadline = Instant::now() + PER_KEY_DEADLINE;
        while Instant::now() < deadline {
            if self.client.is_none() {
                let addr = self.addrs[self.next % self.addrs.len()].clone();
                self.next += 1;
                self.client = connect(&addr).await;
                if self.client.is_none() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
            let Some(client) = self.client.as_mut() else {
                continue;
            };
            let req = KvPutRequest {
                key: key.to_string(),
                value: value.as_bytes().to_vec(),
                expected_revision: None,
                request_id: None,
            };
            match client.kv_put(req).await {
                Ok(_) => return true,
                Err(_) => {
                    self.client = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        false
    }
}

/// Writes `keys` (key, value) from one client; returns the acknowledged ones.
pub async fn write_all(
    addrs: String,
    keys: Vec<(String, String)>,
    acked: Arc<AtomicU64>,
) -> Vec<(String, String)> {
    let mut w = Writer::new(&addrs);
    let mut done = Vec::new();
    for (k, v) in keys {
        if w.put(&k, &v).await {
            acked.fetch_add(1, Ordering::Relaxed);
            done.push((k, v));
        }
    }
    done
}

/// Writes `{prefix}{n}` keys until `stop`; returns the acknowledged ones.
pub async fn write_until(
    addrs: String,
    prefix: String,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Vec<(String, String)> {
    let mut w = Writer::new(&addrs);
    let mut done = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (k, v) = (format!("{prefix}{n:06}"), format!("v{n}"));
        n += 1;
        if w.put(&k, &v).await {
            acked.fetch_add(1, Ordering::Relaxed);
            done.push((k, v));
        }
    }
    done
}

/// Every key under `prefix` as a single controller sees it (stale read), paging through.
pub async fn dump_local(addr: &str, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut client = connect(addr)
        .await
        .ok_or_else(|| anyhow::anyhow!("cannot connect to {addr}"))?;
    let mut out = BTreeMap::new();
    let mut start_after = String::new();
    loop {
        let reply = client
            .kv_list(KvListRequest {
                prefix: prefix.to_string(),
                start_after: start_after.clone(),
                limit: 5000,
                consistency: ReadConsistency::Stale as i32,
            })
            .await?
            .into_inner();
        for e in &reply.entries {
            out.insert(
                e.key.clone(),
                String::from_utf8_lossy(&e.value).into_owned(),
            );
        }
        match (reply.more, reply.entries.last()) {
            (true, Some(last)) => start_after = last.key.clone(),
            _ => return Ok(out),
        }
    }
}

/// Asserts every acknowledged write is present with its value on controller `addr`.
pub async fn assert_all_present(addr: &str, prefix: &str, acked: &[(String, String)]) {
    let seen = dump_local(addr, prefix).await.expect("dump");
    let missing: Vec<_> = acked
        .iter()
        .filter(|(k, v)| seen.get(k) != Some(v))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "controller at {addr} lacks acknowledged writes, e.g. {missing:?} ({} acked, {} seen)",
        acked.len(),
        seen.len()
    );
}

/// No term may have had two leaders.
pub fn assert_one_leader_per_term(leaderships: &[(u64, u64)]) {
    use steward_chaos::check::raft::{check_one_leader_per_term, LeaderSeen};
    let seen: Vec<LeaderSeen> = leaderships
        .iter()
        .map(|(term, id)| LeaderSeen {
            reporter: *id,
            term: *term,
            leader: *id,
            at_ms: 0,
        })
        .collect();
    match check_one_leader_per_term(&seen) {
        Ok(terms) => assert!(terms > 0, "no leadership was logged at all"),
        Err(split) => panic!("{split}"),
    }
}

/// Job tests: fast failure detection, with room for a loaded 2-core CI machine (agents fence
/// after half of down_after).
pub const JOBS_LIVENESS: &str = "[liveness]\nsuspect_after = \"1s\"\ndown_after = \"4s\"\n";
/// Job tests' agent flags: quick heartbeats, and the controllers' down_after to fence by.
pub const JOBS_AGENT_FLAGS: &[&str] = &[
    "--heartbeat-interval",
    "200ms",
    "--controller-down-after",
    "4s",
];

/// An admin client of the current leader.
pub async fn leader_client(
    cluster: &steward_tests::ProcCluster,
) -> anyhow::Result<AdminClient<Channel>> {
    let (leader, _) = cluster.wait_leader(Duration::from_secs(20)).await?;
    cluster.client(leader).await
}

/// Submits a job to the leader; its id.
pub async fn submit_job(cluster: &ProcCluster, spec_json: String) -> anyhow::Result<String> {
    Ok(leader_client(cluster)
        .await?
        .submit_job(SubmitJobRequest {
            spec_json,
            request_id: None,
        })
        .await?
        .into_inner()
        .job_id)
}

/// Job `id` as the leader has it (`None` while there is no leader or no such job).
pub async fn job(cluster: &ProcCluster, id: &str) -> Option<JobPb> {
    leader_client(cluster)
        .await
        .ok()?
        .get_job(GetJobRequest {
            job_id: id.to_string(),
        })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Waits (40 s at most) until `check` holds for job `id`.
pub async fn wait_job(
    cluster: &ProcCluster,
    id: &str,
    what: &str,
    check: impl Fn(&JobPb) -> bool,
) -> anyhow::Result<JobPb> {
    let check = &check;
    wait_for(
        &format!("job {id}: {what}"),
        Duration::from_secs(40),
        || async move { job(cluster, id).await.filter(|j| check(j)) },
    )
    .await
}

/// Waits (30 s at most) until the leader lists exactly `count` nodes, all ready; returns them.
pub async fn wait_nodes_ready(
    cluster: &ProcCluster,
    count: usize,
) -> anyhow::Result<Vec<NodeSummary>> {
    wait_for(
        &format!("{count} nodes ready"),
        Duration::from_secs(30),
        || async {
            let n = leader_client(cluster)
                .await
                .ok()?
                .list_nodes(ListNodesRequest::default())
                .await
                .ok()?
                .into_inner()
                .nodes;
            (n.len() == count && n.iter().all(|x| x.health == "ready")).then_some(n)
        },
    )
    .await
}
