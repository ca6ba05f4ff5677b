//! `steward tls`: bootstrap a cluster's certificates. `ca create` makes the cluster's CA
//! (its key stays in the CA dir, never on a node); `cert create` issues a TLS dir
//! (`ca.pem`, `cert.pem`, `key.pem`) for one controller, agent or client; `show` prints
//! what a TLS dir holds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::json;
use steward_core::identity::{Identity, Principal, Role};
use steward_runtime::tls::{issue, Tls};

use crate::output::{print_json, Output};

#[derive(clap::Subcommand, Debug)]
pub enum TlsCommand {
    /// Certificate authorities.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Certificates for controllers, agents and clients.
    #[command(subcommand)]
    Cert(CertCommand),
    /// What a TLS dir holds: its identity, and whether it loads.
    Show {
        /// The TLS dir (ca.pem, cert.pem, key.pem).
        dir: PathBuf,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CaCommand {
    /// Create the cluster's CA in DIR (ca.pem, ca-key.pem); never overwrites one.
    Create {
        /// The cluster's name (its identities' trust domain): a-z, 0-9, '-'.
        #[arg(long)]
        cluster: String,
        #[arg(long, default_value = "steward-ca")]
        dir: PathBuf,
        #[arg(long, default_value_t = issue::CA_VALIDITY_DAYS)]
        days: u32,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CertCommand {
    /// Issue a TLS dir for one identity, signed by the CA in --ca-dir.
    Create {
        /// For the controller with this --id.
        #[arg(long, group = "who")]
        controller: Option<u64>,
        /// For the agent of this node id.
        #[arg(long, group = "who")]
        agent: Option<String>,
        /// For a client (an operator, a script) of this name, with --role.
        #[arg(long, group = "who")]
        client: Option<String>,
        /// The client's role.
        #[arg(long, value_parser = ["viewer", "operator", "admin"], default_value = "viewer")]
        role: String,
        #[arg(long, default_value = "steward-ca")]
        ca_dir: PathBuf,
        /// Where to write ca.pem, cert.pem and key.pem.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = issue::CERT_VALIDITY_DAYS)]
        days: u32,
        /// Replace an existing certificate (rotation: running processes pick it up).
        #[arg(long)]
        force: bool,
    },
}

pub fn run(output: Output, command: TlsCommand) -> anyhow::Result<ExitCode> {
    match command {
        TlsCommand::Ca(CaCommand::Create { cluster, dir, days }) => {
            let ca = issue::create_ca(&cluster, days)?;
            issue::write_ca(&dir, &ca)?;
            match output {
                Output::Json => print_json(&json!({"cluster": cluster, "dir": dir, "days": days}))?,
                Output::Table => println!(
                    "CA for cluster {cluster} in {} (ca.pem; keep ca-key.pem off the nodes)",
                    dir.display()
                ),
            }
        }
        TlsCommand::Cert(CertCommand::Create {
            controller,
            agent,
            client,
            role,
            ca_dir,
            out,
            days,
            force,
        }) => {
            let ca = issue::read_ca(&ca_dir)?;
            let cluster = issue::cluster_of_ca(&ca.cert)?;
            let principal = match (controller, agent, client) {
                (Some(id), None, None) => Principal::Controller(id),
                (None, Some(node), None) => Principal::Agent(node),
                (None, None, Some(name)) => Principal::Client {
                    name,
                    role: Role::parse(&role)?,
                },
                _ => bail!("name exactly one of --controller ID, --agent NODE, --client NAME"),
            };
            let identity = Identity::new(&cluster, principal)?;
            let cert = issue::create_cert(&ca, &identity, days, 0)?;
            issue::write_cert(&out, &cert, force)?;
            // What was written loads.
            let loaded = Tls::load(&out).with_context(|| format!("checking {}", out.display()))?;
            match output {
                Output::Json => print_json(&json!({
                    "identity": loaded.identity().uri(), "dir": out, "days": days,
                }))?,
                Output::Table => println!(
                    "{} in {} (valid {days} days)",
                    loaded.identity().uri(),
                    out.display()
                ),
            }
        }
        TlsCommand::Show { dir } => {
            let tls = Tls::load(&dir)?;
            let id = tls.identity();
            match output {
                Output::Json => print_json(&json!({
                    "identity": id.uri(), "cluster": id.cluster,
                    "principal": id.principal.to_string(),
                }))?,
                Output::Table => println!("{}: {} ({})", dir.display(), id.uri(), id),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
