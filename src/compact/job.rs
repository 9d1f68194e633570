//! Running one compaction job: download the inputs, merge them, upload the output, then swap
//! inputs for output in ONE metadata command.
//!
//! Crash safety, step by step: before the upload nothing is in storage but local temporary
//! files (removed by the next cycle). The output key is journaled in [`PendingUploads`] before
//! the upload, so an output that a crash left unregistered is removed at start-up. The swap is a
//! single `ReplaceFiles` command: the manifest lists the inputs or the output, never both, never
//! neither. Inputs become tombstones and their objects are deleted by [`crate::reclaim`] once no
//! running query can still be reading them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};

use crate::crash_hook::{CrashHook, Step};
use crate::flush::PendingUploads;
use crate::meta::{ApplyError, FileEntry, Meta, MetaCommand, SettleError};
use crate::storage::paths::{daily_compacted_key, hourly_compacted_key};
use crate::storage::{Storage, StorageError};

use super::merge::{MergeError, MergeOutcome, MergeSpec, merge};
use super::plan::{Batch, Tier};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("merging: {0}")]
    Merge(#[from] MergeError),
    #[error("swapping files in the manifest: {0}")]
    Swap(#[from] ApplyError),
    /// Shutdown came before the cluster settled the swap; the output stays journaled.
    #[error("swapping files in the manifest: {0}")]
    Unsettled(String),
    #[error("compaction temporary files in {path}: {source}")]
    Temp {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pending-uploads journal: {0}")]
    Journal(std::io::Error),
}

/// Environment variable naming the step at which compaction aborts (crash tests).
pub const CRASH_ENV: &str = "ARC_TEST_COMPACTION_CRASH_AT";

/// What a job needs from the node.
pub struct JobContext {
    pub meta: Arc<Meta>,
    pub storage: Storage,
    pub pending_uploads: Arc<PendingUploads>,
    pub node_id: String,
    pub sort_keys: Vec<String>,
    pub memory_limit: u64,
    pub download_concurrency: usize,
    pub crash_hook: CrashHook,
    /// The compaction lease's epoch in a cluster.
    pub compactor_epoch: Option<u64>,
}

/// A finished job.
#[derive(Debug, Clone)]
pub struct JobResult {
    pub output: Option<FileEntry>,
    pub merged: MergeOutcome,
    pub bytes_in: u64,
}

/// Runs one batch in `work_dir` (created, and left for the caller to remove).
pub async fn run(
    context: &JobContext,
    batch: &Batch,
    work_dir: &Path,
    started_at: DateTime<Utc>,
) -> Result<JobResult, JobError> {
    let temp_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| JobError::Temp { path, source }
    };
    tokio::fs::create_dir_all(work_dir)
        .await
        .map_err(temp_error(work_dir))?;

    let local: Vec<PathBuf> = (0..batch.inputs.len())
        .map(|i| work_dir.join(format!("input-{i}.parquet")))
        .collect();
    let downloads: Vec<(String, PathBuf)> = batch
        .inputs
        .iter()
        .map(|f| f.path.clone())
        .zip(local.iter().cloned())
        .collect();
    futures::stream::iter(downloads)
        .map(|(key, path)| {
            let storage = context.storage.clone();
            async move { storage.get_to_file(&key, &path).await }
        })
        .buffer_unordered(context.download_concurrency.max(1))
        .try_collect::<Vec<u64>>()
        .await?;
    context.crash_hook.crash_if(Step::AfterDownload);

    let output_path = work_dir.join("output.parquet");
    let column_types = context
        .meta
        .state()
        .measurement(&batch.database, &batch.measurement)
        .map(|m| m.columns.clone())
        .unwrap_or_default();
    let merged = {
        let (inputs, output, sort_keys) = (
            local.clone(),
            output_path.clone(),
            context.sort_keys.clone(),
        );
        let memory_limit = context.memory_limit;
        tokio::task::spawn_blocking(move || {
            merge(&MergeSpec {
                inputs: &inputs,
                output: &output,
                sort_keys: &sort_keys,
                column_types: &column_types,
                memory_limit,
            })
        })
        .await
        .expect("merge task panicked")?
    };
    context.crash_hook.crash_if(Step::AfterMerge);

    let output = (merged.rows_out > 0).then(|| output_entry(context, batch, &merged, started_at));
    if let Some(entry) = &output {
        let journal = Arc::clone(&context.pending_uploads);
        let keys = vec![entry.path.clone()];
        tokio::task::spawn_blocking(move || journal.record(&keys))
            .await
            .expect("journal task panicked")
            .map_err(JobError::Journal)?;
        context.crash_hook.crash_if(Step::AfterJournal);
        if let Err(err) = context.storage.put_file(&entry.path, &output_path).await {
            abandon(context, entry).await;
            return Err(err.into());
        }
        context.crash_hook.crash_if(Step::AfterUpload);
    }

    let command = MetaCommand::ReplaceFiles {
        database: batch.database.clone(),
        measurement: batch.measurement.clone(),
        removed: batch.inputs.iter().map(|f| f.path.clone()).collect(),
        added: output.iter().cloned().collect(),
        at_us: Utc::now().timestamp_micros(),
        compactor_epoch: context.compactor_epoch,
    };
    let meta = Arc::clone(&context.meta);
    let swapped = tokio::task::spawn_blocking(move || meta.commit_until_settled(command))
        .await
        .expect("meta commit task panicked");
    match swapped {
        Ok(()) => {}
        Err(SettleError::Rejected(err)) => {
            // An input went away meanwhile (retention, a delete): the output must not appear.
            if let Some(entry) = &output {
                abandon(context, entry).await;
            }
            return Err(err.into());
        }
        // The swap may have applied: start-up removes the output only if it did not.
        Err(SettleError::Unsettled(reason)) => return Err(JobError::Unsettled(reason)),
    }
    context.crash_hook.crash_if(Step::AfterSwap);
    if output.is_some() {
        context.pending_uploads.settled();
    }
    Ok(JobResult {
        output,
        merged,
        bytes_in: batch.inputs.iter().map(|f| f.size_bytes).sum(),
    })
}

async fn abandon(context: &JobContext, output: &FileEntry) {
    let keys = [output.path.clone()];
    context
        .pending_uploads
        .abandon(&context.storage, &keys)
        .await;
}

fn output_entry(
    context: &JobContext,
    batch: &Batch,
    merged: &MergeOutcome,
    started_at: DateTime<Utc>,
) -> FileEntry {
    let path = match batch.tier {
        Tier::Hourly => hourly_compacted_key(
            &batch.database,
            &batch.measurement,
            batch.partition_start_us,
            started_at,
            batch.index,
        ),
        Tier::Daily => daily_compacted_key(
            &batch.database,
            &batch.measurement,
            batch.partition_start_us,
            started_at,
            batch.index,
        ),
    };
    FileEntry {
        path,
        database: batch.database.clone(),
        measurement: batch.measurement.clone(),
        min_time_us: merged.min_time_us,
        max_time_us: merged.max_time_us,
        rows: merged.rows_out,
        size_bytes: merged.size_bytes,
        sha256: merged.sha256.clone(),
        // The union of the inputs' ranges (a batch holds files of one log): the rows are
        // exactly theirs.
        log: batch
            .inputs
            .first()
            .map(|f| f.log.clone())
            .unwrap_or_default(),
        min_lsn: batch.inputs.iter().map(|f| f.min_lsn).min().unwrap_or(0),
        max_lsn: batch.inputs.iter().map(|f| f.max_lsn).max().unwrap_or(0),
        columns: merged.columns.clone(),
        tags: merged.tags.clone(),
        created_at_us: Utc::now().timestamp_micros(),
        origin_node: context.node_id.clone(),
    }
}
