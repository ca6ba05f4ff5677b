//! Clients' request sessions: at-most-once writes (Raft client sessions, Ongaro's thesis
//! §6.3). A write carrying a [`RequestId`] is applied once; a retry of it gets the first
//! result back. Each client's last [`MAX_RESULTS_PER_CLIENT`] results are kept; at most
//! [`MAX_SESSIONS`] clients are remembered (the least recently active is forgotten first),
//! and a client idle for [`SESSION_TTL_MS`] of cluster time is forgotten. A retry older
//! than what is remembered gets `RequestForgotten`: its outcome is unknown.
//!
//! Everything here runs inside `apply`, on the cluster's clock (the leader time stamped on
//! entries), so every controller keeps and forgets the same sessions.

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use super::ClusterState;
use crate::command::{Command, CommandResult, RequestId};

/// Clients remembered at once.
pub const MAX_SESSIONS: usize = 10_000;
/// Results remembered per client.
pub const MAX_RESULTS_PER_CLIENT: usize = 64;
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
        if self.sessions.len() > MAX_SESSIONS {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(client, s)| (s.last_used_ms, **client))
                .map(|(client, _)| *client);
            if let Some(client) = oldest {
                self.sessions.remove(&client);
            }
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
