//! `steward status`: the controller group at a glance.

use std::process::ExitCode;

use serde_json::json;
use steward_proto::v1::{MemberRole, ReadConsistency, StatusReply, StatusRequest};

use crate::client::with_retry;
use crate::output::{opt, print_json, table, Output};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Show the answering controller's own view instead of the leader's.
    #[arg(long)]
    pub stale: bool,
}

pub async fn fetch(addrs: &str, stale: bool) -> anyhow::Result<StatusReply> {
    let consistency = if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    } as i32;
    with_retry(addrs, |mut c| async move {
        c.status(StatusRequest { consistency })
            .await
            .map(|r| r.into_inner())
    })
    .await
}

pub fn role_name(role: i32) -> &'static str {
    match MemberRole::try_from(role) {
        Ok(MemberRole::Voter) => "voter",
        Ok(MemberRole::Learner) => "learner",
        _ => "unknown",
    }
}

pub fn status_json(s: &StatusReply) -> serde_json::Value {
    json!({
        "cluster_name": s.cluster_name,
        "responder_id": s.responder_id,
        "responder_state": s.responder_state,
        "leader_id": s.leader_id,
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "last_log_index": s.last_log_index,
        "state_digest": s.state_digest,
        "snapshot_index": s.snapshot_index,
        "purged_index": s.purged_index,
        "snapshots_installed": s.snapshots_installed,
        "members": s.members.iter().map(|m| json!({
            "id": m.id,
            "role": role_name(m.role),
            "is_leader": m.is_leader,
            "raft_addr": m.raft_addr,
            "api_addr": m.api_addr,
            "matched_index": m.matched_index,
            "lag": m.lag,
            "last_contact_ms": m.last_contact_ms,
            "incarnation": format!("{:#x}", m.incarnation),
            "feature_level": (m.feature_level > 0).then_some(m.feature_level),
        })).collect::<Vec<_>>(),
        "cluster_level": s.cluster_level,
        "supported_level": s.supported_level,
        "workers": s.workers.iter().map(|w| json!({
            "name": w.name,
            "state": w.state,
            "steps": w.steps,
            "errors": w.errors,
            "consecutive_errors": w.consecutive_errors,
            "last_error": (!w.last_error.is_empty()).then_some(&w.last_error),
            "last_error_age_ms": w.last_error_age_ms,
            "detail": w.detail,
        })).collect::<Vec<_>>(),
    })
}

/// The answering controller's workers.
pub fn print_workers(s: &StatusReply) {
    let mut t = table(["WORKER", "STATE", "STEPS", "ERRORS", "LAST ERROR", "DETAIL"]);
    for w in &s.workers {
        let last_error = match (w.last_error.as_str(), w.last_error_age_ms) {
            ("", _) => "-".to_string(),
            (e, Some(ms)) => format!("{}s ago: {e}", ms / 1000),
            (e, None) => e.to_string(),
        };
        t.add_row(vec![
            w.name.clone(),
            w.state.clone(),
            w.steps.to_string(),
            w.errors.to_string(),
            last_error,
            w.detail.clone(),
        ]);
    }
    println!("{t}");
}

pub fn print_members(s: &StatusReply) {
    let mut t = table([
        "ID",
        "ROLE",
        "LEADER",
        "RAFT ADDR",
        "API ADDR",
        "MATCHED",
        "LAG",
        "LAST CONTACT",
        "LEVEL",
    ]);
    for m in &s.members {
        t.add_row(vec![
            m.id.to_string(),
            role_name(m.role).to_string(),
            if m.is_leader {
                "*".into()
            } else {
                String::new()
            },
            m.raft_addr.clone(),
            if m.api_addr.is_empty() {
                "-".into()
            } else {
                m.api_addr.clone()
            },
            opt(m.matched_index),
            opt(m.lag),
            opt(m.last_contact_ms.map(|ms| format!("{ms}ms"))),
            if m.feature_level == 0 {
                "-".into()
            } else {
                m.feature_level.to_string()
            },
        ]);
    }
    println!("{t}");
}

pub async fn run(addrs: &str, output: Output, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let s = fetch(addrs, args.stale).await?;
    if output == Output::Json {
        print_json(&status_json(&s))?;
        return Ok(ExitCode::SUCCESS);
    }
    match s.leader_id {
        Some(l) => println!(
            "cluster {}: leader {l}, term {}, commit {}, applied {} (answered by {} as {})",
            s.cluster_name, s.term, s.commit_index, s.applied_index, s.responder_id, s.responder_state
        ),
        None => println!(
            "cluster {}: NO LEADER (election running or quorum lost), term {}, applied {} (answered by {})",
            s.cluster_name, s.term, s.applied_index, s.responder_id
        ),
    }
    println!(
        "snapshot at {}, log purged up to {}, state digest {}, feature level {} (this build knows {})",
        opt(s.snapshot_index),
        opt(s.purged_index),
        &s.state_digest[..s.state_digest.len().min(16)],
        s.cluster_level,
        s.supported_level
    );
    print_members(&s);
    println!("workers of controller {}:", s.responder_id);
    print_workers(&s);
    Ok(ExitCode::SUCCESS)
}
