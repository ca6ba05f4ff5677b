//! The reduced sweep CI runs: every workload family at its lowest and highest level, two
//! seeds, FGD and Steward; Steward leaves less GPU capacity unallocated than FGD at every
//! point. (The full sweep, every policy at every level over seeds 42..51, is in
//! docs/sim/RESULTS.md.)

use steward_tests::steward_cmd;

#[test]
fn steward_beats_fgd_on_every_point_of_the_reduced_sweep() {
    let out = steward_cmd()
        .current_dir(steward_tests::repo_root())
        .args([
            "-o",
            "json",
            "sim",
            "sweep",
            "--reduced",
            "--seeds",
            "42..43",
            "--policy",
            "fgd,steward",
        ])
        .output()
        .expect("run steward sim sweep");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let points = v["points"].as_array().expect("points");
    let mean = |family: &str, level: u64, policy: &str| {
        points
            .iter()
            .find(|p| p["family"] == family && p["level"] == level && p["policy"] == policy)
            .and_then(|p| p["unallocated_pct_at_100"]["mean"].as_f64())
            .unwrap_or_else(|| panic!("no point {family}{level} {policy}"))
    };
    let mut checked = 0;
    for (family, levels) in [
        ("gpuspec", [10, 33]),
        ("multigpu", [20, 50]),
        ("gpushare", [20, 80]),
        ("cpu", [100, 250]),
    ] {
        for level in levels {
            let (s, f) = (mean(family, level, "steward"), mean(family, level, "fgd"));
            println!("{family}{level}: steward {s:.2} %, fgd {f:.2} % unallocated");
            assert!(s < f, "{family}{level}: steward {s:.2} % >= fgd {f:.2} %");
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
    assert_eq!(points.len(), 16, "8 points x 2 policies");
}
