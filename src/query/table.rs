//! DataFusion catalog fed by the manifest and the buffers: one schema per database, one table per
//! measurement, each the union of its Parquet files and its unflushed rows.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session, TableProvider};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};

use super::latest_rows::LatestRowsCache;
use crate::buffer::{Buffers, ChunkSnapshot, MeasurementKey};
use crate::meta::{FileEntry, Meta};
use crate::replication::ReplicaView;
use crate::wal::Lsn;

/// The object store URL under which the storage backend is registered.
pub const STORAGE_URL: &str = "arcdb://storage/";

/// What the tables read from, shared by every query.
#[derive(Debug)]
pub struct TableSources {
    pub meta: Arc<Meta>,
    pub buffers: Arc<Buffers>,
    /// On a reader with its own storage: the manifest versions whose files are all local.
    pub view: Option<Arc<ReplicaView>>,
    /// The log numbering this node's buffered rows.
    pub log: String,
    /// Each group's latest rows per file, for the scans of [`RowSet::LatestPerGroup`].
    pub latest: LatestRowsCache,
}

impl TableSources {
    /// A measurement's flushed-through LSN and files, read in one step so a swap shows its
    /// inputs or its output, never both.
    fn files_version(&self, key: &MeasurementKey) -> (Lsn, Vec<FileEntry>) {
        if let Some(view) = &self.view {
            let version = view.measurement(key);
            return (version.flushed_through, version.files);
        }
        let state = self.meta.state();
        let files = state
            .files_of(&key.database, &key.measurement)
            .into_iter()
            .cloned()
            .collect();
        (
            state.flushed_through(&self.log, &key.database, &key.measurement),
            files,
        )
    }

    /// Every database that was created or has a measurement, in name order.
    pub fn databases(&self) -> BTreeSet<String> {
        let mut databases: BTreeSet<String> = self
            .measurement_keys()
            .into_iter()
            .map(|k| k.database)
            .collect();
        let state = self.meta.state();
        databases.extend(state.admin().databases().map(|d| d.name.clone()));
        databases
    }

    /// Every (database, measurement) with files or buffered rows.
    pub fn measurement_keys(&self) -> BTreeSet<MeasurementKey> {
        let mut keys: BTreeSet<MeasurementKey> =
            self.buffers.lock().with_data().into_iter().collect();
        let state = self.meta.state();
        // A measurement whose files were all removed (retention, deletes) is gone.
        keys.extend(
            state
                .measurements()
                .filter(|(db, m, _)| state.has_files(db, m))
                .map(|(db, m, _)| MeasurementKey {
                    database: db.to_string(),
                    measurement: m.to_string(),
                }),
        );
        keys
    }
}

pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A measurement's table schema: `time`, then its columns in name order.
pub fn table_schema(mut columns: Vec<(String, DataType)>) -> SchemaRef {
    columns.sort_by(|a, b| a.0.cmp(&b.0));
    let fields: Vec<Field> = std::iter::once(Field::new("time", time_type(), false))
        .chain(columns.into_iter().map(|(n, t)| Field::new(n, t, true)))
        .collect();
    Arc::new(Schema::new(fields))
}

/// The catalog of one query.
#[derive(Debug)]
pub struct ArcCatalog {
    pub sources: Arc<TableSources>,
    /// Parquet files this query's scans were handed: shows pruning without timing anything.
    pub files_scanned: Arc<AtomicU64>,
}

impl CatalogProvider for ArcCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.sources.databases().into_iter().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        Some(Arc::new(DatabaseSchema {
            database: name.to_string(),
            sources: Arc::clone(&self.sources),
            files_scanned: Arc::clone(&self.files_scanned),
        }))
    }
}

#[derive(Debug)]
struct DatabaseSchema {
    database: String,
    sources: Arc<TableSources>,
    files_scanned: Arc<AtomicU64>,
}

#[async_trait]
impl SchemaProvider for DatabaseSchema {
    fn table_names(&self) -> Vec<String> {
        self.sources
            .measurement_keys()
            .into_iter()
            .filter(|k| k.database == self.database)
            .map(|k| k.measurement)
            .collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let key = MeasurementKey {
            database: self.database.clone(),
            measurement: name.to_string(),
        };
        let (has_rows, columns) = {
            let buffers = self.sources.buffers.lock();
            (buffers.has_data(&key), buffers.columns(&key))
        };
        let has_files = || {
            let state = self.sources.meta.state();
            state.has_files(&key.database, &key.measurement)
        };
        // Column types outlive the rows (so later writes keep them), but a measurement without
        // rows anywhere does not exist.
        if !has_rows && !has_files() {
            return Ok(None);
        }
        let columns = match columns {
            Some(columns) => columns,
            None => {
                let state = self.sources.meta.state();
                match state.measurement(&key.database, &key.measurement) {
                    Some(meta) => meta
                        .columns
                        .iter()
                        .map(|(n, t)| (n.clone(), crate::buffer::data_type(*t)))
                        .collect(),
                    None => return Ok(None),
                }
            }
        };
        Ok(Some(Arc::new(MeasurementTable::new(
            key,
            columns,
            Arc::clone(&self.sources),
            Arc::clone(&self.files_scanned),
        ))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names().iter().any(|n| n == name)
    }
}

/// Which of a measurement's rows a table reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowSet {
    All,
    /// Each group's (equal values of these columns) rows at its latest time, plus possibly
    /// other rows: all a query needs that asks only for those rows (see
    /// [`super::latest_plan`]). Files come from their summaries, buffered rows are all read.
    LatestPerGroup(Vec<String>),
}

/// One measurement: `time` first, then its columns in name order.
#[derive(Debug)]
pub struct MeasurementTable {
    key: MeasurementKey,
    schema: SchemaRef,
    sources: Arc<TableSources>,
    files_scanned: Arc<AtomicU64>,
    rows: RowSet,
}

impl MeasurementTable {
    fn new(
        key: MeasurementKey,
        columns: Vec<(String, DataType)>,
        sources: Arc<TableSources>,
        files_scanned: Arc<AtomicU64>,
    ) -> MeasurementTable {
        MeasurementTable {
            key,
            schema: table_schema(columns),
            sources,
            files_scanned,
            rows: RowSet::All,
        }
    }

    pub fn key(&self) -> &MeasurementKey {
        &self.key
    }

    pub fn row_set(&self) -> &RowSet {
        &self.rows
    }

    /// The same measurement, reading only each group's latest rows.
    pub fn latest_per_group(&self, group: Vec<String>) -> MeasurementTable {
        MeasurementTable {
            key: self.key.clone(),
            schema: Arc::clone(&self.schema),
            sources: Arc::clone(&self.sources),
            files_scanned: Arc::clone(&self.files_scanned),
            rows: RowSet::LatestPerGroup(group),
        }
    }

    /// The buffered chunks and the files a scan within `range` reads. Buffers first, then the
    /// manifest: a chunk whose flush registers in between is then in both, and its files are
    /// skipped by LSN range. The other order could miss it. A compacted file carries the union
    /// of its inputs' LSN ranges; chunks of a measurement have disjoint ranges and never overlap
    /// a registered file's, so a chunk covers a compacted file only if every input row came
    /// from that chunk (then the chunk holds them all). The manifest is read once, so a swap
    /// shows inputs or output, never both.
    fn select(&self, range: TimeRange) -> (Vec<ChunkSnapshot>, Vec<FileEntry>) {
        let mut chunks = self.sources.buffers.lock().snapshot(&self.key);
        let (flushed, listed) = self.sources.files_version(&self.key);
        // A chunk at or below the flushed-through LSN is registered but not yet released (its
        // flush is still being confirmed, or on a reader the writer's files have just arrived):
        // its rows are in the version's files, maybe already compacted into a file no chunk's
        // range covers, so the files answer for it.
        chunks.retain(|c| c.max_lsn > flushed);
        let files = listed
            .into_iter()
            .filter(|f| range.overlaps(f.min_time_us, f.max_time_us))
            .filter(|f| {
                // Another writer's file has LSNs of another log: no chunk here holds its rows.
                f.log != self.sources.log
                    || !chunks
                        .iter()
                        .any(|c| c.min_lsn <= f.min_lsn && f.max_lsn <= c.max_lsn)
            })
            .collect();
        (chunks, files)
    }

    fn parquet_exec(
        &self,
        state: &dyn Session,
        files: &[FileEntry],
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // No page index: pages are about 1 MB, so with Arc's default buffer (50,000 rows per
        // flush) and compaction's 122,880-row groups a column chunk has one or two pages and
        // the index can hardly prune, while loading it cost every scanned file (and each byte
        // range of a cut file) a further read and decode. Without it
        // `single-groupby-5-1-12` over freshly flushed files took 41.8 ms instead of 54.7
        // (benches/compaction.rs, figures in BENCHMARKS.md).
        let mut source = ParquetSource::new(Arc::clone(&self.schema)).with_enable_page_index(false);
        if let Some(predicate) = conjunction(filters.iter().cloned()) {
            let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
            source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
        }
        let sizes: Vec<(String, u64)> = files
            .iter()
            .map(|f| (f.path.clone(), f.size_bytes))
            .collect();
        let groups = file_groups(&sizes, state.config().target_partitions());
        let config =
            FileScanConfigBuilder::new(ObjectStoreUrl::parse(STORAGE_URL)?, Arc::new(source))
                .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
                .with_projection_indices(projection.cloned())?
                .with_limit(limit)
                .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// `batch` reshaped to `schema`: columns by name, cast where the type differs, nulls where it
/// lacks one.
fn align(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(Arc::clone(column)),
            Some(column) => Ok(arrow::compute::cast(column, field.data_type())?),
            None => Ok(arrow::array::new_null_array(
                field.data_type(),
                batch.num_rows(),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

#[async_trait]
impl TableProvider for MeasurementTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Filters are used to prune files and row groups; DataFusion still applies them to rows.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        let (chunks, whole_files) = match &self.rows {
            RowSet::All => self.select(time_range(filters)),
            RowSet::LatestPerGroup(group) => {
                let (chunks, files) = self.select(TimeRange::ALL);
                let read = |file: &FileEntry| {
                    let scan =
                        self.parquet_exec(state, std::slice::from_ref(file), None, &[], None)?;
                    execute_stream(scan, state.task_ctx())
                };
                let answer = self
                    .sources
                    .latest
                    .answer(&self.key, group, &files, &self.schema, read)
                    .await?;
                self.files_scanned
                    .fetch_add(answer.files_read, Ordering::Relaxed);
                if let Some(rows) = answer.rows {
                    inputs.push(MemorySourceConfig::try_new_exec(
                        &[vec![rows]],
                        Arc::clone(&self.schema),
                        projection.cloned(),
                    )?);
                }
                (chunks, answer.whole_files)
            }
        };
        self.files_scanned
            .fetch_add(whole_files.len() as u64, Ordering::Relaxed);
        if !whole_files.is_empty() {
            inputs.push(self.parquet_exec(state, &whole_files, projection, filters, limit)?);
        }
        let batches = chunks
            .iter()
            .flat_map(|c| &c.batches)
            .map(|batch| align(batch, &self.schema))
            .collect::<Result<Vec<_>>>()?;
        if !batches.is_empty() {
            inputs.push(MemorySourceConfig::try_new_exec(
                &[batches],
                Arc::clone(&self.schema),
                projection.cloned(),
            )?);
        }
        if inputs.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        UnionExec::try_new(inputs)
    }
}

/// Smallest byte range a file is cut into for a scan partition: finer cuts cost more footer
/// reads than they gain.
const MIN_SPLIT_BYTES: u64 = 8 << 20;
/// Pieces per partition's share that a large file is cut into. A time-window query reads a
/// contiguous run of a time-sorted file; small pieces dealt out in turn spread that run over
/// every partition instead of leaving it all in one half.
const PIECES_PER_SHARE: u64 = 4;

/// Pure: spreads files over at most `partitions` groups of about equal bytes. A file larger than
/// a quarter of a group's share is cut into byte ranges (a Parquet reader takes the row groups
/// whose middle falls in its range), dealt out in turn, so a few large compacted files still keep
/// every core busy.
fn file_groups(files: &[(String, u64)], partitions: usize) -> Vec<Vec<PartitionedFile>> {
    let partitions = partitions.max(1);
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    let piece_size = (total.div_ceil(partitions as u64) / PIECES_PER_SHARE).max(MIN_SPLIT_BYTES);
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = vec![(0, Vec::new()); partitions];
    for (path, size) in files {
        let pieces = size.div_ceil(piece_size).max(1);
        for piece in 0..pieces {
            let (start, end) = (size * piece / pieces, size * (piece + 1) / pieces);
            let file = PartitionedFile::new(path.clone(), *size);
            let file = match pieces {
                1 => file,
                _ => file.with_range(start as i64, end as i64),
            };
            let lightest = groups
                .iter_mut()
                .min_by_key(|(bytes, _)| *bytes)
                .expect("at least one group");
            lightest.0 += end - start;
            lightest.1.push(file);
        }
    }
    groups
        .into_iter()
        .map(|(_, files)| files)
        .filter(|files| !files.is_empty())
        .collect()
}

/// Inclusive bounds on `time` implied by a scan's filters, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub min: i64,
    pub max: i64,
}

impl TimeRange {
    const ALL: TimeRange = TimeRange {
        min: i64::MIN,
        max: i64::MAX,
    };

    pub fn overlaps(&self, min: i64, max: i64) -> bool {
        min <= self.max && max >= self.min
    }
}

/// Pure: narrows [`TimeRange::ALL`] by every `time <op> literal` and `time BETWEEN` filter.
pub fn time_range(filters: &[Expr]) -> TimeRange {
    let mut range = TimeRange::ALL;
    for filter in filters {
        narrow(&mut range, filter);
    }
    range
}

fn narrow(range: &mut TimeRange, expr: &Expr) {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if *op == Operator::And {
                narrow(range, left);
                narrow(range, right);
                return;
            }
            let (op, value) = match (is_time(left), is_time(right)) {
                (true, false) => (*op, micros(right)),
                (false, true) => (op.swap().unwrap_or(*op), micros(left)),
                _ => return,
            };
            let Some((v, exact)) = value else { return };
            match op {
                Operator::Gt => range.min = range.min.max(v.saturating_add(1)),
                Operator::GtEq => range.min = range.min.max(v),
                // `time < 1.5µs` still admits 1µs.
                Operator::Lt if exact => range.max = range.max.min(v.saturating_sub(1)),
                Operator::Lt => range.max = range.max.min(v),
                Operator::LtEq => range.max = range.max.min(v),
                Operator::Eq => {
                    range.min = range.min.max(v);
                    range.max = range.max.min(v);
                }
                _ => {}
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_time(expr) => {
            if let Some((low, _)) = micros(low) {
                range.min = range.min.max(low);
            }
            if let Some((high, _)) = micros(high) {
                range.max = range.max.min(high);
            }
        }
        _ => {}
    }
}

fn is_time(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(c) if c.name == "time")
}

/// A timestamp literal in µs, floored, and whether that was exact.
fn micros(expr: &Expr) -> Option<(i64, bool)> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::TimestampSecond(Some(v), _) => Some((v.checked_mul(1_000_000)?, true)),
        ScalarValue::TimestampMillisecond(Some(v), _) => Some((v.checked_mul(1_000)?, true)),
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some((*v, true)),
        ScalarValue::TimestampNanosecond(Some(v), _) => {
            Some((v.div_euclid(1_000), v.rem_euclid(1_000) == 0))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    /// A file of a group, and its byte range if it was cut.
    type Piece = (String, Option<(i64, i64)>);

    fn pieces(groups: &[Vec<PartitionedFile>]) -> Vec<Vec<Piece>> {
        groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|f| {
                        let range = f.range.as_ref().map(|r| (r.start, r.end));
                        (f.object_meta.location.to_string(), range)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn large_files_are_cut_into_ranges_and_groups_balance_bytes() {
        const MB: u64 = 1 << 20;
        let one_large = file_groups(&[("day.parquet".into(), 100 * MB)], 2);
        let ranges = |group: &Vec<Piece>| -> Vec<(i64, i64)> {
            group.iter().map(|(_, range)| range.unwrap()).collect()
        };
        let groups = pieces(&one_large);
        let eighth = |i: i64| i * 100 * MB as i64 / 8;
        assert_eq!(
            groups.iter().map(ranges).collect::<Vec<_>>(),
            vec![
                (0..8)
                    .step_by(2)
                    .map(|i| (eighth(i), eighth(i + 1)))
                    .collect::<Vec<_>>(),
                (1..8)
                    .step_by(2)
                    .map(|i| (eighth(i), eighth(i + 1)))
                    .collect::<Vec<_>>(),
            ],
            "eight pieces dealt out in turn"
        );
        let small: Vec<(String, u64)> = (0..5).map(|i| (format!("{i}.parquet"), MB)).collect();
        let groups = pieces(&file_groups(&small, 2));
        assert_eq!(
            groups.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 2],
            "small files are spread whole"
        );
        assert!(groups.iter().flatten().all(|(_, range)| range.is_none()));
        assert_eq!(file_groups(&small[..1], 4).len(), 1);
        let mixed = [
            ("a".to_string(), 60 * MB),
            ("b".to_string(), 20 * MB),
            ("c".to_string(), 20 * MB),
        ];
        let groups = file_groups(&mixed, 2);
        let bytes: Vec<u64> = groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|f| {
                        f.range
                            .as_ref()
                            .map_or(f.object_meta.size, |r| (r.end - r.start) as u64)
                    })
                    .sum()
            })
            .collect();
        assert_eq!(bytes.iter().sum::<u64>(), 100 * MB);
        assert!(
            bytes[0].abs_diff(bytes[1]) <= 100 * MB / 2 / PIECES_PER_SHARE,
            "balanced to within a piece: {bytes:?}"
        );
        assert!(file_groups(&[], 4).is_empty());
    }

    fn ts(us: i64) -> Expr {
        lit(ScalarValue::TimestampMicrosecond(
            Some(us),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn time_filters_narrow_the_range() {
        let filters = vec![col("time").gt_eq(ts(100)), ts(200).gt(col("time"))];
        assert_eq!(time_range(&filters), TimeRange { min: 100, max: 199 });

        let between = vec![col("time").between(ts(5), ts(9)), col("host").eq(lit("a"))];
        assert_eq!(time_range(&between), TimeRange { min: 5, max: 9 });

        let nanos = |ns| lit(ScalarValue::TimestampNanosecond(Some(ns), None));
        assert_eq!(time_range(&[col("time").lt_eq(nanos(1_999))]).max, 1);
        assert_eq!(time_range(&[col("time").lt(nanos(1_999))]).max, 1);
        assert_eq!(time_range(&[col("time").lt(nanos(2_000))]).max, 1);
        assert_eq!(time_range(&[col("time").gt(nanos(1_999))]).min, 2);

        let anded = vec![col("time").gt(ts(1)).and(col("time").lt(ts(3)))];
        assert_eq!(time_range(&anded), TimeRange { min: 2, max: 2 });

        let unrelated = vec![col("usage").gt(lit(5.0)), col("time").not_eq(ts(4))];
        assert_eq!(time_range(&unrelated), TimeRange::ALL);
        assert!(TimeRange { min: 10, max: 20 }.overlaps(20, 30));
        assert!(!TimeRange { min: 10, max: 20 }.overlaps(21, 30));
    }
}
