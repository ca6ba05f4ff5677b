//! `Admin.SnapshotSave | SnapshotRestore`: operator snapshot files of the cluster state.

use std::collections::BTreeSet;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use steward_core::{Command, CommandResult};
use steward_proto::v1::*;
use tonic::{Request, Response, Status, Streaming};

use super::error::ApiError;
use super::forward::{forwarded, hops_of};
use super::ApiContext;
use crate::raft::typ::NodeId;
use crate::raft::Error as RaftError;
use crate::snapshot_file::{self, SnapshotHeader, MAX_SNAPSHOT_FILE_BYTES};

/// Size of each chunk of `SnapshotSave`'s stream.
const SNAPSHOT_STREAM_CHUNK: usize = 1024 * 1024;

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
    let hops = hops_of(&request);
    let req = request.into_inner();
    match ctx.raft.read_barrier().await {
        Err(RaftError::NotLeader { leader, .. }) => {
            let mut l = ctx.leader_client(leader, hops)?;
            let stream = l
                .client
                .snapshot_save(forwarded(req, l.hops))
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(stream) as ChunkStream));
        }
        Err(e) => return Err(ApiError::from(e).into()),
        Ok(()) => {}
    }
    let bytes = {
        let applied = ctx.raft.view().read();
        let m = applied.last_membership.membership();
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        let header = SnapshotHeader {
            cluster_name: ctx.cluster_name.clone(),
            taken_by: ctx.raft.id(),
            applied_index: applied.last_applied.map_or(0, |l| l.index),
            applied_term: applied.last_applied.map_or(0, |l| l.leader_id.term),
            voters: voters.iter().copied().collect(),
            learners: m
                .nodes()
                .map(|(id, _)| *id)
                .filter(|id| !voters.contains(id))
                .collect(),
            keys: applied.state.kv.len() as u64,
            state_digest: applied
                .state
                .digest()
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        };
        snapshot_file::encode(header, &applied.state)
            .map_err(|e| ApiError::Internal(e.to_string()))?
    };
    let stream = futures::stream::iter(chunks(&bytes).into_iter().map(Ok));
    Ok(Response::new(Box::pin(stream)))
}

pub async fn restore(
    ctx: &ApiContext,
    request: Request<Streaming<SnapshotChunk>>,
) -> Result<Response<SnapshotRestoreReply>, Status> {
    let hops = hops_of(&request);
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
    let command = Command::RestoreState {
        state: Box::new(state),
    };
    match ctx.raft.propose(command).await {
        Err(RaftError::NotLeader { leader, .. }) => {
            let mut l = ctx.leader_client(leader, hops)?;
            l.client
                .snapshot_restore(forwarded(futures::stream::iter(chunks(&bytes)), l.hops))
                .await
        }
        Err(e) => Err(ApiError::from(e).into()),
        Ok((_, CommandResult::Restored { keys, revision })) => {
            Ok(Response::new(SnapshotRestoreReply { revision, keys }))
        }
        Ok((_, other)) => Err(ApiError::Internal(format!("unexpected result {other:?}")).into()),
    }
}
