//! `Admin.SnapshotSave | SnapshotRestore`: operator snapshot files of the cluster state.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use steward_core::{Command, CommandResult};
use steward_proto::v1::*;
use steward_proto::SNAPSHOT_RESTORE_TIMEOUT;
use tonic::{Request, Response, Status, Streaming};

use super::error::ApiError;
use super::forward::{forwarded, Origin};
use super::ApiContext;
use crate::raft::Error as RaftError;
use crate::snapshot_file::{self, SnapshotHeader, MAX_SNAPSHOT_FILE_BYTES};

/// Size of each chunk of `SnapshotSave`'s stream.
const SNAPSHOT_STREAM_CHUNK: usize = 1024 * 1024;
/// Bytes of restored state per log entry. Small enough that one entry travels and is
/// stored within a heartbeat interval on a busy machine.
const RESTORE_CHUNK_BYTES: usize = 512 * 1024;
/// Attempts of one restore. A leadership change while it runs drops what it staged and
/// nothing is restored, so it starts over, here or on the new leader.
const RESTORE_ATTEMPTS: u32 = 4;
/// How long a restore waits for a leader before an attempt.
const RESTORE_LEADER_WAIT: Duration = Duration::from_secs(10);
/// A restore starts no new step once less than this is left of the caller's deadline
/// (`SNAPSHOT_RESTORE_TIMEOUT`): one step takes at most the proposer's write timeout and a
/// feature-level wait.
const RESTORE_STEP_MARGIN: Duration = Duration::from_secs(30);

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

fn chunks(bytes: &[u8]) -> Vec<SnapshotChunk> {
    bytes
        .chunks(SNAPSHOT_STREAM_CHUNK)
        .map(|c| SnapshotChunk { data: c.to_vec() })
        .collect()
}

pub async fn save(
    ctx: &ApiContext,
    request: Request<SnapshotSaveRequest>,
) -> Result<Response<ChunkStream>, Status> {
    let origin = Origin::of(&request);
    let req = request.into_inner();
    match ctx.raft.read_barrier().await {
        Err(RaftError::NotLeader { leader, .. }) => {
            let mut l = ctx.leader_client(leader, &origin)?;
            let stream = l
                .client
                .snapshot_save(forwarded(req, &l.origin))
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(stream) as ChunkStream));
        }
        Err(e) => return Err(ApiError::from(e).into()),
        Ok(()) => {}
    }
    // A copy (O(1)): the file is encoded off the state lock and off the async workers.
    let applied = ctx.raft.view().copy();
    let (voters, learners) =
        super::membership::voters_and_learners(applied.last_membership.membership());
    let (cluster_name, taken_by) = (ctx.cluster_name.clone(), ctx.raft.id());
    let bytes = tokio::task::spawn_blocking(move || {
        let state_digest = applied.state.digest()?;
        let header = SnapshotHeader {
            cluster_name,
            taken_by,
            applied_index: applied.last_applied.map_or(0, |l| l.index),
            applied_term: applied.last_applied.map_or(0, |l| l.leader_id.term),
            voters,
            learners,
            keys: applied.state.kv.len() as u64,
            state_digest,
        };
        snapshot_file::encode(header, &applied.state)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    // Never write what `inspect` and `restore` would refuse (the state's size limit keeps
    // this from happening).
    if bytes.len() > MAX_SNAPSHOT_FILE_BYTES {
        return Err(ApiError::Internal(format!(
            "the snapshot file would be {} bytes, over the {MAX_SNAPSHOT_FILE_BYTES}-byte limit",
            bytes.len()
        ))
        .into());
    }
    let stream = futures::stream::iter(chunks(&bytes).into_iter().map(Ok));
    Ok(Response::new(Box::pin(stream)))
}

pub async fn restore(
    ctx: &ApiContext,
    request: Request<Streaming<SnapshotChunk>>,
) -> Result<Response<SnapshotRestoreReply>, Status> {
    let received = Instant::now();
    let origin = Origin::of(&request);
    let mut stream = request.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk?.data);
        if bytes.len() > MAX_SNAPSHOT_FILE_BYTES {
            return Err(ApiError::InvalidArgument(format!(
                "snapshot exceeds {MAX_SNAPSHOT_FILE_BYTES} bytes"
            ))
            .into());
        }
    }
    // Decoding (and below, encoding and hashing) tens of MiB is CPU work for the blocking
    // pool: on an async worker it would delay this controller's Raft messages past the
    // followers' election timeout.
    let (bytes, header, state) = tokio::task::spawn_blocking(move || {
        snapshot_file::decode(&bytes).map(|(header, state)| (bytes, header, state))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    if header.cluster_name != ctx.cluster_name {
        tracing::warn!(from = %header.cluster_name, to = %ctx.cluster_name, "restoring a snapshot taken on another cluster");
    }
    let give_up = received + SNAPSHOT_RESTORE_TIMEOUT.saturating_sub(RESTORE_STEP_MARGIN);
    let mut state = Some(state);
    let mut record: Option<(Vec<u8>, String)> = None;
    let mut abandoned = Vec::new();
    for attempt in 1..=RESTORE_ATTEMPTS {
        if attempt > 1 {
            // Long enough for a transfer to finish or an election to end.
            tokio::time::sleep(2 * ctx.raft.tuning().election_timeout_max).await;
        }
        if Instant::now() >= give_up {
            break;
        }
        match ctx.raft.wait_for_leader(RESTORE_LEADER_WAIT).await {
            None => return Err(ApiError::NoLeader.into()),
            Some(leader) if leader != ctx.raft.id() => {
                let mut l = ctx.leader_client(Some(leader), &origin)?;
                let mut req = forwarded(futures::stream::iter(chunks(&bytes)), &l.origin);
                req.set_timeout(SNAPSHOT_RESTORE_TIMEOUT.saturating_sub(received.elapsed()));
                return l.client.snapshot_restore(req).await;
            }
            Some(_) => {}
        }
        let level = ctx.raft.level_reaching(2).await;
        if level < 2 {
            return Err(ApiError::FailedPrecondition(format!(
                "restoring needs cluster feature level 2; the cluster is at level {level} (a controller runs an older build)"
            ))
            .into());
        }
        // The state travels through Raft as a state record (a file of an older format is
        // migrated here, once), encoded the first time this controller leads.
        let (record, digest) = match (&record, state.take()) {
            (Some(r), _) => r,
            (None, Some(state)) => {
                let encoded = tokio::task::spawn_blocking(move || {
                    let record = state.encode()?;
                    let digest = blake3::hash(&record).to_hex().to_string();
                    Ok::<_, steward_core::codec::CodecError>((record, digest))
                })
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| ApiError::Internal(e.to_string()))?;
                record.insert(encoded)
            }
            (None, None) => unreachable!("the state is encoded once, into `record`"),
        };
        match restore_once(ctx, record, digest, give_up).await {
            Ok(reply) => return Ok(Response::new(reply)),
            Err(RestoreFailure::Abandoned(reason)) => {
                tracing::warn!(attempt, %reason, "restore abandoned; nothing was restored, starting over");
                abandoned.push(reason);
            }
            Err(RestoreFailure::Failed(e)) => return Err(e.into()),
        }
    }
    Err(ApiError::NotApplied(format!(
        "the restore did not finish within {:?} and {RESTORE_ATTEMPTS} attempts, and nothing was restored ({}); retry when the cluster is stable",
        received.elapsed(),
        if abandoned.is_empty() { "no attempt started".to_string() } else { abandoned.join("; ") }
    ))
    .into())
}

/// Why one restore attempt ended without restoring.
enum RestoreFailure {
    /// Nothing was restored and a new attempt may succeed (leadership moved and dropped
    /// what was staged, or a chunk's outcome is unknown: the next attempt's first chunk
    /// drops whatever it staged).
    Abandoned(String),
    /// The answer for the operator: a refusal, or a commit whose outcome is unknown.
    Failed(ApiError),
}

/// One attempt on the leader: the state record in chunks, each its own log entry, then a
/// commit that checks the whole and swaps it in.
async fn restore_once(
    ctx: &ApiContext,
    record: &[u8],
    digest: &str,
    give_up: Instant,
) -> Result<SnapshotRestoreReply, RestoreFailure> {
    use RestoreFailure::{Abandoned, Failed};
    // A new term means a new leader's first entry, which drops a staged restore: a refusal
    // after one is that, and the restore starts over.
    let term = ctx.raft.current_term();
    let moved_on = |reason: String| {
        let now = ctx.raft.current_term();
        if now == term {
            Failed(ApiError::FailedPrecondition(reason))
        } else {
            Abandoned(format!(
                "leadership moved from term {term} to {now}: {reason}"
            ))
        }
    };
    let restore = rand::random::<u64>();
    let chunk_count = record.len().div_ceil(RESTORE_CHUNK_BYTES);
    for (i, data) in record.chunks(RESTORE_CHUNK_BYTES).enumerate() {
        if Instant::now() >= give_up {
            return Err(Abandoned(format!(
                "out of time after {i} of {chunk_count} chunks"
            )));
        }
        let command = Command::RestoreChunk {
            restore,
            offset: (i * RESTORE_CHUNK_BYTES) as u64,
            data: data.to_vec(),
        };
        match ctx.raft.propose(command).await {
            Ok((_, CommandResult::RestoreStaged { bytes, .. })) => {
                tracing::info!(
                    restore = format!("{restore:x}"),
                    chunk = i + 1,
                    of = chunk_count,
                    bytes,
                    "restore chunk staged"
                );
                delay_for_tests().await;
            }
            Ok((_, CommandResult::RestoreRejected { reason })) => return Err(moved_on(reason)),
            Ok((_, other)) => return Err(Failed(restore_refused(other))),
            Err(
                e @ (RaftError::NotLeader { .. }
                | RaftError::Transferring
                | RaftError::QuorumLost(_)
                | RaftError::Timeout(_)
                | RaftError::OutcomeUnknown(_)),
            ) => return Err(Abandoned(format!("staging chunk {i}: {e}"))),
            Err(e) => return Err(Failed(e.into())),
        }
    }
    let commit = Command::RestoreCommit {
        restore,
        bytes: record.len() as u64,
        digest: digest.to_string(),
    };
    match ctx.raft.propose(commit).await {
        Ok((_, CommandResult::Restored { keys, revision })) => {
            tracing::info!(keys, revision, "restored an operator snapshot");
            Ok(SnapshotRestoreReply { revision, keys })
        }
        Ok((_, CommandResult::RestoreRejected { reason })) => Err(moved_on(reason)),
        Ok((_, other)) => Err(Failed(restore_refused(other))),
        // Not proposed: nothing was restored. Any other error leaves the commit's outcome
        // unknown, which only the operator can resolve (by reading the state).
        Err(
            e @ (RaftError::NotLeader { .. } | RaftError::Transferring | RaftError::QuorumLost(_)),
        ) => Err(Abandoned(format!("committing: {e}"))),
        Err(e) => Err(Failed(e.into())),
    }
}

/// Test builds: `restore-chunk-delay=return(MS)` holds a restore MS milliseconds after each
/// staged chunk, so that a test can move leadership in the middle of one.
#[cfg(feature = "failpoints")]
async fn delay_for_tests() {
    let ms = fail::eval("restore-chunk-delay", |arg| {
        arg.and_then(|a| a.parse::<u64>().ok())
    })
    .flatten();
    if let Some(ms) = ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[cfg(not(feature = "failpoints"))]
async fn delay_for_tests() {}

/// The error for a restore step the state machine refused.
fn restore_refused(result: CommandResult) -> ApiError {
    match result {
        CommandResult::RestoreRejected { reason } => ApiError::FailedPrecondition(reason),
        CommandResult::StateFull { limit, would_be } => ApiError::FailedPrecondition(format!(
            "the restored state would make the cluster state {would_be} bytes; the limit is {limit}"
        )),
        other => ApiError::Internal(format!("unexpected result {other:?}")),
    }
}
