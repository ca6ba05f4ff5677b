//! openraft's network factory over tonic (client side of `RaftService`).

use std::sync::Arc;

use openraft::error::{NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::{AnyError, RaftLogId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_core::codec;
use steward_proto::v1::raft_reply::Result as ReplyResult;
use steward_proto::v1::raft_service_client::RaftServiceClient;
use steward_proto::v1::{RaftReply, RaftRequest};
use steward_runtime::transport::{raft_client, TransportError};
use tonic::transport::Channel;

use super::{wiped_message, PeerShared, RPC_FORMAT, WIPED_CONTROLLER_HEADER};
use crate::raft::typ::{
    AppendEntriesRequest, AppendEntriesResponse, ControllerNode, Entry, EntryPayload,
    InstallSnapshotError, InstallSnapshotRequest, InstallSnapshotResponse, NodeId, RaftError,
    RpcError, TypeConfig, VoteRequest, VoteResponse,
};

/// Most bytes (approximately) of entries in one AppendEntries message; well under
/// `MAX_RAFT_MESSAGE_BYTES` so that one oversized entry still fits alone.
pub const MAX_APPEND_BYTES: usize = 16 * 1024 * 1024;
/// The least an AppendEntries message's byte budget shrinks to (one entry goes even when
/// it is larger).
pub const MIN_APPEND_BYTES: usize = 256 * 1024;

/// How many bytes of entries the next AppendEntries message to one peer carries.
///
/// openraft 0.9 gives every AppendEntries the heartbeat interval (50 ms by default) and
/// drops the call when it passes. A message that cannot cross the link and the peer's
/// fsync in that time fails every time it is retried, and a backlog of large entries (an
/// operator snapshot restored in 2 MiB chunks, say) would never reach the peer: the leader
/// could commit nothing. So the budget halves after a message that timed out or was
/// dropped unanswered, down to [`MIN_APPEND_BYTES`], and grows back by that much after
/// each answered one, up to [`MAX_APPEND_BYTES`]; openraft sends the rest of a cut batch
/// next (a partial success).
#[derive(Debug)]
struct AppendBudget {
    bytes: usize,
    /// A message was sent and its call has not returned: if the next call finds this
    /// set, openraft dropped it at its deadline.
    in_flight: bool,
}

impl AppendBudget {
    fn new() -> Self {
        AppendBudget {
            bytes: MAX_APPEND_BYTES,
            in_flight: false,
        }
    }

    /// The budget of the message about to be sent (and marks it in flight).
    fn next(&mut self) -> usize {
        if std::mem::replace(&mut self.in_flight, true) {
            self.shrink();
        }
        self.bytes
    }

    /// The message's call returned: answered, or failed (`timed_out` when its deadline
    /// passed).
    fn returned(&mut self, answered: bool, timed_out: bool) {
        self.in_flight = false;
        if answered {
            self.bytes = (self.bytes + MIN_APPEND_BYTES).min(MAX_APPEND_BYTES);
        } else if timed_out {
            self.shrink();
        }
    }

    fn shrink(&mut self) {
        self.bytes = (self.bytes / 2).max(MIN_APPEND_BYTES);
    }
}

fn entry_size(entry: &Entry) -> usize {
    match &entry.payload {
        EntryPayload::Blank => 32,
        EntryPayload::Normal(command) => command.approx_size(),
        EntryPayload::Membership(m) => {
            64 + m
                .nodes()
                .map(|(_, n)| n.raft_addr.len() + n.api_addr.len() + 16)
                .sum::<usize>()
        }
    }
}

/// Creates one [`Network`] per peer; all share the channel cache in [`PeerShared`].
#[derive(Clone)]
pub struct NetworkFactory {
    shared: Arc<PeerShared>,
}

impl NetworkFactory {
    pub fn new(shared: Arc<PeerShared>) -> Self {
        NetworkFactory { shared }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Network;

    async fn new_client(&mut self, target: NodeId, node: &ControllerNode) -> Network {
        Network {
            target,
            addr: node.raft_addr.clone(),
            shared: self.shared.clone(),
            append_budget: AppendBudget::new(),
        }
    }
}

/// The client for one peer.
pub struct Network {
    target: NodeId,
    addr: String,
    shared: Arc<PeerShared>,
    append_budget: AppendBudget,
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl Network {
    fn client(&self) -> Result<RaftServiceClient<Channel>, TransportError> {
        Ok(raft_client(self.shared.channel(&self.addr)?))
    }

    /// Sends one request and decodes the reply. `Ok(Err(e))` is the peer's RaftError.
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = codec::encode_as("raft request", RPC_FORMAT, req)
            .map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
        let mut client = self
            .client()
            .map_err(|e| RpcError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(RaftRequest {
            from: Some(self.shared.identity()),
            to_controller_id: self.target,
            to_incarnation: self.shared.recorded_incarnation(self.target),
            payload,
        });
        let ttl = option.hard_ttl();
        request.set_timeout(ttl);
        let fut = async {
            match rpc {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply: RaftReply = match tokio::time::timeout(ttl, fut).await {
            Err(_elapsed) => {
                return Err(RpcError::Network(NetworkError::new(&AnyError::error(
                    format!(
                        "raft rpc to controller {} at {} timed out after {ttl:?}",
                        self.target, self.addr
                    ),
                ))))
            }
            Ok(Err(status)) => return Err(self.status_error(status)),
            Ok(Ok(resp)) => resp.into_inner(),
        };
        self.shared.touch(self.target);
        if let Some(responder) = &reply.responder {
            self.shared
                .record_level(self.target, responder.feature_level);
        } else {
            self.shared.record_level(self.target, 0);
        }
        match reply.result {
            Some(ReplyResult::Ok(bytes)) => codec::decode_as("raft response", RPC_FORMAT, &bytes)
                .map_err(|e| RpcError::Network(NetworkError::new(&e))),
            Some(ReplyResult::RaftError(bytes)) => {
                let err: RaftError<E> = codec::decode_as("raft error", RPC_FORMAT, &bytes)
                    .map_err(|e| RpcError::Network(NetworkError::new(&e)))?;
                Err(RpcError::RemoteError(RemoteError::new(self.target, err)))
            }
            None => Err(RpcError::Network(NetworkError::new(&AnyError::error(
                "empty raft reply",
            )))),
        }
    }

    fn status_error<E: std::error::Error>(&self, status: tonic::Status) -> RpcError<E> {
        if status.code() == tonic::Code::PermissionDenied {
            let wiped = status
                .metadata()
                .get(WIPED_CONTROLLER_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<NodeId>().ok());
            if wiped == Some(self.shared.id) {
                let recorded = self.shared.recorded_incarnation(self.shared.id);
                self.shared.fail(if recorded != 0 {
                    wiped_message(self.shared.id, recorded, self.shared.incarnation)
                } else {
                    status.message().to_string()
                });
            }
        }
        let err = AnyError::error(format!(
            "controller {} at {}: {}: {}",
            self.target,
            self.addr,
            status.code(),
            status.message()
        ));
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => {
                RpcError::Unreachable(Unreachable::new(&err))
            }
            _ => RpcError::Network(NetworkError::new(&err)),
        }
    }
}

impl RaftNetwork<TypeConfig> for Network {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RpcError> {
        // Bound the message by bytes too: send the longest prefix under the budget (at
        // least one entry) and report a partial success, so openraft sends the rest next.
        let budget = self.append_budget.next();
        let mut bytes = 0;
        let mut keep = 0;
        for entry in &rpc.entries {
            let size = entry_size(entry);
            if keep > 0 && bytes + size > budget {
                break;
            }
            bytes += size;
            keep += 1;
        }
        let partial = keep < rpc.entries.len();
        rpc.entries.truncate(keep);
        let last = rpc.entries.last().map(|e| *e.get_log_id());
        let started = std::time::Instant::now();
        let result = self.call(Rpc::AppendEntries, &rpc, &option).await;
        let succeeded = matches!(
            result,
            Ok(AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_))
        );
        self.append_budget.returned(
            result.is_ok(),
            result.is_err() && started.elapsed() >= option.hard_ttl(),
        );
        if last.is_some() && succeeded {
            self.shared
                .timings
                .observe_peer_append(self.target, started.elapsed());
        }
        match result? {
            AppendEntriesResponse::Success if partial => {
                Ok(AppendEntriesResponse::PartialSuccess(last))
            }
            other => Ok(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse, RpcError<InstallSnapshotError>> {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RpcError> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod append_budget_tests {
    use super::*;

    #[test]
    fn the_budget_halves_after_dropped_or_timed_out_messages_and_grows_back() {
        let mut b = AppendBudget::new();
        assert_eq!(b.next(), MAX_APPEND_BYTES);
        // Dropped at openraft's deadline: the next call finds it still in flight.
        assert_eq!(b.next(), MAX_APPEND_BYTES / 2);
        b.returned(false, true);
        assert_eq!(b.next(), MAX_APPEND_BYTES / 4);
        // An error that is not a timeout (a refused connection) says nothing of size.
        b.returned(false, false);
        assert_eq!(b.next(), MAX_APPEND_BYTES / 4);
        for _ in 0..20 {
            b.returned(false, true);
            b.next();
        }
        assert_eq!(b.bytes, MIN_APPEND_BYTES, "never below the floor");
        b.returned(true, false);
        assert_eq!(b.next(), 2 * MIN_APPEND_BYTES);
        for _ in 0..200 {
            b.returned(true, false);
            b.next();
        }
        assert_eq!(b.bytes, MAX_APPEND_BYTES, "never above the ceiling");
    }
}
