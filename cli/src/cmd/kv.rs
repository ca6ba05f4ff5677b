//! `steward kv`: the replicated metadata key-value namespace.

use std::process::ExitCode;

use serde_json::json;
use steward_proto::v1::{
    KvDeleteRequest, KvEntry, KvGetRequest, KvListRequest, KvPutRequest, ReadConsistency,
};

use crate::client::{request_id, with_request_retry, with_retry};
use crate::output::{print_json, show_bytes, table, Output};

#[derive(clap::Subcommand, Debug)]
pub enum KvCommand {
    /// Write VALUE under KEY.
    Put {
        key: String,
        value: String,
        /// Compare-and-set: write only if KEY's revision is REVISION (0: only if absent).
        #[arg(long, value_name = "REVISION")]
        cas: Option<u64>,
    },
    /// Read KEY.
    Get {
        key: String,
        /// Read the answering controller's state, possibly behind the leader.
        #[arg(long)]
        stale: bool,
    },
    /// List keys starting with PREFIX.
    List {
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many entries (0: the server's limit).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        #[arg(long)]
        stale: bool,
    },
    /// Delete KEY.
    Delete {
        key: String,
        /// Delete only if KEY's revision is REVISION.
        #[arg(long, value_name = "REVISION")]
        cas: Option<u64>,
    },
}

fn consistency(stale: bool) -> i32 {
    (if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }) as i32
}

fn entry_json(e: &KvEntry) -> serde_json::Value {
    json!({
        "key": e.key,
        "value": show_bytes(&e.value),
        "create_revision": e.create_revision,
        "revision": e.mod_revision,
        "version": e.version,
    })
}

pub async fn run(addrs: &str, output: Output, command: KvCommand) -> anyhow::Result<ExitCode> {
    match command {
        KvCommand::Put { key, value, cas } => {
            let req = KvPutRequest {
                key: key.clone(),
                value: value.into_bytes(),
                expected_revision: cas,
                request_id: Some(request_id()),
            };
            let reply = with_request_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.kv_put(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match output {
                Output::Json => print_json(&json!({"key": key, "revision": reply.revision}))?,
                Output::Table => println!("{key} written at revision {}", reply.revision),
            }
        }
        KvCommand::Get { key, stale } => {
            let req = KvGetRequest {
                key: key.clone(),
                consistency: consistency(stale),
            };
            let reply = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.kv_get(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            let Some(entry) = reply.entry else {
                if output == Output::Json {
                    print_json(&json!({"key": key, "found": false}))?;
                } else {
                    eprintln!("{key}: not found");
                }
                return Ok(ExitCode::from(1));
            };
            match output {
                Output::Json => print_json(&entry_json(&entry))?,
                Output::Table => println!("{}", show_bytes(&entry.value)),
            }
        }
        KvCommand::List {
            prefix,
            limit,
            stale,
        } => {
            let req = KvListRequest {
                prefix,
                start_after: String::new(),
                limit,
                consistency: consistency(stale),
            };
            let reply = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.kv_list(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match output {
                Output::Json => print_json(&json!({
                    "entries": reply.entries.iter().map(entry_json).collect::<Vec<_>>(),
                    "more": reply.more,
                    "read_revision": reply.read_revision,
                }))?,
                Output::Table => {
                    let mut t = table(["KEY", "VALUE", "REVISION", "VERSION"]);
                    for e in &reply.entries {
                        t.add_row(vec![
                            e.key.clone(),
                            show_bytes(&e.value),
                            e.mod_revision.to_string(),
                            e.version.to_string(),
                        ]);
                    }
                    println!("{t}");
                    if reply.more {
                        println!("(more entries match; use --limit or a longer prefix)");
                    }
                }
            }
        }
        KvCommand::Delete { key, cas } => {
            let req = KvDeleteRequest {
                key: key.clone(),
                expected_revision: cas,
                request_id: Some(request_id()),
            };
            let reply = with_request_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.kv_delete(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            match output {
                Output::Json => print_json(
                    &json!({"key": key, "existed": reply.existed, "revision": reply.revision}),
                )?,
                Output::Table if reply.existed => {
                    println!("{key} deleted at revision {}", reply.revision)
                }
                Output::Table => println!("{key} did not exist"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
