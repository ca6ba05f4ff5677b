//! The access check in front of every Steward service: each request's method (its gRPC
//! path) is checked against `core::authz` with the caller's identity, which comes from
//! its TLS connection (`tls::PeerIdentity`), raised by a bearer token's role when the
//! request carries one (`authorization: Bearer TOKEN`). A refused request never reaches
//! its service: it is answered PERMISSION_DENIED (or UNAUTHENTICATED when the caller has
//! no identity at all), logged with the identity and counted.
//!
//! A controller forwarding an operator's call to the leader names the caller in
//! [`ON_BEHALF_OF`]; the header is believed only from a controller's connection.
//!
//! Without TLS (`--insecure`) there is no identity to check: the layer lets everything
//! through, and the daemons warn at every start.

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
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl AccessLayer {
    /// Checks every request (a TLS server).
    pub fn enforcing(tokens: Option<Arc<dyn TokenRoles>>) -> Self {
        AccessLayer {
            enforce: true,
            tokens,
            stats: Arc::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_REQUESTS)),
        }
    }

    /// Lets everything through (a plaintext server, `--insecure`).
    pub fn open() -> Self {
        AccessLayer {
            enforce: false,
            tokens: None,
            stats: Arc::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT_REQUESTS)),
        }
    }

    /// The same layer with at most `n` requests in flight (tests use a small one).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.in_flight = Arc::new(tokio::sync::Semaphore::new(n));
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
        let Ok(permit) = self.layer.in_flight.clone().try_acquire_owned() else {
            let path = req.uri().path().to_string();
            self.layer.stats.refuse(&path, "overloaded");
            tracing::warn!(%path, limit = MAX_IN_FLIGHT_REQUESTS, "overloaded: request shed");
            let status = Status::resource_exhausted(
                "the server is at its limit of requests in flight; retry with backoff",
            );
            return Box::pin(async move { Ok(status.into_http()) });
        };
        if !self.layer.enforce {
            return held(permit, oversize_is_exhaustion(self.inner.call(req)));
        }
        let path = req.uri().path().to_string();
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
                stats.allowed.fetch_add(1, Ordering::Relaxed);
                // The handler of a node-scoped call checks the node with this.
                req.extensions_mut().insert(Caller(who));
                req.extensions_mut().insert(CallPath(path));
                req.extensions_mut().insert(stats);
                held(permit, oversize_is_exhaustion(self.inner.call(req)))
            }
            Err((status, reason)) => {
                let peer = req
                    .extensions()
                    .get::<PeerIdentity>()
                    .map(|p| p.identity.uri())
                    .unwrap_or_else(|| "no identity".into());
                tracing::warn!(%path, caller = %peer, reason, message = %status.message(), "call refused");
                stats.refuse(&path, reason);
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// `call` with its in-flight permit held until the reply starts.
fn held<T: 'static>(
    permit: tokio::sync::OwnedSemaphorePermit,
    call: futures::future::BoxFuture<'static, T>,
) -> futures::future::BoxFuture<'static, T> {
    Box::pin(async move {
        let out = call.await;
        drop(permit);
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
            tracing::warn!(%path, caller = %who.uri(), %node, reason = "node", "call refused: not the caller's own node");
            if let Some(stats) = request.extensions().get::<Arc<AccessStats>>() {
                stats.refuse(path, "node");
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
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let g = gate.clone();
        let inner = tower::service_fn(move |_req: http::Request<()>| {
            let g = g.clone();
            async move {
                g.acquire().await.expect("gate").forget();
                Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
            }
        });
        let svc = AccessLayer::open().max_in_flight(2).layer(inner);
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
