//! Compaction: merges the many small files ingest writes into one file per hour (hourly tier),
//! then one per day (daily tier), as Arc's compactor does.
//!
//! [`plan`] chooses partitions and batches from the manifest; [`job`] runs one batch (download,
//! [`merge`], upload, swap). This module runs cycles: one at a time, started by a tier's cron
//! schedule or by the API, each running up to `max_concurrent` jobs, and keeps the counters and
//! history the API reports.

pub mod job;
pub mod merge;
pub mod plan;

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::cluster::Cluster;
use crate::config::{CompactionConfig, IngestConfig};
use crate::flush::Flusher;
use crate::meta::Meta;
use crate::schedule::CronSchedule;
use crate::storage::Storage;

use self::job::JobContext;
use self::plan::{Batch, PlanRules, Tier};
use crate::crash_hook::CrashHook;

/// Arc's limit on one cycle.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Finished jobs kept for `/history`.
const HISTORY_LEN: usize = 100;
/// Prefix of a job's directory under `temp_directory`; only such directories are cleaned up.
const JOB_DIR_PREFIX: &str = "job-";

/// A job in progress, as `/jobs` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveJob {
    pub job_id: u64,
    pub cycle_id: u64,
    pub tier: Tier,
    pub database: String,
    pub measurement: String,
    pub partition_path: String,
    pub file_count: usize,
    pub started_at: DateTime<Utc>,
}

/// A finished job, as `/history` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct FinishedJob {
    #[serde(flatten)]
    pub job: ActiveJob,
    pub status: &'static str,
    pub error: Option<String>,
    pub output_file: Option<String>,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub rows_before: u64,
    pub rows_after: u64,
    pub duration_ms: u64,
}

/// Totals since start-up, as `/stats` reports them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub total_completed: u64,
    pub total_failed: u64,
    pub total_cycles: u64,
    pub files_compacted: u64,
    pub files_written: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub rows_before: u64,
    pub rows_after: u64,
    /// Rows dropped as duplicates of later writes.
    pub duplicates_removed: u64,
    pub busy_ms: u64,
}

/// The running cycle.
#[derive(Debug, Clone, Serialize)]
pub struct Cycle {
    pub cycle_id: u64,
    pub tiers: Vec<Tier>,
    pub database: Option<String>,
    pub started_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Progress {
    cycle: Option<Cycle>,
    last_cycle_id: u64,
    active: BTreeMap<u64, ActiveJob>,
    history: VecDeque<FinishedJob>,
    totals: Totals,
    last_run: BTreeMap<Tier, DateTime<Utc>>,
}

/// A partition the next cycle would compact, as `/candidates` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateSummary {
    pub database: String,
    pub measurement: String,
    pub partition_path: String,
    pub file_count: usize,
    pub tier: Tier,
}

/// Refusal of a cycle because one is already running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleRunning {
    pub cycle_id: u64,
}

pub struct Compactor {
    config: CompactionConfig,
    ingest: IngestConfig,
    rules: PlanRules,
    schedules: BTreeMap<Tier, CronSchedule>,
    meta: Arc<Meta>,
    storage: Storage,
    flusher: Arc<Flusher>,
    node_id: String,
    crash_hook: CrashHook,
    next_job_id: AtomicU64,
    progress: Mutex<Progress>,
    /// In a cluster: compaction runs only on the node holding the compaction lease, and its
    /// swaps carry the lease's epoch.
    cluster: Option<Arc<Cluster>>,
}

impl Compactor {
    /// Schedules are validated with the configuration, so they parse here.
    pub fn new(
        config: CompactionConfig,
        ingest: IngestConfig,
        meta: Arc<Meta>,
        storage: Storage,
        flusher: Arc<Flusher>,
        node_id: String,
    ) -> Compactor {
        let schedule = |text: &str| text.parse::<CronSchedule>().expect("validated schedule");
        let schedules = BTreeMap::from([
            (Tier::Hourly, schedule(&config.hourly_schedule)),
            (Tier::Daily, schedule(&config.daily_schedule)),
        ]);
        Compactor {
            rules: PlanRules::from_config(&config),
            schedules,
            config,
            ingest,
            meta,
            storage,
            flusher,
            node_id,
            crash_hook: CrashHook::from_env(job::CRASH_ENV),
            next_job_id: AtomicU64::new(1),
            progress: Mutex::default(),
            cluster: None,
        }
    }

    /// Compacts only while this node holds the cluster's compaction lease.
    pub fn with_lease(mut self, cluster: Option<Arc<Cluster>>) -> Compactor {
        self.cluster = cluster;
        self
    }

    /// `Ok(epoch)` when this node may compact now (`None` outside a cluster), else who may.
    fn lease(&self) -> Result<Option<u64>, String> {
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        cluster.compacts_under().map(Some).ok_or_else(|| {
            cluster
                .compactor_lease()
                .node
                .unwrap_or_else(|| "no node".into())
        })
    }

    /// The tiers that are enabled, in the order a cycle runs them.
    pub fn enabled_tiers(&self) -> Vec<Tier> {
        Tier::ALL
            .into_iter()
            .filter(|tier| self.tier_enabled(*tier))
            .collect()
    }

    pub fn tier_enabled(&self, tier: Tier) -> bool {
        match tier {
            Tier::Hourly => self.config.hourly_enabled,
            Tier::Daily => self.config.daily_enabled,
        }
    }

    /// Starts a cycle in the background unless one is running.
    pub fn trigger(
        self: &Arc<Self>,
        tiers: Vec<Tier>,
        database: Option<String>,
    ) -> Result<Cycle, CycleRunning> {
        let cycle = {
            let mut progress = self.progress.lock().unwrap();
            if let Some(running) = &progress.cycle {
                return Err(CycleRunning {
                    cycle_id: running.cycle_id,
                });
            }
            progress.last_cycle_id += 1;
            let cycle = Cycle {
                cycle_id: progress.last_cycle_id,
                tiers,
                database,
                started_at: Utc::now(),
            };
            progress.cycle = Some(cycle.clone());
            cycle
        };
        let compactor = Arc::clone(self);
        let started = cycle.clone();
        tokio::spawn(async move {
            let ran = tokio::time::timeout(CYCLE_TIMEOUT, compactor.run_cycle(&started)).await;
            if ran.is_err() {
                tracing::error!(
                    cycle_id = started.cycle_id,
                    "compaction cycle timed out after 30 minutes"
                );
            }
            let mut progress = compactor.progress.lock().unwrap();
            progress.cycle = None;
            progress.totals.total_cycles += 1;
            for tier in &started.tiers {
                progress.last_run.insert(*tier, started.started_at);
            }
        });
        Ok(cycle)
    }

    async fn run_cycle(self: &Arc<Self>, cycle: &Cycle) {
        // Start-up clean-up deletes journaled keys the manifest lacks: it must not run while an
        // output of this cycle is uploaded but not yet swapped in.
        if let Err(err) = self.flusher.ensure_reconciled().await {
            tracing::error!(error = %err, "compaction skipped: storage clean-up failed");
            return;
        }
        if let Err(holder) = self.lease() {
            tracing::info!(cycle_id = cycle.cycle_id, %holder, "compaction skipped: another node holds the compaction lease");
            return;
        }
        self.remove_job_dirs().await;
        tracing::info!(cycle_id = cycle.cycle_id, tiers = ?cycle.tiers, "compaction cycle started");
        for tier in &cycle.tiers {
            // Planned after the previous tier finished, so the daily tier sees hourly outputs.
            let batches: Vec<Batch> = self
                .plan(*tier, cycle.database.as_deref(), Utc::now())
                .iter()
                .flat_map(|c| plan::batches(c, self.rules.max_files_per_batch))
                .collect();
            let slots = Arc::new(Semaphore::new(self.config.max_concurrent.max(1)));
            let mut jobs = JoinSet::new();
            for batch in batches {
                let slot = Arc::clone(&slots)
                    .acquire_owned()
                    .await
                    .expect("semaphore never closed");
                let compactor = Arc::clone(self);
                let cycle_id = cycle.cycle_id;
                jobs.spawn(async move {
                    compactor.run_job(cycle_id, batch).await;
                    drop(slot);
                });
            }
            while jobs.join_next().await.is_some() {}
        }
        tracing::info!(cycle_id = cycle.cycle_id, "compaction cycle finished");
    }

    fn plan(&self, tier: Tier, database: Option<&str>, now: DateTime<Utc>) -> Vec<plan::Candidate> {
        plan::candidates(&self.meta.state(), tier, database, now, &self.rules)
    }

    async fn run_job(&self, cycle_id: u64, batch: Batch) {
        // Taken when the job starts: if the lease moves meanwhile, its swap is refused.
        let compactor_epoch = match self.lease() {
            Ok(epoch) => epoch,
            Err(holder) => {
                tracing::info!(%holder, "compaction job skipped: the compaction lease moved");
                return;
            }
        };
        let job_id = self.next_job_id.fetch_add(1, Ordering::Relaxed);
        let started_at = Utc::now();
        let clock = Instant::now();
        let active = ActiveJob {
            job_id,
            cycle_id,
            tier: batch.tier,
            database: batch.database.clone(),
            measurement: batch.measurement.clone(),
            partition_path: batch.partition_path.clone(),
            file_count: batch.inputs.len(),
            started_at,
        };
        self.progress
            .lock()
            .unwrap()
            .active
            .insert(job_id, active.clone());
        let context = JobContext {
            meta: Arc::clone(&self.meta),
            storage: self.storage.clone(),
            pending_uploads: Arc::clone(self.flusher.pending_uploads()),
            node_id: self.node_id.clone(),
            sort_keys: self.ingest.sort_keys_for(&batch.measurement),
            memory_limit: self.config.memory_limit_bytes(),
            download_concurrency: self.config.download_concurrency(),
            crash_hook: self.crash_hook,
            compactor_epoch,
        };
        let work_dir = self.job_dir(job_id);
        let result = job::run(&context, &batch, &work_dir, started_at).await;
        if let Err(err) = tokio::fs::remove_dir_all(&work_dir).await
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %work_dir.display(), error = %err, "could not remove compaction files");
        }
        let duration_ms = clock.elapsed().as_millis() as u64;
        let bytes_before: u64 = batch.inputs.iter().map(|f| f.size_bytes).sum();
        let rows_before: u64 = batch.inputs.iter().map(|f| f.rows).sum();
        let mut progress = self.progress.lock().unwrap();
        progress.active.remove(&job_id);
        let totals = &mut progress.totals;
        totals.busy_ms += duration_ms;
        let counters = &crate::metrics::metrics().compaction;
        counters.jobs.inc();
        let finished = match result {
            Ok(done) => {
                counters.success.inc();
                counters.files_compacted.inc_by(batch.inputs.len() as u64);
                counters.bytes_read.inc_by(done.bytes_in);
                counters.bytes_written.inc_by(done.merged.size_bytes);
                tracing::info!(
                    job_id,
                    partition = %batch.partition_path,
                    files = batch.inputs.len(),
                    rows_in = done.merged.rows_in,
                    rows_out = done.merged.rows_out,
                    duration_ms,
                    "compaction job finished"
                );
                totals.total_completed += 1;
                totals.files_compacted += batch.inputs.len() as u64;
                totals.files_written += u64::from(done.output.is_some());
                totals.bytes_before += done.bytes_in;
                totals.bytes_after += done.merged.size_bytes;
                totals.rows_before += done.merged.rows_in;
                totals.rows_after += done.merged.rows_out;
                totals.duplicates_removed += done.merged.rows_in - done.merged.rows_out;
                FinishedJob {
                    job: active,
                    status: "completed",
                    error: None,
                    output_file: done.output.map(|f| f.path),
                    bytes_before,
                    bytes_after: done.merged.size_bytes,
                    rows_before,
                    rows_after: done.merged.rows_out,
                    duration_ms,
                }
            }
            Err(err) => {
                tracing::error!(job_id, partition = %batch.partition_path, error = %err, "compaction job failed; its inputs stay as they are");
                totals.total_failed += 1;
                counters.failed.inc();
                FinishedJob {
                    job: active,
                    status: "failed",
                    error: Some(err.to_string()),
                    output_file: None,
                    bytes_before,
                    bytes_after: 0,
                    rows_before,
                    rows_after: 0,
                    duration_ms,
                }
            }
        };
        if progress.history.len() == HISTORY_LEN {
            progress.history.pop_front();
        }
        progress.history.push_back(finished);
    }

    fn job_dir(&self, job_id: u64) -> PathBuf {
        PathBuf::from(&self.config.temp_directory).join(format!("{JOB_DIR_PREFIX}{job_id}"))
    }

    /// Removes job directories an earlier (crashed) process left. Only called between cycles,
    /// so none of them belongs to a running job.
    async fn remove_job_dirs(&self) {
        let root = PathBuf::from(&self.config.temp_directory);
        let Ok(mut entries) = tokio::fs::read_dir(&root).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(JOB_DIR_PREFIX)
            {
                let path = entry.path();
                if let Err(err) = tokio::fs::remove_dir_all(&path).await {
                    tracing::warn!(dir = %path.display(), error = %err, "could not remove old compaction files");
                }
            }
        }
    }

    /// Runs each enabled tier on its cron schedule until `shutdown` turns true. A firing while a
    /// cycle runs is skipped, as in Arc.
    pub async fn run_schedules(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let loops = self.enabled_tiers().into_iter().map(|tier| {
            let compactor = Arc::clone(&self);
            let mut shutdown = shutdown.clone();
            async move {
                let schedule = compactor.schedules[&tier].clone();
                loop {
                    tokio::select! {
                        _ = shutdown.wait_for(|stopped| *stopped) => return,
                        _ = schedule.sleep_until_next() => {}
                    }
                    if let Err(running) = compactor.trigger(vec![tier], None) {
                        tracing::info!(
                            tier = tier.as_str(),
                            cycle_id = running.cycle_id,
                            "scheduled compaction skipped: a cycle is running"
                        );
                    }
                }
            }
        });
        futures::future::join_all(loops).await;
    }

    pub fn candidates(&self, tiers: &[Tier], database: Option<&str>) -> Vec<CandidateSummary> {
        let now = Utc::now();
        tiers
            .iter()
            .flat_map(|tier| self.plan(*tier, database, now))
            .map(|c| CandidateSummary {
                database: c.database,
                measurement: c.measurement,
                partition_path: c.partition_path,
                file_count: c.files.len(),
                tier: c.tier,
            })
            .collect()
    }

    pub fn running_cycle(&self) -> Option<Cycle> {
        self.progress.lock().unwrap().cycle.clone()
    }

    pub fn active_jobs(&self) -> Vec<ActiveJob> {
        self.progress
            .lock()
            .unwrap()
            .active
            .values()
            .cloned()
            .collect()
    }

    /// Finished jobs, most recent last.
    pub fn history(&self) -> Vec<FinishedJob> {
        self.progress
            .lock()
            .unwrap()
            .history
            .iter()
            .cloned()
            .collect()
    }

    pub fn totals(&self) -> Totals {
        self.progress.lock().unwrap().totals.clone()
    }

    /// Per tier: enabled, schedule, next and last run.
    pub fn schedulers(&self) -> serde_json::Value {
        let last_run = self.progress.lock().unwrap().last_run.clone();
        let now = Utc::now();
        let mut out = serde_json::Map::new();
        for tier in Tier::ALL {
            let schedule = &self.schedules[&tier];
            let enabled = self.tier_enabled(tier);
            out.insert(
                tier.as_str().to_string(),
                serde_json::json!({
                    "enabled": enabled,
                    "schedule": schedule.as_str(),
                    "next_run": enabled.then(|| schedule.next_after(now)).flatten(),
                    "last_run": last_run.get(&tier),
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}
