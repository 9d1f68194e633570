//! Joining, registration in the node registry, admission by the leader, and removal.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::watch;

use super::protocol::{
    Applied, JOIN_PATH, JoinAnswer, JoinRequest, LeaderAnswer, REMOVE_PATH, RemoveRequest,
};
use super::types::{NodeInfo, raft_id};
use super::{Cluster, ClusterError, RETRY_PAUSE};
use crate::config::NodeRole;
use crate::meta::nodes::NodeRecord;
use crate::meta::{MetaCommand, MetaError};

impl Cluster {
    pub(super) fn record(&self, node: &NodeInfo) -> NodeRecord {
        NodeRecord {
            role: node.role,
            coordinator_addr: node.coordinator_addr.clone(),
            api_addr: node.api_addr.clone(),
            shared_storage: self.shared_storage,
            storage: self.storage.clone(),
            role_from_failover: false,
            // A joining node's own setting replaces this guess when it registers itself.
            follows_writer: self.follows_writer,
        }
    }

    /// Records this node's role and addresses in the replicated registry (a joining node was
    /// registered when it was admitted; the first node and a restarted member are not), or
    /// fails when the registry refuses them, e.g. a member restarted with another role.
    pub(super) async fn register_self(
        &self,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ClusterError> {
        let mut node = self.record(&self.local);
        // A failover swaps a writer and a reader: each keeps the role it was given, whatever
        // its configuration says.
        let registered = self
            .applied
            .state
            .read()
            .unwrap()
            .nodes()
            .get(&self.local.name)
            .filter(|r| r.role_from_failover)
            .map(|r| r.role);
        if let Some(role) = registered
            && [role, node.role]
                .iter()
                .all(|r| matches!(r, NodeRole::Writer | NodeRole::Reader))
        {
            if role != node.role {
                tracing::info!(configured = %node.role, registered = %role, "a failover changed this node's role; running as registered");
            }
            node.role = role;
            node.role_from_failover = true;
        }
        let command = MetaCommand::RegisterNode {
            name: self.local.name.clone(),
            node,
        };
        loop {
            if self.applied.state.read().unwrap().reflects(&command) {
                return Ok(());
            }
            match self.submit(command.clone()).await {
                Ok(()) => return Ok(()),
                Err(MetaError::Rejected(refusal)) => {
                    return Err(ClusterError::Refused(refusal.to_string()));
                }
                Err(err) => tracing::warn!(error = %err, "could not register this node yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
    }

    pub(super) async fn wait_until_caught_up(
        &self,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ClusterError> {
        loop {
            if let Some(reason) = self.forbidden.lock().unwrap().clone() {
                return Err(ClusterError::Refused(reason));
            }
            if self.is_voter() && self.catch_up().await.is_ok() {
                tracing::info!(node = %self.local, "cluster member caught up");
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
    }

    /// Dials the seeds (and known members) until the leader has made this node a voter.
    pub(super) async fn join_until_member(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let request = JoinRequest {
            node: self.local.clone(),
        };
        while !self.is_voter() {
            let mut targets: Vec<String> = self.seeds.clone();
            targets.extend(self.peers().into_iter().map(|p| p.coordinator_addr));
            targets.retain(|addr| *addr != self.local.coordinator_addr);
            targets.sort();
            targets.dedup();
            for mut addr in targets {
                // A non-leader names the leader; follow that hint once.
                for _ in 0..2 {
                    let answer = self
                        .client
                        .call::<_, JoinAnswer>(&addr, JOIN_PATH, &request, Duration::from_secs(30))
                        .await;
                    match answer {
                        Ok(JoinAnswer::Joined) => break,
                        Ok(JoinAnswer::NotLeader {
                            leader: Some(leader),
                        }) => addr = leader.coordinator_addr,
                        Ok(JoinAnswer::NotLeader { leader: None }) => break,
                        Ok(JoinAnswer::Refused { reason }) => {
                            tracing::warn!(seed = %addr, %reason, "join refused");
                            break;
                        }
                        Ok(JoinAnswer::Forbidden { reason }) => {
                            tracing::error!(seed = %addr, %reason, "the cluster forbids this node to join");
                            *self.forbidden.lock().unwrap() = Some(reason);
                            return;
                        }
                        Err(err) => {
                            tracing::warn!(seed = %addr, error = %err, "join attempt failed");
                            break;
                        }
                    }
                }
                if self.is_voter() {
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Adds a joining node as a learner (it receives the log), then as a voter.
    pub(super) async fn admit(&self, node: NodeInfo) -> JoinAnswer {
        let id = raft_id(&node.name);
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        if let Some(existing) = membership.get_node(&id)
            && existing.name != node.name
        {
            return JoinAnswer::Refused {
                reason: format!("node id collides with member {}", existing.name),
            };
        }
        // Registered before it becomes a learner, through the log: of two writers joining at
        // once, the second registration applied is refused.
        let registration = MetaCommand::RegisterNode {
            name: node.name.clone(),
            node: self.record(&node),
        };
        if !self.applied.state.read().unwrap().reflects(&registration) {
            match self
                .write_as_leader(registration, self.request_timeout)
                .await
            {
                LeaderAnswer::Done(Applied {
                    outcome: Err(refusal),
                    ..
                }) => {
                    tracing::warn!(node = %node, reason = %refusal, "join forbidden");
                    return JoinAnswer::Forbidden {
                        reason: refusal.to_string(),
                    };
                }
                LeaderAnswer::Done(_) => {}
                LeaderAnswer::NotLeader { leader } => return JoinAnswer::NotLeader { leader },
                LeaderAnswer::Unavailable { reason } | LeaderAnswer::Unconfirmed { reason } => {
                    return JoinAnswer::Refused { reason };
                }
            }
        }
        let is_voter = membership.voter_ids().any(|v| v == id);
        if is_voter {
            return JoinAnswer::Joined;
        }
        let not_leader = |leader: Option<NodeInfo>| JoinAnswer::NotLeader { leader };
        match self.raft.add_learner(id, node.clone(), true).await {
            Ok(_) => {}
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(hint))) => {
                return not_leader(hint.leader_node);
            }
            Err(err) => {
                return JoinAnswer::Refused {
                    reason: err.to_string(),
                };
            }
        }
        let voters = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
        match self.raft.change_membership(voters, false).await {
            Ok(_) => {
                tracing::info!(node = %node, "node joined the cluster as a voter");
                JoinAnswer::Joined
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(hint))) => {
                not_leader(hint.leader_node)
            }
            Err(err) => JoinAnswer::Refused {
                reason: err.to_string(),
            },
        }
    }

    pub(super) async fn remove_as_leader(&self, name: &str) -> LeaderAnswer<bool> {
        let id = raft_id(name);
        let members = self.metrics().membership_config.membership().clone();
        if members.get_node(&id).is_none_or(|n| n.name != name) {
            return LeaderAnswer::Done(false);
        }
        // The registry first: a retry after a failed membership change repeats both steps.
        let forget = MetaCommand::RemoveNode {
            name: name.to_owned(),
        };
        match self.write_as_leader(forget, self.request_timeout).await {
            LeaderAnswer::Done(_) => {}
            LeaderAnswer::NotLeader { leader } => return LeaderAnswer::NotLeader { leader },
            LeaderAnswer::Unavailable { reason } => return LeaderAnswer::Unavailable { reason },
            LeaderAnswer::Unconfirmed { reason } => return LeaderAnswer::Unconfirmed { reason },
        }
        let change = if members.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        match self.raft.change_membership(change, false).await {
            Ok(_) => {
                tracing::info!(node = %name, "node removed from the cluster");
                LeaderAnswer::Done(true)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(hint))) => {
                LeaderAnswer::NotLeader {
                    leader: hint.leader_node,
                }
            }
            Err(err) => LeaderAnswer::Unavailable {
                reason: err.to_string(),
            },
        }
    }

    /// Removes a member (`DELETE /api/v1/cluster/nodes/{id}`).
    pub async fn remove_node(&self, name: &str) -> Result<(), ClusterError> {
        if name == self.local.name {
            return Err(ClusterError::RemoveSelf);
        }
        if !self.nodes().iter().any(|n| n.id == name) {
            return Err(ClusterError::UnknownNode(name.to_owned()));
        }
        let request = RemoveRequest {
            name: name.to_owned(),
        };
        match self
            .on_leader(REMOVE_PATH, &request, self.request_timeout, || {
                self.remove_as_leader(name)
            })
            .await
        {
            LeaderAnswer::Done(true) => Ok(()),
            LeaderAnswer::Done(false) => Err(ClusterError::UnknownNode(name.to_owned())),
            LeaderAnswer::NotLeader { .. } => {
                Err(ClusterError::Unavailable("leadership is changing".into()))
            }
            LeaderAnswer::Unavailable { reason } | LeaderAnswer::Unconfirmed { reason } => {
                Err(ClusterError::Unavailable(reason))
            }
        }
    }
}
