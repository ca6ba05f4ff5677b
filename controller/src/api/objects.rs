//! `Admin.PlanObjectPut | CommitObjectVersion | GetObject | ListObjects | ObjectInfo |
//! MoveObjectTag | DeleteObject`: objects and their versions.
//!
//! The write path (ARCHITECTURE.md, "Storage"): the leader plans each chunk's targets from
//! the layout (rendezvous over failure domains, `steward_core::objects::placement`), the
//! client streams chunks to those agents, and on commit the leader asks the agents
//! (`HasChunks`) which of the claimed replicas they store: a version commits only when
//! every chunk has at least `write_quorum` stored replicas. Chunk bytes never reach a
//! controller.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use steward_core::chunk::ChunkId;
use steward_core::node::NodeHealth;
use steward_core::objects::apply::PutVersion;
use steward_core::objects::placement::{Layout, LayoutNode};
use steward_core::objects::{
    validate_object_name, Retention, VersionSelector, DEFAULT_RF, MAX_CHUNKS_PER_VERSION, MAX_RF,
};
use steward_core::state::ClusterState;
use steward_core::{Command, CommandResult};
use steward_proto::conv::{chunk_id_from_pb, manifest_from_pb, manifest_to_pb, version_to_pb};
use steward_proto::v1::*;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::kv::{once, write_error};
use super::ApiContext;

/// Stored replicas a chunk needs before its version commits (fewer only when the factor
/// is lower).
pub const WRITE_QUORUM: u8 = 2;
/// Targets offered beyond the factor, for the client to use when one fails.
pub const SPARE_TARGETS: usize = 2;
/// Deadline of one `HasChunks` call to an agent while a commit is verified.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Ids per `HasChunks` call (the agent's limit).
const HAS_BATCH: usize = 10_000;

fn invalid(e: impl ToString) -> ApiError {
    ApiError::InvalidArgument(e.to_string())
}

fn stale(consistency: i32) -> bool {
    consistency == ReadConsistency::Stale as i32
}

pub fn write_quorum(rf: u8) -> u8 {
    rf.min(WRITE_QUORUM)
}

fn rf_of(rf: u32) -> Result<u8, ApiError> {
    match rf {
        0 => Ok(DEFAULT_RF),
        r if r <= u32::from(MAX_RF) => Ok(r as u8),
        r => Err(invalid(format!(
            "replication factor {r} is over the maximum {MAX_RF}"
        ))),
    }
}

/// The storage layout as the leader sees it: every registered node with an agent address,
/// and which of them take new chunks now (ready, not draining, disk above its floor).
pub struct StorageView {
    pub layout: Layout,
    pub usable: Vec<bool>,
    pub ready: Vec<bool>,
    pub addrs: HashMap<String, String>,
}

impl StorageView {
    pub fn new(ctx: &ApiContext, state: &ClusterState) -> StorageView {
        let mut nodes = Vec::new();
        let mut addrs = HashMap::new();
        for (id, n) in state.nodes.iter() {
            if let Some(addr) = &n.inventory.agent.api_addr {
                nodes.push(LayoutNode::from_labels(id, &n.labels));
                addrs.insert(id.clone(), addr.clone());
            }
        }
        let layout = Layout::new(nodes);
        let ready: Vec<bool> = layout
            .nodes()
            .iter()
            .map(|n| state.nodes.get(&n.id).map(|r| r.health) == Some(NodeHealth::Ready))
            .collect();
        let usable = layout
            .nodes()
            .iter()
            .zip(&ready)
            .map(|(n, ready)| {
                let draining = state
                    .node_scheduling
                    .get(&n.id)
                    .is_some_and(|s| s.drain.is_some());
                let full = ctx
                    .liveness
                    .telemetry(&n.id)
                    .is_some_and(|t| t.chunk_space_low == Some(true));
                *ready && !draining && !full
            })
            .collect();
        StorageView {
            layout,
            usable,
            ready,
            addrs,
        }
    }

    fn is_ready(&self, node: &str) -> bool {
        self.layout.index_of(node).is_some_and(|i| self.ready[i])
    }

    fn ids(&self, indices: &[usize]) -> Vec<String> {
        indices
            .iter()
            .map(|i| self.layout.nodes()[*i].id.clone())
            .collect()
    }
}

/// The distinct chunks of a manifest, in order of first appearance.
fn distinct_in_order(m: &steward_core::objects::Manifest) -> Vec<ChunkId> {
    let mut seen = BTreeSet::new();
    m.chunks
        .iter()
        .filter(|c| seen.insert(c.id))
        .map(|c| c.id)
        .collect()
}

pub async fn plan_put(
    ctx: &ApiContext,
    request: Request<PlanObjectPutRequest>,
) -> Result<Response<PlanObjectPutReply>, Status> {
    ctx.read(
        request,
        |_| false,
        |mut c, r| async move { c.plan_object_put(r).await },
        |req, applied| {
            validate_object_name(&req.name).map_err(invalid)?;
            let rf = rf_of(req.rf)?;
            if req.chunk_ids.len() > MAX_CHUNKS_PER_VERSION {
                return Err(invalid(format!(
                    "{} chunks, over the {MAX_CHUNKS_PER_VERSION} a version may have",
                    req.chunk_ids.len()
                )));
            }
            let ids = req
                .chunk_ids
                .iter()
                .map(|b| chunk_id_from_pb(b))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            ctx.replicas
                .planned(ids.iter().copied())
                .map_err(ApiError::Overloaded)?;
            let view = StorageView::new(ctx, &applied.state);
            let usable = view.usable.iter().filter(|u| **u).count();
            let w = write_quorum(rf);
            if usable < usize::from(w) {
                return Err(ApiError::FailedPrecondition(format!(
                    "a write needs {w} storage nodes that are ready with room for chunks; {usable} of {} are (see `steward node list`)",
                    view.layout.nodes().len()
                )));
            }
            let mut involved = BTreeSet::new();
            let chunks = ids
                .iter()
                .map(|id| {
                    let targets = view.ids(&view.layout.place_where(
                        id,
                        usize::from(rf) + SPARE_TARGETS,
                        |i| view.usable[i],
                    ));
                    let holders: Vec<String> = ctx
                        .replicas
                        .holders(id)
                        .into_iter()
                        .filter(|n| view.is_ready(n))
                        .collect();
                    involved.extend(targets.iter().cloned());
                    involved.extend(holders.iter().cloned());
                    ChunkTargets { targets, holders }
                })
                .collect();
            Ok(PlanObjectPutReply {
                chunks,
                node_addrs: involved
                    .into_iter()
                    .filter_map(|n| view.addrs.get(&n).map(|a| (n, a.clone())))
                    .collect(),
                rf: u32::from(rf),
                write_quorum: u32::from(w),
            })
        },
    )
    .await
}

/// Asks each agent named in `claims` which of its claimed chunks it stores; records the
/// stored ones; fails unless every chunk has `w` stored replicas.
async fn verify_replicas(
    ctx: &ApiContext,
    addrs: &HashMap<String, String>,
    chunks: &[ChunkId],
    claims: &[ChunkHolders],
    w: u8,
) -> Result<(), ApiError> {
    let mut by_node: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in claims.iter().enumerate() {
        for n in c.nodes.iter().collect::<BTreeSet<_>>() {
            by_node.entry(n.as_str()).or_default().push(i);
        }
    }
    let calls = by_node.into_iter().map(|(node, idx)| async move {
        let Some(addr) = addrs.get(node) else {
            return (
                node,
                idx,
                Err(format!("no agent address known for node `{node}`")),
            );
        };
        let channel = match ctx.raft.peers().agent_channel(addr, node) {
            Ok(ch) => ch,
            Err(e) => return (node, idx, Err(e.to_string())),
        };
        let mut client = steward_runtime::transport::chunk_client(channel);
        let mut present = Vec::with_capacity(idx.len());
        for batch in idx.chunks(HAS_BATCH) {
            let mut req = Request::new(HasChunksRequest {
                chunk_ids: batch.iter().map(|i| chunks[*i].to_string()).collect(),
                node_id: node.to_string(),
            });
            req.set_timeout(VERIFY_TIMEOUT);
            match client.has_chunks(req).await {
                Ok(r) if r.get_ref().present.len() == batch.len() => {
                    present.extend(r.into_inner().present)
                }
                Ok(_) => return (node, idx, Err("a malformed HasChunks answer".into())),
                Err(s) => return (node, idx, Err(format!("{}: {}", s.code(), s.message()))),
            }
        }
        (node, idx, Ok(present))
    });
    let answers = futures::future::join_all(calls).await;
    let mut stored = vec![0u8; chunks.len()];
    let mut unreachable = Vec::new();
    for (node, idx, answer) in answers {
        match answer {
            Ok(present) => {
                let held: Vec<ChunkId> = idx
                    .iter()
                    .zip(&present)
                    .filter(|(_, p)| **p)
                    .map(|(i, _)| {
                        stored[*i] = stored[*i].saturating_add(1);
                        chunks[*i]
                    })
                    .collect();
                if let Err(e) = ctx.replicas.record(node, held) {
                    tracing::warn!(%node, error = %e, "replicas verified at commit not tracked");
                }
            }
            Err(e) => unreachable.push(format!("{node}: {e}")),
        }
    }
    let short: Vec<String> = stored
        .iter()
        .enumerate()
        .filter(|(_, n)| **n < w)
        .take(3)
        .map(|(i, n)| format!("{} has {n}", chunks[i]))
        .collect();
    if short.is_empty() {
        return Ok(());
    }
    let count = stored.iter().filter(|n| **n < w).count();
    Err(ApiError::FailedPrecondition(format!(
        "{count} chunks have fewer than the {w} stored replicas a commit needs ({}{}){}; the version was not committed: put it again",
        short.join(", "),
        if count > 3 { ", ..." } else { "" },
        if unreachable.is_empty() {
            String::new()
        } else {
            format!("; agents not answering: {}", unreachable.join("; "))
        }
    )))
}

pub async fn commit(
    ctx: &ApiContext,
    request: Request<CommitObjectVersionRequest>,
) -> Result<Response<CommitObjectVersionReply>, Status> {
    let put = {
        let req = request.get_ref();
        let manifest = manifest_from_pb(
            req.manifest
                .as_ref()
                .ok_or_else(|| invalid("the request carries no manifest"))?,
        )
        .map_err(invalid)?;
        let put = PutVersion {
            name: req.name.clone(),
            manifest,
            rf: rf_of(req.rf)?,
            labels: req.labels.clone().into_iter().collect(),
            tags: req.tags.clone(),
            retention: req.keep_last.map(|k| Retention {
                keep_last: Some(k),
                keep_tagged: req.keep_tagged.unwrap_or(true),
            }),
        };
        put.validate().map_err(invalid)?;
        put
    };
    // The leader verifies the replicas before it proposes; a follower forwards the request
    // and the leader verifies it there.
    let chunks = distinct_in_order(&put.manifest);
    let verified = if ctx.raft.is_leader() {
        let claims = &request.get_ref().holders;
        if claims.len() != chunks.len() {
            return Err(invalid(format!(
                "holders lists {} chunks, the manifest has {} distinct ones",
                claims.len(),
                chunks.len()
            ))
            .into());
        }
        let addrs = StorageView::new(ctx, &ctx.raft.view().read().state).addrs;
        verify_replicas(ctx, &addrs, &chunks, claims, write_quorum(put.rf)).await?;
        true
    } else {
        false
    };
    let reply = ctx
        .write(
            request,
            |req| {
                if !verified && ctx.raft.is_leader() {
                    // Leadership arrived here after the check above: nothing verified yet.
                    return Err(ApiError::NoLeader);
                }
                Ok(once(
                    req.request_id.as_ref(),
                    Command::PutObjectVersion { put: Box::new(put) },
                ))
            },
            |result| match result {
                CommandResult::ObjectVersionPut {
                    version,
                    created,
                    pruned,
                    revision,
                    ..
                } => Ok(CommitObjectVersionReply {
                    version,
                    created,
                    pruned,
                    revision,
                }),
                other => Err(object_error(other)),
            },
            |mut c, r| async move { c.commit_object_version(r).await },
        )
        .await;
    if reply.is_ok() {
        ctx.replicas.unplanned(chunks);
    }
    reply
}

/// The error of an object write that did not succeed.
fn object_error(result: CommandResult) -> ApiError {
    match result {
        CommandResult::ObjectRefused { reason } => ApiError::FailedPrecondition(reason),
        CommandResult::UnknownObject { name } => {
            ApiError::NotFound(format!("no object `{name}` (see `steward object ls`)"))
        }
        CommandResult::TagConflict {
            name,
            tag,
            expected,
            actual,
        } => ApiError::FailedPrecondition(format!(
            "tag `{tag}` of `{name}` names {}, not {} as expected",
            version_word(actual),
            version_word(expected)
        )),
        other => write_error(other),
    }
}

fn version_word(v: u64) -> String {
    if v == 0 {
        "no version (it does not exist)".into()
    } else {
        format!("version {v}")
    }
}

pub async fn get(
    ctx: &ApiContext,
    request: Request<GetObjectRequest>,
) -> Result<Response<GetObjectReply>, Status> {
    ctx.read(
        request,
        |r| stale(r.consistency),
        |mut c, r| async move { c.get_object(r).await },
        |req, applied| {
            let (name, selector) =
                VersionSelector::parse_reference(&req.reference).map_err(invalid)?;
            let object = applied.state.objects.get(&name).ok_or_else(|| {
                ApiError::NotFound(format!("no object `{name}` (see `steward object ls`)"))
            })?;
            let number = selector
                .resolve(object)
                .ok_or_else(|| ApiError::NotFound(format!("`{name}` has no version {selector}")))?;
            let v = &object.versions[&number];
            let view = StorageView::new(ctx, &applied.state);
            let mut involved = BTreeSet::new();
            let locations = distinct_in_order(&v.manifest)
                .iter()
                .map(|id| {
                    // Ready copies outside the placement (staged for jobs) first, then
                    // the ready placed replicas, the other holders, and the placement's
                    // choices.
                    let placed = view.ids(&view.layout.place(id, usize::from(v.rf)));
                    let mut nodes: Vec<String> = ctx.replicas.holders(id);
                    nodes.sort_by_key(|n| (!view.is_ready(n), placed.contains(n)));
                    let spread = nodes
                        .iter()
                        .take_while(|n| view.is_ready(n) && !placed.contains(n))
                        .count() as u32;
                    for n in placed {
                        if !nodes.contains(&n) {
                            nodes.push(n);
                        }
                    }
                    involved.extend(nodes.iter().cloned());
                    ChunkHolders { nodes, spread }
                })
                .collect();
            Ok(GetObjectReply {
                name: name.clone(),
                version: Some(version_to_pb(
                    number,
                    v,
                    object
                        .tags_of(number)
                        .iter()
                        .map(|t| t.to_string())
                        .collect(),
                )),
                manifest: Some(manifest_to_pb(&v.manifest)),
                locations,
                node_addrs: involved
                    .into_iter()
                    .filter_map(|n| view.addrs.get(&n).map(|a| (n, a.clone())))
                    .collect(),
            })
        },
    )
    .await
}

pub async fn list(
    ctx: &ApiContext,
    request: Request<ListObjectsRequest>,
) -> Result<Response<ListObjectsReply>, Status> {
    ctx.read(
        request,
        |r| stale(r.consistency),
        |mut c, r| async move { c.list_objects(r).await },
        |req, applied| {
            let objects = applied
                .state
                .objects
                .range(req.prefix.clone()..)
                .take_while(|(n, _)| n.starts_with(&req.prefix))
                .map(|(name, o)| {
                    let latest = o.latest();
                    ObjectSummaryPb {
                        name: name.clone(),
                        versions: o.versions.len() as u32,
                        latest_version: latest.unwrap_or(0),
                        latest_size: latest.map_or(0, |n| o.versions[&n].manifest.size),
                        tags: o.tags.clone().into_iter().collect(),
                        updated_revision: o.mod_revision,
                    }
                })
                .collect();
            Ok(ListObjectsReply { objects })
        },
    )
    .await
}

pub async fn info(
    ctx: &ApiContext,
    request: Request<ObjectInfoRequest>,
) -> Result<Response<ObjectInfoReply>, Status> {
    ctx.read(
        request,
        |r| stale(r.consistency),
        |mut c, r| async move { c.object_info(r).await },
        |req, applied| {
            let o = applied.state.objects.get(&req.name).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no object `{}` (see `steward object ls`)",
                    req.name
                ))
            })?;
            Ok(ObjectInfoReply {
                name: req.name.clone(),
                versions: o
                    .versions
                    .iter()
                    .map(|(n, v)| {
                        version_to_pb(*n, v, o.tags_of(*n).iter().map(|t| t.to_string()).collect())
                    })
                    .collect(),
                tags: o.tags.clone().into_iter().collect(),
                history: o
                    .tag_history
                    .iter()
                    .map(|e| TagEventPb {
                        at_unix_ms: e.at_ms,
                        revision: e.revision,
                        tag: e.tag.clone(),
                        from_version: e.from.unwrap_or(0),
                        to_version: e.to.unwrap_or(0),
                    })
                    .collect(),
                keep_last: o.retention.keep_last.unwrap_or(0),
                keep_tagged: o.retention.keep_tagged,
            })
        },
    )
    .await
}

pub async fn move_tag(
    ctx: &ApiContext,
    request: Request<MoveObjectTagRequest>,
) -> Result<Response<MoveObjectTagReply>, Status> {
    ctx.write(
        request,
        |req| {
            validate_object_name(&req.name).map_err(invalid)?;
            steward_core::objects::validate_tag(&req.tag).map_err(invalid)?;
            Ok(once(
                req.request_id.as_ref(),
                Command::MoveObjectTag {
                    name: req.name.clone(),
                    tag: req.tag.clone(),
                    to: (req.version > 0).then_some(req.version),
                    expected: req.expected,
                },
            ))
        },
        |result| match result {
            CommandResult::TagMoved {
                from,
                changed,
                pruned,
                revision,
            } => Ok(MoveObjectTagReply {
                previous: from.unwrap_or(0),
                changed,
                pruned,
                revision,
            }),
            other => Err(object_error(other)),
        },
        |mut c, r| async move { c.move_object_tag(r).await },
    )
    .await
}

pub async fn delete(
    ctx: &ApiContext,
    request: Request<DeleteObjectRequest>,
) -> Result<Response<DeleteObjectReply>, Status> {
    ctx.write(
        request,
        |req| {
            validate_object_name(&req.name).map_err(invalid)?;
            Ok(once(
                req.request_id.as_ref(),
                Command::DeleteObject {
                    name: req.name.clone(),
                    version: (req.version > 0).then_some(req.version),
                    force: req.force,
                },
            ))
        },
        |result| match result {
            CommandResult::ObjectDeleted { versions, revision } => {
                Ok(DeleteObjectReply { versions, revision })
            }
            other => Err(object_error(other)),
        },
        |mut c, r| async move { c.delete_object(r).await },
    )
    .await
}
