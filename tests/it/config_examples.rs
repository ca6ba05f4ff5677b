//! The annotated example configs in deploy/config parse and validate.

use std::path::PathBuf;

use steward_agent::config::AgentConfigFile;
use steward_controller::ControllerConfigFile;

#[test]
fn controller_example_parses_and_validates() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/controller.toml");
    let file = ControllerConfigFile::load(&path).expect("example parses");
    let cfg = file.resolve().expect("example validates");
    assert_eq!(cfg.initial_cluster.len(), 3);
    assert_eq!(
        cfg.raft,
        steward_controller::RaftTuning::default(),
        "example documents the defaults"
    );
}

#[test]
fn agent_example_parses_and_validates() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/agent.toml");
    let file = AgentConfigFile::load(&path).expect("example parses");
    let cfg = file.resolve("gpu-node-17").expect("example validates");
    assert_eq!(cfg.controllers.len(), 3);
    assert_eq!(cfg.heartbeat_interval, std::time::Duration::from_secs(1));
    assert_eq!(cfg.labels.get("rack").map(String::as_str), Some("r17"));
    assert_eq!(cfg.advertise_addr, "gpu-node-17.dc1.example:7800");
}

#[test]
fn agent_env_example_names_real_variables() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/agent.env.example");
    let text = std::fs::read_to_string(path).expect("env example");
    let help = std::process::Command::new(steward_tests::steward_bin())
        .args(["agent", "--help"])
        .output()
        .expect("steward agent --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for var in text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
    {
        assert!(
            help.contains(&format!("env: {var}=")),
            "`{var}` is not a `steward agent` variable:\n{help}"
        );
    }
}
