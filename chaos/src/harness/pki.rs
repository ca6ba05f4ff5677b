//! The black-box tests' certificates: every test cluster runs with mutual TLS, as users
//! run theirs.
//!
//! One test CA (cluster `it`) and an admin client certificate are made once per target
//! dir, next to the `steward` binary under test (`steward-it-pki/`), and shared by every
//! test process; controllers' and agents' certificates are issued per test into the
//! test's own temporary dir. `STEWARD_IT_INSECURE=1` runs the harness in plaintext instead
//! (the TLS-cost benchmarks compare the two).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use steward_core::identity::{Identity, Principal, Role};
use steward_runtime::tls::issue::{self, CaPem};
use steward_runtime::tls::{ServerKind, Tls};
use steward_runtime::transport::ClientOptions;

/// The test clusters' name (their certificates name it).
pub const CLUSTER: &str = "it";
/// Validity of the shared CA and client certificate: the dir lives as long as the target
/// dir, which CI keeps between runs.
const LONG_VALIDITY_DAYS: u32 = 20 * 365;

/// Whether the harness runs in plaintext (`STEWARD_IT_INSECURE=1`).
pub fn insecure() -> bool {
    std::env::var("STEWARD_IT_INSECURE").as_deref() == Ok("1")
}

/// The shared certificates: `(dir, identity)`.
#[allow(clippy::type_complexity)]
const SHARED: &[(&str, fn() -> Principal)] = &[
    ("client-admin", || client("it-admin", Role::Admin)),
    ("client-operator", || client("it-operator", Role::Operator)),
    ("client-viewer", || client("it-viewer", Role::Viewer)),
    // Benchmarks that simulate a fleet of agents over a few connections act for every
    // node, as only a controller may (`core::authz::may_act_for_node`).
    ("fleet", || Principal::Controller(FLEET_CONTROLLER_ID)),
];

/// The controller id of the fleet simulator's certificate (no test cluster has it).
pub const FLEET_CONTROLLER_ID: u64 = 9999;

fn client(name: &str, role: Role) -> Principal {
    Principal::Client {
        name: name.into(),
        role,
    }
}

pub struct TestPki {
    root: PathBuf,
    ca: CaPem,
}

/// The shared test PKI, made on first use.
pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = super::cluster::steward_bin().with_file_name("steward-it-pki-v1");
        TestPki::open_or_create(root).expect("the test CA")
    })
}

impl TestPki {
    fn open_or_create(root: PathBuf) -> anyhow::Result<TestPki> {
        if let Ok(ca) = issue::read_ca(&root.join("ca")) {
            if SHARED.iter().all(|(d, _)| Tls::load(root.join(d)).is_ok()) {
                return Ok(TestPki { root, ca });
            }
        }
        // Made aside and renamed into place: concurrent test processes agree on one.
        let parent = root.parent().expect("bin dir");
        let staging = tempfile::Builder::new()
            .prefix("steward-it-pki.tmp")
            .tempdir_in(parent)?;
        let ca = issue::create_ca(CLUSTER, LONG_VALIDITY_DAYS)?;
        issue::write_ca(&staging.path().join("ca"), &ca)?;
        let pki = TestPki {
            root: staging.path().to_path_buf(),
            ca,
        };
        for (dir, principal) in SHARED {
            pki.issue_long(&staging.path().join(dir), principal())?;
        }
        let staged = staging.keep();
        if std::fs::rename(&staged, &root).is_err() {
            // Another process won (or a broken dir is there): use or replace it.
            let _ = std::fs::remove_dir_all(&staged);
            if issue::read_ca(&root.join("ca")).is_err()
                || SHARED.iter().any(|(d, _)| Tls::load(root.join(d)).is_err())
            {
                let _ = std::fs::remove_dir_all(&root);
                return Self::open_or_create(root);
            }
        }
        let ca = issue::read_ca(&root.join("ca"))?;
        Ok(TestPki { root, ca })
    }

    fn issue_long(&self, dir: &Path, principal: Principal) -> anyhow::Result<()> {
        let identity = Identity::new(CLUSTER, principal)?;
        let cert = issue::create_cert(&self.ca, &identity, LONG_VALIDITY_DAYS, 1)?;
        issue::write_cert(dir, &cert, true)?;
        Ok(())
    }

    /// The CA's own dir (`ca.pem`, `ca-key.pem`), for `steward tls cert create --ca-dir`.
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }

    /// The CA and key in PEM, to issue odd certificates (expired, foreign) in tests.
    pub fn ca(&self) -> &CaPem {
        &self.ca
    }

    /// The shared admin client's TLS dir.
    pub fn admin_dir(&self) -> PathBuf {
        self.root.join("client-admin")
    }

    /// Issues a certificate for `principal` into `dir` (replacing one there) and returns
    /// `dir`.
    pub fn issue(&self, dir: &Path, principal: Principal) -> PathBuf {
        self.issue_long(dir, principal)
            .unwrap_or_else(|e| panic!("issuing a test certificate into {}: {e:#}", dir.display()));
        dir.to_path_buf()
    }

    /// A shared client's TLS dir with `role`.
    pub fn client_dir(&self, role: Role) -> PathBuf {
        self.root.join(match role {
            Role::Admin => "client-admin",
            Role::Operator => "client-operator",
            Role::Viewer => "client-viewer",
        })
    }

    /// The fleet simulator's TLS dir (a controller certificate; see `SHARED`).
    pub fn fleet_dir(&self) -> PathBuf {
        self.root.join("fleet")
    }

    /// The admin client's TLS, loaded.
    pub fn admin_tls(&self) -> Tls {
        Tls::load(self.admin_dir()).expect("the test admin certificate")
    }
}

/// Client options for a test's own gRPC clients of servers of `kind`: the admin client
/// certificate, or plaintext under `STEWARD_IT_INSECURE=1`.
pub fn client_options(connect_timeout: std::time::Duration, kind: ServerKind) -> ClientOptions {
    let tls = (!insecure()).then(|| pki().admin_tls());
    ClientOptions::new(connect_timeout).tls(tls, kind)
}

/// Client options of a benchmark that simulates many agents over few connections (the
/// fleet certificate), or plaintext under `STEWARD_IT_INSECURE=1`.
pub fn fleet_options(connect_timeout: std::time::Duration) -> ClientOptions {
    let tls = (!insecure()).then(|| Tls::load(pki().fleet_dir()).expect("the fleet certificate"));
    ClientOptions::new(connect_timeout).tls(tls, ServerKind::Controller)
}

/// `steward` as an admin runs it against a test cluster: with the test admin certificate
/// (or `--insecure` under `STEWARD_IT_INSECURE=1`), and none of the caller's own
/// STEWARD_* settings.
pub fn steward_cmd() -> Command {
    let mut cmd = Command::new(super::cluster::steward_bin());
    cmd.env_remove("STEWARD_TOKEN")
        .env_remove("STEWARD_TLS_DIR")
        .env_remove("STEWARD_INSECURE")
        .env_remove("STEWARD_DEV_DIR");
    if insecure() {
        cmd.env("STEWARD_INSECURE", "true");
    } else {
        cmd.env("STEWARD_TLS_DIR", pki().admin_dir());
    }
    cmd
}

/// The flags a daemon of the harness takes: `--tls-dir DIR` with a certificate for
/// `principal` issued into `dir`, or `--insecure`.
pub fn daemon_flags(dir: &Path, principal: Principal) -> Vec<String> {
    if insecure() {
        return vec!["--insecure".into()];
    }
    let dir = pki().issue(dir, principal);
    vec!["--tls-dir".into(), dir.display().to_string()]
}
