//! Members as this node sees them (role, health, addresses), Raft's state, and which member a
//! request this node's role cannot serve goes to.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

use openraft::ServerState;
use serde::Serialize;

use super::Cluster;
use super::health::{NodeState, node_state};
use super::types::RaftId;
use crate::config::NodeRole;
use crate::meta::nodes::{Capability, role_can};
use crate::wal::Lsn;

/// A member as the cluster API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub role: NodeRole,
    pub state: NodeState,
    pub address: String,
    pub api_address: String,
    pub last_heartbeat: Option<String>,
    pub is_leader: bool,
    pub is_local: bool,
    /// On a reader: the last entry of the writer's log it holds durably, as it last reported.
    pub replicated_lsn: Option<Lsn>,
}

/// Raft's view from this node.
#[derive(Debug, Clone, Serialize)]
pub struct RaftStatus {
    pub state: String,
    pub term: u64,
    pub leader_id: Option<String>,
    pub leader_addr: Option<String>,
    pub is_leader: bool,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub voters: usize,
}

impl Cluster {
    /// Every member with its state as this node sees it.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<RaftId> = membership.voter_ids().collect();
        let health = self.health.lock().unwrap();
        let state = self.applied.state.read().unwrap();
        let registry = state.nodes();
        let now = Instant::now();
        let mut nodes: Vec<NodeStatus> = membership
            .nodes()
            .map(|(id, info)| {
                let is_local = *id == self.local_id;
                let is_voter = voters.contains(id);
                let (state, last_heartbeat, replicated_lsn) = if is_local {
                    let state = if is_voter {
                        NodeState::Healthy
                    } else {
                        NodeState::Joining
                    };
                    let replicated = self.replicated.get().map(|s| s.mirrored_lsn());
                    (state, Some(chrono::Utc::now()), replicated)
                } else {
                    let peer = health.peer(&info.name, now);
                    let state =
                        node_state(peer.silent_for, is_voter, peer.leaving, self.thresholds);
                    (state, peer.last_heartbeat, peer.replicated_lsn)
                };
                // The registry says what a node is and where it serves now; membership data
                // only what it joined as.
                let (role, api_address) = registry
                    .get(&info.name)
                    .map_or((info.role, &info.api_addr), |r| (r.role, &r.api_addr));
                NodeStatus {
                    id: info.name.clone(),
                    role,
                    state,
                    address: info.coordinator_addr.clone(),
                    api_address: api_address.clone(),
                    last_heartbeat: last_heartbeat
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    is_leader: metrics.current_leader == Some(*id),
                    is_local,
                    replicated_lsn,
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    pub fn raft_status(&self) -> RaftStatus {
        let metrics = self.metrics();
        let leader = self.leader();
        RaftStatus {
            state: match metrics.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .to_owned(),
            term: metrics.current_term,
            is_leader: metrics.current_leader == Some(self.local_id),
            leader_id: leader.as_ref().map(|l| l.name.clone()),
            leader_addr: leader.map(|l| l.coordinator_addr),
            last_log_index: metrics.last_log_index,
            last_applied_index: metrics.last_applied.map(|id| id.index),
            voters: metrics.membership_config.membership().voter_ids().count(),
        }
    }

    /// The healthy other members whose role can serve `capability`, starting with the next in
    /// turn so requests spread over them.
    pub fn nodes_for(&self, capability: Capability) -> Vec<NodeStatus> {
        let mut candidates: Vec<NodeStatus> = self
            .nodes()
            .into_iter()
            .filter(|n| {
                !n.is_local && n.state == NodeState::Healthy && role_can(n.role, capability)
            })
            .collect();
        if !candidates.is_empty() {
            let turn = self.next_target.fetch_add(1, Ordering::Relaxed);
            let start = turn % candidates.len();
            candidates.rotate_left(start);
        }
        candidates
    }
}
