//! `RaftService`: receives Raft RPCs from peers, applies the incarnation fence, and hands
//! them to the local `Raft`. Also the two leadership-transfer steps and controller
//! registration.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use steward_core::identity::Principal;
use steward_core::{codec, Command, CommandResult};
use steward_proto::v1::raft_reply::Result as ReplyResult;
use steward_proto::v1::raft_service_server::RaftService;
use steward_proto::v1::{
    CampaignReply, CampaignRequest, PauseElectionReply, PauseElectionRequest, PeerIdentity,
    RaftReply, RaftRequest, RegisterControllerReply, RegisterControllerRequest,
};
use steward_runtime::tls::PeerIdentity as TlsPeer;
use tonic::{Request, Response, Status};

use super::{wiped_message, PeerShared, RPC_FORMAT, WIPED_CONTROLLER_HEADER};
use crate::raft::elections::{ElectionHolds, HoldReason};
use crate::raft::typ::{InstallSnapshotRequest, NodeId, Raft, RaftError};

/// Longest election pause a peer may ask for.
pub const MAX_ELECTION_PAUSE: Duration = Duration::from_secs(10);

pub struct RaftServer {
    raft: Raft,
    shared: Arc<PeerShared>,
    holds: Arc<ElectionHolds>,
    /// How long after a snapshot chunk this controller keeps from campaigning.
    snapshot_hold: Duration,
}

impl RaftServer {
    pub fn new(
        raft: Raft,
        shared: Arc<PeerShared>,
        holds: Arc<ElectionHolds>,
        snapshot_hold: Duration,
    ) -> Self {
        RaftServer {
            raft,
            shared,
            holds,
            snapshot_hold,
        }
    }

    /// The incarnation fence (see the module docs of `network`), and under TLS the
    /// certificate: a controller may speak only as the controller its certificate names.
    fn check_sender(
        &self,
        from: Option<&PeerIdentity>,
        certified: Option<NodeId>,
    ) -> Result<NodeId, Status> {
        let from =
            from.ok_or_else(|| Status::invalid_argument("raft request without sender identity"))?;
        if let Some(cert) = certified.filter(|c| *c != from.controller_id) {
            return Err(Status::permission_denied(format!(
                "the certificate names controller {cert}, the request claims to come from controller {}",
                from.controller_id
            )));
        }
        let recorded = self.shared.recorded_incarnation(from.controller_id);
        if recorded != 0 && recorded != from.incarnation {
            let mut status = Status::permission_denied(wiped_message(
                from.controller_id,
                recorded,
                from.incarnation,
            ));
            if let Ok(v) = from.controller_id.to_string().parse() {
                status.metadata_mut().insert(WIPED_CONTROLLER_HEADER, v);
            }
            return Err(status);
        }
        Ok(from.controller_id)
    }

    fn check_request(&self, req: &RaftRequest, certified: Option<NodeId>) -> Result<(), Status> {
        self.check_sender(req.from.as_ref(), certified)?;
        if req.to_controller_id != self.shared.id {
            return Err(Status::invalid_argument(format!(
                "this is controller {}, not {}: check the raft addresses in --initial-cluster / membership",
                self.shared.id, req.to_controller_id
            )));
        }
        if req.to_incarnation != 0 && req.to_incarnation != self.shared.incarnation {
            let msg = wiped_message(self.shared.id, req.to_incarnation, self.shared.incarnation);
            self.shared.fail(msg.clone());
            return Err(Status::failed_precondition(msg));
        }
        Ok(())
    }
}

/// The controller id the connection's certificate names (`None` without TLS; the access
/// layer lets only controllers' certificates reach this service). The connection's own
/// identity, never a forwarded caller's.
fn certified<T>(request: &Request<T>) -> Option<NodeId> {
    match request.extensions().get::<TlsPeer>() {
        Some(peer) => match peer.identity.principal {
            Principal::Controller(c) => Some(c),
            // Not reachable through the access layer; refuse rather than trust.
            _ => Some(0),
        },
        None => None,
    }
}

fn decode<T: DeserializeOwned>(req: &RaftRequest) -> Result<T, Status> {
    codec::decode_as("raft request", RPC_FORMAT, &req.payload)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn reply<T: Serialize, E: Serialize>(
    responder: PeerIdentity,
    result: Result<T, RaftError<E>>,
) -> Result<Response<RaftReply>, Status> {
    let encoded = match result {
        Ok(v) => codec::encode_as("raft response", RPC_FORMAT, &v).map(ReplyResult::Ok),
        Err(e) => codec::encode_as("raft error", RPC_FORMAT, &e).map(ReplyResult::RaftError),
    }
    .map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftReply {
        result: Some(encoded),
        responder: Some(responder),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let cert = certified(&request);
        let req = request.into_inner();
        self.check_request(&req, cert)?;
        reply(
            self.shared.identity(),
            self.raft.append_entries(decode(&req)?).await,
        )
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let cert = certified(&request);
        let req = request.into_inner();
        self.check_request(&req, cert)?;
        reply(self.shared.identity(), self.raft.vote(decode(&req)?).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let cert = certified(&request);
        let req = request.into_inner();
        self.check_request(&req, cert)?;
        let chunk: InstallSnapshotRequest = decode(&req)?;
        let done = chunk.done;
        let result = self.raft.install_snapshot(chunk).await;
        // openraft does not count chunks as contact with the leader: without a hold, a
        // transfer longer than the election timeout makes this follower campaign mid-way.
        match (&result, done) {
            (Ok(_), false) => self
                .holds
                .hold(HoldReason::ReceivingSnapshot, self.snapshot_hold),
            _ => self.holds.release(HoldReason::ReceivingSnapshot),
        }
        reply(self.shared.identity(), result)
    }

    async fn pause_election(
        &self,
        request: Request<PauseElectionRequest>,
    ) -> Result<Response<PauseElectionReply>, Status> {
        let cert = certified(&request);
        let req = request.into_inner();
        self.check_sender(req.from.as_ref(), cert)?;
        let pause = Duration::from_millis(req.pause_ms).min(MAX_ELECTION_PAUSE);
        self.holds.hold(HoldReason::PausedForTransfer, pause);
        Ok(Response::new(PauseElectionReply {}))
    }

    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignReply>, Status> {
        let cert = certified(&request);
        let req = request.into_inner();
        self.check_sender(req.from.as_ref(), cert)?;
        self.holds.release_all();
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(CampaignReply {}))
    }

    async fn register_controller(
        &self,
        request: Request<RegisterControllerRequest>,
    ) -> Result<Response<RegisterControllerReply>, Status> {
        let cert = certified(&request);
        let req = request.into_inner();
        let from = req
            .from
            .ok_or_else(|| Status::invalid_argument("registration without sender identity"))?;
        if let Some(cert) = cert.filter(|c| *c != from.controller_id) {
            return Err(Status::permission_denied(format!(
                "the certificate names controller {cert}, the registration claims controller {}",
                from.controller_id
            )));
        }
        let command = Command::RegisterController {
            controller: from.controller_id,
            incarnation: from.incarnation,
            api_addr: req.api_addr,
        };
        match self.raft.client_write(command).await {
            Ok(resp) => match resp.data {
                CommandResult::ControllerRegistered => Ok(Response::new(RegisterControllerReply {
                    recorded_incarnation: from.incarnation,
                })),
                CommandResult::IncarnationConflict { recorded, .. } => {
                    Ok(Response::new(RegisterControllerReply {
                        recorded_incarnation: recorded,
                    }))
                }
                other => Err(Status::internal(format!("unexpected result {other:?}"))),
            },
            Err(e) => Err(Status::failed_precondition(format!(
                "cannot register here: {e}"
            ))),
        }
    }
}
