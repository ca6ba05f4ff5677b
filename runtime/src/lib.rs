//! steward-runtime: the tokio-level pieces that controllers, agents and the CLI share.
//!
//! - `transport`: every gRPC channel and server Steward builds: endpoint options (connect
//!   and call timeouts, HTTP/2 keepalive, TCP_NODELAY, source address), message-size limits
//!   per service, listeners, gRPC health and reflection.
//! - `tls`: mutual TLS: the TLS dir (`ca.pem`, `cert.pem`, `key.pem`) reloaded when it
//!   changes, accepted connections with their peer's identity, client connections, and
//!   issuing the cluster's CA and certificates (rcgen).
//! - `access`: the tower layer that checks every request against `core::authz` with the
//!   caller's identity (and bearer token), in front of every service `transport` builds.
//! - `worker`: background work behind one abstraction: a name, a state, error counts and
//!   back-off, tracked tasks and an ordered shutdown; `steward status` lists them.
//! - `metrics_http`: the `/metrics` endpoint, with Prometheus exposition-format negotiation.
//! - `log_gate`: refusal log lines thinned to one per reason a second under a flood.
//!
//! Depends on steward-core (identities), steward-proto (for the generated clients and
//! servers), tokio and rustls (with ring); must not
//! depend on steward-controller, steward-agent, rocksdb or nvml.

pub mod access;
pub mod log_gate;
pub mod metrics_http;
pub mod tls;
pub mod transport;
pub mod worker;

pub use tokio_util::sync::CancellationToken;
pub use worker::{Next, Worker, WorkerError, WorkerSet, WorkerStatus};
