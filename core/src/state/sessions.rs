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

use imbl::OrdMap;
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
    /// Results by sequence number (persistent: copying a session is cheap).
    pub results: OrdMap<u64, CommandResult>,
    /// The highest sequence number whose result was dropped (0: none).
    pub forgotten_through: u64,
}

impl ClusterState {
    pub(super) fn apply_request(&mut self, id: RequestId, command: Command) -> CommandResult {
        let now = self.clock_unix_ms;
        if let Some(session) = self.sessions.get_mut(&id.client) {
            if let Some(result) = session.results.get(&id.seq) {
                let result = result.clone();
                session.last_used_ms = now;
                return result;
            }
            if id.seq <= session.forgotten_through {
                return CommandResult::RequestForgotten { id };
            }
        }
        if !self.sessions.contains_key(&id.client) && self.sessions.len() >= MAX_SESSIONS {
            // Room for a new client: forget the least recently active, if idle long enough.
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
        let result = self.apply(command);
        let mut session = self.sessions.remove(&id.client).unwrap_or_default();
        session.last_used_ms = now;
        session.results.insert(id.seq, result.clone());
        while session.results.len() > MAX_RESULTS_PER_CLIENT {
            let Some(seq) = session.results.keys().next().copied() else {
                break;
            };
            session.results.remove(&seq);
            session.forgotten_through = session.forgotten_through.max(seq);
        }
        self.sessions.insert(id.client, session);
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
