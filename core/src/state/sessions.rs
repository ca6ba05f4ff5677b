//! Clients' request sessions: at-most-once writes (Raft client sessions, Ongaro's thesis
//! §6.3). A write carrying a [`RequestId`] is applied once; a retry of it gets the first
//! result back. Each client's last [`MAX_RESULTS_PER_CLIENT`] results are kept, and a
//! client idle for [`SESSION_TTL_MS`] of cluster time is forgotten. A retry older than
//! what is remembered gets `RequestForgotten`: its outcome is unknown, never re-applied.
//!
//! At most [`MAX_SESSIONS`] clients are remembered. To make room for a new client the
//! least recently active one is forgotten, but only if it has been idle for at least
//! [`MIN_IDLE_TO_FORGET_MS`], longer than any client keeps retrying (the CLI gives up
//! after well under a minute): forgetting a client that may still retry would let its
//! retry apply again. When every remembered client is that recent, a new client's request
//! is refused with `SessionsFull` (nothing applied; it can be retried later).
//!
//! Size: a stored result is small except `RevisionMismatch`, which holds a key (at most
//! 1 KiB), so sessions take at most about MAX_SESSIONS x MAX_RESULTS_PER_CLIENT x 1.1 KiB
//! (176 MiB), inside the state's uncounted allowance (`MAX_UNCOUNTED_BYTES`).
//!
//! Everything here runs inside `apply`, on the cluster's clock (the leader time stamped on
//! entries), so every controller keeps and forgets the same sessions.

use serde::{Deserialize, Serialize};

use super::ClusterState;
use crate::command::{Command, CommandResult, RequestId};

/// Clients remembered at once.
pub const MAX_SESSIONS: usize = 10_000;
/// Results remembered per client (how many requests a client may have outstanding and
/// still retry safely).
pub const MAX_RESULTS_PER_CLIENT: usize = 16;
/// A client must have been idle this long (cluster time) before it is forgotten to make
/// room for another.
pub const MIN_IDLE_TO_FORGET_MS: u64 = 2 * 60 * 1000;
/// A client idle this long (cluster time) is forgotten.
pub const SESSION_TTL_MS: u64 = 60 * 60 * 1000;
/// How often (cluster time) idle sessions are swept.
const SWEEP_EVERY_MS: u64 = 60 * 1000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSession {
    /// Cluster time of the client's last request.
    pub last_used_ms: u64,
    /// Results by sequence number.
    pub results: SessionResults,
    /// The highest sequence number whose result was dropped (0: none).
    pub forgotten_through: u64,
}

/// A client's last results, oldest first: at most [`MAX_RESULTS_PER_CLIENT`], so a short
/// vector, shared between copies of the state until one of them changes it. Encoded as
/// a map from sequence number to result (as format 2 stored it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionResults(std::sync::Arc<Vec<(u64, CommandResult)>>);

impl SessionResults {
    pub fn get(&self, seq: u64) -> Option<&CommandResult> {
        self.0.iter().find(|(s, _)| *s == seq).map(|(_, r)| r)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Records the result of `seq` (newer than every recorded one) and drops the oldest
    /// past the limit; returns the highest dropped sequence number.
    fn record(&mut self, seq: u64, result: CommandResult) -> Option<u64> {
        let v = std::sync::Arc::make_mut(&mut self.0);
        let at = v.partition_point(|(s, _)| *s < seq);
        v.insert(at, (seq, result));
        let excess = v.len().saturating_sub(MAX_RESULTS_PER_CLIENT);
        v.drain(..excess).map(|(s, _)| s).max()
    }
}

impl Serialize for SessionResults {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(s, r)| (s, r)))
    }
}

impl<'de> Deserialize<'de> for SessionResults {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<u64, CommandResult>::deserialize(deserializer)?;
        Ok(SessionResults(std::sync::Arc::new(
            map.into_iter().collect(),
        )))
    }
}

impl ClusterState {
    pub(super) fn apply_request(&mut self, id: RequestId, command: Command) -> CommandResult {
        let now = self.clock_unix_ms;
        match self.sessions.get(&id.client) {
            Some(session) => {
                if let Some(result) = session.results.get(id.seq) {
                    let result = result.clone();
                    if let Some(session) = self.sessions.get_mut(&id.client) {
                        session.last_used_ms = now;
                    }
                    return result;
                }
                if id.seq <= session.forgotten_through {
                    return CommandResult::RequestForgotten { id };
                }
            }
            None if self.sessions.len() >= MAX_SESSIONS => {
                // Room for a new client: forget the least recently active, if idle long
                // enough.
                let oldest = self
                    .sessions
                    .iter()
                    .min_by_key(|(client, s)| (s.last_used_ms, **client))
                    .map(|(client, s)| (*client, s.last_used_ms));
                match oldest {
                    Some((client, last)) if last + MIN_IDLE_TO_FORGET_MS <= now => {
                        self.sessions.remove(&client);
                    }
                    _ => {
                        return CommandResult::SessionsFull {
                            limit: MAX_SESSIONS as u64,
                        }
                    }
                }
            }
            None => {}
        }
        let result = self.apply(command);
        let session = self.sessions.entry(id.client).or_default();
        session.last_used_ms = now;
        if let Some(dropped) = session.results.record(id.seq, result.clone()) {
            session.forgotten_through = session.forgotten_through.max(dropped);
        }
        result
    }
}

/// Forgets sessions idle past the TTL, once per sweep period of cluster time (the clock
/// was `before` until this entry).
pub(super) fn expire(state: &mut ClusterState, before: u64) {
    let now = state.clock_unix_ms;
    if now / SWEEP_EVERY_MS == before / SWEEP_EVERY_MS || state.sessions.is_empty() {
        return;
    }
    let idle: Vec<u64> = state
        .sessions
        .iter()
        .filter(|(_, s)| s.last_used_ms + SESSION_TTL_MS < now)
        .map(|(client, _)| *client)
        .collect();
    for client in idle {
        state.sessions.remove(&client);
    }
}
