//! `steward sim --churn` on the default trace at its own times: every task starts, nothing
//! is refused, the figures are in range and the SVG is written, for two policies side by
//! side. (The compressed loads, every policy, are in docs/sim/RESULTS.md: they take minutes.)

use steward_tests::steward_cmd;

#[test]
fn the_churn_replay_at_trace_times_starts_every_task_for_each_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("churn.svg");
    let out = steward_cmd()
        .current_dir(steward_tests::repo_root())
        .args(["-o", "json", "sim", "--churn", "--load", "trace"])
        .args(["--policy", "fgd,steward", "--plot"])
        .arg(&svg)
        .output()
        .expect("run steward sim --churn");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let load = &v["loads"][0];
    let tasks = load["tasks"].as_u64().expect("tasks");
    assert_eq!(tasks, 8152, "the default trace's tasks, one copy");
    let policies = load["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 2);
    for p in policies {
        let name = p["policy"].as_str().expect("name");
        assert_eq!(
            p["started"].as_u64(),
            Some(tasks),
            "{name}: every task starts"
        );
        assert_eq!(p["never_started"].as_u64(), Some(0), "{name}");
        assert_eq!(p["refused"].as_u64(), Some(0), "{name}");
        let alloc = p["alloc_pct"].as_f64().expect("alloc");
        assert!(
            alloc > 0.0 && alloc < 5.0,
            "{name}: {alloc} % at the trace's light load"
        );
        assert_eq!(p["timeline"].as_array().map(Vec::len), Some(100), "{name}");
        let classes: Vec<&str> = p["delays"]
            .as_array()
            .expect("delays")
            .iter()
            .filter_map(|d| d["class"].as_str())
            .collect();
        assert!(
            classes.contains(&"LS") && classes.contains(&"BE"),
            "{classes:?}"
        );
    }
    let plot = std::fs::read_to_string(&svg).expect("the plot is written");
    assert!(plot.contains("<svg") && plot.contains("steward") && plot.contains("fgd"));
}
