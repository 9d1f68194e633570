//! Each group's latest rows, kept per Parquet file and per measurement, for the queries
//! [`super::latest_plan`] recognises ("the last point of every series").
//!
//! A file's summary holds, for each group (the values of the query's grouping columns), the
//! rows of that group with the file's latest time for it. Files are immutable and their paths
//! are never reused, so a summary never goes stale and nothing has to invalidate it: a delete or
//! a compaction writes new files, which get summaries of their own, and the replaced files'
//! summaries are dropped the next time the measurement is asked. The summaries of all current
//! files are folded into one set per measurement, extended in place while files are only added
//! (flushes) and rebuilt from the per-file summaries when one goes away. A warm query therefore
//! reads no file at all.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::AsArray;
use arrow::compute::interleave_record_batch;
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use datafusion::common::Result;
use datafusion::execution::SendableRecordBatchStream;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use crate::buffer::MeasurementKey;
use crate::meta::FileEntry;

/// (measurement, grouping columns) pairs whose summaries are kept; the least recently asked
/// one goes first.
const MAX_ENTRIES: usize = 64;
/// Memory all summaries may take; past it the least recently asked entries go, and an entry
/// larger on its own keeps only its folded rows (or nothing).
const MAX_BYTES: usize = 256 << 20;
/// A file whose summary keeps more rows than this and more than a quarter of the file is read
/// whole instead: there are too few rows per group for a summary to save anything.
const SMALL_SUMMARY_ROWS: usize = 1024;
/// Files read at once when summaries are missing (each scan is itself parallel).
const CONCURRENT_READS: usize = 2;

/// Pure: the rows whose `time` is the latest of their group (equal values in the `group`
/// columns, nulls equal), every one of them where several share that time, grouped in order of
/// first appearance. The batches must share one schema with a `time` column in µs.
pub fn latest_per_group(batches: &[RecordBatch], group: &[String]) -> Result<Option<RecordBatch>> {
    let Some(first) = batches.first() else {
        return Ok(None);
    };
    let schema = first.schema();
    let time_index = schema.index_of("time")?;
    let group_indices = group
        .iter()
        .map(|name| schema.index_of(name))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // No grouping columns: one group, whose key is empty.
    let converter = match group_indices.is_empty() {
        true => None,
        false => Some(RowConverter::new(
            group_indices
                .iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect(),
        )?),
    };
    // Group key → slot; each slot holds its latest time and the rows that have it.
    let mut slot_of: HashMap<Box<[u8]>, usize> = HashMap::new();
    let mut slots: Vec<(i64, Vec<(usize, usize)>)> = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let keys = converter
            .as_ref()
            .map(|converter| {
                let columns: Vec<_> = group_indices
                    .iter()
                    .map(|&i| Arc::clone(batch.column(i)))
                    .collect();
                converter.convert_columns(&columns)
            })
            .transpose()?;
        let times = batch
            .column(time_index)
            .as_primitive::<TimestampMicrosecondType>()
            .values();
        for (row, &time) in times.iter().enumerate() {
            let key = keys.as_ref().map_or(&[][..], |keys| keys.row(row).data());
            let slot = match slot_of.get(key) {
                Some(&slot) => slot,
                None => {
                    slot_of.insert(key.into(), slots.len());
                    slots.push((time, Vec::new()));
                    slots.len() - 1
                }
            };
            let (latest, rows) = &mut slots[slot];
            if time > *latest {
                *latest = time;
                rows.clear();
            }
            if time == *latest {
                rows.push((b, row));
            }
        }
    }
    let indices: Vec<(usize, usize)> = slots.into_iter().flat_map(|(_, rows)| rows).collect();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    Ok(Some(interleave_record_batch(&refs, &indices)?))
}

/// What answers a latest-rows scan over a set of files.
#[derive(Debug)]
pub struct LatestAnswer {
    /// The latest rows of every group over the summarised files.
    pub rows: Option<RecordBatch>,
    /// Files with too few rows per group to summarise: the scan reads them whole.
    pub whole_files: Vec<FileEntry>,
    /// Files this answer had to read to summarise them.
    pub files_read: u64,
}

#[derive(Debug, Clone)]
enum Summary {
    Rows(Option<RecordBatch>),
    TooManyGroups,
}

/// The summaries of one measurement for one set of grouping columns.
#[derive(Debug)]
struct Entry {
    /// The table schema the summaries are aligned to; a new column starts them afresh.
    schema: SchemaRef,
    per_file: HashMap<String, Summary>,
    /// The per-file summaries of these files, folded.
    folded: Option<(BTreeSet<String>, Option<RecordBatch>)>,
}

type EntryKey = (MeasurementKey, Vec<String>);
/// An entry, when it was last asked for (a tick of the cache's clock) and its bytes then.
type UsedEntry = (u64, usize, Arc<tokio::sync::Mutex<Entry>>);

#[derive(Debug, Default)]
pub struct LatestRowsCache {
    entries: std::sync::Mutex<HashMap<EntryKey, UsedEntry>>,
    clock: AtomicU64,
}

impl LatestRowsCache {
    /// The latest rows of every group of `group` over `files` (the measurement's current files,
    /// as the scan selected them), reading only files not yet summarised; `read` streams a
    /// file's rows in the table `schema`.
    pub async fn answer(
        &self,
        key: &MeasurementKey,
        group: &[String],
        files: &[FileEntry],
        schema: &SchemaRef,
        read: impl Fn(&FileEntry) -> Result<SendableRecordBatchStream> + Sync,
    ) -> Result<LatestAnswer> {
        let entry = self.entry(key, group, schema);
        // One query per entry computes at a time, so concurrent dashboards read each file once.
        let mut entry = entry.lock().await;
        if entry.schema != *schema {
            *entry = Entry::new(Arc::clone(schema));
        }
        let current: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        entry
            .per_file
            .retain(|path, _| current.contains(path.as_str()));
        // While files are only added, the folded rows stand for the files they folded; once one
        // is gone, every summary is folded again.
        let previous = entry
            .folded
            .take()
            .filter(|(paths, _)| paths.iter().all(|path| current.contains(path.as_str())));
        let folded_paths = previous.as_ref().map(|(paths, _)| paths);
        let is_folded = |path: &String| folded_paths.is_some_and(|paths| paths.contains(path));
        let missing: Vec<&FileEntry> = files
            .iter()
            .filter(|f| !entry.per_file.contains_key(&f.path) && !is_folded(&f.path))
            .collect();
        let files_read = missing.len() as u64;
        // A scan starts when its turn comes: started scans run ahead on their own tasks.
        // Boxed: the futures' concrete types would tie the stream to lifetimes the caller's
        // `Send` future cannot name.
        let read = &read;
        let reads: Vec<BoxFuture<'_, Result<(String, Summary)>>> = missing
            .into_iter()
            .map(|file| {
                async move {
                    let summary = summarise(read(file)?, file.rows, group).await?;
                    Ok((file.path.clone(), summary))
                }
                .boxed()
            })
            .collect();
        let computed: Vec<(String, Summary)> = futures::stream::iter(reads)
            .buffer_unordered(CONCURRENT_READS)
            .try_collect()
            .await?;
        entry.per_file.extend(computed);

        let mut whole_files = Vec::new();
        let mut summarised = BTreeSet::new();
        for file in files {
            if is_folded(&file.path) {
                summarised.insert(file.path.clone());
                continue;
            }
            match entry.per_file[&file.path] {
                Summary::Rows(_) => {
                    summarised.insert(file.path.clone());
                }
                Summary::TooManyGroups => whole_files.push(file.clone()),
            }
        }
        let rows = match previous {
            Some((paths, rows)) => {
                let added: Vec<&str> = summarised.difference(&paths).map(String::as_str).collect();
                match added.is_empty() {
                    true => rows,
                    false => fold(
                        rows.into_iter().chain(summaries(&entry, added.into_iter())),
                        group,
                    )?,
                }
            }
            None => fold(
                summaries(&entry, summarised.iter().map(String::as_str)),
                group,
            )?,
        };
        entry.folded = Some((summarised, rows.clone()));
        self.bound(key, group, &mut entry);
        Ok(LatestAnswer {
            rows,
            whole_files,
            files_read,
        })
    }

    fn entry(
        &self,
        key: &MeasurementKey,
        group: &[String],
        schema: &SchemaRef,
    ) -> Arc<tokio::sync::Mutex<Entry>> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut entries = self.entries.lock().expect("latest-rows cache lock");
        let entry_key = (key.clone(), group.to_vec());
        if let Some((used, _, entry)) = entries.get_mut(&entry_key) {
            *used = now;
            return Arc::clone(entry);
        }
        if entries.len() >= MAX_ENTRIES {
            evict_oldest(&mut entries, &entry_key);
        }
        let entry = Arc::new(tokio::sync::Mutex::new(Entry::new(Arc::clone(schema))));
        entries.insert(entry_key, (now, 0, Arc::clone(&entry)));
        entry
    }

    /// Records `entry`'s size and keeps the cache within [`MAX_BYTES`]: older entries go
    /// first; then this one drops its per-file summaries (new files still fold into its
    /// folded rows; a removed file means reading the files again), then its folded rows.
    fn bound(&self, key: &MeasurementKey, group: &[String], entry: &mut Entry) {
        let mut entries = self.entries.lock().expect("latest-rows cache lock");
        let entry_key = (key.clone(), group.to_vec());
        let mut bytes = entry.bytes();
        loop {
            let others: usize = entries
                .iter()
                .filter(|(k, _)| **k != entry_key)
                .map(|(_, (_, bytes, _))| bytes)
                .sum();
            if others + bytes <= MAX_BYTES {
                break;
            }
            if others > 0 {
                evict_oldest(&mut entries, &entry_key);
            } else if !entry.per_file.is_empty() {
                entry.per_file.clear();
                bytes = entry.bytes();
            } else {
                entry.folded = None;
                bytes = 0;
            }
        }
        if let Some((_, recorded, _)) = entries.get_mut(&entry_key) {
            *recorded = bytes;
        }
    }
}

/// Drops the least recently asked entry other than `keep`.
fn evict_oldest(entries: &mut HashMap<EntryKey, UsedEntry>, keep: &EntryKey) {
    if let Some(oldest) = entries
        .iter()
        .filter(|(k, _)| *k != keep)
        .min_by_key(|(_, (used, _, _))| *used)
        .map(|(k, _)| k.clone())
    {
        entries.remove(&oldest);
    }
}

impl Entry {
    fn new(schema: SchemaRef) -> Entry {
        Entry {
            schema,
            per_file: HashMap::new(),
            folded: None,
        }
    }

    fn bytes(&self) -> usize {
        let batch = |rows: &Option<RecordBatch>| {
            rows.as_ref().map_or(0, RecordBatch::get_array_memory_size)
        };
        let per_file: usize = self
            .per_file
            .values()
            .map(|summary| match summary {
                Summary::Rows(rows) => batch(rows),
                Summary::TooManyGroups => 0,
            })
            .sum();
        per_file + self.folded.as_ref().map_or(0, |(_, rows)| batch(rows))
    }
}

fn summaries<'a>(
    entry: &'a Entry,
    paths: impl Iterator<Item = &'a str> + 'a,
) -> impl Iterator<Item = RecordBatch> + 'a {
    paths.filter_map(|path| match &entry.per_file[path] {
        Summary::Rows(rows) => rows.clone(),
        Summary::TooManyGroups => None,
    })
}

fn fold(
    batches: impl Iterator<Item = RecordBatch>,
    group: &[String],
) -> Result<Option<RecordBatch>> {
    latest_per_group(&batches.collect::<Vec<_>>(), group)
}

/// A file's summary from its rows, folded batch by batch so memory holds one batch and the
/// summary so far; given up as soon as it keeps too many rows.
async fn summarise(
    mut rows: SendableRecordBatchStream,
    file_rows: u64,
    group: &[String],
) -> Result<Summary> {
    let mut latest: Option<RecordBatch> = None;
    while let Some(batch) = rows.try_next().await? {
        latest = latest_per_group(
            &latest.into_iter().chain([batch]).collect::<Vec<_>>(),
            group,
        )?;
        let kept = latest.as_ref().map_or(0, RecordBatch::num_rows);
        if kept > SMALL_SUMMARY_ROWS && kept as u64 * 4 > file_rows {
            return Ok(Summary::TooManyGroups);
        }
    }
    Ok(Summary::Rows(latest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Float64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(rows: &[(Option<&str>, i64, f64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("time", super::super::table::time_type(), false),
            Field::new("host", DataType::Utf8, true),
            Field::new("v", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())
                        .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn rows(batch: &RecordBatch) -> Vec<(Option<String>, i64, f64)> {
        let hosts = batch.column(1).as_string::<i32>();
        let times = batch.column(0).as_primitive::<TimestampMicrosecondType>();
        let values = batch
            .column(2)
            .as_primitive::<arrow::datatypes::Float64Type>();
        (0..batch.num_rows())
            .map(|i| {
                (
                    hosts.is_valid(i).then(|| hosts.value(i).to_string()),
                    times.value(i),
                    values.value(i),
                )
            })
            .collect()
    }

    #[test]
    fn keeps_every_row_at_each_groups_latest_time_across_batches() {
        let first = batch(&[
            (Some("a"), 5, 1.0),
            (Some("b"), 9, 2.0),
            (None, 3, 3.0),
            (Some("a"), 7, 4.0),
        ]);
        let second = batch(&[
            (Some("b"), 9, 5.0),
            (Some("a"), 6, 6.0),
            (None, 4, 7.0),
            (Some("b"), 8, 8.0),
        ]);
        let host = vec!["host".to_string()];
        let latest = latest_per_group(&[first.clone(), second.clone()], &host)
            .unwrap()
            .unwrap();
        assert_eq!(
            rows(&latest),
            vec![
                (Some("a".into()), 7, 4.0),
                (Some("b".into()), 9, 2.0),
                (Some("b".into()), 9, 5.0),
                (None, 4, 7.0),
            ],
            "ties are all kept, nulls form one group"
        );
        // Folding summaries gives what the rows together give.
        let folded = latest_per_group(
            &[
                latest_per_group(std::slice::from_ref(&second), &host)
                    .unwrap()
                    .unwrap(),
                latest_per_group(std::slice::from_ref(&first), &host)
                    .unwrap()
                    .unwrap(),
            ],
            &host,
        )
        .unwrap()
        .unwrap();
        let mut expected = rows(&latest);
        let mut got = rows(&folded);
        expected.sort_by(|x, y| x.partial_cmp(y).unwrap());
        got.sort_by(|x, y| x.partial_cmp(y).unwrap());
        assert_eq!(got, expected);

        let overall = latest_per_group(&[first, second], &[]).unwrap().unwrap();
        assert_eq!(
            rows(&overall),
            vec![(Some("b".into()), 9, 2.0), (Some("b".into()), 9, 5.0)]
        );
        assert!(latest_per_group(&[], &host).unwrap().is_none());
    }
}
