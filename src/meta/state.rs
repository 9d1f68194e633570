//! The deterministic metadata state machine. Standalone nodes feed it from a local durable log;
//! a cluster will feed it the same commands through Raft. There is exactly one `apply`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::admin::{AdminCommand, AdminError, AdminState};
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
    /// LSN ≤ `flushed_through_lsn` is now in registered files.
    AddFiles {
        database: String,
        measurement: String,
        files: Vec<FileEntry>,
        flushed_through_lsn: Lsn,
    },
    /// Tokens, databases, retention policies, continuous queries.
    Admin(AdminCommand),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
}

/// Per-measurement facts derived from its files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasurementMeta {
    pub flushed_through_lsn: Lsn,
    pub columns: BTreeMap<String, ColumnType>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaState {
    files: BTreeMap<String, FileEntry>,
    measurements: BTreeMap<String, BTreeMap<String, MeasurementMeta>>,
    #[serde(default)]
    admin: AdminState,
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
            } => {
                if let Some(file) = files.iter().find(|f| self.files.contains_key(&f.path)) {
                    return Err(ApplyError::DuplicateFile(file.path.clone()));
                }
                // Every flush covers LSNs above the previous one: an equal or lower watermark
                // is the same rows a second time.
                let flushed = self.flushed_through(database, measurement);
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
        }
    }

    pub fn apply(&mut self, command: &MetaCommand) -> Result<(), ApplyError> {
        self.check(command)?;
        match command {
            MetaCommand::AddFiles {
                database,
                measurement,
                files,
                flushed_through_lsn,
            } => {
                let meta = self
                    .measurements
                    .entry(database.clone())
                    .or_default()
                    .entry(measurement.clone())
                    .or_default();
                meta.flushed_through_lsn = *flushed_through_lsn;
                for file in files {
                    for (name, column_type) in &file.columns {
                        meta.columns.insert(name.clone(), *column_type);
                    }
                    self.files.insert(file.path.clone(), file.clone());
                }
                Ok(())
            }
            MetaCommand::Admin(command) => {
                self.admin.apply(command);
                Ok(())
            }
        }
    }

    pub fn admin(&self) -> &AdminState {
        &self.admin
    }

    /// Every row of the measurement with LSN at or below this is in registered files.
    pub fn flushed_through(&self, database: &str, measurement: &str) -> Lsn {
        self.measurement(database, measurement)
            .map_or(0, |m| m.flushed_through_lsn)
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

    /// The highest LSN any registered file covers; a restarted writer continues above it.
    pub fn max_flushed_lsn(&self) -> Lsn {
        self.measurements()
            .map(|(_, _, m)| m.flushed_through_lsn)
            .max()
            .unwrap_or(0)
    }

    pub fn files(&self) -> impl Iterator<Item = &FileEntry> {
        self.files.values()
    }

    /// Files of one measurement (keys start with `{database}/{measurement}/`).
    pub fn files_of(&self, database: &str, measurement: &str) -> Vec<&FileEntry> {
        let prefix = format!("{database}/{measurement}/");
        self.files
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .map(|(_, file)| file)
            .filter(|file| file.database == database && file.measurement == measurement)
            .collect()
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.get(path)
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
        }
    }

    #[test]
    fn add_files_records_files_columns_and_watermark() {
        let mut state = MetaState::default();
        state.apply(&add("a.parquet", 5)).unwrap();
        state.apply(&add("b.parquet", 9)).unwrap();
        assert_eq!(state.flushed_through("db", "cpu"), 9);
        assert_eq!(state.flushed_through("db", "mem"), 0);
        assert_eq!(state.max_flushed_lsn(), 9);
        assert_eq!(state.files().count(), 2);
        let meta = state.measurement("db", "cpu").unwrap();
        assert_eq!(meta.columns["usage"], ColumnType::Float64);
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
}
