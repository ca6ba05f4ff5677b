//! Proposal batching. openraft 0.9 persists and applies one log entry per Raft round, so
//! concurrent writes are gathered here into one `Command::Batch` entry: they share one
//! round, one fsync on each controller, and still get one result (and revision) each.
//!
//! Data flow: callers send `(Command, reply)` into one bounded queue ([`QUEUE_DEPTH`]); the
//! proposer worker takes whatever is queued (bounded by count and bytes) and proposes it as
//! one entry, with at most [`MAX_IN_FLIGHT`] entries proposed and not yet applied. Every
//! proposal is answered within [`WRITE_TIMEOUT`] of being proposed.
//!
//! From cluster feature level 2 on, every entry is `Command::Stamped` with this leader's
//! clock, which gives the state machine a cluster clock (request-session expiry, event
//! times); below it, entries are plain `Command::Batch`es.

use std::sync::Arc;
use std::time::Duration;

use steward_core::{Command, CommandResult};
use steward_runtime::{Next, Worker, WorkerError};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

use super::error::Error;
use super::store::StateView;
use super::timings::WriteTimings;
use super::typ::{NodeId, Raft};

/// Writes waiting to be proposed; senders wait when it is full (backpressure).
pub const QUEUE_DEPTH: usize = 16_384;
/// Most commands in one batch entry.
pub const MAX_BATCH_COMMANDS: usize = 2048;
/// Most bytes (approximately) in one batch entry.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batches proposed and not yet applied.
pub const MAX_IN_FLIGHT: usize = 4;
/// Longest a write waits to be committed and applied once proposed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a proposal resolves to: the log index of its entry and its own result.
pub type ProposalResult = Result<(u64, CommandResult), Error>;

struct Proposal {
    command: Command,
    reply: oneshot::Sender<ProposalResult>,
}

/// What both the caller's fast path and the worker's batches write entries with.
#[derive(Clone)]
struct EntryWriter {
    id: NodeId,
    raft: Raft,
    view: StateView,
    timings: Arc<WriteTimings>,
}

/// Handle to the proposer's queue.
#[derive(Clone)]
pub struct Proposer {
    writer: EntryWriter,
    queue: mpsc::Sender<Proposal>,
    /// Shared with the worker: a proposal in flight holds one.
    slots: Arc<Semaphore>,
}

/// The worker that drains the queue into Raft.
pub struct ProposerWorker {
    writer: EntryWriter,
    rx: mpsc::Receiver<Proposal>,
    slots: Arc<Semaphore>,
    in_flight: JoinSet<()>,
    /// A proposal taken from the queue that did not fit the previous batch.
    carry: Option<Proposal>,
}

impl Proposer {
    /// The queue and the worker that serves it (the caller runs the worker).
    pub fn new(
        id: NodeId,
        raft: Raft,
        view: StateView,
        timings: Arc<WriteTimings>,
    ) -> (Proposer, ProposerWorker) {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let writer = EntryWriter {
            id,
            raft,
            view,
            timings,
        };
        (
            Proposer {
                writer: writer.clone(),
                queue: tx,
                slots: slots.clone(),
            },
            ProposerWorker {
                writer,
                rx,
                slots,
                in_flight: JoinSet::new(),
                carry: None,
            },
        )
    }

    /// Proposes `command` and waits for its result. When the proposer is idle (nothing
    /// queued, nothing in flight), the caller proposes it itself (one entry, no hand-off to
    /// the worker: the common case for a lone writer); otherwise it joins the queue and is
    /// batched. Only when idle: under load a lone entry would hold one of the
    /// [`MAX_IN_FLIGHT`] slots for a whole Raft round with one command in it. (Callers that
    /// arrive at the same instant may each see it idle; that window is a few instructions.)
    pub async fn propose(&self, command: Command) -> ProposalResult {
        if self.queue.capacity() == self.queue.max_capacity()
            && self.slots.available_permits() == MAX_IN_FLIGHT
        {
            if let Ok(_slot) = self.slots.try_acquire() {
                delay_for_tests(std::iter::once(&command)).await;
                let (index, mut results) = self.writer.write_entry(vec![command]).await?;
                return Ok((index, results.remove(0)));
            }
        }
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Proposal { command, reply })
            .await
            .map_err(|_| Error::ShuttingDown)?;
        // Dropped unanswered: the batch was proposed (or about to be) when the controller
        // stopped, so whether it applied is unknown.
        rx.await.map_err(|_| {
            Error::OutcomeUnknown(format!(
                "controller {} stopped while the write was being proposed",
                self.writer.id
            ))
        })?
    }
}

impl Worker for ProposerWorker {
    fn name(&self) -> String {
        "proposer".into()
    }

    async fn step(&mut self) -> Result<Next, WorkerError> {
        while self.in_flight.try_join_next().is_some() {}
        let first = match self.carry.take() {
            Some(p) => p,
            None => match self.rx.recv().await {
                Some(p) => p,
                None => return Ok(Next::Done),
            },
        };
        let Ok(permit) = self.slots.clone().acquire_owned().await else {
            return Ok(Next::Done);
        };
        // Gather what else is queued, within the batch limits.
        let mut bytes = first.command.approx_size();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS {
            match self.rx.try_recv() {
                Ok(p) => {
                    let size = p.command.approx_size();
                    if bytes + size > MAX_BATCH_BYTES {
                        self.carry = Some(p);
                        break;
                    }
                    bytes += size;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let writer = self.writer.clone();
        self.in_flight.spawn(async move {
            let _permit = permit;
            propose_batch(&writer, batch).await;
        });
        Ok(Next::Busy)
    }

    fn detail(&self) -> String {
        format!(
            "{} queued, {} batches in flight",
            self.rx.len() + usize::from(self.carry.is_some()),
            self.in_flight.len()
        )
    }
}

async fn propose_batch(writer: &EntryWriter, batch: Vec<Proposal>) {
    delay_for_tests(batch.iter().map(|p| &p.command)).await;
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    match writer.write_entry(commands).await {
        Ok((index, results)) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok((index, result)));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

impl EntryWriter {
    /// Proposes `commands` as one log entry (`Stamped` with the leader's clock from
    /// cluster level 2 on; below it a `Batch`, or the command itself when alone) and
    /// returns each one's result.
    async fn write_entry(
        &self,
        mut commands: Vec<Command>,
    ) -> Result<(u64, Vec<CommandResult>), Error> {
        let (id, raft, timings) = (self.id, &self.raft, &self.timings);
        let stamped = self.view.cluster_level() >= 2;
        let count = commands.len();
        timings.entry_commands.observe(count as f64);
        let entry = match (stamped, count) {
            (false, 1) => commands.remove(0),
            (false, _) => Command::Batch(commands),
            (true, _) => Command::Stamped {
                at_unix_ms: unix_ms(),
                commands,
            },
        };
        let single = !stamped && count == 1;
        let started = std::time::Instant::now();
        let written = write(id, raft, entry).await;
        if written.is_ok() {
            timings.proposal.observe(started.elapsed().as_secs_f64());
        }
        match written? {
            (index, result) if single => Ok((index, vec![result])),
            (index, CommandResult::Batch(results)) if results.len() == count => {
                Ok((index, results))
            }
            (_, other) => Err(Error::Internal(format!(
                "an entry of {count} commands applied with an unexpected result {other:?}"
            ))),
        }
    }
}

/// Test builds: the fail point `proposer-delay-node-down=return(MS)` holds a batch that
/// marks a node down for MS milliseconds before proposing it, so that later proposals
/// overtake it (the reordering the conditional health transitions must survive).
#[cfg(feature = "failpoints")]
async fn delay_for_tests<'a>(mut commands: impl Iterator<Item = &'a Command>) {
    use steward_core::node::NodeHealth;
    let marks_down = commands.any(|command| {
        matches!(
            command,
            Command::SetNodeHealth {
                health: NodeHealth::Down,
                ..
            } | Command::TransitionNodeHealth {
                to: NodeHealth::Down,
                ..
            }
        )
    });
    if !marks_down {
        return;
    }
    let ms = fail::eval("proposer-delay-node-down", |arg| {
        arg.and_then(|a| a.parse::<u64>().ok())
    })
    .flatten();
    if let Some(ms) = ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[cfg(not(feature = "failpoints"))]
async fn delay_for_tests<'a>(_commands: impl Iterator<Item = &'a Command>) {}

/// This controller's wall clock, in milliseconds since the Unix epoch. Only stamped on
/// entries: the state machine keeps the maximum it has seen, so a leader with a clock
/// behind never moves the cluster's clock back.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn write(id: NodeId, raft: &Raft, command: Command) -> ProposalResult {
    match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(command)).await {
        Err(_) => Err(Error::Timeout(WRITE_TIMEOUT)),
        Ok(Ok(resp)) => Ok((resp.log_id.index, resp.data)),
        Ok(Err(e)) => Err(Error::from_write(id, e)),
    }
}
