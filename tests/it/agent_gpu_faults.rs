//! Simulated GPU telemetry and every injected fault, end to end through real processes: the
//! operator's `steward node load|fault` reaches the node's agent API (its address comes from
//! the node's registration); the change shows in `steward node show -o json` (via the
//! leader, from heartbeats) and in the agent's `/metrics`.

use std::time::Duration;

use steward_tests::{
    agent_tls_flags, free_port, http_get, spawn_agent, steward_cmd, wait_for, ProcCluster,
};

fn cli(addrs: &str, args: &[&str]) -> (bool, String) {
    let out = steward_cmd()
        .args(args)
        .args(["--addr", addrs])
        .output()
        .expect("run steward");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn show(addrs: &str, node: &str) -> Option<serde_json::Value> {
    let (ok, out) = cli(addrs, &["node", "show", node, "-o", "json"]);
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

/// The value of the series of `metric` whose labels include `gpu="N"` and `extra`.
fn series(text: &str, metric: &str, gpu: u32, extra: &str) -> Option<f64> {
    let gpu_label = format!("gpu=\"{gpu}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| l.contains(&gpu_label) && l.contains(extra))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_show_in_node_show_and_metrics() -> anyhow::Result<()> {
    let cluster = ProcCluster::start(1, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let addrs = cluster.addrs();
    let dir = tempfile::tempdir()?;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut agent = spawn_agent(
        dir.path(),
        &addrs,
        &["--metrics-addr", &metrics, "--telemetry-interval", "200ms"],
        Some(&dir.path().join("agent.log")),
    )?;
    let result = async {
        let node = wait_for("the node id", Duration::from_secs(10), || async {
            std::fs::read_to_string(dir.path().join("node-id"))
                .ok()
                .map(|s| s.trim().to_string())
        })
        .await?;
        let idle = wait_for(
            "telemetry at the leader",
            Duration::from_secs(20),
            || async {
                let doc = show(&addrs, &node)?;
                (doc["telemetry"]["gpus"].as_array()?.len() == 8).then_some(doc)
            },
        )
        .await?;
        assert_eq!(idle["telemetry"]["gpus"][0]["health"], "healthy");
        assert!(idle["agent_api_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")));
        let idle_power = idle["telemetry"]["gpus"][0]["power_w"]
            .as_f64()
            .expect("power");

        // Load moves the telemetry.
        let (ok, out) = cli(
            &addrs,
            &["node", "load", &node, "--gpu", "0", "--util", "90"],
        );
        assert!(ok, "{out}");
        // Faults, one GPU each.
        for args in [
            vec!["--gpu", "1", "xid", "79"],
            vec!["--gpu", "2", "ecc-double-bit"],
            vec!["--gpu", "3", "over-temperature"],
            vec!["--gpu", "4", "fell-off-bus"],
            vec!["--gpu", "5", "ecc-single-bit"],
        ] {
            let mut full = vec!["node", "fault", &node];
            full.extend(args);
            let (ok, out) = cli(&addrs, &full);
            assert!(ok, "{full:?}: {out}");
        }
        let doc = wait_for(
            "every fault in node show",
            Duration::from_secs(20),
            || async {
                let doc = show(&addrs, &node)?;
                let g = doc["telemetry"]["gpus"].as_array()?.clone();
                let done = g[0]["sm_util_pct"] == 90
                    && g[1]["health"] == "failed"
                    && g[2]["health"] == "failed"
                    && g[3]["health"] == "degraded"
                    && g[4]["lost"] == true
                    && g[5]["ecc_sbe_volatile"] == 1;
                done.then_some(doc)
            },
        )
        .await?;
        let g = &doc["telemetry"]["gpus"];
        assert!(
            g[0]["power_w"].as_f64().expect("power") > idle_power * 3.0,
            "{}",
            g[0]
        );
        let reason = |i: usize| g[i]["health_reasons"][0].as_str().unwrap_or("").to_string();
        assert!(reason(1).starts_with("XID 79"), "{}", reason(1));
        assert!(reason(2).contains("uncorrectable"), "{}", reason(2));
        assert!(
            reason(3).contains("over temperature: 95 C"),
            "{}",
            reason(3)
        );
        assert!(reason(4).contains("fallen off the bus"), "{}", reason(4));
        assert_eq!(
            g[5]["health"], "healthy",
            "a corrected ECC error is not a failure"
        );
        let kinds: Vec<&str> = doc["telemetry"]["recent_gpu_events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["kind"].as_str())
            .collect();
        for k in [
            "xid",
            "ecc_double_bit",
            "over_temperature",
            "fell_off_bus",
            "ecc_single_bit",
        ] {
            assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
        }
        let (_, list) = cli(&addrs, &["node", "list", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&list)?;
        let healths: Vec<&str> = list[0]["gpus"]
            .as_array()
            .expect("gpus")
            .iter()
            .filter_map(|g| g["health"].as_str())
            .collect();
        assert_eq!(
            healths[..5],
            ["healthy", "failed", "failed", "degraded", "failed"]
        );

        // The same, in the agent's /metrics.
        let text = wait_for(
            "the faults in /metrics",
            Duration::from_secs(10),
            || async {
                let t = http_get(&metrics, "/metrics")?;
                (series(&t, "DCGM_FI_DEV_XID_ERRORS", 1, "") == Some(79.0)).then_some(t)
            },
        )
        .await?;
        assert_eq!(
            series(&text, "DCGM_FI_DEV_GPU_UTIL", 0, ""),
            Some(90.0),
            "{text}"
        );
        assert_eq!(
            series(&text, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 2, ""),
            Some(1.0)
        );
        assert_eq!(series(&text, "DCGM_FI_DEV_XID_ERRORS", 2, ""), Some(48.0));
        assert_eq!(series(&text, "DCGM_FI_DEV_GPU_TEMP", 3, ""), Some(95.0));
        assert_eq!(
            series(&text, "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", 3, ""),
            Some(96.0),
            "SW+HW thermal slowdown"
        );
        assert_eq!(
            series(&text, "DCGM_FI_DEV_GPU_TEMP", 4, ""),
            None,
            "a lost GPU has no readings"
        );
        assert_eq!(
            series(&text, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", 5, ""),
            Some(1.0)
        );
        for (gpu, status) in [
            (1, "failed"),
            (2, "failed"),
            (3, "degraded"),
            (4, "failed"),
            (6, "healthy"),
        ] {
            assert_eq!(
                series(
                    &text,
                    "steward_agent_gpu_health",
                    gpu,
                    &format!("status=\"{status}\"")
                ),
                Some(1.0),
                "GPU {gpu} {status}"
            );
        }

        // A repair clears the GPU.
        let (ok, out) = cli(&addrs, &["node", "fault", &node, "--gpu", "1", "clear"]);
        assert!(ok, "{out}");
        wait_for("GPU 1 healthy again", Duration::from_secs(20), || async {
            (show(&addrs, &node)?["telemetry"]["gpus"][1]["health"] == "healthy").then_some(())
        })
        .await?;

        // Clear errors.
        let (ok, out) = cli(&addrs, &["node", "fault", &node, "--gpu", "9", "xid", "13"]);
        assert!(!ok && out.contains("no such GPU"), "{out}");
        let (ok, out) = cli(&addrs, &["node", "fault", &node, "--gpu", "0", "xid"]);
        assert!(!ok && out.contains("needs the XID code"), "{out}");
        let (ok, out) = cli(
            &addrs,
            &["node", "load", &node, "--gpu", "0", "--util", "150"],
        );
        assert!(!ok && out.contains("above 100%"), "{out}");
        let (ok, out) = cli(
            &addrs,
            &["node", "fault", "node-nope", "--gpu", "0", "clear"],
        );
        assert!(!ok && out.contains("no node `node-nope`"), "{out}");
        anyhow::Ok(())
    }
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_real_gpus_refuses_fault_injection() -> anyhow::Result<()> {
    let cluster = ProcCluster::start(1, "")?;
    cluster.wait_leader(Duration::from_secs(20)).await?;
    let dir = tempfile::tempdir()?;
    let api = format!("127.0.0.1:{}", free_port());
    // No --simulate-gpus: NVML (or, on a machine without the driver, no GPUs).
    let mut agent = steward_cmd()
        .args(["agent", "--data-dir"])
        .arg(dir.path())
        .args(["--controllers", &cluster.addrs(), "--api-addr", &api])
        .args(agent_tls_flags(dir.path())?)
        .env_remove("STEWARD_SIMULATE_GPUS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let result = wait_for("a refusal", Duration::from_secs(20), || async {
        // The node id the agent took from its certificate: `--agent` still dials only
        // that node's agent.
        let node = std::fs::read_to_string(dir.path().join("node-id")).ok()?;
        let (ok, out) = cli(
            &cluster.addrs(),
            &[
                "node",
                "fault",
                node.trim(),
                "--agent",
                &api,
                "--gpu",
                "0",
                "ecc-double-bit",
            ],
        );
        (!ok && out.contains("need simulated GPUs")).then_some(())
    })
    .await;
    let _ = agent.kill();
    let _ = agent.wait();
    result
}
