//! What a reader with its own storage may query: per measurement, the manifest's files and
//! flushed-through LSN as of the latest moment all of those files were on this node's disk.
//!
//! A manifest version is exact on its own: every row at or below its flushed-through LSN is in
//! exactly one of its files, and no file holds a later row. Rows above it are in the buffers
//! (they are released only at or below it). So a query that reads a version whose files are all
//! local, plus the buffered rows above its LSN, counts every row once, however far the puller
//! is behind the manifest. A version with a file still missing is not shown until it is complete.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use crate::buffer::MeasurementKey;
use crate::meta::{FileEntry, MetaState};
use crate::wal::Lsn;

/// One measurement's queryable version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeasurementView {
    pub files: Vec<FileEntry>,
    pub flushed_through: Lsn,
}

#[derive(Debug, Default)]
pub struct ReplicaView {
    measurements: RwLock<HashMap<MeasurementKey, MeasurementView>>,
}

impl ReplicaView {
    /// Moves every measurement whose current manifest files are all in `local` to its current
    /// version; the others keep the version they had. Measurements the manifest no longer has
    /// are dropped.
    pub fn refresh(&self, state: &MetaState, local: &HashSet<String>) {
        let mut views = self.measurements.write().unwrap();
        let mut current = HashSet::new();
        for (database, measurement, meta) in state.measurements() {
            let key = MeasurementKey {
                database: database.to_owned(),
                measurement: measurement.to_owned(),
            };
            let files = state.files_of(database, measurement);
            if files.iter().all(|f| local.contains(&f.path)) {
                views.insert(
                    key.clone(),
                    MeasurementView {
                        files: files.into_iter().cloned().collect(),
                        flushed_through: meta.flushed_through_lsn,
                    },
                );
            }
            current.insert(key);
        }
        views.retain(|key, _| current.contains(key));
    }

    /// The version of `key` a query reads: no files and LSN 0 before any is complete.
    pub fn measurement(&self, key: &MeasurementKey) -> MeasurementView {
        self.measurements
            .read()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    pub fn flushed_through(&self, key: &MeasurementKey) -> Lsn {
        self.measurements
            .read()
            .unwrap()
            .get(key)
            .map_or(0, |v| v.flushed_through)
    }

    /// Paths some version still shows: not to be deleted from disk.
    pub fn referenced(&self) -> HashSet<String> {
        self.measurements
            .read()
            .unwrap()
            .values()
            .flat_map(|v| v.files.iter().map(|f| f.path.clone()))
            .collect()
    }
}
