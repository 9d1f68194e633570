//! `cluster.replication_ack` on the writer: a write is acknowledged once it is durable here and
//! durable in the own WAL of one reader (`one`) or of a majority of the registered readers
//! (`quorum`). With too few readers streaming a write is refused before anything is written;
//! one whose confirmation does not arrive in time is answered 503 although it is stored here
//! (the client cannot know whether a reader holds it, and is told so). With failover on, the
//! writer also acknowledges only while its lease holds.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{Cluster, LeaseError};
use crate::config::ReplicationAck;
use crate::wal::Lsn;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AckError {
    #[error(
        "replication_ack = {mode} needs {needed} reader(s) holding each write, but {streaming} \
         of {readers} registered reader(s) are following this writer; nothing was written"
    )]
    TooFewReaders {
        mode: &'static str,
        needed: usize,
        streaming: usize,
        readers: usize,
    },
    #[error(
        "the write is durable on this writer, but {holding} of the {needed} reader(s) \
         replication_ack = {mode} needs confirmed it within {waited:?}; it may or may not \
         survive the loss of this node"
    )]
    Unconfirmed {
        mode: &'static str,
        needed: usize,
        holding: usize,
        waited: Duration,
    },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("the write is durable on this node, but it may not be acknowledged: {0}")]
    LeaseLapsed(LeaseError),
}

impl AckError {
    /// Whether the write may be stored although it was not acknowledged (the client cannot
    /// tell, and must not take the refusal as "nothing was written").
    pub fn maybe_stored(&self) -> bool {
        matches!(
            self,
            AckError::Unconfirmed { .. } | AckError::LeaseLapsed(_)
        )
    }
}

/// Pure: readers that must hold a write, out of `following` registered readers that stream
/// this writer's log while `others` registered readers do not. With no reader registered at
/// all, `one` and `quorum` still need one: a writer started before its readers refuses writes
/// rather than keep them unreplicated. When readers are registered and none streams (the
/// seeds' example: shared bucket, replication on the writer only), none can hold a write and
/// none is waited for.
pub fn readers_needed(mode: ReplicationAck, following: usize, others: usize) -> usize {
    if following == 0 && others > 0 {
        return 0;
    }
    match mode {
        ReplicationAck::None => 0,
        ReplicationAck::One => 1,
        ReplicationAck::Quorum => following / 2 + 1,
    }
}

pub struct AckPolicy {
    pub cluster: Arc<Cluster>,
    pub mode: ReplicationAck,
    /// `cluster.route_timeout`: the longest wait for confirmations.
    pub timeout: Duration,
}

impl AckPolicy {
    /// Before a write: are enough readers following to confirm it?
    pub fn check_ready(&self) -> Result<(), AckError> {
        self.cluster.check_write_lease()?;
        if self.mode == ReplicationAck::None {
            return Ok(());
        }
        let (readers, others) = self.cluster.registered_readers();
        let needed = readers_needed(self.mode, readers.len(), others);
        let (_, streaming) = self.cluster.stream_positions().holding(&readers, Lsn::MAX);
        if streaming < needed {
            return Err(AckError::TooFewReaders {
                mode: self.mode.as_str(),
                needed,
                streaming,
                readers: readers.len(),
            });
        }
        Ok(())
    }

    /// After entry `lsn` is durable here: waits until enough readers hold it.
    pub async fn confirmed(&self, lsn: Lsn) -> Result<(), AckError> {
        self.readers_hold(lsn).await?;
        // A write that became durable after the lease ran out is not acknowledged: another
        // node may be taking writes by now.
        self.cluster
            .check_write_lease()
            .map_err(AckError::LeaseLapsed)
    }

    async fn readers_hold(&self, lsn: Lsn) -> Result<(), AckError> {
        if self.mode == ReplicationAck::None {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let positions = self.cluster.stream_positions();
        loop {
            let next_ack = positions.next_ack();
            tokio::pin!(next_ack);
            next_ack.as_mut().enable();
            let (readers, others) = self.cluster.registered_readers();
            let needed = readers_needed(self.mode, readers.len(), others);
            let (holding, _) = positions.holding(&readers, lsn);
            if holding >= needed {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, next_ack).await.is_err() {
                return Err(AckError::Unconfirmed {
                    mode: self.mode.as_str(),
                    needed,
                    holding,
                    waited: self.timeout,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_needs_a_reader_and_quorum_a_majority_of_them() {
        assert_eq!(readers_needed(ReplicationAck::None, 3, 0), 0);
        assert_eq!(readers_needed(ReplicationAck::One, 3, 0), 1);
        for (readers, needed) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)] {
            assert_eq!(readers_needed(ReplicationAck::Quorum, readers, 0), needed);
            // Readers that do not stream count for nothing.
            assert_eq!(readers_needed(ReplicationAck::Quorum, readers, 2), needed);
        }
        // No reader registered: one still needs one, so writes are refused, never unreplicated.
        assert_eq!(readers_needed(ReplicationAck::One, 0, 0), 1);
        assert_eq!(readers_needed(ReplicationAck::Quorum, 0, 0), 1);
        // Readers registered, none streaming: nobody can hold a write.
        assert_eq!(readers_needed(ReplicationAck::One, 0, 2), 0);
        assert_eq!(readers_needed(ReplicationAck::Quorum, 0, 1), 0);
    }
}
