//! Prometheus metrics, under Arc's `arc_*` names wherever the same thing is measured.
//!
//! Counters and histograms are process-wide (one process is one node, as in Arc) and are bumped
//! where things happen: a few atomic adds per request or per flush, never per row. Values that
//! a component already keeps — buffered rows, Raft's term and log, replication progress, the
//! writer epoch — are read when scraped ([`Live`]), so the metric and the component cannot
//! disagree.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

/// Arc's HTTP latency buckets, in seconds.
const HTTP_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Queries run far longer than most requests.
const QUERY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub ingest: IngestMetrics,
    pub query: QueryMetrics,
    pub flush: FlushMetrics,
    pub storage: StorageMetrics,
    pub compaction: CompactionMetrics,
    pub auth: AuthMetrics,
    pub wal: WalMetrics,
    pub cluster: ClusterMetrics,
}

pub struct HttpMetrics {
    pub requests: Counter,
    pub success: Counter,
    pub errors: Counter,
    pub latency: Histogram,
}

impl HttpMetrics {
    /// One answered request; statuses from 400 up count as errors, as in Arc.
    pub fn record(&self, status: u16, seconds: f64) {
        self.requests.inc();
        if status >= 400 {
            self.errors.inc();
        } else {
            self.success.inc();
        }
        self.latency.observe(seconds);
    }
}

#[derive(Default)]
pub struct ProtocolMetrics {
    pub requests: Counter,
    pub records: Counter,
    pub bytes: Counter,
}

#[derive(Default)]
pub struct IngestMetrics {
    pub records: Counter,
    pub bytes: Counter,
    pub batches: Counter,
    pub errors: Counter,
    pub msgpack: ProtocolMetrics,
    pub line_protocol: ProtocolMetrics,
}

impl IngestMetrics {
    /// One write request of `bytes` (as received); `stored` is the rows it stored, or `None`
    /// when it was refused.
    pub fn record(&self, protocol: &ProtocolMetrics, bytes: usize, stored: Option<usize>) {
        protocol.requests.inc();
        match stored {
            Some(rows) => {
                let (rows, bytes) = (rows as u64, bytes as u64);
                self.records.inc_by(rows);
                self.bytes.inc_by(bytes);
                self.batches.inc();
                protocol.records.inc_by(rows);
                protocol.bytes.inc_by(bytes);
            }
            None => {
                self.errors.inc();
            }
        }
    }
}

pub struct QueryMetrics {
    pub requests: Counter,
    pub success: Counter,
    pub errors: Counter,
    pub timeouts: Counter,
    pub rows: Counter,
    pub latency: Histogram,
}

#[derive(Default)]
pub struct FlushMetrics {
    pub records_written: Counter,
    pub flushes: Counter,
    pub failures: Counter,
}

#[derive(Default)]
pub struct StorageMetrics {
    pub writes: Counter,
    pub write_bytes: Counter,
    pub reads: Counter,
    pub read_bytes: Counter,
    pub errors: Counter,
}

#[derive(Default)]
pub struct CompactionMetrics {
    pub jobs: Counter,
    pub success: Counter,
    pub failed: Counter,
    pub files_compacted: Counter,
    pub bytes_read: Counter,
    pub bytes_written: Counter,
}

#[derive(Default)]
pub struct AuthMetrics {
    pub requests: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub failures: Counter,
}

#[derive(Default)]
pub struct WalMetrics {
    pub entries: Counter,
    pub bytes: Counter,
    pub syncs: Counter,
    pub failed_writes: Counter,
    pub recoveries: Counter,
    pub recovery_records: Counter,
}

#[derive(Default)]
pub struct ClusterMetrics {
    pub leader_changes: Counter,
    pub failovers: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        let metrics = Metrics {
            registry: Registry::default(),
            http: HttpMetrics {
                requests: Counter::default(),
                success: Counter::default(),
                errors: Counter::default(),
                latency: Histogram::new(HTTP_BUCKETS),
            },
            ingest: IngestMetrics::default(),
            query: QueryMetrics {
                requests: Counter::default(),
                success: Counter::default(),
                errors: Counter::default(),
                timeouts: Counter::default(),
                rows: Counter::default(),
                latency: Histogram::new(QUERY_BUCKETS),
            },
            flush: FlushMetrics::default(),
            storage: StorageMetrics::default(),
            compaction: CompactionMetrics::default(),
            auth: AuthMetrics::default(),
            wal: WalMetrics::default(),
            cluster: ClusterMetrics::default(),
        };
        metrics.registered()
    }

    /// Registers every metric under its name (counters get `_total` from the encoder).
    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        let counters: &[(&str, &str, &Counter)] = &[
            (
                "arc_http_requests",
                "HTTP requests answered",
                &self.http.requests,
            ),
            (
                "arc_http_requests_success",
                "HTTP requests answered below 400",
                &self.http.success,
            ),
            (
                "arc_http_requests_error",
                "HTTP requests answered 400 or above",
                &self.http.errors,
            ),
            (
                "arc_ingest_records",
                "Records stored by write requests",
                &self.ingest.records,
            ),
            (
                "arc_ingest_bytes",
                "Bytes of stored write requests, as received",
                &self.ingest.bytes,
            ),
            (
                "arc_ingest_batches",
                "Write requests stored",
                &self.ingest.batches,
            ),
            (
                "arc_ingest_errors",
                "Write requests refused",
                &self.ingest.errors,
            ),
            (
                "arc_msgpack_requests",
                "MessagePack write requests",
                &self.ingest.msgpack.requests,
            ),
            (
                "arc_msgpack_records",
                "Records stored from MessagePack",
                &self.ingest.msgpack.records,
            ),
            (
                "arc_msgpack_bytes",
                "Bytes of stored MessagePack requests",
                &self.ingest.msgpack.bytes,
            ),
            (
                "arc_lineprotocol_requests",
                "Line-protocol write requests",
                &self.ingest.line_protocol.requests,
            ),
            (
                "arc_lineprotocol_records",
                "Records stored from line protocol",
                &self.ingest.line_protocol.records,
            ),
            (
                "arc_lineprotocol_bytes",
                "Bytes of stored line-protocol requests",
                &self.ingest.line_protocol.bytes,
            ),
            (
                "arc_query_requests",
                "SQL queries received",
                &self.query.requests,
            ),
            (
                "arc_query_success",
                "SQL queries answered in full",
                &self.query.success,
            ),
            (
                "arc_query_errors",
                "SQL queries that failed",
                &self.query.errors,
            ),
            (
                "arc_query_timeouts",
                "SQL queries stopped at query.timeout",
                &self.query.timeouts,
            ),
            (
                "arc_query_rows",
                "Rows returned by queries",
                &self.query.rows,
            ),
            (
                "arc_buffer_records_written",
                "Records written to Parquet files by flushes",
                &self.flush.records_written,
            ),
            (
                "arc_buffer_flushes",
                "Flushes that wrote files",
                &self.flush.flushes,
            ),
            (
                "arc_buffer_flush_failures",
                "Flushes that failed (the rows stay in the WAL)",
                &self.flush.failures,
            ),
            (
                "arc_storage_writes",
                "Objects written to storage",
                &self.storage.writes,
            ),
            (
                "arc_storage_write_bytes",
                "Bytes written to storage",
                &self.storage.write_bytes,
            ),
            (
                "arc_storage_reads",
                "Objects or ranges read from storage",
                &self.storage.reads,
            ),
            (
                "arc_storage_read_bytes",
                "Bytes read from storage",
                &self.storage.read_bytes,
            ),
            (
                "arc_storage_errors",
                "Storage calls that failed",
                &self.storage.errors,
            ),
            (
                "arc_compaction_jobs",
                "Compaction jobs run",
                &self.compaction.jobs,
            ),
            (
                "arc_compaction_jobs_success",
                "Compaction jobs that succeeded",
                &self.compaction.success,
            ),
            (
                "arc_compaction_jobs_failed",
                "Compaction jobs that failed",
                &self.compaction.failed,
            ),
            (
                "arc_compaction_files_compacted",
                "Files merged away by compaction",
                &self.compaction.files_compacted,
            ),
            (
                "arc_compaction_bytes_read",
                "Bytes of files compaction merged",
                &self.compaction.bytes_read,
            ),
            (
                "arc_compaction_bytes_written",
                "Bytes of files compaction wrote",
                &self.compaction.bytes_written,
            ),
            ("arc_auth_requests", "Token checks", &self.auth.requests),
            (
                "arc_auth_cache_hits",
                "Token checks answered from the cache",
                &self.auth.cache_hits,
            ),
            (
                "arc_auth_cache_misses",
                "Token checks that verified the hash",
                &self.auth.cache_misses,
            ),
            (
                "arc_auth_failures",
                "Token checks that failed",
                &self.auth.failures,
            ),
            (
                "arc_wal_entries",
                "Write-ahead log entries made durable",
                &self.wal.entries,
            ),
            (
                "arc_wal_bytes",
                "Bytes made durable in the write-ahead log",
                &self.wal.bytes,
            ),
            (
                "arc_wal_syncs",
                "Write-ahead log syncs (group commits)",
                &self.wal.syncs,
            ),
            (
                "arc_wal_failed_writes",
                "Write-ahead log writes or syncs that failed",
                &self.wal.failed_writes,
            ),
            (
                "arc_wal_recovery",
                "Write-ahead log replays at start-up",
                &self.wal.recoveries,
            ),
            (
                "arc_wal_recovery_records",
                "Records replayed from the write-ahead log",
                &self.wal.recovery_records,
            ),
            (
                "arc_raft_leader_changes",
                "Times the Raft leader this node knows changed",
                &self.cluster.leader_changes,
            ),
            (
                "arc_failovers",
                "Readers this node promoted to writer as Raft leader",
                &self.cluster.failovers,
            ),
        ];
        for &(name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register(
            "arc_http_latency_seconds",
            "HTTP request latency",
            self.http.latency.clone(),
        );
        r.register(
            "arc_query_latency_seconds",
            "SQL query latency until the result was planned and streaming",
            self.query.latency.clone(),
        );
        self
    }

    /// The Prometheus text exposition (version 0.0.4) of every metric.
    pub fn render(&self, live: &Live) -> String {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.registry).expect("writing to a String");
        prometheus_text::encode(&mut text, &live.registry()).expect("writing to a String");
        text
    }
}

/// Values read from the node's components when scraped.
#[derive(Debug, Default, Clone)]
pub struct Live {
    pub uptime_seconds: f64,
    pub resident_memory_bytes: Option<u64>,
    pub buffer: Option<BufferLive>,
    pub raft: Option<RaftLive>,
    /// The writer epoch this node knows (cluster on local storage with a writer).
    pub writer_epoch: Option<u64>,
    /// How far each peer is behind the writer's log.
    pub replication_lag: Vec<PeerLag>,
    pub puller: Option<PullerLive>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct BufferLive {
    pub records: u64,
    pub bytes: u64,
    pub chunks_flushing: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RaftLive {
    pub term: u64,
    pub is_leader: bool,
    pub has_leader: bool,
    pub last_log_index: u64,
    pub commit_index: u64,
}

#[derive(Debug, Clone)]
pub struct PeerLag {
    pub peer: String,
    pub entries: u64,
    /// Known on the reader itself (since it last held everything); unknown to a writer.
    pub seconds: Option<f64>,
}

/// The file puller of a reader with its own storage, and its query gate.
#[derive(Debug, Default, Clone, Copy)]
pub struct PullerLive {
    pub queue_depth: u64,
    pub in_flight: u64,
    pub pulled: u64,
    pub failed: u64,
    pub dropped: u64,
    pub gate_rejections: u64,
}

type PeerLabels = Vec<(&'static str, String)>;

impl Live {
    fn registry(&self) -> Registry {
        let mut r = Registry::default();
        let seconds = |value: f64| ConstGauge::new(value);
        let gauge = |value: u64| ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        let count = |value: u64| ConstCounter::new(value);
        r.register(
            "arc_uptime_seconds",
            "Seconds since the process started",
            seconds(self.uptime_seconds),
        );
        if let Some(bytes) = self.resident_memory_bytes {
            r.register(
                "arc_memory_resident_bytes",
                "Resident memory of the process",
                gauge(bytes),
            );
        }
        if let Some(buffer) = self.buffer {
            r.register(
                "arc_buffer_records_buffered",
                "Records in memory waiting for a flush or for files to hold them",
                gauge(buffer.records),
            );
            r.register(
                "arc_buffer_bytes_buffered",
                "Memory held by buffered records",
                gauge(buffer.bytes),
            );
            r.register(
                "arc_buffer_queue_depth",
                "Buffered chunks handed to a flush that has not finished",
                gauge(buffer.chunks_flushing),
            );
        }
        if let Some(raft) = self.raft {
            let flag = |b: bool| gauge(u64::from(b));
            r.register("arc_raft_term", "Current Raft term", gauge(raft.term));
            r.register(
                "arc_raft_is_leader",
                "1 while this node leads the Raft group",
                flag(raft.is_leader),
            );
            r.register(
                "arc_raft_has_leader",
                "1 while this node knows a Raft leader",
                flag(raft.has_leader),
            );
            r.register(
                "arc_raft_last_log_index",
                "Index of the last entry in this node's Raft log",
                gauge(raft.last_log_index),
            );
            r.register(
                "arc_raft_commit_index",
                "Index of the last Raft entry known committed (as applied to the metadata)",
                gauge(raft.commit_index),
            );
        }
        if let Some(epoch) = self.writer_epoch {
            r.register(
                "arc_writer_epoch",
                "Epoch of the current writer assignment (rises with each failover)",
                gauge(epoch),
            );
        }
        if !self.replication_lag.is_empty() {
            let entries = Family::<PeerLabels, Gauge>::default();
            let seconds = Family::<PeerLabels, Gauge<f64, AtomicU64>>::default();
            for lag in &self.replication_lag {
                let labels = vec![("peer", lag.peer.clone())];
                entries
                    .get_or_create(&labels)
                    .set(i64::try_from(lag.entries).unwrap_or(i64::MAX));
                if let Some(s) = lag.seconds {
                    seconds.get_or_create(&labels).set(s);
                }
            }
            r.register(
                "arc_replication_lag_entries",
                "Entries of the writer's log a peer does not hold durably yet",
                entries,
            );
            r.register(
                "arc_replication_lag_seconds",
                "Seconds since this reader last held everything its writer had made durable",
                seconds,
            );
        }
        if let Some(puller) = self.puller {
            r.register(
                "arc_puller_queue_depth",
                "Files waiting to be copied from peers",
                gauge(puller.queue_depth),
            );
            r.register(
                "arc_puller_in_flight",
                "File copies under way",
                gauge(puller.in_flight),
            );
            r.register(
                "arc_puller_pulled",
                "Files copied from peers",
                count(puller.pulled),
            );
            r.register(
                "arc_puller_failed",
                "File copies that failed (each peer tried counts)",
                count(puller.failed),
            );
            r.register(
                "arc_puller_dropped",
                "Files dropped from a full queue (always 0: the puller rescans the manifest instead of queueing)",
                count(puller.dropped),
            );
            r.register(
                "arc_query_gate_rejections",
                "Queries answered 503 while the catch-up was incomplete",
                count(puller.gate_rejections),
            );
        }
        r
    }
}

/// Sample name (labels included, `arc_` dropped) → value, from [`Metrics::render`]'s text:
/// the flat JSON snapshot Arc serves.
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            let name = name.strip_prefix("arc_").unwrap_or(name);
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Arc's `/api/v1/metrics/endpoints` groups, from [`samples`].
pub fn endpoints(samples: &BTreeMap<String, f64>) -> Value {
    let get = |name: &str| samples.get(name).copied().unwrap_or(0.0);
    let average_ms = |histogram: &str| {
        let count = get(&format!("{histogram}_count"));
        if count == 0.0 {
            0.0
        } else {
            get(&format!("{histogram}_sum")) / count * 1000.0
        }
    };
    let protocol = |prefix: &str| {
        json!({
            "requests_total": get(&format!("{prefix}_requests_total")),
            "records_total": get(&format!("{prefix}_records_total")),
            "bytes_total": get(&format!("{prefix}_bytes_total")),
        })
    };
    json!({
        "http": {
            "requests_total": get("http_requests_total"),
            "requests_success": get("http_requests_success_total"),
            "requests_error": get("http_requests_error_total"),
            "latency_avg_ms": average_ms("http_latency_seconds"),
        },
        "ingestion": {
            "records_total": get("ingest_records_total"),
            "bytes_total": get("ingest_bytes_total"),
            "batches_total": get("ingest_batches_total"),
            "errors_total": get("ingest_errors_total"),
        },
        "msgpack": protocol("msgpack"),
        "lineprotocol": protocol("lineprotocol"),
        "query": {
            "requests_total": get("query_requests_total"),
            "success_total": get("query_success_total"),
            "errors_total": get("query_errors_total"),
            "timeouts_total": get("query_timeouts_total"),
            "rows_total": get("query_rows_total"),
            "latency_avg_ms": average_ms("query_latency_seconds"),
        },
        "buffer": {
            "records_buffered": get("buffer_records_buffered"),
            "records_written": get("buffer_records_written_total"),
            "flushes_total": get("buffer_flushes_total"),
            "errors_total": get("buffer_flush_failures_total"),
            "flush_failures_total": get("buffer_flush_failures_total"),
            "queue_depth": get("buffer_queue_depth"),
        },
        "storage": {
            "writes_total": get("storage_writes_total"),
            "write_bytes_total": get("storage_write_bytes_total"),
            "reads_total": get("storage_reads_total"),
            "read_bytes_total": get("storage_read_bytes_total"),
            "errors_total": get("storage_errors_total"),
        },
        "compaction": {
            "jobs_total": get("compaction_jobs_total"),
            "jobs_success": get("compaction_jobs_success_total"),
            "jobs_failed": get("compaction_jobs_failed_total"),
            "files_compacted": get("compaction_files_compacted_total"),
            "bytes_read": get("compaction_bytes_read_total"),
            "bytes_written": get("compaction_bytes_written_total"),
        },
        "auth": {
            "requests_total": get("auth_requests_total"),
            "cache_hits": get("auth_cache_hits_total"),
            "cache_misses": get("auth_cache_misses_total"),
            "failures_total": get("auth_failures_total"),
        },
    })
}

/// Resident memory of this process, from `/proc` (Linux only).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_arc_names_and_samples_read_it_back() {
        let metrics = Metrics::new();
        metrics
            .ingest
            .record(&metrics.ingest.line_protocol, 120, Some(3));
        metrics.ingest.record(&metrics.ingest.msgpack, 50, None);
        metrics.http.record(204, 0.002);
        metrics.http.record(400, 0.0005);
        let live = Live {
            buffer: Some(BufferLive {
                records: 3,
                bytes: 96,
                chunks_flushing: 0,
            }),
            replication_lag: vec![PeerLag {
                peer: "reader-1".into(),
                entries: 7,
                seconds: Some(0.5),
            }],
            ..Live::default()
        };
        let text = metrics.render(&live);
        for line in [
            "# TYPE arc_ingest_records_total counter",
            "arc_ingest_records_total 3",
            "arc_lineprotocol_records_total 3",
            "arc_msgpack_requests_total 1",
            "arc_ingest_errors_total 1",
            "arc_http_latency_seconds_bucket{le=\"0.001\"} 1",
            "arc_http_latency_seconds_bucket{le=\"0.005\"} 2",
            "arc_buffer_records_buffered 3",
            "arc_replication_lag_entries{peer=\"reader-1\"} 7",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let samples = samples(&text);
        assert_eq!(samples["ingest_records_total"], 3.0);
        assert_eq!(samples["replication_lag_seconds{peer=\"reader-1\"}"], 0.5);
        let groups = endpoints(&samples);
        assert_eq!(groups["lineprotocol"]["bytes_total"], 120.0);
        assert_eq!(groups["http"]["requests_error"], 1.0);
        assert_eq!(groups["buffer"]["records_buffered"], 3.0);
    }

    #[test]
    fn resident_memory_is_read_on_linux() {
        assert!(resident_memory_bytes().is_some_and(|bytes| bytes > 0));
    }
}
