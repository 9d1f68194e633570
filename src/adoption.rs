//! A shared-storage writer taking over a lost writer's log (`cluster.shared_wal`): it reads the
//! groups of entries the lost writer copied to the bucket, buffers the rows no registered file
//! holds yet (per measurement, by the log's flushed-through positions), flushes them into files
//! under the lost writer's log, and deletes the copies. Run again after a crash, it finds the
//! rows already flushed and skips them, so nothing is stored twice.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::buffer::Buffers;
use crate::cluster::Cluster;
use crate::config::IngestConfig;
use crate::flush::{FlushError, FlushOrigin, Flusher, PendingUploads};
use crate::frame::RecordReader;
use crate::ingest::replay_entry;
use crate::meta::Meta;
use crate::storage::{Storage, StorageError};
use crate::wal::shipped_range;

#[derive(Debug, thiserror::Error)]
pub enum AdoptionError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("entry {lsn} of log {log} cannot be replayed: {reason}")]
    Entry {
        log: String,
        lsn: u64,
        reason: String,
    },
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error("pending-uploads journal: {0}")]
    Journal(std::io::Error),
}

/// Mark in the WAL directory naming the log its segments belong to.
const LOG_MARK: &str = "log";

/// Sets the WAL directory aside when its segments belong to a log another writer took over
/// (this writer was taken for lost): they are that writer's now. Then marks it as `log`'s.
pub fn claim_wal_dir(wal_dir: &std::path::Path, log: &str, node_id: &str) -> std::io::Result<()> {
    // A directory from before the mark existed holds the node's first log.
    let written_for = crate::handover::read_mark(wal_dir, LOG_MARK);
    let written_for = written_for.as_deref().unwrap_or(node_id);
    if written_for != log && wal_dir.exists() {
        let aside = crate::handover::set_aside(wal_dir)?;
        tracing::warn!(
            old_log = %written_for,
            log = %log,
            aside = %aside.display(),
            "another writer took this writer's log over while it was away: its WAL is set \
             aside (the other writer flushed what was acknowledged) and a new log begins"
        );
    }
    crate::handover::write_mark(wal_dir, LOG_MARK, log)
}

/// Where a log's groups of entries are copied.
pub fn shipped_prefix(log: &str) -> String {
    format!("_wal/{log}/")
}

pub struct Adopter {
    pub cluster: Arc<Cluster>,
    pub meta: Arc<Meta>,
    pub storage: Storage,
    pub ingest: IngestConfig,
    pub node_id: String,
    /// Where each adopted log's uploads are journaled.
    pub journal_dir: PathBuf,
}

/// Pause before a failed takeover is tried again.
const RETRY: Duration = Duration::from_secs(1);

impl Adopter {
    /// Takes over every log the metadata gives this writer, as it is given, until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut changes = self.cluster.applied_changes();
        let mut done: HashSet<String> = HashSet::new();
        loop {
            let given: Vec<String> = self
                .meta
                .state()
                .adopted_by(&self.node_id)
                .filter(|log| !done.contains(*log))
                .map(str::to_owned)
                .collect();
            let mut failed = false;
            for log in given {
                match self.adopt(&log).await {
                    Ok(files) => {
                        tracing::warn!(log = %log, files, "flushed what a lost writer had acknowledged");
                        done.insert(log);
                    }
                    Err(err) => {
                        tracing::error!(log = %log, error = %err, "could not take over a lost writer's log; retrying");
                        failed = true;
                    }
                }
            }
            let retry = async {
                if failed {
                    tokio::time::sleep(RETRY).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = retry => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Flushes what `log`'s copies hold beyond its registered files; returns the files written.
    async fn adopt(&self, log: &str) -> Result<usize, AdoptionError> {
        let mut groups = self.storage.list(&shipped_prefix(log)).await?;
        groups.retain(|g| shipped_range(&g.key).is_some());
        groups.sort_by_key(|g| shipped_range(&g.key));
        let buffers = {
            let state = self.meta.state();
            Arc::new(Buffers::new(&state, state.max_flushed_lsn(log)))
        };
        for group in &groups {
            let bytes = self.storage.get(&group.key).await?;
            let state = self.meta.state();
            for (lsn, payload) in RecordReader::new(&bytes) {
                replay_entry(&buffers, &state, log, lsn, payload).map_err(|reason| {
                    AdoptionError::Entry {
                        log: log.to_owned(),
                        lsn,
                        reason,
                    }
                })?;
            }
        }
        let journal = self.journal_dir.join(format!("adopted-{log}"));
        let journal = PendingUploads::open(&journal).map_err(AdoptionError::Journal)?;
        let origin = FlushOrigin {
            node_id: self.node_id.clone(),
            log: log.to_owned(),
        };
        let flusher = Flusher::new(
            buffers,
            self.storage.clone(),
            Arc::clone(&self.meta),
            journal,
            None,
            self.ingest.clone(),
            origin,
        );
        let files = flusher.flush_all().await?;
        for group in groups {
            self.storage.delete(&group.key).await?;
        }
        Ok(files)
    }
}
