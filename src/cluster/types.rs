//! The Raft type configuration: log entries carry [`MetaCommand`]s, applying one answers with the
//! state machine's verdict, and each member's node data says how to reach it and what it does.

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::NodeRole;
use crate::meta::{ApplyError, MetaCommand};

/// The state machine's answer to one command: the same verdict `MetaState::apply` gives.
pub type CommandOutcome = Result<(), ApplyError>;

openraft::declare_raft_types!(
    pub TypeConfig:
        D = MetaCommand,
        R = CommandOutcome,
        NodeId = u64,
        Node = NodeInfo,
        SnapshotData = Cursor<Vec<u8>>,
);

/// Raft's numeric id of a node, derived from its configured name so every node computes the
/// same id without coordination.
pub type RaftId = u64;

pub fn raft_id(name: &str) -> RaftId {
    let digest = Sha256::digest(name.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// What the cluster records about a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The configured `cluster.node_id`.
    pub name: String,
    pub role: NodeRole,
    /// Coordinator address peers dial (`advertise_addr`, else `coordinator_addr`).
    pub coordinator_addr: String,
    /// HTTP API address clients' requests are forwarded to.
    pub api_addr: String,
}

impl Default for NodeInfo {
    fn default() -> Self {
        NodeInfo {
            name: String::new(),
            role: NodeRole::Standalone,
            coordinator_addr: String::new(),
            api_addr: String::new(),
        }
    }
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {})",
            self.name, self.role, self.coordinator_addr
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_ids_are_stable_and_distinct() {
        assert_eq!(raft_id("writer-01"), raft_id("writer-01"));
        assert_ne!(raft_id("writer-01"), raft_id("reader-01"));
    }
}
