//! The access check in front of every Steward service: each request's method (its gRPC
//! path) is checked against `core::authz` with the caller's identity, which comes from
//! its TLS connection (`tls::PeerIdentity`), raised by a bearer token's role when the
//! request carries one (`authorization: Bearer TOKEN`). A refused request never reaches
//! its service: it is answered PERMISSION_DENIED (or UNAUTHENTICATED when the caller has
//! no identity at all), counted, and logged with the identity (`log_gate`: at most one
//! line per reason a second under a flood).
//!
//! A controller forwarding an operator's call to the leader names the caller in
//! [`ON_BEHALF_OF`]; the header is believed only from a controller's connection.
//!
//! Load shedding: [`MAX_IN_FLIGHT_REQUESTS`] shared by all callers, at most
//! [`MAX_IN_FLIGHT_PER_CALLER`] of them for one caller, and [`RESERVED_FOR_LIVENESS`]
//! more that only agents' and controllers' liveness calls may take.
//!
//! Without TLS (`--insecure`) there is no identity to check: the layer lets every call
//! through (shedding still applies, without per-caller shares: there is no caller to
//! tell apart), and the daemons warn at every start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use steward_core::authz::{authorize, Denied};
use steward_core::identity::{Identity, Principal, Role};
use tonic::Status;

use crate::tls::PeerIdentity;

/// The header a forwarding controller names the original caller in (its identity URI).
pub const ON_BEHALF_OF: &str = "x-steward-on-behalf-of";
/// Longest bearer token read from a request.
pub const MAX_TOKEN_BYTES: usize = 256;
/// Requests one server works on at once; past it, new ones are answered
/// RESOURCE_EXHAUSTED at once (load shedding: work queues no further and memory does not
/// grow). A server-streaming call counts until its reply starts.
pub const MAX_IN_FLIGHT_REQUESTS: usize = 4096;
/// Requests one caller may have in flight on one server (a quarter of the shared ones):
/// one client holding slow requests leaves the rest to everyone else. The caller is the
/// identity a request acts for (a forwarded request counts for its original caller), or
/// the peer's address on a plaintext server. A controller acting for itself is not
/// limited: it is the control plane.
pub const MAX_IN_FLIGHT_PER_CALLER: usize = 1024;
/// Requests in flight kept for liveness on top of the shared ones: agents' control calls
/// (register, heartbeat, reports, watches), Raft between controllers and health checks
/// take these when every shared one is taken, so a flood of admin calls never makes the
/// leader miss heartbeats and declare healthy nodes dead. With TLS only agents and
/// controllers may take them (a client's health checks wait like its other calls).
pub const RESERVED_FOR_LIVENESS: usize = 512;

/// Whether `path` is a liveness call ([`RESERVED_FOR_LIVENESS`]).
fn is_liveness(path: &str) -> bool {
    path.starts_with("/steward.v1.AgentControl/")
        || path.starts_with("/steward.v1.RaftService/")
        || path.starts_with("/grpc.health.v1.Health/")
}

/// Resolves bearer tokens to roles (the controller's ACL state; agents have none).
pub trait TokenRoles: Send + Sync + 'static {
    /// The role `token` grants, or why it grants none (unknown, revoked, expired).
    fn role_of(&self, token: &str) -> Result<Role, String>;
}

/// Refusals, by method and reason, for `/metrics`.
#[derive(Debug, Default)]
pub struct AccessStats {
    pub allowed: AtomicU64,
    refused: Mutex<HashMap<(String, &'static str), u64>>,
    /// Refusal log lines, thinned per reason.
    logs: crate::log_gate::LogGate,
}

impl AccessStats {
    fn refuse(&self, path: &str, reason: &'static str) {
        let mut m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        // Unknown paths are bounded to one key: a scanner cannot grow the map.
        let key = if steward_core::authz::rule_for(path).is_some() {
            path.to_string()
        } else {
            "unknown".to_string()
        };
        *m.entry((key, reason)).or_default() += 1;
    }

    /// `(path, reason) -> count` of refused requests.
    pub fn refused(&self) -> Vec<((String, &'static str), u64)> {
        let m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = m.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort();
        v
    }

    pub fn refused_total(&self) -> u64 {
        let m = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        m.values().sum()
    }
}

/// The layer every server is built with (`transport::grpc_server`).
#[derive(Clone)]
pub struct AccessLayer {
    enforce: bool,
    tokens: Option<Arc<dyn TokenRoles>>,
    stats: Arc<AccessStats>,
    admission: Arc<Admission>,
}

/// Who may start a request now: the shared slots, the liveness reserve and each caller's
/// share.
struct Admission {
    shared: Arc<tokio::sync::Semaphore>,
    reserved: Arc<tokio::sync::Semaphore>,
    per_caller: usize,
    callers: Arc<Mutex<HashMap<String, usize>>>,
}

impl Admission {
    fn new(total: usize, reserved: usize, per_caller: usize) -> Arc<Self> {
        Arc::new(Admission {
            shared: Arc::new(tokio::sync::Semaphore::new(total)),
            reserved: Arc::new(tokio::sync::Semaphore::new(reserved)),
            per_caller,
            callers: Arc::default(),
        })
    }

    /// A slot for a request of `caller` (`None`: not limited per caller) on `path`, or
    /// the refusal's reason. `may_reserve`: the caller may take the liveness reserve.
    fn admit(
        &self,
        caller: Option<&str>,
        path: &str,
        may_reserve: bool,
    ) -> Result<Admitted, &'static str> {
        let caller = match caller {
            None => None,
            Some(key) => {
                let mut m = self.callers.lock().unwrap_or_else(|p| p.into_inner());
                let n = m.get(key).copied().unwrap_or(0);
                if n >= self.per_caller {
                    return Err("caller_limit");
                }
                m.insert(key.to_string(), n + 1);
                Some(CallerSlot {
                    callers: self.callers.clone(),
                    key: key.to_string(),
                })
            }
        };
        // A refusal here drops `caller`, which gives its slot back.
        let permit = self
            .shared
            .clone()
            .try_acquire_owned()
            .or_else(|e| {
                if may_reserve && is_liveness(path) {
                    self.reserved.clone().try_acquire_owned()
                } else {
                    Err(e)
                }
            })
            .map_err(|_| "overloaded")?;
        Ok(Admitted {
            _permit: permit,
            _caller: caller,
        })
    }
}

/// A started request's slots, freed when its reply starts.
struct Admitted {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _caller: Option<CallerSlot>,
}

/// One of a caller's [`MAX_IN_FLIGHT_PER_CALLER`]; dropping it frees it.
struct CallerSlot {
    callers: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut m = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl AccessLayer {
    /// Checks every request (a TLS server).
    pub fn enforcing(tokens: Option<Arc<dyn TokenRoles>>) -> Self {
        AccessLayer {
            enforce: true,
            tokens,
            stats: Arc::default(),
            admission: Admission::new(
                MAX_IN_FLIGHT_REQUESTS,
                RESERVED_FOR_LIVENESS,
                MAX_IN_FLIGHT_PER_CALLER,
            ),
        }
    }

    /// Lets everything through (a plaintext server, `--insecure`).
    pub fn open() -> Self {
        AccessLayer {
            enforce: false,
            tokens: None,
            stats: Arc::default(),
            admission: Admission::new(
                MAX_IN_FLIGHT_REQUESTS,
                RESERVED_FOR_LIVENESS,
                MAX_IN_FLIGHT_PER_CALLER,
            ),
        }
    }

    /// The same layer with other limits: `total` shared requests in flight, `reserved`
    /// more for liveness calls, `per_caller` for each caller (tests use small ones).
    pub fn limits(mut self, total: usize, reserved: usize, per_caller: usize) -> Self {
        self.admission = Admission::new(total, reserved, per_caller);
        self
    }

    pub fn stats(&self) -> Arc<AccessStats> {
        self.stats.clone()
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    layer: AccessLayer,
}

/// The caller a request acts for, and the role it holds; or why it is refused.
fn caller_of<B>(
    req: &http::Request<B>,
    tokens: Option<&dyn TokenRoles>,
) -> Result<(Identity, Option<Role>), (Status, &'static str)> {
    let peer = req
        .extensions()
        .get::<PeerIdentity>()
        .map(|p| p.identity.clone())
        .ok_or_else(|| {
            (
                Status::unauthenticated("no client certificate identity on this connection"),
                "no_identity",
            )
        })?;
    let mut caller = peer.clone();
    if let Some(v) = req.headers().get(ON_BEHALF_OF) {
        if !matches!(peer.principal, Principal::Controller(_)) {
            return Err((
                Status::permission_denied(format!(
                    "{ON_BEHALF_OF} is honoured from controllers only, not from {}",
                    peer.principal
                )),
                "forged_forward",
            ));
        }
        let original = v
            .to_str()
            .ok()
            .and_then(|s| Identity::parse_uri(s).ok())
            // A controller forwards for agents and clients, never as another controller.
            .filter(|id| {
                id.cluster == peer.cluster && !matches!(id.principal, Principal::Controller(_))
            })
            .ok_or_else(|| {
                (
                    Status::invalid_argument(format!(
                        "{ON_BEHALF_OF}: not an agent or client identity of this cluster"
                    )),
                    "bad_forward",
                )
            })?;
        caller = original;
    }
    let token_role = match req.headers().get(http::header::AUTHORIZATION) {
        None => None,
        Some(v) => {
            let token = v
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("Bearer "))
                .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_BYTES)
                .ok_or_else(|| {
                    (
                        Status::unauthenticated("authorization: expected `Bearer TOKEN`"),
                        "bad_token",
                    )
                })?;
            let tokens = tokens.ok_or_else(|| {
                (
                    Status::unauthenticated("this server takes no tokens"),
                    "bad_token",
                )
            })?;
            Some(tokens.role_of(token).map_err(|why| {
                (
                    Status::unauthenticated(format!("token refused: {why}")),
                    "bad_token",
                )
            })?)
        }
    };
    Ok((caller, token_role))
}

impl<S, B> tower::Service<http::Request<B>> for Access<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        if !self.layer.enforce {
            // No identity to tell callers apart by: no per-caller share.
            return match self.layer.admit(None, &path, true) {
                Ok(admitted) => held(admitted, oversize_is_exhaustion(self.inner.call(req))),
                Err(status) => Box::pin(async move { Ok(status.into_http()) }),
            };
        }
        let stats = self.layer.stats.clone();
        let decided = caller_of(&req, self.layer.tokens.as_deref()).and_then(|(who, role)| {
            authorize(&path, &who.principal, role)
                .map(|_| who.clone())
                .map_err(|d| match d {
                    Denied::UnknownMethod(_) => {
                        (Status::unimplemented(d.to_string()), "unknown_method")
                    }
                    Denied::Refused { .. } => (Status::permission_denied(d.to_string()), "role"),
                })
        });
        match decided {
            Ok(who) => {
                // Each caller its share; a controller acting for itself is not limited.
                let key = (!matches!(who.principal, Principal::Controller(_))).then(|| who.uri());
                let may_reserve = matches!(
                    who.principal,
                    Principal::Agent(_) | Principal::Controller(_)
                );
                let admitted = match self.layer.admit(key.as_deref(), &path, may_reserve) {
                    Ok(a) => a,
                    Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
                };
                stats.allowed.fetch_add(1, Ordering::Relaxed);
                // The handler of a node-scoped call checks the node with this.
                req.extensions_mut().insert(Caller(who));
                req.extensions_mut().insert(CallPath(path));
                req.extensions_mut().insert(stats);
                held(admitted, oversize_is_exhaustion(self.inner.call(req)))
            }
            Err((status, reason)) => {
                let peer = req
                    .extensions()
                    .get::<PeerIdentity>()
                    .map(|p| p.identity.uri())
                    .unwrap_or_else(|| "no identity".into());
                if let Some(unlogged) = stats.logs.pass(reason) {
                    tracing::warn!(%path, caller = %peer, reason, message = %status.message(),
                        unlogged_since_last = unlogged, "call refused");
                }
                stats.refuse(&path, reason);
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

impl AccessLayer {
    /// Admits a request of `caller` (`None`: not limited per caller) on `path`, or the
    /// RESOURCE_EXHAUSTED status that sheds it (counted always, logged through the log
    /// gate).
    fn admit(
        &self,
        caller: Option<&str>,
        path: &str,
        may_reserve: bool,
    ) -> Result<Admitted, Status> {
        self.admission
            .admit(caller, path, may_reserve)
            .map_err(|reason| {
                self.stats.refuse(path, reason);
                if let Some(unlogged) = self.stats.logs.pass(reason) {
                    tracing::warn!(%path, caller = caller.unwrap_or("-"), reason,
                    unlogged_since_last = unlogged, "request shed");
                }
                Status::resource_exhausted(if reason == "caller_limit" {
                    format!(
                        "this caller has {} requests in flight on this server, its limit; \
                     retry with backoff",
                        self.admission.per_caller
                    )
                } else {
                    "the server is at its limit of requests in flight; retry with backoff".into()
                })
            })
    }
}

/// `call` with its admission held until the reply starts.
fn held<T: 'static>(
    admitted: Admitted,
    call: futures::future::BoxFuture<'static, T>,
) -> futures::future::BoxFuture<'static, T> {
    Box::pin(async move {
        let out = call.await;
        drop(admitted);
        out
    })
}

/// A request message over its service's size limit is answered RESOURCE_EXHAUSTED (the
/// code clients treat as "too much, do not retry as is"), not tonic's OUT_OF_RANGE. The
/// message is refused before it is decoded either way.
fn oversize_is_exhaustion<F, E>(
    call: F,
) -> futures::future::BoxFuture<'static, Result<http::Response<tonic::body::Body>, E>>
where
    F: std::future::Future<Output = Result<http::Response<tonic::body::Body>, E>> + Send + 'static,
{
    Box::pin(async move {
        let mut resp = call.await?;
        let headers = resp.headers_mut();
        let oversize = headers.get("grpc-status").is_some_and(|v| v == "11")
            && headers.get("grpc-message").is_some_and(|m| {
                let m = m.as_bytes();
                m.windows(30).any(|w| {
                    w == b"decoded%20message%20length%20t" || w == b"decoded message length too lar"
                })
            });
        if oversize {
            headers.insert(
                "grpc-status",
                http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
            );
        }
        Ok(resp)
    })
}

/// The identity a request was allowed for (in its extensions after the access check):
/// the connection's, or the original caller's when a controller forwards.
#[derive(Debug, Clone)]
pub struct Caller(pub Identity);

/// The node authorizer rule for a handler: the request's caller may act for `node`.
/// Without TLS (no caller recorded) everything may.
pub fn check_node<T>(request: &tonic::Request<T>, node: &str) -> Result<(), Status> {
    match request.extensions().get::<Caller>() {
        None => Ok(()),
        Some(Caller(who)) if steward_core::authz::may_act_for_node(&who.principal, node) => Ok(()),
        Some(Caller(who)) => {
            let path = request
                .extensions()
                .get::<CallPath>()
                .map_or("unknown", |p| p.0.as_str());
            match request.extensions().get::<Arc<AccessStats>>() {
                Some(stats) => {
                    stats.refuse(path, "node");
                    if let Some(unlogged) = stats.logs.pass("node") {
                        tracing::warn!(%path, caller = %who.uri(), %node, reason = "node",
                            unlogged_since_last = unlogged, "call refused: not the caller's own node");
                    }
                }
                None => {
                    tracing::warn!(%path, caller = %who.uri(), %node, reason = "node", "call refused: not the caller's own node");
                }
            }
            Err(Status::permission_denied(format!(
                "{} may not act for node {node}",
                who.principal
            )))
        }
    }
}

/// The gRPC path of an allowed request (in its extensions), for handlers' refusals.
#[derive(Debug, Clone)]
pub struct CallPath(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    struct Tokens;
    impl TokenRoles for Tokens {
        fn role_of(&self, token: &str) -> Result<Role, String> {
            match token {
                "op-token" => Ok(Role::Operator),
                _ => Err("unknown token".into()),
            }
        }
    }

    fn peer(principal: Principal) -> PeerIdentity {
        PeerIdentity {
            identity: Identity::new("prod", principal).expect("identity"),
            remote: None,
        }
    }

    fn viewer() -> Principal {
        Principal::Client {
            name: "v".into(),
            role: Role::Viewer,
        }
    }

    /// The gRPC status code of a call through the layer (0: reached the service), and
    /// the principal the service saw.
    async fn call(
        layer: &AccessLayer,
        path: &str,
        who: Option<PeerIdentity>,
        headers: &[(&str, &str)],
    ) -> (i32, Option<Principal>) {
        let seen = Arc::new(Mutex::new(None));
        let record = seen.clone();
        let inner = tower::service_fn(move |req: http::Request<()>| {
            let record = record.clone();
            async move {
                *record.lock().expect("lock") = req
                    .extensions()
                    .get::<Caller>()
                    .map(|c| c.0.principal.clone());
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        let mut svc = layer.layer(inner);
        let mut req = http::Request::builder().uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(()).expect("request");
        if let Some(p) = who {
            req.extensions_mut().insert(p);
        }
        let resp = svc
            .ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("call");
        let code = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let who = seen.lock().expect("lock").clone();
        (code, who)
    }

    #[tokio::test]
    async fn past_the_in_flight_limit_requests_are_shed_with_resource_exhausted() {
        let (svc, gate, _, _) = gated(AccessLayer::open().limits(2, 0, 100));
        let req = || {
            http::Request::builder()
                .uri("/steward.v1.Admin/Status")
                .body(())
                .expect("request")
        };
        let code = |r: &http::Response<tonic::body::Body>| {
            r.headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(0)
        };
        // Two requests in flight (their handlers wait at the gate)...
        let a = svc.clone().ready().await.expect("ready").call(req());
        let b = svc.clone().ready().await.expect("ready").call(req());
        // ...and a third is shed at once.
        let shed = svc
            .clone()
            .ready()
            .await
            .expect("ready")
            .call(req())
            .await
            .expect("answer");
        assert_eq!(code(&shed), tonic::Code::ResourceExhausted as i32);
        gate.add_permits(2);
        assert_eq!(code(&a.await.expect("a")), 0);
        assert_eq!(code(&b.await.expect("b")), 0);
        // The slots are free again.
        gate.add_permits(1);
        let after = svc
            .clone()
            .ready()
            .await
            .expect("ready")
            .call(req())
            .await
            .expect("answer");
        assert_eq!(code(&after), 0);
    }

    type Answer = Result<http::Response<tonic::body::Body>, std::convert::Infallible>;

    /// What [`gated`] returns: the layered service, the gate, the layer's stats, its
    /// callers' slot counts.
    type Gated<S> = (
        S,
        Arc<tokio::sync::Semaphore>,
        Arc<AccessStats>,
        Arc<Mutex<HashMap<String, usize>>>,
    );

    /// `layer` in front of a service whose handlers wait at the returned gate; requests
    /// are admitted (or shed) when `call` is made, before any poll.
    fn gated(
        layer: AccessLayer,
    ) -> Gated<
        impl tower::Service<
                http::Request<()>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
                Future = futures::future::BoxFuture<'static, Answer>,
            > + Clone,
    > {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = gate.clone();
        let inner = tower::service_fn(move |_req: http::Request<()>| {
            let g = g.clone();
            async move {
                g.acquire().await.expect("gate").forget();
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        let stats = layer.stats();
        let callers = layer.admission.callers.clone();
        (layer.layer(inner), gate, stats, callers)
    }

    fn request(path: &str, who: Principal, on_behalf_of: Option<&str>) -> http::Request<()> {
        let mut req = http::Request::builder().uri(path);
        if let Some(v) = on_behalf_of {
            req = req.header(ON_BEHALF_OF, v);
        }
        let mut req = req.body(()).expect("request");
        req.extensions_mut().insert(peer(who));
        req
    }

    fn status_code(r: &http::Response<tonic::body::Body>) -> i32 {
        r.headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(0)
    }

    fn client_named(name: &str) -> Principal {
        Principal::Client {
            name: name.into(),
            role: Role::Viewer,
        }
    }

    const EXHAUSTED: i32 = tonic::Code::ResourceExhausted as i32;
    const STATUS: &str = "/steward.v1.Admin/Status";

    /// The answer of a call that must be shed at once (never waiting at the gate).
    fn shed_at_once(
        answer: futures::future::BoxFuture<'static, Answer>,
    ) -> http::Response<tonic::body::Body> {
        use futures::FutureExt;
        answer
            .now_or_never()
            .expect("answered at once, without reaching the service")
            .expect("answer")
    }

    #[tokio::test]
    async fn one_caller_holds_at_most_its_share_and_the_others_are_still_served() {
        let (svc, gate, stats, callers) = gated(AccessLayer::enforcing(None).limits(8, 0, 2));
        let call = |req| svc.clone().call(req);
        // Alice holds her two; her third is shed at once, also when a follower forwards
        // it for her.
        let a1 = call(request(STATUS, client_named("alice"), None));
        let a2 = call(request(STATUS, client_named("alice"), None));
        let shed = shed_at_once(call(request(STATUS, client_named("alice"), None)));
        assert_eq!(status_code(&shed), EXHAUSTED);
        let forwarded = shed_at_once(call(request(
            STATUS,
            Principal::Controller(2),
            Some("spiffe://prod/client/viewer/alice"),
        )));
        assert_eq!(status_code(&forwarded), EXHAUSTED, "forwarded for alice");
        // Bob is served meanwhile, and a controller acting for itself is not limited.
        let b = call(request(STATUS, client_named("bob"), None));
        let raft: Vec<_> = (0..3)
            .map(|_| {
                call(request(
                    "/steward.v1.RaftService/AppendEntries",
                    Principal::Controller(2),
                    None,
                ))
            })
            .collect();
        gate.add_permits(6);
        for answer in [a1, a2, b].into_iter().chain(raft) {
            assert_eq!(status_code(&answer.await.expect("answer")), 0);
        }
        // Alice's slots are free again once her replies started.
        gate.add_permits(1);
        let again = call(request(STATUS, client_named("alice"), None));
        assert_eq!(status_code(&again.await.expect("answer")), 0);
        assert!(stats
            .refused()
            .iter()
            .any(|((path, reason), n)| path == STATUS && *reason == "caller_limit" && *n == 2));
        assert!(
            callers.lock().expect("lock").is_empty(),
            "every caller slot was given back"
        );
    }

    #[tokio::test]
    async fn heartbeats_are_served_from_the_reserve_when_admin_calls_take_every_slot() {
        let (svc, gate, stats, callers) = gated(AccessLayer::enforcing(None).limits(2, 1, 100));
        let call = |req| svc.clone().call(req);
        let held = [
            call(request(STATUS, client_named("alice"), None)),
            call(request(STATUS, client_named("bob"), None)),
        ];
        // Every shared slot is taken: another admin call is shed, and so is a client's
        // health check (the reserve is for agents and controllers)...
        let shed = shed_at_once(call(request(STATUS, client_named("carol"), None)));
        assert_eq!(status_code(&shed), EXHAUSTED);
        let health = "/grpc.health.v1.Health/Check";
        let shed = shed_at_once(call(request(health, client_named("carol"), None)));
        assert_eq!(status_code(&shed), EXHAUSTED);
        // ...an agent's heartbeat takes the reserve...
        let heartbeat = "/steward.v1.AgentControl/Heartbeat";
        let hb = call(request(heartbeat, Principal::Agent("n1".into()), None));
        // ...which is bounded too.
        let over = shed_at_once(call(request(
            heartbeat,
            Principal::Agent("n2".into()),
            None,
        )));
        assert_eq!(status_code(&over), EXHAUSTED);
        gate.add_permits(3);
        assert_eq!(status_code(&hb.await.expect("heartbeat")), 0);
        for answer in held {
            assert_eq!(status_code(&answer.await.expect("answer")), 0);
        }
        assert!(stats
            .refused()
            .iter()
            .any(|((path, reason), _)| path == heartbeat && *reason == "overloaded"));
        // A shed request gave back the caller slot it had taken.
        assert!(callers.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn requests_are_checked_against_the_callers_identity_and_token() {
        let layer = AccessLayer::enforcing(Some(Arc::new(Tokens)));
        let cancel = "/steward.v1.Admin/CancelJob";
        const DENIED: i32 = 7;
        const UNAUTHENTICATED: i32 = 16;
        // A viewer reads, does not cancel; an operator token raises it.
        assert_eq!(
            call(
                &layer,
                "/steward.v1.Admin/Status",
                Some(peer(viewer())),
                &[]
            )
            .await
            .0,
            0
        );
        assert_eq!(
            call(&layer, cancel, Some(peer(viewer())), &[]).await.0,
            DENIED
        );
        let (code, who) = call(
            &layer,
            cancel,
            Some(peer(viewer())),
            &[("authorization", "Bearer op-token")],
        )
        .await;
        assert_eq!((code, who), (0, Some(viewer())));
        // A bad token is refused, not ignored.
        assert_eq!(
            call(
                &layer,
                "/steward.v1.Admin/Status",
                Some(peer(viewer())),
                &[("authorization", "Bearer nope")]
            )
            .await
            .0,
            UNAUTHENTICATED
        );
        // No identity on the connection.
        assert_eq!(
            call(&layer, "/steward.v1.Admin/Status", None, &[]).await.0,
            UNAUTHENTICATED
        );
        // An agent certificate is no operator; unknown methods are not served.
        let agent = || Some(peer(Principal::Agent("n1".into())));
        assert_eq!(
            call(&layer, "/steward.v1.Admin/Status", agent(), &[])
                .await
                .0,
            DENIED
        );
        assert_eq!(
            call(&layer, "/steward.v1.Admin/Nope", agent(), &[]).await.0,
            12
        );
        // Forwarding: believed from a controller, refused from anyone else.
        let fwd = [(ON_BEHALF_OF, "spiffe://prod/client/viewer/v")];
        let (code, who) = call(&layer, cancel, Some(peer(Principal::Controller(2))), &fwd).await;
        assert_eq!(code, DENIED, "a forwarded viewer is still a viewer");
        assert_eq!(who, None);
        let (code, who) = call(
            &layer,
            "/steward.v1.Admin/Status",
            Some(peer(Principal::Controller(2))),
            &fwd,
        )
        .await;
        assert_eq!((code, who), (0, Some(viewer())));
        // A controller naming no caller holds no role of its own.
        assert_eq!(
            call(
                &layer,
                "/steward.v1.Admin/Status",
                Some(peer(Principal::Controller(2))),
                &[]
            )
            .await
            .0,
            DENIED
        );
        assert_eq!(
            call(&layer, "/steward.v1.Admin/Status", agent(), &fwd)
                .await
                .0,
            DENIED
        );
        let stats = layer.stats();
        assert!(stats.refused_total() >= 6, "{:?}", stats.refused());
        assert!(stats
            .refused()
            .iter()
            .any(|((path, reason), _)| path == "unknown" && *reason == "unknown_method"));
        // Without TLS the layer lets everything through.
        assert_eq!(call(&AccessLayer::open(), cancel, None, &[]).await.0, 0);
    }

    #[test]
    fn the_node_authorizer_rule_in_handlers() {
        let mut req = tonic::Request::new(());
        assert!(
            check_node(&req, "n1").is_ok(),
            "no TLS: no caller, no check"
        );
        req.extensions_mut().insert(Caller(
            Identity::new("prod", Principal::Agent("n1".into())).expect("id"),
        ));
        assert!(check_node(&req, "n1").is_ok());
        let e = check_node(&req, "n2").expect_err("another node");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    }
}
