//! Prometheus `/metrics` of a controller (`steward_<subsystem>_<name>_<unit>`), rendered
//! fresh on each scrape from Raft metrics and the liveness tracker.

use crate::api::ApiContext;
use openraft::ServerState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabel {
    health: String,
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    reg.register(name, help, g);
}

/// The exposition text: OpenMetrics, or the classic text format 0.0.4 (what
/// `promtool check metrics` reads).
pub fn render(ctx: &ApiContext, openmetrics: bool) -> String {
    let mut reg = Registry::default();
    let m = ctx.raft.metrics();
    gauge(
        &mut reg,
        "steward_raft_term",
        "Current Raft term",
        m.current_term as i64,
    );
    gauge(
        &mut reg,
        "steward_raft_is_leader",
        "1 if this controller leads.",
        i64::from(m.state == ServerState::Leader),
    );
    gauge(
        &mut reg,
        "steward_raft_last_log_index",
        "Index of the last log entry",
        m.last_log_index.unwrap_or(0) as i64,
    );
    gauge(
        &mut reg,
        "steward_raft_applied_index",
        "Index of the last applied entry",
        m.last_applied.map_or(0, |l| l.index) as i64,
    );
    let applied = ctx.raft.view().read();
    let nodes: Family<StateLabel, Gauge> = Family::default();
    for state in ["ready", "suspect", "down"] {
        let n = applied
            .state
            .nodes
            .values()
            .filter(|r| r.health.name() == state)
            .count();
        nodes
            .get_or_create(&StateLabel {
                state: state.into(),
            })
            .set(n as i64);
    }
    reg.register("steward_nodes", "Agents' nodes by health", nodes);
    let ages = Histogram::new([0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]);
    if m.state == ServerState::Leader {
        for id in applied.state.nodes.keys() {
            if let Some(ms) = ctx.liveness.age_ms(id) {
                ages.observe(ms as f64 / 1000.0);
            }
        }
    }
    // GPUs by the health their agents last reported (leader only: telemetry rides on
    // heartbeats).
    let gpus: Family<HealthLabel, Gauge> = Family::default();
    if m.state == ServerState::Leader {
        for id in applied.state.nodes.keys() {
            if let Some(t) = ctx.liveness.telemetry(id) {
                for g in &t.gpus {
                    gpus.get_or_create(&HealthLabel {
                        health: g.health.clone(),
                    })
                    .inc();
                }
            }
        }
        for health in ["healthy", "degraded", "failed"] {
            let _ = gpus.get_or_create(&HealthLabel {
                health: health.into(),
            });
        }
        reg.register(
            "steward_gpus",
            "GPUs by the health their agents report (leader only)",
            gpus,
        );
    }
    drop(applied);
    reg.register(
        "steward_liveness_heartbeat_age_seconds",
        "Age of each node's last heartbeat (leader only)",
        ages,
    );
    ctx.raft.peers().timings.register(&mut reg);
    let servers: Vec<_> = ctx.security.iter().map(|(n, s)| (*n, s)).collect();
    let tls = ctx.security.first().and_then(|(_, s)| s.tls());
    steward_runtime::transport::register_security_metrics(&mut reg, &servers, tls.as_ref());
    steward_runtime::metrics_http::encode(&reg, openmetrics)
}
