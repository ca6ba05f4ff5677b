//! `steward operator`: Raft membership and snapshots of the controller group.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use steward_controller::snapshot_file;
use steward_proto::v1::{
    AddLearnerRequest, MembershipReply, PromoteRequest, RemovePeerRequest, SnapshotChunk,
    SnapshotSaveRequest, TransferLeaderRequest,
};
use steward_proto::SNAPSHOT_RESTORE_TIMEOUT;

use crate::client::with_retry;
use crate::output::{print_json, Output};

/// Chunk size when uploading a snapshot for restore.
const UPLOAD_CHUNK: usize = 1024 * 1024;

#[derive(clap::Subcommand, Debug)]
pub enum OperatorCommand {
    /// Raft membership of the controller group.
    #[command(subcommand)]
    Raft(RaftCommand),
    /// Save, restore and inspect snapshots of the cluster state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(clap::Subcommand, Debug)]
pub enum RaftCommand {
    /// List the group's members with role, leader, lag and last contact.
    ListPeers,
    /// Add a controller as a non-voting learner; it catches up from the leader.
    AddLearner {
        id: u64,
        /// Its Raft address, HOST:PORT.
        raft_addr: String,
        /// Its admin API address, HOST:PORT.
        api_addr: String,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a member (voter or learner) from the group.
    RemovePeer { id: u64 },
    /// Hand leadership to another voter.
    TransferLeader { id: u64 },
}

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Write a consistent snapshot of the cluster state to FILE.
    Save { file: PathBuf },
    /// Replace the cluster's state with the snapshot in FILE (replicated to every controller).
    Restore { file: PathBuf },
    /// Verify FILE and print what it holds; needs no cluster.
    Inspect { file: PathBuf },
}

fn print_membership(output: Output, what: &str, r: &MembershipReply) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(
            &json!({"log_index": r.log_index, "voters": r.voters, "learners": r.learners}),
        ),
        Output::Table => {
            println!(
                "{what}; voters {:?}, learners {:?} (log index {})",
                r.voters, r.learners, r.log_index
            );
            Ok(())
        }
    }
}

pub async fn run(
    addrs: &str,
    output: Output,
    command: OperatorCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        OperatorCommand::Raft(RaftCommand::ListPeers) => {
            let s = super::status::fetch(addrs, false).await?;
            match output {
                Output::Json => print_json(&super::status::status_json(&s)["members"])?,
                Output::Table => super::status::print_members(&s),
            }
        }
        OperatorCommand::Raft(RaftCommand::AddLearner {
            id,
            raft_addr,
            api_addr,
        }) => {
            let req = AddLearnerRequest {
                id,
                raft_addr,
                api_addr,
            };
            let r = with_retry(addrs, |mut c| {
                let req = req.clone();
                async move { c.add_learner(req).await.map(|r| r.into_inner()) }
            })
            .await?;
            print_membership(output, &format!("controller {id} added as learner"), &r)?;
        }
        OperatorCommand::Raft(RaftCommand::Promote { id }) => {
            let r = with_retry(addrs, |mut c| async move {
                c.promote(PromoteRequest { id })
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
            print_membership(output, &format!("controller {id} is a voter"), &r)?;
        }
        OperatorCommand::Raft(RaftCommand::RemovePeer { id }) => {
            let r = with_retry(addrs, |mut c| async move {
                c.remove_peer(RemovePeerRequest { id })
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
            print_membership(output, &format!("controller {id} removed"), &r)?;
        }
        OperatorCommand::Raft(RaftCommand::TransferLeader { id }) => {
            let r = with_retry(addrs, |mut c| async move {
                c.transfer_leader(TransferLeaderRequest { to: id })
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
            match output {
                Output::Json => print_json(&json!({"leader_id": r.leader_id, "term": r.term}))?,
                Output::Table => println!("controller {} leads in term {}", r.leader_id, r.term),
            }
        }
        OperatorCommand::Snapshot(SnapshotCommand::Save { file }) => {
            let bytes = with_retry(addrs, |mut c| async move {
                let mut stream = c.snapshot_save(SnapshotSaveRequest {}).await?.into_inner();
                let mut bytes = Vec::new();
                while let Some(chunk) = stream.next().await {
                    bytes.extend_from_slice(&chunk?.data);
                }
                Ok(bytes)
            })
            .await?;
            let (header, _) =
                snapshot_file::decode(&bytes).context("the cluster sent an invalid snapshot")?;
            let tmp = file.with_extension("partial");
            std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &file)
                .with_context(|| format!("renaming to {}", file.display()))?;
            match output {
                Output::Json => print_json(
                    &json!({"file": file, "bytes": bytes.len(), "applied_index": header.applied_index, "keys": header.keys, "state_digest": header.state_digest}),
                )?,
                Output::Table => println!(
                    "saved {} ({} bytes): index {}, {} keys",
                    file.display(),
                    bytes.len(),
                    header.applied_index,
                    header.keys
                ),
            }
        }
        OperatorCommand::Snapshot(SnapshotCommand::Restore { file }) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            // Refuse a bad file here, before the cluster sees it.
            snapshot_file::decode(&bytes)
                .with_context(|| format!("{} is not a valid snapshot", file.display()))?;
            let chunks: Vec<SnapshotChunk> = bytes
                .chunks(UPLOAD_CHUNK)
                .map(|c| SnapshotChunk { data: c.to_vec() })
                .collect();
            // Retried only where the cluster says nothing was restored.
            let r = crate::client::with_retry_timed(addrs, SNAPSHOT_RESTORE_TIMEOUT, |mut c| {
                let chunks = chunks.clone();
                async move {
                    c.snapshot_restore(futures::stream::iter(chunks))
                        .await
                        .map(|r| r.into_inner())
                }
            })
            .await?;
            match output {
                Output::Json => print_json(&json!({"revision": r.revision, "keys": r.keys}))?,
                Output::Table => println!("restored {} keys at revision {}", r.keys, r.revision),
            }
        }
        OperatorCommand::Snapshot(SnapshotCommand::Inspect { file }) => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let (h, state) = snapshot_file::decode(&bytes)
                .with_context(|| format!("{} is not a valid snapshot", file.display()))?;
            match output {
                Output::Json => print_json(&json!({
                    "cluster_name": h.cluster_name, "taken_by": h.taken_by,
                    "applied_index": h.applied_index, "applied_term": h.applied_term,
                    "voters": h.voters, "learners": h.learners, "keys": h.keys,
                    "controllers_recorded": state.controllers.len(),
                    "state_digest": h.state_digest, "bytes": bytes.len(),
                }))?,
                Output::Table => {
                    println!(
                        "snapshot of cluster {} taken by controller {}",
                        h.cluster_name, h.taken_by
                    );
                    println!(
                        "  applied index {} (term {})",
                        h.applied_index, h.applied_term
                    );
                    println!("  voters {:?}, learners {:?}", h.voters, h.learners);
                    println!(
                        "  {} keys, {} controllers recorded",
                        h.keys,
                        state.controllers.len()
                    );
                    println!("  state digest {}", h.state_digest);
                    println!("  {} bytes, checksum ok", bytes.len());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
