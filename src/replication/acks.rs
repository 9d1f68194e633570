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

/// Pure: readers that must hold a write out of `readers` registered ones.
pub fn readers_needed(mode: ReplicationAck, readers: usize) -> usize {
    match mode {
        ReplicationAck::None => 0,
        ReplicationAck::One => 1,
        ReplicationAck::Quorum => readers / 2 + 1,
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
        let readers = self.cluster.registered_readers();
        let needed = readers_needed(self.mode, readers.len());
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
            let readers = self.cluster.registered_readers();
            let needed = readers_needed(self.mode, readers.len());
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
        assert_eq!(readers_needed(ReplicationAck::None, 3), 0);
        assert_eq!(readers_needed(ReplicationAck::One, 3), 1);
        for (readers, needed) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)] {
            assert_eq!(readers_needed(ReplicationAck::Quorum, readers), needed);
        }
        // No reader registered: one still needs one, so writes are refused, never unreplicated.
        assert_eq!(readers_needed(ReplicationAck::One, 0), 1);
        assert_eq!(readers_needed(ReplicationAck::Quorum, 0), 1);
    }
}
