//! The `/metrics` endpoint of agents and controllers, and which Prometheus exposition
//! format a scraper asked for. Prometheus asks for OpenMetrics in its `Accept` header;
//! `curl` and `promtool check metrics` read the classic text format 0.0.4. Both are served.

use std::future::Future;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

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
/// `render(openmetrics)`.
pub async fn serve<R>(
    listener: TcpListener,
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
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
        assert!(wants_openmetrics([prometheus]));
        assert!(!wants_openmetrics(["*/*"]));
        assert!(!wants_openmetrics([]));
        assert_eq!(content_type(false), PROMETHEUS_TEXT_CONTENT_TYPE);
    }
}
