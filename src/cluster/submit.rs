//! Metadata commands through the Raft leader, bounded by `route_timeout`, and read barriers.

use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use serde::Serialize;

use super::network::PeerError;
use super::protocol::{Applied, BARRIER_PATH, Empty, FORWARD_PATH, ForwardRequest, LeaderAnswer};
use super::{Cluster, RETRY_PAUSE};
use crate::meta::{MetaCommand, MetaError, Replicator};

impl Cluster {
    /// Proposes a command on this node, which must be the leader.
    pub(super) async fn write_as_leader(
        &self,
        command: MetaCommand,
        timeout: Duration,
    ) -> LeaderAnswer<Applied> {
        match tokio::time::timeout(timeout, self.raft.client_write(command)).await {
            Err(_) => LeaderAnswer::Unconfirmed {
                reason: "no quorum confirmed the change in time".into(),
            },
            Ok(Ok(response)) => LeaderAnswer::Done(Applied {
                index: response.log_id.index,
                outcome: response.data,
            }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(hint)))) => {
                LeaderAnswer::NotLeader {
                    leader: hint.leader_node,
                }
            }
            // Raft on this node has stopped: asking again cannot help, and callers that cannot
            // give up must restart, as after a failed log sync.
            Ok(Err(RaftError::Fatal(fatal))) => LeaderAnswer::Unconfirmed {
                reason: format!("Raft has stopped on this node: {fatal}"),
            },
            Ok(Err(err)) => LeaderAnswer::Unavailable {
                reason: err.to_string(),
            },
        }
    }

    /// Runs `local` if this node leads, else asks the leader at `path`.
    pub(super) async fn on_leader<Req: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
        local: impl AsyncFnOnce() -> LeaderAnswer<T>,
    ) -> LeaderAnswer<T> {
        if self.is_leader() {
            return local().await;
        }
        let Some(leader) = self.leader() else {
            return LeaderAnswer::Unavailable {
                reason: "no leader is known (this node may be cut off from the majority)".into(),
            };
        };
        match self
            .client
            .call(&leader.coordinator_addr, path, request, timeout)
            .await
        {
            Ok(answer) => answer,
            Err(err @ (PeerError::NotConnected { .. } | PeerError::Refused { .. })) => {
                LeaderAnswer::Unavailable {
                    reason: err.to_string(),
                }
            }
            Err(err @ PeerError::Unreachable { .. }) => LeaderAnswer::Unconfirmed {
                reason: err.to_string(),
            },
        }
    }

    /// Has the leader apply the command, asking again while no leader takes it (an election),
    /// then waits until this node has applied it too; all within `route_timeout`, so a request
    /// made during a partition is answered rather than left waiting for a quorum.
    pub(super) async fn submit(&self, command: MetaCommand) -> Result<(), MetaError> {
        let deadline = Instant::now() + self.request_timeout;
        let request = ForwardRequest { command };
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .on_leader(FORWARD_PATH, &request, remaining, || {
                    self.write_as_leader(request.command.clone(), remaining)
                })
                .await;
            let refused = match answer {
                LeaderAnswer::Done(Applied { index, outcome }) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    self.wait_applied(index, remaining).await?;
                    return outcome.map_err(MetaError::Rejected);
                }
                LeaderAnswer::Unconfirmed { reason } => return Err(MetaError::Unconfirmed(reason)),
                LeaderAnswer::NotLeader { .. } => "leadership is changing".to_owned(),
                LeaderAnswer::Unavailable { reason } => reason,
            };
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(MetaError::Unavailable(refused));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    pub(super) async fn wait_applied(
        &self,
        index: u64,
        timeout: Duration,
    ) -> Result<(), MetaError> {
        let mut applied = self.applied.applied_index.subscribe();
        match tokio::time::timeout(timeout, applied.wait_for(|i| *i >= index)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(MetaError::Unconfirmed(format!(
                "committed at index {index} but not applied on this node in time"
            ))),
        }
    }

    /// The leader's commit index, confirmed by a quorum.
    pub(super) async fn read_index_as_leader(&self) -> LeaderAnswer<u64> {
        match tokio::time::timeout(self.request_timeout, self.raft.ensure_linearizable()).await {
            Ok(Ok(read)) => LeaderAnswer::Done(read.map_or(0, |id| id.index)),
            Ok(Err(err)) => LeaderAnswer::Unavailable {
                reason: err.to_string(),
            },
            Err(_) => LeaderAnswer::Unavailable {
                reason: "no quorum answered in time".into(),
            },
        }
    }

    /// Waits until this node has applied everything the leader had committed when asked.
    pub(super) async fn catch_up(&self) -> Result<(), MetaError> {
        self.sync_metadata(self.request_timeout).await
    }

    /// Waits, for at most `timeout`, until this node has applied everything the leader had
    /// committed when asked: reads after it see every change acknowledged before it began.
    pub async fn sync_metadata(&self, timeout: Duration) -> Result<(), MetaError> {
        let deadline = Instant::now() + timeout;
        match self
            .on_leader(BARRIER_PATH, &Empty {}, timeout, || {
                self.read_index_as_leader()
            })
            .await
        {
            LeaderAnswer::Done(index) => {
                let left = deadline.saturating_duration_since(Instant::now());
                self.wait_applied(index, left).await
            }
            _ => Err(MetaError::Unavailable("leader not reachable".into())),
        }
    }
}

impl Replicator for Cluster {
    fn replicate(&self, command: MetaCommand) -> Result<(), MetaError> {
        self.runtime.block_on(self.submit(command))
    }
}
