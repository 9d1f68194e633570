//! A node following changes of writer at runtime (Pattern B failover).
//!
//! A reader promoted to writer takes over in place: it stops following the old writer, keeps
//! the rows it holds from it as its own (its WAL already holds them under the same LSNs), flushes
//! under the new epoch and starts the writer-only tasks. A writer that learns it was replaced
//! cannot keep its log (the tail it wrote after the last entry its successor holds was never
//! acknowledged with `replication_ack = one`, and its LSNs are now taken by the new writer's
//! entries), so it restarts its services in-process; starting as a reader, it sets its own log
//! aside and follows the new writer from scratch.
//!
//! A mark in the WAL directory says under which writer epoch this node last wrote its own log;
//! a reader's log without it mirrors its writer's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::buffer::Buffers;
use crate::cluster::Cluster;
use crate::flush::Flusher;
use crate::meta::{Meta, SINGLE_WRITER_LOG};

const MARK_FILE: &str = "writer-epoch";

/// The writer epoch this node's log was last written under as writer, if it was.
pub fn writer_mark(wal_dir: &Path) -> Option<u64> {
    read_mark(wal_dir, MARK_FILE)?.parse().ok()
}

/// Records that this node writes its own log under `epoch` from now on.
pub fn mark_writer(wal_dir: &Path, epoch: u64) -> std::io::Result<()> {
    write_mark(wal_dir, MARK_FILE, &epoch.to_string())
}

/// A small fact about the WAL directory kept in file `name` beside the segments.
pub fn read_mark(wal_dir: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(wal_dir.join(name)).ok()?;
    Some(text.trim().to_owned())
}

/// Replaces mark `name` durably (written aside, synced, renamed).
pub fn write_mark(wal_dir: &Path, name: &str, contents: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(wal_dir)?;
    let temporary = wal_dir.join(format!("{name}.new"));
    std::fs::write(&temporary, contents)?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, wal_dir.join(name))
}

/// Pure: a reader whose log was written by itself as a writer must not replay it.
pub fn log_is_replaced(mark: Option<u64>, is_reader: bool) -> bool {
    is_reader && mark.is_some()
}

/// Moves a replaced writer's log out of the way (kept for inspection, never replayed) and
/// returns where it went.
pub fn set_aside(wal_dir: &Path) -> std::io::Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let name = wal_dir
        .file_name()
        .map_or_else(|| "wal".to_owned(), |n| n.to_string_lossy().into_owned());
    let aside = wal_dir.with_file_name(format!("{name}.replaced-{stamp}"));
    std::fs::rename(wal_dir, &aside)?;
    std::fs::create_dir_all(wal_dir)?;
    Ok(aside)
}

/// Starts the writer-only background tasks (retention, continuous queries, object reclaim).
pub type StartUpkeep = Box<dyn FnOnce() + Send>;

/// What a role change acts on.
pub struct RoleWatch {
    pub cluster: Arc<Cluster>,
    pub buffers: Arc<Buffers>,
    pub meta: Arc<Meta>,
    pub flusher: Arc<Flusher>,
    pub wal_dir: Option<PathBuf>,
    /// Stops this reader's follower; its task is awaited before the rows are adopted.
    pub stop_follower: watch::Sender<bool>,
    pub follower: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// `None` once started (a node that starts as the writer starts them itself).
    pub start_upkeep: Option<StartUpkeep>,
    /// Asks the node to restart its services.
    pub restart: watch::Sender<bool>,
}

impl RoleWatch {
    /// Follows the writer assignment until `stop` turns true or a restart is requested.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut changes = self.cluster.applied_changes();
        let mut writing = self.cluster.writes_under();
        loop {
            if self.cluster.log_taken_over() {
                tracing::warn!(
                    "this writer was taken for lost and another writer took its log over; \
                     restarting with a new log"
                );
                let _ = self.restart.send(true);
                return;
            }
            match (writing, self.cluster.writes_under()) {
                (None, Some(epoch)) => {
                    self.take_over(epoch).await;
                    writing = Some(epoch);
                }
                (Some(mine), now) if now != Some(mine) => {
                    let writer = self.cluster.writer_assignment();
                    tracing::warn!(
                        writer = writer.node.as_deref().unwrap_or("none"),
                        epoch = writer.epoch,
                        "this node was replaced as the writer; restarting as a reader"
                    );
                    let _ = self.restart.send(true);
                    return;
                }
                _ => {}
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn take_over(&mut self, epoch: u64) {
        crate::logging::set_role(crate::config::NodeRole::Writer);
        tracing::warn!(epoch, "this reader was promoted to writer; taking over");
        let _ = self.stop_follower.send(true);
        let follower = self.follower.lock().unwrap().take();
        if let Some(follower) = follower {
            let _ = follower.await;
        }
        if let Some(dir) = &self.wal_dir
            && let Err(err) = mark_writer(dir, epoch)
        {
            tracing::error!(dir = %dir.display(), error = %err, "could not mark the log as this writer's");
        }
        let adopted = {
            let state = self.meta.state();
            let mut buffers = self.buffers.lock();
            let flushed: HashMap<_, _> = buffers
                .with_data()
                .into_iter()
                .map(|key| {
                    let lsn =
                        state.flushed_through(SINGLE_WRITER_LOG, &key.database, &key.measurement);
                    (key, lsn)
                })
                .collect();
            buffers.observe_lsn(state.max_flushed_lsn(SINGLE_WRITER_LOG));
            buffers.adopt_replicated(&flushed)
        };
        self.flusher.write_under_epoch(epoch);
        self.cluster.writer_ready(epoch);
        if let Some(start) = self.start_upkeep.take() {
            start();
        }
        tracing::warn!(
            epoch,
            adopted_rows = adopted,
            next_lsn = self.buffers.lock().last_lsn() + 1,
            "now the writer"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_reader_holding_its_own_writer_log_sets_it_aside() {
        assert!(log_is_replaced(Some(3), true));
        assert!(!log_is_replaced(None, true));
        assert!(!log_is_replaced(Some(3), false));
    }

    #[test]
    fn the_mark_survives_and_a_replaced_log_moves_aside() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal");
        assert_eq!(writer_mark(&wal), None);
        mark_writer(&wal, 4).unwrap();
        std::fs::write(wal.join("segment"), b"entries").unwrap();
        assert_eq!(writer_mark(&wal), Some(4));
        let aside = set_aside(&wal).unwrap();
        assert!(aside.join("segment").exists());
        assert_eq!(writer_mark(&wal), None);
        assert_eq!(std::fs::read_dir(&wal).unwrap().count(), 0);
    }
}
