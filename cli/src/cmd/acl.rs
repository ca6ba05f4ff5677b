//! `steward acl`: access tokens. A token grants its role at the controllers on top of the
//! caller's certificate (`--token` or `STEWARD_TOKEN`); only its hash is stored, so it is
//! shown once, when it is made.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use steward_proto::v1::{
    AclBootstrapRequest, AclTokenCreated, AclTokenPb, CreateAclTokenRequest, ListAclTokensRequest,
    RevokeAclTokenRequest,
};

use crate::client::with_retry;
use crate::output::{print_json, table, Output};

#[derive(clap::Subcommand, Debug)]
pub enum AclCommand {
    /// Make the cluster's first admin token (once per cluster; needs an admin
    /// certificate). Store it: it is not shown again.
    Bootstrap,
    /// Tokens: create, list, revoke (admin).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token with ROLE (viewer, operator or admin); prints it once.
    Create {
        #[arg(long)]
        role: String,
        /// Lifetime, e.g. 8h or 30d (default: no expiry; at most 10 years).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// What the token is for (shown by `list`).
        #[arg(long, default_value = "")]
        name: String,
    },
    /// The tokens: accessor, name, role, expiry, who made them (never the secrets).
    List,
    /// Revoke the token with ACCESSOR: every controller refuses it once it applied this.
    Revoke { accessor: String },
}

fn print_created(output: Output, t: &AclTokenCreated) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(&json!({
            "accessor": t.accessor,
            "token": t.token,
            "role": t.role,
            "expires_unix_ms": (t.expires_unix_ms > 0).then_some(t.expires_unix_ms),
        })),
        Output::Table => {
            println!("{}", t.token);
            eprintln!(
                "accessor {} ({}{}): store the token now, it is not shown again; use it with --token or STEWARD_TOKEN",
                t.accessor,
                t.role,
                if t.expires_unix_ms > 0 {
                    format!(", expires at {}", format_ms(t.expires_unix_ms))
                } else {
                    String::new()
                }
            );
            Ok(())
        }
    }
}

fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn token_json(t: &AclTokenPb) -> serde_json::Value {
    json!({
        "accessor": t.accessor,
        "name": t.name,
        "role": t.role,
        "created_unix_ms": t.created_unix_ms,
        "expires_unix_ms": (t.expires_unix_ms > 0).then_some(t.expires_unix_ms),
        "created_by": t.created_by,
        "expired": t.expired,
        "revoked": t.revoked,
    })
}

pub async fn run(addrs: &str, output: Output, command: AclCommand) -> anyhow::Result<ExitCode> {
    match command {
        AclCommand::Bootstrap => {
            let t = with_retry(addrs, |mut c| async move {
                c.acl_bootstrap(AclBootstrapRequest {})
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
            print_created(output, &t)?;
        }
        AclCommand::Token(TokenCommand::Create { role, ttl, name }) => {
            let req = CreateAclTokenRequest {
                role,
                name,
                ttl_seconds: ttl.map_or(0, |d| d.as_secs().max(1)),
            };
            let t = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.create_acl_token(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            print_created(output, &t)?;
        }
        AclCommand::Token(TokenCommand::List) => {
            let reply = with_retry(addrs, |mut c| async move {
                c.list_acl_tokens(ListAclTokensRequest {})
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
            match output {
                Output::Json => print_json(&json!(reply
                    .tokens
                    .iter()
                    .map(token_json)
                    .collect::<Vec<_>>()))?,
                Output::Table => {
                    let mut t =
                        table(["ACCESSOR", "NAME", "ROLE", "EXPIRES", "STATE", "CREATED BY"]);
                    for tok in &reply.tokens {
                        let state = if tok.revoked {
                            "revoked"
                        } else if tok.expired {
                            "expired"
                        } else {
                            "valid"
                        };
                        let expires = match tok.expires_unix_ms {
                            0 => "never".to_string(),
                            ms => format_ms(ms),
                        };
                        t.add_row([
                            tok.accessor.clone(),
                            tok.name.clone(),
                            tok.role.clone(),
                            expires,
                            state.to_string(),
                            tok.created_by.clone(),
                        ]);
                    }
                    println!("{t}");
                }
            }
        }
        AclCommand::Token(TokenCommand::Revoke { accessor }) => {
            let req = RevokeAclTokenRequest {
                accessor: accessor.clone(),
            };
            let reply = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.revoke_acl_token(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match output {
                Output::Json => {
                    print_json(&json!({"accessor": accessor, "existed": reply.existed}))?
                }
                Output::Table if reply.existed => println!("revoked {accessor}"),
                Output::Table => {
                    eprintln!("no token {accessor}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
