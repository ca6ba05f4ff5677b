//! `Admin.SnapshotSave | SnapshotRestore`: operator snapshot files of the cluster state.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use steward_core::{Command, CommandResult};
use steward_proto::v1::*;
use tonic::{Request, Response, Status, Streaming};

use super::error::ApiError;
use super::forward::{forwarded, Origin};
use super::ApiContext;
use crate::raft::Error as RaftError;
use crate::snapshot_file::{self, SnapshotHeader, MAX_SNAPSHOT_FILE_BYTES};

/// Size of each chunk of `SnapshotSave`'s stream.
const SNAPSHOT_STREAM_CHUNK: usize = 1024 * 1024;
/// Bytes of restored state per log entry.
const RESTORE_CHUNK_BYTES: usize = 2 * 1024 * 1024;

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
    let (header, state) =
        snapshot_file::decode(&bytes).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
    if header.cluster_name != ctx.cluster_name {
        tracing::warn!(from = %header.cluster_name, to = %ctx.cluster_name, "restoring a snapshot taken on another cluster");
    }
    if !ctx.raft.is_leader() {
        let mut l = ctx.leader_client(ctx.raft.current_leader(), &origin)?;
        return l
            .client
            .snapshot_restore(forwarded(futures::stream::iter(chunks(&bytes)), &l.origin))
            .await;
    }
    let level = ctx.raft.level_reaching(2).await;
    if level < 2 {
        return Err(ApiError::FailedPrecondition(format!(
            "restoring needs cluster feature level 2; the cluster is at level {level} (a controller runs an older build)"
        ))
        .into());
    }
    // The state travels through Raft in chunks, each its own log entry, then a commit
    // checks the whole and swaps it in. A file of an older format is migrated here, once.
    let record = state
        .encode()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let restore = rand::random::<u64>();
    for (i, data) in record.chunks(RESTORE_CHUNK_BYTES).enumerate() {
        let command = Command::RestoreChunk {
            restore,
            offset: (i * RESTORE_CHUNK_BYTES) as u64,
            data: data.to_vec(),
        };
        match ctx.raft.propose(command).await.map_err(ApiError::from)? {
            (_, CommandResult::RestoreStaged { .. }) => {}
            (_, other) => return Err(restore_refused(other).into()),
        }
    }
    let commit = Command::RestoreCommit {
        restore,
        bytes: record.len() as u64,
        digest: blake3::hash(&record).to_hex().to_string(),
    };
    match ctx.raft.propose(commit).await.map_err(ApiError::from)? {
        (_, CommandResult::Restored { keys, revision }) => {
            tracing::info!(keys, revision, "restored an operator snapshot");
            Ok(Response::new(SnapshotRestoreReply { revision, keys }))
        }
        (_, other) => Err(restore_refused(other).into()),
    }
}

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
