//! Every gRPC channel and server Steward builds, in one place.
//!
//! Clients: [`ClientOptions`] says how to reach a peer (timeouts, keepalive, source
//! address); [`endpoint`], [`connect`] and [`ChannelPool`] build channels from it, and the
//! `*_client` functions wrap a channel in a generated client with the service's message
//! limits. Servers: [`bind`] reports a taken port as a start-up error, [`serve`] runs a
//! router on a bound listener with TCP_NODELAY on every accepted connection (tonic's own
//! flag reaches only listeners it binds itself), and the `*_server` functions apply the
//! message limits. TLS, when it comes, is added here and nowhere else.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
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
}

impl ClientOptions {
    pub fn new(connect_timeout: Duration) -> Self {
        ClientOptions {
            connect_timeout,
            call_timeout: None,
            source_ip: None,
        }
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

/// A channel to `addr`, connected now.
pub async fn connect(addr: &str, options: &ClientOptions) -> Result<Channel, TransportError> {
    endpoint(addr, options)?
        .connect()
        .await
        .map_err(|source| TransportError::Connect {
            addr: addr.to_string(),
            source,
        })
}

/// A channel to `addr` that connects on first use and reconnects by itself.
pub fn lazy_channel(addr: &str, options: &ClientOptions) -> Result<Channel, TransportError> {
    Ok(endpoint(addr, options)?.connect_lazy())
}

/// One lazily connected channel per address, reused by every caller.
pub struct ChannelPool {
    options: ClientOptions,
    channels: Mutex<HashMap<String, Channel>>,
}

impl ChannelPool {
    pub fn new(options: ClientOptions) -> Self {
        ChannelPool {
            options,
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, addr: &str) -> Result<Channel, TransportError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let ch = lazy_channel(addr, &self.options)?;
        channels.insert(addr.to_string(), ch.clone());
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

/// The gRPC server builder every Steward server starts from.
pub fn grpc_server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    router
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
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
}
