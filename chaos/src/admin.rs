//! How the harness speaks to a cluster as its administrator: the `steward` command line
//! (fault actions, the object workload) and gRPC channels (the KV and job workloads, the
//! monitor), with one set of credentials.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::workload::kv;

/// The credentials the harness acts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    /// The test PKI's admin certificate (or plaintext under `STEWARD_IT_INSECURE=1`): a
    /// cluster the harness started.
    Harness,
    /// A TLS dir as `steward` takes it in `STEWARD_TLS_DIR` (the CA, and a client
    /// certificate with the admin role): a staging cluster.
    TlsDir(PathBuf),
    /// Plaintext, for a staging cluster run with `insecure = true`.
    Insecure,
}

impl Admin {
    /// `steward` as this admin, with none of the caller's own `STEWARD_*` settings.
    pub fn command(&self) -> Command {
        match self {
            Admin::Harness => crate::harness::pki::steward_cmd(),
            other => {
                let mut cmd = Command::new(crate::harness::cluster::steward_bin());
                cmd.env_remove("STEWARD_TOKEN")
                    .env_remove("STEWARD_TLS_DIR")
                    .env_remove("STEWARD_INSECURE")
                    .env_remove("STEWARD_DEV_DIR");
                match other {
                    Admin::TlsDir(dir) => cmd.env("STEWARD_TLS_DIR", dir),
                    _ => cmd.env("STEWARD_INSECURE", "true"),
                };
                cmd
            }
        }
    }

    /// Opens channels to controllers as this admin; calls are cut off after 5 s.
    pub fn connector(&self) -> kv::Connect {
        let insecure = match self {
            Admin::Harness => crate::harness::pki::insecure(),
            Admin::TlsDir(_) => false,
            Admin::Insecure => true,
        };
        let me = self.clone();
        Arc::new(move |addr: String| {
            let me = me.clone();
            Box::pin(async move {
                let options =
                    steward_runtime::transport::ClientOptions::new(Duration::from_millis(500))
                        .call_timeout(Duration::from_secs(5));
                let options = match &me {
                    _ if insecure => options,
                    Admin::TlsDir(dir) => {
                        let tls = steward_runtime::tls::Tls::load(dir.clone()).ok()?;
                        options.tls(Some(tls), steward_runtime::tls::ServerKind::Controller)
                    }
                    _ => {
                        return crate::harness::cluster::channel(
                            &addr,
                            steward_runtime::tls::ServerKind::Controller,
                            Duration::from_secs(5),
                        )
                        .await
                        .ok()
                    }
                };
                steward_runtime::transport::connect(&addr, &options)
                    .await
                    .ok()
            })
        })
    }

    /// Checks that the credentials can be read, before a run starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Admin::TlsDir(dir) = self {
            steward_runtime::tls::Tls::load(dir.clone())
                .map_err(|e| anyhow::anyhow!("the admin TLS dir {}: {e}", dir.display()))?;
        }
        Ok(())
    }
}
