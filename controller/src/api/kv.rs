//! `Admin.Kv*`: the replicated metadata key-value namespace.

use steward_core::kv::{self, MAX_LIST_BYTES, MAX_LIST_LIMIT};
use steward_core::{Command, CommandResult};
use steward_proto::conv::kv_entry_to_pb;
use steward_proto::v1::*;
use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::ApiContext;

fn invalid(e: impl ToString) -> ApiError {
    ApiError::InvalidArgument(e.to_string())
}

fn stale(consistency: i32) -> bool {
    consistency == ReadConsistency::Stale as i32
}

/// Wraps `command` so that it applies at most once per request id, when the request
/// carries one. Such a write needs feature level 2 (request sessions): on a cluster below
/// it, it waits for a pending raise and is otherwise refused, not applied without the
/// guarantee its client counts on (the CLI retries it).
pub(super) fn once(id: Option<&RequestId>, command: Command) -> Command {
    match id {
        Some(id) => Command::Request {
            id: steward_core::command::RequestId {
                client: id.client,
                seq: id.seq,
            },
            command: Box::new(command),
        },
        None => command,
    }
}

/// The error for a KV write whose result is not a success: a failed compare-and-set, or
/// something that cannot happen.
pub(super) fn write_error(result: CommandResult) -> ApiError {
    match result {
        CommandResult::RequestForgotten { id } => ApiError::Raft(
            crate::raft::Error::OutcomeUnknown(format!(
                "request {id} is older than the results the cluster keeps for its client"
            )),
        ),
        CommandResult::SessionsFull { limit } => ApiError::Overloaded(format!(
            "the cluster remembers {limit} writing clients, all active in the last {} s; retry in a moment",
            steward_core::state::MIN_IDLE_TO_FORGET_MS / 1000
        )),
        CommandResult::StateFull { limit, would_be } => ApiError::FailedPrecondition(format!(
            "the cluster state is full: this write would make it {would_be} bytes, the limit is {limit}; delete keys first"
        )),
        CommandResult::RevisionMismatch {
            key,
            expected,
            actual,
        } => ApiError::FailedPrecondition(format!(
            "revision mismatch on `{key}`: expected {expected}, current {actual}"
        )),
        other => ApiError::Internal(format!("unexpected result {other:?}")),
    }
}

pub async fn put(
    ctx: &ApiContext,
    request: Request<KvPutRequest>,
) -> Result<Response<KvPutReply>, Status> {
    ctx.write(
        request,
        |req| {
            kv::validate_key(&req.key).map_err(invalid)?;
            kv::validate_value(&req.value).map_err(invalid)?;
            Ok(once(
                req.request_id.as_ref(),
                Command::KvPut {
                    key: req.key.clone(),
                    value: req.value.clone(),
                    expected_revision: req.expected_revision,
                },
            ))
        },
        |result| match result {
            CommandResult::KvPut { revision } => Ok(KvPutReply { revision }),
            other => Err(write_error(other)),
        },
        |mut c, r| async move { c.kv_put(r).await },
    )
    .await
}

pub async fn delete(
    ctx: &ApiContext,
    request: Request<KvDeleteRequest>,
) -> Result<Response<KvDeleteReply>, Status> {
    ctx.write(
        request,
        |req| {
            kv::validate_key(&req.key).map_err(invalid)?;
            Ok(once(
                req.request_id.as_ref(),
                Command::KvDelete {
                    key: req.key.clone(),
                    expected_revision: req.expected_revision,
                },
            ))
        },
        |result| match result {
            CommandResult::KvDeleted { existed, revision } => {
                Ok(KvDeleteReply { existed, revision })
            }
            other => Err(write_error(other)),
        },
        |mut c, r| async move { c.kv_delete(r).await },
    )
    .await
}

pub async fn get(
    ctx: &ApiContext,
    request: Request<KvGetRequest>,
) -> Result<Response<KvGetReply>, Status> {
    kv::validate_key(&request.get_ref().key).map_err(invalid)?;
    ctx.read(
        request,
        |req| stale(req.consistency),
        |mut c, r| async move { c.kv_get(r).await },
        |req, applied| {
            Ok(KvGetReply {
                entry: applied
                    .state
                    .kv
                    .get(&req.key)
                    .map(|e| kv_entry_to_pb(&req.key, e)),
                read_revision: applied.last_applied.map_or(0, |l| l.index),
            })
        },
    )
    .await
}

pub async fn list(
    ctx: &ApiContext,
    request: Request<KvListRequest>,
) -> Result<Response<KvListReply>, Status> {
    ctx.read(
        request,
        |req| stale(req.consistency),
        |mut c, r| async move { c.kv_list(r).await },
        |req, applied| {
            let limit = match req.limit as usize {
                0 => MAX_LIST_LIMIT,
                n => n.min(MAX_LIST_LIMIT),
            };
            let start_after = (!req.start_after.is_empty()).then_some(req.start_after.as_str());
            let mut entries: Vec<KvEntry> = Vec::new();
            let mut bytes = 0;
            let mut more = false;
            // Steward's own keys (access tokens) are skipped, not counted.
            for (k, e) in applied
                .state
                .kv_list(&req.prefix, start_after, usize::MAX)
                .filter(|(k, _)| !k.starts_with(kv::RESERVED_PREFIX))
                .take(limit + 1)
            {
                let size = k.len() + e.value.len();
                if entries.len() == limit || (!entries.is_empty() && bytes + size > MAX_LIST_BYTES)
                {
                    more = true;
                    break;
                }
                bytes += size;
                entries.push(kv_entry_to_pb(k, e));
            }
            Ok(KvListReply {
                entries,
                more,
                read_revision: applied.last_applied.map_or(0, |l| l.index),
            })
        },
    )
    .await
}
