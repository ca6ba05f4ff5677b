//! Mutual TLS for every Steward connection: the TLS dir, its reload, the server side
//! (accepting connections and naming the peer's identity) and the client side.
//!
//! A TLS dir holds `ca.pem` (the cluster's CA), `cert.pem` and `key.pem` (this process's
//! certificate, which names its identity: `core::identity`). Both sides require a
//! certificate signed by the CA: a plaintext client, a client without a certificate, one
//! from another CA or an expired one fails the handshake. A server is checked against the
//! server name of the kind of server expected ([`server_name`]: controllers' and agents'
//! differ), which only their certificates carry. A peer whose certificate names no identity of this cluster is dropped right
//! after the handshake, before any request.
//!
//! Rotation: the files are checked at most every [`RELOAD_CHECK`] when a connection is
//! made or accepted; when they changed, the configuration is rebuilt from them, and new
//! connections use it (established ones keep theirs). A half-written or mismatched set is
//! refused with a warning and the previous configuration stays in use.

pub mod issue;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use steward_core::identity::Identity;

/// The CA's certificate in a TLS dir.
pub const CA_FILE: &str = "ca.pem";
/// This process's certificate (the first PEM block; more are its chain).
pub const CERT_FILE: &str = "cert.pem";
/// This process's key.
pub const KEY_FILE: &str = "key.pem";
/// How often the files are checked for a change (on use).
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);
/// Longest a TLS handshake may take, on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest PEM file read.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The kind of server a client expects at an address: what the server must prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Controller,
    Agent,
}

/// The DNS name the certificates of cluster `cluster`'s servers of `kind` carry, and that
/// clients check servers against: addresses vary, so a server proves its cluster and its
/// kind (an agent can never answer as a controller).
pub fn server_name(cluster: &str, kind: ServerKind) -> String {
    let kind = match kind {
        ServerKind::Controller => "controller",
        ServerKind::Agent => "agent",
    };
    format!("{kind}.{cluster}.steward.internal")
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {error}")]
    File { path: PathBuf, error: String },
    #[error("{path}: {error}")]
    Pem { path: PathBuf, error: String },
    #[error("{0}")]
    Identity(String),
    #[error("building the TLS configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Issue(String),
}

/// The files' sizes and times: a change of either means a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<(u64, Option<SystemTime>)>);

fn stamp(dir: &Path) -> Stamp {
    Stamp(
        [CA_FILE, CERT_FILE, KEY_FILE]
            .iter()
            .map(|f| {
                std::fs::metadata(dir.join(f))
                    .map(|m| (m.len(), m.modified().ok()))
                    .unwrap_or((0, None))
            })
            .collect(),
    )
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let file = |e: std::io::Error| TlsError::File {
        path: path.to_path_buf(),
        error: e.to_string(),
    };
    let len = std::fs::metadata(path).map_err(file)?.len();
    if len > MAX_PEM_BYTES {
        return Err(TlsError::File {
            path: path.to_path_buf(),
            error: format!("{len} bytes, over the {MAX_PEM_BYTES}-byte limit for a PEM file"),
        });
    }
    std::fs::read(path).map_err(file)
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            error: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// The identity a certificate names in its URI SAN (exactly one Steward identity).
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Identity(format!("unreadable certificate: {e}")))?;
    let sans = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::Identity(format!("unreadable subject alternative names: {e}")))?
        .ok_or_else(|| TlsError::Identity("the certificate names no identity (no SAN)".into()))?;
    let mut found = sans.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => Some(Identity::parse_uri(uri)),
        _ => None,
    });
    match (found.next(), found.next()) {
        (Some(Ok(id)), None) => Ok(id),
        (Some(Err(e)), None) => Err(TlsError::Identity(e.to_string())),
        (None, _) => Err(TlsError::Identity(
            "the certificate names no identity (no URI SAN)".into(),
        )),
        (Some(_), Some(_)) => Err(TlsError::Identity(
            "the certificate names more than one identity".into(),
        )),
    }
}

/// What one load of the dir built.
struct Loaded {
    identity: Identity,
    server: Arc<rustls::ServerConfig>,
    /// The same, speaking HTTP/1.1 (`/metrics` for Prometheus).
    http1: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    stamp: Stamp,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(dir: &Path) -> Result<Loaded, TlsError> {
    let stamp = stamp(dir);
    let ca = certs(&dir.join(CA_FILE))?;
    let chain = certs(&dir.join(CERT_FILE))?;
    let key_path = dir.join(KEY_FILE);
    let key = PrivateKeyDer::from_pem_slice(&read_pem(&key_path)?).map_err(|e| TlsError::Pem {
        path: key_path.clone(),
        error: e.to_string(),
    })?;
    let identity = identity_of(&chain[0])?;
    let mut roots = rustls::RootCertStore::empty();
    for c in &ca {
        roots
            .add(c.clone())
            .map_err(|e| TlsError::Config(format!("{}: {e}", dir.join(CA_FILE).display())))?;
    }
    let roots = Arc::new(roots);
    let config = |e: rustls::Error| TlsError::Config(e.to_string());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(config)?;
    let mut http1 = server.clone();
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    server.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(config)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        identity,
        server: Arc::new(server),
        http1: Arc::new(http1),
        client: Arc::new(client),
        stamp,
    })
}

/// A loaded TLS dir, reloaded when its files change. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    state: Mutex<State>,
}

struct State {
    loaded: Loaded,
    checked: Instant,
    reloads: u64,
    reload_failures: u64,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("dir", &self.inner.dir)
            .field("identity", &self.identity().uri())
            .finish()
    }
}

/// How a daemon or the CLI secures its connections: the TLS dir it was given, or
/// plaintext by explicit choice. Neither given is an error the caller reports with its
/// own flags; both given is refused.
pub fn choose(dir: Option<&Path>, insecure: bool) -> Result<Option<Tls>, ChooseError> {
    match (dir, insecure) {
        (Some(_), true) => Err(ChooseError::Both),
        (Some(dir), false) => Ok(Some(Tls::load(dir)?)),
        (None, true) => Ok(None),
        (None, false) => Err(ChooseError::Neither),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChooseError {
    #[error(
        "no TLS dir: give --tls-dir DIR (or STEWARD_TLS_DIR) holding ca.pem, cert.pem and key.pem \
         (`steward tls` makes them), or --insecure for plaintext"
    )]
    Neither,
    #[error("--tls-dir and --insecure exclude each other")]
    Both,
    #[error("TLS dir: {0}")]
    Load(#[from] TlsError),
}

/// The warning a plaintext process prints at every start.
pub fn warn_insecure(what: &str) {
    let text = format!(
        "{what} runs WITHOUT TLS (--insecure): anyone who reaches its ports can act as any \
         node or operator"
    );
    eprintln!("warning: {text}");
    tracing::warn!("{text}");
}

impl Tls {
    /// Loads the TLS dir `dir`; every problem is an error naming the file.
    pub fn load(dir: impl Into<PathBuf>) -> Result<Tls, TlsError> {
        let dir = dir.into();
        let loaded = load(&dir)?;
        Ok(Tls {
            inner: Arc::new(Inner {
                dir,
                state: Mutex::new(State {
                    loaded,
                    checked: Instant::now(),
                    reloads: 0,
                    reload_failures: 0,
                }),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The identity this process's certificate names (as loaded now).
    pub fn identity(&self) -> Identity {
        self.current(|l| l.identity.clone())
    }

    /// How many times the files were reloaded after a change.
    pub fn reloads(&self) -> u64 {
        self.refresh();
        self.lock().reloads
    }

    /// How many times changed files did not load (the previous ones stayed in use).
    pub fn reload_failures(&self) -> u64 {
        self.refresh();
        self.lock().reload_failures
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.current(|l| l.server.clone())
    }

    /// The server configuration for HTTP/1.1 (`/metrics`).
    pub fn http1_server_config(&self) -> Arc<rustls::ServerConfig> {
        self.current(|l| l.http1.clone())
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.current(|l| l.client.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current<T>(&self, f: impl FnOnce(&Loaded) -> T) -> T {
        self.refresh();
        f(&self.lock().loaded)
    }

    /// Reloads the files when they changed (checked at most every [`RELOAD_CHECK`]).
    fn refresh(&self) {
        let mut state = self.lock();
        if state.checked.elapsed() < RELOAD_CHECK {
            return;
        }
        state.checked = Instant::now();
        if stamp(&self.inner.dir) == state.loaded.stamp {
            return;
        }
        let reloaded = load(&self.inner.dir).and_then(|loaded| {
            // Rotation renews a certificate; it never makes this process someone else.
            if loaded.identity == state.loaded.identity {
                Ok(loaded)
            } else {
                Err(TlsError::Identity(format!(
                    "the new certificate names {}, this process is {}: restart it to change who it is",
                    loaded.identity.uri(),
                    state.loaded.identity.uri()
                )))
            }
        });
        match reloaded {
            Ok(loaded) => {
                tracing::info!(
                    dir = %self.inner.dir.display(),
                    identity = %loaded.identity.uri(),
                    "TLS files changed: new connections use the new certificate"
                );
                state.loaded = loaded;
                state.reloads += 1;
            }
            Err(e) => {
                // Keep the old configuration; try again at the next check. The stamp is
                // left as it was, so a complete set written later is picked up.
                state.reload_failures += 1;
                tracing::warn!(dir = %self.inner.dir.display(), error = %e,
                    "TLS files changed but do not load; still using the previous ones");
            }
        }
    }

    /// The server name clients check this cluster's servers of `kind` against.
    pub fn server_name(&self, kind: ServerKind) -> Result<ServerName<'static>, TlsError> {
        let name = server_name(&self.identity().cluster, kind);
        ServerName::try_from(name.clone())
            .map_err(|e| TlsError::Config(format!("server name `{name}`: {e}")))
    }
}

pub mod net;
pub use net::{accept, accept_http1, connect, HandshakeStats, PeerIdentity, TlsConn, TlsIncoming};

#[cfg(test)]
mod tests;
