//! Metadata: the file manifest, tokens, policies and the cluster's nodes as a state machine fed
//! by a durable command log.
//!
//! On a standalone node [`Meta::commit`] appends the command to a local log, syncs it, then
//! applies it. The log is periodically folded into a snapshot so start-up stays fast. In a
//! cluster the command goes to a [`Replicator`] (Raft) instead, which applies it to the same
//! shared state through the same `MetaState::apply`.

mod admin;
pub mod nodes;
mod state;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

pub use admin::{
    AdminCommand, AdminError, AdminState, CQ_COMPLETED, ContinuousQuery, CqExecution,
    DatabaseRecord, Permission, RetentionExecution, RetentionPolicy, TokenRecord,
};
pub use state::{
    ApplyError, ColumnType, FileEntry, MeasurementMeta, MetaCommand, MetaState, SINGLE_WRITER_LOG,
};

use crate::frame::{RecordReader, encode_record};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("metadata file {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// The cluster refused the change before ordering it: it was not applied anywhere.
    #[error("metadata change not accepted by the cluster: {0}")]
    Unavailable(String),
    /// The change was handed to the cluster but its fate is unknown.
    #[error("metadata change not confirmed by the cluster (it may still apply): {0}")]
    Unconfirmed(String),
}

/// Orders metadata commands across a cluster and applies them to the shared state.
pub trait Replicator: Send + Sync + std::fmt::Debug {
    /// Returns once the command is applied on this node (or refused). Blocking.
    fn replicate(&self, command: MetaCommand) -> Result<(), MetaError>;
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MetaError + '_ {
    move |source| MetaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const SNAPSHOT_FILE: &str = "snapshot.json";
const LOG_FILE: &str = "commands.log";
/// Commands appended before the log is folded into a new snapshot.
const COMMANDS_PER_SNAPSHOT: u64 = 1000;

#[derive(serde::Serialize, serde::Deserialize)]
struct Snapshot {
    last_index: u64,
    state: MetaState,
}

#[derive(Debug)]
struct CommandLog {
    dir: PathBuf,
    file: File,
    last_index: u64,
    commands_since_snapshot: u64,
}

/// Where committed commands go.
#[derive(Debug)]
enum Commands {
    Local(Mutex<CommandLog>),
    Replicated(Arc<dyn Replicator>),
}

/// Metadata handle: readers see the applied state, writers go through the log.
#[derive(Debug)]
pub struct Meta {
    state: Arc<RwLock<MetaState>>,
    commands: Commands,
    retries_stopped: AtomicBool,
}

impl Meta {
    /// Loads the snapshot and replays the command log; a torn last command is cut off.
    pub fn open(dir: &Path) -> Result<Meta, MetaError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let (mut state, snapshot_index) = match fs::read(&snapshot_path) {
            Ok(bytes) => {
                let snapshot: Snapshot =
                    serde_json::from_slice(&bytes).map_err(|e| MetaError::Corrupt {
                        path: snapshot_path.clone(),
                        message: e.to_string(),
                    })?;
                (snapshot.state, snapshot.last_index)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (MetaState::default(), 0),
            Err(e) => return Err(io_err(&snapshot_path)(e)),
        };

        let log_path = dir.join(LOG_FILE);
        let mut data = Vec::new();
        match File::open(&log_path) {
            Ok(mut f) => {
                f.read_to_end(&mut data).map_err(io_err(&log_path))?;
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&log_path)(e)),
            Err(_) => {}
        }
        let mut last_index = snapshot_index;
        let mut commands_since_snapshot = 0;
        let mut reader = RecordReader::new(&data);
        for (index, payload) in reader.by_ref() {
            commands_since_snapshot += 1;
            if index <= snapshot_index {
                continue;
            }
            let command: MetaCommand =
                serde_json::from_slice(payload).map_err(|e| MetaError::Corrupt {
                    path: log_path.clone(),
                    message: format!("command {index}: {e}"),
                })?;
            state.apply(&command)?;
            last_index = index;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        if reader.is_torn() {
            tracing::warn!(path = %log_path.display(), "metadata log has a torn tail; truncating it");
            file.set_len(reader.valid_len() as u64)
                .and_then(|_| file.sync_all())
                .map_err(io_err(&log_path))?;
        }
        sync_dir(dir)?;
        Ok(Meta {
            state: Arc::new(RwLock::new(state)),
            commands: Commands::Local(Mutex::new(CommandLog {
                dir: dir.to_path_buf(),
                file,
                last_index,
                commands_since_snapshot,
            })),
            retries_stopped: AtomicBool::new(false),
        })
    }

    /// Whether `dir` holds a standalone node's metadata (its snapshot or a non-empty log).
    pub fn has_standalone_state(dir: &Path) -> bool {
        dir.join(SNAPSHOT_FILE).exists()
            || fs::metadata(dir.join(LOG_FILE)).is_ok_and(|m| m.len() > 0)
    }

    /// Metadata kept by a cluster: `state` is what the replicator applies commands to.
    pub fn replicated(state: Arc<RwLock<MetaState>>, replicator: Arc<dyn Replicator>) -> Meta {
        Meta {
            state,
            commands: Commands::Replicated(replicator),
            retries_stopped: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> RwLockReadGuard<'_, MetaState> {
        self.state.read().unwrap()
    }

    /// Makes the command durable, then applies it. Blocking (it syncs a file, or waits for the
    /// cluster).
    pub fn commit(&self, command: MetaCommand) -> Result<(), MetaError> {
        let log = match &self.commands {
            Commands::Local(log) => log,
            Commands::Replicated(replicator) => {
                self.state().check(&command)?;
                return replicator.replicate(command);
            }
        };
        let mut log = log.lock().unwrap();
        self.state().check(&command)?;
        let index = log.last_index + 1;
        let payload = serde_json::to_vec(&command).expect("meta commands serialize");
        let mut record = Vec::with_capacity(payload.len() + 16);
        encode_record(&mut record, index, &[&payload]);
        let path = log.dir.join(LOG_FILE);
        log.file
            .write_all(&record)
            .and_then(|_| log.file.sync_data())
            .map_err(io_err(&path))?;
        log.last_index = index;
        log.commands_since_snapshot += 1;
        self.state.write().unwrap().apply(&command)?;
        if log.commands_since_snapshot >= COMMANDS_PER_SNAPSHOT {
            let state = self.state().clone();
            if let Err(err) = log.fold_into_snapshot(&state) {
                // The log still holds everything; folding will be tried again next commit.
                tracing::warn!(error = %err, "could not write metadata snapshot");
            }
        }
        Ok(())
    }
}

/// Why [`Meta::commit_until_settled`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// The node is shutting down before the cluster said whether the change applied. It may
    /// have: whatever depends on it (uploaded objects, WAL entries) must be kept for start-up to
    /// reconcile.
    #[error("metadata change unsettled at shutdown: {0}")]
    Unsettled(String),
}

/// Longest pause between attempts of an unsettled change.
const MAX_SETTLE_PAUSE: Duration = Duration::from_secs(2);

impl Meta {
    /// Commits a change that background work (flushes, compaction, deletes, reclaim) cannot do
    /// without. Blocking.
    ///
    /// A cluster that refuses the change or cannot confirm it (no quorum, an election, a stalled
    /// leader) is asked again, with back-off, for as long as that lasts: an unconfirmed change
    /// whose effect shows up in the applied state was applied, and one rejected because its
    /// earlier attempt applied is done too. Only [`Meta::stop_retrying`] (shutdown) ends the
    /// wait early. After a failed local log write the log's durable contents are unknown, and
    /// appending more could bury a torn record under valid ones, so that aborts the process:
    /// restarting recovers a consistent state.
    pub fn commit_until_settled(&self, command: MetaCommand) -> Result<(), SettleError> {
        let mut pause = Duration::from_millis(100);
        loop {
            let reason = match self.commit(command.clone()) {
                Ok(()) => return Ok(()),
                Err(MetaError::Rejected(err)) if !self.state().reflects(&command) => {
                    return Err(err.into());
                }
                Err(MetaError::Rejected(_)) => return Ok(()),
                Err(MetaError::Unavailable(reason) | MetaError::Unconfirmed(reason)) => reason,
                Err(err @ (MetaError::Io { .. } | MetaError::Corrupt { .. })) => {
                    tracing::error!(error = %err, "metadata log write failed; aborting");
                    std::process::abort();
                }
            };
            if self.state().reflects(&command) {
                return Ok(());
            }
            if self.retries_stopped.load(Ordering::SeqCst) {
                return Err(SettleError::Unsettled(reason));
            }
            tracing::warn!(%reason, retry_in = ?pause, "metadata change not settled by the cluster; asking again");
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_SETTLE_PAUSE);
        }
    }

    /// From now on [`Meta::commit_until_settled`] makes one more attempt, not more: the node is
    /// shutting down.
    pub fn stop_retrying(&self) {
        self.retries_stopped.store(true, Ordering::SeqCst);
    }
}

impl CommandLog {
    /// Writes the state as a snapshot, then starts an empty log. A crash in between is harmless:
    /// commands at or below the snapshot index are skipped on open.
    fn fold_into_snapshot(&mut self, state: &MetaState) -> Result<(), MetaError> {
        let snapshot = Snapshot {
            last_index: self.last_index,
            state: state.clone(),
        };
        let bytes = serde_json::to_vec(&snapshot).expect("meta state serializes");
        write_atomically(&self.dir.join(SNAPSHOT_FILE), &bytes)?;
        // The empty log is opened before it replaces the old one, so a failure leaves the old
        // log in use rather than a handle to a file that is gone.
        let log_path = self.dir.join(LOG_FILE);
        let fresh_path = log_path.with_extension("new");
        let fresh = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&fresh_path)
            .and_then(|f| f.sync_all().map(|_| f))
            .map_err(io_err(&fresh_path))?;
        fs::rename(&fresh_path, &log_path).map_err(io_err(&log_path))?;
        self.file = fresh;
        self.commands_since_snapshot = 0;
        sync_dir(&self.dir)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), MetaError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), MetaError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn add(path: &str, lsn: u64) -> MetaCommand {
        MetaCommand::AddFiles {
            database: "db".into(),
            measurement: "cpu".into(),
            files: vec![FileEntry {
                path: path.into(),
                database: "db".into(),
                measurement: "cpu".into(),
                min_time_us: 0,
                max_time_us: 1,
                rows: 1,
                size_bytes: 1,
                sha256: "ab".into(),
                min_lsn: lsn,
                max_lsn: lsn,
                log: String::new(),
                columns: BTreeMap::new(),
                tags: vec![],
                created_at_us: 0,
                origin_node: "n".into(),
            }],
            flushed_through_lsn: lsn,
            log: String::new(),
            writer_epoch: None,
        }
    }

    #[test]
    fn commands_survive_reopen_through_snapshots_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let total = COMMANDS_PER_SNAPSHOT + 5;
        {
            let meta = Meta::open(dir.path()).unwrap();
            for i in 1..=total {
                meta.commit(add(&format!("f{i}.parquet"), i)).unwrap();
            }
        }
        assert!(dir.path().join(SNAPSHOT_FILE).exists());
        let mut log = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap();
        log.write_all(&[9, 0, 0, 0, 1]).unwrap();

        let meta = Meta::open(dir.path()).unwrap();
        assert_eq!(meta.state().files().count() as u64, total);
        assert_eq!(meta.state().flushed_through("", "db", "cpu"), total);
        meta.commit(add("after.parquet", total + 1)).unwrap();
        drop(meta);
        let meta = Meta::open(dir.path()).unwrap();
        assert!(meta.state().file("after.parquet").is_some());
    }

    #[test]
    fn standalone_state_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!Meta::has_standalone_state(dir.path()));
        let meta = Meta::open(dir.path()).unwrap();
        assert!(
            !Meta::has_standalone_state(dir.path()),
            "an empty log is no state"
        );
        meta.commit(add("a.parquet", 1)).unwrap();
        assert!(Meta::has_standalone_state(dir.path()));
    }

    #[test]
    fn rejected_command_is_not_logged() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Meta::open(dir.path()).unwrap();
        meta.commit(add("a.parquet", 3)).unwrap();
        assert!(matches!(
            meta.commit(add("a.parquet", 4)),
            Err(MetaError::Rejected(ApplyError::DuplicateFile(_)))
        ));
        drop(meta);
        let meta = Meta::open(dir.path()).unwrap();
        assert_eq!(meta.state().flushed_through("", "db", "cpu"), 3);
    }
}
