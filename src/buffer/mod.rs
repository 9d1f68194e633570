//! In-memory rows per (database, measurement), as Arrow batches, until a flush turns them into
//! Parquet files.
//!
//! One mutex guards LSN assignment and insertion together, so within a measurement rows are
//! buffered in LSN order. A flush takes a measurement's whole pending chunk, which makes
//! "every row of this measurement up to LSN x is in files" exact: replay relies on it.
//! A chunk being flushed stays readable (frozen) until its files are registered.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arrow::array::ArrayRef;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use tokio::sync::Notify;

use crate::ingest::MeasurementBatch;
use crate::meta::{ColumnType, MetaState};
use crate::wal::Lsn;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeasurementKey {
    pub database: String,
    pub measurement: String,
}

impl std::fmt::Display for MeasurementKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.database, self.measurement)
    }
}

/// A column whose type differs from what the measurement already has.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("measurement '{measurement}': column '{column}' is {existing}, this write has {incoming}")]
pub struct SchemaConflict {
    pub measurement: String,
    pub column: String,
    pub existing: &'static str,
    pub incoming: &'static str,
}

pub fn type_name(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Int64 => "int64",
        DataType::Float64 => "float64",
        DataType::Utf8 => "string",
        DataType::Boolean => "boolean",
        DataType::Timestamp(..) => "timestamp",
        _ => "unsupported",
    }
}

pub fn column_type(data_type: &DataType) -> Option<ColumnType> {
    match data_type {
        DataType::Int64 => Some(ColumnType::Int64),
        DataType::Float64 => Some(ColumnType::Float64),
        DataType::Utf8 => Some(ColumnType::Utf8),
        DataType::Boolean => Some(ColumnType::Boolean),
        _ => None,
    }
}

pub fn data_type(column_type: ColumnType) -> DataType {
    match column_type {
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Boolean => DataType::Boolean,
    }
}

/// Rows of one measurement covering a contiguous run of LSNs.
#[derive(Debug)]
pub struct Chunk {
    pub batches: Vec<RecordBatch>,
    pub tags: BTreeSet<String>,
    pub rows: usize,
    pub bytes: usize,
    pub min_lsn: Lsn,
    pub max_lsn: Lsn,
    created_at: Instant,
}

impl Chunk {
    fn new(lsn: Lsn) -> Chunk {
        Chunk {
            batches: Vec::new(),
            tags: BTreeSet::new(),
            rows: 0,
            bytes: 0,
            min_lsn: lsn,
            max_lsn: lsn,
            created_at: Instant::now(),
        }
    }
}

/// See [`BufferSet::occupancy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferOccupancy {
    pub rows: usize,
    pub chunks_flushing: usize,
}

/// Buffered rows as a query sees them.
#[derive(Debug, Clone)]
pub struct ChunkSnapshot {
    pub batches: Vec<RecordBatch>,
    pub min_lsn: Lsn,
    pub max_lsn: Lsn,
}

impl ChunkSnapshot {
    fn of(chunk: &Chunk) -> ChunkSnapshot {
        ChunkSnapshot {
            batches: chunk.batches.clone(),
            min_lsn: chunk.min_lsn,
            max_lsn: chunk.max_lsn,
        }
    }
}

#[derive(Debug, Default)]
struct TableBuffer {
    /// Every column type this measurement has had, flushed or not: later writes must agree.
    columns: HashMap<String, DataType>,
    active: Option<Chunk>,
    /// Chunks handed to a flush, oldest first; readable until their files are registered.
    frozen: VecDeque<Arc<Chunk>>,
    /// On a replica: rows received from the writer, one chunk per entry in LSN order. Never
    /// flushed here; readable until the writer's registered files hold them.
    replicated: VecDeque<Chunk>,
}

impl TableBuffer {
    fn has_rows(&self) -> bool {
        self.active.is_some() || !self.frozen.is_empty() || !self.replicated.is_empty()
    }
}

/// A decoded batch checked against its measurement's schema, ready to insert.
#[derive(Debug)]
pub struct PreparedBatch {
    key: MeasurementKey,
    batch: RecordBatch,
    tags: Vec<String>,
}

/// Why a measurement should be flushed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    pub max_rows: usize,
    pub max_age: Duration,
}

#[derive(Debug, Default)]
pub struct Buffers {
    inner: Mutex<BufferSet>,
}

#[derive(Debug, Default)]
pub struct BufferSet {
    next_lsn: Lsn,
    tables: HashMap<MeasurementKey, TableBuffer>,
    bytes: usize,
    /// Woken whenever buffered memory is released, for writes waiting on back-pressure.
    released: Arc<Notify>,
}

impl Buffers {
    /// Buffers whose column types start from the manifest's, and whose LSNs continue after
    /// `last_lsn`.
    pub fn new(meta: &MetaState, last_lsn: Lsn) -> Buffers {
        let mut set = BufferSet {
            next_lsn: last_lsn + 1,
            ..BufferSet::default()
        };
        for (database, measurement, facts) in meta.measurements() {
            let key = MeasurementKey {
                database: database.to_string(),
                measurement: measurement.to_string(),
            };
            let table = set.tables.entry(key).or_default();
            for (name, column_type) in &facts.columns {
                table.columns.insert(name.clone(), data_type(*column_type));
            }
        }
        Buffers {
            inner: Mutex::new(set),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, BufferSet> {
        self.inner.lock().unwrap()
    }
}

impl BufferSet {
    /// Checks decoded batches against the measurements' column types (and each other), widening
    /// integer columns where the measurement already stores floats. Nothing changes on error.
    pub fn prepare(
        &self,
        database: &str,
        batches: Vec<MeasurementBatch>,
    ) -> Result<Vec<PreparedBatch>, SchemaConflict> {
        // Types first seen in this request, per (measurement, column).
        let mut pending: HashMap<(String, String), DataType> = HashMap::new();
        let mut prepared = Vec::with_capacity(batches.len());
        for MeasurementBatch {
            measurement,
            batch,
            tags,
        } in batches
        {
            let key = MeasurementKey {
                database: database.to_string(),
                measurement,
            };
            let known = self.tables.get(&key).map(|t| &t.columns);
            let schema = batch.schema();
            let mut widened: Option<Vec<ArrayRef>> = None;
            for (index, field) in schema.fields().iter().enumerate().skip(1) {
                let name = field.name();
                let existing = known
                    .and_then(|c| c.get(name))
                    .or_else(|| pending.get(&(key.measurement.clone(), name.clone())));
                let Some(existing) = existing.cloned() else {
                    pending.insert(
                        (key.measurement.clone(), name.clone()),
                        field.data_type().clone(),
                    );
                    continue;
                };
                if &existing == field.data_type() {
                    continue;
                }
                if existing == DataType::Float64 && field.data_type() == &DataType::Int64 {
                    let columns = widened.get_or_insert_with(|| batch.columns().to_vec());
                    columns[index] =
                        cast(batch.column(index), &DataType::Float64).expect("int64 casts to f64");
                    continue;
                }
                return Err(SchemaConflict {
                    measurement: key.measurement.clone(),
                    column: name.clone(),
                    existing: type_name(&existing),
                    incoming: type_name(field.data_type()),
                });
            }
            let batch = match widened {
                None => batch,
                Some(columns) => {
                    let fields: Vec<Field> = schema
                        .fields()
                        .iter()
                        .zip(&columns)
                        .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
                        .collect();
                    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                        .expect("widened batch is consistent")
                }
            };
            prepared.push(PreparedBatch { key, batch, tags });
        }
        Ok(prepared)
    }

    /// The LSN the next entry gets. Call [`BufferSet::insert`] with it before releasing the lock.
    pub fn allocate_lsn(&mut self) -> Lsn {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        lsn
    }

    /// Moves LSN assignment past an entry found in the WAL at start-up.
    pub fn observe_lsn(&mut self, lsn: Lsn) {
        self.next_lsn = self.next_lsn.max(lsn + 1);
    }

    /// The highest LSN handed out so far.
    pub fn last_lsn(&self) -> Lsn {
        self.next_lsn - 1
    }

    /// Buffers prepared rows under `lsn`. Returns the measurements that reached `max_rows`.
    pub fn insert(
        &mut self,
        lsn: Lsn,
        batches: Vec<PreparedBatch>,
        max_rows: usize,
    ) -> Vec<MeasurementKey> {
        let mut full = Vec::new();
        for PreparedBatch { key, batch, tags } in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let table = self.tables.entry(key.clone()).or_default();
            let chunk = table.active.get_or_insert_with(|| Chunk::new(lsn));
            self.bytes += absorb(&mut table.columns, chunk, lsn, batch, tags);
            if chunk.rows >= max_rows && !full.contains(&key) {
                full.push(key);
            }
        }
        full
    }

    /// Buffers the rows of one entry a replica received from its writer, each measurement's
    /// rows as a chunk of their own. A replica never flushes: its chunks go once the writer's
    /// registered files hold their rows ([`BufferSet::release_flushed`]), and per-entry chunks
    /// make that exact.
    pub fn insert_replicated(&mut self, lsn: Lsn, batches: Vec<PreparedBatch>) {
        self.observe_lsn(lsn);
        for PreparedBatch { key, batch, tags } in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let table = self.tables.entry(key).or_default();
            let mut chunk = Chunk::new(lsn);
            self.bytes += absorb(&mut table.columns, &mut chunk, lsn, batch, tags);
            table.replicated.push_back(chunk);
        }
    }

    /// Drops the chunks whose rows are all in registered files: those at or below their
    /// measurement's flushed-through LSN in `flushed` (read from the manifest beforehand, so
    /// the manifest's lock is not taken under this one). Returns how many.
    pub fn release_flushed(&mut self, flushed: &HashMap<MeasurementKey, Lsn>) -> usize {
        let mut released = 0;
        for (key, table) in &mut self.tables {
            let Some(&flushed) = flushed.get(key) else {
                continue;
            };
            while let Some(chunk) = table.replicated.front()
                && chunk.max_lsn <= flushed
            {
                self.bytes -= chunk.bytes;
                table.replicated.pop_front();
                released += 1;
            }
        }
        if released > 0 {
            self.released.notify_waiters();
        }
        released
    }

    /// On a reader promoted to writer: the rows it received from the previous writer become
    /// its own, merged per measurement into the rows a flush writes next; those that files
    /// already hold by `flushed` (the manifest's positions) are dropped. Returns the rows kept.
    pub fn adopt_replicated(&mut self, flushed: &HashMap<MeasurementKey, Lsn>) -> usize {
        let mut adopted = 0;
        for (key, table) in &mut self.tables {
            let flushed = flushed.get(key).copied().unwrap_or(0);
            for chunk in std::mem::take(&mut table.replicated) {
                if chunk.max_lsn <= flushed {
                    self.bytes -= chunk.bytes;
                    continue;
                }
                adopted += chunk.rows;
                match &mut table.active {
                    None => table.active = Some(chunk),
                    Some(active) => {
                        active.batches.extend(chunk.batches);
                        active.tags.extend(chunk.tags);
                        active.rows += chunk.rows;
                        active.bytes += chunk.bytes;
                        active.min_lsn = active.min_lsn.min(chunk.min_lsn);
                        active.max_lsn = active.max_lsn.max(chunk.max_lsn);
                        active.created_at = active.created_at.min(chunk.created_at);
                    }
                }
            }
        }
        adopted
    }

    /// On a replica: every entry at or below this LSN that it applied has its rows in files
    /// it queries (none of them is buffered any more); `applied` when nothing is buffered.
    pub fn replicated_through(&self, applied: Lsn) -> Lsn {
        self.tables
            .values()
            .filter_map(|t| t.replicated.front().map(|c| c.min_lsn))
            .min()
            .map_or(applied, |oldest| applied.min(oldest - 1))
    }

    /// Memory held by buffered rows, flushed or not yet.
    pub fn buffered_bytes(&self) -> usize {
        self.bytes
    }

    /// What is buffered now, for the metrics endpoint: rows in memory (flushed or not yet,
    /// received from a writer included) and chunks handed to a flush that is not done.
    pub fn occupancy(&self) -> BufferOccupancy {
        let mut occupancy = BufferOccupancy::default();
        for table in self.tables.values() {
            occupancy.rows += table.active.as_ref().map_or(0, |c| c.rows);
            occupancy.rows += table.frozen.iter().map(|c| c.rows).sum::<usize>();
            occupancy.rows += table.replicated.iter().map(|c| c.rows).sum::<usize>();
            occupancy.chunks_flushing += table.frozen.len();
        }
        occupancy
    }

    /// Notified each time buffered memory is released (chunks flushed or found in files).
    pub fn released(&self) -> Arc<Notify> {
        Arc::clone(&self.released)
    }

    /// The chunk a flush of `key` should write next: the oldest frozen one (left by a failed
    /// flush; `false`), else the active rows, frozen now (`true`).
    pub fn next_flush_chunk(&mut self, key: &MeasurementKey) -> Option<(Arc<Chunk>, bool)> {
        let table = self.tables.get_mut(key)?;
        if let Some(oldest) = table.frozen.front() {
            return Some((Arc::clone(oldest), false));
        }
        let chunk = Arc::new(table.active.take()?);
        table.frozen.push_back(Arc::clone(&chunk));
        Some((chunk, true))
    }

    /// Drops a chunk whose files are registered.
    pub fn chunk_flushed(&mut self, key: &MeasurementKey, chunk: &Arc<Chunk>) {
        if let Some(table) = self.tables.get_mut(key)
            && table.frozen.front().is_some_and(|c| Arc::ptr_eq(c, chunk))
        {
            table.frozen.pop_front();
            self.bytes -= chunk.bytes;
            self.released.notify_waiters();
        }
    }

    /// Every entry at or below this LSN has all its rows in registered files.
    pub fn durable_through(&self) -> Lsn {
        self.tables
            .values()
            .flat_map(|t| {
                t.frozen
                    .iter()
                    .map(|c| c.min_lsn)
                    .chain(t.active.as_ref().map(|c| c.min_lsn))
            })
            .min()
            .map_or(self.last_lsn(), |oldest| oldest - 1)
    }

    /// Measurements that should be flushed now under `policy`: full, old, or with a frozen chunk
    /// left by a failed flush.
    pub fn due_for_flush(&self, policy: FlushPolicy, now: Instant) -> Vec<MeasurementKey> {
        self.tables
            .iter()
            .filter(|(_, t)| {
                !t.frozen.is_empty()
                    || t.active.as_ref().is_some_and(|c| {
                        c.rows >= policy.max_rows
                            || now.saturating_duration_since(c.created_at) >= policy.max_age
                    })
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Column types of a measurement (all it has ever had), `time` excluded.
    pub fn columns(&self, key: &MeasurementKey) -> Option<Vec<(String, DataType)>> {
        let table = self.tables.get(key)?;
        Some(
            table
                .columns
                .iter()
                .map(|(name, data_type)| (name.clone(), data_type.clone()))
                .collect(),
        )
    }

    /// The unflushed rows of a measurement, as chunks with their LSN ranges (cheap: batches are
    /// shared, not copied).
    pub fn snapshot(&self, key: &MeasurementKey) -> Vec<ChunkSnapshot> {
        let Some(table) = self.tables.get(key) else {
            return Vec::new();
        };
        table
            .replicated
            .iter()
            .chain(table.frozen.iter().map(|c| c.as_ref()))
            .chain(table.active.as_ref())
            .map(ChunkSnapshot::of)
            .collect()
    }

    /// Whether the measurement has unflushed rows.
    pub fn has_data(&self, key: &MeasurementKey) -> bool {
        self.tables.get(key).is_some_and(TableBuffer::has_rows)
    }

    pub fn with_data(&self) -> Vec<MeasurementKey> {
        self.tables
            .iter()
            .filter(|(_, t)| t.has_rows())
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Adds one batch of `lsn` to `chunk`, recording its column types; returns its memory size.
fn absorb(
    columns: &mut HashMap<String, DataType>,
    chunk: &mut Chunk,
    lsn: Lsn,
    batch: RecordBatch,
    tags: Vec<String>,
) -> usize {
    for field in batch.schema().fields().iter().skip(1) {
        columns
            .entry(field.name().clone())
            .or_insert_with(|| field.data_type().clone());
    }
    let bytes = batch.get_array_memory_size();
    chunk.rows += batch.num_rows();
    chunk.bytes += bytes;
    chunk.max_lsn = lsn;
    chunk.tags.extend(tags);
    chunk.batches.push(batch);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, TimestampMicrosecondArray};

    fn batch(measurement: &str, column: &str, values: ArrayRef) -> MeasurementBatch {
        let rows = values.len();
        let time = Arc::new(
            TimestampMicrosecondArray::from((0..rows as i64).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ) as ArrayRef;
        let schema = Schema::new(vec![
            Field::new("time", time.data_type().clone(), false),
            Field::new(column, values.data_type().clone(), true),
        ]);
        MeasurementBatch {
            measurement: measurement.into(),
            batch: RecordBatch::try_new(Arc::new(schema), vec![time, values]).unwrap(),
            tags: vec![],
        }
    }

    fn ints(v: &[i64]) -> ArrayRef {
        Arc::new(Int64Array::from(v.to_vec()))
    }

    fn floats(v: &[f64]) -> ArrayRef {
        Arc::new(Float64Array::from(v.to_vec()))
    }

    const POLICY: FlushPolicy = FlushPolicy {
        max_rows: 3,
        max_age: Duration::from_secs(3600),
    };

    #[test]
    fn conflicting_types_are_refused_and_ints_widen_into_floats() {
        let buffers = Buffers::new(&MetaState::default(), 0);
        let mut set = buffers.lock();
        let prepared = set
            .prepare("db", vec![batch("cpu", "v", floats(&[1.0]))])
            .unwrap();
        let lsn = set.allocate_lsn();
        set.insert(lsn, prepared, 10);

        let widened = set
            .prepare("db", vec![batch("cpu", "v", ints(&[2]))])
            .unwrap();
        assert_eq!(widened[0].batch.column(1).data_type(), &DataType::Float64);

        let err = set
            .prepare(
                "db",
                vec![batch(
                    "cpu",
                    "v",
                    Arc::new(arrow::array::StringArray::from(vec!["x"])),
                )],
            )
            .unwrap_err();
        assert_eq!(err.existing, "float64");
        assert_eq!(err.incoming, "string");

        // Two batches in one request must agree with each other too.
        let err = set
            .prepare(
                "db",
                vec![
                    batch("mem", "v", ints(&[1])),
                    batch(
                        "mem",
                        "v",
                        Arc::new(arrow::array::BooleanArray::from(vec![true])),
                    ),
                ],
            )
            .unwrap_err();
        assert_eq!((err.existing, err.incoming), ("int64", "boolean"));
    }

    #[test]
    fn flush_bookkeeping_tracks_lsns_and_retries() {
        let buffers = Buffers::new(&MetaState::default(), 10);
        let mut set = buffers.lock();
        let key = MeasurementKey {
            database: "db".into(),
            measurement: "cpu".into(),
        };
        for _ in 0..2 {
            let prepared = set
                .prepare("db", vec![batch("cpu", "v", floats(&[1.0, 2.0]))])
                .unwrap();
            let lsn = set.allocate_lsn();
            let full = set.insert(lsn, prepared, POLICY.max_rows);
            assert_eq!(full.is_empty(), lsn == 11);
        }
        assert_eq!(set.durable_through(), 10);
        assert_eq!(set.due_for_flush(POLICY, Instant::now()), vec![key.clone()]);

        let (chunk, was_active) = set.next_flush_chunk(&key).unwrap();
        assert!(was_active);
        assert_eq!((chunk.min_lsn, chunk.max_lsn, chunk.rows), (11, 12, 4));
        // A failed flush leaves the chunk frozen: the retry gets the same one.
        let (retry, was_active) = set.next_flush_chunk(&key).unwrap();
        assert!(Arc::ptr_eq(&retry, &chunk) && !was_active);
        assert_eq!(set.durable_through(), 10);
        set.chunk_flushed(&key, &chunk);
        assert_eq!(set.durable_through(), 12);
        assert_eq!(set.buffered_bytes(), 0);
        assert!(set.with_data().is_empty());
    }

    #[test]
    fn a_promoted_reader_flushes_the_replicated_rows_files_do_not_hold_yet() {
        let buffers = Buffers::new(&MetaState::default(), 0);
        let mut set = buffers.lock();
        let key = MeasurementKey {
            database: "db".into(),
            measurement: "cpu".into(),
        };
        for lsn in 1..=4 {
            let prepared = set
                .prepare("db", vec![batch("cpu", "v", floats(&[lsn as f64]))])
                .unwrap();
            set.insert_replicated(lsn, prepared);
        }
        assert!(set.due_for_flush(POLICY, Instant::now()).is_empty());
        let bytes = set.buffered_bytes();
        // The previous writer's files hold entries 1 and 2 already.
        let adopted = set.adopt_replicated(&HashMap::from([(key.clone(), 2)]));
        assert_eq!(adopted, 2);
        assert!(set.buffered_bytes() < bytes);
        assert_eq!(set.replicated_through(4), 4);
        let (chunk, was_active) = set.next_flush_chunk(&key).unwrap();
        assert!(was_active);
        assert_eq!((chunk.min_lsn, chunk.max_lsn, chunk.rows), (3, 4, 2));
        set.chunk_flushed(&key, &chunk);
        assert_eq!(set.buffered_bytes(), 0);
        assert_eq!(set.allocate_lsn(), 5);
    }
}
