//! The commit path of a write: decode → check schema → LSN + WAL → buffer → wait for durability.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::buffer::{Buffers, MeasurementKey, SchemaConflict};
use crate::meta::MetaState;
use crate::replication::{AckError, AckPolicy};
use crate::wal::{Lsn, Wal, WalError};

use super::{DecodeError, MeasurementBatch, Precision, line_protocol, msgpack, names};

/// Bodies above this size are decoded on the blocking pool.
const BLOCKING_DECODE_BYTES: usize = 1 << 20;

/// Arc caps decompressed line protocol at 100 MB.
const MAX_LINE_PROTOCOL_BYTES: usize = 100 << 20;

/// Longest a write waits for buffered memory to drop below half of `max_buffered_bytes`; well
/// inside common client timeouts, and long enough for several flushes.
const BACKPRESSURE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(
        "invalid database name '{0}': must match ^[A-Za-z][A-Za-z0-9_-]*$ and be at most 64 characters"
    )]
    InvalidDatabase(String),
    #[error("empty request body")]
    EmptyBody,
    #[error("invalid {codec}-compressed {format} body: {message}")]
    BadCompression {
        format: &'static str,
        codec: &'static str,
        message: String,
    },
    #[error("payload too large: more than {limit} bytes after decompression")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Schema(#[from] SchemaConflict),
    #[error("write buffer is full ({bytes} bytes waiting for storage); retry later")]
    BufferFull { bytes: usize },
    #[error("write-ahead log failure: {0}")]
    Wal(#[from] WalError),
    #[error(transparent)]
    NotReplicated(#[from] AckError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    Msgpack,
    LineProtocol(Precision),
}

/// A write as received: the body is kept as sent (possibly compressed) because that is what the
/// WAL stores.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub database: String,
    pub format: PayloadFormat,
    pub body: Bytes,
    pub received_at_us: i64,
}

#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Largest decompressed MessagePack body (`server.max_payload_size`).
    pub max_msgpack_bytes: usize,
    /// Rows at which a measurement is flushed (`ingest.max_buffer_size`).
    pub max_buffer_rows: usize,
    /// `ingest.max_buffered_bytes`: above half of it writes wait for flushes; above all of
    /// it they are refused until flushes catch up.
    pub max_buffered_bytes: usize,
}

pub struct Ingester {
    buffers: Arc<Buffers>,
    wal: Option<Arc<Wal>>,
    flush_requests: mpsc::UnboundedSender<MeasurementKey>,
    limits: IngestLimits,
    /// `cluster.replication_ack` other than `none`: readers that must hold each write.
    replica_acks: Option<Arc<AckPolicy>>,
}

impl Ingester {
    pub fn new(
        buffers: Arc<Buffers>,
        wal: Option<Arc<Wal>>,
        flush_requests: mpsc::UnboundedSender<MeasurementKey>,
        limits: IngestLimits,
    ) -> Ingester {
        Ingester {
            buffers,
            wal,
            flush_requests,
            limits,
            replica_acks: None,
        }
    }

    pub fn buffers(&self) -> &Arc<Buffers> {
        &self.buffers
    }

    /// Acknowledges writes only once readers hold them as `policy` says.
    pub fn with_replica_acks(mut self, policy: Option<Arc<AckPolicy>>) -> Ingester {
        self.replica_acks = policy;
        self
    }

    /// Stores a write. Returns once its WAL entry is durable (per `wal.sync_mode`); on error
    /// nothing of the request was accepted, except after a WAL failure (the rows may then still
    /// reach storage, but the client was not told they are safe).
    pub async fn write(&self, request: WriteRequest) -> Result<usize, IngestError> {
        if !names::valid_database(&request.database) {
            return Err(IngestError::InvalidDatabase(request.database));
        }
        let caps = SizeCaps {
            msgpack: self.limits.max_msgpack_bytes,
            line_protocol: MAX_LINE_PROTOCOL_BYTES,
        };
        // Large bodies take milliseconds to decode: keep them off the threads serving requests.
        let batches = if request.body.len() > BLOCKING_DECODE_BYTES {
            let request = request.clone();
            tokio::task::spawn_blocking(move || decode_request(&request, caps))
                .await
                .expect("decode task panicked")?
        } else {
            decode_request(&request, caps)?
        };
        let rows = batches.iter().map(|b| b.batch.num_rows()).sum();
        self.wait_for_room().await;
        if let Some(policy) = &self.replica_acks {
            policy.check_ready()?;
        }
        let (lsn, durable, full) = {
            let mut buffers = self.buffers.lock();
            let bytes = buffers.buffered_bytes();
            if bytes > self.limits.max_buffered_bytes {
                return Err(IngestError::BufferFull { bytes });
            }
            let prepared = buffers.prepare(&request.database, batches)?;
            let lsn = buffers.allocate_lsn();
            let durable = self
                .wal
                .as_ref()
                .map(|wal| wal.append(lsn, encode_entry(&request)));
            let full = buffers.insert(lsn, prepared, self.limits.max_buffer_rows);
            (lsn, durable, full)
        };
        for key in full {
            let _ = self.flush_requests.send(key);
        }
        if let Some(durable) = durable {
            durable.await.map_err(|_| WalError::Closed)??;
        }
        if let Some(policy) = &self.replica_acks {
            policy.confirmed(lsn).await?;
        }
        Ok(rows)
    }

    /// Back-pressure: while buffered rows hold more than half of `max_buffered_bytes`, a write
    /// waits (up to [`BACKPRESSURE_WAIT`]) for flushes to release memory, so an overloaded
    /// server answers more slowly instead of buffering until it must refuse. Whatever is
    /// buffered after the wait, the hard limit decides.
    async fn wait_for_room(&self) {
        let soft_limit = self.limits.max_buffered_bytes / 2;
        let released = {
            let buffers = self.buffers.lock();
            if buffers.buffered_bytes() <= soft_limit {
                return;
            }
            buffers.released()
        };
        let deadline = tokio::time::Instant::now() + BACKPRESSURE_WAIT;
        loop {
            let notified = released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.buffers.lock().buffered_bytes() <= soft_limit {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

/// Re-applies one WAL entry of `log` at start-up, skipping the measurements whose rows from it
/// are already in registered files.
pub fn replay_entry(
    buffers: &Buffers,
    meta: &MetaState,
    log: &str,
    lsn: Lsn,
    payload: &[u8],
) -> Result<usize, String> {
    // Even an entry that cannot be replayed keeps its LSN from being handed out again.
    buffers.lock().observe_lsn(lsn);
    let (database, batches) =
        unflushed_rows(|db, m| meta.flushed_through(log, db, m), lsn, payload)?;
    let rows = batches.iter().map(|b| b.batch.num_rows()).sum();
    let mut buffers = buffers.lock();
    let prepared = buffers
        .prepare(&database, batches)
        .map_err(|e| e.to_string())?;
    buffers.insert(lsn, prepared, usize::MAX);
    Ok(rows)
}

/// Applies one entry a replica received from its writer, skipping the measurements whose rows
/// from it are already in the files it queries (`flushed_through(database, measurement)`).
pub fn replicate_entry(
    buffers: &Buffers,
    flushed_through: impl Fn(&str, &str) -> Lsn,
    lsn: Lsn,
    payload: &[u8],
) -> Result<usize, String> {
    let (database, batches) = unflushed_rows(flushed_through, lsn, payload)?;
    let rows = batches.iter().map(|b| b.batch.num_rows()).sum();
    let mut buffers = buffers.lock();
    let prepared = buffers
        .prepare(&database, batches)
        .map_err(|e| e.to_string())?;
    buffers.insert_replicated(lsn, prepared);
    Ok(rows)
}

/// The database and the rows of entry `lsn` that files do not hold yet, by each measurement's
/// `flushed_through`.
fn unflushed_rows(
    flushed_through: impl Fn(&str, &str) -> Lsn,
    lsn: Lsn,
    payload: &[u8],
) -> Result<(String, Vec<MeasurementBatch>), String> {
    let request = decode_entry(payload).ok_or("unreadable WAL entry header")?;
    let batches = decode_request(&request, SizeCaps::NONE)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|b| flushed_through(&request.database, &b.measurement) < lsn)
        .collect();
    Ok((request.database, batches))
}

/// Decompressed-size caps for decoding a request.
#[derive(Debug, Clone, Copy)]
struct SizeCaps {
    msgpack: usize,
    line_protocol: usize,
}

impl SizeCaps {
    /// Replay decodes what was already acknowledged: a limit lowered since must not refuse it.
    const NONE: SizeCaps = SizeCaps {
        msgpack: usize::MAX,
        line_protocol: usize::MAX,
    };
}

fn decode_request(
    request: &WriteRequest,
    caps: SizeCaps,
) -> Result<Vec<MeasurementBatch>, IngestError> {
    if request.body.is_empty() {
        return Err(IngestError::EmptyBody);
    }
    match request.format {
        PayloadFormat::Msgpack => {
            let body = decompress(&request.body, caps.msgpack, "MessagePack")?;
            Ok(msgpack::decode(&body, request.received_at_us)?)
        }
        PayloadFormat::LineProtocol(precision) => {
            let body = decompress(&request.body, caps.line_protocol, "line protocol")?;
            Ok(line_protocol::parse(
                &body,
                precision,
                request.received_at_us,
            )?)
        }
    }
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Undoes gzip or zstd, recognised by magic bytes (Arc ignores `Content-Encoding`).
pub fn decompress(body: &Bytes, limit: usize, format: &'static str) -> Result<Bytes, IngestError> {
    let bad = |codec, err: std::io::Error| IngestError::BadCompression {
        format,
        codec,
        message: err.to_string(),
    };
    let (codec, reader): (_, Box<dyn Read + '_>) = if body.starts_with(GZIP_MAGIC) {
        (
            "gzip",
            Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        )
    } else if body.starts_with(ZSTD_MAGIC) {
        let decoder = zstd::stream::read::Decoder::new(&body[..]).map_err(|e| bad("zstd", e))?;
        ("zstd", Box::new(decoder))
    } else if body.len() > limit {
        return Err(IngestError::TooLarge { limit });
    } else {
        return Ok(body.clone());
    };
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    reader
        .take((limit as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| bad(codec, e))?;
    if out.len() > limit {
        return Err(IngestError::TooLarge { limit });
    }
    if out.is_empty() {
        return Err(IngestError::EmptyBody);
    }
    Ok(out.into())
}

const ENTRY_VERSION: u8 = 1;
const KIND_MSGPACK: u8 = 1;
const KIND_LINE_PROTOCOL: u8 = 2;
const ENTRY_HEADER_LEN: usize = 12;

/// WAL entry: `version u8 | kind u8 | precision u8 | db length u8 | received_at_us i64 LE | db |
/// body as received`. Keeping the client's bytes (compressed or not) keeps the WAL small and the
/// hot path free of re-encoding; decoding is deterministic given the receive time.
fn encode_entry(request: &WriteRequest) -> Vec<Bytes> {
    let (kind, precision) = match request.format {
        PayloadFormat::Msgpack => (KIND_MSGPACK, 0),
        PayloadFormat::LineProtocol(p) => (KIND_LINE_PROTOCOL, p.as_u8()),
    };
    let db = request.database.as_bytes();
    let mut header = Vec::with_capacity(ENTRY_HEADER_LEN + db.len());
    header.extend_from_slice(&[ENTRY_VERSION, kind, precision, db.len() as u8]);
    header.extend_from_slice(&request.received_at_us.to_le_bytes());
    header.extend_from_slice(db);
    vec![Bytes::from(header), request.body.clone()]
}

fn decode_entry(payload: &[u8]) -> Option<WriteRequest> {
    let header = payload.get(..ENTRY_HEADER_LEN)?;
    if header[0] != ENTRY_VERSION {
        return None;
    }
    let format = match header[1] {
        KIND_MSGPACK => PayloadFormat::Msgpack,
        KIND_LINE_PROTOCOL => PayloadFormat::LineProtocol(Precision::from_u8(header[2])?),
        _ => return None,
    };
    let db_end = ENTRY_HEADER_LEN + header[3] as usize;
    let database = std::str::from_utf8(payload.get(ENTRY_HEADER_LEN..db_end)?).ok()?;
    Some(WriteRequest {
        database: database.to_string(),
        format,
        body: Bytes::copy_from_slice(&payload[db_end..]),
        received_at_us: i64::from_le_bytes(header[4..12].try_into().unwrap()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn wal_entries_round_trip() {
        let request = WriteRequest {
            database: "prod-db".into(),
            format: PayloadFormat::LineProtocol(Precision::Milliseconds),
            body: Bytes::from_static(b"cpu v=1 1"),
            received_at_us: -42,
        };
        let encoded: Vec<u8> = encode_entry(&request).concat();
        let decoded = decode_entry(&encoded).unwrap();
        assert_eq!(decoded.database, "prod-db");
        assert_eq!(decoded.format, request.format);
        assert_eq!(decoded.body, request.body);
        assert_eq!(decoded.received_at_us, -42);
        assert!(decode_entry(&encoded[..5]).is_none());
    }

    #[test]
    fn decompression_by_magic_bytes_with_limits() {
        let plain = Bytes::from(vec![b'x'; 1000]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = Bytes::from(gz.finish().unwrap());
        let zst = Bytes::from(zstd::encode_all(&plain[..], 1).unwrap());

        for body in [&plain, &gz, &zst] {
            assert_eq!(decompress(body, 1000, "test").unwrap(), plain);
            assert!(matches!(
                decompress(body, 999, "test"),
                Err(IngestError::TooLarge { limit: 999 })
            ));
        }
        let mut broken = gz.to_vec();
        broken.truncate(12);
        assert!(matches!(
            decompress(&Bytes::from(broken), 1000, "test"),
            Err(IngestError::BadCompression { .. })
        ));
        let bad_zstd = Bytes::from_static(&[0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3]);
        assert!(matches!(
            decompress(&bad_zstd, 1000, "test"),
            Err(IngestError::BadCompression { .. })
        ));
    }
}
