//! `Admin.SubmitJob | PlanJob | ListJobs | GetJob | CancelJob | ListAllocations |
//! GetAllocation | SetNodeScheduling | NodeScheduling`: jobs and allocations for operators.
//! Thin: specs are validated by `steward_core::job`, decisions come from
//! `steward_core::jobs` (`apply` and the scheduling round), replies are built here.

use steward_core::job::JobSpec;
use steward_core::jobs::round::{schedule_round, why_pending, RoundConfig, SchedulingView};
use steward_core::jobs::{Allocation, DesiredState, JobRecord, JobStatus};
use steward_core::state::ClusterState;
use steward_core::{Command, CommandResult};
use steward_proto::v1::*;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::ApiContext;

/// Most jobs one list returns (newest first).
pub const MAX_LIST_JOBS: usize = 10_000;
/// Most allocations one list returns.
pub const MAX_LIST_ALLOCS: usize = 50_000;

/// Parses and validates a spec sent as JSON; the error names the field.
pub fn parse_spec(json: &str) -> Result<JobSpec, ApiError> {
    JobSpec::from_json(json)
        .map_err(|e| ApiError::InvalidArgument(format!("invalid job spec: {e}")))
}

pub fn alloc_to_pb(state: &ClusterState, a: &Allocation, with_spec: bool) -> AllocationPb {
    AllocationPb {
        id: a.id.clone(),
        job_id: a.job.clone(),
        task: a.task,
        node_id: a.node.clone(),
        gpus: a.gpus.clone(),
        gpu_milli: u32::from(a.gpu_milli),
        cpu_millicores: a.cpu_millicores,
        memory_mib: a.memory_mib,
        generation: a.generation,
        desired: match a.desired {
            DesiredState::Run => "run",
            DesiredState::Stop => "stop",
        }
        .into(),
        stop_reason: a
            .stop_reason
            .as_ref()
            .map(|r| r.describe())
            .unwrap_or_default(),
        state: a.state.name().into(),
        state_since_unix_ms: a.state_since_ms,
        exit_code: a.exit_code,
        restarts: a.restarts,
        reason: a.reason.clone(),
        created_at_unix_ms: a.created_at_ms,
        rendezvous: a.rendezvous.as_ref().map(|r| RendezvousPb {
            master_addr: r.master_addr.clone(),
            master_port: u32::from(r.master_port),
            rank: r.rank,
            world_size: r.world_size,
            local_rank: r.local_rank,
        }),
        spec_json: if with_spec {
            state
                .jobs
                .get(&a.job)
                .and_then(|j| serde_json::to_string(&j.spec).ok())
                .unwrap_or_default()
        } else {
            String::new()
        },
        agent_api_addr: state
            .nodes
            .get(&a.node)
            .and_then(|n| n.inventory.agent.api_addr.clone())
            .unwrap_or_default(),
    }
}

fn job_to_pb(state: &ClusterState, j: &JobRecord, detail: bool) -> JobPb {
    let waiting = j.unplaced_tasks(&state.allocs).count() as u32;
    let placed = j
        .tasks
        .iter()
        .filter(|t| {
            t.alloc
                .as_ref()
                .and_then(|a| state.allocs.get(a))
                .is_some_and(|a| !a.state.is_terminal())
        })
        .count() as u32;
    let allocations = if detail {
        state
            .allocs
            .range(format!("{}.", j.id)..)
            .take_while(|(id, _)| id.starts_with(&format!("{}.", j.id)))
            .filter(|(_, a)| a.job == j.id)
            .map(|(_, a)| alloc_to_pb(state, a, false))
            .collect()
    } else {
        Vec::new()
    };
    JobPb {
        id: j.id.clone(),
        name: j.spec.name.clone(),
        status: j.status.name().into(),
        priority: j.spec.priority,
        weight: j.spec.weight,
        tasks: j.spec.tasks,
        gang: j.spec.gang,
        preemptible: j.spec.preemptible,
        pending_reason: j.pending_reason.clone(),
        submitted_at_unix_ms: j.submitted_at_ms,
        submitted_revision: j.submitted_revision,
        status_since_unix_ms: j.status_since_ms,
        placed_tasks: placed,
        waiting_tasks: if j.status.is_terminal() { 0 } else { waiting },
        spec_json: if detail {
            serde_json::to_string(&j.spec).unwrap_or_default()
        } else {
            String::new()
        },
        events: if detail {
            j.events
                .iter()
                .map(|e| JobEventPb {
                    revision: e.revision,
                    at_unix_ms: e.at_unix_ms,
                    message: e.message.clone(),
                })
                .collect()
        } else {
            Vec::new()
        },
        allocations,
    }
}

fn job_result_error(result: CommandResult) -> ApiError {
    match result {
        CommandResult::JobRefused { reason } if reason.contains("its limit") => {
            ApiError::FailedPrecondition(reason)
        }
        CommandResult::JobRefused { reason } => ApiError::InvalidArgument(reason),
        CommandResult::UnknownJob { job } => {
            ApiError::NotFound(format!("no job `{job}` (see `steward job list`)"))
        }
        CommandResult::UnknownNode { node } => {
            ApiError::NotFound(format!("no node `{node}` (see `steward node list`)"))
        }
        CommandResult::StateFull { limit, would_be } => ApiError::FailedPrecondition(format!(
            "the cluster state is full: this write would make it {would_be} bytes, the limit is {limit}"
        )),
        CommandResult::FeatureNotEnabled {
            needs,
            cluster_level,
            ..
        } => ApiError::FailedPrecondition(format!(
            "jobs need cluster feature level {needs}, the cluster is at {cluster_level}: upgrade every controller first"
        )),
        // Request-session results are the same for every write.
        other => super::kv::write_error(other),
    }
}

pub async fn submit(
    ctx: &ApiContext,
    request: Request<SubmitJobRequest>,
) -> Result<Response<SubmitJobReply>, Status> {
    ctx.write(
        request,
        |req| {
            let spec = parse_spec(&req.spec_json)?;
            let command = Command::SubmitJob {
                spec: Box::new(spec),
            };
            Ok(super::kv::once(req.request_id.as_ref(), command))
        },
        |result| match result {
            CommandResult::JobSubmitted { job, revision } => Ok(SubmitJobReply {
                job_id: job,
                revision,
            }),
            other => Err(job_result_error(other)),
        },
        |mut c, r| async move { c.submit_job(r).await },
    )
    .await
}

pub async fn plan(
    ctx: &ApiContext,
    request: Request<PlanJobRequest>,
) -> Result<Response<PlanJobReply>, Status> {
    ctx.read(
        request,
        |_| false,
        |mut c, r| async move { c.plan_job(r).await },
        |req, applied| {
            let spec = parse_spec(&req.spec_json)?;
            dry_run(&applied.state, spec, &ctx.replicas)
        },
    )
    .await
}

/// Where `spec` would go on `state` now: the round run on a copy with the job submitted.
fn dry_run(
    state: &ClusterState,
    spec: JobSpec,
    replicas: &crate::control::replicas::ReplicaTracker,
) -> Result<PlanJobReply, ApiError> {
    let mut s = state.clone();
    let job = match s.apply(Command::SubmitJob {
        spec: Box::new(spec.clone()),
    }) {
        CommandResult::JobSubmitted { job, .. } => job,
        other => return Err(job_result_error(other)),
    };
    let view = SchedulingView::of(&s);
    let config = RoundConfig {
        input_locality: crate::control::scheduler::input_locality(&s, replicas),
        ..RoundConfig::default()
    };
    let round = schedule_round(&s, &config);
    let mut reply = PlanJobReply::default();
    for c in round.commands {
        match c {
            Command::PlaceAllocations { job: j, placements } if j == job => {
                reply.placements = placements
                    .into_iter()
                    .map(|p| PlannedTask {
                        task: p.task,
                        node_id: p.node,
                        gpus: p.gpus,
                    })
                    .collect();
            }
            Command::StopAllocations { stops } => {
                reply.preempts = stops
                    .into_iter()
                    .filter(|s| {
                        matches!(&s.reason, steward_core::jobs::StopReason::Preempted { by } if *by == job)
                    })
                    .map(|s| s.alloc)
                    .collect();
            }
            Command::SetJobPendingReason { job: j, reason } if j == job => {
                reply.pending_reason = reason
            }
            _ => {}
        }
    }
    if let Some(shape) = view.task_shape(&spec) {
        reply.nodes = (0..view.nodes.len())
            .map(|i| NodeVerdict {
                node_id: view.ids[i].clone(),
                reason: view.explain(&s, i, &spec, &shape).unwrap_or_default(),
            })
            .collect();
        if reply.placements.is_empty() && reply.pending_reason.is_empty() {
            reply.pending_reason = why_pending(&s, &view, &spec, &shape);
        }
    } else if reply.pending_reason.is_empty() {
        reply.pending_reason = format!(
            "no node has a GPU of model [{}]",
            spec.resources.gpu_models.join(", ")
        );
    }
    Ok(reply)
}

pub async fn list(
    ctx: &ApiContext,
    request: Request<ListJobsRequest>,
) -> Result<Response<ListJobsReply>, Status> {
    ctx.read(
        request,
        |_| false,
        |mut c, r| async move { c.list_jobs(r).await },
        |req, applied| {
            let want = if req.status.is_empty() {
                None
            } else {
                Some(JobStatus::parse(&req.status).ok_or_else(|| {
                    ApiError::InvalidArgument(format!(
                        "unknown job status `{}`; one of pending, running, complete, failed, cancelled",
                        req.status
                    ))
                })?)
            };
            let s = &applied.state;
            let mut jobs: Vec<&JobRecord> = s
                .jobs
                .values()
                .filter(|j| want.is_none_or(|w| j.status == w))
                .collect();
            jobs.sort_by_key(|j| std::cmp::Reverse(j.submitted_revision));
            Ok(ListJobsReply {
                jobs: jobs
                    .into_iter()
                    .take(MAX_LIST_JOBS)
                    .map(|j| job_to_pb(s, j, false))
                    .collect(),
            })
        },
    )
    .await
}

pub async fn get(
    ctx: &ApiContext,
    request: Request<GetJobRequest>,
) -> Result<Response<JobPb>, Status> {
    ctx.read(
        request,
        |_| false,
        |mut c, r| async move { c.get_job(r).await },
        |req, applied| {
            let s = &applied.state;
            let j = s.jobs.get(&req.job_id).ok_or_else(|| {
                ApiError::NotFound(format!("no job `{}` (see `steward job list`)", req.job_id))
            })?;
            Ok(job_to_pb(s, j, true))
        },
    )
    .await
}

pub async fn cancel(
    ctx: &ApiContext,
    request: Request<CancelJobRequest>,
) -> Result<Response<CancelJobReply>, Status> {
    ctx.write(
        request,
        |req| {
            Ok(Command::CancelJob {
                job: req.job_id.clone(),
            })
        },
        |result| match result {
            CommandResult::JobUpdated { changed, revision } => {
                Ok(CancelJobReply { revision, changed })
            }
            other => Err(job_result_error(other)),
        },
        |mut c, r| async move { c.cancel_job(r).await },
    )
    .await
}

pub async fn list_allocations(
    ctx: &ApiContext,
    request: Request<ListAllocationsRequest>,
) -> Result<Response<ListAllocationsReply>, Status> {
    ctx.read(
        request,
        |_| false,
        |mut c, r| async move { c.list_allocations(r).await },
        |req, applied| {
            let s = &applied.state;
            if !req.node_id.is_empty() && !s.nodes.contains_key(&req.node_id) {
                return Err(ApiError::NotFound(format!(
                    "no node `{}` (see `steward node list`)",
                    req.node_id
                )));
            }
            if !req.job_id.is_empty() && !s.jobs.contains_key(&req.job_id) {
                return Err(ApiError::NotFound(format!(
                    "no job `{}` (see `steward job list`)",
                    req.job_id
                )));
            }
            Ok(ListAllocationsReply {
                allocations: s
                    .allocs
                    .values()
                    .filter(|a| req.node_id.is_empty() || a.node == req.node_id)
                    .filter(|a| req.job_id.is_empty() || a.job == req.job_id)
                    .filter(|a| req.all || !a.state.is_terminal())
                    .take(MAX_LIST_ALLOCS)
                    .map(|a| alloc_to_pb(s, a, false))
                    .collect(),
            })
        },
    )
    .await
}

pub async fn get_allocation(
    ctx: &ApiContext,
    request: Request<GetAllocationRequest>,
) -> Result<Response<AllocationPb>, Status> {
    ctx.read(
        request,
        |_| false,
        |mut c, r| async move { c.get_allocation(r).await },
        |req, applied| {
            let s = &applied.state;
            let a = s.allocs.get(&req.alloc_id).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no allocation `{}` (see `steward alloc list`)",
                    req.alloc_id
                ))
            })?;
            Ok(alloc_to_pb(s, a, true))
        },
    )
    .await
}

pub async fn set_node_scheduling(
    ctx: &ApiContext,
    request: Request<SetNodeSchedulingRequest>,
) -> Result<Response<SetNodeSchedulingReply>, Status> {
    ctx.write(
        request,
        |req| {
            let applied = ctx.raft.view().read();
            if !applied.state.nodes.contains_key(&req.node_id) {
                return Err(ApiError::NotFound(format!(
                    "no node `{}` (see `steward node list`)",
                    req.node_id
                )));
            }
            let now = applied.state.clock_unix_ms;
            Ok(Command::SetNodeScheduling {
                node: req.node_id.clone(),
                cordoned: req.cordoned,
                drain_deadline_ms: req.drain_deadline_ms.map(|d| now.saturating_add(d)),
            })
        },
        |result| match result {
            CommandResult::NodeSchedulingSet { changed, revision } => {
                Ok(SetNodeSchedulingReply { revision, changed })
            }
            other => Err(job_result_error(other)),
        },
        |mut c, r| async move { c.set_node_scheduling(r).await },
    )
    .await
}

pub async fn node_scheduling(
    ctx: &ApiContext,
    request: Request<NodeSchedulingRequest>,
) -> Result<Response<NodeSchedulingReply>, Status> {
    ctx.read(
        request,
        |_| false,
        |mut c, r| async move { c.node_scheduling(r).await },
        |req, applied| {
            let s = &applied.state;
            if !s.nodes.contains_key(&req.node_id) {
                return Err(ApiError::NotFound(format!(
                    "no node `{}` (see `steward node list`)",
                    req.node_id
                )));
            }
            let sched = s
                .node_scheduling
                .get(&req.node_id)
                .cloned()
                .unwrap_or_default();
            Ok(NodeSchedulingReply {
                cordoned: sched.cordoned,
                draining: sched.drain.is_some(),
                drain_complete: sched
                    .drain
                    .as_ref()
                    .is_some_and(|d| d.completed_at_ms.is_some()),
                drain_deadline_unix_ms: sched.drain.as_ref().map_or(0, |d| d.deadline_ms),
                allocations: s.node_usage(&req.node_id).map_or(0, |u| u.allocs as u32),
            })
        },
    )
    .await
}
