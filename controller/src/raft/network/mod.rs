//! Raft traffic between controllers over tonic.
//!
//! - `client.rs`: openraft's `RaftNetworkFactory`: one lazily connected, reused channel per
//!   peer address; every RPC bounded by openraft's deadline; message sizes capped.
//! - `server.rs`: the `RaftService` that hands requests to the local `Raft`, after checking
//!   the incarnation fence.
//!
//! Incarnation fence: every request names the sender's (id, incarnation) and the incarnation
//! the sender's state records for the target. A receiver whose own incarnation differs was
//! wiped and stops itself; a sender whose incarnation differs from the recorded one is
//! refused with PERMISSION_DENIED and stops itself on reading that answer.

mod client;
mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_runtime::tls::{ServerKind, Tls};
use steward_runtime::transport::{ChannelPool, ClientOptions, TransportError};
use tokio::sync::watch;
use tonic::transport::Channel;

pub use client::{Network, NetworkFactory};
pub use server::RaftServer;

use crate::raft::store::StateView;
use crate::raft::timings::WriteTimings;
use crate::raft::typ::NodeId;

/// Metadata key on a PERMISSION_DENIED answer naming the controller whose incarnation is stale.
pub(crate) const WIPED_CONTROLLER_HEADER: &str = "x-steward-wiped-controller";

/// Format version of the Raft RPC payloads (openraft's requests, responses and errors),
/// versioned apart from storage: a change to openraft's types bumps it, and a controller
/// answers a payload version it does not know with a clear error.
pub(crate) const RPC_FORMAT: u8 = 1;

/// Connect timeout for peer channels.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// What this controller is, for the fence, and shared state of its Raft transport.
pub struct PeerShared {
    pub id: NodeId,
    pub incarnation: u64,
    pub view: StateView,
    /// Channels to other controllers (Raft and API addresses), sent from this controller's
    /// Raft address.
    channels: ChannelPool,
    /// Channels to agents' APIs (their chunk services), from the same address.
    agents: ChannelPool,
    /// This controller's TLS dir (`None`: plaintext); its other clients (to agents) use
    /// it too.
    tls: Option<Tls>,
    last_contact: Mutex<HashMap<NodeId, Instant>>,
    /// Feature levels peers reported in their replies (this controller's view).
    levels: Mutex<HashMap<NodeId, u32>>,
    fatal: watch::Sender<Option<String>>,
    /// AppendEntries round trips are observed here.
    pub timings: Arc<WriteTimings>,
}

impl PeerShared {
    pub fn new(
        id: NodeId,
        incarnation: u64,
        view: StateView,
        source_ip: std::net::IpAddr,
        tls: Option<steward_runtime::tls::Tls>,
        fatal: watch::Sender<Option<String>>,
        timings: Arc<WriteTimings>,
    ) -> Arc<Self> {
        Arc::new(PeerShared {
            id,
            incarnation,
            view,
            channels: ChannelPool::new(
                ClientOptions::new(CONNECT_TIMEOUT)
                    .source_ip(source_ip)
                    .tls(tls.clone(), ServerKind::Controller),
            ),
            agents: ChannelPool::new(
                ClientOptions::new(CONNECT_TIMEOUT)
                    .source_ip(source_ip)
                    .tls(tls.clone(), ServerKind::Agent),
            ),
            tls,
            last_contact: Mutex::new(HashMap::new()),
            levels: Mutex::new(HashMap::new()),
            fatal,
            timings,
        })
    }

    /// A reused channel to the agent of `node`, at the address it registered: only that
    /// node's agent may answer (its certificate is checked).
    pub fn agent_channel(&self, addr: &str, node: &str) -> Result<Channel, TransportError> {
        self.agents.get_node(addr, node)
    }

    /// This controller's TLS dir, for its clients of agents (`None`: plaintext).
    pub fn tls(&self) -> Option<Tls> {
        self.tls.clone()
    }

    /// A reused channel to `addr` (connected lazily, reconnects by itself).
    pub fn channel(&self, addr: &str) -> Result<Channel, TransportError> {
        self.channels.get(addr)
    }

    pub(crate) fn touch(&self, peer: NodeId) {
        self.last_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Instant::now());
    }

    /// Milliseconds since a Raft RPC to `peer` last succeeded, if ever.
    pub fn millis_since_contact(&self, peer: NodeId) -> Option<u64> {
        self.last_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .map(|t| t.elapsed().as_millis() as u64)
    }

    /// Records the feature level `peer` reported (0, from builds before levels, is 1).
    pub(crate) fn record_level(&self, peer: NodeId, level: u32) {
        let level = level.max(steward_core::features::BASE_LEVEL);
        self.levels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, level);
    }

    /// The feature level `peer` last reported; this controller's own for itself.
    pub fn level_of(&self, peer: NodeId) -> Option<u32> {
        if peer == self.id {
            return Some(steward_core::features::SUPPORTED_LEVEL);
        }
        self.levels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .copied()
    }

    /// Incarnation recorded in the applied state for `peer`; 0 when unrecorded.
    pub fn recorded_incarnation(&self, peer: NodeId) -> u64 {
        self.view
            .read()
            .state
            .controllers
            .get(&peer)
            .map_or(0, |r| r.incarnation)
    }

    /// Stops this controller for good with `reason` (printed by the CLI on exit).
    pub fn fail(&self, reason: String) {
        tracing::error!("{reason}");
        self.fatal.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(reason);
                true
            } else {
                false
            }
        });
    }

    pub fn identity(&self) -> steward_proto::v1::PeerIdentity {
        steward_proto::v1::PeerIdentity {
            controller_id: self.id,
            incarnation: self.incarnation,
            feature_level: steward_core::features::SUPPORTED_LEVEL,
        }
    }
}

/// The operator-facing message for a wiped controller.
pub fn wiped_message(id: NodeId, recorded: u64, actual: u64) -> String {
    format!(
        "controller {id} refused: its data dir is a new incarnation ({actual:#x}) but the cluster \
         recorded incarnation {recorded:#x} for id {id}, so its Raft log and vote were lost. Remove \
         the member (`steward operator raft remove-peer {id}`) and add it back under a new id \
         (`steward operator raft add-learner NEW_ID RAFT_ADDR API_ADDR`, then `promote NEW_ID`)"
    )
}
