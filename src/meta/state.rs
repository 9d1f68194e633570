//! The deterministic metadata state machine. Standalone nodes feed it from a local durable log;
//! a cluster will feed it the same commands through Raft. There is exactly one `apply`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::admin::{AdminCommand, AdminError, AdminState};
use super::nodes::{Failover, NodeError, NodeRecord, NodeRegistry};
use crate::wal::Lsn;

/// Column types a stored file can have (the ingest decoders produce only these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Int64,
    Float64,
    Utf8,
    Boolean,
}

impl ColumnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::Utf8 => "string",
            ColumnType::Boolean => "boolean",
        }
    }
}

/// One live Parquet file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Object key relative to the storage root.
    pub path: String,
    pub database: String,
    pub measurement: String,
    pub min_time_us: i64,
    pub max_time_us: i64,
    pub rows: u64,
    pub size_bytes: u64,
    pub sha256: String,
    /// Whose WAL numbered `min_lsn`..`max_lsn` ([`SINGLE_WRITER_LOG`] or a writer's node id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log: String,
    /// LSN range of the WAL entries whose rows this file holds.
    pub min_lsn: Lsn,
    pub max_lsn: Lsn,
    /// Non-time columns and their types.
    pub columns: BTreeMap<String, ColumnType>,
    pub tags: Vec<String>,
    pub created_at_us: i64,
    pub origin_node: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Files written by one flush of one measurement: every row of that measurement with
    /// LSN ≤ `flushed_through_lsn` in `log` is now in registered files.
    AddFiles {
        database: String,
        measurement: String,
        files: Vec<FileEntry>,
        flushed_through_lsn: Lsn,
        /// The WAL the LSNs number (see [`SINGLE_WRITER_LOG`]).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        log: String,
        /// The writer epoch the flushing node holds; a flush from a replaced writer is refused.
        /// `None` outside a cluster's writer (standalone nodes, retention's rewrites).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        writer_epoch: Option<u64>,
    },
    /// Tokens, databases, retention policies, continuous queries.
    Admin(AdminCommand),
    /// Swaps files of one measurement in one step (compaction, retention, deletes): readers see
    /// either the removed files or the added ones, never both. Removed paths become tombstones
    /// stamped `at_us`, so their objects are deleted only once no query can still be reading
    /// them. The measurement's `flushed_through_lsn` is unchanged: no new rows arrive this way.
    ReplaceFiles {
        database: String,
        measurement: String,
        removed: Vec<String>,
        added: Vec<FileEntry>,
        at_us: i64,
        /// A compaction's swap: the compactor epoch it ran under; a replaced compactor's swap
        /// is refused. `None` for retention and deletes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compactor_epoch: Option<u64>,
    },
    /// Forgets tombstones whose objects are deleted. Unknown paths are ignored, so a retry
    /// after a crash is harmless.
    PurgeTombstones { paths: Vec<String> },
    /// A cluster node joins, or restarts with (possibly) new addresses.
    RegisterNode { name: String, node: NodeRecord },
    /// A node was removed from the cluster; its name and role are free again.
    RemoveNode { name: String },
    /// A reader takes over the writes under the next writer epoch; the previous writer becomes a
    /// reader.
    PromoteWriter { epoch: u64, failover: Failover },
    /// The compaction lease moves to `change.to` under the next compactor epoch.
    AssignCompactor { epoch: u64, change: Failover },
    /// Shared storage with `cluster.shared_wal`: writer `by` flushes what is left of a lost
    /// writer's `log` from its shipped WAL. From now on only `by` registers files of `log`.
    AdoptLog { log: String, by: String, at_us: i64 },
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyError {
    #[error("file {0} is already registered")]
    DuplicateFile(String),
    #[error("flush of {database}.{measurement} through LSN {lsn} is not past LSN {flushed}")]
    StaleFlush {
        database: String,
        measurement: String,
        lsn: Lsn,
        flushed: Lsn,
    },
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("file {path} is not a live file of {database}.{measurement}")]
    FileNotLive {
        database: String,
        measurement: String,
        path: String,
    },
    #[error("file {0} was removed and is waiting for its object to be deleted")]
    FileTombstoned(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(
        "flush under writer epoch {epoch} refused: the writer epoch is now {current}, so this \
         node no longer writes for the cluster"
    )]
    StaleWriterEpoch { epoch: u64, current: u64 },
    #[error(
        "compaction under compactor epoch {epoch} refused: the compactor epoch is now {current} \
         (another node holds the compaction lease)"
    )]
    StaleCompactorEpoch { epoch: u64, current: u64 },
    #[error("files of log {log} refused: writer {by} took that log over")]
    LogAdopted { log: String, by: String },
}

/// The LSN space of a standalone node and of a cluster with one writer (Pattern B), which a
/// promoted reader continues. With `cluster.shared_storage_mode` every writer numbers its own
/// WAL, and its LSN space is named by its node id.
pub const SINGLE_WRITER_LOG: &str = "";

/// Per-measurement facts derived from its files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasurementMeta {
    /// Flushed-through LSN in [`SINGLE_WRITER_LOG`].
    pub flushed_through_lsn: Lsn,
    /// Flushed-through LSN in each shared-storage writer's own log.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flushed_through_by_writer: BTreeMap<String, Lsn>,
    pub columns: BTreeMap<String, ColumnType>,
}

impl MeasurementMeta {
    /// Every row of the measurement numbered in `log` at or below this is in registered files.
    pub fn flushed_through(&self, log: &str) -> Lsn {
        if log == SINGLE_WRITER_LOG {
            self.flushed_through_lsn
        } else {
            self.flushed_through_by_writer
                .get(log)
                .copied()
                .unwrap_or(0)
        }
    }

    fn set_flushed_through(&mut self, log: &str, lsn: Lsn) {
        if log == SINGLE_WRITER_LOG {
            self.flushed_through_lsn = lsn;
        } else {
            self.flushed_through_by_writer.insert(log.to_owned(), lsn);
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaState {
    files: BTreeMap<String, FileEntry>,
    measurements: BTreeMap<String, BTreeMap<String, MeasurementMeta>>,
    #[serde(default)]
    admin: AdminState,
    /// Removed files whose objects may still be read by running queries: path → removal time
    /// (µs). Absent in snapshots written before files could be removed.
    #[serde(default)]
    tombstones: BTreeMap<String, i64>,
    /// Cluster nodes and their roles; empty on a standalone node.
    #[serde(default)]
    nodes: NodeRegistry,
    /// Lost writers' logs taken over by another writer (`cluster.shared_wal`): log → adopter.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    adopted_logs: BTreeMap<String, String>,
}

impl MetaState {
    /// Validates a command against the current state without changing it, so the log never
    /// records a command that `apply` would refuse.
    pub fn check(&self, command: &MetaCommand) -> Result<(), ApplyError> {
        match command {
            MetaCommand::AddFiles {
                database,
                measurement,
                files,
                flushed_through_lsn,
                log,
                writer_epoch,
            } => {
                let current = self.nodes.writer().epoch;
                if let Some(epoch) = *writer_epoch
                    && epoch != current
                {
                    return Err(ApplyError::StaleWriterEpoch { epoch, current });
                }
                self.check_new_paths(files)?;
                if let Some(by) = self.adopted_logs.get(log)
                    && (files.is_empty() || files.iter().any(|f| f.origin_node != *by))
                {
                    return Err(ApplyError::LogAdopted {
                        log: log.clone(),
                        by: by.clone(),
                    });
                }
                // Every flush covers LSNs above the previous one: an equal or lower watermark
                // is the same rows a second time.
                let flushed = self.flushed_through(log, database, measurement);
                if *flushed_through_lsn <= flushed && flushed > 0 {
                    return Err(ApplyError::StaleFlush {
                        database: database.clone(),
                        measurement: measurement.clone(),
                        lsn: *flushed_through_lsn,
                        flushed,
                    });
                }
                Ok(())
            }
            MetaCommand::Admin(command) => Ok(self.admin.check(command)?),
            MetaCommand::ReplaceFiles {
                database,
                measurement,
                removed,
                added,
                compactor_epoch,
                ..
            } => {
                let current = self.nodes.compactor().epoch;
                if let Some(epoch) = *compactor_epoch
                    && epoch != current
                {
                    return Err(ApplyError::StaleCompactorEpoch { epoch, current });
                }
                let mut seen = std::collections::BTreeSet::new();
                for path in removed {
                    let live = self
                        .files
                        .get(path)
                        .is_some_and(|f| f.database == *database && f.measurement == *measurement);
                    // A path named twice would be removed once: refuse it like a missing one.
                    if !live || !seen.insert(path) {
                        return Err(ApplyError::FileNotLive {
                            database: database.clone(),
                            measurement: measurement.clone(),
                            path: path.clone(),
                        });
                    }
                }
                self.check_new_paths(added)
            }
            MetaCommand::PurgeTombstones { .. } | MetaCommand::RemoveNode { .. } => Ok(()),
            MetaCommand::RegisterNode { name, node } => {
                Ok(self.nodes.check_register(name, node)?)
            }
            MetaCommand::PromoteWriter { epoch, failover } => {
                Ok(self.nodes.check_promote(&failover.to, *epoch)?)
            }
            MetaCommand::AssignCompactor { epoch, change } => {
                Ok(self.nodes.check_assign_compactor(*epoch, change)?)
            }
            MetaCommand::AdoptLog { .. } => Ok(()),
        }
    }

    /// New files must not reuse a path that is live, tombstoned (its object is about to be
    /// deleted) or named twice in the same command.
    fn check_new_paths(&self, files: &[FileEntry]) -> Result<(), ApplyError> {
        let mut seen = std::collections::BTreeSet::new();
        for file in files {
            if self.files.contains_key(&file.path) || !seen.insert(&file.path) {
                return Err(ApplyError::DuplicateFile(file.path.clone()));
            }
            if self.tombstones.contains_key(&file.path) {
                return Err(ApplyError::FileTombstoned(file.path.clone()));
            }
        }
        Ok(())
    }

    pub fn apply(&mut self, command: &MetaCommand) -> Result<(), ApplyError> {
        self.check(command)?;
        match command {
            MetaCommand::AddFiles {
                database,
                measurement,
                files,
                flushed_through_lsn,
                log,
                ..
            } => {
                self.register(database, measurement, files)
                    .set_flushed_through(log, *flushed_through_lsn);
                Ok(())
            }
            MetaCommand::Admin(command) => {
                self.admin.apply(command);
                Ok(())
            }
            MetaCommand::ReplaceFiles {
                database,
                measurement,
                removed,
                added,
                at_us,
                ..
            } => {
                for path in removed {
                    self.files.remove(path);
                    self.tombstones.insert(path.clone(), *at_us);
                }
                if !added.is_empty() {
                    self.register(database, measurement, added);
                }
                Ok(())
            }
            MetaCommand::PurgeTombstones { paths } => {
                for path in paths {
                    self.tombstones.remove(path);
                }
                Ok(())
            }
            MetaCommand::RegisterNode { name, node } => {
                self.nodes.register(name, node);
                Ok(())
            }
            MetaCommand::RemoveNode { name } => {
                self.nodes.remove(name);
                Ok(())
            }
            MetaCommand::PromoteWriter { epoch, failover } => {
                self.nodes.promote(*epoch, failover);
                Ok(())
            }
            MetaCommand::AssignCompactor { epoch, change } => {
                self.nodes.assign_compactor(*epoch, change);
                Ok(())
            }
            MetaCommand::AdoptLog { log, by, .. } => {
                self.adopted_logs.insert(log.clone(), by.clone());
                Ok(())
            }
        }
    }

    /// Adds live files of a measurement and their columns; returns the measurement's facts.
    fn register(
        &mut self,
        database: &str,
        measurement: &str,
        files: &[FileEntry],
    ) -> &mut MeasurementMeta {
        let meta = self
            .measurements
            .entry(database.to_string())
            .or_default()
            .entry(measurement.to_string())
            .or_default();
        for file in files {
            for (name, column_type) in &file.columns {
                meta.columns.insert(name.clone(), *column_type);
            }
            self.files.insert(file.path.clone(), file.clone());
        }
        meta
    }

    /// Whether `command`'s effect is already in this state, i.e. an earlier attempt whose answer
    /// was lost (the cluster did not confirm it in time) was applied after all. Commands that
    /// register files can tell, since every file path is unique; admin commands answer false.
    pub fn reflects(&self, command: &MetaCommand) -> bool {
        let registered = |entry: &FileEntry| self.files.get(&entry.path) == Some(entry);
        match command {
            MetaCommand::AddFiles {
                database,
                measurement,
                files,
                flushed_through_lsn,
                log,
                ..
            } => {
                // Flushes of a measurement register in LSN order, so a watermark at or past this
                // one means this registration applied; its files may since have been compacted
                // away, but none may be registered with other contents.
                self.flushed_through(log, database, measurement) >= *flushed_through_lsn
                    && files
                        .iter()
                        .all(|f| self.files.get(&f.path).is_none_or(|live| live == f))
            }
            MetaCommand::ReplaceFiles { removed, added, .. } => {
                added.iter().all(registered) && removed.iter().all(|p| !self.files.contains_key(p))
            }
            MetaCommand::PurgeTombstones { paths } => {
                paths.iter().all(|p| !self.tombstones.contains_key(p))
            }
            MetaCommand::RegisterNode { name, node } => self.nodes.get(name) == Some(node),
            MetaCommand::RemoveNode { name } => self.nodes.get(name).is_none(),
            MetaCommand::PromoteWriter { epoch, failover } => {
                self.nodes.writer().epoch >= *epoch
                    && self.nodes.writer().last_failover.as_ref() == Some(failover)
            }
            MetaCommand::AssignCompactor { epoch, change } => {
                self.nodes.compactor().epoch >= *epoch
                    && self.nodes.compactor().last_move.as_ref() == Some(change)
            }
            MetaCommand::AdoptLog { log, by, .. } => self.adopted_logs.get(log) == Some(by),
            MetaCommand::Admin(_) => false,
        }
    }

    pub fn admin(&self) -> &AdminState {
        &self.admin
    }

    pub fn nodes(&self) -> &NodeRegistry {
        &self.nodes
    }

    /// Every row of the measurement numbered in `log` at or below this is in registered files.
    pub fn flushed_through(&self, log: &str, database: &str, measurement: &str) -> Lsn {
        self.measurement(database, measurement)
            .map_or(0, |m| m.flushed_through(log))
    }

    pub fn measurement(&self, database: &str, measurement: &str) -> Option<&MeasurementMeta> {
        self.measurements.get(database)?.get(measurement)
    }

    /// (database, measurement, facts) for every measurement with files.
    pub fn measurements(&self) -> impl Iterator<Item = (&str, &str, &MeasurementMeta)> {
        self.measurements.iter().flat_map(|(db, ms)| {
            ms.iter()
                .map(move |(m, meta)| (db.as_str(), m.as_str(), meta))
        })
    }

    /// The highest LSN of `log` any registered file covers; a restarted writer continues
    /// above it.
    pub fn max_flushed_lsn(&self, log: &str) -> Lsn {
        self.measurements()
            .map(|(_, _, m)| m.flushed_through(log))
            .max()
            .unwrap_or(0)
    }

    pub fn files(&self) -> impl Iterator<Item = &FileEntry> {
        self.files.values()
    }

    /// Files of one measurement (keys start with `{database}/{measurement}/`).
    pub fn files_of(&self, database: &str, measurement: &str) -> Vec<&FileEntry> {
        self.measurement_files(database, measurement).collect()
    }

    /// Whether the measurement has at least one live file.
    pub fn has_files(&self, database: &str, measurement: &str) -> bool {
        self.measurement_files(database, measurement)
            .next()
            .is_some()
    }

    fn measurement_files(
        &self,
        database: &str,
        measurement: &str,
    ) -> impl Iterator<Item = &FileEntry> {
        let prefix = format!("{database}/{measurement}/");
        let (database, measurement) = (database.to_string(), measurement.to_string());
        self.files
            .range(prefix.clone()..)
            .take_while(move |(path, _)| path.starts_with(&prefix))
            .map(|(_, file)| file)
            .filter(move |file| file.database == database && file.measurement == measurement)
    }

    /// Lost writers' logs taken over: log → adopter.
    pub fn adopted_logs(&self) -> &BTreeMap<String, String> {
        &self.adopted_logs
    }

    /// Who took `log` over, if a writer did.
    pub fn adopter_of(&self, log: &str) -> Option<&str> {
        self.adopted_logs.get(log).map(String::as_str)
    }

    /// Logs writer `node` took over.
    pub fn adopted_by<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.adopted_logs
            .iter()
            .filter(move |(_, by)| *by == node)
            .map(|(log, _)| log.as_str())
    }

    /// The log a shared-storage writer named `node` writes now: its name, or after its earlier
    /// logs were taken over (it was lost, then came back), its name with the next generation.
    pub fn log_of(&self, node: &str) -> String {
        let mut log = node.to_owned();
        let mut generation = 1;
        while self.adopted_logs.contains_key(&log) {
            generation += 1;
            log = format!("{node}.{generation}");
        }
        log
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.get(path)
    }

    /// Whether `path` was removed and waits for its object to be deleted.
    pub fn is_tombstoned(&self, path: &str) -> bool {
        self.tombstones.contains_key(path)
    }

    /// Removed files whose objects are not yet deleted: (path, removal time in µs).
    pub fn tombstones(&self) -> impl Iterator<Item = (&str, i64)> {
        self.tombstones
            .iter()
            .map(|(path, at)| (path.as_str(), *at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, lsn: Lsn) -> FileEntry {
        FileEntry {
            path: path.into(),
            database: "db".into(),
            measurement: "cpu".into(),
            min_time_us: 0,
            max_time_us: 10,
            rows: 3,
            size_bytes: 100,
            sha256: "00".into(),
            min_lsn: lsn,
            max_lsn: lsn,
            log: String::new(),
            columns: BTreeMap::from([("usage".to_string(), ColumnType::Float64)]),
            tags: vec![],
            created_at_us: 0,
            origin_node: "n1".into(),
        }
    }

    fn add(path: &str, lsn: Lsn) -> MetaCommand {
        MetaCommand::AddFiles {
            database: "db".into(),
            measurement: "cpu".into(),
            files: vec![file(path, lsn)],
            flushed_through_lsn: lsn,
            log: String::new(),
            writer_epoch: None,
        }
    }

    #[test]
    fn add_files_records_files_columns_and_watermark() {
        let mut state = MetaState::default();
        state.apply(&add("a.parquet", 5)).unwrap();
        state.apply(&add("b.parquet", 9)).unwrap();
        assert_eq!(state.flushed_through("", "db", "cpu"), 9);
        assert_eq!(state.flushed_through("", "db", "mem"), 0);
        assert_eq!(state.max_flushed_lsn(""), 9);
        assert_eq!(state.files().count(), 2);
        let meta = state.measurement("db", "cpu").unwrap();
        assert_eq!(meta.columns["usage"], ColumnType::Float64);
    }

    #[test]
    fn each_shared_storage_writer_has_its_own_flushed_through_position() {
        let mut state = MetaState::default();
        let flush = |path: &str, log: &str, lsn| {
            let mut entry = file(path, lsn);
            entry.log = log.into();
            MetaCommand::AddFiles {
                database: "db".into(),
                measurement: "cpu".into(),
                files: vec![entry],
                flushed_through_lsn: lsn,
                log: log.into(),
                writer_epoch: None,
            }
        };
        state.apply(&flush("a1.parquet", "writer-a", 7)).unwrap();
        // Writer b numbers its own log: LSN 3 is new there although writer a is past it.
        let b = flush("b1.parquet", "writer-b", 3);
        assert!(!state.reflects(&b));
        state.apply(&b).unwrap();
        assert!(state.reflects(&b));
        assert_eq!(state.flushed_through("writer-a", "db", "cpu"), 7);
        assert_eq!(state.flushed_through("writer-b", "db", "cpu"), 3);
        assert_eq!(state.flushed_through(SINGLE_WRITER_LOG, "db", "cpu"), 0);
        assert_eq!(state.max_flushed_lsn("writer-b"), 3);
        assert_eq!(state.max_flushed_lsn("writer-c"), 0);
        let before = state.clone();
        assert!(matches!(
            state.apply(&flush("b2.parquet", "writer-b", 3)),
            Err(ApplyError::StaleFlush {
                lsn: 3,
                flushed: 3,
                ..
            })
        ));
        assert_eq!(state, before);
        // The single writer's log keeps its JSON shape: no `log` field at all.
        let json = serde_json::to_value(add("c.parquet", 9)).unwrap();
        assert!(json["AddFiles"].get("log").is_none());
        assert!(json["AddFiles"]["files"][0].get("log").is_none());
        let json = serde_json::to_value(&before).unwrap();
        assert_eq!(
            json["measurements"]["db"]["cpu"]["flushed_through_by_writer"],
            serde_json::json!({"writer-a": 7, "writer-b": 3})
        );
    }

    #[test]
    fn an_adopted_log_takes_files_only_from_its_adopter_and_its_writer_moves_on() {
        let mut state = MetaState::default();
        let flush = |path: &str, origin: &str, lsn| {
            let mut entry = file(path, lsn);
            entry.log = "writer-b".into();
            entry.origin_node = origin.into();
            MetaCommand::AddFiles {
                database: "db".into(),
                measurement: "cpu".into(),
                files: vec![entry],
                flushed_through_lsn: lsn,
                log: "writer-b".into(),
                writer_epoch: None,
            }
        };
        state.apply(&flush("b1.parquet", "writer-b", 3)).unwrap();
        assert_eq!(state.log_of("writer-b"), "writer-b");
        let adopt = MetaCommand::AdoptLog {
            log: "writer-b".into(),
            by: "writer-a".into(),
            at_us: 1,
        };
        assert!(!state.reflects(&adopt));
        state.apply(&adopt).unwrap();
        assert!(state.reflects(&adopt));
        let before = state.clone();
        // The lost writer, back (or never dead), flushes rows the adopter now answers for.
        assert_eq!(
            state.apply(&flush("b2.parquet", "writer-b", 9)),
            Err(ApplyError::LogAdopted {
                log: "writer-b".into(),
                by: "writer-a".into()
            })
        );
        assert_eq!(state, before);
        state.apply(&flush("b3.parquet", "writer-a", 9)).unwrap();
        assert_eq!(state.flushed_through("writer-b", "db", "cpu"), 9);
        assert_eq!(state.log_of("writer-b"), "writer-b.2");
        assert_eq!(
            state.adopted_by("writer-a").collect::<Vec<_>>(),
            ["writer-b"]
        );
    }

    #[test]
    fn refuses_duplicates_and_stale_flushes_without_change() {
        let mut state = MetaState::default();
        state.apply(&add("a.parquet", 5)).unwrap();
        let before = state.clone();
        assert_eq!(
            state.apply(&add("a.parquet", 6)),
            Err(ApplyError::DuplicateFile("a.parquet".into()))
        );
        for stale in [4, 5] {
            assert!(matches!(
                state.apply(&add("c.parquet", stale)),
                Err(ApplyError::StaleFlush { .. })
            ));
        }
        assert_eq!(state, before);
    }

    #[test]
    fn a_command_is_reflected_once_applied_and_a_conflicting_one_is_not() {
        let mut state = MetaState::default();
        let first = add("a.parquet", 5);
        assert!(!state.reflects(&first));
        state.apply(&first).unwrap();
        assert!(state.reflects(&first), "the retry of an applied flush");
        let mut other = file("a.parquet", 5);
        other.sha256 = "ff".into();
        let conflicting = MetaCommand::AddFiles {
            database: "db".into(),
            measurement: "cpu".into(),
            files: vec![other],
            flushed_through_lsn: 5,
            log: String::new(),
            writer_epoch: None,
        };
        assert!(!state.reflects(&conflicting), "same path, other file");
        assert!(!state.reflects(&add("b.parquet", 9)));
        let compacted = replace(&["a.parquet"], vec![file("z.parquet", 5)], 50);
        let mut after_compaction = state.clone();
        after_compaction.apply(&compacted).unwrap();
        assert!(
            after_compaction.reflects(&first),
            "a registration whose files were compacted away since"
        );

        let swap = replace(&["a.parquet"], vec![file("c.parquet", 5)], 100);
        assert!(!state.reflects(&swap));
        state.apply(&swap).unwrap();
        assert!(state.reflects(&swap));
        let purge = MetaCommand::PurgeTombstones {
            paths: vec!["a.parquet".into()],
        };
        assert!(!state.reflects(&purge));
        state.apply(&purge).unwrap();
        assert!(state.reflects(&purge));
        let admin =
            MetaCommand::Admin(crate::meta::AdminCommand::DropDatabase { name: "x".into() });
        assert!(!state.reflects(&admin));
    }

    fn replace(removed: &[&str], added: Vec<FileEntry>, at_us: i64) -> MetaCommand {
        MetaCommand::ReplaceFiles {
            database: "db".into(),
            measurement: "cpu".into(),
            removed: removed.iter().map(|p| p.to_string()).collect(),
            added,
            at_us,
            compactor_epoch: None,
        }
    }

    #[test]
    fn replace_files_swaps_files_and_records_tombstones() {
        let mut state = MetaState::default();
        state.apply(&add("db/cpu/a.parquet", 5)).unwrap();
        state.apply(&add("db/cpu/b.parquet", 9)).unwrap();
        let mut merged = file("db/cpu/ab.parquet", 5);
        merged.max_lsn = 9;
        state
            .apply(&replace(
                &["db/cpu/a.parquet", "db/cpu/b.parquet"],
                vec![merged],
                1_000,
            ))
            .unwrap();
        let live: Vec<&str> = state
            .files_of("db", "cpu")
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        assert_eq!(live, ["db/cpu/ab.parquet"]);
        assert_eq!(
            state.tombstones().collect::<Vec<_>>(),
            [("db/cpu/a.parquet", 1_000), ("db/cpu/b.parquet", 1_000)]
        );
        assert_eq!(state.flushed_through("", "db", "cpu"), 9);

        // Removing without adding is how retention drops files.
        state
            .apply(&replace(&["db/cpu/ab.parquet"], vec![], 2_000))
            .unwrap();
        assert!(state.files_of("db", "cpu").is_empty());
        assert_eq!(state.tombstones().count(), 3);

        state
            .apply(&MetaCommand::PurgeTombstones {
                paths: vec!["db/cpu/a.parquet".into(), "never/existed".into()],
            })
            .unwrap();
        let left: Vec<&str> = state.tombstones().map(|(p, _)| p).collect();
        assert_eq!(left, ["db/cpu/ab.parquet", "db/cpu/b.parquet"]);
    }

    #[test]
    fn replace_files_refuses_dead_foreign_and_reused_paths_without_change() {
        let mut state = MetaState::default();
        state.apply(&add("db/cpu/a.parquet", 5)).unwrap();
        state.apply(&add("db/cpu/b.parquet", 6)).unwrap();
        state
            .apply(&replace(&["db/cpu/b.parquet"], vec![], 1))
            .unwrap();
        let mut other = file("db/mem/m.parquet", 7);
        other.measurement = "mem".into();
        state
            .apply(&MetaCommand::AddFiles {
                database: "db".into(),
                measurement: "mem".into(),
                files: vec![other],
                flushed_through_lsn: 7,
                log: String::new(),
                writer_epoch: None,
            })
            .unwrap();
        let before = state.clone();

        let not_live = |path: &str| ApplyError::FileNotLive {
            database: "db".into(),
            measurement: "cpu".into(),
            path: path.into(),
        };
        assert_eq!(
            state.apply(&replace(&["db/cpu/zzz.parquet"], vec![], 2)),
            Err(not_live("db/cpu/zzz.parquet"))
        );
        assert_eq!(
            state.apply(&replace(&["db/cpu/b.parquet"], vec![], 2)),
            Err(not_live("db/cpu/b.parquet"))
        );
        assert_eq!(
            state.apply(&replace(&["db/mem/m.parquet"], vec![], 2)),
            Err(not_live("db/mem/m.parquet"))
        );
        assert_eq!(
            state.apply(&replace(
                &["db/cpu/a.parquet", "db/cpu/a.parquet"],
                vec![],
                2
            )),
            Err(not_live("db/cpu/a.parquet"))
        );
        assert_eq!(
            state.apply(&replace(
                &["db/cpu/a.parquet"],
                vec![file("db/cpu/a.parquet", 5)],
                2
            )),
            Err(ApplyError::DuplicateFile("db/cpu/a.parquet".into()))
        );
        assert_eq!(
            state.apply(&replace(
                &["db/cpu/a.parquet"],
                vec![file("db/cpu/b.parquet", 6)],
                2
            )),
            Err(ApplyError::FileTombstoned("db/cpu/b.parquet".into()))
        );
        assert_eq!(
            state.apply(&add("db/cpu/b.parquet", 8)),
            Err(ApplyError::FileTombstoned("db/cpu/b.parquet".into()))
        );
        assert_eq!(state, before);
    }

    #[test]
    fn commands_keep_their_json_shape() {
        let command = replace(&["db/cpu/a.parquet"], vec![], 7);
        let json = serde_json::to_value(&command).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"ReplaceFiles": {
                "database": "db", "measurement": "cpu",
                "removed": ["db/cpu/a.parquet"], "added": [], "at_us": 7
            }})
        );
        let purge = MetaCommand::PurgeTombstones {
            paths: vec!["x".into()],
        };
        assert_eq!(
            serde_json::to_value(&purge).unwrap(),
            serde_json::json!({"PurgeTombstones": {"paths": ["x"]}})
        );
        // A snapshot written before tombstones existed still loads.
        let old: MetaState = serde_json::from_str(r#"{"files": {}, "measurements": {}}"#).unwrap();
        assert_eq!(old.tombstones().count(), 0);
    }

    fn node(role: crate::config::NodeRole) -> NodeRecord {
        NodeRecord {
            role,
            coordinator_addr: "node:9000".into(),
            api_addr: "node:8000".into(),
            shared_storage: false,
            storage: "local".into(),
            role_from_failover: false,
            follows_writer: true,
        }
    }

    fn change(to: &str) -> Failover {
        Failover {
            at_us: 1,
            from: None,
            to: to.into(),
            reason: "test".into(),
        }
    }

    #[test]
    fn a_replaced_writers_flush_and_a_replaced_compactors_swap_are_refused() {
        use crate::config::NodeRole;
        let mut state = MetaState::default();
        for (name, role) in [
            ("writer-01", NodeRole::Writer),
            ("reader-01", NodeRole::Reader),
            ("compactor-01", NodeRole::Compactor),
        ] {
            let register = MetaCommand::RegisterNode {
                name: name.into(),
                node: node(role),
            };
            state.apply(&register).unwrap();
        }
        assert_eq!(state.nodes().writer().epoch, 1);
        assert_eq!(state.nodes().compactor().epoch, 1);
        let flush = |path: &str, lsn, epoch| MetaCommand::AddFiles {
            database: "db".into(),
            measurement: "cpu".into(),
            files: vec![file(path, lsn)],
            flushed_through_lsn: lsn,
            log: String::new(),
            writer_epoch: Some(epoch),
        };
        state.apply(&flush("a.parquet", 1, 1)).unwrap();
        let promote = MetaCommand::PromoteWriter {
            epoch: 2,
            failover: change("reader-01"),
        };
        state.apply(&promote).unwrap();
        let before = state.clone();
        assert_eq!(
            state.apply(&flush("b.parquet", 2, 1)),
            Err(ApplyError::StaleWriterEpoch {
                epoch: 1,
                current: 2
            })
        );
        assert_eq!(state, before);
        state.apply(&flush("b.parquet", 2, 2)).unwrap();

        // The promoted reader is the writer now; the old writer is a reader.
        let assign = MetaCommand::AssignCompactor {
            epoch: 2,
            change: change("reader-01"),
        };
        // Only the next epoch, and only a compactor or the writer.
        for (epoch, to) in [(3, "reader-01"), (2, "nobody"), (2, "writer-01")] {
            let refused = MetaCommand::AssignCompactor {
                epoch,
                change: change(to),
            };
            assert!(state.check(&refused).is_err(), "{refused:?}");
        }
        state.apply(&assign).unwrap();
        assert!(state.reflects(&assign));
        let swap = |epoch| MetaCommand::ReplaceFiles {
            database: "db".into(),
            measurement: "cpu".into(),
            removed: vec!["a.parquet".into(), "b.parquet".into()],
            added: vec![file("c.parquet", 2)],
            at_us: 5,
            compactor_epoch: Some(epoch),
        };
        let before = state.clone();
        assert_eq!(
            state.apply(&swap(1)),
            Err(ApplyError::StaleCompactorEpoch {
                epoch: 1,
                current: 2
            })
        );
        assert_eq!(state, before);
        state.apply(&swap(2)).unwrap();
        assert!(state.file("c.parquet").is_some());
    }
}
