//! The annotated example configs in deploy/config parse and validate.

use std::path::PathBuf;

use steward_agent::config::AgentConfigFile;
use steward_controller::ControllerConfigFile;
use steward_core::identity::Principal;

/// A TLS dir with a certificate for `who` (the example's `/etc/steward/tls` stands for it).
fn tls_dir_for(dir: &std::path::Path, who: Principal) -> PathBuf {
    steward_tests::pki::pki().issue(&dir.join("tls"), who)
}

#[test]
fn controller_example_parses_and_validates() {
    let path = steward_tests::repo_root().join("deploy/config/controller.toml");
    let mut file = ControllerConfigFile::load(&path).expect("example parses");
    assert!(file.tls_dir.is_some(), "the example shows the TLS setup");
    let dir = tempfile::tempdir().expect("tempdir");
    file.tls_dir = Some(tls_dir_for(dir.path(), Principal::Controller(1)));
    file.cluster_name = Some(steward_tests::pki::CLUSTER.into());
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
    let path = steward_tests::repo_root().join("deploy/config/agent.toml");
    let mut file = AgentConfigFile::load(&path).expect("example parses");
    assert!(file.tls_dir.is_some(), "the example shows the TLS setup");
    let dir = tempfile::tempdir().expect("tempdir");
    file.tls_dir = Some(tls_dir_for(
        dir.path(),
        Principal::Agent("gpu-node-17".into()),
    ));
    let cfg = file.resolve("gpu-node-17").expect("example validates");
    assert_eq!(cfg.controllers.len(), 3);
    assert_eq!(cfg.heartbeat_interval, std::time::Duration::from_secs(1));
    assert_eq!(cfg.labels.get("rack").map(String::as_str), Some("r17"));
    assert_eq!(cfg.advertise_addr, "gpu-node-17.dc1.example:7800");
}

#[test]
fn agent_env_example_names_real_variables() {
    let path = steward_tests::repo_root().join("deploy/systemd/agent.env.example");
    let text = std::fs::read_to_string(path).expect("env example");
    let help = steward_tests::steward_cmd()
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
