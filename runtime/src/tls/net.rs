//! TLS on the wire: a listener's accepted connections (handshakes run concurrently, each
//! bounded by [`HANDSHAKE_TIMEOUT`], and the peer's identity attached for tonic), and the
//! client's connections.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use steward_core::identity::{Identity, Principal};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::{identity_of, ServerKind, Tls, TlsError, HANDSHAKE_TIMEOUT};

/// Handshakes in progress on one listener at most; past it new connections are closed
/// (a flood of idle TCP connections cannot hold memory).
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Open connections one peer address may hold on one listener; past it, new ones from
/// that address are closed before the handshake (one misbehaving client cannot take
/// every file descriptor).
pub const MAX_CONNECTIONS_PER_PEER: usize = 512;

/// Live connections by peer address, for [`MAX_CONNECTIONS_PER_PEER`].
#[derive(Default)]
struct PeerCounts(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One counted connection; dropping it frees the peer's slot.
struct PeerSlot {
    counts: Arc<PeerCounts>,
    ip: std::net::IpAddr,
}

impl PeerCounts {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, limit: usize) -> Option<PeerSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Who is on the other end of an accepted connection: what its certificate names. tonic
/// puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub identity: Identity,
    pub remote: Option<SocketAddr>,
}

/// A connection accepted with TLS, with its peer.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: PeerIdentity,
    /// Held while the connection lives.
    _slot: PeerSlot,
}

impl TlsConn {
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Connections refused at or right after the handshake, by reason, for `/metrics` and
/// tests.
#[derive(Debug, Default)]
pub struct HandshakeStats {
    pub accepted: AtomicU64,
    /// The handshake failed: plaintext, no certificate, another CA, expired, timed out.
    pub failed: AtomicU64,
    /// The certificate was good but named no identity of this cluster.
    pub no_identity: AtomicU64,
    /// Closed at once: too many handshakes in progress.
    pub shed: AtomicU64,
    /// Closed at once: the peer address holds [`MAX_CONNECTIONS_PER_PEER`] connections.
    pub peer_limit: AtomicU64,
    /// The refusals' log lines, thinned per reason under a flood (the counts above stay
    /// exact).
    pub logs: crate::log_gate::LogGate,
}

/// The stream of TLS connections accepted on a listener.
pub type TlsIncoming =
    Pin<Box<dyn futures::Stream<Item = Result<TlsConn, std::io::Error>> + Send + 'static>>;

/// Accepts connections on `listener` and runs their handshakes with `tls`'s current
/// server configuration; yields the ones whose peer names an identity of our cluster.
/// Refusals are logged (with the remote address and why) and counted in `stats`.
pub fn accept(listener: TcpListener, tls: Tls, stats: Arc<HandshakeStats>) -> TlsIncoming {
    accept_with(listener, tls, stats, false, MAX_CONNECTIONS_PER_PEER)
}

/// Like [`accept`], for an HTTP/1.1 server (`/metrics`).
pub fn accept_http1(listener: TcpListener, tls: Tls, stats: Arc<HandshakeStats>) -> TlsIncoming {
    accept_with(listener, tls, stats, true, MAX_CONNECTIONS_PER_PEER)
}

/// Like [`accept`], with at most `per_peer` connections from one address.
pub fn accept_limited(
    listener: TcpListener,
    tls: Tls,
    stats: Arc<HandshakeStats>,
    per_peer: usize,
) -> TlsIncoming {
    accept_with(listener, tls, stats, false, per_peer)
}

fn accept_with(
    listener: TcpListener,
    tls: Tls,
    stats: Arc<HandshakeStats>,
    http1: bool,
    per_peer: usize,
) -> TlsIncoming {
    let peers = Arc::new(PeerCounts::default());
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsConn>(64);
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            // The listener closes as soon as the server stops taking connections, so a
            // new client is refused at once rather than left hanging.
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = peers.take(remote.ip(), per_peer) else {
                stats.peer_limit.fetch_add(1, Ordering::Relaxed);
                if let Some(unlogged) = stats.logs.pass("peer_limit") {
                    tracing::warn!(%remote, per_peer, unlogged_since_last = unlogged,
                        "too many connections from this address: connection closed");
                }
                continue;
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                stats.shed.fetch_add(1, Ordering::Relaxed);
                if let Some(unlogged) = stats.logs.pass("shed") {
                    tracing::warn!(%remote, unlogged_since_last = unlogged,
                        "too many TLS handshakes in progress: connection closed");
                }
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (tls, tx, stats) = (tls.clone(), tx.clone(), stats.clone());
            tokio::spawn(async move {
                let permit = permit;
                let acceptor = tokio_rustls::TlsAcceptor::from(match http1 {
                    true => tls.http1_server_config(),
                    false => tls.server_config(),
                });
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            if let Some(unlogged) = stats.logs.pass("handshake") {
                                tracing::info!(%remote, error = %e, unlogged_since_last = unlogged,
                                    "TLS handshake refused");
                            }
                            return;
                        }
                        Err(_) => {
                            stats.failed.fetch_add(1, Ordering::Relaxed);
                            if let Some(unlogged) = stats.logs.pass("handshake") {
                                tracing::info!(%remote, unlogged_since_last = unlogged,
                                    "TLS handshake timed out");
                            }
                            return;
                        }
                    };
                let ours = tls.identity().cluster;
                let peer = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .ok_or_else(|| TlsError::Identity("no client certificate".into()))
                    .and_then(identity_of)
                    .and_then(|id| {
                        if id.cluster == ours {
                            Ok(id)
                        } else {
                            Err(TlsError::Identity(format!(
                                "{} is of cluster {}, not {ours}",
                                id.uri(),
                                id.cluster
                            )))
                        }
                    });
                // The handshake is over: its slot is free while the connection waits to be
                // taken by the server.
                drop(permit);
                match peer {
                    Ok(identity) => {
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        let conn = TlsConn {
                            _slot: slot,
                            stream,
                            peer: PeerIdentity {
                                identity,
                                remote: Some(remote),
                            },
                        };
                        let _ = tx.send(conn).await;
                    }
                    Err(e) => {
                        stats.no_identity.fetch_add(1, Ordering::Relaxed);
                        if let Some(unlogged) = stats.logs.pass("no_identity") {
                            tracing::info!(%remote, error = %e, unlogged_since_last = unlogged,
                                "TLS peer refused");
                        }
                    }
                }
            });
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (Ok(c), rx))
    }))
}

/// A client connection to `addr` over TLS with `tls`'s current client configuration:
/// TCP connect and handshake together bounded by `timeout`; the server must prove it is a
/// server of our cluster of `kind`, and, when `node` is set, the agent of that node (its
/// certificate must name it: an address another node registered, or one reused by
/// another node since, is refused with `PermissionDenied`).
pub async fn connect(
    tls: &Tls,
    kind: ServerKind,
    node: Option<&str>,
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let name = tls
        .server_name(kind)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(tls.client_config());
    let attempt = async move {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        connector.connect(name, tcp).await
    };
    let stream = tokio::time::timeout(timeout, attempt).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("TLS connection to {addr} took over {timeout:?}"),
        )
    })??;
    if let Some(node) = node {
        check_server_node(&stream, &tls.identity().cluster, node, addr)?;
    }
    Ok(stream)
}

/// Fails unless the server's certificate names the agent of `node` in `cluster`.
fn check_server_node(
    stream: &tokio_rustls::client::TlsStream<TcpStream>,
    cluster: &str,
    node: &str,
    addr: SocketAddr,
) -> Result<(), std::io::Error> {
    let refused = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{addr} is not the agent of node `{node}`: {why}"),
        )
    };
    let cert = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| refused("it presented no certificate".into()))?;
    let identity = identity_of(cert).map_err(|e| refused(e.to_string()))?;
    match &identity.principal {
        Principal::Agent(n) if n == node && identity.cluster == cluster => Ok(()),
        _ => Err(refused(format!("its certificate names {}", identity.uri()))),
    }
}
