//! The writer's side of the stream: durable entries from an LSN on, as the feed has them, with
//! keep-alives while there is nothing new. The writer keeps each reader's position: the last
//! entry sent, for its status, and the last entry the reader said it applied, so the WAL keeps
//! what the reader would ask for again after a reconnect.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::watch;

use super::{KEEPALIVE, encode_entry, encode_keepalive};
use crate::wal::{Feed, Lsn};

/// Bytes of entries read from the feed at a time, sent as one body chunk.
const BATCH_BYTES: usize = 4 << 20;

/// Where each reader's stream is, as this writer has sent it.
#[derive(Debug, Default)]
pub struct ReaderPositions {
    readers: Mutex<BTreeMap<String, Position>>,
    /// Woken by every acknowledgement.
    acks: tokio::sync::Notify,
}

#[derive(Debug)]
struct Position {
    sent_lsn: Lsn,
    acked_lsn: Lsn,
    streams: usize,
    caught_up_at: Instant,
}

/// One reader's stream as `GET /api/v1/cluster/status` shows it on the writer.
#[derive(Debug, Clone, Serialize)]
pub struct ReaderStatus {
    pub reader: String,
    pub connected: bool,
    pub sent_lsn: Lsn,
    pub acked_lsn: Lsn,
    pub lag_entries: u64,
    pub lag_seconds: f64,
}

impl ReaderPositions {
    /// Every reader that has streamed from this writer, against its durable LSN.
    pub fn status(&self, durable_lsn: Lsn) -> Vec<ReaderStatus> {
        self.readers
            .lock()
            .unwrap()
            .iter()
            .map(|(reader, position)| {
                let lag_entries = durable_lsn.saturating_sub(position.sent_lsn);
                ReaderStatus {
                    reader: reader.clone(),
                    connected: position.streams > 0,
                    sent_lsn: position.sent_lsn,
                    acked_lsn: position.acked_lsn,
                    lag_entries,
                    lag_seconds: if lag_entries == 0 {
                        0.0
                    } else {
                        position.caught_up_at.elapsed().as_secs_f64()
                    },
                }
            })
            .collect()
    }

    /// The lowest LSN one of `readers` (the current members) still needs: the one after the
    /// last it applied. `Lsn::MAX` when none has streamed.
    pub fn needed_from(&self, readers: &HashSet<String>) -> Lsn {
        self.readers
            .lock()
            .unwrap()
            .iter()
            .filter(|(reader, _)| readers.contains(*reader))
            .map(|(_, position)| position.acked_lsn + 1)
            .min()
            .unwrap_or(Lsn::MAX)
    }

    /// `reader` holds every entry through `lsn` durably.
    pub fn acked(&self, reader: &str, lsn: Lsn) {
        if let Some(position) = self.readers.lock().unwrap().get_mut(reader) {
            position.acked_lsn = position.acked_lsn.max(lsn);
        }
        self.acks.notify_waiters();
    }

    /// How many of `readers` hold entry `lsn` durably, and how many are streaming now.
    pub fn holding(&self, readers: &HashSet<String>, lsn: Lsn) -> (usize, usize) {
        let positions = self.readers.lock().unwrap();
        let members = positions.iter().filter(|(r, _)| readers.contains(*r));
        members.fold((0, 0), |(holding, streaming), (_, p)| {
            (
                holding + usize::from(p.acked_lsn >= lsn),
                streaming + usize::from(p.streams > 0),
            )
        })
    }

    /// Resolves at the next acknowledgement (create it before checking, so none is missed).
    pub fn next_ack(&self) -> tokio::sync::futures::Notified<'_> {
        self.acks.notified()
    }

    fn opened(&self, reader: &str, from: Lsn) {
        let mut readers = self.readers.lock().unwrap();
        let position = readers.entry(reader.to_owned()).or_insert(Position {
            sent_lsn: 0,
            acked_lsn: 0,
            streams: 0,
            caught_up_at: Instant::now(),
        });
        // A reader that restarted lost what it had applied: it holds what it asks after.
        position.sent_lsn = from.saturating_sub(1);
        position.acked_lsn = from.saturating_sub(1);
        position.streams += 1;
    }

    fn sent(&self, reader: &str, lsn: Lsn, durable: Lsn) {
        if let Some(position) = self.readers.lock().unwrap().get_mut(reader) {
            position.sent_lsn = position.sent_lsn.max(lsn);
            if lsn >= durable {
                position.caught_up_at = Instant::now();
            }
        }
    }

    fn closed(&self, reader: &str) {
        if let Some(position) = self.readers.lock().unwrap().get_mut(reader) {
            position.streams = position.streams.saturating_sub(1);
        }
    }
}

struct Cursor {
    feed: Arc<Feed>,
    durable: watch::Receiver<Lsn>,
    next: Lsn,
    reader: String,
    positions: Arc<ReaderPositions>,
}

impl Drop for Cursor {
    fn drop(&mut self) {
        self.positions.closed(&self.reader);
    }
}

/// The response body for a reader that holds every entry before `from`. It ends only with an
/// error (the feed could not be read) or when the reader goes away; the network's flow control
/// paces it to the reader.
pub fn entry_stream(
    feed: Arc<Feed>,
    from: Lsn,
    reader: String,
    positions: Arc<ReaderPositions>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    positions.opened(&reader, from);
    let cursor = Cursor {
        durable: feed.durable(),
        feed,
        next: from,
        reader,
        positions,
    };
    futures::stream::unfold(Some(cursor), |cursor| async move {
        let mut cursor = cursor?;
        loop {
            cursor.durable.borrow_and_update();
            let (feed, from) = (Arc::clone(&cursor.feed), cursor.next);
            let read = tokio::task::spawn_blocking(move || feed.read_from(from, BATCH_BYTES))
                .await
                .expect("WAL read task panicked");
            let entries = match read {
                Ok(entries) => entries,
                Err(err) => {
                    tracing::warn!(error = %err, "replication stream cannot read the WAL");
                    return Some((Err(std::io::Error::other(err)), None));
                }
            };
            if let Some(last) = entries.last() {
                cursor.next = last.lsn + 1;
                let durable = *cursor.durable.borrow();
                cursor.positions.sent(&cursor.reader, last.lsn, durable);
                let mut out = Vec::new();
                for entry in &entries {
                    encode_entry(&mut out, entry.lsn, &entry.parts);
                }
                return Some((Ok(Bytes::from(out)), Some(cursor)));
            }
            match tokio::time::timeout(KEEPALIVE, cursor.durable.changed()).await {
                Ok(Ok(())) => continue,
                // The WAL is gone: the node is stopping.
                Ok(Err(_)) => return None,
                Err(_) => {
                    let durable = *cursor.durable.borrow();
                    cursor
                        .positions
                        .sent(&cursor.reader, cursor.next - 1, durable);
                    return Some((Ok(encode_keepalive(durable)), Some(cursor)));
                }
            }
        }
    })
}
