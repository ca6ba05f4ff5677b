//! Who is calling: the identities Steward's certificates carry, and the roles of operators.
//!
//! Every certificate the cluster's CA signs names exactly one identity in a URI subject
//! alternative name, in the SPIFFE form:
//!
//! ```text
//! spiffe://CLUSTER/controller/ID        a member of the Raft group (ID: its --id)
//! spiffe://CLUSTER/agent/NODE           the agent of node NODE
//! spiffe://CLUSTER/client/ROLE/NAME     an operator or a program, with a role
//! ```
//!
//! A certificate of another cluster (another trust domain) names no identity here, even
//! when it chains to the same CA. Bearer tokens carry a role too (`crate::acl`); an
//! identity's effective role is the higher of its certificate's and its token's.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ControllerId;

/// The URI scheme of identities.
pub const SCHEME: &str = "spiffe://";
/// Longest cluster name (a DNS label).
pub const MAX_CLUSTER_NAME: usize = 63;
/// Longest client name.
pub const MAX_CLIENT_NAME: usize = 64;
/// Longest identity URI accepted for parsing (anything longer is not one of ours).
pub const MAX_URI: usize = 256;

/// What an operator may do, lowest first: each role may do everything the ones below it
/// may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Reads: status, lists, object reads, fsck.
    Viewer,
    /// Changes: jobs, objects and tags, node scheduling and maintenance, membership, GPU
    /// faults.
    Operator,
    /// Everything: snapshots and restores, access tokens.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role, IdentityError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| IdentityError::BadRole(text.chars().take(32).collect()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of caller and what names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Principal {
    Controller(ControllerId),
    /// The agent of this node id.
    Agent(String),
    Client {
        name: String,
        role: Role,
    },
}

impl Principal {
    /// The operator role this principal holds by itself (controllers and agents hold none).
    pub fn role(&self) -> Option<Role> {
        match self {
            Principal::Client { role, .. } => Some(*role),
            _ => None,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Controller(id) => write!(f, "controller {id}"),
            Principal::Agent(node) => write!(f, "agent {node}"),
            Principal::Client { name, role } => write!(f, "client {name} ({role})"),
        }
    }
}

/// One identity: a principal of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    pub cluster: String,
    pub principal: Principal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("not a Steward identity URI (spiffe://CLUSTER/controller/ID | agent/NODE | client/ROLE/NAME): `{0}`")]
    NotAnIdentity(String),
    #[error("cluster name `{0}`: 1-{MAX_CLUSTER_NAME} characters of a-z, 0-9 and '-', not starting or ending with '-'")]
    BadCluster(String),
    #[error("role `{0}`: one of viewer, operator, admin")]
    BadRole(String),
    #[error("controller id `{0}`: a number from 1")]
    BadController(String),
    #[error("node id `{0}`: 1-64 characters of a-z, 0-9 and '-'")]
    BadNode(String),
    #[error(
        "client name `{0}`: 1-{MAX_CLIENT_NAME} characters of a-z, A-Z, 0-9, '.', '_' and '-'"
    )]
    BadClient(String),
}

/// Checks a cluster name (the trust domain of its identities).
pub fn validate_cluster_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CLUSTER_NAME
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadCluster(shown(name)))
    }
}

/// Checks a client's name.
pub fn validate_client_name(name: &str) -> Result<(), IdentityError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CLIENT_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadClient(shown(name)))
    }
}

fn validate_node(node: &str) -> Result<(), IdentityError> {
    crate::node::validate_registration(node, 0).map_err(|_| IdentityError::BadNode(shown(node)))
}

/// A bounded, printable copy of untrusted text for an error message.
fn shown(text: &str) -> String {
    text.chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl Identity {
    pub fn new(cluster: &str, principal: Principal) -> Result<Identity, IdentityError> {
        validate_cluster_name(cluster)?;
        match &principal {
            Principal::Controller(0) => return Err(IdentityError::BadController("0".into())),
            Principal::Controller(_) => {}
            Principal::Agent(node) => validate_node(node)?,
            Principal::Client { name, .. } => validate_client_name(name)?,
        }
        Ok(Identity {
            cluster: cluster.to_string(),
            principal,
        })
    }

    /// The URI a certificate carries for this identity.
    pub fn uri(&self) -> String {
        let path = match &self.principal {
            Principal::Controller(id) => format!("controller/{id}"),
            Principal::Agent(node) => format!("agent/{node}"),
            Principal::Client { name, role } => format!("client/{role}/{name}"),
        };
        format!("{SCHEME}{}/{path}", self.cluster)
    }

    /// Reads an identity URI; anything that is not exactly one of the three forms, with
    /// valid names, is refused.
    pub fn parse_uri(uri: &str) -> Result<Identity, IdentityError> {
        let not_ours = || IdentityError::NotAnIdentity(shown(uri));
        if uri.len() > MAX_URI {
            return Err(not_ours());
        }
        let rest = uri.strip_prefix(SCHEME).ok_or_else(not_ours)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let principal = match parts.as_slice() {
            [_, "controller", id] => {
                let n: ControllerId = id
                    .parse()
                    .ok()
                    // Canonical decimal only: `03` would name controller 3 a second way.
                    .filter(|n| {
                        *n > 0 && !id.starts_with('0') && id.chars().all(|c| c.is_ascii_digit())
                    })
                    .ok_or_else(|| IdentityError::BadController(shown(id)))?;
                Principal::Controller(n)
            }
            [_, "agent", node] => Principal::Agent(node.to_string()),
            [_, "client", role, name] => Principal::Client {
                name: name.to_string(),
                role: Role::parse(role)?,
            },
            _ => return Err(not_ours()),
        };
        Identity::new(parts[0], principal)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of cluster {}", self.principal, self.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn identities_round_trip_through_their_uri() {
        let cases = [
            Identity::new("prod-1", Principal::Controller(3)),
            Identity::new("prod-1", Principal::Agent("gpu-node-17".into())),
            Identity::new(
                "prod-1",
                Principal::Client {
                    name: "ci.bot_2".into(),
                    role: Role::Operator,
                },
            ),
        ];
        let uris = [
            "spiffe://prod-1/controller/3",
            "spiffe://prod-1/agent/gpu-node-17",
            "spiffe://prod-1/client/operator/ci.bot_2",
        ];
        for (id, uri) in cases.into_iter().zip(uris) {
            let id = id.expect("valid");
            assert_eq!(id.uri(), uri);
            assert_eq!(Identity::parse_uri(uri), Ok(id));
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "spiffe://",
            "https://prod/agent/a",
            "spiffe://prod/agent",
            "spiffe://prod/agent/a/b",
            "spiffe://prod/agent/UPPER",
            "spiffe://prod/agent/../x",
            "spiffe://prod/agent/",
            "spiffe://prod/controller/0",
            "spiffe://prod/controller/+3",
            "spiffe://prod/controller/03",
            "spiffe://prod/controller/x",
            "spiffe://prod/client/root/alice",
            "spiffe://prod/client/admin/..",
            "spiffe://prod/client/admin/a b",
            "spiffe://Prod/agent/a",
            "spiffe://-prod/agent/a",
            "spiffe://pr\0d/agent/a",
            "spiffe://prod/robot/a",
        ] {
            assert!(Identity::parse_uri(bad).is_err(), "{bad:?} refused");
        }
        let long = format!("spiffe://prod/agent/{}", "a".repeat(300));
        assert!(Identity::parse_uri(&long).is_err());
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Ok(r));
        }
        assert!(Role::parse("Admin").is_err());
    }

    proptest! {
        /// Parsing never panics, and whatever parses prints back to the same URI.
        #[test]
        fn parsing_any_text_is_total_and_canonical(text in "\\PC{0,300}") {
            if let Ok(id) = Identity::parse_uri(&text) {
                prop_assert_eq!(id.uri(), text);
            }
        }

        #[test]
        fn parsing_near_misses_is_total(
            cluster in "[a-z0-9-]{0,70}",
            kind in "(controller|agent|client|x)",
            rest in "[a-zA-Z0-9./_-]{0,70}",
        ) {
            let uri = format!("spiffe://{cluster}/{kind}/{rest}");
            if let Ok(id) = Identity::parse_uri(&uri) {
                prop_assert_eq!(id.uri(), uri);
            }
        }
    }
}
