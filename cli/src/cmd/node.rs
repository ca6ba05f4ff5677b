//! `steward node`: the agents' machines as the cluster sees them.

use std::process::ExitCode;

use serde_json::json;
use steward_proto::v1::{ListNodesRequest, NodeEventsRequest, NodeSummary};

use crate::client::with_retry;
use crate::output::{opt, print_json, table, Output};

#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {
    /// Every node: id, hostname, health, GPUs, last heartbeat age.
    List,
    /// One node with its inventory.
    Show { id: String },
    /// Health changes with their reasons, oldest first.
    Events { id: Option<String> },
}

fn node_json(n: &NodeSummary) -> serde_json::Value {
    json!({
        "id": n.id,
        "hostname": n.hostname,
        "state": n.health,
        "labels": n.labels,
        "gpus": n.gpus.iter().map(|g| json!({"uuid": g.uuid, "model": g.model})).collect::<Vec<_>>(),
        "last_heartbeat_age_ms": n.last_heartbeat_age_ms,
    })
}

pub async fn run(addrs: &str, output: Output, command: NodeCommand) -> anyhow::Result<ExitCode> {
    match command {
        NodeCommand::List | NodeCommand::Show { .. } => {
            let (node_id, with_inventory) = match &command {
                NodeCommand::Show { id } => (id.clone(), true),
                _ => (String::new(), false),
            };
            let req = ListNodesRequest {
                node_id: node_id.clone(),
                with_inventory,
            };
            let reply = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.list_nodes(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            if with_inventory {
                let Some(n) = reply.nodes.first() else {
                    anyhow::bail!("not found: no node `{node_id}` (see `steward node list`)");
                };
                let inventory: serde_json::Value =
                    serde_json::from_slice(&n.inventory_json).unwrap_or(serde_json::Value::Null);
                let mut doc = node_json(n);
                doc["inventory"] = inventory;
                match output {
                    Output::Json => print_json(&doc)?,
                    Output::Table => println!("{}", serde_json::to_string_pretty(&doc)?),
                }
                return Ok(ExitCode::SUCCESS);
            }
            match output {
                Output::Json => print_json(&json!(reply
                    .nodes
                    .iter()
                    .map(node_json)
                    .collect::<Vec<_>>()))?,
                Output::Table => {
                    let mut t = table(["ID", "HOSTNAME", "STATE", "GPUS", "LAST HEARTBEAT"]);
                    for n in &reply.nodes {
                        let model = n.gpus.first().map(|g| g.model.clone()).unwrap_or_default();
                        t.add_row(vec![
                            n.id.clone(),
                            n.hostname.clone(),
                            n.health.clone(),
                            if n.gpus.is_empty() {
                                "-".into()
                            } else {
                                format!("{} x {model}", n.gpus.len())
                            },
                            opt(n.last_heartbeat_age_ms.map(|ms| format!("{ms}ms ago"))),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        NodeCommand::Events { id } => {
            let req = NodeEventsRequest {
                node_id: id.unwrap_or_default(),
            };
            let reply = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.node_events(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match output {
                Output::Json => print_json(&json!(reply
                    .events
                    .iter()
                    .map(|e| json!({"revision": e.revision, "node": e.node_id, "from": e.from, "to": e.to, "reason": e.reason}))
                    .collect::<Vec<_>>()))?,
                Output::Table => {
                    let mut t = table(["REVISION", "NODE", "FROM", "TO", "REASON"]);
                    for e in &reply.events {
                        t.add_row(vec![e.revision.to_string(), e.node_id.clone(), e.from.clone(), e.to.clone(), e.reason.clone()]);
                    }
                    println!("{t}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
