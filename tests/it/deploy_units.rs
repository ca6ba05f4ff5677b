//! The systemd units in deploy/systemd pass `systemd-analyze verify` (with ExecStart
//! pointed at the binary under test), where systemd-analyze exists.

use std::process::Command;

use steward_tests::steward_bin;

#[test]
fn systemd_units_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed (no systemd on this machine)");
        return;
    }
    let src = steward_tests::repo_root().join("deploy/systemd");
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = steward_bin();
    let mut units = Vec::new();
    for name in ["steward-controller.service", "steward-agent.service"] {
        let text = std::fs::read_to_string(src.join(name)).expect("unit");
        assert!(text.contains("Type=notify"), "{name} waits for READY=1");
        let local = text.replace("/usr/local/bin/steward", bin.to_str().expect("utf-8 path"));
        let path = dir.path().join(name);
        std::fs::write(&path, local).expect("write");
        units.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = std::fs::read_to_string(src.join("steward-agent.service")).expect("unit");
    assert!(
        agent.contains("DeviceAllow=/dev/nvidiactl"),
        "the agent reaches the NVIDIA devices"
    );
}
