//! The read barrier of a gated reader with its own storage: a query waits until this node can
//! answer from everything the manifest held when the query began, not only from the files its
//! puller happened to have (the seeds' known limitation of Arc's gate).
//!
//! First the node applies every metadata change the Raft leader had committed when asked (a
//! read index), so its manifest is at least the one the query began with. Then each
//! measurement must be covered: a manifest version is exact on its own (see [`ReplicaView`]),
//! so the rows a query reads are the view's files plus the buffered rows above the view's LSN.
//! Those are all the manifest's rows when the view is at the manifest's LSN, or when the stream
//! has applied every entry up to it with no gap above the view's LSN (a gap's rows exist only
//! in files).

use std::sync::Arc;
use std::time::Duration;

use super::{ReplicaView, ReplicationStats};
use crate::buffer::MeasurementKey;
use crate::cluster::Cluster;
use crate::meta::Meta;
use crate::wal::Lsn;

/// Pause before asking the metadata leader again.
const METADATA_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A measurement's position as the reader knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// The manifest's flushed-through LSN.
    pub manifest: Lsn,
    /// The flushed-through LSN of the version this node's view shows.
    pub view: Lsn,
}

/// Pure: whether a reader that applied the stream through `applied`, skipping the entries in
/// `gaps` (inclusive ranges), answers with every row of the manifest version `coverage` names.
pub fn covered(coverage: Coverage, applied: Lsn, gaps: &[(Lsn, Lsn)]) -> bool {
    let Coverage { manifest, view } = coverage;
    view >= manifest
        || (applied >= manifest && !gaps.iter().any(|&(from, to)| from <= manifest && to > view))
}

#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    #[error("the metadata leader could not confirm the latest manifest: {0}")]
    Metadata(String),
    #[error(
        "{behind} measurement(s) not yet complete on this reader (first: {first}) after {waited:?}"
    )]
    Behind {
        behind: usize,
        first: String,
        waited: Duration,
    },
}

pub struct ReadBarrier {
    pub cluster: Arc<Cluster>,
    pub meta: Arc<Meta>,
    pub view: Arc<ReplicaView>,
    pub stats: Arc<ReplicationStats>,
    /// `cluster.replication_catchup_barrier_timeout_ms`.
    pub timeout: Duration,
}

impl ReadBarrier {
    /// Returns once a query started now would count every row of the current manifest.
    pub async fn wait(&self) -> Result<(), BarrierError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        // A leader that is being elected, or just became reachable again, is asked again.
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.cluster.sync_metadata(left).await {
                Ok(()) => break,
                Err(err) if left <= METADATA_RETRY_PAUSE => {
                    return Err(BarrierError::Metadata(err.to_string()));
                }
                Err(_) => tokio::time::sleep(METADATA_RETRY_PAUSE).await,
            }
        }
        loop {
            let progress = self.stats.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let behind = self.behind();
            let Some(first) = behind.first() else {
                return Ok(());
            };
            let timed_out = tokio::select! {
                _ = progress => false,
                _ = tokio::time::sleep_until(deadline) => true,
            };
            if timed_out {
                return Err(BarrierError::Behind {
                    behind: behind.len(),
                    first: format!("{}.{}", first.database, first.measurement),
                    waited: self.timeout,
                });
            }
        }
    }

    /// The measurements a query would not yet see whole.
    fn behind(&self) -> Vec<MeasurementKey> {
        let applied = self.stats.applied_lsn();
        let gaps = self.stats.gap_ranges();
        let state = self.meta.state();
        state
            .measurements()
            .filter_map(|(database, measurement, meta)| {
                let key = MeasurementKey {
                    database: database.to_owned(),
                    measurement: measurement.to_owned(),
                };
                let coverage = Coverage {
                    manifest: meta.flushed_through_lsn,
                    view: self.view.flushed_through(&key),
                };
                (!covered(coverage, applied, &gaps)).then_some(key)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_measurement_is_covered_by_its_current_files_or_by_a_gapless_stream_above_them() {
        let at = |manifest, view| Coverage { manifest, view };
        // The view is current: the stream does not matter.
        assert!(covered(at(10, 10), 0, &[(1, 50)]));
        // Files up to 4 are here; the stream holds 5..=12 with nothing skipped.
        assert!(covered(at(10, 4), 12, &[]));
        // The stream has not reached the manifest's LSN yet.
        assert!(!covered(at(10, 4), 9, &[]));
        // Entries 6..=8 were skipped: their rows are only in files not here yet.
        assert!(!covered(at(10, 4), 12, &[(6, 8)]));
        // Skipped entries at or below the view's LSN, or above the manifest's, are harmless.
        assert!(covered(at(10, 4), 12, &[(1, 4), (11, 11)]));
        // A restarted reader skipped the start of the log: covered once the files are here.
        assert!(!covered(at(10, 0), 20, &[(1, 15)]));
        assert!(covered(at(10, 10), 20, &[(1, 15)]));
        // Nothing flushed yet and nothing skipped: the stream alone is complete.
        assert!(covered(at(0, 0), 0, &[]));
    }
}
