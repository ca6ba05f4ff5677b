//! `steward fsck [PREFIX]` and `steward chunk locate ID`: how safe the stored data is, like
//! `hdfs fsck`. Fsck exits 1 when data is at risk (a chunk below its factor or without a
//! live replica), so scripts and alerts can use it.

use std::process::ExitCode;

use serde_json::json;
use steward_proto::v1::{FsckNodePb, FsckRequest, LocateChunkRequest};

use crate::client::with_retry;
use crate::output::{print_json, table, Output};

#[derive(clap::Args, Debug)]
pub struct FsckArgs {
    /// Only objects whose names start with PREFIX.
    #[arg(default_value = "")]
    pub prefix: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum ChunkCommand {
    /// Where a chunk is: its holders, its place in the layout, its risk.
    Locate { id: String },
}

/// Replicas and nodes by failure domain (`zone/rack`; `-` where a label is unset), from
/// the per-node rows: where the data sits when a rack or a zone goes.
fn domains(nodes: &[FsckNodePb]) -> Vec<serde_json::Value> {
    let mut by: std::collections::BTreeMap<(String, String), (u64, u64, u64)> = Default::default();
    for n in nodes {
        let label = |v: &str| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.to_string()
            }
        };
        let e = by.entry((label(&n.zone), label(&n.rack))).or_default();
        e.0 += 1;
        e.1 += u64::from(n.health == "ready");
        e.2 += n.replicas;
    }
    by.into_iter()
        .map(|((zone, rack), (nodes, ready, replicas))| {
            json!({"zone": zone, "rack": rack, "nodes": nodes, "ready": ready, "replicas": replicas})
        })
        .collect()
}

fn node_json(n: &FsckNodePb) -> serde_json::Value {
    json!({
        "node": n.node_id, "health": n.health, "zone": n.zone, "rack": n.rack,
        "replicas": n.replicas, "maintenance": n.maintenance, "out": n.out,
    })
}

pub async fn run(addrs: &str, output: Output, args: FsckArgs) -> anyhow::Result<ExitCode> {
    let req = FsckRequest {
        prefix: args.prefix,
    };
    let r = with_retry(addrs, |mut c| {
        let req = req.clone();
        async move { c.fsck(req).await.map(|r| r.into_inner()) }
    })
    .await?;
    let at_risk = r.under_replicated > 0 || r.missing > 0;
    match output {
        Output::Json => print_json(&json!({
            "objects": r.objects, "versions": r.versions, "chunks": r.chunks, "bytes": r.bytes,
            "under_replicated": r.under_replicated, "one_live": r.one_live,
            "missing": r.missing, "corrupt": r.corrupt, "badly_spread": r.badly_spread,
            "misplaced": r.misplaced, "repairs_in_flight": r.repairs_in_flight,
            "complete": r.complete, "healthy": !at_risk,
            "at_risk": r.at_risk,
            "repair": {
                "copied_chunks": r.repair_copied_chunks, "copied_bytes": r.repair_copied_bytes,
                "trimmed": r.repair_trimmed, "failed_copies": r.repair_failed_copies,
            },
            "nodes": r.nodes.iter().map(node_json).collect::<Vec<_>>(),
            "domains": domains(&r.nodes),
        }))?,
        Output::Table => {
            println!(
                "{} objects, {} versions, {} chunks ({})",
                r.objects,
                r.versions,
                r.chunks,
                bytesize::ByteSize(r.bytes)
            );
            println!(
                "under-replicated {} (one live replica: {}, no live replica: {}), badly spread {}, misplaced {}, found rotten {}; repairs in flight {}",
                r.under_replicated, r.one_live, r.missing, r.badly_spread, r.misplaced, r.corrupt, r.repairs_in_flight
            );
            println!(
                "repair on this leader: {} chunks copied ({}), {} surplus replicas trimmed, {} copies failed",
                r.repair_copied_chunks,
                bytesize::ByteSize(r.repair_copied_bytes),
                r.repair_trimmed,
                r.repair_failed_copies
            );
            if !r.complete {
                println!("(not every live agent has reported its chunks to this leader yet)");
            }
            let mut t = table(["NODE", "HEALTH", "ZONE", "RACK", "REPLICAS", "STATE"]);
            for n in &r.nodes {
                t.add_row(vec![
                    n.node_id.clone(),
                    n.health.clone(),
                    n.zone.clone(),
                    n.rack.clone(),
                    n.replicas.to_string(),
                    match (n.out, n.maintenance) {
                        (true, _) => "out: being replaced".to_string(),
                        (false, true) => "maintenance".to_string(),
                        _ => String::new(),
                    },
                ]);
            }
            println!("{t}");
            let mut d = table(["ZONE", "RACK", "NODES", "READY", "REPLICAS"]);
            for row in domains(&r.nodes) {
                d.add_row(
                    ["zone", "rack", "nodes", "ready", "replicas"]
                        .map(|k| row[k].to_string().trim_matches('"').to_string()),
                );
            }
            println!("{d}");
            for line in &r.at_risk {
                println!("at risk: {line}");
            }
            println!("{}", if at_risk { "DATA AT RISK" } else { "HEALTHY" });
        }
    }
    Ok(if at_risk {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn run_chunk(
    addrs: &str,
    output: Output,
    command: ChunkCommand,
) -> anyhow::Result<ExitCode> {
    let ChunkCommand::Locate { id } = command;
    let req = LocateChunkRequest {
        chunk_id: id.clone(),
    };
    let r = with_retry(addrs, |mut c| {
        let req = req.clone();
        async move { c.locate_chunk(req).await.map(|r| r.into_inner()) }
    })
    .await?;
    match output {
        Output::Json => print_json(&json!({
            "chunk": id, "size": r.size, "rf": r.rf, "references": r.references,
            "risk": r.risk, "placed": r.placed,
            "holders": r.holders.iter().map(node_json).collect::<Vec<_>>(),
        }))?,
        Output::Table => {
            println!(
                "chunk {id}: {}, rf {}, referenced by {} version(s), {}",
                bytesize::ByteSize(r.size),
                r.rf,
                r.references,
                r.risk
            );
            println!("placed on: {}", r.placed.join(", "));
            let mut t = table(["HOLDER", "HEALTH", "ZONE", "RACK"]);
            for n in &r.holders {
                t.add_row(vec![
                    n.node_id.clone(),
                    n.health.clone(),
                    n.zone.clone(),
                    n.rack.clone(),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
