//! The log as replicas read it: the writer thread publishes every group once it is durable
//! into a bounded window of recent entries, and a replica reads the entries at or after an LSN
//! from that window, or from the segment files when it is further behind. Nothing is dropped to
//! make room: an entry that has left the window is still in its segment until a flush has put
//! its rows in registered files, and a replica that asks for an entry even older than that
//! learns where the log now starts (the rows in between are in files).
//!
//! Replicas also hold segments back: the writer keeps a flushed segment while some replica
//! still needs its entries ([`Feed::hold_from`]), up to [`FeedLimits::max_held_bytes`] of them;
//! past that the oldest go and that replica takes those rows from files.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::watch;

use super::{Lsn, WalError, segment};

/// Bounds of the in-memory window.
#[derive(Debug, Clone, Copy)]
pub struct FeedLimits {
    /// `cluster.replication_buffer_size`.
    pub max_entries: usize,
    pub max_bytes: usize,
    /// Flushed segments kept for replicas that still need them, in bytes.
    pub max_held_bytes: u64,
}

/// One durable entry: its LSN and its payload (in parts, as the WAL writes them).
#[derive(Debug, Clone)]
pub struct Entry {
    pub lsn: Lsn,
    pub parts: Vec<Bytes>,
}

impl Entry {
    fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }
}

#[derive(Debug)]
struct Window {
    entries: VecDeque<Entry>,
    bytes: usize,
}

#[derive(Debug)]
pub struct Feed {
    dir: PathBuf,
    limits: FeedLimits,
    window: Mutex<Window>,
    durable: watch::Sender<Lsn>,
    /// The lowest LSN a replica still needs; `Lsn::MAX` while none does.
    needed_from: AtomicU64,
}

impl Feed {
    /// A feed for the log in `dir` whose entries through `durable_lsn` are already on disk.
    pub fn new(dir: PathBuf, limits: FeedLimits, durable_lsn: Lsn) -> Feed {
        Feed {
            dir,
            limits,
            window: Mutex::new(Window {
                entries: VecDeque::new(),
                bytes: 0,
            }),
            durable: watch::Sender::new(durable_lsn),
            needed_from: AtomicU64::new(Lsn::MAX),
        }
    }

    pub fn limits(&self) -> FeedLimits {
        self.limits
    }

    /// Replicas need the entries from `lsn` on (`Lsn::MAX`: none is following); the writer
    /// keeps flushed segments holding them, within [`FeedLimits::max_held_bytes`].
    pub fn hold_from(&self, lsn: Lsn) {
        self.needed_from.store(lsn, Ordering::Relaxed);
    }

    pub(super) fn needed_from(&self) -> Lsn {
        self.needed_from.load(Ordering::Relaxed)
    }

    /// Called by the writer thread with a group it has just made durable, in LSN order.
    pub(super) fn publish(&self, group: Vec<Entry>) {
        let Some(last) = group.last().map(|e| e.lsn) else {
            return;
        };
        {
            let mut window = self.window.lock().unwrap();
            for entry in group {
                window.bytes += entry.len();
                window.entries.push_back(entry);
            }
            while window.entries.len() > self.limits.max_entries
                || (window.bytes > self.limits.max_bytes && window.entries.len() > 1)
            {
                let evicted = window.entries.pop_front().expect("not empty");
                window.bytes -= evicted.len();
            }
        }
        self.durable.send_replace(last);
    }

    /// The highest durable LSN, changing as groups become durable.
    pub fn durable(&self) -> watch::Receiver<Lsn> {
        self.durable.subscribe()
    }

    /// Durable entries from `from` on, up to about `max_bytes` (at least one entry when there
    /// is one). The first entry returned is later than `from` when the log no longer holds
    /// `from`: the entries between were flushed and released. Empty when `from` is past the
    /// durable end.
    pub fn read_from(&self, from: Lsn, max_bytes: usize) -> Result<Vec<Entry>, WalError> {
        let durable = *self.durable.borrow();
        if from > durable {
            return Ok(Vec::new());
        }
        {
            let window = self.window.lock().unwrap();
            if window.entries.front().is_some_and(|e| e.lsn <= from) {
                let start = window.entries.partition_point(|e| e.lsn < from);
                return Ok(take_bytes(
                    window.entries.range(start..).cloned(),
                    max_bytes,
                ));
            }
        }
        let from_disk = self.read_segments(from, durable, max_bytes)?;
        if !from_disk.is_empty() {
            return Ok(from_disk);
        }
        // Nothing left on disk at or after `from`: the window, if anything, holds what follows.
        let window = self.window.lock().unwrap();
        Ok(take_bytes(window.entries.iter().cloned(), max_bytes))
    }

    /// Entries with `from ≤ LSN ≤ durable` read from the segment files, oldest first. A segment
    /// released (and reused) while being read only ends the read early: its entries are in
    /// files, and the next read starts from what the log still holds.
    fn read_segments(
        &self,
        from: Lsn,
        durable: Lsn,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, WalError> {
        let listing = segment::list_segments(&self.dir)?;
        // The segment holding `from` is the last one starting at or before it.
        let first = listing
            .segments
            .iter()
            .rposition(|(first_lsn, _)| *first_lsn <= from)
            .unwrap_or(0);
        let mut entries = Vec::new();
        let mut bytes = 0;
        for (first_lsn, path) in &listing.segments[first..] {
            let contents = match segment::read_segment(path, *first_lsn) {
                Ok(contents) => contents,
                Err(WalError::Io { .. }) if !path.exists() => break,
                Err(err) => return Err(err),
            };
            for (lsn, payload) in contents.records() {
                if lsn < from {
                    continue;
                }
                if lsn > durable || (bytes >= max_bytes && !entries.is_empty()) {
                    return Ok(entries);
                }
                bytes += payload.len();
                entries.push(Entry {
                    lsn,
                    parts: vec![Bytes::copy_from_slice(payload)],
                });
            }
        }
        Ok(entries)
    }
}

fn take_bytes(entries: impl Iterator<Item = Entry>, max_bytes: usize) -> Vec<Entry> {
    let mut taken = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        if bytes >= max_bytes && !taken.is_empty() {
            break;
        }
        bytes += entry.len();
        taken.push(entry);
    }
    taken
}
