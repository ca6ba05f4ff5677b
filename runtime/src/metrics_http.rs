//! The `/metrics` endpoint of agents and controllers, and which Prometheus exposition
//! format a scraper asked for. Prometheus asks for OpenMetrics in its `Accept` header;
//! `curl` and `promtool check metrics` read the classic text format 0.0.4. Both are served.

use std::future::Future;

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::tls::{Tls, TlsConn, TlsIncoming};

/// `Content-Type` of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the classic Prometheus text format.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether any of the `Accept` header values asks for OpenMetrics.
pub fn wants_openmetrics<'a>(accept: impl IntoIterator<Item = &'a str>) -> bool {
    accept
        .into_iter()
        .any(|v| v.contains("application/openmetrics-text"))
}

/// Encodes `registry` in the chosen format. Encoding into a `String` cannot fail short of a
/// bug in a metric's encoder; that is logged and what was written is returned.
pub fn encode(registry: &Registry, openmetrics: bool) -> String {
    let mut out = String::new();
    let result = if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, registry)
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
    };
    if result.is_err() {
        tracing::warn!("metrics encoding failed");
    }
    out
}

pub fn content_type(openmetrics: bool) -> &'static str {
    if openmetrics {
        OPENMETRICS_CONTENT_TYPE
    } else {
        PROMETHEUS_TEXT_CONTENT_TYPE
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`, rendering each scrape with
/// `render(openmetrics)`. With `tls`, only over mutual TLS, to clients with a certificate
/// of the cluster (any identity: a Prometheus has its own client certificate).
pub async fn serve<R>(
    listener: TcpListener,
    tls: Option<Tls>,
    render: R,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    R: Fn(bool) -> String + Clone + Send + Sync + 'static,
{
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| {
            let render = render.clone();
            async move {
                let om = wants_openmetrics(
                    headers
                        .get_all(axum::http::header::ACCEPT)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                ([("content-type", content_type(om))], render(om))
            }
        }),
    );
    let served = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            let local = listener.local_addr();
            let incoming = crate::tls::accept_http1(listener, tls, Arc::default());
            axum::serve(TlsListener { incoming, local }, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

/// The TLS connections of a listener, as axum takes them.
struct TlsListener {
    incoming: TlsIncoming,
    local: std::io::Result<SocketAddr>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConn, SocketAddr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(conn)) => {
                    let remote = conn
                        .peer()
                        .remote
                        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                    return (conn, remote);
                }
                Some(Err(_)) => continue,
                // The accept loop ends only with its listener.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /metrics` over TLS (HTTP/1.1) with `client`'s certificate; the body, or the
    /// I/O error (a refused handshake).
    async fn scrape_tls(
        addr: SocketAddr,
        client: &Tls,
        kind: crate::tls::ServerKind,
    ) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut config = (*client.client_config()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = client
            .server_name(kind)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let mut stream = connector.connect(name, tcp).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        stream.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn metrics_over_tls_need_a_certificate_of_the_cluster() {
        use crate::tls::issue::{create_ca, create_cert, write_cert};
        use steward_core::identity::{Identity, Principal, Role};
        let root = tempfile::tempdir().expect("tempdir");
        let tls_for = |name: &str, cluster: &str, ca: &crate::tls::issue::CaPem, p: Principal| {
            let dir = root.path().join(name);
            let id = Identity::new(cluster, p).expect("id");
            write_cert(&dir, &create_cert(ca, &id, 30, 0).expect("cert"), true).expect("write");
            Tls::load(&dir).expect("load")
        };
        let ca = create_ca("prod", 30).expect("ca");
        let server = tls_for("ctl", "prod", &ca, Principal::Controller(1));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(serve(
            listener,
            Some(server),
            |_| "steward_up 1\n".to_string(),
            stop.clone().cancelled_owned(),
        ));
        let prometheus = tls_for(
            "prom",
            "prod",
            &ca,
            Principal::Client {
                name: "prometheus".into(),
                role: Role::Viewer,
            },
        );
        let body = scrape_tls(addr, &prometheus, crate::tls::ServerKind::Controller)
            .await
            .expect("scraped over TLS");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("steward_up 1"), "{body}");
        // Another CA's client: refused.
        let other = create_ca("prod", 30).expect("ca");
        let stranger = tls_for(
            "stranger",
            "prod",
            &other,
            Principal::Client {
                name: "prometheus".into(),
                role: Role::Viewer,
            },
        );
        let refused = scrape_tls(addr, &stranger, crate::tls::ServerKind::Controller).await;
        assert!(
            refused.as_ref().map_or(true, |b| !b.contains("steward_up")),
            "{refused:?}"
        );
        // Plain HTTP: no metrics.
        let plain = {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
            let _ = s
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).to_string()
        };
        assert!(!plain.contains("steward_up"), "{plain}");
        stop.cancel();
    }

    #[test]
    fn negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
        assert!(wants_openmetrics([prometheus]));
        assert!(!wants_openmetrics(["*/*"]));
        assert!(!wants_openmetrics([]));
        assert_eq!(content_type(false), PROMETHEUS_TEXT_CONTENT_TYPE);
    }
}
