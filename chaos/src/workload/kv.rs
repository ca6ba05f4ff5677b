//! The KV workload: clients that read, write and compare-and-set a few keys through any
//! controller, recording every operation ([`Op`]) with its invocation and completion
//! times on one monotonic clock. Values are `CLIENT-SEQ`, unique in a run, as the
//! linearizability checker needs. A write whose answer is lost is sent again with the same
//! request id (the cluster applies a request id once and answers a retry with the first
//! result), at the next controller, for at most [`WRITE_RETRY_WINDOW`]: most outcomes are
//! then known, which keeps the checker's search small. One that stays unanswered is
//! [`Outcome::Unknown`]. Reads are not retried (an unanswered read says nothing).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use steward_proto::v1::admin_client::AdminClient;
use steward_proto::v1::{KvGetRequest, KvPutRequest, ReadConsistency, RequestId};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Code;

use crate::history::{KvCall, Nanos, Op, Outcome};

/// The header a controller sets on an error when the operation was certainly not applied.
pub const NOT_APPLIED_HEADER: &str = "x-steward-not-applied";
/// How long a write is retried (same request id) before its outcome is left unknown.
pub const WRITE_RETRY_WINDOW: Duration = Duration::from_secs(20);

/// Opens an admin channel to a controller address (TLS or not: the caller decides).
pub type Connect =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<Channel>> + Send>> + Send + Sync>;

/// What the clients do.
#[derive(Debug, Clone)]
pub struct KvMix {
    pub clients: u32,
    /// Keys `PREFIX0 .. PREFIX{keys-1}`: few keys, many operations each, so that clients
    /// contend.
    pub keys: u32,
    pub prefix: String,
    /// Percent of reads and of compare-and-sets (each a read, then a put expecting what it
    /// read); the rest are blind writes.
    pub read_percent: u32,
    pub cas_percent: u32,
    /// The deadline of each call: past it the outcome is unknown.
    pub call_timeout: Duration,
    /// Pause between one client's operations.
    pub think: Duration,
    /// The first client's number (several workloads in one run number theirs apart).
    pub first_client: u32,
    /// Read from the answering controller's applied state, without the leader's quorum
    /// check (`READ_CONSISTENCY_STALE`): not linearizable by design, so a run with it
    /// shows that the checker catches stale reads.
    pub stale_reads: bool,
    pub seed: u64,
    /// Where the history's times count from (default: when [`run`] starts), so that a
    /// runner can line operations up with the faults it injected.
    pub epoch: Option<Instant>,
}

impl Default for KvMix {
    fn default() -> Self {
        KvMix {
            clients: 4,
            keys: 4,
            prefix: "chaos/kv/".into(),
            read_percent: 50,
            cas_percent: 20,
            call_timeout: Duration::from_secs(3),
            think: Duration::from_millis(2),
            first_client: 0,
            stale_reads: false,
            seed: 1,
            epoch: None,
        }
    }
}

/// Runs `mix` against `addrs` until `stop`; the history of every client, merged.
pub async fn run(
    mix: KvMix,
    addrs: Vec<String>,
    connect: Connect,
    stop: CancellationToken,
) -> Vec<Op> {
    let start = mix.epoch.unwrap_or_else(Instant::now);
    let clients = (0..mix.clients).map(|c| {
        let (mix, addrs, connect, stop) =
            (mix.clone(), addrs.clone(), connect.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                mix.seed ^ (u64::from(mix.first_client + c) << 32),
            );
            Client {
                id: mix.first_client + c,
                session: rng.random(),
                rng,
                mix,
                addrs,
                connect,
                next_addr: c as usize,
                admin: None,
                start,
                seq: 0,
                history: Vec::new(),
            }
            .run(stop)
            .await
        })
    });
    let mut history = Vec::new();
    for c in futures::future::join_all(clients).await {
        history.extend(c.unwrap_or_default());
    }
    history.sort_by_key(|o| o.invoked);
    history
}

struct Client {
    id: u32,
    /// The request-id client number: writes are applied once per (session, seq).
    session: u64,
    rng: rand_chacha::ChaCha8Rng,
    mix: KvMix,
    addrs: Vec<String>,
    connect: Connect,
    next_addr: usize,
    admin: Option<AdminClient<Channel>>,
    start: Instant,
    seq: u64,
    history: Vec<Op>,
}

/// How a failed call ended: certainly not applied, or unknown.
fn failed_outcome(status: &tonic::Status) -> Outcome {
    let refused = matches!(
        status.code(),
        Code::InvalidArgument | Code::PermissionDenied
    ) || status.metadata().get(NOT_APPLIED_HEADER).is_some()
        || (status.code() == Code::FailedPrecondition
            && !status.message().contains("revision mismatch"));
    if refused {
        Outcome::Failed
    } else {
        Outcome::Unknown
    }
}

impl Client {
    fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }

    async fn admin(&mut self) -> Option<AdminClient<Channel>> {
        if self.admin.is_none() {
            let addr = self.addrs[self.next_addr % self.addrs.len()].clone();
            self.next_addr += 1;
            self.admin = (self.connect)(addr).await.map(AdminClient::new);
        }
        self.admin.clone()
    }

    async fn run(mut self, stop: CancellationToken) -> Vec<Op> {
        while !stop.is_cancelled() {
            let Some(admin) = self.admin().await else {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            };
            let key = format!(
                "{}{}",
                self.mix.prefix,
                self.rng.random_range(0..self.mix.keys.max(1))
            );
            let roll = self.rng.random_range(0..100);
            if roll < self.mix.read_percent {
                self.read(admin, &key).await;
            } else if roll < self.mix.read_percent + self.mix.cas_percent {
                if let Some((value, revision)) = self.read(admin, &key).await {
                    self.put(&key, Some((value, revision))).await;
                }
            } else {
                self.put(&key, None).await;
            }
            tokio::time::sleep(self.mix.think).await;
        }
        self.history
    }

    /// A linearizable read; the value and its revision when it answered.
    async fn read(
        &mut self,
        mut admin: AdminClient<Channel>,
        key: &str,
    ) -> Option<(Option<String>, u64)> {
        let invoked = self.now();
        let mut req = tonic::Request::new(KvGetRequest {
            key: key.to_string(),
            consistency: if self.mix.stale_reads {
                ReadConsistency::Stale as i32
            } else {
                ReadConsistency::Linearizable as i32
            },
        });
        req.set_timeout(self.mix.call_timeout);
        let answer = admin.kv_get(req).await;
        let completed = self.now();
        let (outcome, seen) = match answer {
            Ok(r) => {
                let entry = r.into_inner().entry;
                let value = entry
                    .as_ref()
                    .map(|e| String::from_utf8_lossy(&e.value).into_owned());
                let revision = entry.map_or(0, |e| e.mod_revision);
                (Outcome::Read(value.clone()), Some((value, revision)))
            }
            Err(s) => {
                self.admin = None;
                (failed_outcome(&s), None)
            }
        };
        self.record(key, KvCall::Read, invoked, completed, outcome);
        seen
    }

    /// A blind write (`expect` None), or a compare-and-set on what a read saw; retried
    /// with its request id until answered, for at most [`WRITE_RETRY_WINDOW`].
    async fn put(&mut self, key: &str, expect: Option<(Option<String>, u64)>) {
        self.seq += 1;
        let value = format!("{}-{}", self.id, self.seq);
        let call = match &expect {
            None => KvCall::Write(value.clone()),
            Some((seen, _)) => KvCall::Cas {
                expect: seen.clone(),
                new: value.clone(),
            },
        };
        let req = KvPutRequest {
            key: key.to_string(),
            value: value.into_bytes(),
            expected_revision: expect.map(|(_, r)| r),
            request_id: Some(RequestId {
                client: self.session,
                seq: self.seq,
            }),
        };
        let invoked = self.now();
        let deadline = Instant::now() + WRITE_RETRY_WINDOW;
        // Failed only if every attempt was certainly not applied; Unknown once one may
        // have been, until an answer says what happened.
        let mut outcome = Outcome::Failed;
        let mut completed = invoked;
        while Instant::now() < deadline {
            let Some(mut admin) = self.admin().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut attempt = tonic::Request::new(req.clone());
            attempt.set_timeout(self.mix.call_timeout);
            let answer = admin.kv_put(attempt).await;
            completed = self.now();
            match answer {
                Ok(_) => {
                    outcome = Outcome::Written;
                    break;
                }
                Err(s)
                    if s.code() == Code::FailedPrecondition
                        && s.message().contains("revision mismatch") =>
                {
                    outcome = Outcome::CasFailed;
                    break;
                }
                Err(s) => {
                    self.admin = None;
                    let not_applied = s.metadata().get(NOT_APPLIED_HEADER).is_some();
                    match failed_outcome(&s) {
                        // Refused for what it is (invalid): a retry changes nothing.
                        Outcome::Failed if !not_applied => break,
                        Outcome::Failed => {}
                        _ => outcome = Outcome::Unknown,
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        self.record(key, call, invoked, completed, outcome);
    }

    fn record(
        &mut self,
        key: &str,
        call: KvCall,
        invoked: Nanos,
        completed: Nanos,
        outcome: Outcome,
    ) {
        let completed = (outcome != Outcome::Unknown).then_some(completed);
        self.history.push(Op {
            client: self.id,
            key: key.to_string(),
            call,
            invoked,
            completed,
            outcome,
        });
    }
}
