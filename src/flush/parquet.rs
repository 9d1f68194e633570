//! Turning a buffered chunk into Parquet files: one per UTC hour of the rows, `time` first then
//! columns by name, rows sorted by the measurement's sort keys then time.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, TimestampMicrosecondArray, new_null_array};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{Row, RowConverter, SortField};
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use sha2::{Digest, Sha256};

use crate::buffer::{Chunk, column_type};
use crate::config::{DataPageVersion, IngestConfig, ParquetCompression};
use crate::meta::{ColumnType, FileEntry};
use crate::storage::paths::{flush_file_key, hour_start};

/// Key-value metadata naming the tag columns (line protocol and row-form MessagePack).
pub const TAGS_METADATA_KEY: &str = "arc:tags";

/// The Parquet writer settings that come from `[ingest]`.
#[derive(Debug, Clone)]
pub struct ParquetOptions {
    compression: Compression,
    writer_version: WriterVersion,
    dictionary: bool,
    numeric_dictionary: bool,
    statistics: EnabledStatistics,
}

impl ParquetOptions {
    pub fn from_config(config: &IngestConfig) -> ParquetOptions {
        ParquetOptions {
            compression: match config.compression {
                ParquetCompression::Snappy => Compression::SNAPPY,
                ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
                ParquetCompression::Gzip => Compression::GZIP(GzipLevel::default()),
                ParquetCompression::Lz4 => Compression::LZ4_RAW,
                ParquetCompression::None => Compression::UNCOMPRESSED,
            },
            writer_version: match config.data_page_version {
                DataPageVersion::V1 => WriterVersion::PARQUET_1_0,
                DataPageVersion::V2 => WriterVersion::PARQUET_2_0,
            },
            dictionary: config.use_dictionary,
            numeric_dictionary: config.use_dictionary && config.numeric_dictionary,
            statistics: if config.write_statistics {
                EnabledStatistics::Page
            } else {
                EnabledStatistics::None
            },
        }
    }
}

/// A file ready to upload, with its manifest entry.
#[derive(Debug)]
pub struct EncodedFile {
    pub bytes: bytes::Bytes,
    pub entry: FileEntry,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// Identity of the files a flush writes.
#[derive(Debug, Clone)]
pub struct FlushTarget {
    pub database: String,
    pub measurement: String,
    pub sort_keys: Vec<String>,
    pub flushed_at: DateTime<Utc>,
    pub node_id: String,
    /// The log numbering the rows, and with shared storage the tag that keeps this writer's
    /// file names apart from every other writer's.
    pub log: String,
    /// LSN range of the rows (the chunk's).
    pub min_lsn: crate::wal::Lsn,
    pub max_lsn: crate::wal::Lsn,
}

/// A row of a chunk: (batch, row within that batch).
pub type RowRef = (u32, u32);

/// Rows per batch handed to the Parquet writer: the sorted rows are gathered from the chunk's
/// batches a slice at a time, so a flush never holds a sorted copy of the whole chunk.
const WRITE_SLICE_ROWS: usize = 65_536;

/// A chunk's batches on one schema, and its rows grouped by UTC hour (each hour is one file).
#[derive(Debug)]
pub struct ChunkRows {
    /// `time` first, then the union of the chunk's columns by name; a batch lacking a column
    /// has nulls there.
    pub batches: Arc<[RecordBatch]>,
    /// Each hour's rows in write order.
    pub hours: Vec<(i64, Vec<RowRef>)>,
    pub tags: Vec<String>,
}

pub fn split_chunk(chunk: &Chunk) -> Result<ChunkRows, EncodeError> {
    let batches = align(&chunk.batches)?;
    let schema = batches[0].schema();
    let tags: Vec<String> = chunk
        .tags
        .iter()
        .filter(|t| schema.index_of(t).is_ok())
        .cloned()
        .collect();
    let hours = rows_by_hour(&batches);
    Ok(ChunkRows {
        batches: batches.into(),
        hours,
        tags,
    })
}

/// Sorts and encodes one hour's rows (of `batches`) into a file.
pub fn encode_hour(
    batches: &[RecordBatch],
    rows: Vec<RowRef>,
    hour: i64,
    tags: &[String],
    target: &FlushTarget,
    options: &ParquetOptions,
) -> Result<EncodedFile, EncodeError> {
    let order = sort_order(batches, rows, &target.sort_keys)?;
    write_file(batches, &order, hour, tags, target, options)
}

/// The batches on one schema: `time` first, then the union of their columns by name, missing
/// columns filled with nulls. Nothing is copied but the null columns.
fn align(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>, EncodeError> {
    let mut columns: BTreeMap<&str, &Field> = BTreeMap::new();
    for batch in batches {
        for field in batch.schema_ref().fields().iter().skip(1) {
            columns.entry(field.name()).or_insert(field);
        }
    }
    let time_field = batches[0].schema_ref().field(0).clone();
    let fields: Vec<Field> = std::iter::once(time_field)
        .chain(columns.values().map(|f| (*f).clone().with_nullable(true)))
        .collect();
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let aligned = batches
        .iter()
        .map(|batch| {
            let arrays: Vec<ArrayRef> = schema
                .fields()
                .iter()
                .map(|field| match batch.column_by_name(field.name()) {
                    Some(array) => Arc::clone(array),
                    None => new_null_array(field.data_type(), batch.num_rows()),
                })
                .collect();
            RecordBatch::try_new(Arc::clone(&schema), arrays)
        })
        .collect::<Result<_, _>>()?;
    Ok(aligned)
}

fn times(batch: &RecordBatch) -> &TimestampMicrosecondArray {
    batch
        .column(0)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("column 0 is the µs time column")
}

fn rows_by_hour(batches: &[RecordBatch]) -> Vec<(i64, Vec<RowRef>)> {
    let all_rows = || {
        batches.iter().zip(0u32..).flat_map(|(batch, b)| {
            times(batch)
                .values()
                .iter()
                .zip(0u32..)
                .map(move |(t, r)| (*t, (b, r)))
        })
    };
    let Some((first_time, _)) = all_rows().next() else {
        return Vec::new();
    };
    let first = hour_start(first_time);
    if all_rows().all(|(t, _)| hour_start(t) == first) {
        return vec![(first, all_rows().map(|(_, row)| row).collect())];
    }
    let mut hours: BTreeMap<i64, Vec<RowRef>> = BTreeMap::new();
    for (t, row) in all_rows() {
        hours.entry(hour_start(t)).or_default().push(row);
    }
    hours.into_iter().collect()
}

/// Sorts one batch by the sort keys (see [`sort_order`]).
pub(crate) fn sort_rows(
    batch: &RecordBatch,
    sort_keys: &[String],
) -> Result<RecordBatch, EncodeError> {
    let rows = (0..batch.num_rows() as u32).map(|r| (0, r)).collect();
    let order = sort_order(std::slice::from_ref(batch), rows, sort_keys)?;
    gather(std::slice::from_ref(batch), &order)
}

/// `rows` (given in write order) ordered by the sort keys (which end with `time`); keys the
/// batches lack are skipped. Rows with equal keys keep their write order, which compaction
/// relies on to keep the latest of duplicate points.
///
/// Time alone is sorted as (time, row) integer tuples, with the standard library's stable
/// sort: it finds the runs already in order (each request's rows usually are) and merges them,
/// where an unstable sort starts from scratch. Other keys are encoded once in Arrow's row
/// format, so each comparison is one `memcmp` of two byte strings rather than a dynamic
/// comparator call per key column (the comparator-based `lexsort_to_indices` kept the flush
/// CPU-bound on sorting).
fn sort_order(
    batches: &[RecordBatch],
    rows: Vec<RowRef>,
    sort_keys: &[String],
) -> Result<Vec<RowRef>, EncodeError> {
    let schema = batches[0].schema();
    let keys: Vec<usize> = sort_keys
        .iter()
        .filter_map(|k| schema.index_of(k).ok())
        .collect();
    if keys.is_empty() {
        return Ok(rows);
    }
    if keys == [0] {
        let times: Vec<&[i64]> = batches.iter().map(|b| times(b).values().as_ref()).collect();
        let time_of = |(b, r): RowRef| times[b as usize][r as usize];
        if rows.is_sorted_by_key(|row| time_of(*row)) {
            return Ok(rows);
        }
        return Ok(sort_by_time(rows, time_of));
    }
    let fields = keys
        .iter()
        .map(|&i| SortField::new(schema.field(i).data_type().clone()))
        .collect();
    // Only the key columns of these rows are encoded: a chunk's other hours are not this
    // file's business.
    let key_batches = batches
        .iter()
        .map(|batch| batch.project(&keys))
        .collect::<Result<Vec<_>, _>>()?;
    let row_keys = gather(&key_batches, &rows)?;
    let encoded = RowConverter::new(fields)?.convert_columns(row_keys.columns())?;
    // The position breaks ties, so equal keys keep their write order.
    let mut keyed: Vec<(Row<'_>, usize)> = encoded.iter().zip(0..).collect();
    keyed.sort_unstable();
    Ok(keyed
        .into_iter()
        .map(|(_, position)| rows[position])
        .collect())
}

/// Below this many runs of rows in time order, merging the runs beats a radix sort's passes.
const RADIX_SORT_MIN_RUNS: usize = 8;

/// `rows` in time order, ties in the order given.
///
/// When the times span under 2³² µs (71 minutes; a flush sorts one hour at a time) each row
/// becomes one integer, its time offset above its position. A few runs already in time order
/// (each request's rows usually are) are merged by the standard library's stable sort. Many
/// runs, as when a flush that fell behind takes hundreds of requests over the same times, are
/// radix sorted by the time offset alone: a pass per byte in which the offsets differ, with
/// no comparisons, and stable, so ties keep their positions. Longer spans sort
/// (time, position) tuples.
fn sort_by_time(rows: Vec<RowRef>, time_of: impl Fn(RowRef) -> i64) -> Vec<RowRef> {
    let (min, max) = rows.iter().fold((i64::MAX, i64::MIN), |(min, max), &row| {
        let t = time_of(row);
        (min.min(t), max.max(t))
    });
    if max.abs_diff(min) <= u64::from(u32::MAX) && rows.len() <= u32::MAX as usize {
        let mut keys: Vec<u64> = rows
            .iter()
            .zip(0u64..)
            .map(|(&row, position)| (time_of(row).abs_diff(min) << 32) | position)
            .collect();
        let runs = 1 + keys.windows(2).filter(|pair| pair[0] > pair[1]).count();
        if runs < RADIX_SORT_MIN_RUNS {
            keys.sort();
        } else {
            radsort::sort_by_key(&mut keys, |key| (key >> 32) as u32);
        }
        return keys
            .into_iter()
            .map(|key| rows[(key & u64::from(u32::MAX)) as usize])
            .collect();
    }
    let mut keyed: Vec<(i64, usize)> = rows
        .iter()
        .zip(0..)
        .map(|(&row, position)| (time_of(row), position))
        .collect();
    keyed.sort();
    keyed
        .into_iter()
        .map(|(_, position)| rows[position])
        .collect()
}

/// The rows `order` names, as one batch: a slice when they are consecutive rows of one batch,
/// else gathered.
fn gather(batches: &[RecordBatch], order: &[RowRef]) -> Result<RecordBatch, EncodeError> {
    if let Some(&(b, first)) = order.first() {
        let consecutive = order
            .iter()
            .zip(first..)
            .all(|(&(batch, row), expected)| batch == b && row == expected);
        if consecutive {
            return Ok(batches[b as usize].slice(first as usize, order.len()));
        }
    }
    let sources: Vec<&RecordBatch> = batches.iter().collect();
    let indices: Vec<(usize, usize)> = order
        .iter()
        .map(|&(b, r)| (b as usize, r as usize))
        .collect();
    Ok(interleave_record_batch(&sources, &indices)?)
}

fn write_file(
    batches: &[RecordBatch],
    order: &[RowRef],
    hour: i64,
    tags: &[String],
    target: &FlushTarget,
    options: &ParquetOptions,
) -> Result<EncodedFile, EncodeError> {
    let schema = batches[0].schema();
    let sorting = sorting_columns(&schema, &target.sort_keys);
    let mut props = WriterProperties::builder()
        .set_compression(options.compression)
        .set_writer_version(options.writer_version)
        .set_dictionary_enabled(options.dictionary)
        .set_statistics_enabled(options.statistics)
        .set_sorting_columns(Some(sorting));
    for field in schema.fields() {
        if field.data_type().is_numeric() || field.data_type().is_temporal() {
            props = props.set_column_dictionary_enabled(
                field.name().as_str().into(),
                options.numeric_dictionary,
            );
        }
    }
    if !tags.is_empty() {
        props = props.set_key_value_metadata(Some(vec![KeyValue::new(
            TAGS_METADATA_KEY.to_string(),
            tags.join(","),
        )]));
    }
    // Encoded files come out at roughly half the rows' in-memory size.
    let memory: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    let total_rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut buffer = Vec::with_capacity(memory / total_rows.max(1) * order.len() / 2);
    let mut writer = ArrowWriter::try_new(&mut buffer, Arc::clone(&schema), Some(props.build()))?;
    let (mut min_time_us, mut max_time_us) = (i64::MAX, i64::MIN);
    for slice in order.chunks(WRITE_SLICE_ROWS) {
        let rows = gather(batches, slice)?;
        for &t in times(&rows).values() {
            min_time_us = min_time_us.min(t);
            max_time_us = max_time_us.max(t);
        }
        writer.write(&rows)?;
    }
    writer.close()?;

    let columns = file_columns(&schema);
    let entry = FileEntry {
        path: flush_file_key(
            &target.database,
            &target.measurement,
            hour,
            target.flushed_at,
            &target.log,
        ),
        database: target.database.clone(),
        measurement: target.measurement.clone(),
        min_time_us,
        max_time_us,
        rows: order.len() as u64,
        size_bytes: buffer.len() as u64,
        sha256: hex(&Sha256::digest(&buffer)),
        min_lsn: target.min_lsn,
        log: target.log.clone(),
        max_lsn: target.max_lsn,
        columns,
        tags: tags.to_vec(),
        created_at_us: target.flushed_at.timestamp_micros(),
        origin_node: target.node_id.clone(),
    };
    Ok(EncodedFile {
        bytes: buffer.into(),
        entry,
    })
}

/// The columns a file's manifest entry records: every column after `time`, by type.
pub(crate) fn file_columns(schema: &Schema) -> BTreeMap<String, ColumnType> {
    schema
        .fields()
        .iter()
        .skip(1)
        .filter_map(|f| Some((f.name().clone(), column_type(f.data_type())?)))
        .collect()
}

/// The Parquet `sorting_columns` for rows sorted by these keys (ones the file lacks are skipped).
pub(crate) fn sorting_columns(schema: &Schema, sort_keys: &[String]) -> Vec<SortingColumn> {
    sort_keys
        .iter()
        .filter_map(|k| schema.index_of(k).ok())
        .map(|i| SortingColumn {
            column_idx: i as i32,
            descending: false,
            nulls_first: true,
        })
        .collect()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};

    fn time_field() -> Field {
        Field::new(
            "time",
            arrow::datatypes::DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into()),
            ),
            false,
        )
    }

    proptest::proptest! {
        /// The row-format sort orders exactly as Arrow's comparator sort with the row position
        /// as the last key: nulls first, then by value, ties in write order.
        #[test]
        fn sorting_matches_the_comparator_sort(
            rows in proptest::collection::vec(
                (
                    proptest::option::of(0u8..4),
                    proptest::option::of(0u8..3),
                    0i64..5,
                ),
                0..200,
            )
        ) {
            let tag = |values: Vec<Option<u8>>| -> ArrayRef {
                Arc::new(StringArray::from_iter(
                    values.into_iter().map(|v| v.map(|v| format!("h{v}"))),
                ))
            };
            let schema = Arc::new(Schema::new(vec![
                time_field(),
                Field::new("dc", arrow::datatypes::DataType::Utf8, true),
                Field::new("host", arrow::datatypes::DataType::Utf8, true),
                Field::new("v", arrow::datatypes::DataType::Int64, false),
            ]));
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2))
                            .with_timezone("UTC"),
                    ),
                    tag(rows.iter().map(|r| r.0).collect()),
                    tag(rows.iter().map(|r| r.1).collect()),
                    Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
                ],
            )
            .unwrap();
            let keys: Vec<String> = ["dc", "host", "time"].map(String::from).to_vec();
            let sorted = sort_rows(&batch, &keys).unwrap();
            let reference: Vec<arrow::compute::SortColumn> = [1, 2, 0]
                .iter()
                .map(|&i| Arc::clone(batch.column(i)))
                .chain(std::iter::once(batch.column(3).clone()))
                .map(|values| arrow::compute::SortColumn { values, options: None })
                .collect();
            let expected = arrow::compute::lexsort_to_indices(&reference, None).unwrap();
            let positions = sorted.column(3).as_any().downcast_ref::<Int64Array>().unwrap();
            let expected: Vec<i64> = expected.values().iter().map(|&i| i64::from(i)).collect();
            proptest::prop_assert_eq!(positions.values().to_vec(), expected);
        }
    }

    proptest::proptest! {
        /// The time-only sort orders exactly as a stable sort by time, whether the times fit
        /// the packed integer keys (a span under 2³² µs, offsets of one to four bytes) or not,
        /// and whether the rows come in a few runs in time order or many.
        #[test]
        fn time_sort_matches_a_stable_sort_by_time(
            batches in proptest::collection::vec(
                proptest::collection::vec(0i64..6, 0..60),
                1..4,
            ),
            scale in proptest::sample::select(vec![1i64, 1_000, 800_000_000, 1_000_000_000, 1 << 40]),
        ) {
            let times: Vec<Vec<i64>> = batches
                .iter()
                .map(|batch| batch.iter().map(|t| t * scale - 7).collect())
                .collect();
            let rows: Vec<RowRef> = times
                .iter()
                .zip(0u32..)
                .flat_map(|(batch, b)| (0..batch.len() as u32).map(move |r| (b, r)))
                .collect();
            let time_of = |(b, r): RowRef| times[b as usize][r as usize];
            let mut expected = rows.clone();
            expected.sort_by_key(|&row| time_of(row));
            proptest::prop_assert_eq!(sort_by_time(rows, time_of), expected);
        }
    }

    /// A chunk of batches with different columns, rows in two hours and more rows than one
    /// write slice: each hour's file holds its rows sorted, ties in write order across batches,
    /// and nulls where a batch lacked a column.
    #[test]
    fn chunks_of_several_batches_are_written_sorted_per_hour() {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        const HOUR_US: i64 = 3_600_000_000;
        let batch = |first: i64, rows: i64, extra: &str, late_row: Option<i64>| {
            let schema = Arc::new(Schema::new(vec![
                time_field(),
                Field::new(extra, arrow::datatypes::DataType::Utf8, true),
                Field::new("v", arrow::datatypes::DataType::Int64, true),
            ]));
            let time = (first..first + rows).map(|i| {
                if Some(i) == late_row {
                    HOUR_US + 7
                } else {
                    i % 5
                }
            });
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(time).with_timezone("UTC"),
                    ),
                    Arc::new(StringArray::from_iter_values(
                        (first..first + rows).map(|i| format!("h{}", i % 3)),
                    )),
                    Arc::new(Int64Array::from_iter_values(first..first + rows)),
                ],
            )
            .unwrap()
        };
        let rows = WRITE_SLICE_ROWS as i64;
        let batches = align(&[
            batch(0, rows, "host", None),
            batch(rows, rows, "dc", Some(rows + 10)),
        ])
        .unwrap();
        let hours = rows_by_hour(&batches);
        assert_eq!(
            hours
                .iter()
                .map(|(hour, rows)| (*hour, rows.len()))
                .collect::<Vec<_>>(),
            vec![(0, 2 * WRITE_SLICE_ROWS - 1), (HOUR_US, 1)]
        );
        for keys in [vec!["time"], vec!["host", "time"]] {
            let target = FlushTarget {
                database: "db".into(),
                measurement: "m".into(),
                sort_keys: keys.iter().map(|k| k.to_string()).collect(),
                flushed_at: Utc::now(),
                node_id: "n".into(),
                log: String::new(),
                min_lsn: 1,
                max_lsn: 1,
            };
            let options = ParquetOptions::from_config(&IngestConfig::default());
            let (hour, hour_rows) = hours[0].clone();
            let file = encode_hour(&batches, hour_rows, hour, &[], &target, &options).unwrap();
            assert_eq!((file.entry.min_time_us, file.entry.max_time_us), (0, 4));
            let read: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(file.bytes)
                .unwrap()
                .build()
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let all = arrow::compute::concat_batches(&read[0].schema(), &read).unwrap();
            assert_eq!(all.num_rows(), 2 * WRITE_SLICE_ROWS - 1);
            let column = |name: &str| Arc::clone(all.column_by_name(name).unwrap());
            let host = column("host");
            let host = host.as_any().downcast_ref::<StringArray>().unwrap();
            let dc = column("dc");
            let dc = dc.as_any().downcast_ref::<StringArray>().unwrap();
            let v = column("v");
            let v = v.as_any().downcast_ref::<Int64Array>().unwrap();
            let time = times(&all).values();
            let key = |i: usize| {
                let host = host.is_valid(i).then(|| host.value(i));
                if keys.len() == 2 {
                    (host, time[i])
                } else {
                    (None, time[i])
                }
            };
            for i in 0..all.num_rows() {
                // Batch 0 rows have a host and no dc; batch 1 rows the other way round.
                assert_eq!(host.is_valid(i), v.value(i) < rows, "row {i}");
                assert_eq!(dc.is_valid(i), v.value(i) >= rows, "row {i}");
                if i > 0 {
                    assert!(key(i - 1) <= key(i), "{keys:?}: row {i} out of order");
                    if key(i - 1) == key(i) {
                        assert!(v.value(i - 1) < v.value(i), "{keys:?}: tie at row {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn sorting_keeps_write_order_among_equal_keys() {
        let schema = Arc::new(Schema::new(vec![
            time_field(),
            Field::new("host", arrow::datatypes::DataType::Utf8, true),
            Field::new("v", arrow::datatypes::DataType::Int64, true),
        ]));
        let n = 1_000;
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values((0..n).map(|i| (i % 3) as i64))
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| if i % 2 == 0 { "a" } else { "b" }),
                )),
                Arc::new(Int64Array::from_iter_values(0..n as i64)),
            ],
        )
        .unwrap();
        for keys in [vec!["time"], vec!["host", "time"]] {
            let keys: Vec<String> = keys.into_iter().map(String::from).collect();
            let sorted = sort_rows(&batch, &keys).unwrap();
            let v = sorted
                .column(2)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            for i in 1..sorted.num_rows() {
                let same_group = (0..keys.len()).all(|k| {
                    let c = sorted.schema().index_of(&keys[k]).unwrap();
                    let col = sorted.column(c);
                    arrow::compute::kernels::cmp::eq(&col.slice(i - 1, 1), &col.slice(i, 1))
                        .unwrap()
                        .value(0)
                });
                if same_group {
                    assert!(v.value(i - 1) < v.value(i), "{keys:?} row {i}");
                }
            }
        }
    }
}
