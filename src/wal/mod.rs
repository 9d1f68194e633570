//! Write-ahead log: durability before acknowledgement.
//!
//! Every accepted request becomes one entry with a log sequence number (LSN), the position a
//! replica will later follow. Entries go to a single writer thread that writes everything queued
//! since its last sync and then syncs once (group commit), so concurrent requests share one
//! `fdatasync`. A segment file is given up only when the flush path says every row of it is in
//! Parquet files registered in the manifest ([`Wal::release_through`]); it is then kept as a
//! spare and overwritten by a later segment, because deleting large files stalls the syncs of
//! the file system's journal.

mod feed;
mod segment;

pub use feed::{Entry, Feed, FeedLimits};

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::config::WalSyncMode;
use crate::frame::encode_record;

/// Log sequence number: strictly increasing over all entries this node ever wrote.
pub type Lsn = u64;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WalError {
    #[error("WAL I/O error on {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("WAL is closed")]
    Closed,
    /// Durable here, but not copied to shared storage: not acknowledged (it may be stored).
    #[error("the write is in this writer's WAL but could not be copied to shared storage: {0}")]
    NotShipped(String),
    /// A damaged record with intact entries after it: not a torn tail, so cutting there would
    /// drop acknowledged writes. An operator decides (restore the file, or move it aside).
    #[error(
        "WAL segment {} is damaged at byte {offset}, and {later}; start-up stops rather than \
         drop entries that may have been acknowledged",
        path.display()
    )]
    Damaged {
        path: PathBuf,
        offset: usize,
        /// Where intact entries follow the damage.
        later: String,
    },
    #[error(
        "WAL entry {lsn} in segment {} at byte {offset} cannot be replayed ({reason}); \
         start-up stops rather than drop it",
        path.display()
    )]
    Unreplayable {
        path: PathBuf,
        offset: usize,
        lsn: Lsn,
        reason: String,
    },
}

impl WalError {
    fn io(path: &Path, err: std::io::Error) -> Self {
        WalError::Io {
            path: path.to_path_buf(),
            message: err.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WalOptions {
    pub dir: PathBuf,
    pub sync_mode: WalSyncMode,
    pub max_segment_bytes: u64,
    pub max_segment_age: Duration,
    /// Publish durable entries for replicas (`cluster.replication_enabled` on a writer).
    pub feed: Option<FeedLimits>,
    /// Copy each durable group to shared storage before acknowledging it (`cluster.shared_wal`).
    pub ship: Option<Shipping>,
}

/// Where a writer copies its durable groups of entries, so that another writer can flush them
/// if this one is lost for good. One object per group (`{first}-{last}.wal`, LSNs zero-padded,
/// holding the group's records as the segment has them); objects go once their entries are in
/// registered files.
#[derive(Clone)]
pub struct Shipping {
    pub storage: crate::storage::Storage,
    /// Key prefix of this log's objects, ending in `/`.
    pub prefix: String,
    /// The runtime the object-store calls run on (the writer thread blocks on them).
    pub runtime: tokio::runtime::Handle,
    /// Objects a previous run shipped whose entries may not be flushed yet: (last LSN, key).
    pub shipped: Vec<(Lsn, String)>,
}

impl std::fmt::Debug for Shipping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipping")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Key of the shipped group holding entries `first..=last`.
pub fn shipped_key(prefix: &str, first: Lsn, last: Lsn) -> String {
    format!("{prefix}{first:020}-{last:020}.wal")
}

/// The LSN range a shipped group's key names.
pub fn shipped_range(key: &str) -> Option<(Lsn, Lsn)> {
    let name = key.rsplit('/').next()?.strip_suffix(".wal")?;
    let (first, last) = name.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// Attempts at copying one group before its entries are refused.
const SHIP_ATTEMPTS: u32 = 3;

/// A segment that is no longer written to, with the last LSN it holds.
#[derive(Debug, Clone)]
pub struct ClosedSegment {
    path: PathBuf,
    last_lsn: Option<Lsn>,
    bytes: u64,
}

/// How many of the oldest closed segments may go: those whose entries are all in registered
/// files (`last ≤ flushed_through`), except the ones holding entries a replica still needs
/// (`last ≥ needed_from`), which are kept while they add up to at most `max_held_bytes`.
fn segments_to_release(
    closed: &[ClosedSegment],
    flushed_through: Lsn,
    needed_from: Lsn,
    max_held_bytes: u64,
) -> usize {
    let flushed = closed
        .iter()
        .take_while(|s| s.last_lsn.is_none_or(|last| last <= flushed_through))
        .count();
    let mut count = closed[..flushed]
        .iter()
        .take_while(|s| s.last_lsn.is_none_or(|last| last < needed_from))
        .count();
    let mut held: u64 = closed[count..flushed].iter().map(|s| s.bytes).sum();
    while held > max_held_bytes && count < flushed {
        held -= closed[count].bytes;
        count += 1;
    }
    count
}

/// What replay found on disk.
#[derive(Debug, Default)]
pub struct Recovery {
    pub last_lsn: Option<Lsn>,
    pub entries: u64,
    pub truncated_segments: usize,
    segments: Vec<ClosedSegment>,
    spares: Vec<PathBuf>,
}

/// Spare segment files kept for reuse; released segments beyond this are deleted.
const MAX_SPARES: usize = 4;

/// Reads every segment in log order, handing each intact entry to `on_entry`. A torn tail
/// (a crash mid-write) is cut off the file; it is never an error. Anything that would lose an
/// entry that may have been acknowledged is: a damaged record with intact entries after it in
/// its own segment or in a later one (a segment is complete before the next is started), or an
/// entry `on_entry` cannot take.
pub fn replay(
    dir: &Path,
    mut on_entry: impl FnMut(Lsn, &[u8]) -> Result<(), String>,
) -> Result<Recovery, WalError> {
    std::fs::create_dir_all(dir).map_err(|e| WalError::io(dir, e))?;
    let listing = segment::list_segments(dir)?;
    let mut recovery = Recovery {
        spares: listing.spares,
        ..Recovery::default()
    };
    // A segment whose damaged tail was cut, until a later segment shows entries followed it.
    let mut damaged_earlier: Option<(PathBuf, usize)> = None;
    for (first_lsn, path) in listing.segments {
        let contents = segment::read_segment(&path, first_lsn)?;
        let mut last_lsn = None;
        let mut records = contents.records();
        loop {
            let offset = segment::HEADER_LEN + records.valid_len();
            let Some((lsn, payload)) = records.next() else {
                break;
            };
            if let Some((damaged, at)) = damaged_earlier.take() {
                return Err(WalError::Damaged {
                    path: damaged,
                    offset: at,
                    later: format!("segment {} holds later entries", path.display()),
                });
            }
            if let Err(reason) = on_entry(lsn, payload) {
                return Err(WalError::Unreplayable {
                    path,
                    offset,
                    lsn,
                    reason,
                });
            }
            last_lsn = Some(lsn);
            recovery.entries += 1;
        }
        if contents.damaged {
            damaged_earlier = Some((path.clone(), contents.valid_len));
        }
        if contents.torn {
            tracing::warn!(
                segment = %path.display(),
                valid_bytes = contents.valid_len,
                file_bytes = contents.data.len(),
                "WAL segment ends in a torn or stale record; cutting it there"
            );
            segment::truncate_segment(&path, contents.valid_len)?;
            recovery.truncated_segments += 1;
        }
        if last_lsn.is_some() {
            recovery.last_lsn = last_lsn;
        }
        recovery.segments.push(ClosedSegment {
            path,
            last_lsn,
            bytes: (segment::HEADER_LEN + contents.valid_len) as u64,
        });
    }
    Ok(recovery)
}

enum Command {
    Append {
        lsn: Lsn,
        parts: Vec<Bytes>,
        done: oneshot::Sender<Result<(), WalError>>,
    },
    Release {
        through: Lsn,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// Handle to the WAL writer thread.
pub struct Wal {
    commands: mpsc::Sender<Command>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    groups_written: Arc<AtomicU64>,
    feed: Option<Arc<Feed>>,
}

impl Wal {
    /// Opens a fresh segment starting at `next_lsn` and starts the writer. Segments found by
    /// [`replay`] are kept until released.
    pub fn start(options: WalOptions, next_lsn: Lsn, recovery: Recovery) -> Result<Wal, WalError> {
        // Replayed segments with no entries hold nothing to protect (and one of them may carry
        // the name the new segment needs).
        let mut closed = Vec::new();
        for replayed in recovery.segments {
            if replayed.last_lsn.is_some() {
                closed.push(replayed);
            } else {
                segment::remove_segment(&replayed.path)?;
            }
        }
        let mut spares = recovery.spares;
        spares.truncate(MAX_SPARES);
        let (file, path) = match spares.pop() {
            Some(spare) => segment::reuse_spare(&options.dir, &spare, next_lsn)?,
            None => segment::create_segment(&options.dir, next_lsn)?,
        };
        let (commands, receiver) = mpsc::channel();
        let groups_written = Arc::new(AtomicU64::new(0));
        let feed = options
            .feed
            .map(|limits| Arc::new(Feed::new(options.dir.clone(), limits, next_lsn - 1)));
        let writer = Writer {
            feed: feed.clone(),
            groups_written: Arc::clone(&groups_written),
            file,
            path,
            size: segment::HEADER_LEN as u64,
            opened_at: Instant::now(),
            segment_last_lsn: None,
            flushed_through: 0,
            closed,
            spares,
            buf: Vec::with_capacity(1 << 20),
            group_first_lsn: None,
            shipped: options
                .ship
                .iter()
                .flat_map(|s| s.shipped.iter().cloned())
                .collect(),
            options,
        };
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || {
                crate::logging::enter_node_span();
                writer.run(receiver)
            })
            .map_err(|e| WalError::io(Path::new("wal-writer thread"), e))?;
        Ok(Wal {
            commands,
            thread: std::sync::Mutex::new(Some(thread)),
            groups_written,
            feed,
        })
    }

    /// Durable entries for replicas, when the WAL publishes them.
    pub fn feed(&self) -> Option<&Arc<Feed>> {
        self.feed.as_ref()
    }

    /// How many groups of entries were written (each with one sync, unless `async`).
    pub fn groups_written(&self) -> u64 {
        self.groups_written.load(Ordering::Relaxed)
    }

    /// Queues an entry; the receiver resolves once it is durable per the sync mode.
    /// Callers must append in LSN order.
    pub fn append(&self, lsn: Lsn, parts: Vec<Bytes>) -> oneshot::Receiver<Result<(), WalError>> {
        let (done, receiver) = oneshot::channel();
        if let Err(mpsc::SendError(Command::Append { done, .. })) =
            self.commands.send(Command::Append { lsn, parts, done })
        {
            let _ = done.send(Err(WalError::Closed));
        }
        receiver
    }

    /// Allows deleting every closed segment whose entries all have LSN ≤ `through`.
    pub fn release_through(&self, through: Lsn) {
        let _ = self.commands.send(Command::Release { through });
    }

    /// Syncs what is written and stops the writer thread.
    pub async fn close(&self) {
        let (done, receiver) = oneshot::channel();
        if self.commands.send(Command::Close { done }).is_ok() {
            let _ = receiver.await;
        }
        let thread = self.thread.lock().unwrap().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Largest amount of queued entries written before one sync: bounds the latency of a group.
const MAX_GROUP_BYTES: usize = 32 << 20;

struct Writer {
    groups_written: Arc<AtomicU64>,
    feed: Option<Arc<Feed>>,
    file: File,
    path: PathBuf,
    size: u64,
    opened_at: Instant,
    /// Last entry written to the current segment; `None` while it is empty.
    segment_last_lsn: Option<Lsn>,
    /// Every entry at or below this is in registered files.
    flushed_through: Lsn,
    closed: Vec<ClosedSegment>,
    spares: Vec<PathBuf>,
    buf: Vec<u8>,
    /// First entry of the group in `buf`.
    group_first_lsn: Option<Lsn>,
    /// Shipped objects not yet released, oldest first: (last LSN, key).
    shipped: std::collections::VecDeque<(Lsn, String)>,
    options: WalOptions,
}

impl Writer {
    fn run(mut self, receiver: mpsc::Receiver<Command>) {
        let tick = Duration::from_secs(1).min(self.options.max_segment_age);
        loop {
            let first = match receiver.recv_timeout(tick) {
                Ok(command) => command,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.rotate_if_due();
                    // Replicas that caught up may have let go of held segments.
                    self.release(self.flushed_through);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.finish(),
            };
            let mut waiters = Vec::new();
            let mut published = Vec::new();
            let mut releases = Vec::new();
            let mut close = None;
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append { lsn, parts, done } => {
                        let slices: Vec<&[u8]> = parts.iter().map(|p| p.as_ref()).collect();
                        encode_record(&mut self.buf, lsn, &slices);
                        self.group_first_lsn.get_or_insert(lsn);
                        self.segment_last_lsn = Some(lsn);
                        waiters.push(done);
                        if self.feed.is_some() {
                            published.push(Entry { lsn, parts });
                        }
                    }
                    Command::Release { through } => releases.push(through),
                    Command::Close { done } => {
                        close = Some(done);
                        break;
                    }
                }
                if self.buf.len() < MAX_GROUP_BYTES {
                    next = receiver.try_recv().ok();
                }
            }
            let group_bytes = self.buf.len() as u64;
            let outcome = self.write_group();
            let counters = &crate::metrics::metrics().wal;
            match &outcome {
                Ok(()) if !waiters.is_empty() => {
                    counters.entries.inc_by(waiters.len() as u64);
                    counters.bytes.inc_by(group_bytes);
                    counters.syncs.inc();
                }
                Ok(()) => {}
                Err(_) => {
                    counters.failed_writes.inc();
                }
            }
            if let Some(feed) = &self.feed {
                feed.publish(published);
            }
            for waiter in waiters {
                let _ = waiter.send(outcome.clone());
            }
            if let Some(through) = releases.into_iter().max() {
                self.release(through);
            }
            if let Some(done) = close {
                self.finish();
                let _ = done.send(());
                return;
            }
            self.rotate_if_due();
        }
    }

    /// Writes and syncs the group, then ships it when shipping is on.
    fn write_group(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self
            .file
            .write_all(&self.buf)
            .and_then(|_| match self.options.sync_mode {
                WalSyncMode::Fdatasync => self.file.sync_data(),
                WalSyncMode::Fsync => self.file.sync_all(),
                WalSyncMode::Async => Ok(()),
            });
        if let Err(err) = result {
            // After a failed write or sync the file's durable contents are unknown; carrying on
            // could acknowledge entries that replay will not find. A restart replays what is
            // really there.
            tracing::error!(path = %self.path.display(), error = %err, "WAL write failed; aborting");
            std::process::abort();
        }
        self.size += self.buf.len() as u64;
        let shipped = match (self.group_first_lsn.take(), self.segment_last_lsn) {
            (Some(first), Some(last)) => self.ship(first, last),
            _ => Ok(()),
        };
        self.buf.clear();
        self.groups_written.fetch_add(1, Ordering::Relaxed);
        shipped
    }

    /// Copies the group in `buf` to shared storage, retrying briefly; the writer thread waits,
    /// and appends queue meanwhile (they form the next group).
    fn ship(&mut self, first: Lsn, last: Lsn) -> Result<(), WalError> {
        let Some(shipping) = &self.options.ship else {
            return Ok(());
        };
        let key = shipped_key(&shipping.prefix, first, last);
        let bytes = Bytes::copy_from_slice(&self.buf);
        let mut failure = String::new();
        for attempt in 0..SHIP_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200 << attempt));
            }
            let put = shipping.storage.put(&key, bytes.clone());
            match shipping.runtime.block_on(put) {
                Ok(()) => {
                    self.shipped.push_back((last, key));
                    return Ok(());
                }
                Err(err) => failure = err.to_string(),
            }
        }
        tracing::error!(key = %key, error = %failure, "could not ship a WAL group; its writes are refused");
        Err(WalError::NotShipped(failure))
    }

    /// Deletes shipped objects whose entries are all in registered files.
    fn release_shipped(&mut self) {
        let Some(shipping) = &self.options.ship else {
            return;
        };
        while let Some((last, key)) = self.shipped.front() {
            if *last > self.flushed_through {
                break;
            }
            // One left behind is harmless: whoever replays it skips flushed entries.
            if let Err(err) = shipping.runtime.block_on(shipping.storage.delete(key)) {
                tracing::warn!(key = %key, error = %err, "could not delete a shipped WAL group");
                break;
            }
            self.shipped.pop_front();
        }
    }

    /// Rotates when the segment is full or old, but never an empty one: its successor would
    /// need the same name.
    fn rotate_if_due(&mut self) {
        let due = self.size >= self.options.max_segment_bytes
            || self.opened_at.elapsed() >= self.options.max_segment_age;
        if due
            && let Some(last) = self.segment_last_lsn
            && let Err(err) = self.rotate(last + 1)
        {
            tracing::error!(error = %err, "WAL segment rotation failed");
        }
    }

    /// Starts the segment whose first entry will be `next_first`, reusing a spare file when
    /// there is one. The old segment needs no sync: every group written to it was synced as the
    /// mode requires.
    fn rotate(&mut self, next_first: Lsn) -> Result<(), WalError> {
        // A reused spare still holds its old records past what this segment wrote. Cut them
        // off before a later segment exists, so a closed segment ends at its last record and
        // bytes after it at replay are damage, not a stale remnant cut mid-record.
        self.file
            .set_len(self.size)
            .and_then(|_| self.file.sync_all())
            .map_err(|e| WalError::io(&self.path, e))?;
        let (file, path) = match self.spares.pop() {
            Some(spare) => segment::reuse_spare(&self.options.dir, &spare, next_first)?,
            None => segment::create_segment(&self.options.dir, next_first)?,
        };
        let old_path = std::mem::replace(&mut self.path, path);
        self.file = file;
        self.closed.push(ClosedSegment {
            path: old_path,
            last_lsn: self.segment_last_lsn.take(),
            bytes: self.size,
        });
        self.size = segment::HEADER_LEN as u64;
        self.opened_at = Instant::now();
        Ok(())
    }

    fn release(&mut self, through: Lsn) {
        self.flushed_through = self.flushed_through.max(through);
        self.release_shipped();
        let (needed_from, max_held_bytes) = match &self.feed {
            Some(feed) => (feed.needed_from(), feed.limits().max_held_bytes),
            None => (Lsn::MAX, 0),
        };
        let count = segments_to_release(
            &self.closed,
            self.flushed_through,
            needed_from,
            max_held_bytes,
        );
        if count == 0 {
            return;
        }
        let released: Vec<ClosedSegment> = self.closed.drain(..count).collect();
        for closed in released {
            let outcome = if self.spares.len() < MAX_SPARES {
                segment::make_spare(&closed.path).map(|spare| self.spares.push(spare))
            } else {
                segment::remove_segment(&closed.path)
            };
            // A released segment left in place is harmless: replay skips rows already in
            // registered files.
            if let Err(err) = outcome {
                tracing::error!(error = %err, "could not recycle released WAL segment");
            }
        }
    }

    fn finish(&mut self) {
        if let Err(err) = self.file.sync_all() {
            tracing::error!(error = %err, "final WAL sync failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::RECORD_HEADER_LEN;

    fn options(dir: &Path, max_segment_bytes: u64) -> WalOptions {
        WalOptions {
            dir: dir.to_path_buf(),
            sync_mode: WalSyncMode::Fdatasync,
            max_segment_bytes,
            max_segment_age: Duration::from_secs(3600),
            feed: None,
            ship: None,
        }
    }

    #[tokio::test]
    async fn the_feed_serves_its_window_then_the_segments_and_says_where_the_log_starts() {
        let dir = tempfile::tempdir().unwrap();
        let options = WalOptions {
            feed: Some(FeedLimits {
                max_entries: 3,
                max_bytes: 1 << 20,
                max_held_bytes: 0,
            }),
            // Three 23-byte records fill a segment: segments hold LSNs 1-3, 4-6, 7-9, ...
            ..options(dir.path(), 60)
        };
        let wal = Wal::start(options, 1, Recovery::default()).unwrap();
        let append = |lsn: Lsn| wal.append(lsn, vec![Bytes::from(format!("entry-{lsn}"))]);
        for lsn in 1..=10 {
            append(lsn).await.unwrap().unwrap();
        }
        let feed = wal.feed().unwrap();
        let lsns = |entries: Vec<Entry>| entries.iter().map(|e| e.lsn).collect::<Vec<_>>();
        assert_eq!(lsns(feed.read_from(9, usize::MAX).unwrap()), [9, 10]);
        let from_disk = feed.read_from(2, usize::MAX).unwrap();
        assert_eq!(from_disk[0].parts.concat(), b"entry-2");
        assert_eq!(lsns(from_disk), (2..=10).collect::<Vec<_>>());
        assert_eq!(lsns(feed.read_from(2, 1).unwrap()), [2]);
        assert!(feed.read_from(11, usize::MAX).unwrap().is_empty());

        wal.release_through(6);
        // Releases are carried out after the group they arrived with: two more groups make
        // sure this one was.
        append(11).await.unwrap().unwrap();
        append(12).await.unwrap().unwrap();
        assert_eq!(*feed.durable().borrow(), 12);
        assert_eq!(
            lsns(feed.read_from(1, usize::MAX).unwrap()),
            (7..=12).collect::<Vec<_>>()
        );
        wal.close().await;
    }

    #[tokio::test]
    async fn segments_a_replica_still_needs_outlive_their_flush_within_the_held_bytes() {
        let dir = tempfile::tempdir().unwrap();
        // Records are 23 bytes (24 from LSN 10), so segments hold LSNs 1-3, 4-6 and 7-9 (81
        // bytes each), then 10-11, 12-13, ... (60 bytes each).
        let segment_bytes = (segment::HEADER_LEN + 3 * 23) as u64;
        let options = WalOptions {
            feed: Some(FeedLimits {
                max_entries: 1,
                max_bytes: 1 << 20,
                max_held_bytes: 2 * segment_bytes + 3,
            }),
            ..options(dir.path(), 60)
        };
        let wal = Wal::start(options, 1, Recovery::default()).unwrap();
        let feed = Arc::clone(wal.feed().unwrap());
        let mut next = 1;
        let mut append = async |count: u64| {
            for _ in 0..count {
                wal.append(next, vec![Bytes::from(format!("entry-{next}"))])
                    .await
                    .unwrap()
                    .unwrap();
                next += 1;
            }
        };
        let first_held = |feed: &Feed| feed.read_from(1, usize::MAX).unwrap()[0].lsn;
        append(10).await;
        feed.hold_from(5);
        wal.release_through(9);
        // Releases are carried out after the group they arrived with.
        append(2).await;
        assert_eq!(first_held(&feed), 4, "the segment holding LSN 5 is kept");

        // Past the held bytes the oldest go: of 4-6, 7-9 and 10-11, the last two fit.
        wal.release_through(12);
        append(2).await;
        assert_eq!(first_held(&feed), 7);

        feed.hold_from(Lsn::MAX);
        wal.release_through(13);
        append(2).await;
        assert_eq!(
            first_held(&feed),
            14,
            "nothing is held once no replica needs it"
        );
        wal.close().await;
    }

    #[test]
    fn release_keeps_unflushed_segments_and_what_replicas_need_up_to_the_limit() {
        let closed: Vec<ClosedSegment> = [Some(3), None, Some(6), Some(9), Some(12)]
            .into_iter()
            .map(|last_lsn| ClosedSegment {
                path: PathBuf::new(),
                last_lsn,
                bytes: 10,
            })
            .collect();
        assert_eq!(segments_to_release(&closed, 0, Lsn::MAX, 0), 0);
        assert_eq!(segments_to_release(&closed, 8, Lsn::MAX, 0), 3);
        assert_eq!(segments_to_release(&closed, 12, Lsn::MAX, 0), 5);
        // A replica at LSN 5 holds 4-6, 7-9 and 10-12 while they fit.
        assert_eq!(segments_to_release(&closed, 12, 5, 30), 2);
        assert_eq!(segments_to_release(&closed, 12, 5, 25), 3);
        assert_eq!(segments_to_release(&closed, 12, 5, 0), 5);
        // Unflushed segments stay whatever the replicas need.
        assert_eq!(segments_to_release(&closed, 8, 1, 0), 3);
    }

    fn collect(dir: &Path) -> (Vec<(Lsn, Vec<u8>)>, Recovery) {
        let mut entries = Vec::new();
        let recovery = replay(dir, |lsn, payload| {
            entries.push((lsn, payload.to_vec()));
            Ok(())
        })
        .unwrap();
        (entries, recovery)
    }

    /// Writes entries `lsns` to a WAL in `dir` (segments of at most `segment_bytes`) and closes
    /// it; returns the segment files in log order.
    async fn write_entries(
        dir: &Path,
        lsns: std::ops::RangeInclusive<Lsn>,
        segment_bytes: u64,
    ) -> Vec<PathBuf> {
        let (_, recovery) = collect(dir);
        let first = *lsns.start();
        let wal = Wal::start(options(dir, segment_bytes), first, recovery).unwrap();
        for lsn in lsns {
            let payload = Bytes::from(format!("entry-{lsn:04}-{}", "x".repeat(40)));
            wal.append(lsn, vec![payload]).await.unwrap().unwrap();
        }
        wal.close().await;
        let listing = segment::list_segments(dir).unwrap();
        listing.segments.into_iter().map(|(_, path)| path).collect()
    }

    fn flip_byte(path: &Path, offset: usize) {
        let mut data = std::fs::read(path).unwrap();
        data[offset] ^= 0xff;
        std::fs::write(path, data).unwrap();
    }

    fn replay_error(dir: &Path) -> WalError {
        replay(dir, |_, _| Ok(())).expect_err("replay must refuse")
    }

    #[tokio::test]
    async fn damage_before_intact_entries_stops_replay_naming_segment_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let segments = write_entries(dir.path(), 1..=10, 1 << 20).await;
        let record = RECORD_HEADER_LEN + "entry-0001-".len() + 40;
        // A payload byte of entry 4: its checksum fails, entries 5..10 are intact.
        let offset = segment::HEADER_LEN + 3 * record;
        flip_byte(&segments[0], offset + RECORD_HEADER_LEN + 2);
        let err = replay_error(dir.path());
        let message = err.to_string();
        assert!(
            matches!(err, WalError::Damaged { offset: at, .. } if at == offset),
            "{message}"
        );
        assert!(
            message.contains(&segments[0].display().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&format!("byte {}", offset + record)),
            "{message}"
        );
        // Nothing was cut: the file still holds every entry for an operator to recover.
        assert_eq!(
            std::fs::metadata(&segments[0]).unwrap().len() as usize,
            segment::HEADER_LEN + 10 * record
        );
    }

    #[tokio::test]
    async fn a_damaged_segment_followed_by_later_segments_stops_replay() {
        let dir = tempfile::tempdir().unwrap();
        let segments = write_entries(dir.path(), 1..=30, 400).await;
        assert!(segments.len() > 2, "{segments:?}");
        let len = std::fs::metadata(&segments[0]).unwrap().len();
        // The end of the first segment is lost; later segments hold later entries.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&segments[0])
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let message = replay_error(dir.path()).to_string();
        assert!(
            message.contains(&segments[0].display().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&segments[1].display().to_string()),
            "{message}"
        );
    }

    #[tokio::test]
    async fn an_entry_that_cannot_be_replayed_stops_replay_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let segments = write_entries(dir.path(), 1..=3, 1 << 20).await;
        let err = replay(dir.path(), |lsn, _| {
            if lsn == 2 {
                Err("bad entry".into())
            } else {
                Ok(())
            }
        })
        .expect_err("replay must refuse");
        let record = RECORD_HEADER_LEN + "entry-0001-".len() + 40;
        assert!(
            matches!(&err, WalError::Unreplayable { lsn: 2, offset, path, .. }
                if *offset == segment::HEADER_LEN + record && path == &segments[0]),
            "{err}"
        );
    }

    #[tokio::test]
    async fn appends_replay_in_order_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (_, recovery) = collect(dir.path());
        let wal = Wal::start(options(dir.path(), 1 << 20), 1, recovery).unwrap();
        let acks: Vec<_> = (1..=5)
            .map(|lsn| wal.append(lsn, vec![Bytes::from(format!("entry-{lsn}"))]))
            .collect();
        for ack in acks {
            ack.await.unwrap().unwrap();
        }
        wal.close().await;

        let (_, path) = segment::list_segments(dir.path())
            .unwrap()
            .segments
            .pop()
            .unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&[42, 0, 0, 0, 1, 2]).unwrap();

        let (entries, recovery) = collect(dir.path());
        let lsns: Vec<Lsn> = entries.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, vec![1, 2, 3, 4, 5]);
        assert_eq!(entries[2].1, b"entry-3");
        assert_eq!(recovery.truncated_segments, 1);
        assert_eq!(recovery.last_lsn, Some(5));
        let (_, again) = collect(dir.path());
        assert_eq!(again.truncated_segments, 0);
    }

    #[tokio::test]
    async fn released_segments_are_recycled_and_unreleased_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (_, recovery) = collect(dir.path());
        // Tiny segments: every group rotates.
        let wal = Wal::start(options(dir.path(), 1), 1, recovery).unwrap();
        append_each(&wal, 1..=4, Bytes::from_static(b"x")).await;
        wal.release_through(2);
        wal.close().await;
        let (entries, recovery) = collect(dir.path());
        assert_eq!(lsns_of(&entries), vec![3, 4]);
        assert_eq!(recovery.spares.len(), 2);

        // Spares are overwritten by later segments; their stale entries never come back.
        let wal = Wal::start(options(dir.path(), 1), 5, recovery).unwrap();
        append_each(&wal, 5..=7, Bytes::from_static(b"y")).await;
        wal.close().await;
        let (entries, _) = collect(dir.path());
        assert_eq!(lsns_of(&entries), vec![3, 4, 5, 6, 7]);
    }

    /// Appends `payload` under each of `lsns`, one group each.
    async fn append_each(wal: &Wal, lsns: std::ops::RangeInclusive<Lsn>, payload: Bytes) {
        for lsn in lsns {
            wal.append(lsn, vec![payload.clone()])
                .await
                .unwrap()
                .unwrap();
        }
    }

    fn lsns_of(entries: &[(Lsn, Vec<u8>)]) -> Vec<Lsn> {
        entries.iter().map(|(lsn, _)| *lsn).collect()
    }

    #[tokio::test]
    async fn a_reused_spare_longer_than_its_new_records_replays_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let (_, recovery) = collect(dir.path());
        // One 196-byte record per segment; three of them become spares.
        let wal = Wal::start(options(dir.path(), 200), 1, recovery).unwrap();
        append_each(&wal, 1..=4, Bytes::from(vec![0xab; 180])).await;
        wal.release_through(3);
        wal.close().await;
        let (_, recovery) = collect(dir.path());
        // Smaller segments of small records: each reused spare is cut mid old record.
        let wal = Wal::start(options(dir.path(), 100), 5, recovery).unwrap();
        append_each(&wal, 5..=14, Bytes::from_static(b"0123456789")).await;
        wal.close().await;
        let (entries, _) = collect(dir.path());
        assert_eq!(
            lsns_of(&entries),
            [4].into_iter().chain(5..=14).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn concurrent_appends_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let (_, recovery) = collect(dir.path());
        let wal = Wal::start(options(dir.path(), 1 << 30), 1, recovery).unwrap();
        let acks: Vec<_> = (1..=2000)
            .map(|lsn| wal.append(lsn, vec![Bytes::from(vec![7u8; 1000])]))
            .collect();
        for ack in acks {
            ack.await.unwrap().unwrap();
        }
        let groups = wal.groups_written();
        assert!(groups < 2000, "2000 appends took {groups} syncs");
        wal.close().await;
        assert_eq!(collect(dir.path()).0.len(), 2000);
    }

    #[tokio::test]
    async fn an_idle_log_keeps_its_live_segment_through_age_rotation_and_release() {
        let dir = tempfile::tempdir().unwrap();
        let (_, recovery) = collect(dir.path());
        let age = Duration::from_millis(20);
        let options = WalOptions {
            max_segment_age: age,
            ..options(dir.path(), 1 << 30)
        };
        let wal = Wal::start(options, 1, recovery).unwrap();
        wal.append(1, vec![Bytes::from_static(b"a")])
            .await
            .unwrap()
            .unwrap();
        let segments = || segment::list_segments(dir.path()).unwrap().segments.len();
        while segments() < 2 {
            tokio::time::sleep(age).await;
        }
        // Segment 1 becomes a spare; then idle well past the age limit: the empty live segment
        // must not rotate again (into the spare, under its own name).
        wal.release_through(1);
        tokio::time::sleep(age * 10).await;
        assert_eq!(segments(), 1);
        for lsn in 2..=3 {
            wal.append(lsn, vec![Bytes::from_static(b"b")])
                .await
                .unwrap()
                .unwrap();
        }
        wal.release_through(1);
        wal.close().await;
        let lsns: Vec<Lsn> = collect(dir.path()).0.iter().map(|(lsn, _)| *lsn).collect();
        assert_eq!(lsns, vec![2, 3]);
    }

    #[tokio::test]
    async fn every_sync_mode_makes_appends_replayable() {
        for sync_mode in [
            WalSyncMode::Fdatasync,
            WalSyncMode::Fsync,
            WalSyncMode::Async,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (_, recovery) = collect(dir.path());
            let options = WalOptions {
                sync_mode,
                ..options(dir.path(), 1 << 20)
            };
            let wal = Wal::start(options, 1, recovery).unwrap();
            for lsn in 1..=3 {
                wal.append(lsn, vec![Bytes::from_static(b"m")])
                    .await
                    .unwrap()
                    .unwrap();
            }
            wal.close().await;
            assert_eq!(collect(dir.path()).0.len(), 3, "{sync_mode}");
        }
    }

    #[test]
    fn a_shipped_groups_key_names_its_lsn_range_in_log_order() {
        let key = shipped_key("_wal/writer-01/", 7, 1_234);
        assert_eq!(
            key,
            "_wal/writer-01/00000000000000000007-00000000000000001234.wal"
        );
        assert_eq!(shipped_range(&key), Some((7, 1_234)));
        assert!(
            shipped_key("p/", 9, 9) < shipped_key("p/", 10, 12),
            "names sort by LSN"
        );
        assert_eq!(shipped_range("_wal/writer-01/notes.txt"), None);
    }

    #[tokio::test]
    async fn append_after_close_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (_, recovery) = collect(dir.path());
        let wal = Wal::start(options(dir.path(), 1 << 20), 1, recovery).unwrap();
        wal.close().await;
        let result = wal.append(1, vec![Bytes::from_static(b"late")]).await;
        assert!(matches!(result, Ok(Err(WalError::Closed)) | Err(_)));
    }
}
