//! Every gRPC channel and server Steward builds, in one place.
//!
//! Clients: [`ClientOptions`] says how to reach a peer (timeouts, keepalive, source
//! address); [`endpoint`], [`connect`] and [`ChannelPool`] build channels from it, and the
//! `*_client` functions wrap a channel in a generated client with the service's message
//! limits. Servers: [`bind`] reports a taken port as a start-up error, [`serve`] runs a
//! router on a bound listener with TCP_NODELAY on every accepted connection (tonic's own
//! flag reaches only listeners it binds itself), and the `*_server` functions apply the
//! message limits. TLS ([`crate::tls`]) and the access check ([`crate::access`]) come in
//! through [`ClientOptions::tls`] and [`ServerSecurity`], here and nowhere else.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steward_proto::v1::admin_client::AdminClient;
use steward_proto::v1::admin_server::{Admin, AdminServer};
use steward_proto::v1::agent_api_client::AgentApiClient;
use steward_proto::v1::agent_api_server::{AgentApi, AgentApiServer};
use steward_proto::v1::agent_control_client::AgentControlClient;
use steward_proto::v1::agent_control_server::{AgentControl, AgentControlServer};
use steward_proto::v1::chunk_service_client::ChunkServiceClient;
use steward_proto::v1::chunk_service_server::{ChunkService, ChunkServiceServer};
use steward_proto::v1::raft_service_client::RaftServiceClient;
use steward_proto::v1::raft_service_server::{RaftService, RaftServiceServer};
use steward_proto::{MAX_API_MESSAGE_BYTES, MAX_CHUNK_MESSAGE_BYTES, MAX_RAFT_MESSAGE_BYTES};
use tokio::net::TcpListener;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::{Channel, Endpoint, Server};
use tower::layer::util::{Identity as NoLayer, Stack};

use crate::access::AccessLayer;
use crate::tls::{HandshakeStats, ServerKind, Tls};

/// HTTP/2 keepalive: a ping after this much silence on a connection...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and the connection is dropped when the ping is not answered within this.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("`{addr}` is not HOST:PORT: {source}")]
    BadAddress {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// A listener that could not be bound: the most common start-up error, so it names what
/// the address is for.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {what} {addr}: {source}")]
pub struct BindError {
    pub what: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// How to reach a peer.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Deadline of every call on the channel; `None`: each call sets its own.
    pub call_timeout: Option<Duration>,
    /// Send from this address (a multi-homed host, or one loopback address per
    /// controller in tests); `None`: the kernel chooses.
    pub source_ip: Option<IpAddr>,
    /// Mutual TLS with this TLS dir, to servers of this kind; `None`: plaintext.
    pub tls: Option<(Tls, ServerKind)>,
    /// The node whose agent must answer (with TLS, checked against the server's
    /// certificate after the handshake); `None`: any server of the kind.
    pub node: Option<String>,
}

impl ClientOptions {
    pub fn new(connect_timeout: Duration) -> Self {
        ClientOptions {
            connect_timeout,
            call_timeout: None,
            source_ip: None,
            tls: None,
            node: None,
        }
    }

    /// Connects with mutual TLS (`Some`) to servers of `kind`, or in plaintext (`None`).
    pub fn tls(mut self, tls: Option<Tls>, kind: ServerKind) -> Self {
        self.tls = tls.map(|t| (t, kind));
        self
    }

    /// Only the agent of `node` may answer: over TLS its certificate must name it (an
    /// address registered by, or since reused by, another node is refused).
    pub fn node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// Sends from `ip` unless it is the unspecified address (0.0.0.0 or ::).
    pub fn source_ip(mut self, ip: IpAddr) -> Self {
        self.source_ip = (!ip.is_unspecified()).then_some(ip);
        self
    }
}

/// The endpoint for `addr` (`HOST:PORT`) with `options`.
pub fn endpoint(addr: &str, options: &ClientOptions) -> Result<Endpoint, TransportError> {
    let mut ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| TransportError::BadAddress {
            addr: addr.to_string(),
            source,
        })?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .local_address(options.source_ip);
    if let Some(t) = options.call_timeout {
        ep = ep.timeout(t);
    }
    Ok(ep)
}

/// The connector of a TLS channel to `addr`: resolve, TCP connect from the source
/// address, handshake, all within the connect timeout.
fn tls_connector(
    addr: &str,
    (tls, kind): (Tls, ServerKind),
    options: &ClientOptions,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let (addr, source, timeout) = (addr.to_string(), options.source_ip, options.connect_timeout);
    let node = options.node.clone();
    tower::service_fn(move |_: http::Uri| {
        let (addr, tls, node) = (addr.clone(), tls.clone(), node.clone());
        async move {
            let resolved = tokio::net::lookup_host(&addr)
                .await?
                .next()
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{addr} resolves to no address"),
                    )
                })?;
            crate::tls::connect(&tls, kind, node.as_deref(), resolved, source, timeout)
                .await
                .map(hyper_util::rt::TokioIo::new)
        }
    })
}

/// A channel to `addr`, connected now.
pub async fn connect(addr: &str, options: &ClientOptions) -> Result<Channel, TransportError> {
    let ep = endpoint(addr, options)?;
    let connected = match &options.tls {
        None => ep.connect().await,
        Some(tls) => {
            ep.connect_with_connector(tls_connector(addr, tls.clone(), options))
                .await
        }
    };
    connected.map_err(|source| TransportError::Connect {
        addr: addr.to_string(),
        source,
    })
}

/// A channel to `addr` that connects on first use and reconnects by itself.
pub fn lazy_channel(addr: &str, options: &ClientOptions) -> Result<Channel, TransportError> {
    let ep = endpoint(addr, options)?;
    Ok(match &options.tls {
        None => ep.connect_lazy(),
        Some(tls) => ep.connect_with_connector_lazy(tls_connector(addr, tls.clone(), options)),
    })
}

/// One lazily connected channel per address (and per expected node, for agents), reused
/// by every caller.
pub struct ChannelPool {
    options: ClientOptions,
    channels: Mutex<HashMap<(String, Option<String>), Channel>>,
}

impl ChannelPool {
    pub fn new(options: ClientOptions) -> Self {
        ChannelPool {
            options,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A channel to whichever server of the pool's kind is at `addr`.
    pub fn get(&self, addr: &str) -> Result<Channel, TransportError> {
        self.channel(addr, None)
    }

    /// A channel to the agent of `node` at `addr`: the connection is refused unless that
    /// agent answers ([`ClientOptions::node`]).
    pub fn get_node(&self, addr: &str, node: &str) -> Result<Channel, TransportError> {
        self.channel(addr, Some(node))
    }

    fn channel(&self, addr: &str, node: Option<&str>) -> Result<Channel, TransportError> {
        let key = (addr.to_string(), node.map(str::to_string));
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(&key) {
            return Ok(ch.clone());
        }
        let options = match node {
            Some(n) => self.options.clone().node(n),
            None => self.options.clone(),
        };
        let ch = lazy_channel(addr, &options)?;
        channels.insert(key, ch.clone());
        Ok(ch)
    }
}

pub fn admin_client(ch: Channel) -> AdminClient<Channel> {
    AdminClient::new(ch)
        .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_API_MESSAGE_BYTES)
}

pub fn agent_control_client(ch: Channel) -> AgentControlClient<Channel> {
    AgentControlClient::new(ch)
        .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_API_MESSAGE_BYTES)
}

pub fn agent_api_client(ch: Channel) -> AgentApiClient<Channel> {
    AgentApiClient::new(ch)
        .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_API_MESSAGE_BYTES)
}

pub fn chunk_client(ch: Channel) -> ChunkServiceClient<Channel> {
    ChunkServiceClient::new(ch)
        .max_decoding_message_size(MAX_CHUNK_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CHUNK_MESSAGE_BYTES)
}

pub fn raft_client(ch: Channel) -> RaftServiceClient<Channel> {
    RaftServiceClient::new(ch)
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
}

pub fn admin_server<S: Admin>(service: S) -> AdminServer<S> {
    AdminServer::new(service)
        .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_API_MESSAGE_BYTES)
}

pub fn agent_control_server<S: AgentControl>(service: S) -> AgentControlServer<S> {
    AgentControlServer::new(service)
        .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_API_MESSAGE_BYTES)
}

pub fn agent_api_server<S: AgentApi>(service: S) -> AgentApiServer<S> {
    AgentApiServer::new(service)
        .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_API_MESSAGE_BYTES)
}

pub fn chunk_server<S: ChunkService>(service: S) -> ChunkServiceServer<S> {
    ChunkServiceServer::new(service)
        .max_decoding_message_size(MAX_CHUNK_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CHUNK_MESSAGE_BYTES)
}

pub fn raft_server<S: RaftService>(service: S) -> RaftServiceServer<S> {
    RaftServiceServer::new(service)
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
}

/// Binds `addr`; `what` names the address in the error ("api address", ...).
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { what, addr, source })
}

/// How a server admits callers: mutual TLS and the access check on every request, or
/// neither (plaintext, `--insecure`).
#[derive(Clone)]
pub struct ServerSecurity {
    tls: Option<Tls>,
    access: AccessLayer,
    handshakes: Arc<HandshakeStats>,
}

impl std::fmt::Debug for ServerSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSecurity")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl ServerSecurity {
    /// Plaintext, every request admitted.
    pub fn insecure() -> Self {
        ServerSecurity {
            tls: None,
            access: AccessLayer::open(),
            handshakes: Arc::default(),
        }
    }

    /// Mutual TLS with `tls`; every request checked (`core::authz`), with bearer tokens
    /// resolved by `tokens`.
    pub fn mutual_tls(tls: Tls, tokens: Option<Arc<dyn crate::access::TokenRoles>>) -> Self {
        ServerSecurity {
            tls: Some(tls),
            access: AccessLayer::enforcing(tokens),
            handshakes: Arc::default(),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS dir this server uses (its clients of peers use it too).
    pub fn tls(&self) -> Option<Tls> {
        self.tls.clone()
    }

    pub fn handshakes(&self) -> Arc<HandshakeStats> {
        self.handshakes.clone()
    }

    pub fn access(&self) -> Arc<crate::access::AccessStats> {
        self.access.stats()
    }
}

/// Registers the admission counters of `servers` (`(name, security)`: "api", "raft") in
/// `reg`: TLS handshakes accepted and refused (by reason), and requests allowed and
/// refused (by method and reason). Prometheus names: `steward_tls_handshakes_*_total`,
/// `steward_auth_*_total`. Every refusal is also logged with the caller's identity.
pub fn register_security_metrics(
    reg: &mut prometheus_client::registry::Registry,
    servers: &[(&str, &ServerSecurity)],
    tls: Option<&Tls>,
) {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use std::sync::atomic::Ordering::Relaxed;
    type Labels = Vec<(String, String)>;
    let label = |pairs: &[(&str, &str)]| -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let accepted: Family<Labels, Counter> = Family::default();
    let refused: Family<Labels, Counter> = Family::default();
    let allowed: Family<Labels, Counter> = Family::default();
    let denied: Family<Labels, Counter> = Family::default();
    for (server, security) in servers {
        if !security.is_tls() {
            continue;
        }
        let h = security.handshakes();
        accepted
            .get_or_create(&label(&[("server", server)]))
            .inc_by(h.accepted.load(Relaxed));
        for (reason, n) in [
            ("handshake", h.failed.load(Relaxed)),
            ("no_identity", h.no_identity.load(Relaxed)),
            ("shed", h.shed.load(Relaxed)),
            ("peer_limit", h.peer_limit.load(Relaxed)),
        ] {
            refused
                .get_or_create(&label(&[("server", server), ("reason", reason)]))
                .inc_by(n);
        }
        let a = security.access();
        allowed
            .get_or_create(&label(&[("server", server)]))
            .inc_by(a.allowed.load(Relaxed));
        for ((method, reason), n) in a.refused() {
            denied
                .get_or_create(&label(&[
                    ("server", server),
                    ("method", &method),
                    ("reason", reason),
                ]))
                .inc_by(n);
        }
    }
    reg.register(
        "steward_tls_handshakes_accepted",
        "TLS connections accepted (the peer proved an identity of this cluster).",
        accepted,
    );
    reg.register(
        "steward_tls_handshakes_refused",
        "TLS connections refused: a failed handshake (plaintext, no certificate, another CA, expired), no identity of this cluster, or shed (too many handshakes in progress).",
        refused,
    );
    reg.register(
        "steward_auth_allowed",
        "Requests the access check let through.",
        allowed,
    );
    if let Some(tls) = tls {
        let reloads: Counter = Counter::default();
        reloads.inc_by(tls.reloads());
        reg.register(
            "steward_tls_reloads",
            "Times the TLS files were reloaded after they changed on disk.",
            reloads,
        );
        let failures: Counter = Counter::default();
        failures.inc_by(tls.reload_failures());
        reg.register(
            "steward_tls_reload_failures",
            "Times changed TLS files did not load (or named another identity); the previous ones stayed in use.",
            failures,
        );
    }
    reg.register(
        "steward_auth_refused",
        "Requests refused by the access check, by method and reason (role, node, no_identity, bad_token, forged_forward, bad_forward, unknown_method) or shed (overloaded, caller_limit).",
        denied,
    );
}

/// The server builder every Steward server starts from, and its router.
pub type GrpcServer = Server<Stack<AccessLayer, NoLayer>>;
pub type GrpcRouter = Router<Stack<AccessLayer, NoLayer>>;

/// The gRPC server builder every Steward server starts from, with `security`'s access
/// check in front of every service.
pub fn grpc_server(security: &ServerSecurity) -> GrpcServer {
    let mut server = Server::builder()
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
        .timeout(MAX_REQUEST_TIME)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if security.is_tls() {
        // An identity is checked at the handshake: connections are renewed now and then,
        // so a replaced or expired certificate stops being honoured.
        server = server.max_connection_age(MAX_TLS_CONNECTION_AGE);
    }
    server.layer(security.access.clone())
}

/// Streams one HTTP/2 connection may have open at once on a server.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Longest a server works on one request (a client's shorter deadline wins): a stalled
/// client cannot hold a handler forever. It bounds the time to a reply's headers; a
/// server-streaming reply (an agent's assignment watch) then runs under its client's
/// deadline and the keepalive.
pub const MAX_REQUEST_TIME: Duration = Duration::from_secs(300);

/// Longest a TLS connection is kept before the server asks the client to reconnect (and
/// so to present its current certificate again).
pub const MAX_TLS_CONNECTION_AGE: Duration = Duration::from_secs(3600);

/// Serves `router` on `listener` until `shutdown` resolves, with TLS when `security`
/// has it.
pub async fn serve(
    router: GrpcRouter,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    security: ServerSecurity,
) -> Result<(), tonic::transport::Error> {
    match &security.tls {
        None => {
            router
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        }
        Some(tls) => {
            let incoming = crate::tls::accept(listener, tls.clone(), security.handshakes.clone());
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}

/// gRPC reflection (v1 and v1alpha, which grpcurl and older tools ask for) over Steward's
/// and gRPC health's descriptors.
pub fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(steward_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(steward_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn options_and_addresses() {
        let o = ClientOptions::new(Duration::from_millis(500))
            .source_ip("0.0.0.0".parse().expect("ip"));
        assert_eq!(
            o.source_ip, None,
            "the unspecified address means no binding"
        );
        let o = o.source_ip("127.0.0.12".parse().expect("ip"));
        assert!(o.source_ip.is_some());
        assert!(matches!(
            endpoint("not an address", &o),
            Err(TransportError::BadAddress { .. })
        ));
        let pool = ChannelPool::new(o);
        assert!(pool.get("127.0.0.1:1").is_ok(), "lazy: no connection yet");
    }

    #[tokio::test]
    async fn a_tls_server_and_its_clients_through_the_one_transport() {
        use crate::tls::issue::{create_ca, create_cert, write_cert};
        use steward_core::identity::{Identity, Principal, Role};
        let root = tempfile::tempdir().expect("tempdir");
        let ca = create_ca("prod", 30).expect("ca");
        let tls_for = |name: &str, p: Principal| {
            let dir = root.path().join(name);
            let id = Identity::new("prod", p).expect("id");
            write_cert(&dir, &create_cert(&ca, &id, 30, 0).expect("cert"), true).expect("write");
            Tls::load(&dir).expect("load")
        };
        let security = ServerSecurity::mutual_tls(tls_for("ctl", Principal::Controller(1)), None);
        let listener = bind("api address", "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let router = grpc_server(&security).add_service(health);
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(serve(
            router,
            listener,
            stop.clone().cancelled_owned(),
            security.clone(),
        ));
        let check = |ch: Channel| async move {
            tonic_health::pb::health_client::HealthClient::new(ch)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
        };
        let client = tls_for(
            "alice",
            Principal::Client {
                name: "alice".into(),
                role: Role::Viewer,
            },
        );
        let options = ClientOptions::new(Duration::from_secs(2))
            .call_timeout(Duration::from_secs(5))
            .tls(Some(client), ServerKind::Controller);
        let ch = connect(&addr, &options).await.expect("TLS connect");
        check(ch).await.expect("served over TLS");
        let pool = ChannelPool::new(options);
        check(pool.get(&addr).expect("lazy"))
            .await
            .expect("a lazy TLS channel");
        // Plaintext to a TLS server: refused.
        let plain = ClientOptions::new(Duration::from_secs(2)).call_timeout(Duration::from_secs(5));
        let refused = match connect(&addr, &plain).await {
            Ok(ch) => check(ch).await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "plaintext is refused");
        assert_eq!(
            security
                .handshakes()
                .accepted
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert_eq!(
            security
                .access()
                .allowed
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn an_oversize_message_is_resource_exhausted_and_the_server_stays_up() {
        let security = ServerSecurity::insecure();
        let listener = bind("api address", "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let router = grpc_server(&security).add_service(health.max_decoding_message_size(4 << 20));
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(serve(
            router,
            listener,
            stop.clone().cancelled_owned(),
            security,
        ));
        let ch = connect(&addr, &ClientOptions::new(Duration::from_secs(2)))
            .await
            .expect("connect");
        let mut client = tonic_health::pb::health_client::HealthClient::new(ch);
        let big = tonic_health::pb::HealthCheckRequest {
            service: "x".repeat(5 << 20),
        };
        let e = client.check(big).await.expect_err("over the 4 MiB limit");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        let started = std::time::Instant::now();
        client
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("still serving");
        assert!(started.elapsed() < Duration::from_secs(1));
        stop.cancel();
    }
}
