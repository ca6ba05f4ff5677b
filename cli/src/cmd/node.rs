//! `steward node`: the agents' machines as the cluster sees them, and the controls of their
//! simulated GPUs (load, faults), which go straight to the node's agent API.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;
use steward_proto::v1::agent_api_client::AgentApiClient;
use steward_proto::v1::{
    GpuFault, GpuTelemetry, InjectGpuFaultRequest, ListNodesRequest, NodeEventsRequest,
    NodeSummary, NodeTelemetry, RemoveNodeRequest, SetGpuLoadRequest,
};
use steward_runtime::tls::ServerKind;
use steward_runtime::transport;

use crate::client::{status_error, with_retry, CALL_TIMEOUT, CONNECT_TIMEOUT};
use crate::output::{opt, print_json, table, Output};

#[derive(clap::Subcommand, Debug)]
pub enum NodeCommand {
    /// Every node: id, hostname, health, GPUs (with how many are unhealthy), last heartbeat age.
    List,
    /// One node: inventory, latest telemetry, GPU health and recent GPU events.
    Show { id: String },
    /// Health changes with their reasons, oldest first.
    Events { id: Option<String> },
    /// Forget a retired machine: its record and registration (its events stay). Refused
    /// while the node is ready, since its running agent would register it again.
    Remove {
        id: String,
        /// Remove it even while its agent runs.
        #[arg(long)]
        force: bool,
    },
    /// Planned maintenance on (or off): while the node is down its chunks are not copied
    /// elsewhere (except those left with one live replica).
    Maintenance {
        id: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Start a scrub pass of the node's chunk store now (every chunk re-read and re-hashed).
    Scrub {
        id: String,
        /// The agent's API address (default: from the node's registration); the agent
        /// there must be this node's (its certificate is checked).
        #[arg(long)]
        agent: Option<String>,
    },
    /// Keep new work off a node (what runs there stays).
    Cordon { id: String },
    /// Allow new work on a node again (ends a drain too).
    Uncordon { id: String },
    /// Move a node's work off: no new placements; its allocations are stopped (now, or at
    /// the deadline) and placed elsewhere, and its chunks are copied to other nodes and
    /// removed from it. Follows progress until the node holds neither.
    Drain {
        id: String,
        /// Let the work run until this much time has passed (e.g. "30m"); default: now.
        #[arg(long, value_parser = humantime::parse_duration)]
        deadline: Option<std::time::Duration>,
        /// Start the drain and return.
        #[arg(long)]
        detach: bool,
    },
    /// Assign load to a node's simulated GPU; its telemetry follows (development, tests).
    Load {
        id: String,
        /// GPU index, or "all".
        #[arg(long)]
        gpu: String,
        /// Utilisation, 0-100.
        #[arg(long)]
        util: u32,
        /// Memory in use; by default it follows the load.
        #[arg(long)]
        memory_mib: Option<u64>,
        /// The agent's API address (default: from the node's registration); the agent
        /// there must be this node's (its certificate is checked).
        #[arg(long)]
        agent: Option<String>,
    },
    /// Inject a fault into a node's simulated GPU (development, tests, chaos).
    Fault {
        id: String,
        #[arg(long)]
        gpu: u32,
        /// What goes wrong.
        #[arg(value_enum)]
        fault: FaultKind,
        /// The XID, for `xid`.
        code: Option<u64>,
        /// The agent's API address (default: from the node's registration); the agent
        /// there must be this node's (its certificate is checked).
        #[arg(long)]
        agent: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultKind {
    /// The driver reports XID CODE.
    Xid,
    /// An uncorrectable ECC error (also XID 48).
    EccDoubleBit,
    /// A corrected ECC error.
    EccSingleBit,
    /// Cooling fails: 95 C with thermal slowdown.
    OverTemperature,
    /// The GPU disappears from the bus (also XID 79).
    FellOffBus,
    /// Repair: clear faults, volatile ECC counts and the GPU's events.
    Clear,
}

fn node_json(n: &NodeSummary) -> serde_json::Value {
    json!({
        "id": n.id,
        "hostname": n.hostname,
        "state": n.health,
        "labels": n.labels,
        "gpus": n.gpus.iter().map(|g| json!({"uuid": g.uuid, "model": g.model, "health": g.health})).collect::<Vec<_>>(),
        "last_heartbeat_age_ms": n.last_heartbeat_age_ms,
        "agent_api_addr": n.agent_api_addr,
    })
}

fn gpu_json(g: &GpuTelemetry) -> serde_json::Value {
    json!({
        "index": g.index,
        "uuid": g.uuid,
        "health": g.health,
        "health_reasons": g.health_reasons,
        "sm_util_pct": g.sm_util_pct,
        "mem_util_pct": g.mem_util_pct,
        "memory_used_mib": g.memory_used_mib,
        "temperature_c": g.temperature_c,
        "power_w": g.power_w,
        "energy_mj": g.energy_mj,
        "sm_clock_mhz": g.sm_clock_mhz,
        "mem_clock_mhz": g.mem_clock_mhz,
        "throttle_reasons": g.throttle_reasons,
        "ecc_sbe_volatile": g.ecc_sbe_volatile,
        "ecc_dbe_volatile": g.ecc_dbe_volatile,
        "ecc_sbe_aggregate": g.ecc_sbe_aggregate,
        "ecc_dbe_aggregate": g.ecc_dbe_aggregate,
        "pcie_replay": g.pcie_replay,
        "last_xid": g.last_xid,
        "xid_count": g.xid_count,
        "lost": g.lost,
    })
}

pub fn telemetry_json(t: &NodeTelemetry) -> serde_json::Value {
    json!({
        "sampled_at_unix_ms": t.sampled_at_unix_ms,
        "isolation": t.isolation,
        "cpu_util_pct": t.cpu_util_pct,
        "load1": t.load1,
        "memory_total_bytes": t.memory_total_bytes,
        "memory_available_bytes": t.memory_available_bytes,
        "data_fs_size_bytes": t.data_fs_size_bytes,
        "data_fs_avail_bytes": t.data_fs_avail_bytes,
        "net_rx_bytes": t.net_rx_bytes,
        "net_tx_bytes": t.net_tx_bytes,
        "net_errors": t.net_errors,
        "gpus": t.gpus.iter().map(gpu_json).collect::<Vec<_>>(),
        "recent_gpu_events": t.recent_gpu_events.iter().map(|e| json!({
            "at_unix_ms": e.at_unix_ms, "gpu": e.gpu_index, "kind": e.kind, "xid": e.xid, "description": e.description,
        })).collect::<Vec<_>>(),
    })
}

fn gib(bytes: Option<u64>) -> String {
    opt(bytes.map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)))
}

/// `steward node show` for people: a summary, the GPU table, and recent GPU events.
fn print_node(n: &NodeSummary, inventory: &serde_json::Value) {
    let host = &inventory["host"];
    let mut t = table(["FIELD", "VALUE"]);
    let cpu = &host["cpu"];
    for (k, v) in [
        ("id", n.id.clone()),
        ("hostname", n.hostname.clone()),
        ("state", n.health.clone()),
        (
            "last heartbeat",
            opt(n.last_heartbeat_age_ms.map(|ms| format!("{ms}ms ago"))),
        ),
        ("agent api", n.agent_api_addr.clone()),
        (
            "labels",
            n.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("os", host["os"].as_str().unwrap_or("-").to_string()),
        ("kernel", host["kernel"].as_str().unwrap_or("-").to_string()),
        (
            "cpu",
            format!(
                "{} ({} sockets, {} cores, {} threads, {} NUMA nodes)",
                cpu["model"].as_str().unwrap_or("-"),
                cpu["sockets"],
                cpu["cores"],
                cpu["threads"],
                cpu["numa_nodes"]
            ),
        ),
        ("memory", gib(host["memory_total_bytes"].as_u64())),
        (
            "gpu driver",
            inventory["gpu_driver"].as_str().unwrap_or("-").to_string(),
        ),
    ] {
        t.add_row(vec![k.to_string(), v]);
    }
    if let Some(tel) = &n.telemetry {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for (k, v) in [
            (
                "telemetry sampled",
                format!("{}ms ago", now_ms.saturating_sub(tel.sampled_at_unix_ms)),
            ),
            (
                "cpu busy",
                opt(tel.cpu_util_pct.map(|p| format!("{p:.1}%"))),
            ),
            ("load (1m)", opt(tel.load1.map(|l| format!("{l:.2}")))),
            ("memory available", gib(tel.memory_available_bytes)),
            (
                "allocation isolation",
                if tel.isolation.is_empty() {
                    "-".to_string()
                } else {
                    tel.isolation.clone()
                },
            ),
            (
                "data dir filesystem",
                format!(
                    "{} free of {}",
                    gib(tel.data_fs_avail_bytes),
                    gib(tel.data_fs_size_bytes)
                ),
            ),
        ] {
            t.add_row(vec![k.to_string(), v]);
        }
    }
    println!("{t}");
    let Some(tel) = &n.telemetry else {
        println!("no telemetry yet (the leader keeps it from heartbeats; wait a second)");
        return;
    };
    if !tel.gpus.is_empty() {
        let models: Vec<&str> = inventory["gpus"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|g| g["name"].as_str().unwrap_or("-"))
                    .collect()
            })
            .unwrap_or_default();
        let mut g = table([
            "GPU",
            "MODEL",
            "HEALTH",
            "UTIL",
            "MEMORY",
            "TEMP",
            "POWER",
            "SM CLOCK",
            "XID",
            "ECC SBE/DBE",
            "WHY",
        ]);
        for x in &tel.gpus {
            g.add_row(vec![
                x.index.to_string(),
                models
                    .get(x.index as usize)
                    .copied()
                    .unwrap_or("-")
                    .to_string(),
                x.health.clone(),
                opt(x.sm_util_pct.map(|u| format!("{u}%"))),
                opt(x.memory_used_mib.map(|m| format!("{m} MiB"))),
                opt(x.temperature_c.map(|c| format!("{c} C"))),
                opt(x.power_w.map(|w| format!("{w:.0} W"))),
                opt(x.sm_clock_mhz.map(|c| format!("{c} MHz"))),
                opt(x.last_xid),
                format!("{}/{}", opt(x.ecc_sbe_volatile), opt(x.ecc_dbe_volatile)),
                x.health_reasons.join("; "),
            ]);
        }
        println!("{g}");
    }
    if !tel.recent_gpu_events.is_empty() {
        let mut e = table(["AT (UNIX MS)", "GPU", "EVENT"]);
        for ev in &tel.recent_gpu_events {
            e.add_row(vec![
                ev.at_unix_ms.to_string(),
                ev.gpu_index.to_string(),
                ev.description.clone(),
            ]);
        }
        println!("{e}");
    }
}

async fn set_scheduling(
    addrs: &str,
    output: Output,
    id: &str,
    cordoned: bool,
    drain: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let req = steward_proto::v1::SetNodeSchedulingRequest {
        node_id: id.to_string(),
        cordoned,
        drain_deadline_ms: drain.map(|d| d.as_millis() as u64),
    };
    let reply = with_retry(addrs, |mut c| {
        let req = req.clone();
        async move { c.set_node_scheduling(req).await.map(|r| r.into_inner()) }
    })
    .await?;
    let what = match (drain, cordoned) {
        (Some(_), _) => "draining",
        (None, true) => "cordoned",
        (None, false) => "uncordoned",
    };
    match output {
        Output::Json if drain.is_none() => print_json(
            &json!({"node": id, "state": what, "changed": reply.changed, "revision": reply.revision}),
        )?,
        Output::Json => {}
        Output::Table if reply.changed => println!("node {id} {what}"),
        Output::Table => println!("node {id} was already {what}"),
    }
    Ok(())
}

/// Prints a drain's progress until the node is empty.
/// Replicas of referenced chunks on `node` as the leader knows them (None: not every live
/// agent has reported yet).
async fn chunk_replicas_on(addrs: &str, node: &str) -> anyhow::Result<Option<u64>> {
    let f = with_retry(addrs, |mut c| async move {
        c.fsck(steward_proto::v1::FsckRequest {
            prefix: String::new(),
        })
        .await
        .map(|r| r.into_inner())
    })
    .await?;
    if !f.complete {
        return Ok(None);
    }
    Ok(Some(
        f.nodes
            .iter()
            .find(|n| n.node_id == node)
            .map_or(0, |n| n.replicas),
    ))
}

async fn follow_drain(addrs: &str, output: Output, id: &str) -> anyhow::Result<()> {
    let mut last = None;
    let mut last_chunks = None;
    loop {
        let req = steward_proto::v1::NodeSchedulingRequest {
            node_id: id.to_string(),
        };
        let s = with_retry(addrs, |mut c| {
            let req = req.clone();
            async move { c.node_scheduling(req).await.map(|r| r.into_inner()) }
        })
        .await?;
        if s.drain_complete || (s.draining && s.allocations == 0) {
            // The work is off; the node's chunks move too before it may be retired.
            let left = chunk_replicas_on(addrs, id).await?;
            if left == Some(0) {
                match output {
                    Output::Json => print_json(
                        &json!({"node": id, "state": "drained", "allocations": 0, "chunk_replicas": 0}),
                    )?,
                    Output::Table => println!(
                        "node {id} drained: no allocations and no chunk left on it (it stays cordoned)"
                    ),
                }
                return Ok(());
            }
            if output == Output::Table && last_chunks != left {
                match left {
                    Some(n) => println!("node {id}: {n} chunk replicas left to move"),
                    None => println!("node {id}: waiting for the agents' chunk lists"),
                }
                last_chunks = left;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            continue;
        }
        if !s.draining {
            anyhow::bail!("the drain of node {id} was ended (uncordoned) before it completed");
        }
        if output == Output::Table && last != Some(s.allocations) {
            println!("node {id}: {} allocations left", s.allocations);
            last = Some(s.allocations);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The agent API of a node: `--agent`, or the address the node registered.
async fn agent_client(
    addrs: &str,
    id: &str,
    agent: Option<String>,
) -> anyhow::Result<AgentApiClient<tonic::transport::Channel>> {
    Ok(transport::agent_api_client(
        agent_channel(addrs, id, agent).await?,
    ))
}

/// The chunk store's status from the node's agent (None: unreachable).
async fn chunk_store_status(
    node: &str,
    addr: &str,
) -> Option<steward_proto::v1::ChunkStoreStatusReply> {
    let options = crate::security::options(CONNECT_TIMEOUT, ServerKind::Agent)
        .ok()?
        .node(node)
        .call_timeout(CALL_TIMEOUT);
    let ch = transport::connect(addr, &options).await.ok()?;
    transport::chunk_client(ch)
        .chunk_store_status(steward_proto::v1::ChunkStoreStatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

fn chunk_store_json(s: &steward_proto::v1::ChunkStoreStatusReply) -> serde_json::Value {
    json!({
        "chunks": s.chunks, "stored_bytes": s.stored_bytes, "free_bytes": s.free_bytes,
        "free_floor_bytes": s.free_floor_bytes, "space_low": s.space_low,
        "quarantined": s.quarantined,
        "copied_in_chunks": s.copied_in_chunks, "copied_in_bytes": s.copied_in_bytes,
        "scrub": s.scrub.as_ref().map(|x| json!({
            "running": x.running, "passes": x.passes, "checked": x.checked,
            "corrupt_found": x.corrupt_found, "last_pass_ended_unix_ms": x.last_pass_ended_unix_ms,
            "bytes_per_sec_limit": x.bytes_per_sec_limit,
            "paused_for_disk_io": x.paused_for_disk_io,
        })),
    })
}

fn print_chunk_store(s: Option<&steward_proto::v1::ChunkStoreStatusReply>) {
    let Some(s) = s else {
        println!("\nChunk store: the agent did not answer");
        return;
    };
    println!(
        "\nChunk store: {} chunks, {} stored, {} free (floor {}{})",
        s.chunks,
        bytesize::ByteSize(s.stored_bytes),
        bytesize::ByteSize(s.free_bytes),
        bytesize::ByteSize(s.free_floor_bytes),
        if s.space_low {
            ", BELOW: no new chunks"
        } else {
            ""
        }
    );
    if !s.quarantined.is_empty() {
        println!("  quarantined (rotten): {}", s.quarantined.join(", "));
    }
    println!(
        "  copied in from peers: {} chunks ({}); garbage collected: {}",
        s.copied_in_chunks,
        bytesize::ByteSize(s.copied_in_bytes),
        s.gc_removed
    );
    if let Some(x) = &s.scrub {
        println!(
            "  scrub: {}, {} passes, {} checked this pass, {} rotten found, limit {}/s",
            match (x.running, x.paused_for_disk_io) {
                (true, true) => "paused (the disk is busy)",
                (true, false) => "running",
                _ => "idle",
            },
            x.passes,
            x.checked,
            x.corrupt_found,
            bytesize::ByteSize(x.bytes_per_sec_limit)
        );
    }
}

/// A channel to the agent of a node: `--agent`, or the address the node registered.
async fn agent_channel(
    addrs: &str,
    id: &str,
    agent: Option<String>,
) -> anyhow::Result<tonic::transport::Channel> {
    let addr = match agent {
        Some(a) => a,
        None => {
            let req = ListNodesRequest {
                node_id: id.to_string(),
                with_inventory: false,
            };
            let reply = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.list_nodes(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            let n =
                reply.nodes.into_iter().next().with_context(|| {
                    format!("not found: no node `{id}` (see `steward node list`)")
                })?;
            if n.agent_api_addr.is_empty() {
                anyhow::bail!(
                    "node `{id}` registered no agent API address; give --agent HOST:PORT"
                );
            }
            n.agent_api_addr
        }
    };
    let options = crate::security::options(CONNECT_TIMEOUT, ServerKind::Agent)?
        .node(id)
        .call_timeout(CALL_TIMEOUT);
    transport::connect(&addr, &options)
        .await
        .with_context(|| format!("cannot reach the agent of `{id}` at {addr}"))
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
                let store = if n.agent_api_addr.is_empty() {
                    None
                } else {
                    chunk_store_status(&n.id, &n.agent_api_addr).await
                };
                match output {
                    Output::Json => {
                        let mut doc = node_json(n);
                        doc["inventory"] = inventory;
                        doc["telemetry"] = n
                            .telemetry
                            .as_ref()
                            .map_or(serde_json::Value::Null, telemetry_json);
                        doc["chunk_store"] = store
                            .as_ref()
                            .map_or(serde_json::Value::Null, chunk_store_json);
                        print_json(&doc)?
                    }
                    Output::Table => {
                        print_node(n, &inventory);
                        print_chunk_store(store.as_ref());
                    }
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
                    let mut t = table([
                        "ID",
                        "HOSTNAME",
                        "STATE",
                        "GPUS",
                        "UNHEALTHY GPUS",
                        "LAST HEARTBEAT",
                    ]);
                    for n in &reply.nodes {
                        let model = n.gpus.first().map(|g| g.model.clone()).unwrap_or_default();
                        let unhealthy: Vec<String> = n
                            .gpus
                            .iter()
                            .enumerate()
                            .filter(|(_, g)| g.health == "degraded" || g.health == "failed")
                            .map(|(i, g)| format!("{i}: {}", g.health))
                            .collect();
                        t.add_row(vec![
                            n.id.clone(),
                            n.hostname.clone(),
                            n.health.clone(),
                            if n.gpus.is_empty() {
                                "-".into()
                            } else {
                                format!("{} x {model}", n.gpus.len())
                            },
                            if unhealthy.is_empty() {
                                "-".into()
                            } else {
                                unhealthy.join(", ")
                            },
                            opt(n.last_heartbeat_age_ms.map(|ms| format!("{ms}ms ago"))),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        NodeCommand::Load {
            id,
            gpu,
            util,
            memory_mib,
            agent,
        } => {
            let mut client = agent_client(addrs, &id, agent).await?;
            let indices: Vec<u32> = if gpu == "all" {
                let t = client
                    .get_telemetry(steward_proto::v1::GetTelemetryRequest {})
                    .await
                    .map_err(status_error)?
                    .into_inner();
                t.gpus.iter().map(|g| g.index).collect()
            } else {
                vec![gpu
                    .parse()
                    .with_context(|| format!("--gpu `{gpu}` is neither an index nor `all`"))?]
            };
            for gpu_index in &indices {
                client
                    .set_gpu_load(SetGpuLoadRequest {
                        gpu_index: *gpu_index,
                        util_pct: util,
                        memory_used_mib: memory_mib,
                    })
                    .await
                    .map_err(status_error)?;
            }
            match output {
                Output::Json => {
                    print_json(&json!({"node": id, "gpus": indices, "util_pct": util}))?
                }
                Output::Table => println!("node {id}: GPUs {indices:?} now at {util}% load"),
            }
        }
        NodeCommand::Fault {
            id,
            gpu,
            fault,
            code,
            agent,
        } => {
            let (kind, xid) = match (fault, code) {
                (FaultKind::Xid, Some(c)) if c > 0 => (GpuFault::Xid, c),
                (FaultKind::Xid, _) => anyhow::bail!(
                    "`xid` needs the XID code, e.g. `steward node fault {id} --gpu {gpu} xid 79`"
                ),
                (_, Some(_)) => anyhow::bail!("only `xid` takes a code"),
                (FaultKind::EccDoubleBit, None) => (GpuFault::EccDoubleBit, 0),
                (FaultKind::EccSingleBit, None) => (GpuFault::EccSingleBit, 0),
                (FaultKind::OverTemperature, None) => (GpuFault::OverTemperature, 0),
                (FaultKind::FellOffBus, None) => (GpuFault::FellOffBus, 0),
                (FaultKind::Clear, None) => (GpuFault::Clear, 0),
            };
            let mut client = agent_client(addrs, &id, agent).await?;
            client
                .inject_gpu_fault(InjectGpuFaultRequest {
                    gpu_index: gpu,
                    fault: kind as i32,
                    xid,
                })
                .await
                .map_err(status_error)?;
            match output {
                Output::Json => print_json(
                    &json!({"node": id, "gpu": gpu, "fault": kind.as_str_name(), "xid": xid}),
                )?,
                Output::Table => {
                    println!("node {id}: injected {} into GPU {gpu}", kind.as_str_name())
                }
            }
        }
        NodeCommand::Cordon { id } => set_scheduling(addrs, output, &id, true, None).await?,
        NodeCommand::Uncordon { id } => set_scheduling(addrs, output, &id, false, None).await?,
        NodeCommand::Maintenance { id, state, reason } => {
            let req = steward_proto::v1::SetNodeMaintenanceRequest {
                node_id: id.clone(),
                on: state == "on",
                reason,
            };
            let reply = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.set_node_maintenance(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match output {
                Output::Json => print_json(
                    &json!({"node": id, "maintenance": state == "on", "changed": reply.changed, "revision": reply.revision}),
                )?,
                Output::Table => println!(
                    "{id}: maintenance {state}{}",
                    if reply.changed { "" } else { " (already)" }
                ),
            }
        }
        NodeCommand::Scrub { id, agent } => {
            let ch = agent_channel(addrs, &id, agent).await?;
            let reply = transport::chunk_client(ch)
                .start_scrub(steward_proto::v1::StartScrubRequest {})
                .await
                .map_err(crate::client::status_error)?
                .into_inner();
            match output {
                Output::Json => print_json(&json!({"node": id, "started": reply.started}))?,
                Output::Table => println!(
                    "{id}: {}",
                    if reply.started {
                        "scrub pass started (`steward node show` follows it)"
                    } else {
                        "a scrub pass is already running"
                    }
                ),
            }
        }
        NodeCommand::Drain {
            id,
            deadline,
            detach,
        } => {
            let deadline = deadline.unwrap_or_default();
            set_scheduling(addrs, output, &id, true, Some(deadline)).await?;
            if !detach {
                follow_drain(addrs, output, &id).await?;
            }
        }
        NodeCommand::Remove { id, force } => {
            let req = RemoveNodeRequest {
                node_id: id.clone(),
                force,
            };
            let reply = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.remove_node(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match output {
                Output::Json => print_json(&json!({"node": id, "revision": reply.revision}))?,
                Output::Table => println!("node {id} removed at revision {}", reply.revision),
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
                    .map(|e| json!({
                        "revision": e.revision,
                        "at_unix_ms": (e.at_unix_ms > 0).then_some(e.at_unix_ms),
                        "node": e.node_id,
                        "from": (!e.from.is_empty()).then_some(&e.from),
                        "to": if e.to.is_empty() { "removed" } else { e.to.as_str() },
                        "reason": e.reason,
                    }))
                    .collect::<Vec<_>>()))?,
                Output::Table => {
                    let mut t = table(["REVISION", "AT (UTC)", "NODE", "FROM", "TO", "REASON"]);
                    for e in &reply.events {
                        let at = if e.at_unix_ms == 0 {
                            "-".to_string()
                        } else {
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH
                                    + std::time::Duration::from_millis(e.at_unix_ms),
                            )
                            .to_string()
                        };
                        t.add_row(vec![
                            e.revision.to_string(),
                            at,
                            e.node_id.clone(),
                            if e.from.is_empty() {
                                "-".into()
                            } else {
                                e.from.clone()
                            },
                            if e.to.is_empty() {
                                "removed".into()
                            } else {
                                e.to.clone()
                            },
                            e.reason.clone(),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
