//! Finding the cluster: connects to the first reachable admin address, and retries calls
//! only where a retry is safe:
//!
//! - [`with_retry`]: reads, and writes without a request id. Retried when the cluster said
//!   nothing was applied (UNAVAILABLE with `x-steward-not-applied`: no leader, leadership
//!   moving), or when the call could not be made at all.
//! - [`with_request_retry`]: writes that carry a request id (KV put and delete). Also
//!   retried when the outcome is unknown (a lost answer, a timeout): the cluster applies a
//!   request id at most once and answers a retry with the first result. If the outcome is
//!   still unknown after the last attempt, that is what the error says.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail};
use steward_proto::v1::admin_client::AdminClient;
use steward_proto::MAX_API_MESSAGE_BYTES;
use steward_runtime::tls::ServerKind;
use steward_runtime::transport;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

use crate::security::{self, TokenInterceptor};

/// An admin client of one controller: over this process's TLS, with its token.
pub type Admin = AdminClient<InterceptedService<Channel, TokenInterceptor>>;

/// Deadline of one admin call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Connect timeout per address.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts of a call that failed with UNAVAILABLE (leader election, forwarding).
pub const ATTEMPTS: u32 = 5;
/// Pause between attempts.
pub const RETRY_PAUSE: Duration = Duration::from_millis(300);

pub fn parse_addrs(addrs: &str) -> anyhow::Result<Vec<String>> {
    let list: Vec<String> = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if list.is_empty() {
        bail!("--addr is empty: give HOST:PORT[,HOST:PORT...]");
    }
    Ok(list)
}

async fn connect_one(addr: &str, call_timeout: Duration) -> anyhow::Result<Admin> {
    let options =
        security::options(CONNECT_TIMEOUT, ServerKind::Controller)?.call_timeout(call_timeout);
    let channel = transport::connect(addr, &options).await?;
    let token = TokenInterceptor(security::current()?.token.clone());
    Ok(AdminClient::with_interceptor(channel, token)
        .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_API_MESSAGE_BYTES))
}

/// Connects to the first reachable address, starting at `start`, for calls that may take
/// up to `call_timeout`.
async fn connect_timed(
    addrs: &[String],
    start: usize,
    call_timeout: Duration,
) -> anyhow::Result<Admin> {
    // A missing or broken TLS dir is the operator's to fix, not a reachability problem.
    security::current()?;
    let mut last = None;
    for i in 0..addrs.len() {
        let addr = &addrs[(start + i) % addrs.len()];
        match connect_one(addr, call_timeout).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(format!("{addr}: {e:#}")),
        }
    }
    Err(anyhow!(
        "cannot reach any controller at {} ({}). Is the cluster running? `make dev` starts a local one; \
         point --addr or STEWARD_ADDR at yours",
        addrs.join(", "),
        last.unwrap_or_default()
    ))
}

/// Metadata the controllers put on an answer when nothing was applied.
const NOT_APPLIED_HEADER: &str = "x-steward-not-applied";

/// Whether a retry of a failed call is safe.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and writes without a request id: only if nothing was applied.
    IfNotApplied,
    /// Writes with a request id: also when the outcome is unknown.
    Deduplicated,
}

fn retryable(status: &tonic::Status, policy: Retry) -> bool {
    let not_applied = status.metadata().get(NOT_APPLIED_HEADER).is_some();
    match status.code() {
        Code::Unavailable if not_applied => true,
        // No Steward answer at all: the connection broke or was refused.
        Code::Unavailable | Code::Unknown | Code::Cancelled => policy == Retry::Deduplicated,
        Code::DeadlineExceeded => policy == Retry::Deduplicated,
        _ => false,
    }
}

/// Runs `call` against the cluster, retrying on another address while the cluster says
/// nothing was applied (no leader yet, leader moving, controller stopping).
pub async fn with_retry<T, F, Fut>(addrs: &str, call: F) -> anyhow::Result<T>
where
    F: FnMut(Admin) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    retry(addrs, Retry::IfNotApplied, CALL_TIMEOUT, call).await
}

/// As [`with_retry`], for a call that may take up to `call_timeout` (a snapshot restore).
pub async fn with_retry_timed<T, F, Fut>(
    addrs: &str,
    call_timeout: Duration,
    call: F,
) -> anyhow::Result<T>
where
    F: FnMut(Admin) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    retry(addrs, Retry::IfNotApplied, call_timeout, call).await
}

/// A fresh request id for one write of this process: a random client id and sequence 1.
pub fn request_id() -> steward_proto::v1::RequestId {
    steward_proto::v1::RequestId {
        client: rand::random::<u64>(),
        seq: 1,
    }
}

/// Runs a write that carries a request id, retrying (with the same id) also when its
/// outcome is unknown.
pub async fn with_request_retry<T, F, Fut>(addrs: &str, call: F) -> anyhow::Result<T>
where
    F: FnMut(Admin) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    retry(addrs, Retry::Deduplicated, CALL_TIMEOUT, call).await
}

async fn retry<T, F, Fut>(
    addrs: &str,
    policy: Retry,
    call_timeout: Duration,
    mut call: F,
) -> anyhow::Result<T>
where
    F: FnMut(Admin) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let addrs = parse_addrs(addrs)?;
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        let client = match connect_timed(&addrs, attempt as usize, call_timeout).await {
            Ok(c) => c,
            Err(e) if attempt + 1 == ATTEMPTS => return Err(e),
            Err(e) => {
                last = Some(e.to_string());
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        match call(client).await {
            Ok(v) => return Ok(v),
            Err(status) if retryable(&status, policy) && attempt + 1 < ATTEMPTS => {
                last = Some(status.message().to_string());
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(status) => return Err(status_error(status)),
        }
    }
    Err(anyhow!("{}", last.unwrap_or_else(|| "no answer".into())))
}

/// Turns a gRPC status into an operator-facing error.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    let kind = match status.code() {
        Code::NotFound => "not found",
        Code::InvalidArgument => "invalid request",
        Code::FailedPrecondition => "refused",
        Code::Unavailable => "cluster unavailable",
        Code::DeadlineExceeded => "outcome unknown",
        Code::PermissionDenied => "permission denied",
        _ => "failed",
    };
    anyhow!("{kind}: {}", status.message())
}
