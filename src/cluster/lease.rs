//! The writer's lease: with failover on, a writer acknowledges a write only while a Raft leader
//! confirmed, less than [`lease_duration`] before the write's acknowledgement, that it is still
//! the assigned writer. Each confirmation counts as contact with the leader, and a leader
//! promotes another node only after `failover_timeout` without contact, which is longer than a
//! lease, and no sooner than a lease after it became leader (a lease its predecessor confirmed
//! was asked for before this leader's term began): the lease ran out before anyone else may take
//! writes, so two nodes never both acknowledge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Cluster;

/// How long one confirmation lets a writer acknowledge: half of `failover_timeout`, leaving
/// the other half for heartbeats in flight and the leader's check interval.
pub fn lease_duration(failover_timeout: Duration) -> Duration {
    failover_timeout / 2
}

/// Pure: whether a lease confirmed at `confirmed_at` for `epoch` still covers `now` for a
/// writer of `current_epoch`.
pub fn lease_holds(
    lease: Option<(u64, Instant)>,
    current_epoch: Option<u64>,
    now: Instant,
    duration: Duration,
) -> bool {
    match (lease, current_epoch) {
        (Some((epoch, confirmed_at)), Some(current)) => {
            epoch == current && now.saturating_duration_since(confirmed_at) < duration
        }
        _ => false,
    }
}

/// The lease as last confirmed: epoch and when the confirming request was sent.
#[derive(Debug, Default)]
pub(super) struct Lease {
    pub(super) confirmed: Option<(u64, Instant)>,
    /// The epoch this node finished taking over for (its LSNs continue past every file's).
    pub(super) ready: Option<u64>,
}

/// Why a writer may not acknowledge now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("node {node} is not the cluster's writer (the writer is {writer})")]
    NotWriter { node: String, writer: String },
    #[error(
        "node {node} could not confirm with a majority of the cluster that it is still the \
         writer in the last {lease:?}; writes are refused until it can"
    )]
    Unconfirmed { node: String, lease: Duration },
    #[error("node {node} is handing the writes to a reader; retry shortly")]
    SteppingDown { node: String },
    #[error("writer {node} was taken for lost and its log handed to another writer; it restarts")]
    LogTakenOver { node: String },
}

impl Cluster {
    /// Whether this node may acknowledge a write now: not while it steps down, and with
    /// failover on only while its lease holds (with failover off nobody else takes over).
    pub fn check_write_lease(&self) -> Result<(), LeaseError> {
        if self.stepping_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(LeaseError::SteppingDown {
                node: self.local.name.clone(),
            });
        }
        let Some(duration) = self.lease_duration else {
            return Ok(());
        };
        let current = self.lease_epoch();
        if current.is_none() && self.shared_storage && self.role().ingests() {
            return Err(LeaseError::LogTakenOver {
                node: self.local.name.clone(),
            });
        }
        if current.is_none() {
            return Err(LeaseError::NotWriter {
                node: self.local.name.clone(),
                writer: self
                    .writer_assignment()
                    .node
                    .unwrap_or_else(|| "not assigned".into()),
            });
        }
        let lease = self.lease.lock().unwrap();
        let confirmed = lease
            .confirmed
            .filter(|(epoch, _)| Some(*epoch) == lease.ready);
        drop(lease);
        if lease_holds(confirmed, current, Instant::now(), duration) {
            Ok(())
        } else {
            Err(LeaseError::Unconfirmed {
                node: self.local.name.clone(),
                lease: duration,
            })
        }
    }

    /// What a lease is held for: the writer epoch, or with shared storage (where each writer's
    /// lease is on its own log, epoch 0) whether this writer's log is still its own.
    fn lease_epoch(&self) -> Option<u64> {
        if self.shared_storage {
            (self.role().ingests() && self.log.get().is_some() && !self.log_taken_over())
                .then_some(0)
        } else {
            self.writes_under()
        }
    }

    /// This node is ready to take writes as the writer under `epoch`.
    pub fn writer_ready(&self, epoch: u64) {
        self.lease.lock().unwrap().ready = Some(epoch);
    }

    /// Renews the lease while this node is the writer, four times per lease.
    pub(super) async fn renew_lease(
        self: Arc<Self>,
        duration: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let pause = duration / 4;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if self.lease_epoch().is_none() {
                continue;
            }
            let asked_at = Instant::now();
            // Returns once this node applied everything a quorum-confirmed leader committed,
            // so the assignment read after it is current as of `asked_at` or later.
            match self.sync_metadata(duration).await {
                Ok(()) => {
                    if let Some(epoch) = self.lease_epoch() {
                        self.lease.lock().unwrap().confirmed = Some((epoch, asked_at));
                    }
                }
                Err(err) => tracing::debug!(error = %err, "writer lease not confirmed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_covers_its_duration_for_its_own_epoch_only() {
        let at = Instant::now();
        let second = Duration::from_secs(1);
        assert!(lease_holds(Some((3, at)), Some(3), at, second));
        assert!(lease_holds(Some((3, at)), Some(3), at + second / 2, second));
        assert!(!lease_holds(Some((3, at)), Some(3), at + second, second));
        // Replaced, even if the confirmation is fresh.
        assert!(!lease_holds(Some((3, at)), Some(4), at, second));
        assert!(!lease_holds(Some((3, at)), None, at, second));
        assert!(!lease_holds(None, Some(3), at, second));
        assert_eq!(
            lease_duration(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
    }
}
