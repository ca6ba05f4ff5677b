//! Agents' machines ("nodes") as the cluster state records them: identity, labels, the last
//! inventory the agent reported (typed, `crate::inventory`), and health as the leader's
//! failure detector decided it, with a bounded event history. Heartbeats are *not* here: they stay in the leader's memory
//! (`crate::liveness`); only registrations and health transitions are replicated.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::inventory::Inventory;

/// Events kept in the cluster state; older ones are dropped first.
pub const MAX_NODE_EVENTS: usize = 10_000;
/// Largest inventory an agent may register, in bytes (encoded; 8 GPUs take about 5 KiB).
pub const MAX_INVENTORY_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeHealth {
    Ready,
    Suspect,
    Down,
}

impl NodeHealth {
    pub fn name(self) -> &'static str {
        match self {
            NodeHealth::Ready => "ready",
            NodeHealth::Suspect => "suspect",
            NodeHealth::Down => "down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub inventory: Inventory,
    /// BLAKE3, hex, of the registration (hostname, labels, inventory) as the agent computed
    /// it: agents re-register only when it changes.
    pub registration_digest: String,
    pub health: NodeHealth,
    /// Revision of the last health change.
    pub health_since: u64,
    pub registered_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    pub revision: u64,
    /// The leader's clock when the change was proposed (0 for format-1 events).
    pub at_unix_ms: u64,
    pub node: String,
    /// `None`: the node was new.
    pub from: Option<NodeHealth>,
    /// `None`: the node was removed.
    pub to: Option<NodeHealth>,
    pub reason: String,
}

/// Most labels per node.
pub const MAX_LABELS: usize = 64;
/// Longest label key or value, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeValidationError {
    #[error("{count} labels, the limit is {MAX_LABELS}")]
    TooManyLabels { count: usize },
    #[error("label `{key}`: keys are 1-{MAX_LABEL_BYTES} characters of a-z, A-Z, 0-9, - _ . /; values at most {MAX_LABEL_BYTES} bytes")]
    BadLabel { key: String },
    #[error("node id must be 1-64 characters of a-z, 0-9, '-'")]
    BadId,
    #[error("inventory is {0} bytes, the limit is {MAX_INVENTORY_BYTES}")]
    InventoryTooLarge(usize),
}

/// Checks a node's labels.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), NodeValidationError> {
    if labels.len() > MAX_LABELS {
        return Err(NodeValidationError::TooManyLabels {
            count: labels.len(),
        });
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_BYTES
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !key_ok || v.len() > MAX_LABEL_BYTES {
            return Err(NodeValidationError::BadLabel {
                key: k.chars().take(MAX_LABEL_BYTES).collect(),
            });
        }
    }
    Ok(())
}

/// Checks a node id and the size of its encoded inventory.
pub fn validate_registration(id: &str, inventory_bytes: usize) -> Result<(), NodeValidationError> {
    let id_ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !id_ok {
        return Err(NodeValidationError::BadId);
    }
    if inventory_bytes > MAX_INVENTORY_BYTES {
        return Err(NodeValidationError::InventoryTooLarge(inventory_bytes));
    }
    Ok(())
}
