//! Merging local Parquet files into one, streaming: every input is already sorted by the
//! measurement's sort keys (a flush sorts its rows, and so does every merge), so a k-way merge
//! reading one batch per input at a time produces the sorted output. Memory is a batch per input
//! plus the rows waiting to be written, whatever the size of the partition.
//!
//! Rows with equal sort keys come out in write order: inputs are given in write order and ties
//! go to the earlier input. That is what deduplication needs: among rows with the same tags and
//! time (which have equal sort keys, since the keys end with `time`), the last one is the latest
//! written and is the one kept.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, TimestampMicrosecondArray, new_null_array};
use arrow::compute::{cast, concat_batches, interleave_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, Rows, SortField};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use sha2::{Digest, Sha256};

use crate::buffer::data_type;
use crate::flush::parquet::{TAGS_METADATA_KEY, file_columns, hex, sort_rows, sorting_columns};
use crate::meta::ColumnType;

/// Arc's marker on continuous-query outputs: deduplicate on time (and tags) when compacting.
pub const DEDUP_TIME_METADATA_KEY: &str = "arc:dedup_time";
/// Arc's row group size for compacted files.
pub const ROW_GROUP_ROWS: usize = 122_880;
const ZSTD_LEVEL: i32 = 3;
/// Bounds on rows decoded per input at a time.
const MIN_BATCH_ROWS: usize = 256;
const MAX_BATCH_ROWS: usize = 8_192;
/// Parquet writers' page limits (rows and bytes), which bound what a reader holds per column.
const PAGE_ROWS: u64 = 20_000;
const MAX_PAGE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("reading or writing Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("sorting: {0}")]
    Sort(#[from] crate::flush::parquet::EncodeError),
    #[error("{path} has no time column")]
    NoTime { path: PathBuf },
}

/// What to merge and how.
#[derive(Debug)]
pub struct MergeSpec<'a> {
    /// Local input files, in write order.
    pub inputs: &'a [PathBuf],
    pub output: &'a Path,
    /// The measurement's sort keys, ending with `time`.
    pub sort_keys: &'a [String],
    /// The measurement's column types, which settle a column typed differently across files.
    pub column_types: &'a BTreeMap<String, ColumnType>,
    /// Memory budget for decoded rows.
    pub memory_limit: u64,
}

/// The merged file, described.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeOutcome {
    pub rows_in: u64,
    pub rows_out: u64,
    pub size_bytes: u64,
    pub sha256: String,
    pub min_time_us: i64,
    pub max_time_us: i64,
    pub columns: BTreeMap<String, ColumnType>,
    pub tags: Vec<String>,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> MergeError + '_ {
    move |source| MergeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// An input as opened: its reader and what its footer says.
struct OpenedInput {
    reader: ParquetRecordBatchReaderBuilder<File>,
    schema: SchemaRef,
    tags: Vec<String>,
    dedup_time: bool,
    /// Whether its rows are in sort-key order (as a flush or a merge writes them).
    sorted: bool,
    rows: u64,
    /// Uncompressed bytes per row, for sizing batches.
    row_bytes: u64,
    /// What the reader holds besides the decoded batch: about one page per column, compressed
    /// and decompressed.
    page_bytes: u64,
}

fn open_input(path: &Path, sort_keys: &[String]) -> Result<OpenedInput, MergeError> {
    let file = File::open(path).map_err(io_error(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let schema = Arc::clone(builder.schema());
    if schema.index_of("time").is_err() {
        return Err(MergeError::NoTime {
            path: path.to_path_buf(),
        });
    }
    let metadata = builder.metadata();
    let key_values: BTreeMap<&str, &str> = metadata
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
        .filter_map(|kv| Some((kv.key.as_str(), kv.value.as_deref()?)))
        .collect();
    let tags = key_values
        .get(TAGS_METADATA_KEY)
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let dedup_time = key_values
        .get(DEDUP_TIME_METADATA_KEY)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let rows = metadata.file_metadata().num_rows().max(0) as u64;
    let uncompressed: i64 = metadata
        .row_groups()
        .iter()
        .map(|rg| rg.total_byte_size())
        .sum();
    let expected: Vec<&str> = sort_keys
        .iter()
        .map(String::as_str)
        .filter(|k| schema.index_of(k).is_ok())
        .collect();
    let sorted = metadata.row_groups().iter().all(|rg| {
        let declared: Vec<&str> = rg
            .sorting_columns()
            .into_iter()
            .flatten()
            .take_while(|c| !c.descending && c.nulls_first)
            .filter_map(|c| Some(schema.fields().get(c.column_idx as usize)?.name().as_str()))
            .collect();
        declared.starts_with(&expected)
    });
    let page_bytes = metadata
        .row_groups()
        .iter()
        .map(|rg| {
            let pages = (rg.num_rows().max(1) as u64).div_ceil(PAGE_ROWS);
            rg.columns()
                .iter()
                .map(|c| 2 * (c.uncompressed_size().max(0) as u64 / pages).min(MAX_PAGE_BYTES))
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0);
    Ok(OpenedInput {
        page_bytes,
        reader: builder,
        schema,
        tags,
        dedup_time,
        sorted,
        rows,
        row_bytes: (uncompressed.max(0) as u64 / rows.max(1)).max(8),
    })
}

/// The union of the inputs' columns: `time` first, then by name, each with the measurement's
/// type where the manifest knows it.
fn unified_schema(
    inputs: &[OpenedInput],
    column_types: &BTreeMap<String, ColumnType>,
) -> SchemaRef {
    let mut columns: BTreeMap<&str, DataType> = BTreeMap::new();
    for input in inputs {
        for field in input.schema.fields() {
            if field.name() != "time" {
                columns
                    .entry(field.name())
                    .or_insert_with(|| field.data_type().clone());
            }
        }
    }
    let fields: Vec<Field> = std::iter::once(Field::new("time", time_type(), false))
        .chain(columns.into_iter().map(|(name, found)| {
            let data_type = column_types.get(name).map_or(found, |t| data_type(*t));
            Field::new(name, data_type, true)
        }))
        .collect();
    Arc::new(Schema::new(fields))
}

/// Reshapes a batch to the unified schema: missing columns become nulls, others are cast.
fn align(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, MergeError> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(Arc::clone(column)),
            Some(column) => Ok(cast(column, field.data_type())?),
            None => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<ArrayRef>, MergeError>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

enum Source {
    File(ParquetRecordBatchReader),
    /// An input that was not in sort order, sorted in memory, in slices.
    Sorted {
        batch: RecordBatch,
        offset: usize,
    },
}

impl Source {
    fn next_batch(&mut self, rows: usize) -> Result<Option<RecordBatch>, MergeError> {
        match self {
            Source::File(reader) => Ok(reader.next().transpose()?),
            Source::Sorted { batch, offset } => {
                if *offset >= batch.num_rows() {
                    return Ok(None);
                }
                let len = rows.min(batch.num_rows() - *offset);
                let slice = batch.slice(*offset, len);
                *offset += len;
                Ok(Some(slice))
            }
        }
    }
}

/// One input's position in the merge.
struct Cursor {
    source: Source,
    batch_rows: usize,
    /// Index of the current batch in the merge's batch store.
    batch_id: usize,
    len: usize,
    row: usize,
    keys: Rows,
    dedup_keys: Option<Rows>,
}

/// Key columns turned into comparable bytes.
struct KeyEncoders {
    sort: (RowConverter, Vec<usize>),
    dedup: Option<(RowConverter, Vec<usize>)>,
}

impl KeyEncoders {
    fn new(
        schema: &SchemaRef,
        sort_keys: &[String],
        dedup_columns: Option<&[String]>,
    ) -> Result<KeyEncoders, MergeError> {
        let encoder = |names: &[String]| -> Result<(RowConverter, Vec<usize>), MergeError> {
            let indices: Vec<usize> = names
                .iter()
                .filter_map(|n| schema.index_of(n).ok())
                .collect();
            let fields = indices
                .iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect();
            Ok((RowConverter::new(fields)?, indices))
        };
        Ok(KeyEncoders {
            sort: encoder(sort_keys)?,
            dedup: dedup_columns.map(encoder).transpose()?,
        })
    }

    fn encode(
        (converter, indices): &(RowConverter, Vec<usize>),
        batch: &RecordBatch,
    ) -> Result<Rows, MergeError> {
        let columns: Vec<ArrayRef> = indices
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        Ok(converter.convert_columns(&columns)?)
    }
}

/// The k-way merge's state.
struct Merger {
    schema: SchemaRef,
    /// Batches referenced by rows not yet written, and the cursors' current batches.
    store: Vec<RecordBatch>,
    cursors: Vec<Cursor>,
    encoders: KeyEncoders,
    /// Min-heap of live cursors, ordered by (current key, input position).
    heap: Vec<usize>,
}

impl Merger {
    /// Loads the cursor's next non-empty batch; false when the input is exhausted.
    fn load(&mut self, c: usize) -> Result<bool, MergeError> {
        loop {
            let rows = self.cursors[c].batch_rows;
            let Some(batch) = self.cursors[c].source.next_batch(rows)? else {
                return Ok(false);
            };
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = align(&batch, &self.schema)?;
            let keys = KeyEncoders::encode(&self.encoders.sort, &batch)?;
            let dedup_keys = match &self.encoders.dedup {
                Some(encoder) => Some(KeyEncoders::encode(encoder, &batch)?),
                None => None,
            };
            let cursor = &mut self.cursors[c];
            cursor.batch_id = self.store.len();
            cursor.len = batch.num_rows();
            cursor.row = 0;
            cursor.keys = keys;
            cursor.dedup_keys = dedup_keys;
            self.store.push(batch);
            return Ok(true);
        }
    }

    fn less(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.cursors[a], &self.cursors[b]);
        match x.keys.row(x.row).cmp(&y.keys.row(y.row)) {
            std::cmp::Ordering::Equal => a < b,
            order => order.is_lt(),
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        loop {
            let (left, right) = (2 * at + 1, 2 * at + 2);
            let mut smallest = at;
            if left < self.heap.len() && self.less(self.heap[left], self.heap[smallest]) {
                smallest = left;
            }
            if right < self.heap.len() && self.less(self.heap[right], self.heap[smallest]) {
                smallest = right;
            }
            if smallest == at {
                return;
            }
            self.heap.swap(at, smallest);
            at = smallest;
        }
    }

    /// Moves the smallest cursor past its row.
    fn advance_top(&mut self) -> Result<(), MergeError> {
        let c = self.heap[0];
        self.cursors[c].row += 1;
        if self.cursors[c].row == self.cursors[c].len && !self.load(c)? {
            let last = self.heap.pop().expect("heap is not empty");
            if self.heap.is_empty() {
                return Ok(());
            }
            self.heap[0] = last;
        }
        self.sift_down(0);
        Ok(())
    }

    /// Builds the output batch of `rows` and drops batches no cursor needs any more.
    fn take(&mut self, rows: &mut Vec<(usize, usize)>) -> Result<RecordBatch, MergeError> {
        let batches: Vec<&RecordBatch> = self.store.iter().collect();
        let out = interleave_record_batch(&batches, rows)?;
        rows.clear();
        let mut kept = Vec::with_capacity(self.cursors.len());
        for &c in &self.heap {
            let cursor = &mut self.cursors[c];
            kept.push(self.store[cursor.batch_id].clone());
            cursor.batch_id = kept.len() - 1;
        }
        self.store = kept;
        Ok(out)
    }
}

/// A Parquet file being written to local disk, hashed and described as it goes.
pub(crate) struct OutputFile {
    path: PathBuf,
    writer: ArrowWriter<HashingFile>,
    rows: u64,
    time_range: (i64, i64),
}

/// What an [`OutputFile`] holds once finished.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WrittenFile {
    pub rows: u64,
    pub size_bytes: u64,
    pub sha256: String,
    pub min_time_us: i64,
    pub max_time_us: i64,
}

impl OutputFile {
    pub(crate) fn create(
        path: &Path,
        schema: &SchemaRef,
        properties: WriterProperties,
    ) -> Result<OutputFile, MergeError> {
        let file = File::create(path).map_err(io_error(path))?;
        let sink = HashingFile {
            file: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        Ok(OutputFile {
            path: path.to_path_buf(),
            writer: ArrowWriter::try_new(sink, Arc::clone(schema), Some(properties))?,
            rows: 0,
            time_range: (i64::MAX, i64::MIN),
        })
    }

    /// Appends rows; column 0 must be the µs time column.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), MergeError> {
        let times = batch
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| MergeError::NoTime {
                path: self.path.clone(),
            })?;
        if let (Some(lo), Some(hi)) = (arrow::compute::min(times), arrow::compute::max(times)) {
            self.time_range = (self.time_range.0.min(lo), self.time_range.1.max(hi));
        }
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch)?;
        Ok(())
    }

    /// Writes the footer and syncs the file to disk.
    pub(crate) fn finish(self) -> Result<WrittenFile, MergeError> {
        let mut sink = self.writer.into_inner()?;
        sink.flush().map_err(io_error(&self.path))?;
        let HashingFile {
            file,
            hasher,
            bytes,
        } = sink;
        let file = file
            .into_inner()
            .map_err(|e| io_error(&self.path)(e.into_error()))?;
        file.sync_all().map_err(io_error(&self.path))?;
        Ok(WrittenFile {
            rows: self.rows,
            size_bytes: bytes,
            sha256: hex(&hasher.finalize()),
            min_time_us: self.time_range.0,
            max_time_us: self.time_range.1,
        })
    }
}

/// The file under an [`OutputFile`], hashing what it writes.
struct HashingFile {
    file: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Rows with equal sort keys, in write order, with their dedup keys.
#[derive(Default)]
struct Run {
    rows: Vec<(usize, usize)>,
    sort_key: Vec<u8>,
    /// Dedup keys back to back; `key_ends[i]` is where row i's ends.
    key_bytes: Vec<u8>,
    key_ends: Vec<usize>,
}

impl Run {
    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn push(&mut self, row: (usize, usize), sort_key: &[u8], dedup_key: &[u8]) {
        if self.rows.is_empty() {
            self.sort_key.clear();
            self.sort_key.extend_from_slice(sort_key);
        }
        self.rows.push(row);
        self.key_bytes.extend_from_slice(dedup_key);
        self.key_ends.push(self.key_bytes.len());
    }

    fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.key_ends[i - 1] };
        &self.key_bytes[start..self.key_ends[i]]
    }

    /// Appends the last row of each dedup key to `out` (in run order) and empties the run.
    fn resolve_into(&mut self, out: &mut Vec<(usize, usize)>) {
        match self.rows.len() {
            0 => {}
            1 => out.push(self.rows[0]),
            n => {
                let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(n);
                for i in 0..n {
                    last.insert(self.key(i), i);
                }
                out.extend(
                    (0..n)
                        .filter(|&i| last[self.key(i)] == i)
                        .map(|i| self.rows[i]),
                );
            }
        }
        self.rows.clear();
        self.key_bytes.clear();
        self.key_ends.clear();
    }
}

/// Merges the inputs into `spec.output`. Blocking.
///
/// When reading every input at once would not fit in `memory_limit`, consecutive groups are
/// merged into intermediate files first (next to the output), as an external sort does. Groups
/// are consecutive in write order, so "latest written wins" holds across passes.
pub fn merge(spec: &MergeSpec<'_>) -> Result<MergeOutcome, MergeError> {
    let (fan_in, rows_in) = {
        let opened = spec
            .inputs
            .iter()
            .map(|path| open_input(path, spec.sort_keys))
            .collect::<Result<Vec<_>, _>>()?;
        let per_input = opened
            .iter()
            .map(|i| i.page_bytes + MIN_BATCH_ROWS as u64 * i.row_bytes)
            .max()
            .unwrap_or(1)
            .max(1);
        let fan_in = ((spec.memory_limit / 2 / per_input) as usize).max(2);
        (fan_in, opened.iter().map(|i| i.rows).sum::<u64>())
    };
    let mut level: Vec<PathBuf> = spec.inputs.to_vec();
    let mut intermediates: Vec<PathBuf> = Vec::new();
    let mut pass = 0;
    while level.len() > fan_in {
        let mut next = Vec::new();
        for (group, paths) in level.chunks(fan_in).enumerate() {
            if let [single] = paths {
                next.push(single.clone());
                continue;
            }
            let output = spec
                .output
                .with_file_name(format!("merge-pass{pass}-{group}.parquet"));
            merge_once(&MergeSpec {
                inputs: paths,
                output: &output,
                ..*spec
            })?;
            next.push(output);
        }
        // A lone file of the last group passes through to the next level untouched.
        for done in intermediates.drain(..).filter(|p| !next.contains(p)) {
            std::fs::remove_file(&done).map_err(io_error(&done))?;
        }
        intermediates = next
            .iter()
            .filter(|p| !spec.inputs.contains(p))
            .cloned()
            .collect();
        level = next;
        pass += 1;
    }
    let mut outcome = merge_once(&MergeSpec {
        inputs: &level,
        ..*spec
    })?;
    for done in &intermediates {
        std::fs::remove_file(done).map_err(io_error(done))?;
    }
    outcome.rows_in = rows_in;
    Ok(outcome)
}

/// Merges the inputs in one pass.
fn merge_once(spec: &MergeSpec<'_>) -> Result<MergeOutcome, MergeError> {
    let opened = spec
        .inputs
        .iter()
        .map(|path| open_input(path, spec.sort_keys))
        .collect::<Result<Vec<_>, _>>()?;
    let schema = unified_schema(&opened, spec.column_types);
    let tags: Vec<String> = opened
        .iter()
        .flat_map(|i| i.tags.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let dedup_time = opened.iter().any(|i| i.dedup_time);
    let sort_keys: Vec<String> = spec
        .sort_keys
        .iter()
        .filter(|k| schema.index_of(k).is_ok())
        .cloned()
        .collect();
    let dedup_columns: Option<Vec<String>> = (dedup_time || !tags.is_empty()).then(|| {
        tags.iter()
            .filter(|t| schema.index_of(t).is_ok())
            .cloned()
            .chain(std::iter::once("time".to_string()))
            .collect()
    });

    // A batch per input and a batch of output rows share a quarter of the budget; the rest is
    // for the Parquet reader's pages (bounded by the fan-in), the writer's row group and slack.
    let row_bytes = opened.iter().map(|i| i.row_bytes).max().unwrap_or(8);
    let budget_rows = (spec.memory_limit / 4 / row_bytes.max(1)) as usize;
    let batch_rows = (budget_rows / (opened.len() + 1)).clamp(MIN_BATCH_ROWS, MAX_BATCH_ROWS);
    let rows_in = opened.iter().map(|i| i.rows).sum();

    let encoders = KeyEncoders::new(&schema, &sort_keys, dedup_columns.as_deref())?;
    let mut cursors = Vec::with_capacity(opened.len());
    for input in opened {
        let reader = input.reader.with_batch_size(batch_rows).build()?;
        let source = if input.sorted {
            Source::File(reader)
        } else {
            // Written under other sort keys: sorted whole, which needs that one file in memory.
            let batches = reader
                .map(|b| b.map_err(MergeError::from).and_then(|b| align(&b, &schema)))
                .collect::<Result<Vec<_>, _>>()?;
            let all = concat_batches(&schema, &batches)?;
            Source::Sorted {
                batch: sort_rows(&all, &sort_keys)?,
                offset: 0,
            }
        };
        cursors.push(Cursor {
            source,
            batch_rows,
            batch_id: 0,
            len: 0,
            row: 0,
            keys: encoders.sort.0.empty_rows(0, 0),
            dedup_keys: None,
        });
    }
    let mut merger = Merger {
        encoders,
        schema: Arc::clone(&schema),
        store: Vec::new(),
        cursors,
        heap: Vec::new(),
    };
    for c in 0..merger.cursors.len() {
        if merger.load(c)? {
            merger.heap.push(c);
        }
    }
    for at in (0..merger.heap.len() / 2).rev() {
        merger.sift_down(at);
    }

    let mut output = OutputFile::create(
        spec.output,
        &schema,
        writer_properties(&schema, &sort_keys, &tags, dedup_time),
    )?;
    let mut pending: Vec<(usize, usize)> = Vec::with_capacity(batch_rows);
    let mut run = Run::default();
    let mut write = |merger: &mut Merger,
                     pending: &mut Vec<(usize, usize)>|
     -> Result<(), MergeError> { output.write(&merger.take(pending)?) };
    let dedup = dedup_columns.is_some();
    while let Some(&c) = merger.heap.first() {
        let cursor = &merger.cursors[c];
        if !dedup {
            pending.push((cursor.batch_id, cursor.row));
            if pending.len() >= batch_rows {
                write(&mut merger, &mut pending)?;
            }
            merger.advance_top()?;
            continue;
        }
        // Rows with equal sort keys form a run; duplicates can only be within one.
        if !run.is_empty() && cursor.keys.row(cursor.row).as_ref() != run.sort_key.as_slice() {
            run.resolve_into(&mut pending);
            if pending.len() >= batch_rows {
                write(&mut merger, &mut pending)?;
            }
        }
        let cursor = &merger.cursors[c];
        let dedup_keys = cursor
            .dedup_keys
            .as_ref()
            .expect("dedup keys when deduplicating");
        run.push(
            (cursor.batch_id, cursor.row),
            cursor.keys.row(cursor.row).as_ref(),
            dedup_keys.row(cursor.row).as_ref(),
        );
        merger.advance_top()?;
    }
    run.resolve_into(&mut pending);
    if !pending.is_empty() {
        write(&mut merger, &mut pending)?;
    }
    let written = output.finish()?;
    let columns = file_columns(&schema);
    Ok(MergeOutcome {
        rows_in,
        rows_out: written.rows,
        size_bytes: written.size_bytes,
        sha256: written.sha256,
        min_time_us: written.min_time_us,
        max_time_us: written.max_time_us,
        columns,
        tags,
    })
}

fn writer_properties(
    schema: &SchemaRef,
    sort_keys: &[String],
    tags: &[String],
    dedup_time: bool,
) -> WriterProperties {
    let mut metadata = Vec::new();
    if !tags.is_empty() {
        metadata.push(KeyValue::new(TAGS_METADATA_KEY.to_string(), tags.join(",")));
    }
    if dedup_time {
        metadata.push(KeyValue::new(
            DEDUP_TIME_METADATA_KEY.to_string(),
            "true".to_string(),
        ));
    }
    file_properties(schema, sorting_columns(schema, sort_keys), metadata)
}

/// Properties of every file compaction or a row delete writes: zstd, Arc's row group size, page
/// statistics, and the given sort order and footer metadata.
pub(crate) fn file_properties(
    schema: &SchemaRef,
    sorting: Vec<SortingColumn>,
    metadata: Vec<KeyValue>,
) -> WriterProperties {
    let mut properties = WriterProperties::builder();
    // Random numbers fill a dictionary's hash table before the writer gives up on it; tags and
    // other strings are what dictionaries shrink.
    for field in schema.fields() {
        if field.data_type().is_numeric() || field.data_type().is_temporal() {
            properties =
                properties.set_column_dictionary_enabled(field.name().as_str().into(), false);
        }
    }
    properties
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level"),
        ))
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_sorting_columns(Some(sorting))
        .set_key_value_metadata((!metadata.is_empty()).then_some(metadata))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IngestConfig;
    use crate::flush::parquet::{FlushTarget, ParquetOptions, encode_hour};
    use arrow::array::{Array, AsArray, Float64Array, StringArray};
    use arrow::datatypes::{Float64Type, TimestampMicrosecondType};

    /// One row as (time, host or None, value).
    type Row = (i64, Option<&'static str>, f64);

    /// Writes `rows` as a flush would (sorted by `sort_keys`, tags recorded when `tagged`).
    fn flushed_file(
        dir: &Path,
        name: &str,
        rows: &[Row],
        tagged: bool,
        sort_keys: &[&str],
    ) -> PathBuf {
        let mut fields = vec![Field::new("time", time_type(), false)];
        let mut columns: Vec<ArrayRef> = vec![Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.0))
                .with_timezone("UTC"),
        )];
        if rows.iter().any(|r| r.1.is_some()) {
            fields.push(Field::new("host", DataType::Utf8, true));
            columns.push(Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))));
        }
        fields.push(Field::new("v", DataType::Float64, true));
        columns.push(Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.2),
        )));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let target = FlushTarget {
            database: "db".into(),
            measurement: "cpu".into(),
            sort_keys: sort_keys.iter().map(|k| k.to_string()).collect(),
            flushed_at: chrono::Utc::now(),
            node_id: "n".into(),
            min_lsn: 1,
            max_lsn: 1,
            log: String::new(),
        };
        let tags = if tagged {
            vec!["host".to_string()]
        } else {
            vec![]
        };
        let options = ParquetOptions::from_config(&IngestConfig::default());
        let rows = (0..batch.num_rows() as u32).map(|r| (0, r)).collect();
        let encoded = encode_hour(
            std::slice::from_ref(&batch),
            rows,
            0,
            &tags,
            &target,
            &options,
        )
        .unwrap();
        let path = dir.join(name);
        std::fs::write(&path, &encoded.bytes).unwrap();
        path
    }

    type StoredRow = (i64, Option<String>, f64);

    fn read(path: &Path) -> (Vec<StoredRow>, BTreeMap<String, String>) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
        let metadata = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
            .collect();
        let mut rows = Vec::new();
        for batch in builder.build().unwrap() {
            let batch = batch.unwrap();
            let time = batch.column(0).as_primitive::<TimestampMicrosecondType>();
            let host = batch
                .column_by_name("host")
                .map(|c| c.as_string::<i32>().clone());
            let v = batch
                .column_by_name("v")
                .unwrap()
                .as_primitive::<Float64Type>();
            for i in 0..batch.num_rows() {
                let host = host
                    .as_ref()
                    .and_then(|h| h.is_valid(i).then(|| h.value(i).to_string()));
                rows.push((time.value(i), host, v.value(i)));
            }
        }
        (rows, metadata)
    }

    fn run_merge(
        dir: &Path,
        inputs: &[PathBuf],
        sort_keys: &[&str],
        memory_limit: u64,
    ) -> (MergeOutcome, PathBuf) {
        let output = dir.join(format!("out-{memory_limit}.parquet"));
        let sort_keys: Vec<String> = sort_keys.iter().map(|k| k.to_string()).collect();
        let outcome = merge(&MergeSpec {
            inputs,
            output: &output,
            sort_keys: &sort_keys,
            column_types: &BTreeMap::new(),
            memory_limit,
        })
        .unwrap();
        (outcome, output)
    }

    #[test]
    fn merges_sorted_inputs_keeping_write_order_among_equal_times() {
        let dir = tempfile::tempdir().unwrap();
        // Untagged rows (MessagePack columnar): nothing is deduplicated.
        let a = flushed_file(
            dir.path(),
            "a",
            &[(1, None, 1.0), (3, None, 2.0), (5, None, 3.0)],
            false,
            &["time"],
        );
        let b = flushed_file(
            dir.path(),
            "b",
            &[(3, None, 4.0), (2, None, 5.0), (3, None, 6.0)],
            false,
            &["time"],
        );
        let (outcome, output) = run_merge(dir.path(), &[a, b], &["time"], 64 << 20);
        let (rows, metadata) = read(&output);
        let values: Vec<(i64, f64)> = rows.iter().map(|r| (r.0, r.2)).collect();
        assert_eq!(
            values,
            [(1, 1.0), (2, 5.0), (3, 2.0), (3, 4.0), (3, 6.0), (5, 3.0)]
        );
        assert_eq!((outcome.rows_in, outcome.rows_out), (6, 6));
        assert_eq!((outcome.min_time_us, outcome.max_time_us), (1, 5));
        assert_eq!(
            outcome.size_bytes,
            std::fs::metadata(&output).unwrap().len()
        );
        assert_eq!(
            outcome.sha256,
            hex(&Sha256::digest(std::fs::read(&output).unwrap()))
        );
        assert!(!metadata.contains_key(TAGS_METADATA_KEY));
    }

    #[test]
    fn tagged_duplicates_keep_the_latest_written() {
        let dir = tempfile::tempdir().unwrap();
        let a = flushed_file(
            dir.path(),
            "a",
            &[
                (1, Some("x"), 1.0),
                (1, Some("y"), 2.0),
                (2, Some("x"), 3.0),
                (1, Some("x"), 4.0),
            ],
            true,
            &["time"],
        );
        let b = flushed_file(
            dir.path(),
            "b",
            &[(2, Some("x"), 5.0), (3, Some("x"), 6.0)],
            true,
            &["time"],
        );
        let c = flushed_file(dir.path(), "c", &[(1, Some("y"), 7.0)], true, &["time"]);
        let (outcome, output) = run_merge(dir.path(), &[a, b, c], &["time"], 64 << 20);
        let (rows, metadata) = read(&output);
        let mut rows: Vec<(i64, String, f64)> =
            rows.into_iter().map(|r| (r.0, r.1.unwrap(), r.2)).collect();
        rows.sort_by(|x, y| x.partial_cmp(y).unwrap());
        assert_eq!(
            rows,
            [
                (1, "x".into(), 4.0),
                (1, "y".into(), 7.0),
                (2, "x".into(), 5.0),
                (3, "x".into(), 6.0)
            ]
        );
        assert_eq!((outcome.rows_in, outcome.rows_out), (7, 4));
        assert_eq!(metadata[TAGS_METADATA_KEY], "host");
        assert_eq!(outcome.tags, ["host"]);
    }

    #[test]
    fn columns_missing_from_a_file_become_nulls_and_foreign_sort_orders_are_resorted() {
        let dir = tempfile::tempdir().unwrap();
        let a = flushed_file(
            dir.path(),
            "a",
            &[(4, None, 1.0), (6, None, 2.0)],
            false,
            &["time"],
        );
        // Sorted by host first: not time order, so it is sorted again before merging.
        let b = flushed_file(
            dir.path(),
            "b",
            &[
                (5, Some("b"), 3.0),
                (1, Some("z"), 4.0),
                (7, Some("a"), 5.0),
            ],
            false,
            &["host", "time"],
        );
        let (outcome, output) = run_merge(dir.path(), &[a, b], &["time"], 64 << 20);
        let (rows, _) = read(&output);
        assert_eq!(
            rows,
            [
                (1, Some("z".into()), 4.0),
                (4, None, 1.0),
                (5, Some("b".into()), 3.0),
                (6, None, 2.0),
                (7, Some("a".into()), 5.0)
            ]
        );
        assert_eq!(outcome.columns.keys().collect::<Vec<_>>(), ["host", "v"]);
    }

    #[test]
    fn a_small_memory_limit_gives_the_same_file_contents() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = ["a", "b", "c"];
        let inputs: Vec<PathBuf> = (0..5)
            .map(|f| {
                let rows: Vec<Row> = (0..3_000)
                    .map(|i| {
                        (
                            (i * 7 + f * 3) % 2_000,
                            Some(hosts[(i % 3) as usize]),
                            (f * 10_000 + i) as f64,
                        )
                    })
                    .collect();
                flushed_file(
                    dir.path(),
                    &format!("in{f}"),
                    &rows,
                    true,
                    &["host", "time"],
                )
            })
            .collect();
        let (large, large_out) = run_merge(dir.path(), &inputs, &["host", "time"], 1 << 30);
        // 256-row batches: many per input, so rows come from batches loaded at different times.
        let (small, small_out) = run_merge(dir.path(), &inputs, &["host", "time"], 4 << 10);
        let (large_rows, _) = read(&large_out);
        assert_eq!(read(&small_out).0, large_rows);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("merge-pass"))
            .collect();
        assert!(left.is_empty(), "intermediate files are removed: {left:?}");
        assert_eq!(large.rows_out, small.rows_out);
        assert!(
            large.rows_out < large.rows_in,
            "some (host, time) pairs repeat"
        );
        let keys: Vec<(Option<String>, i64)> =
            large_rows.iter().map(|r| (r.1.clone(), r.0)).collect();
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "sorted by host then time, no duplicates"
        );
        // The value kept for each (host, time) is the one from the last file that has it.
        let mut expected: BTreeMap<(Option<String>, i64), f64> = BTreeMap::new();
        for f in 0..5i64 {
            for i in 0..3_000i64 {
                let key = (
                    Some(hosts[(i % 3) as usize].to_string()),
                    (i * 7 + f * 3) % 2_000,
                );
                expected.insert(key, (f * 10_000 + i) as f64);
            }
        }
        let merged: BTreeMap<(Option<String>, i64), f64> =
            large_rows.into_iter().map(|r| ((r.1, r.0), r.2)).collect();
        assert_eq!(merged, expected);
    }
}
