//! Proposal batching. openraft 0.9 persists and applies one log entry per Raft round, so
//! concurrent writes are gathered here into one `Command::Batch` entry: they share one
//! round, one fsync on each controller, and still get one result (and revision) each.
//!
//! Data flow: API handlers send `(Command, reply)` into a bounded queue; the proposer task
//! takes whatever is queued (bounded by count and bytes) and proposes it as one entry, with
//! at most [`MAX_IN_FLIGHT`] entries proposed and not yet applied.

use std::sync::Arc;

use steward_core::{Command, CommandResult};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::context::WRITE_TIMEOUT;
use super::error::ApiError;
use crate::typ::{NodeId, Raft};

/// Writes waiting to be proposed; senders wait when it is full (backpressure).
pub const QUEUE_DEPTH: usize = 16_384;
/// Most commands in one batch entry.
pub const MAX_BATCH_COMMANDS: usize = 2048;
/// Most bytes (approximately) in one batch entry.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batches proposed and not yet applied.
pub const MAX_IN_FLIGHT: usize = 4;

/// What a proposal resolves to: the log index of its entry and its own result.
pub type ProposalResult = Result<(u64, CommandResult), ApiError>;

struct Proposal {
    command: Command,
    reply: oneshot::Sender<ProposalResult>,
}

/// Handle to the proposer task.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Starts the proposer task for `raft`; it stops on `shutdown`.
    pub fn start(
        id: NodeId,
        raft: Raft,
        shutdown: CancellationToken,
    ) -> (Proposer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(run(id, raft, rx, shutdown));
        (Proposer { queue: tx }, task)
    }

    /// Proposes `command` and waits for its result.
    pub async fn propose(&self, command: Command) -> ProposalResult {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Proposal { command, reply })
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        rx.await.map_err(|_| ApiError::ShuttingDown)?
    }
}

async fn run(
    id: NodeId,
    raft: Raft,
    mut rx: mpsc::Receiver<Proposal>,
    shutdown: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut carry: Option<Proposal> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => tokio::select! {
                _ = shutdown.cancelled() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            },
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Gather what else is queued, within the batch limits.
        let mut bytes = first.command.approx_size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS {
            match rx.try_recv() {
                Ok(p) => {
                    let size = p.command.approx_size();
                    if bytes + size > MAX_BATCH_BYTES {
                        carry = Some(p);
                        break;
                    }
                    bytes += size;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            propose_batch(id, &raft, batch).await;
        });
    }
}

async fn propose_batch(id: NodeId, raft: &Raft, mut batch: Vec<Proposal>) {
    if batch.len() == 1 {
        let p = batch.remove(0);
        let result = write(id, raft, p.command).await;
        let _ = p.reply.send(result);
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    match write(id, raft, Command::Batch(commands)).await {
        Ok((index, CommandResult::Batch(results))) if results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok((index, result)));
            }
        }
        Ok((_, other)) => {
            let err =
                ApiError::Internal(format!("batch applied with an unexpected result {other:?}"));
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

async fn write(id: NodeId, raft: &Raft, command: Command) -> ProposalResult {
    match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(command)).await {
        Err(_) => Err(ApiError::Timeout(WRITE_TIMEOUT)),
        Ok(Ok(resp)) => Ok((resp.log_id.index, resp.data)),
        Ok(Err(e)) => Err(ApiError::from_write(id, e)),
    }
}
