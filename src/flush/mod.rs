//! Buffer → Parquet → storage → manifest → WAL release, in that order.
//!
//! The order is the durability contract: a WAL segment may go only once every row in it is in a
//! file that the manifest lists. A crash between upload and registration leaves an unlisted
//! object; its key was journaled in [`PendingUploads`] before the upload, so start-up removes it
//! while the WAL replays its rows. Only such keys are ever removed: a bucket may hold files this
//! node did not write (an Arc installation being migrated, other writers).

pub mod parquet;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::join_all;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::buffer::{Buffers, FlushPolicy, MeasurementKey};
use crate::config::IngestConfig;
use crate::meta::{Meta, MetaCommand, SettleError};
use crate::metrics::metrics;
use crate::storage::{Storage, StorageError};
use crate::wal::Wal;

use self::parquet::{
    ChunkRows, EncodeError, FlushTarget, ParquetOptions, encode_hour, split_chunk,
};

#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("encoding {key} failed: {source}")]
    Encode { key: String, source: EncodeError },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("registering files of {key} failed: {source}")]
    Meta { key: String, source: SettleError },
    #[error("pending-uploads journal: {0}")]
    Journal(#[from] io::Error),
}

/// Local journal of object keys about to be uploaded, so that uploads a crash left unregistered
/// can be found and removed without touching anything else in the bucket.
pub struct PendingUploads {
    journal: Mutex<Journal>,
}

struct Journal {
    file: File,
    bytes: u64,
    /// Flushes between `record` and `registered`. A flush that failed never reports back, so its
    /// keys stay journaled until the next start-up cleans them.
    in_flight: usize,
}

/// Journal size above which it is emptied once no flush is in flight.
const JOURNAL_RESET_BYTES: u64 = 1 << 20;

impl PendingUploads {
    pub fn open(path: &Path) -> io::Result<PendingUploads> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let bytes = file.metadata()?.len();
        Ok(PendingUploads {
            journal: Mutex::new(Journal {
                file,
                bytes,
                in_flight: 0,
            }),
        })
    }

    /// Durably notes keys before they are uploaded. Blocking.
    pub fn record(&self, keys: &[String]) -> io::Result<()> {
        let lines: String = keys.iter().map(|k| format!("{k}\n")).collect();
        let mut journal = self.journal.lock().unwrap();
        journal.file.write_all(lines.as_bytes())?;
        journal.file.sync_data()?;
        journal.bytes += lines.len() as u64;
        journal.in_flight += 1;
        Ok(())
    }

    /// A recorded upload (a flush's, a compaction's or a delete's) registered its files, or
    /// removed them after failing: its keys are no longer pending.
    pub fn settled(&self) {
        let mut journal = self.journal.lock().unwrap();
        journal.in_flight -= 1;
        if journal.in_flight == 0 && journal.bytes > JOURNAL_RESET_BYTES {
            // Unsynced is fine: every key in it is registered, so a stale copy is harmless.
            match journal.file.set_len(0) {
                Ok(()) => journal.bytes = 0,
                Err(err) => {
                    tracing::warn!(error = %err, "could not reset the pending-uploads journal")
                }
            }
        }
    }

    /// A recorded upload failed or lost its swap: removes its objects. Once all are gone its
    /// keys are settled; any left stay journaled for start-up to remove.
    pub async fn abandon(&self, storage: &Storage, keys: &[String]) {
        let mut removed = true;
        for key in keys {
            if let Err(err) = storage.delete(key).await {
                removed = false;
                tracing::warn!(key, error = %err, "could not remove an unregistered upload; start-up will");
            }
        }
        if removed {
            self.settled();
        }
    }

    /// Every key noted since the journal was last emptied.
    fn keys(&self) -> io::Result<Vec<String>> {
        let mut journal = self.journal.lock().unwrap();
        let mut text = String::new();
        journal.file.rewind()?;
        journal.file.read_to_string(&mut text)?;
        // A torn last line is a key whose upload never started.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        Ok(complete.lines().map(str::to_string).collect())
    }

    fn clear(&self) -> io::Result<()> {
        let mut journal = self.journal.lock().unwrap();
        journal.file.set_len(0)?;
        journal.file.sync_data()?;
        journal.bytes = 0;
        Ok(())
    }
}

/// How long a measurement whose flush failed waits before the next attempt.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Who writes a flush's files.
#[derive(Debug, Clone)]
pub struct FlushOrigin {
    /// Recorded as the files' origin.
    pub node_id: String,
    /// The log this node's LSNs belong to ([`crate::meta::SINGLE_WRITER_LOG`], or its node id
    /// as a shared-storage writer).
    pub log: String,
}

pub struct Flusher {
    buffers: Arc<Buffers>,
    storage: Storage,
    meta: Arc<Meta>,
    pending_uploads: Arc<PendingUploads>,
    wal: Option<Arc<Wal>>,
    options: ParquetOptions,
    ingest: IngestConfig,
    node_id: String,
    log: String,
    /// One flush at a time per measurement, so registrations happen in LSN order.
    locks: Mutex<HashMap<MeasurementKey, Arc<tokio::sync::Mutex<()>>>>,
    workers: Semaphore,
    /// Last flush time handed out, in ns: file names must never repeat.
    last_flush_ns: AtomicI64,
    /// Set once storage has been reconciled with the manifest; no flush may upload before.
    reconciled: tokio::sync::OnceCell<()>,
    /// In a cluster: the writer epoch this node writes under (0 until it is the writer). Its
    /// registrations carry it, so once another node took over they are refused.
    writer_epoch: AtomicU64,
}

impl Flusher {
    pub fn new(
        buffers: Arc<Buffers>,
        storage: Storage,
        meta: Arc<Meta>,
        pending_uploads: PendingUploads,
        wal: Option<Arc<Wal>>,
        ingest: IngestConfig,
        FlushOrigin { node_id, log }: FlushOrigin,
    ) -> Flusher {
        let workers = match ingest.flush_workers {
            0 => (2 * std::thread::available_parallelism().map_or(1, |n| n.get())).clamp(2, 8),
            n => n,
        };
        Flusher {
            buffers,
            storage,
            meta,
            pending_uploads: Arc::new(pending_uploads),
            wal,
            options: ParquetOptions::from_config(&ingest),
            ingest,
            node_id,
            log,
            locks: Mutex::default(),
            workers: Semaphore::new(workers),
            last_flush_ns: AtomicI64::new(0),
            reconciled: tokio::sync::OnceCell::new(),
            writer_epoch: AtomicU64::new(0),
        }
    }

    /// From now on, files are registered as the cluster's writer under `epoch`.
    pub fn write_under_epoch(&self, epoch: u64) {
        self.writer_epoch.store(epoch, Ordering::SeqCst);
    }

    /// How long a client waits for a flush it asked for (`ingest.flush_timeout_seconds`).
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.ingest.flush_timeout_seconds.max(1))
    }

    pub fn policy(&self) -> FlushPolicy {
        FlushPolicy {
            max_rows: self.ingest.max_buffer_size,
            max_age: Duration::from_millis(self.ingest.max_buffer_age_ms),
        }
    }

    /// Writes out everything buffered for `key` when the call starts (and any chunk a failed
    /// flush left behind). Returns the number of files written.
    pub async fn flush(&self, key: &MeasurementKey) -> Result<usize, FlushError> {
        self.ensure_reconciled().await?;
        let lock = Arc::clone(self.locks.lock().unwrap().entry(key.clone()).or_default());
        let _serial = lock.lock().await;
        let _worker = self
            .workers
            .acquire()
            .await
            .expect("semaphore never closed");
        let mut written = 0;
        loop {
            let Some((chunk, was_active)) = self.buffers.lock().next_flush_chunk(key) else {
                break;
            };
            // A retried chunk may have been registered by an attempt whose caller went away.
            let registered =
                self.meta
                    .state()
                    .flushed_through(&self.log, &key.database, &key.measurement)
                    >= chunk.max_lsn;
            if !registered {
                let counters = &metrics().flush;
                match self.write_chunk(key, &chunk).await {
                    Ok(files) => {
                        written += files;
                        counters.flushes.inc();
                        counters.records_written.inc_by(chunk.rows as u64);
                    }
                    Err(err) => {
                        counters.failures.inc();
                        return Err(err);
                    }
                }
            }
            let durable_through = {
                let mut buffers = self.buffers.lock();
                buffers.chunk_flushed(key, &chunk);
                buffers.durable_through()
            };
            if let Some(wal) = &self.wal {
                wal.release_through(durable_through);
            }
            if was_active {
                break;
            }
        }
        Ok(written)
    }

    /// Flushes every measurement with buffered rows; the first error is returned after all
    /// measurements were tried.
    pub async fn flush_all(&self) -> Result<usize, FlushError> {
        self.flush_where(|_| true).await
    }

    /// Flushes every measurement of `database` with buffered rows, like [`Flusher::flush_all`].
    pub async fn flush_database(&self, database: &str) -> Result<usize, FlushError> {
        self.flush_where(|key| key.database == database).await
    }

    async fn flush_where(
        &self,
        wanted: impl Fn(&MeasurementKey) -> bool,
    ) -> Result<usize, FlushError> {
        let keys = self.buffers.lock().with_data();
        let flushes = keys
            .iter()
            .filter(|key| wanted(key))
            .map(|key| self.flush(key));
        let mut written = 0;
        for result in join_all(flushes).await {
            written += result?;
        }
        Ok(written)
    }

    /// The journal every upload of this node goes through (compaction outputs too).
    pub fn pending_uploads(&self) -> &Arc<PendingUploads> {
        &self.pending_uploads
    }

    /// Runs start-up clean-up once it can succeed. It happens here rather than before
    /// the node accepts writes so that an unreachable storage backend delays flushes (the WAL
    /// holds the rows) instead of keeping the node down. Anything else that uploads (compaction)
    /// must await it first: the clean-up removes journaled keys the manifest does not list.
    pub async fn ensure_reconciled(&self) -> Result<(), FlushError> {
        self.reconciled
            .get_or_try_init(|| async {
                let removed =
                    remove_unregistered_uploads(&self.storage, &self.meta, &self.pending_uploads)
                        .await?;
                if removed > 0 {
                    tracing::warn!(removed, "removed uploads that a crash left unregistered");
                }
                Ok::<_, FlushError>(())
            })
            .await?;
        Ok(())
    }

    async fn write_chunk(
        &self,
        key: &MeasurementKey,
        chunk: &Arc<crate::buffer::Chunk>,
    ) -> Result<usize, FlushError> {
        let flushed_at = self.unique_flush_time();
        let target = Arc::new(FlushTarget {
            database: key.database.clone(),
            measurement: key.measurement.clone(),
            sort_keys: self.ingest.sort_keys_for(&key.measurement),
            flushed_at,
            node_id: self.node_id.clone(),
            log: self.log.clone(),
            min_lsn: chunk.min_lsn,
            max_lsn: chunk.max_lsn,
        });
        let encode_error = |source| FlushError::Encode {
            key: key.to_string(),
            source,
        };
        let split = Arc::clone(chunk);
        let ChunkRows {
            batches,
            hours,
            tags,
        } = tokio::task::spawn_blocking(move || split_chunk(&split))
            .await
            .expect("split task panicked")
            .map_err(encode_error)?;
        // Hours are independent files: encode them in parallel.
        let tags = Arc::new(tags);
        let encodings = hours.into_iter().map(|(hour, rows)| {
            let (batches, target, tags, options) = (
                Arc::clone(&batches),
                Arc::clone(&target),
                Arc::clone(&tags),
                self.options.clone(),
            );
            tokio::task::spawn_blocking(move || {
                encode_hour(&batches, rows, hour, &tags, &target, &options)
            })
        });
        let files = join_all(encodings)
            .await
            .into_iter()
            .map(|encoded| encoded.expect("encode task panicked").map_err(encode_error))
            .collect::<Result<Vec<_>, _>>()?;

        let journal = Arc::clone(&self.pending_uploads);
        let keys: Vec<String> = files.iter().map(|f| f.entry.path.clone()).collect();
        let recorded = keys.clone();
        tokio::task::spawn_blocking(move || journal.record(&recorded))
            .await
            .expect("journal task panicked")?;
        let uploads = join_all(
            files
                .iter()
                .map(|f| self.storage.put(&f.entry.path, f.bytes.clone())),
        )
        .await;
        if let Some(err) = uploads.into_iter().find_map(Result::err) {
            self.pending_uploads.abandon(&self.storage, &keys).await;
            return Err(err.into());
        }

        let count = files.len();
        let command = MetaCommand::AddFiles {
            database: key.database.clone(),
            measurement: key.measurement.clone(),
            files: files.iter().map(|f| f.entry.clone()).collect(),
            flushed_through_lsn: chunk.max_lsn,
            log: self.log.clone(),
            writer_epoch: Some(self.writer_epoch.load(Ordering::SeqCst)).filter(|e| *e > 0),
        };
        let meta = Arc::clone(&self.meta);
        // Rides out a stalled or leaderless cluster: the rows stay in the WAL and the buffer
        // (which bounds what is acknowledged meanwhile) until the files are registered.
        let committed = tokio::task::spawn_blocking(move || meta.commit_until_settled(command))
            .await
            .expect("meta commit task panicked");
        match committed {
            Ok(()) => {
                self.pending_uploads.settled();
                Ok(count)
            }
            Err(source @ SettleError::Rejected(_)) => {
                self.pending_uploads.abandon(&self.storage, &keys).await;
                Err(FlushError::Meta {
                    key: key.to_string(),
                    source,
                })
            }
            // The files may be registered: they stay journaled, and start-up removes them
            // only if they are not.
            Err(source @ SettleError::Unsettled(_)) => Err(FlushError::Meta {
                key: key.to_string(),
                source,
            }),
        }
    }

    fn unique_flush_time(&self) -> DateTime<Utc> {
        let now = Utc::now()
            .timestamp_nanos_opt()
            .expect("clock within i64 ns");
        let previous = self
            .last_flush_ns
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .expect("update closure always succeeds");
        DateTime::from_timestamp_nanos(now.max(previous + 1))
    }

    /// Flushes measurements as they fill up (`requests`) or age, until `stop` turns true.
    pub async fn run(
        self: Arc<Self>,
        mut requests: mpsc::UnboundedReceiver<MeasurementKey>,
        mut stop: watch::Receiver<bool>,
    ) {
        let policy = self.policy();
        let period =
            (policy.max_age / 4).clamp(Duration::from_millis(10), Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let in_flight: Arc<Mutex<HashSet<MeasurementKey>>> = Arc::default();
        let failed_at: Arc<Mutex<HashMap<MeasurementKey, Instant>>> = Arc::default();
        loop {
            let keys = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                Some(key) = requests.recv() => vec![key],
                _ = tick.tick() => self.buffers.lock().due_for_flush(policy, Instant::now()),
            };
            for key in keys {
                let retry_pending = failed_at
                    .lock()
                    .unwrap()
                    .get(&key)
                    .is_some_and(|at| at.elapsed() < RETRY_DELAY);
                if retry_pending || !in_flight.lock().unwrap().insert(key.clone()) {
                    continue;
                }
                let (flusher, in_flight, failed_at) = (
                    Arc::clone(&self),
                    Arc::clone(&in_flight),
                    Arc::clone(&failed_at),
                );
                tokio::spawn(async move {
                    match flusher.flush(&key).await {
                        Ok(_) => {
                            failed_at.lock().unwrap().remove(&key);
                        }
                        Err(err) => {
                            tracing::error!(measurement = %key, error = %err, "flush failed; rows stay in the WAL and will be retried");
                            failed_at
                                .lock()
                                .unwrap()
                                .insert(key.clone(), Instant::now());
                        }
                    }
                    in_flight.lock().unwrap().remove(&key);
                });
            }
        }
    }
}

/// Removes what interrupted flushes uploaded but never registered: journaled keys the manifest
/// does not list, and the local backend's staging files of journaled keys — never anything this
/// node did not journal, which on shared storage may be another node's. Must run before any
/// flush starts. Returns how many objects were removed.
async fn remove_unregistered_uploads(
    storage: &Storage,
    meta: &Meta,
    journal: &Arc<PendingUploads>,
) -> Result<usize, FlushError> {
    let reader = Arc::clone(journal);
    let keys = tokio::task::spawn_blocking(move || reader.keys())
        .await
        .expect("journal task panicked")?;
    let mut removed = storage.remove_local_staging_files(keys.clone()).await?;
    let unregistered: Vec<String> = {
        let state = meta.state();
        keys.into_iter()
            // A removed file's object is the reclaimer's, after its grace period.
            .filter(|key| state.file(key).is_none() && !state.is_tombstoned(key))
            .collect()
    };
    for key in &unregistered {
        tracing::info!(key = %key, "removing unregistered data file left by an interrupted flush");
        storage.delete(key).await?;
        removed += 1;
    }
    let clearer = Arc::clone(journal);
    tokio::task::spawn_blocking(move || clearer.clear())
        .await
        .expect("journal task panicked")?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageConfig;
    use crate::ingest::MeasurementBatch;
    use crate::meta::FileEntry;
    use arrow::array::{Array, ArrayRef, Float64Array, RecordBatch, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema};

    /// `rows` rows of `cpu` in one hour.
    fn cpu_rows(rows: i64) -> MeasurementBatch {
        let time =
            TimestampMicrosecondArray::from((0..rows).collect::<Vec<_>>()).with_timezone("UTC");
        let usage = Float64Array::from((0..rows).map(|r| r as f64).collect::<Vec<_>>());
        let schema = Schema::new(vec![
            Field::new("time", time.data_type().clone(), false),
            Field::new("usage", usage.data_type().clone(), true),
        ]);
        let columns = vec![Arc::new(time) as ArrayRef, Arc::new(usage) as ArrayRef];
        MeasurementBatch {
            measurement: "cpu".into(),
            batch: RecordBatch::try_new(Arc::new(schema), columns).unwrap(),
            tags: vec![],
        }
    }

    /// Two shared-storage writers flush the same measurement and hour at the same nanosecond
    /// into one store: both objects are written, both registered, and each writer's position
    /// moves in its own log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_writers_flushing_in_the_same_nanosecond_keep_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::from_config(&StorageConfig {
            local_path: dir.path().join("bucket").to_string_lossy().into_owned(),
            ..StorageConfig::default()
        })
        .unwrap();
        let meta = Arc::new(Meta::open(&dir.path().join("meta")).unwrap());
        let key = MeasurementKey {
            database: "db".into(),
            measurement: "cpu".into(),
        };
        let the_same_moment = Utc::now().timestamp_nanos_opt().unwrap() + 3_600_000_000_000;
        let flushers = ["writer-a", "writer-b"].map(|writer| {
            let buffers = Arc::new(Buffers::new(&meta.state(), 0));
            {
                let mut set = buffers.lock();
                let prepared = set.prepare("db", vec![cpu_rows(10)]).unwrap();
                set.insert(1, prepared, usize::MAX);
            }
            let journal = PendingUploads::open(&dir.path().join(writer).join("pending")).unwrap();
            let flusher = Flusher::new(
                buffers,
                storage.clone(),
                Arc::clone(&meta),
                journal,
                None,
                IngestConfig::default(),
                FlushOrigin {
                    node_id: writer.into(),
                    log: writer.into(),
                },
            );
            // Both hand out the next nanosecond after the same one.
            flusher
                .last_flush_ns
                .store(the_same_moment, Ordering::SeqCst);
            flusher
        });
        let (a, b) = tokio::join!(flushers[0].flush(&key), flushers[1].flush(&key));
        assert_eq!((a.unwrap(), b.unwrap()), (1, 1));

        let files: Vec<FileEntry> = meta
            .state()
            .files_of("db", "cpu")
            .into_iter()
            .cloned()
            .collect();
        let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let stamp = |path: &str| path.rsplit_once("_w-").unwrap().0.to_owned();
        assert_eq!(
            stamp(names[0]),
            stamp(names[1]),
            "the same flush time: {names:?}"
        );
        assert!(names[0].ends_with("_w-writer-a.parquet"), "{names:?}");
        assert!(names[1].ends_with("_w-writer-b.parquet"), "{names:?}");
        for file in &files {
            let object = storage.get(&file.path).await.unwrap();
            assert_eq!(object.len() as u64, file.size_bytes);
            assert_eq!((file.rows, file.min_lsn, file.max_lsn), (10, 1, 1));
        }
        let state = meta.state();
        assert_eq!(state.flushed_through("writer-a", "db", "cpu"), 1);
        assert_eq!(state.flushed_through("writer-b", "db", "cpu"), 1);
    }
}
