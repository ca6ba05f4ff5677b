//! steward-runtime: the tokio-level pieces that controllers, agents and the CLI share.
//!
//! - `transport`: every gRPC channel and server Steward builds: endpoint options (connect
//!   and call timeouts, HTTP/2 keepalive, TCP_NODELAY, source address), message-size limits
//!   per service, listeners, gRPC health and reflection. TLS will be added here, once.
//! - `worker`: background work behind one abstraction: a name, a state, error counts and
//!   back-off, tracked tasks and an ordered shutdown; `steward status` lists them.
//! - `metrics_http`: the `/metrics` endpoint, with Prometheus exposition-format negotiation.
//!
//! Depends on steward-proto (for the generated clients and servers) and tokio; must not
//! depend on steward-controller, steward-agent, rocksdb or nvml.

pub mod metrics_http;
pub mod transport;
pub mod worker;

pub use tokio_util::sync::CancellationToken;
pub use worker::{Next, Worker, WorkerError, WorkerSet, WorkerStatus};
