//! `steward agent --print-inventory`: one JSON document with host facts, GPUs and one
//! telemetry reading; the NVML-absent path lists no GPUs; simulated GPUs are listed with
//! their facts.

use steward_tests::steward_cmd;

fn inventory(extra: &[&str]) -> serde_json::Value {
    let out = steward_cmd()
        .args(["agent", "--print-inventory"])
        .args(extra)
        .env_remove("STEWARD_SIMULATE_GPUS")
        .output()
        .expect("run steward agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[test]
fn prints_host_and_simulated_gpus() {
    let inv = inventory(&["--simulate-gpus", "H100:8"]);
    assert!(inv["host"]["cpu"]["threads"].as_u64().unwrap_or(0) >= 1);
    let gpus = inv["gpus"].as_array().expect("gpus");
    assert_eq!(gpus.len(), 8);
    assert_eq!(gpus[0]["name"], "NVIDIA H100 80GB HBM3");
    assert_eq!(gpus[0]["memory_total_mib"], 81559);
    assert_eq!(gpus[0]["nvlink_peers"].as_array().map(Vec::len), Some(7));
    assert_eq!(gpus[7]["numa_node"], 1);
    assert!(gpus[0]["mig_instances"].is_null(), "MIG off: no instances");
    // One telemetry reading rides along: host counters and every GPU with its health.
    let t = &inv["telemetry"];
    assert_eq!(t["gpus"].as_array().map(Vec::len), Some(8));
    assert_eq!(t["gpus"][0]["health"]["status"], "healthy");
    assert!(t["gpus"][0]["sample"]["temperature_c"].as_u64().is_some());
    assert!(!t["host"]["cpus"].as_array().expect("cpus").is_empty());
}

#[test]
fn without_nvml_no_gpus_and_one_info_line() {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!(
            "SKIPPED: this machine has an NVIDIA driver; the NVML-absent path needs one without"
        );
        return;
    }
    let out = steward_cmd()
        .args(["agent", "--print-inventory"])
        .env_remove("STEWARD_SIMULATE_GPUS")
        .output()
        .expect("run");
    assert!(out.status.success());
    let inv: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(inv["gpus"].as_array().map(Vec::len), Some(0));
    assert_eq!(inv["telemetry"]["gpus"].as_array().map(Vec::len), Some(0));
    assert!(inv["gpu_driver"].is_null());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().filter(|l| l.contains("no NVIDIA GPUs")).count(),
        1,
        "{err}"
    );
}

#[test]
fn bad_simulation_spec_is_a_clear_error() {
    let out = steward_cmd()
        .args(["agent", "--print-inventory", "--simulate-gpus", "H100"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MODEL:COUNT"));
}
