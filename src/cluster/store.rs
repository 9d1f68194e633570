//! Durable Raft storage: the log as checksummed frames in one append-only file, the vote and
//! purge point in a small JSON file, and a state machine that applies entries to the shared
//! [`MetaState`] through its one `apply`, persisted as snapshots.
//!
//! The state machine is only durable through snapshots: entries applied after the last snapshot
//! are still in the log (openraft purges only what a snapshot covers) and are applied again after
//! a restart.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::types::{CommandOutcome, NodeInfo, RaftId, TypeConfig};
use crate::frame::{RecordReader, encode_record};
use crate::meta::MetaState;

type StoreResult<T> = Result<T, StorageError<RaftId>>;

const LOG_FILE: &str = "raft-log.frames";
const LOG_STATE_FILE: &str = "raft-log-state.json";
const SNAPSHOT_FILE: &str = "raft-snapshot.frames";

fn storage_error(
    kind: fn(AnyError) -> StorageIOError<RaftId>,
    err: &io::Error,
) -> StorageError<RaftId> {
    StorageError::IO {
        source: kind(AnyError::new(err)),
    }
}

fn corrupt(path: &Path, message: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is corrupt: {message}", path.display()),
    )
}

/// The vote and the purge point: small, rewritten atomically on change.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct LogMeta {
    vote: Option<Vote<RaftId>>,
    last_purged: Option<LogId<RaftId>>,
}

#[derive(Debug)]
struct LogFiles {
    dir: PathBuf,
    file: File,
    /// index → (entry, byte offset of its frame in the log file).
    entries: BTreeMap<u64, (Entry<TypeConfig>, u64)>,
    end_offset: u64,
    meta: LogMeta,
}

/// The Raft log; clones share the same files (one is the reader openraft asks for).
#[derive(Debug, Clone)]
pub struct LogStore {
    files: Arc<Mutex<LogFiles>>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`; a torn last frame is cut off.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let meta_path = dir.join(LOG_STATE_FILE);
        let meta: LogMeta = match fs::read(&meta_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(&meta_path, e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => LogMeta::default(),
            Err(e) => return Err(e),
        };
        let log_path = dir.join(LOG_FILE);
        let mut data = Vec::new();
        match File::open(&log_path) {
            Ok(mut file) => {
                file.read_to_end(&mut data)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let purged_index = meta.last_purged.map_or(0, |id| id.index);
        let mut entries = BTreeMap::new();
        let mut reader = RecordReader::new(&data);
        let mut offset = 0u64;
        while let Some((index, payload)) = reader.next() {
            let entry: Entry<TypeConfig> =
                serde_json::from_slice(payload).map_err(|e| corrupt(&log_path, e))?;
            if meta.last_purged.is_none() || index > purged_index {
                entries.insert(index, (entry, offset));
            }
            offset = reader.valid_len() as u64;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        if reader.is_torn() {
            tracing::warn!(path = %log_path.display(), "Raft log has a torn tail; truncating it");
            file.set_len(offset)?;
            file.sync_all()?;
        }
        sync_dir(dir)?;
        Ok(LogStore {
            files: Arc::new(Mutex::new(LogFiles {
                dir: dir.to_path_buf(),
                file,
                entries,
                end_offset: offset,
                meta,
            })),
        })
    }
}

impl LogStore {
    /// Runs file work on the blocking pool: it syncs files, which must not stall the async
    /// workers. Awaiting it keeps the log's writes in the order openraft issues them.
    async fn with_files<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut LogFiles) -> T + Send + 'static,
    ) -> T {
        let files = Arc::clone(&self.files);
        tokio::task::spawn_blocking(move || work(&mut files.lock().unwrap()))
            .await
            .expect("Raft log task panicked")
    }
}

impl LogFiles {
    fn save_meta(&self) -> io::Result<()> {
        let bytes = serde_json::to_vec(&self.meta).expect("log meta serializes");
        write_atomically(&self.dir.join(LOG_STATE_FILE), &bytes)
    }

    /// Rewrites the log file with only the entries still held, so purged entries free space.
    fn rewrite(&mut self) -> io::Result<()> {
        let path = self.dir.join(LOG_FILE);
        let mut data = Vec::new();
        for (index, (entry, offset)) in self.entries.iter_mut() {
            *offset = data.len() as u64;
            let payload = serde_json::to_vec(entry).expect("log entries serialize");
            encode_record(&mut data, *index, &[&payload]);
        }
        write_atomically(&path, &data)?;
        self.file = OpenOptions::new().append(true).open(&path)?;
        self.end_offset = data.len() as u64;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let files = self.files.lock().unwrap();
        Ok(files
            .entries
            .range(range)
            .map(|(_, (entry, _))| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let files = self.files.lock().unwrap();
        let last_purged_log_id = files.meta.last_purged;
        let last_log_id = files
            .entries
            .last_key_value()
            .map(|(_, (entry, _))| entry.log_id)
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftId>) -> StoreResult<()> {
        let vote = *vote;
        self.with_files(move |files| {
            files.meta.vote = Some(vote);
            files.save_meta()
        })
        .await
        .map_err(|e| storage_error(StorageIOError::write_vote, &e))
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<RaftId>>> {
        Ok(self.files.lock().unwrap().meta.vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        self.with_files(move |files| {
            let mut data = Vec::new();
            let mut added = Vec::new();
            for entry in entries {
                let offset = files.end_offset + data.len() as u64;
                let payload = serde_json::to_vec(&entry).expect("log entries serialize");
                encode_record(&mut data, entry.log_id.index, &[&payload]);
                added.push((entry, offset));
            }
            let written = files
                .file
                .write_all(&data)
                .and_then(|_| files.file.sync_data());
            if let Err(err) = written {
                callback.log_io_completed(Err(io::Error::new(err.kind(), err.to_string())));
                return Err(err);
            }
            files.end_offset += data.len() as u64;
            for (entry, offset) in added {
                files.entries.insert(entry.log_id.index, (entry, offset));
            }
            callback.log_io_completed(Ok(()));
            Ok(())
        })
        .await
        .map_err(|e| storage_error(StorageIOError::write_logs, &e))
    }

    async fn truncate(&mut self, log_id: LogId<RaftId>) -> StoreResult<()> {
        self.with_files(move |files| {
            let Some(offset) = files.entries.get(&log_id.index).map(|(_, o)| *o) else {
                return Ok(());
            };
            files.entries.split_off(&log_id.index);
            files
                .file
                .set_len(offset)
                .and_then(|_| files.file.sync_all())?;
            files.end_offset = offset;
            Ok(())
        })
        .await
        .map_err(|e| storage_error(StorageIOError::write_logs, &e))
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> StoreResult<()> {
        self.with_files(move |files| {
            // The purge point is recorded first: a crash before the rewrite leaves entries that
            // opening skips.
            files.meta.last_purged = Some(log_id);
            let kept = files.entries.split_off(&(log_id.index + 1));
            files.entries = kept;
            files.save_meta().and_then(|_| files.rewrite())
        })
        .await
        .map_err(|e| storage_error(StorageIOError::write_logs, &e))
    }
}

/// The metadata state every node serves reads from, and how far the log has been applied to it.
#[derive(Debug)]
pub struct AppliedState {
    pub state: Arc<RwLock<MetaState>>,
    pub applied_index: watch::Sender<u64>,
}

impl AppliedState {
    pub fn new() -> Arc<AppliedState> {
        Arc::new(AppliedState {
            state: Arc::new(RwLock::new(MetaState::default())),
            applied_index: watch::channel(0).0,
        })
    }
}

#[derive(Debug, Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<RaftId, NodeInfo>,
    data: Vec<u8>,
}

#[derive(Debug)]
struct MachineState {
    dir: PathBuf,
    last_applied: Option<LogId<RaftId>>,
    membership: StoredMembership<RaftId, NodeInfo>,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The state machine; clones share state (one is the snapshot builder).
#[derive(Debug, Clone)]
pub struct StateMachine {
    applied: Arc<AppliedState>,
    machine: Arc<Mutex<MachineState>>,
}

impl StateMachine {
    /// Opens the state machine in `dir`, starting from the last snapshot if there is one.
    pub fn open(dir: &Path, applied: Arc<AppliedState>) -> io::Result<StateMachine> {
        fs::create_dir_all(dir)?;
        let path = dir.join(SNAPSHOT_FILE);
        let snapshot = match fs::read(&path) {
            Ok(bytes) => Some(decode_snapshot(&bytes).ok_or_else(|| corrupt(&path, "bad frames"))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut machine = MachineState {
            dir: dir.to_path_buf(),
            last_applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
            snapshots_built: 0,
        };
        if let Some(snapshot) = snapshot {
            let state: MetaState =
                serde_json::from_slice(&snapshot.data).map_err(|e| corrupt(&path, e))?;
            *applied.state.write().unwrap() = state;
            machine.last_applied = snapshot.meta.last_log_id;
            machine.membership = snapshot.meta.last_membership.clone();
            applied
                .applied_index
                .send_replace(snapshot.meta.last_log_id.map_or(0, |id| id.index));
            machine.snapshot = Some(snapshot);
        }
        Ok(StateMachine {
            applied,
            machine: Arc::new(Mutex::new(machine)),
        })
    }
}

fn encode_snapshot(snapshot: &StoredSnapshot) -> Vec<u8> {
    let meta = serde_json::to_vec(&snapshot.meta).expect("snapshot meta serializes");
    let mut out = Vec::with_capacity(meta.len() + snapshot.data.len() + 32);
    encode_record(&mut out, 0, &[&meta]);
    encode_record(&mut out, 1, &[&snapshot.data]);
    out
}

fn decode_snapshot(bytes: &[u8]) -> Option<StoredSnapshot> {
    let mut reader = RecordReader::new(bytes);
    let (_, meta) = reader.next()?;
    let (_, data) = reader.next()?;
    Some(StoredSnapshot {
        meta: serde_json::from_slice(meta).ok()?,
        data: data.to_vec(),
    })
}

impl MachineState {
    fn keep_snapshot(&mut self, snapshot: StoredSnapshot) -> io::Result<()> {
        write_atomically(&self.dir.join(SNAPSHOT_FILE), &encode_snapshot(&snapshot))?;
        self.snapshot = Some(snapshot);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        // Serializing the whole state and syncing it to disk is blocking work.
        let builder = self.clone();
        tokio::task::spawn_blocking(move || builder.build_snapshot_blocking())
            .await
            .expect("snapshot task panicked")
            .map_err(|e| storage_error(|s| StorageIOError::write_snapshot(None, s), &e))
    }
}

impl StateMachine {
    fn build_snapshot_blocking(&self) -> io::Result<Snapshot<TypeConfig>> {
        // A consistent copy is taken under the locks; serializing it happens outside them, so
        // `apply` is held up for a clone, not for the encoding.
        let (state, meta) = {
            let mut machine = self.machine.lock().unwrap();
            let state = self.applied.state.read().unwrap().clone();
            machine.snapshots_built += 1;
            let snapshot_id = match machine.last_applied {
                Some(id) => format!("{}-{}-{}", id.leader_id, id.index, machine.snapshots_built),
                None => format!("empty-{}", machine.snapshots_built),
            };
            let meta = SnapshotMeta {
                last_log_id: machine.last_applied,
                last_membership: machine.membership.clone(),
                snapshot_id,
            };
            (state, meta)
        };
        let data = serde_json::to_vec(&state).expect("meta state serializes");
        let mut machine = self.machine.lock().unwrap();
        // A snapshot installed meanwhile is newer than this one and stays.
        let newer_kept = machine
            .snapshot
            .as_ref()
            .is_some_and(|kept| kept.meta.last_log_id > meta.last_log_id);
        if !newer_kept {
            machine.keep_snapshot(StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            })?;
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Why a received snapshot could not be installed.
enum InstallFailure {
    Decode(serde_json::Error),
    Write(io::Error),
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<RaftId>>, StoredMembership<RaftId, NodeInfo>)> {
        let machine = self.machine.lock().unwrap();
        Ok((machine.last_applied, machine.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<CommandOutcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut machine = self.machine.lock().unwrap();
        let mut outcomes = Vec::new();
        {
            let mut state = self.applied.state.write().unwrap();
            for entry in entries {
                machine.last_applied = Some(entry.log_id);
                outcomes.push(match entry.payload {
                    EntryPayload::Blank => Ok(()),
                    EntryPayload::Normal(command) => state.apply(&command),
                    EntryPayload::Membership(membership) => {
                        machine.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Ok(())
                    }
                });
            }
        }
        if let Some(id) = machine.last_applied {
            self.applied.applied_index.send_replace(id.index);
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        // Decoding and syncing the snapshot is blocking work.
        let (machine, applied, installing) =
            (self.clone(), Arc::clone(&self.applied), meta.clone());
        let installed = tokio::task::spawn_blocking(move || {
            let data = snapshot.into_inner();
            let state: MetaState = serde_json::from_slice(&data).map_err(InstallFailure::Decode)?;
            let mut machine = machine.machine.lock().unwrap();
            machine
                .keep_snapshot(StoredSnapshot {
                    meta: installing.clone(),
                    data,
                })
                .map_err(InstallFailure::Write)?;
            *applied.state.write().unwrap() = state;
            machine.last_applied = installing.last_log_id;
            machine.membership = installing.last_membership.clone();
            let index = installing.last_log_id.map_or(0, |id| id.index);
            applied.applied_index.send_replace(index);
            tracing::info!(index, "installed a snapshot from the leader");
            Ok(())
        });
        match installed.await.expect("snapshot install task panicked") {
            Ok(()) => Ok(()),
            Err(InstallFailure::Decode(e)) => Err(StorageError::IO {
                source: StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e)),
            }),
            Err(InstallFailure::Write(e)) => Err(storage_error(
                |s| StorageIOError::write_snapshot(None, s),
                &e,
            )),
        }
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let machine = self.machine.lock().unwrap();
        Ok(machine.snapshot.as_ref().map(|stored| Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        }))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct TempStores;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for TempStores {
        async fn build(&self) -> StoreResult<(tempfile::TempDir, LogStore, StateMachine)> {
            let dir = tempfile::tempdir().unwrap();
            let log = LogStore::open(&dir.path().join("log")).unwrap();
            let machine = StateMachine::open(&dir.path().join("sm"), AppliedState::new()).unwrap();
            Ok((dir, log, machine))
        }
    }

    #[test]
    fn passes_the_openraft_storage_suite() {
        Suite::test_all(TempStores).unwrap();
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        openraft::testing::blank_ent::<TypeConfig>(term, 1, index)
    }

    async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
        use openraft::storage::RaftLogStorageExt;
        log.blocking_append(entries).await.unwrap();
    }

    #[tokio::test]
    async fn log_vote_truncation_and_purge_survive_reopen_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            append(&mut log, (1..=10).map(|i| entry(1, i)).collect()).await;
            log.truncate(entry(1, 8).log_id).await.unwrap();
            append(&mut log, vec![entry(2, 8)]).await;
            log.purge(entry(1, 3).log_id).await.unwrap();
            log.save_vote(&Vote::new(2, 1)).await.unwrap();
        }
        OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap()
            .write_all(&[7, 0, 0, 0, 1, 2])
            .unwrap();
        let mut log = LogStore::open(dir.path()).unwrap();
        let indexes: Vec<(u64, u64)> = log
            .try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect();
        assert_eq!(indexes, [(1, 4), (1, 5), (1, 6), (1, 7), (2, 8)]);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(3));
        assert_eq!(state.last_log_id.map(|id| id.index), Some(8));
        append(&mut log, vec![entry(2, 9)]).await;
        drop(log);
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.try_get_log_entries(9..).await.unwrap().len(), 1);
    }
}
