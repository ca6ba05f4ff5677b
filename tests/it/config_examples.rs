//! The annotated example configs in deploy/config parse and validate.

use std::path::PathBuf;

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
