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

mod acks;
mod barrier;
mod follower;
mod puller;
mod source;
mod view;

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;

pub use acks::{AckError, AckPolicy, readers_needed};
pub use barrier::{BarrierError, Coverage, ReadBarrier, covered};
pub use follower::Follower;
pub use puller::Puller;
pub use source::{ReaderPositions, ReaderStatus, entry_stream};
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
    /// Applied and durable in this node's own WAL (the same as applied without one).
    mirrored_lsn: AtomicU64,
    writer_lsn: AtomicU64,
    entries_applied: AtomicU64,
    rows_applied: AtomicU64,
    gaps: AtomicU64,
    connects: AtomicU64,
    chunks_released: AtomicU64,
    files_missing: AtomicU64,
    files_pulled: AtomicU64,
    bytes_pulled: AtomicU64,
    copies_resumed: AtomicU64,
    checksum_mismatches: AtomicU64,
    pull_failures: AtomicU64,
    files_deleted: AtomicU64,
    copies_in_flight: AtomicU64,
    state: Mutex<StreamState>,
    catchup: Mutex<Catchup>,
    /// `cluster.query_gate_on_catchup` (with the catch-up enabled, on a reader that copies files).
    gated: bool,
    gate_fires: AtomicU64,
    gate_warned_at: Mutex<Option<Instant>>,
    barrier_refusals: AtomicU64,
    /// Entries the stream skipped (inclusive ranges, oldest first): their rows are only in files.
    gaps_skipped: Mutex<Vec<(Lsn, Lsn)>>,
    /// Woken when entries were applied or the view moved on, for the read barrier.
    progress: tokio::sync::Notify,
}

/// Skipped ranges remembered; beyond this the oldest two are merged (a wider range only makes
/// the read barrier wait for more files).
const MAX_GAP_RANGES: usize = 64;

/// The start-up catch-up: the first pass of the puller over the whole manifest.
#[derive(Debug, Default)]
struct Catchup {
    status: CatchupStatus,
    /// Catch-up files not copied yet; a later copy of one heals the gate.
    failed: HashSet<String>,
}

/// The seeds' catch-up counters, as `GET /api/v1/cluster` and the gate's 503 show them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CatchupStatus {
    /// Unix seconds; 0 before the pass starts.
    pub started_at: i64,
    /// Unix seconds; 0 while the pass is still walking the manifest.
    pub completed_at: i64,
    pub entries_walked: u64,
    pub enqueued: u64,
    pub skipped_local: u64,
    pub skipped_dup: u64,
    pub pulled: u64,
    pub failed: u64,
    pub dropped: u64,
    pub catchup_inflight: u64,
    pub catchup_failed: u64,
    pub catchup_dropped: u64,
    pub queue_depth: u64,
    pub inflight_count: u64,
}

/// Pure: whether queries may be answered: the catch-up pass is over and every file it found
/// missing has been copied.
pub fn gate_open(catchup: &CatchupStatus) -> bool {
    catchup.completed_at != 0
        && catchup.catchup_inflight == 0
        && catchup.catchup_failed == 0
        && catchup.catchup_dropped == 0
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
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
    /// Held durably in this node's WAL: what the writer is told.
    pub durable_lsn: Lsn,
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
    /// Files copied from peers, under Arc's key.
    #[serde(rename = "pulled")]
    pub files_pulled: u64,
    pub bytes_pulled: u64,
    /// Copies that went on from the bytes an interrupted one left.
    pub copies_resumed: u64,
    #[serde(rename = "checksum_mismatch")]
    pub checksum_mismatches: u64,
    /// Copies that failed (each peer tried counts), under Arc's key.
    #[serde(rename = "failed")]
    pub pull_failures: u64,
    /// Arc's counters of work its bounded queue dropped or found queued twice; both stay 0 here,
    /// since the puller rescans the manifest instead of queueing changes.
    pub dropped: u64,
    pub skipped_dup: u64,
    pub files_deleted: u64,
    pub catchup: CatchupStatus,
    /// Queries answered 503 by the catch-up gate so far.
    pub gate_fires: u64,
    /// Queries answered 503 because the read barrier timed out.
    pub barrier_refusals: u64,
}

impl ReplicationStats {
    pub fn applied_lsn(&self) -> Lsn {
        self.applied_lsn.load(Ordering::Acquire)
    }

    pub fn mirrored_lsn(&self) -> Lsn {
        self.mirrored_lsn.load(Ordering::Acquire)
    }

    fn mirrored(&self, lsn: Lsn) {
        self.mirrored_lsn.fetch_max(lsn, Ordering::AcqRel);
    }

    /// A reader restarted with the entries through `lsn` replayed from its own WAL: its stream
    /// goes on after them.
    pub fn resume_from(&self, lsn: Lsn) {
        self.applied_lsn.fetch_max(lsn, Ordering::AcqRel);
        self.mirrored_lsn.fetch_max(lsn, Ordering::AcqRel);
        self.writer_lsn.fetch_max(lsn, Ordering::Relaxed);
    }

    fn applied(&self, lsn: Lsn, rows: usize) {
        self.applied_lsn.store(lsn, Ordering::Release);
        self.writer_lsn.fetch_max(lsn, Ordering::Relaxed);
        self.entries_applied.fetch_add(1, Ordering::Relaxed);
        self.rows_applied.fetch_add(rows as u64, Ordering::Relaxed);
        self.note_position();
    }

    /// The stream skipped the entries `from..=to`.
    fn skipped(&self, from: Lsn, to: Lsn) {
        self.gaps.fetch_add(1, Ordering::Relaxed);
        let mut ranges = self.gaps_skipped.lock().unwrap();
        ranges.push((from, to));
        if ranges.len() > MAX_GAP_RANGES {
            let (first, _) = ranges.remove(0);
            ranges[0].0 = first;
        }
    }

    pub fn gap_ranges(&self) -> Vec<(Lsn, Lsn)> {
        self.gaps_skipped.lock().unwrap().clone()
    }

    /// Entries were applied, or the files a query reads changed.
    pub fn progressed(&self) {
        self.progress.notify_waiters();
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
            durable_lsn: self.mirrored_lsn(),
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
            copies_resumed: self.copies_resumed.load(Ordering::Relaxed),
            checksum_mismatches: self.checksum_mismatches.load(Ordering::Relaxed),
            pull_failures: self.pull_failures.load(Ordering::Relaxed),
            dropped: 0,
            skipped_dup: 0,
            files_deleted: self.files_deleted.load(Ordering::Relaxed),
            catchup: self.catchup_status(),
            gate_fires: self.gate_fires.load(Ordering::Relaxed),
            barrier_refusals: self.barrier_refusals.load(Ordering::Relaxed),
        }
    }

    pub fn new(gated: bool) -> ReplicationStats {
        ReplicationStats {
            gated,
            ..ReplicationStats::default()
        }
    }

    pub fn catchup_status(&self) -> CatchupStatus {
        let catchup = self.catchup.lock().unwrap();
        CatchupStatus {
            queue_depth: self.files_missing.load(Ordering::Relaxed),
            inflight_count: self.copies_in_flight.load(Ordering::Relaxed),
            ..catchup.status.clone()
        }
    }

    /// The catch-up status while the gate holds queries back; `None` when they may run. Counts
    /// the refusal, and warns at most once a second.
    pub fn gate_closed(&self) -> Option<CatchupStatus> {
        if !self.gated {
            return None;
        }
        let status = self.catchup_status();
        if gate_open(&status) {
            return None;
        }
        self.gate_fires.fetch_add(1, Ordering::Relaxed);
        if self.refusal_warning_due() {
            tracing::warn!(
                pending = status.catchup_inflight + status.catchup_failed,
                "query refused: replication catch-up in progress"
            );
        }
        Some(status)
    }

    /// A query was refused because the read barrier did not pass; warns at most once a second.
    pub fn barrier_refused(&self, error: &BarrierError) {
        self.barrier_refusals.fetch_add(1, Ordering::Relaxed);
        if self.refusal_warning_due() {
            tracing::warn!(error = %error, "query refused: the reader is behind the manifest");
        }
    }

    /// Refused queries are logged at most once a second, however many arrive.
    fn refusal_warning_due(&self) -> bool {
        let mut warned = self.gate_warned_at.lock().unwrap();
        let due = warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if due {
            *warned = Some(Instant::now());
        }
        due
    }

    fn catchup_started(&self, walked: usize, skipped_local: usize, missing: &[String]) {
        let mut catchup = self.catchup.lock().unwrap();
        catchup.status.started_at = unix_now();
        catchup.status.entries_walked = walked as u64;
        catchup.status.skipped_local = skipped_local as u64;
        catchup.status.enqueued = missing.len() as u64;
        catchup.status.catchup_inflight = missing.len() as u64;
        catchup.failed.clear();
    }

    /// A copy of `path` ended; during the catch-up pass (`in_catchup`) it counts there.
    fn copy_ended(&self, path: &str, copied: bool, in_catchup: bool) {
        let mut catchup = self.catchup.lock().unwrap();
        if in_catchup {
            catchup.status.catchup_inflight = catchup.status.catchup_inflight.saturating_sub(1);
            if copied {
                catchup.status.pulled += 1;
            } else {
                catchup.status.failed += 1;
                catchup.failed.insert(path.to_owned());
            }
        } else if copied {
            catchup.failed.remove(path);
        }
        catchup.status.catchup_failed = catchup.failed.len() as u64;
    }

    /// Ends the catch-up pass; catch-up files that left the manifest no longer hold the gate.
    fn catchup_round_done(&self, manifest: &HashSet<&str>, first: bool) {
        let mut catchup = self.catchup.lock().unwrap();
        if first {
            catchup.status.completed_at = unix_now();
        }
        catchup.failed.retain(|p| manifest.contains(p.as_str()));
        catchup.status.catchup_failed = catchup.failed.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_once_the_catch_up_pass_is_over_and_nothing_it_found_is_missing() {
        let done = CatchupStatus {
            started_at: 1,
            completed_at: 2,
            ..CatchupStatus::default()
        };
        assert!(gate_open(&done));
        assert!(!gate_open(&CatchupStatus::default()));
        for pending in [
            CatchupStatus {
                catchup_inflight: 1,
                ..done.clone()
            },
            CatchupStatus {
                catchup_failed: 1,
                ..done.clone()
            },
            CatchupStatus {
                catchup_dropped: 1,
                ..done.clone()
            },
        ] {
            assert!(!gate_open(&pending), "{pending:?}");
        }
        // Steady-state trouble after the pass does not hold queries back.
        assert!(gate_open(&CatchupStatus {
            failed: 5,
            queue_depth: 3,
            ..done
        }));
    }

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
