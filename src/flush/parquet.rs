//! Turning a buffered chunk into Parquet files: one per UTC hour of the rows, `time` first then
//! columns by name, rows sorted by the measurement's sort keys then time.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, TimestampMicrosecondArray, UInt32Array, new_null_array};
use arrow::compute::{concat_batches, take_record_batch};
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

/// A chunk's rows cut into one batch per UTC hour, each encoded on its own (in parallel).
#[derive(Debug)]
pub struct HourSlices {
    pub slices: Vec<(i64, RecordBatch)>,
    pub tags: Vec<String>,
}

pub fn split_chunk(chunk: &Chunk) -> Result<HourSlices, EncodeError> {
    let batch = unify(&chunk.batches)?;
    let tags: Vec<String> = chunk
        .tags
        .iter()
        .filter(|t| batch.schema().index_of(t).is_ok())
        .cloned()
        .collect();
    Ok(HourSlices {
        slices: split_by_hour(&batch)?,
        tags,
    })
}

/// Sorts and encodes one hour's rows into a file.
pub fn encode_hour(
    rows: &RecordBatch,
    hour: i64,
    tags: &[String],
    target: &FlushTarget,
    options: &ParquetOptions,
) -> Result<EncodedFile, EncodeError> {
    let sorted = sort_rows(rows, &target.sort_keys)?;
    write_file(&sorted, hour, tags, target, options)
}

/// Concatenates batches whose column sets differ: the union of columns, `time` first then by
/// name, missing columns filled with nulls.
fn unify(batches: &[RecordBatch]) -> Result<RecordBatch, EncodeError> {
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
    let aligned: Vec<RecordBatch> = batches
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
    Ok(concat_batches(&schema, &aligned)?)
}

fn times(batch: &RecordBatch) -> &TimestampMicrosecondArray {
    batch
        .column(0)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .expect("column 0 is the µs time column")
}

fn split_by_hour(batch: &RecordBatch) -> Result<Vec<(i64, RecordBatch)>, EncodeError> {
    let time = times(batch).values();
    let first = hour_start(time[0]);
    if time.iter().all(|t| hour_start(*t) == first) {
        return Ok(vec![(first, batch.clone())]);
    }
    let mut rows_by_hour: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
    for (row, t) in time.iter().enumerate() {
        rows_by_hour
            .entry(hour_start(*t))
            .or_default()
            .push(row as u32);
    }
    rows_by_hour
        .into_iter()
        .map(|(hour, rows)| Ok((hour, take_record_batch(batch, &UInt32Array::from(rows))?)))
        .collect()
}

/// Sorts by the sort keys (which end with `time`); keys the batch lacks are skipped. Rows with
/// equal keys keep their write order (the row position breaks ties), which compaction relies on
/// to keep the latest of duplicate points.
///
/// Time alone is sorted as (time, position) integer pairs, with the standard library's stable
/// sort: it finds the runs already in order (each request's rows usually are) and merges them,
/// where an unstable sort starts from scratch. Other keys are encoded once in
/// Arrow's row format, so each comparison is one `memcmp` of two byte strings rather than a
/// dynamic comparator call per key column (the comparator-based `lexsort_to_indices` kept the
/// flush CPU-bound on sorting).
pub(crate) fn sort_rows(
    batch: &RecordBatch,
    sort_keys: &[String],
) -> Result<RecordBatch, EncodeError> {
    let keys: Vec<usize> = sort_keys
        .iter()
        .filter_map(|k| batch.schema_ref().index_of(k).ok())
        .collect();
    if keys.is_empty() || (keys == [0] && times(batch).values().is_sorted()) {
        return Ok(batch.clone());
    }
    if keys == [0] {
        // Time alone (the default): integer pairs sort without a comparison call.
        let mut order: Vec<(i64, u32)> =
            times(batch).values().iter().copied().zip(0u32..).collect();
        order.sort();
        let indices =
            UInt32Array::from_iter_values(order.into_iter().map(|(_, position)| position));
        return Ok(take_record_batch(batch, &indices)?);
    }
    let fields = keys
        .iter()
        .map(|&i| SortField::new(batch.column(i).data_type().clone()))
        .collect();
    let columns: Vec<ArrayRef> = keys.iter().map(|&i| Arc::clone(batch.column(i))).collect();
    let rows = RowConverter::new(fields)?.convert_columns(&columns)?;
    let mut order: Vec<(Row<'_>, u32)> = rows.iter().zip(0u32..).collect();
    order.sort_unstable();
    let indices = UInt32Array::from_iter_values(order.into_iter().map(|(_, position)| position));
    Ok(take_record_batch(batch, &indices)?)
}

fn write_file(
    batch: &RecordBatch,
    hour: i64,
    tags: &[String],
    target: &FlushTarget,
    options: &ParquetOptions,
) -> Result<EncodedFile, EncodeError> {
    let schema = batch.schema();
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
    let mut buffer = Vec::with_capacity(batch.get_array_memory_size() / 2);
    let mut writer = ArrowWriter::try_new(&mut buffer, Arc::clone(&schema), Some(props.build()))?;
    writer.write(batch)?;
    writer.close()?;

    let time = times(batch);
    let (min_time_us, max_time_us) = time
        .values()
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
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
        rows: batch.num_rows() as u64,
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
