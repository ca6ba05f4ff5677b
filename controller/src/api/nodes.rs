//! `Admin.ListNodes | NodeEvents`: the agents' machines as the cluster state records them,
//! with the leader's observations (heartbeat age, latest telemetry). Always answered by the
//! leader: only it holds the observations.

use steward_core::inventory::Inventory;
use steward_core::node::NodeHealth;
use steward_core::{Command, CommandResult};
use steward_proto::v1::*;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::ApiContext;

/// GPU identities (with health from the latest telemetry) and the agent's API address.
fn inventory_view(
    inventory: &Inventory,
    telemetry: Option<&NodeTelemetry>,
) -> (Vec<NodeGpu>, String) {
    let gpus = inventory
        .gpus
        .iter()
        .map(|g| NodeGpu {
            health: telemetry
                .and_then(|t| t.gpus.iter().find(|x| x.uuid == g.uuid))
                .map(|x| x.health.clone())
                .unwrap_or_default(),
            uuid: g.uuid.clone(),
            model: g.name.clone(),
        })
        .collect();
    (gpus, inventory.agent.api_addr.clone().unwrap_or_default())
}

pub async fn list(
    ctx: &ApiContext,
    request: Request<ListNodesRequest>,
) -> Result<Response<ListNodesReply>, Status> {
    ctx.read(
        request,
        |_| false,
        |mut c, r| async move { c.list_nodes(r).await },
        |req, applied| {
            let nodes = applied
                .state
                .nodes
                .iter()
                .filter(|(id, _)| req.node_id.is_empty() || **id == req.node_id)
                .map(|(id, n)| {
                    let telemetry = ctx.liveness.telemetry(id);
                    let (gpus, agent_api_addr) = inventory_view(&n.inventory, telemetry.as_deref());
                    NodeSummary {
                        id: id.clone(),
                        hostname: n.hostname.clone(),
                        health: n.health.name().to_string(),
                        labels: n.labels.clone().into_iter().collect(),
                        gpus,
                        last_heartbeat_age_ms: ctx.liveness.age_ms(id),
                        inventory_json: if req.with_inventory {
                            serde_json::to_vec(&n.inventory).unwrap_or_default()
                        } else {
                            Vec::new()
                        },
                        inventory: req.with_inventory.then(|| (&n.inventory).into()),
                        agent_api_addr,
                        telemetry: if req.with_inventory {
                            telemetry.map(|t| (*t).clone())
                        } else {
                            None
                        },
                    }
                })
                .collect();
            Ok(ListNodesReply { nodes })
        },
    )
    .await
}

pub async fn events(
    ctx: &ApiContext,
    request: Request<NodeEventsRequest>,
) -> Result<Response<NodeEventsReply>, Status> {
    ctx.read(
        request,
        |_| false,
        |mut c, r| async move { c.node_events(r).await },
        |req, applied| {
            let events = applied
                .state
                .node_events
                .iter()
                .filter(|e| req.node_id.is_empty() || e.node == req.node_id)
                .map(|e| NodeEventPb {
                    revision: e.revision,
                    node_id: e.node.clone(),
                    from: e.from.map(|h| h.name().to_string()).unwrap_or_default(),
                    to: e.to.map(|h| h.name().to_string()).unwrap_or_default(),
                    at_unix_ms: e.at_unix_ms,
                    reason: e.reason.clone(),
                })
                .collect();
            Ok(NodeEventsReply { events })
        },
    )
    .await
}

pub async fn remove(
    ctx: &ApiContext,
    request: Request<RemoveNodeRequest>,
) -> Result<Response<RemoveNodeReply>, Status> {
    ctx.write(
        request,
        |req| {
            let applied = ctx.raft.view().read();
            let node = applied.state.nodes.get(&req.node_id).ok_or_else(|| {
                ApiError::NotFound(format!("no node `{}` (see `steward node list`)", req.node_id))
            })?;
            // Removing a node marks its work lost and places it elsewhere at once; while the
            // node is not down its agent may still run that work (it fences only after
            // `fence_after`), so two copies could overlap. --force does not change that.
            let live = applied.state.live_allocs_on(&req.node_id);
            if applied.state.removal_would_duplicate(&req.node_id) {
                return Err(ApiError::FailedPrecondition(format!(
                    "node `{}` is {} and holds {} allocations ({}{}): drain it first (`steward node drain {}`), or stop its agent and wait until it is down",
                    req.node_id,
                    node.health.name(),
                    live.len(),
                    live.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                    if live.len() > 3 { ", ..." } else { "" },
                    req.node_id
                )));
            }
            if node.health == NodeHealth::Ready && !req.force {
                return Err(ApiError::FailedPrecondition(format!(
                    "node `{}` is ready: its agent is running and would register it again; stop the agent first, or pass --force",
                    req.node_id
                )));
            }
            Ok(Command::RemoveNode {
                node: req.node_id.clone(),
            })
        },
        |result| match result {
            CommandResult::NodeRemoved { revision } => Ok(RemoveNodeReply { revision }),
            // The node came back (or was given work) after the check above.
            CommandResult::NodeBusy {
                node,
                health,
                allocations,
            } => Err(ApiError::FailedPrecondition(format!(
                "node `{node}` is {} and holds {allocations} allocations: drain it first (`steward node drain {node}`), or stop its agent and wait until it is down",
                health.name()
            ))),
            CommandResult::UnknownNode { node } => {
                Err(ApiError::NotFound(format!("no node `{node}`")))
            }
            other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
        },
        |mut c, r| async move { c.remove_node(r).await },
    )
    .await
}
