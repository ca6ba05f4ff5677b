//! How the CLI's admin commands reach a cluster: mutual TLS with a TLS dir (its client
//! certificate names the operator and role), a bearer token for the controllers, or
//! plaintext when asked for with `--insecure`.
//!
//! The TLS dir is, in order: `--tls-dir` (or `STEWARD_TLS_DIR`); then `steward dev`'s
//! client certificate under the dev data dir (`STEWARD_DEV_DIR`, default `.steward-dev`),
//! so that a new user's commands work against `make dev` with no flags. Without either, a
//! command that needs the cluster says what to give.
//!
//! The flags are read once at start ([`init`]) and resolved on first use, so that commands
//! that reach no cluster (`steward tls`, `steward sim`) need none of them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use steward_runtime::tls::{ServerKind, Tls};
use steward_runtime::transport::ClientOptions;
use tonic::metadata::{Ascii, MetadataValue};

/// The dev cluster's data dir when `STEWARD_DEV_DIR` does not name another.
pub const DEV_DATA_DIR: &str = ".steward-dev";
/// Where `steward dev` keeps its CA and certificates, under its data dir.
pub const DEV_TLS_SUBDIR: &str = "tls";
/// The dev cluster's admin client certificate, under its TLS subdir.
pub const DEV_CLIENT: &str = "client-admin";

/// The security flags every command takes (global flags).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecurityArgs {
    /// Mutual TLS: a dir with ca.pem, cert.pem and key.pem (`steward tls cert create`).
    /// Default for admin commands: the `steward dev` client certificate, when present.
    #[arg(long, global = true, env = "STEWARD_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Plaintext, with no TLS (for a cluster run with --insecure; warned at every start).
    #[arg(long, global = true, env = "STEWARD_INSECURE")]
    pub insecure: bool,
    /// A bearer token (`steward acl token create`) sent to the controllers with every
    /// admin call; it grants its role on top of the certificate's.
    #[arg(long, global = true, env = "STEWARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The dev data dir the CLI looks in for a client certificate.
pub fn dev_data_dir() -> PathBuf {
    std::env::var_os("STEWARD_DEV_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEV_DATA_DIR))
}

/// The dev cluster's client TLS dir under `data_dir`.
pub fn dev_client_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DEV_TLS_SUBDIR).join(DEV_CLIENT)
}

/// The resolved way to reach a cluster.
#[derive(Debug, Clone)]
pub struct ClientSecurity {
    pub tls: Option<Tls>,
    pub token: Option<MetadataValue<Ascii>>,
}

static ARGS: OnceLock<SecurityArgs> = OnceLock::new();
static RESOLVED: OnceLock<ClientSecurity> = OnceLock::new();

/// Records the command line's flags (once, at start).
pub fn init(args: SecurityArgs) {
    let _ = ARGS.set(args);
}

/// The flags as given (the daemons take their TLS dir from them too).
pub fn args() -> SecurityArgs {
    ARGS.get().cloned().unwrap_or_default()
}

fn resolve(args: &SecurityArgs) -> anyhow::Result<ClientSecurity> {
    let token = match &args.token {
        None => None,
        Some(t) => Some(
            format!("Bearer {}", t.trim())
                .parse()
                .context("--token (or STEWARD_TOKEN) holds characters a header cannot carry")?,
        ),
    };
    let dir = match (&args.tls_dir, args.insecure) {
        (Some(_), true) => anyhow::bail!("--tls-dir and --insecure exclude each other"),
        (None, true) => return Ok(ClientSecurity { tls: None, token }),
        (Some(dir), false) => dir.clone(),
        (None, false) => {
            let dev = dev_client_dir(&dev_data_dir());
            if !dev.join(steward_runtime::tls::CERT_FILE).exists() {
                anyhow::bail!(
                    "no TLS dir: give --tls-dir DIR (or STEWARD_TLS_DIR) with ca.pem, cert.pem and key.pem \
                     (`steward tls cert create --client NAME --role ROLE` makes one), or --insecure for a \
                     plaintext cluster; `steward dev`'s certificate ({}) was not found either",
                    dev.display()
                );
            }
            dev
        }
    };
    let tls = Tls::load(&dir).with_context(|| format!("TLS dir {}", dir.display()))?;
    Ok(ClientSecurity {
        tls: Some(tls),
        token,
    })
}

/// The resolved security of this process's admin commands.
pub fn current() -> anyhow::Result<&'static ClientSecurity> {
    if let Some(s) = RESOLVED.get() {
        return Ok(s);
    }
    let resolved = resolve(&args())?;
    Ok(RESOLVED.get_or_init(|| resolved))
}

/// Client options for servers of `kind`, with this process's TLS.
pub fn options(
    connect_timeout: std::time::Duration,
    kind: ServerKind,
) -> anyhow::Result<ClientOptions> {
    Ok(ClientOptions::new(connect_timeout).tls(current()?.tls.clone(), kind))
}

/// Adds the bearer token (if any) to an admin call.
#[derive(Clone)]
pub struct TokenInterceptor(pub Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_resolve_to_tls_or_plaintext() {
        let insecure = SecurityArgs {
            insecure: true,
            token: Some("abc".into()),
            ..Default::default()
        };
        let r = resolve(&insecure).expect("plaintext");
        assert!(r.tls.is_none());
        assert_eq!(r.token.expect("token").to_str().ok(), Some("Bearer abc"));
        let both = SecurityArgs {
            insecure: true,
            tls_dir: Some("/nonexistent".into()),
            ..Default::default()
        };
        assert!(resolve(&both).unwrap_err().to_string().contains("exclude"));
        let missing = SecurityArgs {
            tls_dir: Some("/nonexistent/tls".into()),
            ..Default::default()
        };
        let e = format!("{:#}", resolve(&missing).unwrap_err());
        assert!(e.contains("/nonexistent/tls"), "{e}");
        let bad_token = SecurityArgs {
            insecure: true,
            token: Some("a\nb".into()),
            ..Default::default()
        };
        assert!(resolve(&bad_token).is_err());
    }
}
