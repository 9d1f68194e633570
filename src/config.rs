//! Configuration: Arc's `arc.toml` keys and `ARC_*` environment variables.
//!
//! Values are layered: built-in defaults, then the first `arc.toml` found, then environment variables
//! named `ARC_<SECTION>_<KEY>`. The set of known keys and their types comes from serialising
//! [`Config::default()`], so adding a field to a section is all it takes to make it configurable from
//! both the file and the environment. Keys arcdb does not know (a real Arc file has sections such as
//! `[auth]` or `[mqtt]`) are reported as warnings rather than refused, so an Arc file loads as is.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;
use toml::{Table, Value};

use crate::schedule::CronSchedule;

/// File name looked for in each search directory.
const CONFIG_FILE_NAME: &str = "arc.toml";

/// Prefix of every environment variable that overrides a key.
const ENV_PREFIX: &str = "ARC";

/// Accepted values of `log.level`.
const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Top-level directories a data directory must never be placed under (nor `/` itself).
const PROTECTED_DIRS: [&str; 9] = [
    "etc", "usr", "bin", "sbin", "boot", "proc", "sys", "dev", "root",
];

/// Minimum length of `cluster.shared_secret`, so the HMAC key is not guessable.
const MIN_SHARED_SECRET_CHARS: usize = 32;

/// Why configuration could not be loaded or was rejected.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse configuration file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {key}: {value} ({reason})")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("invalid value for environment variable {var}: {value:?} ({reason})")]
    InvalidEnv {
        var: String,
        value: String,
        reason: String,
    },
}

/// A loaded and validated configuration, with where it came from.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// The file that was read, if any.
    pub source: Option<PathBuf>,
    /// Keys that were present but ignored, one message each, for the caller to log.
    pub warnings: Vec<String>,
}

/// The whole configuration, one field per `arc.toml` section.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    pub storage: StorageConfig,
    pub ingest: IngestConfig,
    pub wal: WalConfig,
    pub meta: MetaConfig,
    pub query: QueryConfig,
    pub compaction: CompactionConfig,
    pub auth: AuthConfig,
    pub delete: DeleteConfig,
    pub retention: RetentionConfig,
    pub continuous_query: ContinuousQueryConfig,
    pub scheduler: SchedulerConfig,
    pub cluster: ClusterConfig,
}

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Interface to bind; empty means all interfaces.
    pub host: String,
    pub port: u16,
    /// Seconds.
    pub read_timeout: u64,
    /// Seconds.
    pub write_timeout: u64,
    /// Seconds.
    pub idle_timeout: u64,
    /// Seconds allowed for in-flight requests to finish on shutdown.
    pub shutdown_timeout: u64,
    /// Largest accepted request body.
    pub max_payload_size: ByteSize,
    pub tls_enabled: bool,
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 8000,
            read_timeout: 30,
            write_timeout: 30,
            idle_timeout: 120,
            shutdown_timeout: 30,
            max_payload_size: ByteSize(1 << 30),
            tls_enabled: false,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// One of trace, debug, info, warn, error (any case).
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Json,
        }
    }
}

/// `[storage]`: where Parquet files live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    pub local_path: String,
    pub s3_bucket: String,
    pub s3_region: String,
    /// Custom endpoint (MinIO, Garage, …); empty means AWS.
    pub s3_endpoint: String,
    pub s3_access_key: String,
    pub s3_secret_key: String,
    pub s3_use_ssl: bool,
    pub s3_path_style: bool,
    /// Key prefix under which all objects are written.
    pub s3_prefix: String,
    pub azure_connection_string: String,
    pub azure_account_name: String,
    pub azure_account_key: String,
    pub azure_sas_token: String,
    pub azure_container: String,
    pub azure_endpoint: String,
    pub azure_use_managed_identity: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Local,
            local_path: "./data/arc".to_owned(),
            s3_bucket: String::new(),
            s3_region: "us-east-1".to_owned(),
            s3_endpoint: String::new(),
            s3_access_key: String::new(),
            s3_secret_key: String::new(),
            s3_use_ssl: true,
            s3_path_style: false,
            s3_prefix: String::new(),
            azure_connection_string: String::new(),
            azure_account_name: String::new(),
            azure_account_key: String::new(),
            azure_sas_token: String::new(),
            azure_container: String::new(),
            azure_endpoint: String::new(),
            azure_use_managed_identity: false,
        }
    }
}

/// `[ingest]`: buffering and the Parquet files a flush writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestConfig {
    /// Rows buffered per measurement before a flush.
    pub max_buffer_size: usize,
    /// Oldest buffered row age, in milliseconds, before a flush.
    pub max_buffer_age_ms: u64,
    /// Memory buffered rows may hold. Above half of it a write waits for flushes to release
    /// memory (clients see latency rise); above all of it, once that wait is over, it is
    /// refused with 503 and `Retry-After`.
    pub max_buffered_bytes: ByteSize,
    pub compression: ParquetCompression,
    pub use_dictionary: bool,
    /// Dictionary-encode numeric columns too (only with `use_dictionary`).
    pub numeric_dictionary: bool,
    pub write_statistics: bool,
    pub data_page_version: DataPageVersion,
    /// 0 chooses from the CPU count.
    pub flush_workers: usize,
    /// 0 chooses from the worker count.
    pub flush_queue_size: usize,
    pub shard_count: usize,
    /// Entries `measurement:col1,col2`; see [`IngestConfig::sort_keys_for`].
    #[serde(deserialize_with = "deserialize_sort_keys")]
    pub sort_keys: Vec<String>,
    /// Comma-separated columns for measurements without a `sort_keys` entry.
    pub default_sort_keys: String,
    pub flush_timeout_seconds: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_buffer_size: 50_000,
            max_buffer_age_ms: 5_000,
            max_buffered_bytes: ByteSize(512 << 20),
            compression: ParquetCompression::Snappy,
            use_dictionary: false,
            numeric_dictionary: false,
            write_statistics: true,
            data_page_version: DataPageVersion::V2,
            flush_workers: 0,
            flush_queue_size: 0,
            shard_count: 32,
            sort_keys: Vec::new(),
            default_sort_keys: "time".to_owned(),
            flush_timeout_seconds: 30,
        }
    }
}

impl IngestConfig {
    /// The columns rows of `measurement` are sorted by: its `sort_keys` entry if there is one, else
    /// `default_sort_keys`, always ending with `time` exactly once.
    pub fn sort_keys_for(&self, measurement: &str) -> Vec<String> {
        let columns = self
            .sort_keys
            .iter()
            .find_map(|entry| {
                let (name, columns) = entry.split_once(':')?;
                (name.trim() == measurement).then_some(columns)
            })
            .unwrap_or(&self.default_sort_keys);
        let mut keys: Vec<String> = columns
            .split(',')
            .map(str::trim)
            .filter(|column| !column.is_empty() && *column != "time")
            .map(str::to_owned)
            .collect();
        keys.push("time".to_owned());
        keys
    }
}

/// `[wal]`: the write-ahead log every acknowledged write goes through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WalConfig {
    pub enabled: bool,
    pub directory: String,
    pub sync_mode: WalSyncMode,
    /// Segment size, in MiB, at which a new segment is started.
    pub max_size_mb: u64,
    /// Segment age, in seconds, at which a new segment is started.
    pub max_age_seconds: u64,
    pub recovery_interval_seconds: u64,
    /// Entries replayed per batch during recovery.
    pub recovery_batch_size: usize,
    /// Entries queued for the writer before appends wait.
    pub buffer_size: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            // Arc defaults to false; arcdb acknowledges writes only once they are in the WAL.
            enabled: true,
            directory: "./data/wal".to_owned(),
            sync_mode: WalSyncMode::Fdatasync,
            max_size_mb: 100,
            max_age_seconds: 3_600,
            recovery_interval_seconds: 300,
            recovery_batch_size: 10_000,
            buffer_size: 10_000,
        }
    }
}

/// `[meta]` (arcdb only): the durable local command log recording which files exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetaConfig {
    pub directory: String,
}

impl Default for MetaConfig {
    fn default() -> Self {
        Self {
            directory: "./data/meta".to_owned(),
        }
    }
}

/// `[query]`: SQL execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryConfig {
    /// Seconds a query may run before it is cancelled with 504.
    pub timeout: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self { timeout: 300 }
    }
}

/// `[compaction]`: merging small Parquet files into one per hour, then one per day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompactionConfig {
    pub enabled: bool,
    pub hourly_enabled: bool,
    /// Five-field cron expression (UTC).
    pub hourly_schedule: String,
    /// Hours a partition must be quiet; see [`CompactionConfig::hourly_min_age`].
    pub hourly_min_age_hours: u64,
    /// Flush-written files an hour needs before it is compacted.
    pub hourly_min_files: usize,
    pub daily_enabled: bool,
    pub daily_schedule: String,
    pub daily_min_age_hours: u64,
    /// Hour-level files a day needs before it is compacted.
    pub daily_min_files: usize,
    /// Days after which a day is compacted however recently its files were written.
    pub daily_skip_file_age_check_days: u64,
    /// Jobs run at the same time.
    pub max_concurrent: usize,
    /// Input files per job; larger partitions are compacted in several jobs.
    pub max_files_per_batch: usize,
    /// Where jobs keep downloaded inputs and the output being written.
    pub temp_directory: String,
    /// Memory one job may use for decoded rows; `auto` is a share of the machine.
    pub memory_limit: Auto<ByteSize>,
    /// Inputs a job downloads at the same time; `auto` is half the CPUs.
    pub threads: Auto<usize>,
    /// Arc's cluster completion watcher settings; read for compatibility only: arcdb swaps
    /// files with one metadata command, so there are no completion manifests to watch.
    pub completion_watcher_interval_ms: u64,
    pub completion_dir: String,
    pub completion_orphan_timeout_ms: u64,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            hourly_enabled: true,
            hourly_schedule: "5 * * * *".to_owned(),
            hourly_min_age_hours: 0,
            hourly_min_files: 10,
            daily_enabled: true,
            daily_schedule: "0 3 * * *".to_owned(),
            daily_min_age_hours: 24,
            daily_min_files: 12,
            daily_skip_file_age_check_days: 7,
            max_concurrent: 2,
            max_files_per_batch: 30,
            temp_directory: "./data/compaction".to_owned(),
            memory_limit: Auto::Auto,
            threads: Auto::Auto,
            completion_watcher_interval_ms: 1_000,
            completion_dir: String::new(),
            completion_orphan_timeout_ms: 600_000,
        }
    }
}

/// `[auth]`: API tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    pub enabled: bool,
    /// Seconds a verified token is trusted without re-checking its hash.
    pub cache_ttl: u64,
    pub max_cache_size: usize,
    /// Secret for the first admin token (at least 32 characters); empty means random.
    pub bootstrap_token: String,
    /// With `bootstrap_token`: add an `arc-recovery` admin token even when tokens exist.
    pub force_bootstrap: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cache_ttl: 300,
            max_cache_size: 1000,
            bootstrap_token: String::new(),
            force_bootstrap: false,
        }
    }
}

impl CompactionConfig {
    const MAX_FILES_PER_BATCH: std::ops::RangeInclusive<usize> = 2..=500;
    /// Smallest explicit `memory_limit`: below it a job could not hold one batch per input.
    const MIN_MEMORY_LIMIT: u64 = 8 << 20;

    /// Memory one job may use: the configured size, or (as Arc) a database-sized budget of one
    /// GiB per CPU (1–32 GiB) shared by the concurrent jobs.
    pub fn memory_limit_bytes(&self) -> u64 {
        match self.memory_limit {
            Auto::Value(size) => size.bytes(),
            Auto::Auto => {
                let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
                (cpus.clamp(1, 32) << 30) / self.max_concurrent.max(1) as u64
            }
        }
    }

    /// Inputs one job downloads at the same time.
    pub fn download_concurrency(&self) -> usize {
        match self.threads {
            Auto::Value(threads) => threads,
            Auto::Auto => (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1),
        }
    }

    /// Age an hour's start must have before the hour is compacted: at least one hour (as Arc
    /// forces), so the current hour is never a candidate.
    pub fn hourly_min_age(&self) -> chrono::Duration {
        chrono::Duration::hours(self.hourly_min_age_hours.max(1) as i64)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, text) in [
            ("compaction.hourly_schedule", &self.hourly_schedule),
            ("compaction.daily_schedule", &self.daily_schedule),
        ] {
            if let Err(err) = text.parse::<crate::schedule::CronSchedule>() {
                return Err(invalid_value(key, quoted(text), err.reason));
            }
        }
        for (key, value) in [
            ("compaction.hourly_min_files", self.hourly_min_files),
            ("compaction.daily_min_files", self.daily_min_files),
        ] {
            if value < 2 {
                return Err(invalid_value(key, value, "must be at least 2"));
            }
        }
        require_positive("compaction.max_concurrent", self.max_concurrent as u64)?;
        if !Self::MAX_FILES_PER_BATCH.contains(&self.max_files_per_batch) {
            return Err(invalid_value(
                "compaction.max_files_per_batch",
                self.max_files_per_batch,
                "must be between 2 and 500",
            ));
        }
        if let Auto::Value(size) = self.memory_limit
            && size.bytes() < Self::MIN_MEMORY_LIMIT
        {
            return Err(invalid_value(
                "compaction.memory_limit",
                quoted(&size.to_string()),
                "must be \"auto\" or at least 8MB",
            ));
        }
        if self.threads == Auto::Value(0) {
            return Err(invalid_value(
                "compaction.threads",
                0,
                "must be \"auto\" or greater than 0",
            ));
        }
        check_data_dir("compaction.temp_directory", &self.temp_directory)
    }
}

/// `[delete]`: database deletion and row deletes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeleteConfig {
    pub enabled: bool,
    /// Rows a delete may match before it needs `confirm=true` (a whole-table `where` always does).
    pub confirmation_threshold: u64,
    /// A row delete matching more rows than this is refused.
    pub max_rows_per_delete: u64,
}

impl Default for DeleteConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            confirmation_threshold: 10_000,
            max_rows_per_delete: 1_000_000,
        }
    }
}

impl DeleteConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        require_positive("delete.max_rows_per_delete", self.max_rows_per_delete)
    }
}

/// `[continuous_query]`: continuous queries and their scheduler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContinuousQueryConfig {
    pub enabled: bool,
}

impl Default for ContinuousQueryConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `[retention]`: retention policies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionConfig {
    pub enabled: bool,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `[scheduler]`: when background maintenance runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Cron schedule (UTC) on which every active retention policy runs.
    pub retention_schedule: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            retention_schedule: "0 3 * * *".to_owned(),
        }
    }
}

/// `[cluster]`: membership, Raft, replication and failover.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    pub enabled: bool,
    /// Empty means `<hostname>-<pid>`.
    pub node_id: String,
    pub role: NodeRole,
    /// Must match on every node; bound into every peer HMAC.
    pub cluster_name: String,
    /// Coordinator addresses (`host:port`) of nodes to join through.
    #[serde(deserialize_with = "deserialize_string_list")]
    pub seeds: Vec<String>,
    /// Listener for node-to-node traffic, `[host]:port`.
    pub coordinator_addr: String,
    /// Coordinator address announced to peers; empty means `coordinator_addr`.
    pub advertise_addr: String,
    /// HTTP API address (`host:port`) peers forward client requests to; empty means the bound
    /// API address, or the advertised coordinator host with the API port when bound to all
    /// interfaces. Needed behind NAT or a proxy.
    pub api_advertise_addr: String,
    /// Seconds; Arc's health-check period. Read for compatibility: arcdb derives peers' health
    /// from their heartbeats whenever it is asked.
    pub health_check_interval: u64,
    /// Seconds.
    pub health_check_timeout: u64,
    /// Missed heartbeats before a peer is unhealthy (twice as many: dead).
    pub unhealthy_threshold: u32,
    /// Seconds between heartbeats sent to every peer.
    pub heartbeat_interval: u64,
    /// Seconds.
    pub heartbeat_timeout: u64,
    /// Empty disables Raft.
    pub raft_data_dir: String,
    pub raft_bind_addr: String,
    pub raft_advertise_addr: String,
    /// Set on exactly one node when a cluster is first formed.
    pub raft_bootstrap: bool,
    /// Milliseconds.
    pub raft_election_timeout: u64,
    /// Milliseconds.
    pub raft_heartbeat_timeout: u64,
    /// Seconds.
    pub raft_snapshot_interval: u64,
    /// Log entries between snapshots.
    pub raft_snapshot_threshold: u64,
    /// Milliseconds allowed for a request forwarded to a peer.
    pub route_timeout: u64,
    pub route_retries: u32,
    /// WAL streaming to readers and the peer file puller.
    pub replication_enabled: bool,
    /// Readers that must hold a write before it is acknowledged, with replication enabled
    /// (ours, default `one`; Arc acknowledges from the writer alone, which is `none`).
    pub replication_ack: ReplicationAck,
    /// Milliseconds.
    pub replication_lag_limit: u64,
    /// Entries kept by the sender for readers to resume from.
    pub replication_buffer_size: usize,
    /// Ours: flushed WAL segments a writer keeps for readers still behind them; beyond this a
    /// reader takes the oldest of those rows from files.
    pub replication_wal_retention: ByteSize,
    /// Milliseconds between reader acknowledgements.
    pub replication_ack_interval: u64,
    pub replication_pull_workers: usize,
    pub replication_queue_size: usize,
    pub replication_fetch_timeout_ms: u64,
    pub replication_serve_timeout_ms: u64,
    pub replication_retry_max_attempts: u32,
    /// Pull every file in the manifest at startup.
    pub replication_catchup_enabled: bool,
    pub replication_catchup_barrier_timeout_ms: u64,
    /// Queue fill fraction above which the startup walker pauses.
    pub replication_catchup_queue_high_water: f64,
    /// Answer queries with 503 until the startup catch-up has finished.
    pub query_gate_on_catchup: bool,
    pub sharding_enabled: bool,
    pub sharding_num_shards: u32,
    pub sharding_shard_key: String,
    pub sharding_replication_factor: u32,
    /// Milliseconds.
    pub sharding_route_timeout: u64,
    /// Also settable as `[cluster.failover] enabled`.
    pub failover_enabled: bool,
    /// Seconds a writer may be missing before a reader is promoted.
    pub failover_timeout: u64,
    /// Seconds after a failover before another may start.
    pub failover_cooldown: u64,
    /// HMAC key authenticating every node-to-node message.
    pub shared_secret: String,
    pub tls_enabled: bool,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// CA used to verify peers; empty disables peer verification.
    pub tls_ca_file: String,
    /// Several writers sharing one object store (Pattern 2).
    pub shared_storage_mode: bool,
    /// Beyond Arc: each shared-storage writer also copies its WAL to the object store before
    /// acknowledging, and a writer lost for `failover_timeout` has its unflushed rows flushed by
    /// another writer.
    pub shared_wal: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: String::new(),
            role: NodeRole::Standalone,
            cluster_name: "arc-cluster".to_owned(),
            seeds: Vec::new(),
            coordinator_addr: ":9000".to_owned(),
            advertise_addr: String::new(),
            api_advertise_addr: String::new(),
            health_check_interval: 5,
            health_check_timeout: 3,
            unhealthy_threshold: 3,
            heartbeat_interval: 1,
            heartbeat_timeout: 5,
            raft_data_dir: "./data/raft".to_owned(),
            raft_bind_addr: ":9200".to_owned(),
            raft_advertise_addr: String::new(),
            raft_bootstrap: false,
            raft_election_timeout: 1_000,
            raft_heartbeat_timeout: 500,
            raft_snapshot_interval: 300,
            raft_snapshot_threshold: 10_000,
            route_timeout: 5_000,
            route_retries: 3,
            replication_enabled: false,
            replication_ack: ReplicationAck::One,
            replication_lag_limit: 5_000,
            replication_buffer_size: 10_000,
            replication_wal_retention: ByteSize(1 << 30),
            replication_ack_interval: 100,
            replication_pull_workers: 4,
            replication_queue_size: 1_024,
            replication_fetch_timeout_ms: 60_000,
            replication_serve_timeout_ms: 120_000,
            replication_retry_max_attempts: 3,
            replication_catchup_enabled: true,
            replication_catchup_barrier_timeout_ms: 10_000,
            replication_catchup_queue_high_water: 0.8,
            query_gate_on_catchup: false,
            sharding_enabled: false,
            sharding_num_shards: 3,
            sharding_shard_key: "database".to_owned(),
            sharding_replication_factor: 3,
            sharding_route_timeout: 5_000,
            failover_enabled: false,
            failover_timeout: 30,
            failover_cooldown: 60,
            shared_secret: String::new(),
            tls_enabled: false,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_file: String::new(),
            shared_storage_mode: false,
            shared_wal: false,
        }
    }
}

/// Defines a configuration enum written as one of a fixed set of strings, with `as_str` and `Display`.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($variant:ident => $text:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// The spelling used in `arc.toml`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// `log.format`.
    LogFormat { Json => "json", Console => "console" }
}

string_enum! {
    /// `storage.backend`; `minio` is S3 and `azblob` is Azure under another name.
    StorageBackend {
        Local => "local",
        S3 => "s3",
        Minio => "minio",
        Azure => "azure",
        Azblob => "azblob",
    }
}

string_enum! {
    /// `ingest.compression`: the Parquet codec.
    ParquetCompression {
        Snappy => "snappy",
        Zstd => "zstd",
        Gzip => "gzip",
        Lz4 => "lz4",
        None => "none",
    }
}

string_enum! {
    /// `ingest.data_page_version`: the Parquet data page format.
    DataPageVersion { V1 => "1.0", V2 => "2.0" }
}

string_enum! {
    /// `wal.sync_mode`: how an append is made durable before the write is acknowledged.
    WalSyncMode { Fdatasync => "fdatasync", Fsync => "fsync", Async => "async" }
}

string_enum! {
    /// `cluster.role`.
    NodeRole {
        Writer => "writer",
        Reader => "reader",
        Compactor => "compactor",
        Standalone => "standalone",
    }
}

impl NodeRole {
    /// Whether a node of this role runs compaction (in a cluster, only the compactor does).
    pub fn compacts(self) -> bool {
        matches!(self, NodeRole::Standalone | NodeRole::Compactor)
    }

    /// Whether a node of this role takes writes (in a cluster, only writers do).
    pub fn ingests(self) -> bool {
        matches!(self, NodeRole::Standalone | NodeRole::Writer)
    }
}

string_enum! {
    /// `cluster.replication_ack`: how many readers must hold a write before it is acknowledged.
    ReplicationAck { None => "none", One => "one", Quorum => "quorum" }
}

/// A size in bytes, written as `"1GB"`, `"512MB"`, `"100KB"`, `"10B"` or `"1024"` (units of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    const UNITS: [(&'static str, u64); 4] =
        [("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10), ("B", 1)];

    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// A size string that is not a whole number with an optional B, KB, MB or GB unit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid size {input:?}: {reason}")]
pub struct InvalidByteSize {
    input: String,
    reason: &'static str,
}

impl FromStr for ByteSize {
    type Err = InvalidByteSize;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidByteSize {
            input: input.to_owned(),
            reason,
        };
        let malformed = || invalid("expected a whole number with an optional B, KB, MB or GB unit");
        let text = input.trim();
        let digits_end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(digits_end);
        if digits.is_empty() {
            return Err(malformed());
        }
        let unit = unit.trim_start();
        let multiplier = if unit.is_empty() {
            1
        } else {
            Self::UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .map(|&(_, multiplier)| multiplier)
                .ok_or_else(malformed)?
        };
        digits
            .parse::<u64>()
            .ok()
            .and_then(|count| count.checked_mul(multiplier))
            .map(ByteSize)
            .ok_or_else(|| invalid("too large"))
    }
}

impl fmt::Display for ByteSize {
    /// The largest unit that divides the size exactly, so the text parses back to the same size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, multiplier) = Self::UNITS
            .iter()
            .find(|(_, multiplier)| self.0 != 0 && self.0.is_multiple_of(*multiplier))
            .unwrap_or(&("B", 1));
        write!(f, "{}{unit}", self.0 / multiplier)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ByteSizeVisitor;

        impl Visitor<'_> for ByteSizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512MB\" or a number of bytes")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
                text.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(bytes))
            }

            fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<ByteSize, E> {
                u64::try_from(bytes)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }

        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

/// A setting that is either `"auto"` (chosen from the machine) or an explicit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auto<T> {
    Auto,
    Value(T),
}

const AUTO: &str = "auto";

impl<T: fmt::Display> Serialize for Auto<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Auto::Auto => serializer.serialize_str(AUTO),
            Auto::Value(value) => serializer.collect_str(value),
        }
    }
}

impl<'de, T> Deserialize<'de> for Auto<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AutoVisitor<T>(std::marker::PhantomData<T>);

        impl<T> Visitor<'_> for AutoVisitor<T>
        where
            T: FromStr,
            T::Err: fmt::Display,
        {
            type Value = Auto<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\" or a value")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Auto<T>, E> {
                if text.trim().eq_ignore_ascii_case(AUTO) {
                    return Ok(Auto::Auto);
                }
                text.trim().parse().map(Auto::Value).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Auto<T>, E> {
                self.visit_str(&value.to_string())
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Auto<T>, E> {
                self.visit_str(&value.to_string())
            }
        }

        deserializer.deserialize_any(AutoVisitor(std::marker::PhantomData))
    }
}

/// Splits a list written as one string. Commas and whitespace both separate items: Arc's own code
/// splits `seeds` on commas, while its settings library splits other lists (such as
/// `ARC_INGEST_SORT_KEYS`) on whitespace.
fn split_list(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads a list given either as an array of strings or as one string (see [`split_list`]); Arc's
/// code reads such keys as strings while its documentation shows arrays.
fn deserialize_string_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    struct StringListVisitor;

    impl<'de> Visitor<'de> for StringListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of strings or a comma-separated string")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<String>, E> {
            Ok(split_list(text))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Vec<String>, A::Error> {
            let mut list = Vec::new();
            while let Some(item) = items.next_element::<String>()? {
                list.push(item.trim().to_owned());
            }
            Ok(list)
        }
    }

    deserializer.deserialize_any(StringListVisitor)
}

/// Reads `ingest.sort_keys`. Splitting a string on commas also splits each entry's column list, so
/// an item without `:` is a further column of the entry before it.
fn deserialize_sort_keys<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    let mut entries: Vec<String> = Vec::new();
    for item in deserialize_string_list(deserializer)? {
        match entries.last_mut() {
            Some(entry) if !item.contains(':') => {
                entry.push(',');
                entry.push_str(&item);
            }
            _ => entries.push(item),
        }
    }
    Ok(entries)
}

/// Loads the configuration from the first `arc.toml` in `.`, `/etc/arc/` or `$HOME/.arc/` (or from
/// `explicit`), then the process environment, and validates it.
pub fn load(explicit: Option<&Path>) -> Result<Loaded, ConfigError> {
    let mut search_dirs = vec![PathBuf::from("."), PathBuf::from("/etc/arc")];
    if let Some(home) = std::env::var_os("HOME") {
        search_dirs.push(PathBuf::from(home).join(".arc"));
    }
    load_with_env(explicit, &search_dirs, &|name| std::env::var(name).ok())
}

/// [`load`] with the search directories and the environment supplied by the caller.
///
/// `explicit` must exist; otherwise the first `arc.toml` found in `search_dirs` is read, and none
/// found means defaults.
pub fn load_with_env(
    explicit: Option<&Path>,
    search_dirs: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    let source = match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => search_dirs
            .iter()
            .map(|dir| dir.join(CONFIG_FILE_NAME))
            .find(|path| path.is_file()),
    };
    let file = match &source {
        Some(path) => read_table(path)?,
        None => Table::new(),
    };
    let (config, warnings) = resolve(file, env, source.as_deref())?;
    Ok(Loaded {
        config,
        source,
        warnings,
    })
}

fn read_table(path: &Path) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|error: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: error.to_string(),
    })
}

/// Layers `file` and `env` over the defaults, then validates. Returns the ignored-key warnings.
fn resolve(
    mut file: Table,
    env: &dyn Fn(&str) -> Option<String>,
    source: Option<&Path>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let defaults = default_table();
    let mut overrides = Vec::new();
    let mut warnings = Vec::new();
    take_failover_table(&mut file, &defaults, &mut overrides, &mut warnings);
    collect_file_overrides(file, &defaults, &[], &mut overrides, &mut warnings)?;
    collect_env_overrides(&defaults, env, &mut overrides)?;
    let mut config = build_config(&defaults, &overrides, source)?;
    config.validate()?;
    config.cluster.disable_unopenable_query_gate(&mut warnings);
    config.cluster.default_raft_dir(&config.meta.directory);
    Ok((config, warnings))
}

/// The defaults as TOML: the source of every known key path and its type.
fn default_table() -> Table {
    Table::try_from(Config::default()).expect("the default configuration serialises to TOML")
}

/// A value for one known key, and where it was set (for error messages).
struct Override {
    path: Vec<String>,
    value: Value,
    origin: Origin,
}

enum Origin {
    /// `key` is the dotted path as written in the file.
    File {
        key: String,
    },
    Env {
        var: String,
        raw: String,
    },
}

impl Override {
    fn rejected(&self, reason: &str) -> ConfigError {
        match &self.origin {
            Origin::File { key } => ConfigError::InvalidValue {
                key: key.clone(),
                value: self.value.to_string(),
                reason: reason.to_owned(),
            },
            Origin::Env { var, raw } => ConfigError::InvalidEnv {
                var: var.clone(),
                value: raw.clone(),
                reason: reason.to_owned(),
            },
        }
    }
}

/// Maps Arc's documented `[cluster.failover]` table (`enabled`, `timeout`, `cooldown`) onto the flat
/// `cluster.failover_*` keys its code reads. A flat key set in the same file wins.
fn take_failover_table(
    file: &mut Table,
    defaults: &Table,
    overrides: &mut Vec<Override>,
    warnings: &mut Vec<String>,
) {
    let (Some(Value::Table(cluster)), Some(Value::Table(cluster_defaults))) =
        (file.get_mut("cluster"), defaults.get("cluster"))
    else {
        return;
    };
    let failover = match cluster.remove("failover") {
        Some(Value::Table(failover)) => failover,
        // Anything but a table stays, to be reported as an unknown key.
        Some(other) => {
            cluster.insert("failover".to_owned(), other);
            return;
        }
        None => return,
    };
    for (key, value) in failover {
        let written = format!("cluster.failover.{key}");
        let flat = format!("failover_{key}");
        if !cluster_defaults.contains_key(&flat) {
            warn_unknown(&written, &value, warnings);
        } else if cluster.contains_key(&flat) {
            warnings.push(format!(
                "configuration key '{written}' ignored: 'cluster.{flat}' is also set"
            ));
        } else {
            overrides.push(Override {
                path: vec!["cluster".to_owned(), flat],
                value,
                origin: Origin::File { key: written },
            });
        }
    }
}

/// Turns every known key of `file` into an override and warns about the rest.
fn collect_file_overrides(
    file: Table,
    defaults: &Table,
    prefix: &[String],
    overrides: &mut Vec<Override>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for (key, value) in file {
        let path = [prefix, std::slice::from_ref(&key)].concat();
        let dotted = path.join(".");
        match (defaults.get(&key), value) {
            (None, value) => warn_unknown(&dotted, &value, warnings),
            (Some(Value::Table(section_defaults)), Value::Table(section)) => {
                collect_file_overrides(section, section_defaults, &path, overrides, warnings)?;
            }
            (Some(Value::Table(_)), value) => {
                return Err(ConfigError::InvalidValue {
                    key: dotted,
                    value: value.to_string(),
                    reason: "expected a table of settings".to_owned(),
                });
            }
            (Some(_), value) => overrides.push(Override {
                path,
                value,
                origin: Origin::File { key: dotted },
            }),
        }
    }
    Ok(())
}

/// One warning per unknown leaf key, so each ignored setting is named.
fn warn_unknown(dotted: &str, value: &Value, warnings: &mut Vec<String>) {
    match value {
        Value::Table(table) if !table.is_empty() => {
            for (key, inner) in table {
                warn_unknown(&format!("{dotted}.{key}"), inner, warnings);
            }
        }
        _ => warnings.push(format!("unknown configuration key '{dotted}' ignored")),
    }
}

/// Reads `ARC_<PATH>` for every known key path; an empty variable counts as unset, as in Arc.
fn collect_env_overrides(
    defaults: &Table,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &mut Vec<Override>,
) -> Result<(), ConfigError> {
    for (path, default) in leaf_paths(defaults) {
        let var = format!("{ENV_PREFIX}_{}", path.join("_").to_uppercase());
        let Some(raw) = env(&var).filter(|raw| !raw.is_empty()) else {
            continue;
        };
        let value = parse_env_value(&var, &raw, default)?;
        overrides.retain(|existing| existing.path != path);
        overrides.push(Override {
            path,
            value,
            origin: Origin::Env { var, raw },
        });
    }
    Ok(())
}

/// Every non-table value under `table`, with its key path, in key order.
fn leaf_paths(table: &Table) -> Vec<(Vec<String>, &Value)> {
    fn walk<'a>(
        table: &'a Table,
        prefix: &mut Vec<String>,
        out: &mut Vec<(Vec<String>, &'a Value)>,
    ) {
        for (key, value) in table {
            prefix.push(key.clone());
            match value {
                Value::Table(inner) => walk(inner, prefix, out),
                leaf => out.push((prefix.clone(), leaf)),
            }
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    walk(table, &mut Vec::new(), &mut out);
    out
}

/// Converts an environment string to the TOML type of the key's default value.
fn parse_env_value(var: &str, raw: &str, default: &Value) -> Result<Value, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidEnv {
        var: var.to_owned(),
        value: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let text = raw.trim();
    match default {
        Value::Boolean(_) => match text.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Value::Boolean(true)),
            "false" | "0" => Ok(Value::Boolean(false)),
            _ => Err(invalid("expected true, false, 1 or 0")),
        },
        Value::Integer(_) => text
            .parse()
            .map(Value::Integer)
            .map_err(|_| invalid("expected an integer")),
        Value::Float(_) => text
            .parse()
            .map(Value::Float)
            .map_err(|_| invalid("expected a number")),
        Value::Array(_) => Ok(Value::Array(
            split_list(text).into_iter().map(Value::String).collect(),
        )),
        _ => Ok(Value::String(raw.to_owned())),
    }
}

/// Deserialises the defaults with `overrides` applied, naming the key at fault on failure.
fn build_config(
    defaults: &Table,
    overrides: &[Override],
    source: Option<&Path>,
) -> Result<Config, ConfigError> {
    let error = match with_overrides(defaults, overrides).try_into::<Config>() {
        Ok(config) => return Ok(config),
        Err(error) => error,
    };
    // Fields deserialise independently, so applying each override alone finds the one at fault.
    for candidate in overrides {
        if let Err(error) =
            with_overrides(defaults, std::slice::from_ref(candidate)).try_into::<Config>()
        {
            return Err(candidate.rejected(error.message()));
        }
    }
    Err(ConfigError::Parse {
        path: source.map_or_else(|| PathBuf::from("<environment>"), Path::to_path_buf),
        message: error.message().to_owned(),
    })
}

fn with_overrides(defaults: &Table, overrides: &[Override]) -> Table {
    let mut table = defaults.clone();
    for Override { path, value, .. } in overrides {
        let Some((key, sections)) = path.split_last() else {
            continue;
        };
        let mut section = &mut table;
        for name in sections {
            section = match section.get_mut(name) {
                Some(Value::Table(inner)) => inner,
                _ => unreachable!("override paths follow the sections of the default table"),
            };
        }
        section.insert(key.clone(), value.clone());
    }
    table
}

fn invalid_value(key: &str, value: impl fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_owned(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// Refuses a count of zero.
fn require_positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(invalid_value(key, value, "must be greater than 0"));
    }
    Ok(())
}

/// Refuses an empty string.
fn require_set(key: &str, value: &str, when: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(invalid_value(
            key,
            quoted(value),
            format!("required when {when}"),
        ));
    }
    Ok(())
}

/// Refuses an empty data directory, `/`, or one under a system directory.
fn check_data_dir(key: &str, dir: &str) -> Result<(), ConfigError> {
    if dir.trim().is_empty() {
        return Err(invalid_value(key, quoted(dir), "must not be empty"));
    }
    let path = Path::new(dir);
    // Relative paths resolve against the working directory, which is not known to be a system one.
    if !path.has_root() {
        return Ok(());
    }
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let Some(top) = parts.first() else {
        return Err(invalid_value(
            key,
            quoted(dir),
            "must not be the root directory",
        ));
    };
    match PROTECTED_DIRS
        .iter()
        .find(|system| top.to_str() == Some(**system))
    {
        Some(system) => Err(invalid_value(
            key,
            quoted(dir),
            format!("must not be under the system directory /{system}"),
        )),
        None => Ok(()),
    }
}

/// Splits `host:port`; the host may be empty or a bracketed IPv6 address.
fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.contains(':') && !bracketed {
        return None;
    }
    Some((host, port))
}

/// Checks an address peers dial: a host and a non-zero port.
fn check_dial_addr(key: &str, addr: &str) -> Result<(), ConfigError> {
    match split_host_port(addr) {
        Some((host, port)) if !host.is_empty() && port != 0 => Ok(()),
        _ => Err(invalid_value(key, quoted(addr), "must be host:port")),
    }
}

fn is_sort_key_entry(entry: &str) -> bool {
    let Some((measurement, columns)) = entry.split_once(':') else {
        return false;
    };
    !measurement.trim().is_empty()
        && columns
            .split(',')
            .all(|column| !column.trim().is_empty() && !column.contains(':'))
}

impl Config {
    /// Checks values that parse but cannot work; the error names the key and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.log.validate()?;
        self.storage.validate()?;
        self.ingest.validate()?;
        self.wal.validate()?;
        check_data_dir("meta.directory", &self.meta.directory)?;
        require_positive("query.timeout", self.query.timeout)?;
        self.compaction.validate()?;
        self.auth.validate()?;
        self.delete.validate()?;
        if let Err(err) = self.scheduler.retention_schedule.parse::<CronSchedule>() {
            return Err(invalid_value(
                "scheduler.retention_schedule",
                quoted(&self.scheduler.retention_schedule),
                err.reason,
            ));
        }
        self.cluster.validate()?;
        if self.cluster.shared_storage_mode {
            // Several writers share files only through an object store (as Arc requires).
            let reason = if !self.cluster.enabled {
                Some("needs cluster.enabled = true")
            } else if self.storage.backend == StorageBackend::Local {
                Some("needs an object store (storage.backend s3, minio, azure or azblob)")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(invalid_value("cluster.shared_storage_mode", true, reason));
            }
        }
        if self.cluster.shared_wal && !(self.cluster.shared_storage_mode && self.wal.enabled) {
            return Err(invalid_value(
                "cluster.shared_wal",
                true,
                "needs cluster.shared_storage_mode = true and wal.enabled = true",
            ));
        }
        Ok(())
    }
}

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        require_positive("auth.max_cache_size", self.max_cache_size as u64)?;
        let secret = self.bootstrap_token.trim();
        if !secret.is_empty() && secret.chars().count() < 32 {
            // The value itself is a secret: never echo it.
            return Err(invalid_value(
                "auth.bootstrap_token",
                "(hidden)".to_string(),
                "must be at least 32 characters",
            ));
        }
        if self.force_bootstrap && secret.is_empty() {
            return Err(invalid_value(
                "auth.force_bootstrap",
                "true".to_string(),
                "needs auth.bootstrap_token (ARC_AUTH_BOOTSTRAP_TOKEN)",
            ));
        }
        Ok(())
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_payload_size.bytes() == 0 {
            return Err(invalid_value(
                "server.max_payload_size",
                quoted(&self.max_payload_size.to_string()),
                "must be greater than 0",
            ));
        }
        Ok(())
    }
}

impl LogConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !LOG_LEVELS
            .iter()
            .any(|level| level.eq_ignore_ascii_case(&self.level))
        {
            return Err(invalid_value(
                "log.level",
                quoted(&self.level),
                format!("must be one of {}", LOG_LEVELS.join(", ")),
            ));
        }
        Ok(())
    }
}

impl StorageConfig {
    /// Which storage this is, the same on every node that shares it: `local` for a node's own
    /// disk (or a directory that only looks shared), else the object store's location.
    pub fn identity(&self) -> String {
        match self.backend {
            StorageBackend::Local => "local".to_owned(),
            StorageBackend::S3 | StorageBackend::Minio => format!(
                "s3://{}/{}/{}",
                self.s3_endpoint, self.s3_bucket, self.s3_prefix
            ),
            StorageBackend::Azure | StorageBackend::Azblob => format!(
                "azure://{}/{}",
                self.azure_account_name, self.azure_container
            ),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let when = format!("storage.backend is {:?}", self.backend.as_str());
        match self.backend {
            StorageBackend::Local => {}
            StorageBackend::S3 | StorageBackend::Minio => {
                require_set("storage.s3_bucket", &self.s3_bucket, &when)?;
            }
            StorageBackend::Azure | StorageBackend::Azblob => {
                require_set("storage.azure_container", &self.azure_container, &when)?;
                if self.azure_account_name.trim().is_empty()
                    && self.azure_connection_string.trim().is_empty()
                {
                    return Err(invalid_value(
                        "storage.azure_account_name",
                        quoted(&self.azure_account_name),
                        format!("required (or storage.azure_connection_string) when {when}"),
                    ));
                }
            }
        }
        check_data_dir("storage.local_path", &self.local_path)
    }
}

impl IngestConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        require_positive("ingest.max_buffer_size", self.max_buffer_size as u64)?;
        require_positive("ingest.max_buffer_age_ms", self.max_buffer_age_ms)?;
        require_positive("ingest.max_buffered_bytes", self.max_buffered_bytes.bytes())?;
        require_positive("ingest.shard_count", self.shard_count as u64)?;
        match self
            .sort_keys
            .iter()
            .find(|entry| !is_sort_key_entry(entry))
        {
            Some(entry) => Err(invalid_value(
                "ingest.sort_keys",
                quoted(entry),
                "each entry must be \"measurement:column[,column...]\"",
            )),
            None => Ok(()),
        }
    }
}

impl WalConfig {
    /// Bound on `wal.buffer_size`, so a typo cannot reserve gigabytes of queue.
    const MAX_BUFFER_SIZE: usize = 1_000_000;

    fn validate(&self) -> Result<(), ConfigError> {
        require_positive("wal.max_size_mb", self.max_size_mb)?;
        require_positive("wal.max_age_seconds", self.max_age_seconds)?;
        if !(1..=Self::MAX_BUFFER_SIZE).contains(&self.buffer_size) {
            return Err(invalid_value(
                "wal.buffer_size",
                self.buffer_size,
                format!("must be between 1 and {}", Self::MAX_BUFFER_SIZE),
            ));
        }
        check_data_dir("wal.directory", &self.directory)
    }
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let when = "cluster.enabled is true";
        // Peers authenticate every request with it (the seeds: no replication without it).
        require_set(
            "cluster.shared_secret",
            &self.shared_secret,
            "cluster.enabled is true: set ARC_CLUSTER_SHARED_SECRET to the same secret of at \
             least 32 characters on every node",
        )?;
        let secret_chars = self.shared_secret.chars().count();
        if secret_chars < MIN_SHARED_SECRET_CHARS {
            // The secret itself is never echoed.
            return Err(invalid_value(
                "cluster.shared_secret",
                format!("<redacted, {secret_chars} characters>"),
                format!("must be at least {MIN_SHARED_SECRET_CHARS} characters"),
            ));
        }
        require_set("cluster.cluster_name", &self.cluster_name, when)?;
        for seed in &self.seeds {
            check_dial_addr("cluster.seeds", seed)?;
        }
        if split_host_port(&self.coordinator_addr).is_none() {
            return Err(invalid_value(
                "cluster.coordinator_addr",
                quoted(&self.coordinator_addr),
                "must be [host]:port",
            ));
        }
        if !self.advertise_addr.is_empty() {
            check_dial_addr("cluster.advertise_addr", &self.advertise_addr)?;
        }
        if !self.api_advertise_addr.is_empty() {
            check_dial_addr("cluster.api_advertise_addr", &self.api_advertise_addr)?;
        }
        if !self.raft_data_dir.is_empty() {
            check_data_dir("cluster.raft_data_dir", &self.raft_data_dir)?;
        }
        require_positive("cluster.failover_timeout", self.failover_timeout)?;
        require_positive("cluster.heartbeat_interval", self.heartbeat_interval)?;
        require_positive(
            "cluster.unhealthy_threshold",
            self.unhealthy_threshold.into(),
        )?;
        require_positive(
            "cluster.raft_heartbeat_timeout",
            self.raft_heartbeat_timeout,
        )?;
        if self.raft_election_timeout <= self.raft_heartbeat_timeout {
            return Err(invalid_value(
                "cluster.raft_election_timeout",
                self.raft_election_timeout,
                "must be greater than cluster.raft_heartbeat_timeout",
            ));
        }
        Ok(())
    }

    /// `replication_ack` as it applies: without replication no reader holds anything.
    pub fn replication_ack(&self) -> ReplicationAck {
        // With shared storage no reader follows a writer's log: they read the bucket.
        if self.replication_enabled && !self.shared_storage_mode {
            self.replication_ack
        } else {
            ReplicationAck::None
        }
    }

    /// An empty `raft_data_dir` keeps Raft's files next to the other metadata.
    fn default_raft_dir(&mut self, meta_dir: &str) {
        if self.raft_data_dir.is_empty() {
            self.raft_data_dir = Path::new(meta_dir)
                .join("raft")
                .to_string_lossy()
                .into_owned();
        }
    }

    /// The catch-up gate can only open once the startup download has run: with that download
    /// switched off the gate is switched off too (as Arc does), with a warning.
    fn disable_unopenable_query_gate(&mut self, warnings: &mut Vec<String>) {
        if self.query_gate_on_catchup && !self.replication_catchup_enabled {
            self.query_gate_on_catchup = false;
            warnings.push(
                "cluster.query_gate_on_catchup disabled: it needs \
                 cluster.replication_catchup_enabled = true, or queries would never be served"
                    .to_owned(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_from(vars: &[(&str, &str)]) -> HashMap<String, String> {
        vars.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    /// Loads `text` as the configuration file, with `vars` as the whole environment.
    fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("arc.toml");
        std::fs::write(&path, text).unwrap();
        let vars = env_from(vars);
        load_with_env(Some(&path), &[], &|name| vars.get(name).cloned())
    }

    fn load_env(vars: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let vars = env_from(vars);
        load_with_env(None, &[], &|name| vars.get(name).cloned())
    }

    fn invalid_value_of(result: Result<Loaded, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::InvalidValue { key, value, .. }) => (key, value),
            other => panic!("expected an invalid value, got {other:?}"),
        }
    }

    fn invalid_env_of(result: Result<Loaded, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::InvalidEnv { var, value, .. }) => (var, value),
            other => panic!("expected an invalid environment variable, got {other:?}"),
        }
    }

    /// Makes one setting of a valid configuration unworkable.
    type Breakage = fn(&mut Config);

    fn rejected_key(config: &Config) -> String {
        match config.validate() {
            Err(ConfigError::InvalidValue { key, .. }) => key,
            other => panic!("expected an invalid value, got {other:?}"),
        }
    }

    fn clustered() -> Config {
        let mut config = Config::default();
        config.cluster.enabled = true;
        config.cluster.shared_secret = SECRET.to_owned();
        config.cluster.seeds = vec!["10.0.1.10:9100".to_owned(), "[::1]:9100".to_owned()];
        config
    }

    fn lookup<'a>(table: &'a Table, path: &[String]) -> Option<&'a Value> {
        let (key, sections) = path.split_last()?;
        let mut section = table;
        for name in sections {
            section = section.get(name)?.as_table()?;
        }
        section.get(key)
    }

    #[test]
    fn defaults_match_arc_except_the_wal() {
        let mut config = Config::default();
        assert_eq!(config.server.host, "");
        assert_eq!(config.server.port, 8000);
        assert_eq!(config.server.idle_timeout, 120);
        assert_eq!(config.server.max_payload_size.bytes(), 1 << 30);
        assert_eq!(config.log.level, "info");
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.storage.backend, StorageBackend::Local);
        assert_eq!(config.storage.local_path, "./data/arc");
        assert_eq!(config.storage.s3_region, "us-east-1");
        assert!(config.storage.s3_use_ssl);
        assert!(!config.storage.s3_path_style);
        assert_eq!(config.ingest.max_buffer_size, 50_000);
        assert_eq!(config.ingest.max_buffer_age_ms, 5_000);
        assert_eq!(config.ingest.compression, ParquetCompression::Snappy);
        assert_eq!(config.ingest.data_page_version, DataPageVersion::V2);
        assert!(config.ingest.write_statistics);
        assert!(!config.ingest.use_dictionary);
        assert_eq!(config.ingest.shard_count, 32);
        assert_eq!(config.ingest.default_sort_keys, "time");
        assert!(config.wal.enabled);
        assert_eq!(config.wal.directory, "./data/wal");
        assert_eq!(config.wal.sync_mode, WalSyncMode::Fdatasync);
        assert_eq!(config.wal.max_size_mb, 100);
        assert_eq!(config.wal.buffer_size, 10_000);
        assert_eq!(config.meta.directory, "./data/meta");
        assert!(!config.cluster.enabled);
        assert_eq!(config.cluster.role, NodeRole::Standalone);
        assert_eq!(config.cluster.cluster_name, "arc-cluster");
        assert_eq!(config.cluster.coordinator_addr, ":9000");
        assert_eq!(config.cluster.raft_bind_addr, ":9200");
        assert_eq!(config.cluster.health_check_interval, 5);
        assert_eq!(config.cluster.failover_timeout, 30);
        assert_eq!(config.cluster.failover_cooldown, 60);
        assert!(config.cluster.replication_catchup_enabled);
        assert_eq!(config.cluster.replication_catchup_queue_high_water, 0.8);
        assert_eq!(config.cluster.replication_ack, ReplicationAck::One);
        assert_eq!(config.cluster.replication_ack(), ReplicationAck::None);
        config.cluster.replication_enabled = true;
        assert_eq!(config.cluster.replication_ack(), ReplicationAck::One);
        config.validate().unwrap();
    }

    #[test]
    fn enums_read_and_write_their_as_str_spelling() {
        let spelled = |value: Value| value.as_str().map(str::to_owned);
        assert_eq!(
            spelled(Value::try_from(DataPageVersion::V1).unwrap()).as_deref(),
            Some(DataPageVersion::V1.as_str())
        );
        assert_eq!(DataPageVersion::V1.as_str(), "1.0");
        assert_eq!(WalSyncMode::Async.to_string(), "async");
        assert_eq!(StorageBackend::Azblob.as_str(), "azblob");
        assert_eq!(ParquetCompression::None.as_str(), "none");
        assert_eq!(NodeRole::Compactor.as_str(), "compactor");
        assert_eq!(ReplicationAck::Quorum.as_str(), "quorum");
        assert_eq!(LogFormat::Console.as_str(), "console");
        let defaults = default_table();
        let sync_mode = lookup(&defaults, &["wal".to_owned(), "sync_mode".to_owned()]);
        assert_eq!(sync_mode.and_then(Value::as_str), Some("fdatasync"));
    }

    #[test]
    fn no_file_found_means_defaults() {
        let empty = tempfile::tempdir().unwrap();
        let loaded = load_with_env(None, &[empty.path().to_path_buf()], &no_env).unwrap();
        assert_eq!(loaded.config, Config::default());
        assert_eq!(loaded.source, None);
        assert!(loaded.warnings.is_empty());
    }

    #[test]
    fn first_file_in_search_order_wins() {
        let empty = tempfile::tempdir().unwrap();
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        std::fs::write(first.path().join("arc.toml"), "[server]\nport = 9001\n").unwrap();
        std::fs::write(second.path().join("arc.toml"), "[server]\nport = 9002\n").unwrap();
        let dirs = [empty.path(), first.path(), second.path()].map(Path::to_path_buf);
        let loaded = load_with_env(None, &dirs, &no_env).unwrap();
        assert_eq!(loaded.config.server.port, 9001);
        assert_eq!(loaded.source, Some(first.path().join("arc.toml")));
    }

    #[test]
    fn explicit_file_must_exist_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let error = load_with_env(Some(&missing), &[], &no_env).unwrap_err();
        assert!(matches!(error, ConfigError::Io { .. }), "{error:?}");
        assert!(error.to_string().contains("missing.toml"), "{error}");

        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "[server\nport = ").unwrap();
        let error = load_with_env(Some(&broken), &[], &no_env).unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        assert!(error.to_string().contains("broken.toml"), "{error}");
    }

    #[test]
    fn file_overrides_defaults() {
        let loaded = load_text(
            r#"
            [server]
            port = 9000
            max_payload_size = "512MB"
            [storage]
            backend = "s3"
            s3_bucket = "arc-data"
            s3_use_ssl = false
            [ingest]
            max_buffer_size = 1000
            compression = "zstd"
            data_page_version = "1.0"
            sort_keys = ["cpu:host"]
            [wal]
            sync_mode = "fsync"
            [cluster]
            role = "writer"
            replication_catchup_queue_high_water = 1
            "#,
            &[],
        )
        .unwrap();
        let config = &loaded.config;
        assert_eq!(config.server.port, 9000);
        assert_eq!(config.server.max_payload_size.bytes(), 512 << 20);
        assert_eq!(config.server.idle_timeout, 120);
        assert_eq!(config.storage.backend, StorageBackend::S3);
        assert_eq!(config.storage.s3_bucket, "arc-data");
        assert!(!config.storage.s3_use_ssl);
        assert_eq!(config.ingest.max_buffer_size, 1000);
        assert_eq!(config.ingest.compression, ParquetCompression::Zstd);
        assert_eq!(config.ingest.data_page_version, DataPageVersion::V1);
        assert_eq!(config.ingest.sort_keys, ["cpu:host"]);
        assert_eq!(config.wal.sync_mode, WalSyncMode::Fsync);
        assert!(config.wal.enabled);
        assert_eq!(config.cluster.role, NodeRole::Writer);
        assert_eq!(config.cluster.replication_catchup_queue_high_water, 1.0);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn env_overrides_every_value_type() {
        let config = load_env(&[
            ("ARC_SERVER_PORT", "9001"),
            ("ARC_INGEST_MAX_BUFFER_SIZE", " 1234 "),
            ("ARC_STORAGE_S3_USE_SSL", "false"),
            ("ARC_STORAGE_S3_PATH_STYLE", "1"),
            ("ARC_WAL_ENABLED", "0"),
            ("ARC_CLUSTER_QUERY_GATE_ON_CATCHUP", "TRUE"),
            ("ARC_CLUSTER_REPLICATION_CATCHUP_QUEUE_HIGH_WATER", "0.5"),
            ("ARC_CLUSTER_REPLICATION_WAL_RETENTION", "256MB"),
            ("ARC_CLUSTER_SEEDS", "a:9100, b:9100"),
            ("ARC_STORAGE_BACKEND", "minio"),
            ("ARC_STORAGE_S3_BUCKET", "arc data"),
            ("ARC_SERVER_MAX_PAYLOAD_SIZE", "512MB"),
            ("ARC_WAL_SYNC_MODE", "async"),
            ("ARC_CLUSTER_SHARED_SECRET", SECRET),
            ("ARC_META_DIRECTORY", "/var/lib/arcdb/meta"),
        ])
        .unwrap()
        .config;
        assert_eq!(config.server.port, 9001);
        assert_eq!(config.ingest.max_buffer_size, 1234);
        assert!(!config.storage.s3_use_ssl);
        assert!(config.storage.s3_path_style);
        assert!(!config.wal.enabled);
        assert!(config.cluster.query_gate_on_catchup);
        assert_eq!(config.cluster.replication_catchup_queue_high_water, 0.5);
        assert_eq!(config.cluster.replication_wal_retention.bytes(), 256 << 20);
        assert_eq!(config.cluster.seeds, ["a:9100", "b:9100"]);
        assert_eq!(config.storage.backend, StorageBackend::Minio);
        assert_eq!(config.storage.s3_bucket, "arc data");
        assert_eq!(config.server.max_payload_size.bytes(), 512 << 20);
        assert_eq!(config.wal.sync_mode, WalSyncMode::Async);
        assert_eq!(config.cluster.shared_secret, SECRET);
        assert_eq!(config.meta.directory, "/var/lib/arcdb/meta");
    }

    #[test]
    fn env_beats_file() {
        let file = "[server]\nport = 9000\n[wal]\nsync_mode = \"bogus\"\n";
        let config = load_text(
            file,
            &[("ARC_SERVER_PORT", "9100"), ("ARC_WAL_SYNC_MODE", "fsync")],
        )
        .unwrap()
        .config;
        assert_eq!(config.server.port, 9100);
        assert_eq!(config.wal.sync_mode, WalSyncMode::Fsync);
    }

    #[test]
    fn empty_env_counts_as_unset() {
        let config = load_text("[server]\nport = 9000\n", &[("ARC_SERVER_PORT", "")])
            .unwrap()
            .config;
        assert_eq!(config.server.port, 9000);
    }

    #[test]
    fn bad_env_values_name_the_variable_and_value() {
        for (var, value) in [
            ("ARC_SERVER_PORT", "abc"),
            ("ARC_SERVER_PORT", "70000"),
            ("ARC_WAL_ENABLED", "yes"),
            ("ARC_WAL_SYNC_MODE", "bogus"),
            ("ARC_CLUSTER_ROLE", "leader"),
            ("ARC_CLUSTER_REPLICATION_CATCHUP_QUEUE_HIGH_WATER", "high"),
            ("ARC_SERVER_MAX_PAYLOAD_SIZE", "lots"),
            ("ARC_INGEST_MAX_BUFFER_SIZE", "-5"),
        ] {
            let result = load_env(&[(var, value)]);
            let message = result.as_ref().unwrap_err().to_string();
            assert_eq!(invalid_env_of(result), (var.to_owned(), value.to_owned()));
            assert!(
                message.contains(var) && message.contains(value),
                "{message}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_sections_are_warnings() {
        let loaded = load_text(
            r#"
            version = 2
            [ingest]
            foo = 1
            [governance]
            enabled = true
            [mqtt]
            [cluster]
            failover = true
            [cluster.rbac]
            max_cascade_descendants = 50000
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(loaded.config, Config::default());
        assert_eq!(
            loaded.warnings,
            [
                "unknown configuration key 'cluster.failover' ignored",
                "unknown configuration key 'cluster.rbac.max_cascade_descendants' ignored",
                "unknown configuration key 'governance.enabled' ignored",
                "unknown configuration key 'ingest.foo' ignored",
                "unknown configuration key 'mqtt' ignored",
                "unknown configuration key 'version' ignored",
            ]
        );
    }

    #[test]
    fn wrong_type_names_the_key_and_value() {
        for (text, key, value) in [
            ("[server]\nport = \"abc\"", "server.port", "\"abc\""),
            ("[server]\nport = 70000", "server.port", "70000"),
            (
                "[ingest]\nmax_buffer_size = -1",
                "ingest.max_buffer_size",
                "-1",
            ),
            ("[wal]\nsync_mode = \"bogus\"", "wal.sync_mode", "\"bogus\""),
            ("[wal]\nenabled = \"yes\"", "wal.enabled", "\"yes\""),
            (
                "[server]\nmax_payload_size = \"lots\"",
                "server.max_payload_size",
                "\"lots\"",
            ),
            ("[cluster]\nseeds = 5", "cluster.seeds", "5"),
            ("server = 5", "server", "5"),
            (
                "[cluster.failover]\ntimeout = \"soon\"",
                "cluster.failover.timeout",
                "\"soon\"",
            ),
        ] {
            let result = load_text(text, &[]);
            let message = result.as_ref().unwrap_err().to_string();
            assert_eq!(invalid_value_of(result), (key.to_owned(), value.to_owned()));
            assert!(message.contains(key), "{message}");
        }
    }

    #[test]
    fn validation_message_names_key_value_and_reason() {
        let mut config = Config::default();
        config.ingest.max_buffer_size = 0;
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "invalid value for ingest.max_buffer_size: 0 (must be greater than 0)"
        );
    }

    #[test]
    fn validation_rejects_unworkable_values() {
        let cases: Vec<(&str, Breakage)> = vec![
            ("storage.s3_bucket", |c| {
                c.storage.backend = StorageBackend::S3
            }),
            ("storage.s3_bucket", |c| {
                c.storage.backend = StorageBackend::Minio
            }),
            ("storage.azure_container", |c| {
                c.storage.backend = StorageBackend::Azure;
                c.storage.azure_account_name = "account".into();
            }),
            ("storage.azure_account_name", |c| {
                c.storage.backend = StorageBackend::Azblob;
                c.storage.azure_container = "arc".into();
            }),
            ("storage.local_path", |c| c.storage.local_path = "/".into()),
            ("storage.local_path", |c| c.storage.local_path = "".into()),
            ("storage.local_path", |c| {
                c.storage.local_path = "/etc/arc".into()
            }),
            ("storage.local_path", |c| {
                c.storage.local_path = "/srv/../root/arc".into()
            }),
            ("wal.directory", |c| c.wal.directory = "/proc/wal".into()),
            ("meta.directory", |c| c.meta.directory = "//dev/".into()),
            ("ingest.max_buffer_size", |c| c.ingest.max_buffer_size = 0),
            ("ingest.max_buffer_age_ms", |c| {
                c.ingest.max_buffer_age_ms = 0
            }),
            ("ingest.shard_count", |c| c.ingest.shard_count = 0),
            ("wal.max_size_mb", |c| c.wal.max_size_mb = 0),
            ("wal.buffer_size", |c| c.wal.buffer_size = 0),
            ("wal.buffer_size", |c| c.wal.buffer_size = 1_000_001),
            ("log.level", |c| c.log.level = "verbose".into()),
            ("server.max_payload_size", |c| {
                c.server.max_payload_size = ByteSize(0)
            }),
            ("ingest.sort_keys", |c| {
                c.ingest.sort_keys = vec!["cpu".into()]
            }),
            ("ingest.sort_keys", |c| {
                c.ingest.sort_keys = vec!["cpu:".into()]
            }),
            ("ingest.sort_keys", |c| {
                c.ingest.sort_keys = vec![":host".into()]
            }),
            ("ingest.sort_keys", |c| {
                c.ingest.sort_keys = vec!["cpu:host,,dc".into()]
            }),
            ("compaction.hourly_schedule", |c| {
                c.compaction.hourly_schedule = "every hour".into()
            }),
            ("compaction.daily_schedule", |c| {
                c.compaction.daily_schedule = "0 25 * * *".into()
            }),
            ("compaction.hourly_min_files", |c| {
                c.compaction.hourly_min_files = 1
            }),
            ("compaction.daily_min_files", |c| {
                c.compaction.daily_min_files = 0
            }),
            ("compaction.max_concurrent", |c| {
                c.compaction.max_concurrent = 0
            }),
            ("compaction.max_files_per_batch", |c| {
                c.compaction.max_files_per_batch = 1
            }),
            ("compaction.max_files_per_batch", |c| {
                c.compaction.max_files_per_batch = 501
            }),
            ("compaction.memory_limit", |c| {
                c.compaction.memory_limit = Auto::Value(ByteSize(1 << 20))
            }),
            ("compaction.threads", |c| {
                c.compaction.threads = Auto::Value(0)
            }),
            ("compaction.temp_directory", |c| {
                c.compaction.temp_directory = "/usr/compaction".into()
            }),
        ];
        for (key, break_config) in cases {
            let mut config = Config::default();
            break_config(&mut config);
            assert_eq!(rejected_key(&config), key, "{config:?}");
        }
    }

    #[test]
    fn validation_rejects_unworkable_cluster_values() {
        let cases: Vec<(&str, Breakage)> = vec![
            ("cluster.shared_secret", |c| c.cluster.shared_secret.clear()),
            ("cluster.shared_secret", |c| {
                c.cluster.shared_secret = "short".into()
            }),
            ("cluster.cluster_name", |c| c.cluster.cluster_name.clear()),
            ("cluster.seeds", |c| {
                c.cluster.seeds = vec!["writer-1".into()]
            }),
            ("cluster.seeds", |c| {
                c.cluster.seeds = vec!["writer-1:port".into()]
            }),
            ("cluster.seeds", |c| c.cluster.seeds = vec![":9100".into()]),
            ("cluster.seeds", |c| {
                c.cluster.seeds = vec!["::1:9100".into()]
            }),
            ("cluster.coordinator_addr", |c| {
                c.cluster.coordinator_addr = "9100".into()
            }),
            ("cluster.coordinator_addr", |c| {
                c.cluster.coordinator_addr = ":99999".into()
            }),
            ("cluster.advertise_addr", |c| {
                c.cluster.advertise_addr = "node-1".into()
            }),
            ("cluster.api_advertise_addr", |c| {
                c.cluster.api_advertise_addr = "node-1".into()
            }),
            ("cluster.raft_data_dir", |c| {
                c.cluster.raft_data_dir = "/sys/raft".into()
            }),
            ("cluster.failover_timeout", |c| {
                c.cluster.failover_timeout = 0
            }),
            ("cluster.heartbeat_interval", |c| {
                c.cluster.heartbeat_interval = 0
            }),
            ("cluster.unhealthy_threshold", |c| {
                c.cluster.unhealthy_threshold = 0
            }),
            ("cluster.raft_election_timeout", |c| {
                c.cluster.raft_election_timeout = c.cluster.raft_heartbeat_timeout
            }),
            ("cluster.shared_storage_mode", |c| {
                c.cluster.shared_storage_mode = true
            }),
            ("cluster.shared_storage_mode", |c| {
                c.cluster.enabled = false;
                c.cluster.shared_storage_mode = true;
                c.storage.backend = StorageBackend::S3;
                c.storage.s3_bucket = "arc".into();
            }),
            ("cluster.shared_wal", |c| c.cluster.shared_wal = true),
        ];
        for (key, break_config) in cases {
            let mut config = clustered();
            break_config(&mut config);
            assert_eq!(rejected_key(&config), key, "{config:?}");
        }
    }

    #[test]
    fn an_empty_raft_data_dir_lives_next_to_the_metadata() {
        let loaded = load_text("[cluster]\nraft_data_dir = \"\"\n", &[]).unwrap();
        let expected = Path::new(&loaded.config.meta.directory).join("raft");
        assert_eq!(Path::new(&loaded.config.cluster.raft_data_dir), expected);
    }

    #[test]
    fn seeds_environment_starts_a_cluster_node_and_an_unopenable_gate_is_disabled() {
        let loaded = load_env(&[
            ("ARC_CLUSTER_ENABLED", "true"),
            ("ARC_CLUSTER_NODE_ID", "reader-01"),
            ("ARC_CLUSTER_ROLE", "reader"),
            ("ARC_CLUSTER_CLUSTER_NAME", "production"),
            ("ARC_CLUSTER_SEEDS", "10.0.1.10:9000,10.0.1.11:9000"),
            ("ARC_CLUSTER_SHARED_SECRET", SECRET),
            ("ARC_CLUSTER_FAILOVER_ENABLED", "true"),
            ("ARC_CLUSTER_QUERY_GATE_ON_CATCHUP", "true"),
            ("ARC_CLUSTER_REPLICATION_CATCHUP_ENABLED", "false"),
        ])
        .unwrap();
        let cluster = &loaded.config.cluster;
        assert_eq!(cluster.role, NodeRole::Reader);
        assert_eq!(cluster.seeds, ["10.0.1.10:9000", "10.0.1.11:9000"]);
        assert_eq!(cluster.coordinator_addr, ":9000");
        assert!(cluster.failover_enabled);
        assert!(!cluster.query_gate_on_catchup);
        assert!(
            loaded.warnings[0].contains("cluster.query_gate_on_catchup disabled"),
            "{:?}",
            loaded.warnings
        );
        let refused = load_env(&[("ARC_CLUSTER_ENABLED", "true")]).unwrap_err();
        assert!(
            refused.to_string().contains("cluster.shared_secret")
                && refused.to_string().contains("ARC_CLUSTER_SHARED_SECRET"),
            "{refused}"
        );
    }

    #[test]
    fn validation_does_not_echo_the_shared_secret() {
        let mut config = clustered();
        config.cluster.shared_secret = "hunter2".into();
        let message = config.validate().unwrap_err().to_string();
        assert!(!message.contains("hunter2"), "{message}");
        assert!(message.contains("7 characters"), "{message}");
    }

    #[test]
    fn validation_accepts_workable_values() {
        let mut config = clustered();
        config.cluster.coordinator_addr = "[::1]:0".into();
        config.cluster.advertise_addr = "node-1.internal:9100".into();
        config.cluster.raft_data_dir = String::new();
        config.log.level = "DEBUG".into();
        config.storage.local_path = "/etcetera/arc".into();
        config.wal.directory = "etc/wal".into();
        config.meta.directory = "/var/lib/arcdb/meta".into();
        config.wal.buffer_size = 1_000_000;
        config.ingest.sort_keys = vec!["cpu:host, region".into(), "mem:host".into()];
        config.validate().unwrap();

        let mut azure = Config::default();
        azure.storage.backend = StorageBackend::Azure;
        azure.storage.azure_connection_string = "DefaultEndpointsProtocol=https".into();
        azure.storage.azure_container = "arc".into();
        azure.validate().unwrap();

        // Settings of a disabled cluster are not checked.
        let mut standalone = Config::default();
        standalone.cluster.seeds = vec!["not an address".into()];
        standalone.validate().unwrap();
    }

    #[test]
    fn compaction_auto_settings_read_from_file_and_env() {
        let config = Config::default();
        assert_eq!(config.compaction.memory_limit, Auto::Auto);
        assert_eq!(config.compaction.hourly_schedule, "5 * * * *");
        assert_eq!(config.compaction.max_files_per_batch, 30);
        assert!(config.compaction.memory_limit_bytes() >= 1 << 29);
        assert!(config.compaction.download_concurrency() >= 1);
        assert_eq!(
            config.compaction.hourly_min_age(),
            chrono::Duration::hours(1)
        );

        let config = load_text(
            "[compaction]\nmemory_limit = \"256MB\"\nthreads = 3\nhourly_min_age_hours = 5\n",
            &[],
        )
        .unwrap()
        .config;
        assert_eq!(config.compaction.memory_limit_bytes(), 256 << 20);
        assert_eq!(config.compaction.download_concurrency(), 3);
        assert_eq!(
            config.compaction.hourly_min_age(),
            chrono::Duration::hours(5)
        );

        let config = load_env(&[
            ("ARC_COMPACTION_MEMORY_LIMIT", "64MB"),
            ("ARC_COMPACTION_THREADS", "2"),
            ("ARC_COMPACTION_HOURLY_MIN_FILES", "3"),
        ])
        .unwrap()
        .config;
        assert_eq!(
            config.compaction.memory_limit,
            Auto::Value(ByteSize(64 << 20))
        );
        assert_eq!(config.compaction.threads, Auto::Value(2));
        assert_eq!(config.compaction.hourly_min_files, 3);
        let auto = load_env(&[("ARC_COMPACTION_THREADS", "AUTO")])
            .unwrap()
            .config;
        assert_eq!(auto.compaction.threads, Auto::Auto);

        let (var, _) = invalid_env_of(load_env(&[("ARC_COMPACTION_THREADS", "many")]));
        assert_eq!(var, "ARC_COMPACTION_THREADS");
        let (key, _) = invalid_value_of(load_text("[compaction]\nmemory_limit = \"lots\"\n", &[]));
        assert_eq!(key, "compaction.memory_limit");
    }

    #[test]
    fn byte_size_parses_units_of_1024() {
        for (text, bytes) in [
            ("1GB", 1 << 30),
            ("512MB", 512 << 20),
            ("100KB", 100 << 10),
            ("10B", 10),
            ("1024", 1024),
            ("0", 0),
            ("2 mb", 2 << 20),
            (" 3Gb ", 3 << 30),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        for text in ["", "GB", "1.5GB", "1TB", "-1", "1 G B", "99999999999GB"] {
            assert!(text.parse::<ByteSize>().is_err(), "{text}");
        }
    }

    #[test]
    fn byte_size_writes_text_that_parses_back() {
        for (bytes, text) in [
            (1 << 30, "1GB"),
            (3 << 20, "3MB"),
            (1536, "1536B"),
            (2048, "2KB"),
            (0, "0B"),
        ] {
            assert_eq!(ByteSize(bytes).to_string(), text);
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)));
        }
        let server: ServerConfig = toml::from_str("max_payload_size = 2048").unwrap();
        assert_eq!(server.max_payload_size, ByteSize(2048));
        let written = toml::to_string(&server).unwrap();
        assert!(written.contains("max_payload_size = \"2KB\""), "{written}");
    }

    #[test]
    fn seeds_accept_an_array_or_a_comma_string() {
        let from_array = load_text("[cluster]\nseeds = [\"a:9100\", \"b:9100\"]\n", &[]).unwrap();
        let from_string = load_text("[cluster]\nseeds = \"a:9100,b:9100\"\n", &[]).unwrap();
        let from_env = load_env(&[("ARC_CLUSTER_SEEDS", "a:9100,b:9100")]).unwrap();
        for loaded in [from_array, from_string, from_env] {
            assert_eq!(loaded.config.cluster.seeds, ["a:9100", "b:9100"]);
        }
    }

    #[test]
    fn failover_table_maps_to_flat_keys() {
        let config = load_text(
            "[cluster.failover]\nenabled = true\ntimeout = 10\ncooldown = 20\n",
            &[],
        )
        .unwrap()
        .config;
        assert!(config.cluster.failover_enabled);
        assert_eq!(config.cluster.failover_timeout, 10);
        assert_eq!(config.cluster.failover_cooldown, 20);

        let loaded = load_text(
            "[cluster]\nfailover_timeout = 15\n[cluster.failover]\ntimeout = 10\nfoo = 1\n",
            &[("ARC_CLUSTER_FAILOVER_ENABLED", "true")],
        )
        .unwrap();
        assert!(loaded.config.cluster.failover_enabled);
        assert_eq!(loaded.config.cluster.failover_timeout, 15);
        assert_eq!(
            loaded.warnings,
            [
                "unknown configuration key 'cluster.failover.foo' ignored",
                "configuration key 'cluster.failover.timeout' ignored: \
                 'cluster.failover_timeout' is also set",
            ]
        );
    }

    #[test]
    fn sort_keys_end_with_time_exactly_once() {
        let mut ingest = IngestConfig {
            sort_keys: vec!["cpu:host, region".into(), "mem:host,time".into()],
            ..IngestConfig::default()
        };
        assert_eq!(ingest.sort_keys_for("cpu"), ["host", "region", "time"]);
        assert_eq!(ingest.sort_keys_for("mem"), ["host", "time"]);
        assert_eq!(ingest.sort_keys_for("disk"), ["time"]);
        ingest.default_sort_keys = "host,time,region".into();
        assert_eq!(ingest.sort_keys_for("disk"), ["host", "region", "time"]);
        ingest.default_sort_keys = String::new();
        assert_eq!(ingest.sort_keys_for("disk"), ["time"]);
    }

    #[test]
    fn sort_keys_from_a_string_keep_their_column_lists() {
        for written in ["cpu:host,region mem:host", "cpu:host,region,mem:host"] {
            let config = load_env(&[("ARC_INGEST_SORT_KEYS", written)])
                .unwrap()
                .config;
            assert_eq!(
                config.ingest.sort_keys,
                ["cpu:host,region", "mem:host"],
                "{written}"
            );
        }
        let config = load_text("[ingest]\nsort_keys = \"cpu:host,region\"\n", &[])
            .unwrap()
            .config;
        assert_eq!(config.ingest.sort_keys, ["cpu:host,region"]);
    }

    #[test]
    fn example_file_lists_every_key_with_its_default() {
        let example: Table = toml::from_str(include_str!("../arc.toml.example")).unwrap();
        let (config, warnings) = resolve(example.clone(), &no_env, None).unwrap();
        assert_eq!(config, Config::default());
        assert!(warnings.is_empty(), "{warnings:?}");
        for (path, _) in leaf_paths(&default_table()) {
            assert!(
                lookup(&example, &path).is_some(),
                "arc.toml.example lacks {}",
                path.join(".")
            );
        }
    }
}
