//! The writer's side of the stream: durable entries from an LSN on, as the feed has them, with
//! keep-alives while there is nothing new.

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::watch;

use super::{KEEPALIVE, encode_entry, encode_keepalive};
use crate::wal::{Feed, Lsn};

/// Bytes of entries read from the feed at a time, sent as one body chunk.
const BATCH_BYTES: usize = 4 << 20;

struct Cursor {
    feed: Arc<Feed>,
    durable: watch::Receiver<Lsn>,
    next: Lsn,
}

/// The response body for a reader that holds every entry before `from`. It ends only with an
/// error (the feed could not be read) or when the reader goes away; the network's flow control
/// paces it to the reader.
pub fn entry_stream(
    feed: Arc<Feed>,
    from: Lsn,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let cursor = Cursor {
        durable: feed.durable(),
        feed,
        next: from,
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
                    return Some((Ok(encode_keepalive(durable)), Some(cursor)));
                }
            }
        }
    })
}
