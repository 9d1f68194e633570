//! An operator's moves. The writer (`POST /api/v1/cluster/writers/{id}/promote` and `/demote`):
//! the writer is asked to stop acknowledging and says where its log ends; once the chosen reader
//! holds the log that far, it is promoted. Nothing acknowledged is lost whatever
//! `replication_ack` says, and nothing is acknowledged by two nodes. The compaction lease
//! (`POST /api/v1/cluster/compactor/assign`): one command under the lease's next epoch.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;

use super::failover::{Candidate, choose};
use super::health::NodeState;
use super::protocol::{STEP_DOWN_PATH, StepDown, StepDownAnswer};
use super::{Cluster, NodeStatus};
use crate::config::NodeRole;
use crate::meta::nodes::Failover;
use crate::meta::{MetaCommand, MetaError};
use crate::wal::Lsn;

/// Pause between looks at the chosen reader's position.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    #[error("node {0} is not a member of this cluster")]
    UnknownNode(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unavailable(String),
}

impl Cluster {
    /// Makes reader `to` the writer (`None`: the most caught-up healthy reader) in place of the
    /// writer `from` (`None`: whoever it is). Returns the new writer and its epoch.
    pub async fn switch_writer(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<(String, u64), SwitchoverError> {
        let nodes = self.nodes();
        let assignment = self.writer_assignment();
        let writer_name = assignment
            .node
            .clone()
            .ok_or_else(|| SwitchoverError::Refused("no node is the writer now".into()))?;
        if let Some(from) = from {
            if !nodes.iter().any(|n| n.id == from) {
                return Err(SwitchoverError::UnknownNode(from.to_owned()));
            }
            if from != writer_name {
                return Err(SwitchoverError::Refused(format!(
                    "node {from} is not the writer (the writer is {writer_name})"
                )));
            }
        }
        if let Some(to) = to {
            let target = nodes
                .iter()
                .find(|n| n.id == to)
                .ok_or_else(|| SwitchoverError::UnknownNode(to.to_owned()))?;
            if target.role != NodeRole::Reader {
                return Err(SwitchoverError::Refused(format!(
                    "node {to} is a {}; only a reader holds the writer's log",
                    target.role
                )));
            }
        }
        let writer = nodes.iter().find(|n| n.id == writer_name).ok_or_else(|| {
            SwitchoverError::Unavailable(format!("writer {writer_name} is not a member"))
        })?;
        let log_end = self.ask_step_down(writer, true).await?;
        match self
            .promote_once_caught_up(&nodes, &writer_name, to, log_end, assignment.epoch)
            .await
        {
            Ok(promoted) => Ok(promoted),
            Err(err) => {
                // The writer goes on as it was.
                if let Err(resume) = self.ask_step_down(writer, false).await {
                    tracing::warn!(error = %resume, "the writer could not be told to go on");
                }
                Err(err)
            }
        }
    }

    async fn promote_once_caught_up(
        &self,
        nodes: &[NodeStatus],
        writer: &str,
        to: Option<&str>,
        log_end: Lsn,
        epoch: u64,
    ) -> Result<(String, u64), SwitchoverError> {
        let readers: Vec<&NodeStatus> = nodes
            .iter()
            .filter(|n| n.role == NodeRole::Reader && to.is_none_or(|to| n.id == to))
            .collect();
        let deadline = Instant::now() + self.request_timeout;
        let chosen = loop {
            let asked = readers.iter().map(|reader| async move {
                Candidate {
                    name: reader.id.clone(),
                    healthy: reader.state == NodeState::Healthy,
                    replicated_lsn: self.position_of(reader).await.filter(|lsn| *lsn >= log_end),
                }
            });
            let candidates = futures::future::join_all(asked).await;
            if let Some(chosen) = choose(&candidates) {
                break chosen.clone();
            }
            if Instant::now() >= deadline {
                return Err(SwitchoverError::Unavailable(format!(
                    "no reader{} holds the writer's log through LSN {log_end} after {:?}",
                    to.map(|to| format!(" ({to})")).unwrap_or_default(),
                    self.request_timeout
                )));
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        };
        let command = MetaCommand::PromoteWriter {
            epoch: epoch + 1,
            failover: Failover {
                at_us: chrono::Utc::now().timestamp_micros(),
                from: Some(writer.to_owned()),
                to: chosen.name.clone(),
                reason: format!(
                    "moved by an operator; {} holds the log through LSN {log_end}",
                    chosen.name
                ),
            },
        };
        self.submit_operator_command(command).await?;
        Ok((chosen.name, epoch + 1))
    }

    /// Moves the compaction lease to `to` (a compactor, or the writer); returns its new epoch.
    /// A job still running on the previous holder cannot swap its output in.
    pub async fn assign_compactor(&self, to: &str) -> Result<u64, SwitchoverError> {
        if !self.nodes().iter().any(|n| n.id == to) {
            return Err(SwitchoverError::UnknownNode(to.to_owned()));
        }
        let (from, epoch) = {
            let state = self.applied.state.read().unwrap();
            let lease = state.nodes().compactor();
            (lease.node.clone(), lease.epoch)
        };
        let command = MetaCommand::AssignCompactor {
            epoch: epoch + 1,
            change: Failover {
                at_us: chrono::Utc::now().timestamp_micros(),
                from,
                to: to.to_owned(),
                reason: "assigned by an operator".into(),
            },
        };
        self.submit_operator_command(command).await?;
        Ok(epoch + 1)
    }

    async fn submit_operator_command(&self, command: MetaCommand) -> Result<(), SwitchoverError> {
        match self.submit(command).await {
            Ok(()) => Ok(()),
            Err(MetaError::Rejected(refusal)) => Err(SwitchoverError::Refused(refusal.to_string())),
            Err(err) => Err(SwitchoverError::Unavailable(err.to_string())),
        }
    }

    /// Asks the writer to stop (or go on) acknowledging; returns the end of its durable log.
    async fn ask_step_down(&self, writer: &NodeStatus, stop: bool) -> Result<Lsn, SwitchoverError> {
        let request = StepDown { stop };
        let answer: StepDownAnswer = if writer.is_local {
            self.step_down(stop)
        } else {
            self.client
                .call(&writer.address, STEP_DOWN_PATH, &request, self.request_timeout)
                .await
                .map_err(|e| {
                    SwitchoverError::Unavailable(format!(
                        "the writer {} could not be asked to step down ({e}); a writer that is gone is replaced by failover",
                        writer.id
                    ))
                })?
        };
        answer.log_end.ok_or_else(|| {
            SwitchoverError::Refused(format!(
                "the writer {} does not stream its log (replication is disabled)",
                writer.id
            ))
        })
    }

    /// On the writer: stop (or go on) acknowledging writes; where the durable log ends.
    fn step_down(&self, stop: bool) -> StepDownAnswer {
        self.stepping_down.store(stop, Ordering::SeqCst);
        if stop {
            tracing::warn!("stepping down: writes are refused while a reader takes over");
        }
        StepDownAnswer {
            log_end: self.wal_feed.get().map(|feed| *feed.durable().borrow()),
        }
    }
}

/// `POST /internal/writer/step-down`.
pub(super) async fn serve_step_down(
    State(cluster): State<Arc<Cluster>>,
    Json(request): Json<StepDown>,
) -> Json<StepDownAnswer> {
    Json(cluster.step_down(request.stop))
}
