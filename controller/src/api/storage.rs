//! `Admin.Fsck | LocateChunk | SetNodeMaintenance`: the health of stored data. Fsck and
//! locate are answered by the leader, which holds the agents' replica reports; they read
//! the same survey the repair loop acts on (`control/repair.rs`).

use std::collections::HashSet;

use steward_core::chunk::ChunkId;
use steward_core::objects::repair::Risk;
use steward_core::{Command, CommandResult};
use steward_proto::v1::*;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::forward::{forwarded, Origin};
use super::ApiContext;
use crate::control::repair::Survey;

/// Chunks at risk listed by `fsck`.
const AT_RISK_LISTED: usize = 20;

/// On the leader after a read barrier: a survey of the chunks `only` names (all: None).
async fn survey(ctx: &ApiContext, only: Option<HashSet<ChunkId>>) -> Result<Survey, ApiError> {
    ctx.raft.read_barrier().await?;
    let state = ctx.raft.view().copy().state.clone();
    let (liveness, replicas, delay) =
        (ctx.liveness.clone(), ctx.replicas.clone(), ctx.repair_delay);
    tokio::task::spawn_blocking(move || {
        Survey::take(&state, &liveness, &replicas, delay, only.as_ref())
    })
    .await
    .map_err(|e| ApiError::Internal(format!("survey: {e}")))
}

fn node_pb(s: &Survey, i: usize) -> FsckNodePb {
    let n = &s.layout.nodes()[i];
    FsckNodePb {
        node_id: n.id.clone(),
        health: s.health[i].name().to_string(),
        zone: n.zone.clone(),
        rack: n.rack.clone(),
        replicas: s.replicas_per_node[i],
        maintenance: s.maintenance[i],
        out: s.out[i],
    }
}

pub async fn fsck(
    ctx: &ApiContext,
    request: Request<FsckRequest>,
) -> Result<Response<FsckReply>, Status> {
    let origin = Origin::of(&request);
    if let Some(mut l) = ctx.forward_to_leader(&origin)? {
        return l
            .client
            .fsck(forwarded(request.into_inner(), &l.origin))
            .await;
    }
    let req = request.into_inner();
    let (objects, versions, only) = {
        let applied = ctx.raft.view().read();
        let mut only = HashSet::new();
        let (mut objects, mut versions) = (0u64, 0u64);
        for (name, o) in applied.state.objects.iter() {
            if !name.starts_with(&req.prefix) {
                continue;
            }
            objects += 1;
            versions += o.versions.len() as u64;
            if !req.prefix.is_empty() {
                for v in o.versions.values() {
                    only.extend(v.manifest.chunks.iter().map(|c| c.id));
                }
            }
        }
        (objects, versions, (!req.prefix.is_empty()).then_some(only))
    };
    let s = survey(ctx, only).await?;
    let corrupt = ctx.replicas.corrupt_chunks();
    let mut reply = FsckReply {
        objects,
        versions,
        chunks: s.chunks.len() as u64,
        complete: s.complete,
        ..Default::default()
    };
    let mut at_risk: Vec<(Risk, usize, String)> = Vec::new();
    for c in &s.chunks {
        reply.bytes += u64::from(c.need.size);
        if corrupt.contains_key(&c.id) {
            reply.corrupt += 1;
        }
        let a = &c.assessment;
        match a.risk {
            Some(Risk::OneLive) => {
                reply.one_live += 1;
                reply.under_replicated += 1;
            }
            Some(Risk::BelowRf) => {
                reply.under_replicated += 1;
                if a.live == 0 {
                    reply.missing += 1;
                }
            }
            Some(Risk::BadlySpread) => reply.badly_spread += 1,
            Some(Risk::Misplaced) => reply.misplaced += 1,
            None => {}
        }
        if let Some(r) = a.risk.filter(|r| *r <= Risk::BadlySpread) {
            at_risk.push((
                r,
                a.live,
                format!("{} {} {}/{}", c.id, r.name(), a.live, c.need.rf),
            ));
        }
    }
    at_risk.sort_by_key(|(r, live, _)| (*r, *live));
    reply.at_risk = at_risk
        .into_iter()
        .take(AT_RISK_LISTED)
        .map(|(_, _, t)| t)
        .collect();
    reply.nodes = (0..s.layout.nodes().len())
        .map(|i| node_pb(&s, i))
        .collect();
    let status = ctx.repair.status();
    reply.repairs_in_flight = status.chunks_in_flight as u64;
    reply.repair_copied_chunks = status.copied_chunks;
    reply.repair_copied_bytes = status.copied_bytes;
    reply.repair_trimmed = status.trimmed;
    reply.repair_failed_copies = status.failed_copies;
    Ok(Response::new(reply))
}

pub async fn locate(
    ctx: &ApiContext,
    request: Request<LocateChunkRequest>,
) -> Result<Response<LocateChunkReply>, Status> {
    let origin = Origin::of(&request);
    if let Some(mut l) = ctx.forward_to_leader(&origin)? {
        return l
            .client
            .locate_chunk(forwarded(request.into_inner(), &l.origin))
            .await;
    }
    let req = request.into_inner();
    let id = ChunkId::parse(&req.chunk_id)
        .map_err(|e| ApiError::InvalidArgument(format!("chunk id: {e}")))?;
    let s = survey(ctx, Some(HashSet::from([id]))).await?;
    let Some(c) = s.chunks.first() else {
        // Not referenced: where agents still hold it (garbage, or a put in progress).
        let holders = ctx.replicas.holders(&id);
        if holders.is_empty() {
            return Err(ApiError::NotFound(format!(
                "chunk {id} is not referenced by any object version and no agent reported it"
            ))
            .into());
        }
        return Ok(Response::new(LocateChunkReply {
            holders: holders
                .iter()
                .filter_map(|h| s.layout.index_of(h))
                .map(|i| node_pb(&s, i))
                .collect(),
            risk: "unreferenced".into(),
            ..Default::default()
        }));
    };
    Ok(Response::new(LocateChunkReply {
        size: u64::from(c.need.size),
        rf: u32::from(c.need.rf),
        references: c.need.refs,
        holders: c.holders.iter().map(|i| node_pb(&s, *i)).collect(),
        placed: s
            .layout
            .place_where(&id, usize::from(c.need.rf), |i| s.views[i].placed)
            .iter()
            .map(|i| s.layout.nodes()[*i].id.clone())
            .collect(),
        risk: c
            .assessment
            .risk
            .map_or("ok".to_string(), |r| r.name().to_string()),
    }))
}

pub async fn set_maintenance(
    ctx: &ApiContext,
    request: Request<SetNodeMaintenanceRequest>,
) -> Result<Response<SetNodeMaintenanceReply>, Status> {
    ctx.write(
        request,
        |req| {
            Ok(Command::SetNodeMaintenance {
                node: req.node_id.clone(),
                on: req.on,
                reason: req.reason.chars().take(1024).collect(),
            })
        },
        |result| match result {
            CommandResult::NodeMaintenanceSet { changed, revision } => {
                Ok(SetNodeMaintenanceReply { changed, revision })
            }
            CommandResult::UnknownNode { node } => Err(ApiError::NotFound(format!(
                "no node `{node}` (see `steward node list`)"
            ))),
            other => Err(super::kv::write_error(other)),
        },
        |mut c, r| async move { c.set_node_maintenance(r).await },
    )
    .await
}
