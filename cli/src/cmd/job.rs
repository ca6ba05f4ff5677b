//! `steward job` and `steward alloc`: submit, plan, list, show, cancel jobs, read their
//! logs from the agents, and look at allocations.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use steward_core::job::JobSpec;
use steward_proto::v1::{
    AllocLogsRequest, AllocationPb, CancelJobRequest, GetAllocationRequest, GetJobRequest, JobPb,
    ListAllocationsRequest, ListJobsRequest, PlanJobRequest, SubmitJobRequest,
};
use steward_runtime::tls::ServerKind;
use steward_runtime::transport;

use crate::client::{request_id, with_request_retry, with_retry, CONNECT_TIMEOUT};
use crate::output::{opt, print_json, table, Output};

/// How long `job run` follows a job before it returns (it keeps running).
const FOLLOW_FOR: Duration = Duration::from_secs(60);

#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {
    /// Submit a job (TOML or JSON spec); prints its id, then follows placement and start.
    Run {
        spec: PathBuf,
        /// Print the id and return at once.
        #[arg(long)]
        detach: bool,
    },
    /// A dry run: where each task would go now, what it would preempt, why other nodes
    /// cannot take it.
    Plan { spec: PathBuf },
    /// Jobs, newest first.
    List {
        /// Only jobs in this status: pending, running, complete, failed, cancelled.
        #[arg(long)]
        state: Option<String>,
    },
    /// One job: its allocations and events with their reasons.
    Show { id: String },
    /// A task's output, from the agent that runs (or ran) it.
    Logs {
        id: String,
        /// The task index.
        #[arg(long, default_value_t = 0)]
        task: u32,
        /// Keep printing what it writes.
        #[arg(long, short)]
        follow: bool,
        /// stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// Only the last N bytes.
        #[arg(long)]
        tail: Option<u64>,
    },
    /// Stop every task of a job (SIGTERM, its kill_timeout, SIGKILL) and place none again.
    Cancel { id: String },
}

#[derive(clap::Subcommand, Debug)]
pub enum AllocCommand {
    /// Allocations that have not ended (with --all, also those that did).
    List {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// One allocation.
    Show { id: String },
}

/// Reads a spec file (TOML, or JSON when it starts with `{`) and validates it.
pub fn read_spec(path: &PathBuf) -> anyhow::Result<JobSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let spec = if text.trim_start().starts_with('{') {
        JobSpec::from_json(&text)
    } else {
        JobSpec::from_toml(&text)
    };
    spec.with_context(|| format!("invalid job spec {}", path.display()))
}

pub fn alloc_json(a: &AllocationPb) -> serde_json::Value {
    json!({
        "id": a.id, "job": a.job_id, "task": a.task, "node": a.node_id, "gpus": a.gpus,
        "gpu_milli": a.gpu_milli, "cpu_millicores": a.cpu_millicores, "memory_mib": a.memory_mib,
        "generation": a.generation, "desired": a.desired, "stop_reason": a.stop_reason,
        "state": a.state, "state_since_unix_ms": a.state_since_unix_ms, "exit_code": a.exit_code,
        "restarts": a.restarts, "reason": a.reason, "created_at_unix_ms": a.created_at_unix_ms,
        "rendezvous": a.rendezvous.as_ref().map(|r| json!({
            "master_addr": r.master_addr, "master_port": r.master_port, "rank": r.rank,
            "world_size": r.world_size, "local_rank": r.local_rank,
        })),
    })
}

fn job_json(j: &JobPb) -> serde_json::Value {
    json!({
        "id": j.id, "name": j.name, "status": j.status, "priority": j.priority, "weight": j.weight,
        "tasks": j.tasks, "gang": j.gang, "preemptible": j.preemptible,
        "pending_reason": j.pending_reason, "submitted_at_unix_ms": j.submitted_at_unix_ms,
        "status_since_unix_ms": j.status_since_unix_ms, "placed_tasks": j.placed_tasks,
        "waiting_tasks": j.waiting_tasks,
        "events": j.events.iter().map(|e| json!({"revision": e.revision, "at_unix_ms": e.at_unix_ms, "message": e.message})).collect::<Vec<_>>(),
        "allocations": j.allocations.iter().map(alloc_json).collect::<Vec<_>>(),
    })
}

fn alloc_table(allocs: &[AllocationPb]) -> comfy_table::Table {
    let mut t = table([
        "ALLOCATION",
        "NODE",
        "GPUS",
        "STATE",
        "DESIRED",
        "RESTARTS",
        "GEN",
        "REASON",
    ]);
    for a in allocs {
        let gpus = if a.gpus.is_empty() {
            "-".to_string()
        } else if a.gpu_milli < 1000 {
            format!("{} ({} milli)", a.gpus.join(","), a.gpu_milli)
        } else {
            a.gpus.join(",")
        };
        t.add_row(vec![
            a.id.clone(),
            a.node_id.clone(),
            gpus,
            a.state.clone(),
            a.desired.clone(),
            a.restarts.to_string(),
            a.generation.to_string(),
            if a.stop_reason.is_empty() {
                a.reason.clone()
            } else {
                a.stop_reason.clone()
            },
        ]);
    }
    t
}

async fn get_job(addrs: &str, id: &str) -> anyhow::Result<JobPb> {
    let req = GetJobRequest {
        job_id: id.to_string(),
    };
    with_retry(addrs, |mut c| {
        let req = req.clone();
        async move { c.get_job(req).await.map(|r| r.into_inner()) }
    })
    .await
}

pub async fn run(addrs: &str, output: Output, cmd: JobCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCommand::Run { spec, detach } => {
            let spec = read_spec(&spec)?;
            let req = SubmitJobRequest {
                spec_json: serde_json::to_string(&spec)?,
                request_id: Some(request_id()),
            };
            let reply = with_request_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.submit_job(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            if output == Output::Json && detach {
                print_json(&json!({"job": reply.job_id, "revision": reply.revision}))?;
                return Ok(ExitCode::SUCCESS);
            }
            if output == Output::Table {
                println!("{}", reply.job_id);
            }
            if detach {
                return Ok(ExitCode::SUCCESS);
            }
            follow_start(addrs, output, &reply.job_id, spec.tasks).await
        }
        JobCommand::Plan { spec } => {
            let spec = read_spec(&spec)?;
            let req = PlanJobRequest {
                spec_json: serde_json::to_string(&spec)?,
            };
            let plan = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.plan_job(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            if output == Output::Json {
                print_json(&json!({
                    "placements": plan.placements.iter().map(|p| json!({"task": p.task, "node": p.node_id, "gpus": p.gpus})).collect::<Vec<_>>(),
                    "preempts": plan.preempts,
                    "nodes": plan.nodes.iter().map(|n| json!({"node": n.node_id, "reason": n.reason})).collect::<Vec<_>>(),
                    "pending_reason": plan.pending_reason,
                }))?;
                return Ok(ExitCode::SUCCESS);
            }
            if plan.placements.is_empty() {
                println!("would wait: {}", plan.pending_reason);
            } else {
                let mut t = table(["TASK", "NODE", "GPUS"]);
                for p in &plan.placements {
                    t.add_row(vec![
                        p.task.to_string(),
                        p.node_id.clone(),
                        p.gpus.join(","),
                    ]);
                }
                println!("{t}");
                if !plan.pending_reason.is_empty() {
                    println!("the rest would wait: {}", plan.pending_reason);
                }
            }
            if !plan.preempts.is_empty() {
                println!("would preempt: {}", plan.preempts.join(", "));
            }
            let mut t = table(["NODE", "WHY NOT"]);
            for n in &plan.nodes {
                t.add_row(vec![
                    n.node_id.clone(),
                    if n.reason.is_empty() {
                        "fits".into()
                    } else {
                        n.reason.clone()
                    },
                ]);
            }
            println!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::List { state } => {
            let req = ListJobsRequest {
                status: state.unwrap_or_default(),
            };
            let reply = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.list_jobs(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            if output == Output::Json {
                print_json(&json!(reply.jobs.iter().map(job_json).collect::<Vec<_>>()))?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = table([
                "JOB",
                "STATUS",
                "PRIORITY",
                "TASKS",
                "PLACED",
                "WAITING",
                "WHY WAITING",
            ]);
            for j in &reply.jobs {
                t.add_row(vec![
                    j.id.clone(),
                    j.status.clone(),
                    j.priority.to_string(),
                    j.tasks.to_string(),
                    j.placed_tasks.to_string(),
                    j.waiting_tasks.to_string(),
                    j.pending_reason.clone(),
                ]);
            }
            println!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Show { id } => {
            let j = get_job(addrs, &id).await?;
            if output == Output::Json {
                print_json(&job_json(&j))?;
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "job {} ({}): {}, priority {}, {} tasks{}{}",
                j.id,
                j.name,
                j.status,
                j.priority,
                j.tasks,
                if j.gang { ", gang" } else { "" },
                if j.preemptible { ", preemptible" } else { "" }
            );
            if !j.pending_reason.is_empty() {
                println!("waiting: {}", j.pending_reason);
            }
            if !j.allocations.is_empty() {
                println!("{}", alloc_table(&j.allocations));
            }
            let mut t = table(["REVISION", "AT (UNIX MS)", "EVENT"]);
            for e in &j.events {
                t.add_row(vec![
                    e.revision.to_string(),
                    e.at_unix_ms.to_string(),
                    e.message.clone(),
                ]);
            }
            println!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Logs {
            id,
            task,
            follow,
            stderr,
            tail,
        } => {
            let j = get_job(addrs, &id).await?;
            let alloc = j
                .allocations
                .iter()
                .filter(|a| a.task == task)
                .max_by_key(|a| a.generation)
                .with_context(|| format!("not found: task {task} of job {id} was never placed"))?;
            if alloc.agent_api_addr.is_empty() {
                anyhow::bail!("node {} registered no agent API address", alloc.node_id);
            }
            let options =
                crate::security::options(CONNECT_TIMEOUT, ServerKind::Agent)?.node(&alloc.node_id);
            let ch = transport::connect(&alloc.agent_api_addr, &options)
                .await
                .with_context(|| {
                    format!(
                        "reaching the agent of node {} at {}",
                        alloc.node_id, alloc.agent_api_addr
                    )
                })?;
            let mut client = transport::agent_api_client(ch);
            let mut stream = client
                .alloc_logs(AllocLogsRequest {
                    alloc_id: alloc.id.clone(),
                    stderr,
                    follow,
                    tail_bytes: tail.unwrap_or(0),
                })
                .await
                .map_err(crate::client::status_error)?
                .into_inner();
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(crate::client::status_error)?
            {
                out.write_all(&chunk.data)?;
                out.flush()?;
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Cancel { id } => {
            let req = CancelJobRequest { job_id: id.clone() };
            let reply = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.cancel_job(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            if output == Output::Json {
                print_json(
                    &json!({"job": id, "changed": reply.changed, "revision": reply.revision}),
                )?;
            } else if reply.changed {
                println!("cancelled {id}: its tasks are stopping");
            } else {
                println!("{id} had already ended");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Follows a new job until every task runs, the job ends, or [`FOLLOW_FOR`] passes.
async fn follow_start(
    addrs: &str,
    output: Output,
    id: &str,
    tasks: u32,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut last_reason = String::new();
    loop {
        let j = get_job(addrs, id).await?;
        let running = j
            .allocations
            .iter()
            .filter(|a| a.state == "running")
            .count() as u32;
        let done = matches!(j.status.as_str(), "complete" | "failed" | "cancelled");
        if output == Output::Table
            && !j.pending_reason.is_empty()
            && j.pending_reason != last_reason
        {
            println!("waiting: {}", j.pending_reason);
            last_reason = j.pending_reason.clone();
        }
        if running >= tasks || done || started.elapsed() >= FOLLOW_FOR {
            if output == Output::Json {
                print_json(&job_json(&j))?;
            } else {
                println!("{}", alloc_table(&j.allocations));
                println!(
                    "job {id}: {} ({running} of {tasks} tasks running)",
                    j.status
                );
            }
            return Ok(if j.status == "failed" {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run_alloc(addrs: &str, output: Output, cmd: AllocCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AllocCommand::List { node, job, all } => {
            let req = ListAllocationsRequest {
                node_id: node.unwrap_or_default(),
                job_id: job.unwrap_or_default(),
                all,
            };
            let reply = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.list_allocations(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            if output == Output::Json {
                print_json(&json!(reply
                    .allocations
                    .iter()
                    .map(alloc_json)
                    .collect::<Vec<_>>()))?;
            } else {
                println!("{}", alloc_table(&reply.allocations));
            }
            Ok(ExitCode::SUCCESS)
        }
        AllocCommand::Show { id } => {
            let req = GetAllocationRequest { alloc_id: id };
            let a = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.get_allocation(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            if output == Output::Json {
                print_json(&alloc_json(&a))?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = table(["FIELD", "VALUE"]);
            let j = alloc_json(&a);
            for (k, v) in j.as_object().into_iter().flatten() {
                t.add_row(vec![
                    k.clone(),
                    match v {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => opt::<String>(None),
                        other => other.to_string(),
                    },
                ]);
            }
            println!("{t}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
