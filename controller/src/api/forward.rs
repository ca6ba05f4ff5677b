//! The one read path and the one write path of the admin API, and forwarding to the leader.
//!
//! - [`ApiContext::read`]: a linearizable read confirms leadership with a quorum here, or is
//!   forwarded to the leader; a stale read is served from the local applied state.
//! - [`ApiContext::write`]: a follower forwards the request to the leader before anything
//!   is queued; the leader proposes the command. A forwarded write whose answer is lost is
//!   reported as "outcome unknown", never as a failure.
//! - [`ApiContext::forward_to_leader`]: for leader-only actions (membership, transfer).

use std::future::Future;

use steward_core::{Command, CommandResult};
use steward_proto::v1::admin_client::AdminClient;
use steward_runtime::access::{Caller, ON_BEHALF_OF};
use steward_runtime::transport::admin_client;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::error::{status_not_applied, ApiError};
use super::ApiContext;
use crate::raft::store::Applied;
use crate::raft::typ::NodeId;
use crate::raft::{forwarded_write_deadline, Error as RaftError};

/// Most times one call is forwarded between controllers looking for the leader.
pub const MAX_FORWARD_HOPS: u32 = 2;
/// Request metadata carrying how many times a call was forwarded.
pub const FORWARD_HOPS_HEADER: &str = "x-steward-forward-hops";

/// Where a received call comes from, carried along when it is forwarded to the leader:
/// the hops it has made, the caller it acts for (its identity URI, so that the leader
/// checks the caller's rights and not the forwarding controller's), and the caller's
/// bearer token. Without TLS there is no caller to name.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub hops: u32,
    caller: Option<MetadataValue<Ascii>>,
    token: Option<MetadataValue<Ascii>>,
}

impl Origin {
    /// The origin of a received call.
    pub fn of<T>(request: &Request<T>) -> Origin {
        let meta = request.metadata();
        Origin {
            hops: meta
                .get(FORWARD_HOPS_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            caller: request
                .extensions()
                .get::<Caller>()
                .and_then(|c| c.0.uri().parse().ok()),
            token: meta.get("authorization").cloned(),
        }
    }

    /// The same origin, one hop further.
    fn next_hop(&self) -> Origin {
        Origin {
            hops: self.hops + 1,
            ..self.clone()
        }
    }
}

/// Wraps `msg` for forwarding with its `origin` (hops, caller, token).
pub fn forwarded<T>(msg: T, origin: &Origin) -> Request<T> {
    let mut req = Request::new(msg);
    let meta = req.metadata_mut();
    if let Ok(v) = origin.hops.to_string().parse() {
        meta.insert(FORWARD_HOPS_HEADER, v);
    }
    if let Some(caller) = &origin.caller {
        meta.insert(ON_BEHALF_OF, caller.clone());
    }
    if let Some(token) = &origin.token {
        meta.insert("authorization", token.clone());
    }
    req.set_timeout(forwarded_write_deadline());
    req
}

/// A leader's client, ready for forwarding.
pub struct LeaderClient {
    pub client: AdminClient<Channel>,
    pub leader: NodeId,
    pub addr: String,
    /// The origin (and hops) the forwarded call will carry.
    pub origin: Origin,
}

impl ApiContext {
    /// An admin client for `leader`, to forward a call that arrived from `origin`.
    pub fn leader_client(
        &self,
        leader: Option<NodeId>,
        origin: &Origin,
    ) -> Result<LeaderClient, ApiError> {
        let leader = leader.ok_or(ApiError::NoLeader)?;
        if origin.hops >= MAX_FORWARD_HOPS {
            return Err(ApiError::TooManyHops(origin.hops));
        }
        if leader == self.raft.id() {
            return Err(ApiError::NoLeader);
        }
        let addr = self
            .raft
            .api_addr_of(leader)
            .ok_or_else(|| ApiError::LeaderUnreachable {
                leader,
                addr: "?".into(),
                message: "its API address is not known yet".into(),
            })?;
        let ch = self
            .raft
            .peers()
            .channel(&addr)
            .map_err(|e| ApiError::LeaderUnreachable {
                leader,
                addr: addr.clone(),
                message: e.to_string(),
            })?;
        Ok(LeaderClient {
            client: admin_client(ch),
            leader,
            addr,
            origin: origin.next_hop(),
        })
    }

    /// `Some(client)` when this controller does not lead and the call must go to the
    /// leader; `None` when it leads.
    pub fn forward_to_leader(&self, origin: &Origin) -> Result<Option<LeaderClient>, ApiError> {
        if self.raft.is_leader() {
            return Ok(None);
        }
        self.leader_client(self.raft.current_leader(), origin)
            .map(Some)
    }

    /// A read: linearizable unless `stale(&req)`, through the leader when this controller
    /// does not lead; then `local` builds the reply from the applied state.
    pub async fn read<Req, Resp, Fwd, Fut>(
        &self,
        request: Request<Req>,
        stale: impl FnOnce(&Req) -> bool,
        forward: Fwd,
        local: impl FnOnce(Req, &Applied) -> Result<Resp, ApiError>,
    ) -> Result<Response<Resp>, Status>
    where
        Fwd: FnOnce(AdminClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let origin = Origin::of(&request);
        let req = request.into_inner();
        if !stale(&req) {
            match self.raft.read_barrier().await {
                Err(RaftError::NotLeader { leader, .. }) => {
                    let l = self.leader_client(leader, &origin)?;
                    return forward(l.client, forwarded(req, &l.origin)).await;
                }
                Err(e) => return Err(ApiError::from(e).into()),
                Ok(()) => {}
            }
        }
        let applied = self.raft.view().read();
        Ok(Response::new(local(req, &applied)?))
    }

    /// A write: on the leader, proposes `command(&req)` and maps its result with `reply`;
    /// elsewhere, forwards the request to the leader first.
    pub async fn write<Req, Resp, Fwd, Fut>(
        &self,
        request: Request<Req>,
        command: impl FnOnce(&Req) -> Result<Command, ApiError>,
        reply: impl FnOnce(CommandResult) -> Result<Resp, ApiError>,
        forward: Fwd,
    ) -> Result<Response<Resp>, Status>
    where
        Fwd: FnOnce(AdminClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let origin = Origin::of(&request);
        let req = request.into_inner();
        let cmd = command(&req)?;
        let leader = if self.raft.is_leader() {
            match self.raft.propose(cmd).await {
                Ok((_, result)) => {
                    let reply = reply(result)?;
                    // Test builds: the write is applied and its answer lost on the way back.
                    fail::fail_point!("api-write-reply-lost", |_| Err(Status::unavailable(
                        "connection reset (fail point api-write-reply-lost)"
                    )));
                    return Ok(Response::new(reply));
                }
                Err(RaftError::NotLeader { leader, .. }) => leader,
                Err(e) => return Err(ApiError::from(e).into()),
            }
        } else {
            self.raft.current_leader()
        };
        let l = self.leader_client(leader, &origin)?;
        forward(l.client, forwarded(req, &l.origin))
            .await
            .map_err(|status| forwarded_write_error(status, l.leader, &l.addr))
    }
}

/// A forwarded write's failure: the leader's own answers pass through; a lost answer
/// (transport failure, cancelled call) becomes "outcome unknown".
fn forwarded_write_error(status: Status, leader: NodeId, addr: &str) -> Status {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted | Code::Internal
            if !status_not_applied(&status) =>
        {
            ApiError::ForwardedOutcomeUnknown {
                leader,
                addr: addr.to_string(),
                message: format!("{}: {}", status.code(), status.message()),
            }
            .into()
        }
        _ => status,
    }
}
