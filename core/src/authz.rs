//! Who may call what: one rule per gRPC method, and the decision for a caller.
//!
//! The table below names every method of every `steward.v1` service (a test in
//! `steward-proto` checks it against the compiled descriptors, so a new method without a
//! rule fails the build's tests); a method not in it is refused. The rules:
//!
//! - the Raft service is for controllers only;
//! - an agent may register, heartbeat, report and watch only for its own node (the node
//!   authorizer rule: the handler checks the node the request names with
//!   [`may_act_for_node`]);
//! - chunk reads between agents need an agent (or controller) certificate; clients read
//!   with a role;
//! - the admin API and operators' agent calls need a role: viewer reads, operator
//!   changes, admin holds snapshots, restores and access tokens.
//!
//! A controller that forwards an operator's call to the leader acts for that caller: the
//! leader decides on the caller's identity, which only a controller may name.

use crate::identity::{Principal, Role};

/// What a method requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Any identity of the cluster: health checks, reflection, the leader hint.
    AnyMember,
    /// Controllers only.
    Controllers,
    /// An agent for its own node (checked by the handler), or a controller forwarding one.
    OwnNode,
    /// Agents and controllers, or a client with at least this role.
    PeersOr(Role),
    /// A client (certificate or token) with at least this role (a controller forwarding
    /// for one names it; see `runtime::access`).
    Role(Role),
}

/// The services' full names.
pub const ADMIN: &str = "steward.v1.Admin";
pub const AGENT_CONTROL: &str = "steward.v1.AgentControl";
pub const AGENT_API: &str = "steward.v1.AgentApi";
pub const CHUNKS: &str = "steward.v1.ChunkService";
pub const RAFT: &str = "steward.v1.RaftService";
pub const HEALTH: &str = "grpc.health.v1.Health";
pub const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";
pub const REFLECTION_ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Every method Steward serves, with its rule: `(service, method, rule)`.
pub const METHODS: &[(&str, &str, Rule)] = &[
    // Admin: reads
    (ADMIN, "Status", Rule::Role(Role::Viewer)),
    (ADMIN, "KvGet", Rule::Role(Role::Viewer)),
    (ADMIN, "KvList", Rule::Role(Role::Viewer)),
    (ADMIN, "ListNodes", Rule::Role(Role::Viewer)),
    (ADMIN, "NodeEvents", Rule::Role(Role::Viewer)),
    (ADMIN, "PlanJob", Rule::Role(Role::Viewer)),
    (ADMIN, "ListJobs", Rule::Role(Role::Viewer)),
    (ADMIN, "GetJob", Rule::Role(Role::Viewer)),
    (ADMIN, "ListAllocations", Rule::Role(Role::Viewer)),
    (ADMIN, "GetAllocation", Rule::Role(Role::Viewer)),
    (ADMIN, "NodeScheduling", Rule::Role(Role::Viewer)),
    // Agents resolve their jobs' inputs (object versions) through the leader.
    (ADMIN, "GetObject", Rule::PeersOr(Role::Viewer)),
    (ADMIN, "ListObjects", Rule::Role(Role::Viewer)),
    (ADMIN, "ObjectInfo", Rule::Role(Role::Viewer)),
    (ADMIN, "Fsck", Rule::Role(Role::Viewer)),
    (ADMIN, "LocateChunk", Rule::Role(Role::Viewer)),
    // Admin: changes
    (ADMIN, "KvPut", Rule::Role(Role::Operator)),
    (ADMIN, "KvDelete", Rule::Role(Role::Operator)),
    (ADMIN, "AddLearner", Rule::Role(Role::Operator)),
    (ADMIN, "Promote", Rule::Role(Role::Operator)),
    (ADMIN, "RemovePeer", Rule::Role(Role::Operator)),
    (ADMIN, "TransferLeader", Rule::Role(Role::Operator)),
    (ADMIN, "RemoveNode", Rule::Role(Role::Operator)),
    (ADMIN, "SubmitJob", Rule::Role(Role::Operator)),
    (ADMIN, "CancelJob", Rule::Role(Role::Operator)),
    (ADMIN, "SetNodeScheduling", Rule::Role(Role::Operator)),
    (ADMIN, "PlanObjectPut", Rule::Role(Role::Operator)),
    (ADMIN, "CommitObjectVersion", Rule::Role(Role::Operator)),
    (ADMIN, "MoveObjectTag", Rule::Role(Role::Operator)),
    (ADMIN, "DeleteObject", Rule::Role(Role::Operator)),
    (ADMIN, "SetNodeMaintenance", Rule::Role(Role::Operator)),
    // Admin: access tokens and the whole state
    (ADMIN, "AclBootstrap", Rule::Role(Role::Admin)),
    (ADMIN, "CreateAclToken", Rule::Role(Role::Admin)),
    (ADMIN, "ListAclTokens", Rule::Role(Role::Admin)),
    (ADMIN, "RevokeAclToken", Rule::Role(Role::Admin)),
    (ADMIN, "SnapshotSave", Rule::Role(Role::Admin)),
    (ADMIN, "SnapshotRestore", Rule::Role(Role::Admin)),
    // Agents to controllers
    (AGENT_CONTROL, "LeaderHint", Rule::AnyMember),
    (AGENT_CONTROL, "RegisterNode", Rule::OwnNode),
    (AGENT_CONTROL, "Heartbeat", Rule::OwnNode),
    (AGENT_CONTROL, "WatchAllocations", Rule::OwnNode),
    (AGENT_CONTROL, "ReportAllocations", Rule::OwnNode),
    (AGENT_CONTROL, "ReportChunks", Rule::OwnNode),
    (AGENT_CONTROL, "ConfirmGarbage", Rule::OwnNode),
    // Operators to agents
    (AGENT_API, "GetTelemetry", Rule::PeersOr(Role::Viewer)),
    (AGENT_API, "AllocLogs", Rule::Role(Role::Viewer)),
    (AGENT_API, "InjectGpuFault", Rule::Role(Role::Operator)),
    (AGENT_API, "SetGpuLoad", Rule::Role(Role::Operator)),
    // Chunks: agents and controllers; clients read and write through the object path
    (CHUNKS, "GetChunk", Rule::PeersOr(Role::Viewer)),
    (CHUNKS, "HasChunks", Rule::PeersOr(Role::Viewer)),
    (CHUNKS, "ChunkStoreStatus", Rule::PeersOr(Role::Viewer)),
    // Agents never push chunks to each other (they pull with CopyChunks): writes and
    // scrubs are an operator's.
    (CHUNKS, "PutChunk", Rule::Role(Role::Operator)),
    (CHUNKS, "StartScrub", Rule::Role(Role::Operator)),
    (CHUNKS, "CopyChunks", Rule::Controllers),
    (CHUNKS, "RemoveChunks", Rule::Controllers),
    // Controllers among themselves
    (RAFT, "AppendEntries", Rule::Controllers),
    (RAFT, "Vote", Rule::Controllers),
    (RAFT, "InstallSnapshot", Rule::Controllers),
    (RAFT, "PauseElection", Rule::Controllers),
    (RAFT, "Campaign", Rule::Controllers),
    (RAFT, "RegisterController", Rule::Controllers),
    // Everyone
    (HEALTH, "Check", Rule::AnyMember),
    (HEALTH, "Watch", Rule::AnyMember),
    (REFLECTION, "ServerReflectionInfo", Rule::AnyMember),
    (REFLECTION_ALPHA, "ServerReflectionInfo", Rule::AnyMember),
];

/// The rule of the method at gRPC path `/SERVICE/METHOD` (None: not a method Steward
/// serves, refused).
pub fn rule_for(path: &str) -> Option<Rule> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    METHODS
        .iter()
        .find(|(s, m, _)| *s == service && *m == method)
        .map(|(_, _, r)| *r)
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{0} is not a Steward method")]
    UnknownMethod(String),
    #[error("{path} is for {needs}; the caller is {caller}")]
    Refused {
        path: String,
        needs: String,
        caller: String,
    },
}

/// Whether `caller`, holding `token_role` through a bearer token (if any), may call the
/// method at `path`. Node-scoped methods (`Rule::OwnNode`) pass here for any agent; the
/// handler then checks the node with [`may_act_for_node`].
pub fn authorize(path: &str, caller: &Principal, token_role: Option<Role>) -> Result<Rule, Denied> {
    let rule = rule_for(path).ok_or_else(|| Denied::UnknownMethod(path.to_string()))?;
    let role = caller.role().max(token_role);
    let ok = match rule {
        Rule::AnyMember => true,
        Rule::Controllers => matches!(caller, Principal::Controller(_)),
        Rule::OwnNode => matches!(caller, Principal::Controller(_) | Principal::Agent(_)),
        Rule::PeersOr(need) => {
            matches!(caller, Principal::Controller(_) | Principal::Agent(_))
                || role.is_some_and(|r| r >= need)
        }
        // A controller holds no role of its own: when it forwards an operator's call to
        // the leader it names the operator, whose role is checked (`access::ON_BEHALF_OF`).
        Rule::Role(need) => role.is_some_and(|r| r >= need),
    };
    if ok {
        Ok(rule)
    } else {
        Err(Denied::Refused {
            path: path.to_string(),
            needs: needs(rule),
            caller: match token_role {
                Some(t) => format!("{caller} with a {t} token"),
                None => caller.to_string(),
            },
        })
    }
}

fn needs(rule: Rule) -> String {
    match rule {
        Rule::AnyMember => "any member".into(),
        Rule::Controllers => "controllers".into(),
        Rule::OwnNode => "an agent, for its own node".into(),
        Rule::PeersOr(r) => format!("agents, controllers or a client with role {r} or higher"),
        Rule::Role(r) => format!("a client with role {r} or higher"),
    }
}

/// The node authorizer rule: an agent acts only for its own node; a controller (which
/// forwards agents' calls to the leader) for any.
pub fn may_act_for_node(caller: &Principal, node: &str) -> bool {
    match caller {
        Principal::Agent(own) => own == node,
        Principal::Controller(_) => true,
        Principal::Client { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(role: Role) -> Principal {
        Principal::Client {
            name: "alice".into(),
            role,
        }
    }

    #[test]
    fn every_method_appears_once() {
        let mut seen = std::collections::BTreeSet::new();
        for (s, m, _) in METHODS {
            assert!(seen.insert((s, m)), "{s}/{m} listed twice");
        }
    }

    #[test]
    fn viewers_read_operators_change_admins_hold_the_state() {
        let v = client(Role::Viewer);
        let o = client(Role::Operator);
        let a = client(Role::Admin);
        for path in [
            "/steward.v1.Admin/CancelJob",
            "/steward.v1.Admin/MoveObjectTag",
            "/steward.v1.Admin/AddLearner",
            "/steward.v1.Admin/RemovePeer",
            "/steward.v1.AgentApi/InjectGpuFault",
        ] {
            assert!(
                authorize(path, &v, None).is_err(),
                "a viewer may not {path}"
            );
            assert!(authorize(path, &o, None).is_ok(), "an operator may {path}");
            // A viewer certificate with an operator token may.
            assert!(authorize(path, &v, Some(Role::Operator)).is_ok());
        }
        assert!(authorize("/steward.v1.Admin/Status", &v, None).is_ok());
        assert!(authorize("/steward.v1.Admin/SnapshotRestore", &o, None).is_err());
        assert!(authorize("/steward.v1.Admin/SnapshotRestore", &a, None).is_ok());
    }

    #[test]
    fn agents_and_clients_stay_in_their_lanes() {
        let agent = Principal::Agent("node-a".into());
        let controller = Principal::Controller(1);
        let op = client(Role::Admin);
        // An agent certificate is no operator.
        assert!(authorize("/steward.v1.Admin/Status", &agent, None).is_err());
        assert!(authorize("/steward.v1.Admin/SubmitJob", &agent, None).is_err());
        // Raft and the copies the leader orders: controllers only.
        for path in [
            "/steward.v1.RaftService/AppendEntries",
            "/steward.v1.ChunkService/RemoveChunks",
            "/steward.v1.ChunkService/CopyChunks",
        ] {
            assert!(authorize(path, &controller, None).is_ok());
            assert!(authorize(path, &agent, None).is_err());
            assert!(authorize(path, &op, None).is_err());
        }
        // A controller holds no role of its own: it forwards a caller's call naming the
        // caller (whose role the leader checks).
        assert!(authorize("/steward.v1.Admin/Status", &controller, None).is_err());
        assert!(authorize("/steward.v1.Admin/SubmitJob", &controller, None).is_err());
        // Agents report for themselves only; clients never.
        assert!(authorize("/steward.v1.AgentControl/Heartbeat", &agent, None).is_ok());
        assert!(authorize("/steward.v1.AgentControl/Heartbeat", &op, None).is_err());
        assert!(may_act_for_node(&agent, "node-a"));
        assert!(!may_act_for_node(&agent, "node-b"));
        assert!(may_act_for_node(&controller, "node-b"));
        assert!(!may_act_for_node(&op, "node-a"));
        // An agent stages its jobs' inputs: it reads object versions, and nothing else.
        assert!(authorize("/steward.v1.Admin/GetObject", &agent, None).is_ok());
        assert!(authorize("/steward.v1.Admin/ListObjects", &agent, None).is_err());
        // Chunk reads between agents.
        assert!(authorize("/steward.v1.ChunkService/GetChunk", &agent, None).is_ok());
        // Everyone checks health.
        assert!(authorize("/grpc.health.v1.Health/Check", &agent, None).is_ok());
    }

    #[test]
    fn unknown_methods_are_refused() {
        let admin = client(Role::Admin);
        for path in [
            "/steward.v1.Admin/DropEverything",
            "/steward.v1.Admin",
            "steward.v1.Admin/Status",
            "",
            "/",
        ] {
            assert!(matches!(
                authorize(path, &admin, None),
                Err(Denied::UnknownMethod(_))
            ));
        }
    }
}
