//! Agent and controller `/metrics` pass `promtool check metrics` (promtool comes from the
//! Debian `prometheus` package that `make deps` installs), with dcgm-exporter's GPU names.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use steward_tests::{free_port, http_get, spawn_agent, wait_for, ProcCluster};

/// Runs promtool on `text`: (exit code, report); `None` when promtool is not installed.
/// promtool 2.42 exits 1 on a parse error and 3 on lint findings.
fn promtool(text: &str) -> Option<(i32, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(text.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    Some((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// Two exporters' own spellings break promtool's lint rules, and Steward keeps them on
/// purpose so that stock dashboards work: dcgm-exporter's label names (`UUID`, `modelName`,
/// `Hostname`) on `DCGM_FI_*` series and its `DCGM_FI_DEV_PCIE_REPLAY_COUNTER` name, and
/// node_exporter's metric names (`node_memory_MemAvailable_bytes`). Those findings are
/// allowed there; any other finding, or a parse error, fails.
fn exporter_spelling_finding(line: &str) -> bool {
    if line == "DCGM_FI_DEV_PCIE_REPLAY_COUNTER metric name should not include type 'counter'" {
        return true;
    }
    let camel_label =
        line.ends_with("label names should be written in 'snake_case' not 'camelCase'");
    let camel_name =
        line.ends_with("metric names should be written in 'snake_case' not 'camelCase'");
    (line.starts_with("DCGM_FI_") && camel_label)
        || (line.starts_with("node_memory_") && camel_name)
}

fn check(what: &str, text: &str) {
    match promtool(text) {
        Some((0, _)) => {}
        Some((3, report)) => {
            let other: Vec<&str> = report.lines().map(str::trim).filter(|l| !l.is_empty() && !exporter_spelling_finding(l)).collect();
            assert!(other.is_empty(), "promtool lint findings on the {what} metrics: {other:?}\n{text}");
        }
        Some((code, report)) => panic!("promtool rejects the {what} metrics (exit {code}): {report}\n{text}"),
        None if std::env::var("STEWARD_REQUIRE_ALL_TESTS").as_deref() == Ok("1") => {
            panic!("promtool is not installed (run `make deps`), and STEWARD_REQUIRE_ALL_TESTS=1")
        }
        None => eprintln!("SKIPPED promtool check of the {what} metrics: promtool is not installed (run `make deps`)"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_and_controller_metrics_pass_promtool() -> anyhow::Result<()> {
    let cluster = ProcCluster::start(1, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    // The write path's stage histograms before any agent registers.
    let before = http_get(&cluster.node(1).metrics_addr, "/metrics").unwrap_or_default();
    let dir = tempfile::tempdir()?;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut agent = spawn_agent(
        dir.path(),
        &cluster.addrs(),
        &["--metrics-addr", &metrics],
        None,
    )?;
    let result = async {
        let text = wait_for("agent metrics", Duration::from_secs(15), || async {
            http_get(&metrics, "/metrics")
        })
        .await?;
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("DCGM_FI_DEV_GPU_TEMP{"))
                .count(),
            8,
            "{text}"
        );
        assert!(
            text.contains("UUID=\"GPU-sim-")
                && text.contains("Hostname=")
                && text.contains("pci_bus_id=")
        );
        // node_exporter's names, counters included.
        for name in [
            "node_cpu_seconds_total{",
            "node_load1 ",
            "node_memory_MemAvailable_bytes ",
            "node_filesystem_avail_bytes{",
            "node_network_receive_bytes_total{",
            "DCGM_FI_DEV_XID_ERRORS{",
            "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{",
            "DCGM_FI_DEV_PCIE_REPLAY_COUNTER{",
            "steward_agent_gpu_health{",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "no `{name}` series:\n{text}"
            );
        }
        assert!(
            text.contains("# TYPE node_cpu_seconds_total counter"),
            "{text}"
        );
        check("agent", &text);

        let node = cluster.node(1);
        let text = wait_for(
            "controller metrics with one ready node",
            Duration::from_secs(15),
            || async {
                let t = http_get(&node.metrics_addr, "/metrics")?;
                (t.contains("steward_nodes{state=\"ready\"} 1")
                    && t.contains("steward_gpus{health=\"healthy\"} 8"))
                .then_some(t)
            },
        )
        .await?;
        assert!(text.contains("steward_raft_is_leader 1"), "{text}");
        assert!(text.contains("steward_liveness_heartbeat_age_seconds_bucket"));
        assert_eq!(
            promtool(&text).map(|(code, _)| code).unwrap_or(0),
            0,
            "controller metrics are lint-clean:\n{text}"
        );
        // The write path's stage histograms grew with the agent's registration (a Raft
        // write): proposed, appended with a sync, applied, and its entry counted.
        let count = |text: &str, series: &str| -> f64 {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(series)?
                        .strip_prefix(' ')?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0.0)
        };
        for series in [
            "steward_raft_proposal_seconds_count",
            "steward_raft_log_append_seconds_count",
            "steward_raft_apply_seconds_count",
            "steward_raft_entry_commands_count",
        ] {
            let (was, now) = (count(&before, series), count(&text, series));
            assert!(
                now > was,
                "{series} did not grow across a registration ({was} -> {now}):\n{text}"
            );
        }
        check("controller", &text);
        if let Some((code, report)) = promtool(&text) {
            assert_eq!(code, 0, "controller metrics must be lint-clean: {report}");
        }
        anyhow::Ok(())
    }
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    result
}
