//! Writer failover (Pattern B), run by the Raft leader: when the writer has been silent for
//! `failover_timeout`, the healthy reader holding the most of its log is promoted under the next
//! writer epoch, and no other writer failover starts for `failover_cooldown`.
//!
//! Whether to act and whom to promote are pure functions ([`due`], [`choose`]); the loop only
//! gathers what they need. Readers' positions are asked for afresh at the moment of choosing
//! (heartbeats may be a second old, and a dead writer sends nothing more, so the fresh figures
//! are final); a reader that does not answer in time is no candidate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use tokio::sync::watch;

use super::health::NodeState;
use super::protocol::{Empty, POSITION_PATH, Position};
use super::{Cluster, NodeStatus};
use crate::config::NodeRole;
use crate::meta::MetaCommand;
use crate::meta::nodes::Failover;
use crate::wal::Lsn;

/// `cluster.failover_*`.
#[derive(Debug, Clone, Copy)]
pub struct FailoverSettings {
    pub timeout: Duration,
    pub cooldown: Duration,
    /// The writer's lease ([`super::lease::lease_duration`]).
    pub lease: Duration,
}

/// What the leader knows about the writer when it considers a failover.
#[derive(Debug, Clone)]
pub struct WriterWatch {
    /// The assigned writer is this node (then it is alive).
    pub writer_is_local: bool,
    pub writer_silent_for: Duration,
    /// Since the last writer failover, by the wall clock it was recorded with.
    pub since_last_failover: Option<Duration>,
    /// How long this node has led: a writer's lease confirmed by an earlier leader (before this
    /// node's term began) may still run for up to a lease after this node took over.
    pub leading_for: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// The writer is present (or too recently missed).
    Keep,
    /// A failover happened less than `cooldown` ago.
    CoolingDown { remaining: Duration },
    /// This leader is too new to know that the writer's lease ran out.
    NewLeader { remaining: Duration },
    /// Promote someone now.
    Choose,
}

/// Pure: whether the writer should be replaced now.
pub fn due(watch: &WriterWatch, settings: FailoverSettings) -> Due {
    if watch.writer_is_local || watch.writer_silent_for < settings.timeout {
        return Due::Keep;
    }
    if let Some(since) = watch.since_last_failover
        && since < settings.cooldown
    {
        return Due::CoolingDown {
            remaining: settings.cooldown - since,
        };
    }
    if watch.leading_for < settings.lease {
        return Due::NewLeader {
            remaining: settings.lease - watch.leading_for,
        };
    }
    Due::Choose
}

/// A reader that could take over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub healthy: bool,
    /// Its durable position in the writer's log as it answered just now; `None`: it did not
    /// answer in time (it may be cut off itself).
    pub replicated_lsn: Option<Lsn>,
}

/// Pure: the healthy, answering reader with the highest replicated LSN; between equals the
/// first by name, so every leader would pick the same one.
pub fn choose(candidates: &[Candidate]) -> Option<&Candidate> {
    candidates
        .iter()
        .filter(|c| c.healthy && c.replicated_lsn.is_some())
        .min_by(|a, b| {
            b.replicated_lsn
                .cmp(&a.replicated_lsn)
                .then_with(|| a.name.cmp(&b.name))
        })
}

/// What the leader knows about the compaction lease.
#[derive(Debug, Clone)]
pub struct CompactorWatch {
    /// The lease holder, how long it has been silent, and whether it is a dedicated compactor.
    pub holder: Option<(String, Duration, bool)>,
    /// Registered compactors by name, with whether each is healthy.
    pub compactors: Vec<(String, bool)>,
    /// The writer, with whether it is healthy.
    pub writer: Option<(String, bool)>,
    /// Since the lease last moved.
    pub since_last_move: Option<Duration>,
}

/// Pure: where the compaction lease should go now, and why. A silent holder's lease goes to
/// the first healthy compactor, else to the writer; a lease the writer holds goes back to a
/// healthy compactor once the lease has stayed put for `cooldown`.
pub fn compactor_move(
    watch: &CompactorWatch,
    settings: FailoverSettings,
) -> Option<(String, String)> {
    let healthy_compactor = |except: Option<&str>| {
        watch
            .compactors
            .iter()
            .filter(|(name, healthy)| *healthy && Some(name.as_str()) != except)
            .map(|(name, _)| name.clone())
            .min()
    };
    match &watch.holder {
        Some((holder, silent_for, _)) if *silent_for >= settings.timeout => {
            let to = healthy_compactor(Some(holder)).or_else(|| {
                watch
                    .writer
                    .as_ref()
                    .filter(|(name, healthy)| *healthy && name != holder)
                    .map(|(name, _)| name.clone())
            })?;
            Some((
                to,
                format!("{holder} silent for {:.1}s", silent_for.as_secs_f64()),
            ))
        }
        Some((holder, _, false)) => {
            let settled = watch
                .since_last_move
                .is_none_or(|since| since >= settings.cooldown);
            let to = healthy_compactor(None).filter(|_| settled)?;
            Some((to, format!("compactor back from {holder}")))
        }
        Some(_) => None,
        None => healthy_compactor(None).map(|to| (to, "no node held the lease".to_owned())),
    }
}

/// How often the leader looks at the writer.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

impl Cluster {
    /// Watches the writer while this node leads, until `stop` turns true.
    pub(super) async fn run_failover(
        self: Arc<Self>,
        settings: FailoverSettings,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut leading_since: Option<Instant> = None;
        let mut last_said: Option<Due> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_INTERVAL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(leading_since) = self.leading_since(&mut leading_since) else {
                continue;
            };
            let Some(watch) = self.writer_watch(leading_since) else {
                continue;
            };
            let decision = due(&watch, settings);
            if decision != Due::Keep
                && last_said.as_ref().map(std::mem::discriminant)
                    != Some(std::mem::discriminant(&decision))
            {
                tracing::info!(?decision, silent_for = ?watch.writer_silent_for, "writer missing");
            }
            last_said = Some(decision.clone());
            if decision == Due::Choose {
                self.fail_over(watch.writer_silent_for).await;
            }
            let compactor_watch = self.compactor_watch();
            if let Some((to, reason)) = compactor_move(&compactor_watch, settings) {
                self.move_compactor(to, reason).await;
            }
        }
    }

    fn writer_watch(&self, leading_since: Instant) -> Option<WriterWatch> {
        let assignment = self.applied.state.read().unwrap().nodes().writer().clone();
        let writer = assignment.node?;
        let nodes = self.nodes();
        let status = nodes.iter().find(|n| n.id == writer)?;
        let silent_for = if status.is_local {
            Duration::ZERO
        } else {
            self.health
                .lock()
                .unwrap()
                .peer(&writer, Instant::now())
                .silent_for
        };
        let since_last_failover = assignment.last_failover.map(|f| {
            let elapsed_us = chrono::Utc::now().timestamp_micros() - f.at_us;
            Duration::from_micros(elapsed_us.max(0) as u64)
        });
        Some(WriterWatch {
            writer_is_local: status.is_local,
            writer_silent_for: silent_for,
            since_last_failover,
            leading_for: leading_since.elapsed(),
        })
    }

    fn compactor_watch(&self) -> CompactorWatch {
        let (lease, writer) = {
            let state = self.applied.state.read().unwrap();
            (
                state.nodes().compactor().clone(),
                state.nodes().writer().node.clone(),
            )
        };
        let nodes = self.nodes();
        let healthy = |n: &NodeStatus| n.state == NodeState::Healthy;
        let holder = lease.node.as_ref().and_then(|name| {
            let status = nodes.iter().find(|n| n.id == *name)?;
            let silent_for = if status.is_local {
                Duration::ZERO
            } else {
                self.health
                    .lock()
                    .unwrap()
                    .peer(name, Instant::now())
                    .silent_for
            };
            Some((name.clone(), silent_for, status.role == NodeRole::Compactor))
        });
        CompactorWatch {
            holder,
            compactors: nodes
                .iter()
                .filter(|n| n.role == NodeRole::Compactor)
                .map(|n| (n.id.clone(), healthy(n)))
                .collect(),
            writer: writer.and_then(|name| {
                let status = nodes.iter().find(|n| n.id == name)?;
                Some((name, healthy(status)))
            }),
            since_last_move: lease.last_move.map(|m| {
                let elapsed_us = chrono::Utc::now().timestamp_micros() - m.at_us;
                Duration::from_micros(elapsed_us.max(0) as u64)
            }),
        }
    }

    async fn move_compactor(&self, to: String, reason: String) {
        let (from, epoch) = {
            let state = self.applied.state.read().unwrap();
            let lease = state.nodes().compactor();
            (lease.node.clone(), lease.epoch)
        };
        tracing::warn!(from = from.as_deref().unwrap_or("none"), %to, epoch = epoch + 1, %reason, "moving the compaction lease");
        let command = MetaCommand::AssignCompactor {
            epoch: epoch + 1,
            change: Failover {
                at_us: chrono::Utc::now().timestamp_micros(),
                from,
                to,
                reason,
            },
        };
        if let Err(err) = self.submit(command).await {
            tracing::warn!(error = %err, "the compaction lease did not move; will decide again");
        }
    }

    async fn fail_over(&self, silent_for: Duration) {
        let (writer, epoch) = {
            let state = self.applied.state.read().unwrap();
            let assignment = state.nodes().writer();
            (assignment.node.clone(), assignment.epoch)
        };
        let readers: Vec<NodeStatus> = self
            .nodes()
            .into_iter()
            .filter(|n| n.role == NodeRole::Reader)
            .collect();
        let asked = readers.iter().map(|reader| async move {
            Candidate {
                name: reader.id.clone(),
                healthy: reader.state == NodeState::Healthy,
                replicated_lsn: self.position_of(reader).await,
            }
        });
        let candidates = futures::future::join_all(asked).await;
        let Some(chosen) = choose(&candidates) else {
            tracing::warn!(
                ?candidates,
                "the writer is missing and no reader can take over"
            );
            return;
        };
        let reason = format!(
            "{} silent for {:.1}s; {} holds its log through LSN {}",
            writer.as_deref().unwrap_or("no writer"),
            silent_for.as_secs_f64(),
            chosen.name,
            chosen.replicated_lsn.unwrap_or(0),
        );
        let failover = Failover {
            at_us: chrono::Utc::now().timestamp_micros(),
            from: writer,
            to: chosen.name.clone(),
            reason,
        };
        tracing::warn!(to = %failover.to, epoch = epoch + 1, reason = %failover.reason, "promoting a reader to writer");
        let command = MetaCommand::PromoteWriter {
            epoch: epoch + 1,
            failover,
        };
        match self.submit(command).await {
            Ok(()) => {
                crate::metrics::metrics().cluster.failovers.inc();
            }
            Err(err) => {
                tracing::warn!(error = %err, "the promotion did not commit; will decide again")
            }
        }
    }

    /// A reader's durable position, asked now; `None` when it does not answer within a
    /// heartbeat interval.
    pub(super) async fn position_of(&self, reader: &NodeStatus) -> Option<Lsn> {
        if reader.is_local {
            return self.replicated.get().map(|s| s.mirrored_lsn());
        }
        let timeout = self.thresholds.heartbeat_interval;
        let answer: Result<Position, _> = self
            .client
            .call(&reader.address, POSITION_PATH, &Empty {}, timeout)
            .await;
        match answer {
            Ok(position) => position.replicated_lsn,
            Err(err) => {
                tracing::info!(reader = %reader.id, error = %err, "reader did not say where it is");
                None
            }
        }
    }
}

/// `POST /internal/replication/position`: how much of the writer's log this node holds.
pub(super) async fn serve_position(State(cluster): State<Arc<Cluster>>) -> Json<Position> {
    Json(Position {
        replicated_lsn: cluster.replicated.get().map(|s| s.mirrored_lsn()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: FailoverSettings = FailoverSettings {
        timeout: Duration::from_secs(30),
        cooldown: Duration::from_secs(60),
        lease: Duration::from_secs(15),
    };

    fn watch(silent: u64) -> WriterWatch {
        WriterWatch {
            writer_is_local: false,
            writer_silent_for: Duration::from_secs(silent),
            since_last_failover: None,
            leading_for: Duration::from_secs(3_600),
        }
    }

    fn candidate(name: &str, healthy: bool, lsn: Option<Lsn>) -> Candidate {
        Candidate {
            name: name.into(),
            healthy,
            replicated_lsn: lsn,
        }
    }

    #[test]
    fn a_writer_is_replaced_only_after_the_timeout_and_never_when_it_leads() {
        assert_eq!(due(&watch(29), SETTINGS), Due::Keep);
        assert_eq!(due(&watch(30), SETTINGS), Due::Choose);
        let local = WriterWatch {
            writer_is_local: true,
            ..watch(3_600)
        };
        assert_eq!(due(&local, SETTINGS), Due::Keep);
    }

    #[test]
    fn a_second_failure_within_the_cooldown_waits_for_it_to_end() {
        // Flapping: the new writer fails 10 s after its promotion.
        let flapping = WriterWatch {
            since_last_failover: Some(Duration::from_secs(40)),
            ..watch(30)
        };
        assert_eq!(
            due(&flapping, SETTINGS),
            Due::CoolingDown {
                remaining: Duration::from_secs(20)
            }
        );
        let later = WriterWatch {
            since_last_failover: Some(Duration::from_secs(60)),
            ..watch(30)
        };
        assert_eq!(due(&later, SETTINGS), Due::Choose);
    }

    #[test]
    fn a_new_leader_waits_out_a_lease_its_predecessor_may_have_confirmed() {
        let new_leader = WriterWatch {
            leading_for: Duration::from_secs(10),
            ..watch(3_600)
        };
        assert_eq!(
            due(&new_leader, SETTINGS),
            Due::NewLeader {
                remaining: Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn the_most_caught_up_healthy_reader_that_answers_is_chosen() {
        let candidates = [
            candidate("reader-a", true, Some(90)),
            candidate("reader-b", true, Some(120)),
            // Further ahead, but unhealthy or silent: partitioned itself.
            candidate("reader-c", false, Some(200)),
            candidate("reader-d", true, None),
        ];
        assert_eq!(choose(&candidates).unwrap().name, "reader-b");
    }

    #[test]
    fn ties_go_to_the_first_name_and_no_candidate_means_no_promotion() {
        let tied = [
            candidate("reader-z", true, Some(7)),
            candidate("reader-m", true, Some(7)),
            candidate("reader-q", true, Some(3)),
        ];
        assert_eq!(choose(&tied).unwrap().name, "reader-m");
        let none = [
            candidate("reader-a", false, Some(7)),
            candidate("reader-b", true, None),
        ];
        assert_eq!(choose(&none), None);
        assert_eq!(choose(&[]), None);
    }

    fn compactors(
        holder: Option<(&str, u64, bool)>,
        compactors: &[(&str, bool)],
        since_move: u64,
    ) -> CompactorWatch {
        CompactorWatch {
            holder: holder.map(|(n, s, d)| (n.to_owned(), Duration::from_secs(s), d)),
            compactors: compactors
                .iter()
                .map(|(n, h)| ((*n).to_owned(), *h))
                .collect(),
            writer: Some(("writer-01".to_owned(), true)),
            since_last_move: Some(Duration::from_secs(since_move)),
        }
    }

    #[test]
    fn a_silent_compactors_lease_goes_to_a_healthy_compactor_else_to_the_writer() {
        let fleet = [("compactor-01", false), ("compactor-02", true)];
        assert_eq!(
            compactor_move(
                &compactors(Some(("compactor-01", 29, true)), &fleet, 600),
                SETTINGS
            ),
            None
        );
        let moved = compactor_move(
            &compactors(Some(("compactor-01", 30, true)), &fleet, 600),
            SETTINGS,
        );
        assert_eq!(moved.unwrap().0, "compactor-02");
        let alone = [("compactor-01", false)];
        let moved = compactor_move(
            &compactors(Some(("compactor-01", 30, true)), &alone, 600),
            SETTINGS,
        );
        assert_eq!(moved.unwrap().0, "writer-01");
        let mut nobody = compactors(Some(("compactor-01", 30, true)), &alone, 600);
        nobody.writer = Some(("writer-01".to_owned(), false));
        assert_eq!(compactor_move(&nobody, SETTINGS), None);
    }

    #[test]
    fn the_writer_hands_the_lease_back_once_a_compactor_is_healthy_and_the_cooldown_passed() {
        let back = [("compactor-01", true)];
        assert_eq!(
            compactor_move(
                &compactors(Some(("writer-01", 0, false)), &back, 59),
                SETTINGS
            ),
            None
        );
        let moved = compactor_move(
            &compactors(Some(("writer-01", 0, false)), &back, 60),
            SETTINGS,
        );
        assert_eq!(moved.unwrap().0, "compactor-01");
        assert_eq!(
            compactor_move(
                &compactors(Some(("compactor-01", 0, true)), &back, 60),
                SETTINGS
            ),
            None
        );
        assert_eq!(compactor_move(&compactors(None, &[], 60), SETTINGS), None);
    }
}
