//! Prometheus `/metrics` of an agent: GPU series under dcgm-exporter's names and labels (so
//! NVIDIA's stock Grafana dashboard works) and host gauges under node_exporter's names.
//! Sampled on each scrape; a field the GPU does not support is left out.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::hardware::{host, GpuInfo, GpuProbe, GpuSample};

#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DcgmLabels {
    gpu: String,
    UUID: String,
    pci_bus_id: String,
    device: String,
    modelName: String,
    Hostname: String,
}

type F64Gauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// dcgm-exporter field name, help, and how to read it from a sample.
type Field = (
    &'static str,
    &'static str,
    fn(&GpuInfo, &GpuSample) -> Option<f64>,
);

const FIELDS: &[Field] = &[
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)", |_, s| {
        s.sm_util_pct.map(f64::from)
    }),
    (
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "Memory utilization (in %)",
        |_, s| s.mem_util_pct.map(f64::from),
    ),
    (
        "DCGM_FI_DEV_FB_USED",
        "Framebuffer memory used (in MiB)",
        |_, s| s.memory_used_mib.map(|v| v as f64),
    ),
    (
        "DCGM_FI_DEV_FB_FREE",
        "Framebuffer memory free (in MiB)",
        |g, s| Some(g.memory_total_mib?.saturating_sub(s.memory_used_mib?) as f64),
    ),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)", |_, s| {
        s.temperature_c.map(f64::from)
    }),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)", |_, s| {
        s.power_w
    }),
    (
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "Total energy consumption since boot (in mJ)",
        |_, s| s.energy_mj.map(|v| v as f64),
    ),
    (
        "DCGM_FI_DEV_SM_CLOCK",
        "SM clock frequency (in MHz)",
        |_, s| s.sm_clock_mhz.map(f64::from),
    ),
    (
        "DCGM_FI_DEV_MEM_CLOCK",
        "Memory clock frequency (in MHz)",
        |_, s| s.mem_clock_mhz.map(f64::from),
    ),
];

/// The exposition text for this machine now.
pub fn render(probe: &dyn GpuProbe, hostname: &str) -> String {
    let mut reg = Registry::default();
    let gpus = probe.gpus().unwrap_or_default();
    let samples: Vec<(GpuInfo, GpuSample)> = gpus
        .into_iter()
        .filter_map(|g| probe.sample(g.index).ok().map(|s| (g, s)))
        .collect();
    for (name, help, read) in FIELDS {
        let family: Family<DcgmLabels, F64Gauge> = Family::default();
        let mut any = false;
        for (g, s) in &samples {
            if let Some(v) = read(g, s) {
                any = true;
                let labels = DcgmLabels {
                    gpu: g.index.to_string(),
                    UUID: g.uuid.clone(),
                    pci_bus_id: g.pci_bus_id.clone().unwrap_or_default(),
                    device: format!("nvidia{}", g.index),
                    modelName: g.name.clone(),
                    Hostname: hostname.to_string(),
                };
                family.get_or_create(&labels).set(v);
            }
        }
        if any {
            reg.register(*name, *help, family);
        }
    }
    let h = host::probe(std::path::Path::new("/"));
    if let Some(avail) = h.memory_available_bytes {
        let g: F64Gauge = Gauge::default();
        g.set(avail as f64);
        reg.register(
            "node_memory_MemAvailable_bytes",
            "Memory information field MemAvailable_bytes",
            g,
        );
    }
    if let Some(total) = h.memory_total_bytes {
        let g: F64Gauge = Gauge::default();
        g.set(total as f64);
        reg.register(
            "node_memory_MemTotal_bytes",
            "Memory information field MemTotal_bytes",
            g,
        );
    }
    let mut out = String::new();
    if encode(&mut out, &reg).is_err() {
        tracing::warn!("metrics encoding failed");
    }
    out
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    probe: Arc<dyn GpuProbe>,
    hostname: String,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let (probe, hostname) = (probe.clone(), hostname.clone());
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(probe.as_ref(), &hostname),
                )
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
    use crate::hardware::simulated::SimulatedGpus;

    #[test]
    fn dcgm_names_and_labels() {
        let probe = SimulatedGpus::parse("H100:2", "t").expect("sim");
        let text = render(&probe, "host-a");
        assert!(text.contains("# TYPE DCGM_FI_DEV_GPU_TEMP gauge"), "{text}");
        assert!(text.contains("modelName=\"NVIDIA H100 80GB HBM3\""));
        assert!(text.contains("Hostname=\"host-a\""));
        assert!(text.contains("device=\"nvidia1\""));
        assert!(text.contains("node_memory_MemAvailable_bytes"));
    }
}
