//! Pattern B: a writer with `cluster.replication_enabled` serves its durable log entries on the
//! coordinator port; each reader follows it from the LSN after the last entry it holds and
//! applies the entries to its own buffers, so queries on the reader see rows before they are
//! flushed. A reader with its own (local) storage also copies every manifest file from its peers
//! ([`Puller`]) and queries only manifest versions whose files it holds ([`ReplicaView`]).
//!
//! Nothing is dropped to relieve pressure: the writer reads what a reader asks for from its WAL
//! (a bounded window in memory, else the segment files), and a slow reader simply reads slower.
//! A reader asking for an entry the writer has already released learns where the log now
//! starts; the rows in between are in registered files, so it counts a gap and goes on. A reader
//! never flushes: its buffered rows go once the writer's registered files hold them.
//!
//! Wire format: the response body is a sequence of [`frame`](crate::frame) records whose
//! sequence number is an LSN and whose payload starts with a kind byte: an entry (the WAL
//! payload follows) or a keep-alive (the writer's durable LSN, sent while there is nothing new).

mod follower;
mod puller;
mod source;
mod view;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;

pub use follower::Follower;
pub use puller::Puller;
pub use source::entry_stream;
pub use view::{MeasurementView, ReplicaView};

use crate::frame::{RECORD_HEADER_LEN, RecordReader, encode_record};
use crate::wal::Lsn;

/// Coordinator-port path of the stream.
pub const STREAM_PATH: &str = "/internal/replication/wal";

/// How often an idle stream says it is alive; a reader that hears nothing for
/// [`IDLE_LIMIT`] reconnects.
pub const KEEPALIVE: Duration = Duration::from_secs(1);
pub const IDLE_LIMIT: Duration = Duration::from_secs(5);

const KIND_ENTRY: u8 = 1;
const KIND_KEEPALIVE: u8 = 2;

/// Frames above this are refused as corrupt (an entry is one request body, at most a few
/// hundred MiB by `server.max_payload_size`).
const MAX_FRAME_BYTES: usize = 1 << 30;

/// What a reader asks the writer for.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct StreamRequest {
    pub from_lsn: Lsn,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Entry { lsn: Lsn, payload: Bytes },
    KeepAlive { durable_lsn: Lsn },
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("no writer to follow: {0}")]
    NoWriter(String),
    #[error("stream from {writer} broke: {message}")]
    Broken { writer: String, message: String },
    #[error("stream from {writer} carried a corrupt frame")]
    Corrupt { writer: String },
    #[error("stream from {writer} was silent for {IDLE_LIMIT:?}")]
    Silent { writer: String },
    #[error("entry {lsn} from {writer} cannot be applied: {reason}")]
    Unapplicable {
        writer: String,
        lsn: Lsn,
        reason: String,
    },
}

fn encode_entry(out: &mut Vec<u8>, lsn: Lsn, parts: &[Bytes]) {
    let mut slices: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    slices.push(&[KIND_ENTRY]);
    slices.extend(parts.iter().map(|p| p.as_ref()));
    encode_record(out, lsn, &slices);
}

fn encode_keepalive(durable_lsn: Lsn) -> Bytes {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + 1);
    encode_record(&mut out, durable_lsn, &[&[KIND_KEEPALIVE]]);
    out.into()
}

/// Splits a byte stream into frames, however the network cut it.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    pending: BytesMut,
}

#[derive(Debug, PartialEq, Eq)]
pub struct CorruptFrame;

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The complete frames received so far; an incomplete one waits for more bytes.
    pub fn frames(&mut self) -> Result<Vec<Frame>, CorruptFrame> {
        let mut frames = Vec::new();
        let data = self.pending.split().freeze();
        let mut reader = RecordReader::new(&data);
        for (lsn, payload) in reader.by_ref() {
            let frame = match payload.split_first() {
                Some((&KIND_ENTRY, rest)) => Frame::Entry {
                    lsn,
                    payload: data.slice_ref(rest),
                },
                Some((&KIND_KEEPALIVE, [])) => Frame::KeepAlive { durable_lsn: lsn },
                _ => return Err(CorruptFrame),
            };
            frames.push(frame);
        }
        let mut rest = data.slice(reader.valid_len()..);
        if rest.len() >= RECORD_HEADER_LEN {
            let len = (&rest[..4]).get_u32_le() as usize;
            // A whole record is there yet did not verify: it is damaged, not incomplete.
            if len > MAX_FRAME_BYTES || rest.len() >= RECORD_HEADER_LEN + len {
                return Err(CorruptFrame);
            }
        }
        self.pending.extend_from_slice(&rest.split_to(rest.len()));
        Ok(frames)
    }
}

/// What a reader's stream has done, for `GET /api/v1/cluster/status`.
#[derive(Debug, Default)]
pub struct ReplicationStats {
    applied_lsn: AtomicU64,
    writer_lsn: AtomicU64,
    entries_applied: AtomicU64,
    rows_applied: AtomicU64,
    gaps: AtomicU64,
    connects: AtomicU64,
    chunks_released: AtomicU64,
    files_missing: AtomicU64,
    files_pulled: AtomicU64,
    bytes_pulled: AtomicU64,
    checksum_mismatches: AtomicU64,
    pull_failures: AtomicU64,
    files_deleted: AtomicU64,
    state: Mutex<StreamState>,
}

#[derive(Debug, Default)]
struct StreamState {
    writer: Option<String>,
    connected: bool,
    last_error: Option<String>,
    /// When the reader last held everything the writer had made durable.
    caught_up_at: Option<Instant>,
}

/// A point-in-time copy of [`ReplicationStats`].
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationStatus {
    pub writer: Option<String>,
    pub connected: bool,
    pub applied_lsn: Lsn,
    pub writer_lsn: Lsn,
    pub lag_entries: u64,
    pub lag_seconds: f64,
    pub entries_applied: u64,
    pub rows_applied: u64,
    pub gaps: u64,
    pub connects: u64,
    pub chunks_released: u64,
    pub last_error: Option<String>,
    /// Manifest files not yet copied to this node (own storage only).
    pub files_missing: u64,
    pub files_pulled: u64,
    pub bytes_pulled: u64,
    pub checksum_mismatches: u64,
    pub pull_failures: u64,
    pub files_deleted: u64,
}

impl ReplicationStats {
    pub fn applied_lsn(&self) -> Lsn {
        self.applied_lsn.load(Ordering::Acquire)
    }

    fn applied(&self, lsn: Lsn, rows: usize) {
        self.applied_lsn.store(lsn, Ordering::Release);
        self.writer_lsn.fetch_max(lsn, Ordering::Relaxed);
        self.entries_applied.fetch_add(1, Ordering::Relaxed);
        self.rows_applied.fetch_add(rows as u64, Ordering::Relaxed);
        self.note_position();
    }

    fn heard(&self, durable_lsn: Lsn) {
        self.writer_lsn.fetch_max(durable_lsn, Ordering::Relaxed);
        self.note_position();
    }

    fn note_position(&self) {
        if self.applied_lsn() >= self.writer_lsn.load(Ordering::Relaxed) {
            self.state.lock().unwrap().caught_up_at = Some(Instant::now());
        }
    }

    fn connected(&self, writer: &str) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap();
        state.writer = Some(writer.to_owned());
        state.connected = true;
    }

    fn disconnected(&self, error: &ReplicationError) {
        let mut state = self.state.lock().unwrap();
        state.connected = false;
        state.last_error = Some(error.to_string());
    }

    pub fn status(&self) -> ReplicationStatus {
        let state = self.state.lock().unwrap();
        let applied_lsn = self.applied_lsn();
        let writer_lsn = self.writer_lsn.load(Ordering::Relaxed).max(applied_lsn);
        let lag_entries = writer_lsn - applied_lsn;
        let lag_seconds = match state.caught_up_at {
            Some(at) if lag_entries > 0 => at.elapsed().as_secs_f64(),
            _ => 0.0,
        };
        ReplicationStatus {
            writer: state.writer.clone(),
            connected: state.connected,
            applied_lsn,
            writer_lsn,
            lag_entries,
            lag_seconds,
            entries_applied: self.entries_applied.load(Ordering::Relaxed),
            rows_applied: self.rows_applied.load(Ordering::Relaxed),
            gaps: self.gaps.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            chunks_released: self.chunks_released.load(Ordering::Relaxed),
            last_error: state.last_error.clone(),
            files_missing: self.files_missing.load(Ordering::Relaxed),
            files_pulled: self.files_pulled.load(Ordering::Relaxed),
            bytes_pulled: self.bytes_pulled.load(Ordering::Relaxed),
            checksum_mismatches: self.checksum_mismatches.load(Ordering::Relaxed),
            pull_failures: self.pull_failures.load(Ordering::Relaxed),
            files_deleted: self.files_deleted.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_cut_and_damage_is_detected() {
        let mut wire = Vec::new();
        encode_entry(
            &mut wire,
            7,
            &[Bytes::from_static(b"head"), Bytes::from_static(b"body")],
        );
        wire.extend_from_slice(&encode_keepalive(9));
        encode_entry(&mut wire, 10, &[Bytes::from_static(b"x")]);
        let expected = vec![
            Frame::Entry {
                lsn: 7,
                payload: Bytes::from_static(b"headbody"),
            },
            Frame::KeepAlive { durable_lsn: 9 },
            Frame::Entry {
                lsn: 10,
                payload: Bytes::from_static(b"x"),
            },
        ];
        for cut in 0..wire.len() {
            let mut decoder = FrameDecoder::default();
            decoder.push(&wire[..cut]);
            let mut frames = decoder.frames().unwrap();
            decoder.push(&wire[cut..]);
            frames.extend(decoder.frames().unwrap());
            assert_eq!(frames, expected, "cut at {cut}");
        }
        let mut damaged = wire.clone();
        damaged[RECORD_HEADER_LEN + 2] ^= 0xff;
        let mut decoder = FrameDecoder::default();
        decoder.push(&damaged);
        assert_eq!(decoder.frames(), Err(CorruptFrame));
    }
}
