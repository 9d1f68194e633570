//! Continuous queries: a stored query run over successive time windows, its results written into
//! a destination measurement through the normal write path (WAL, buffer, flush).
//!
//! Running a window again gives the same query results, not duplicates: the window's earlier
//! results are removed from the destination (a row delete of `[start, end)`) before the new ones
//! are written. A crash between the two leaves the window empty until it runs again, which the
//! scheduler does, since a window counts as processed only once its results are written.
//! Results must therefore lie inside their window (as `date_bin` over the window's rows gives);
//! rows without a `time` column are stamped with the window start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::TryStreamExt;
use tokio::sync::watch;

use crate::delete::{DeleteError, Deleter};
use crate::ingest::line_protocol::encode_batch;
use crate::ingest::{IngestError, Ingester, PayloadFormat, Precision, WriteRequest};
use crate::meta::{
    AdminCommand, CQ_COMPLETED, ContinuousQuery, CqExecution, Meta, MetaCommand, MetaError,
};
use crate::query::{QueryEngine, QueryError};

/// Shortest interval the scheduler runs a query at (Arc's floor).
pub const MIN_SCHEDULED_INTERVAL_US: i64 = 10_000_000;
/// The window of a manual run that names no start and has never run.
const DEFAULT_LOOKBACK_US: i64 = 3_600_000_000;
/// How often the scheduler looks for due windows.
const SCHEDULER_TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CqError {
    #[error("{0}")]
    Invalid(String),
    #[error("query failed: {0}")]
    Query(#[from] QueryError),
    #[error("reading results: {0}")]
    Results(String),
    #[error("gathering the source rows other writers buffer: {0}")]
    Sources(DeleteError),
    #[error("clearing the window's earlier results: {0}")]
    Clear(#[from] DeleteError),
    #[error("writing results: {0}")]
    Write(#[from] IngestError),
    #[error("handing results to a writer: {0}")]
    Handover(String),
    #[error("recording the execution: {0}")]
    Record(#[from] MetaError),
}

/// Pure: the window of a manual run. Missing bounds are now (end) and the last processed time,
/// or an hour before the end (start).
pub fn manual_window(
    query: &ContinuousQuery,
    start_us: Option<i64>,
    end_us: Option<i64>,
    now_us: i64,
) -> Result<(i64, i64), CqError> {
    let end = end_us.unwrap_or(now_us);
    if end > now_us {
        // Its rows may not have arrived yet, and the scheduler would wait for it.
        return Err(CqError::Invalid("end_time may not be in the future".into()));
    }
    let start = start_us
        .or(query.last_processed_us)
        .unwrap_or(end.saturating_sub(DEFAULT_LOOKBACK_US));
    if start >= end {
        return Err(CqError::Invalid(
            "start_time must be before end_time".into(),
        ));
    }
    Ok((start, end))
}

/// Pure: the window a scheduled run covers at `now_us`, if one is due: from the last processed
/// time (or one interval back) to the latest interval boundary.
pub fn due_window(query: &ContinuousQuery, now_us: i64) -> Option<(i64, i64)> {
    let interval = query.interval_us.max(MIN_SCHEDULED_INTERVAL_US);
    let end = now_us.div_euclid(interval) * interval;
    let start = query.last_processed_us.unwrap_or(end - interval);
    (start < end).then_some((start, end))
}

fn rfc3339(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us).map_or_else(String::new, |t| {
        t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    })
}

/// Pure: the query with `{start_time}` and `{end_time}` replaced by quoted RFC 3339 UTC times.
pub fn substitute(query: &str, start_us: i64, end_us: i64) -> String {
    query
        .replace("{start_time}", &format!("'{}'", rfc3339(start_us)))
        .replace("{end_time}", &format!("'{}'", rfc3339(end_us)))
}

/// One execution, as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct CqRun {
    pub execution_id: String,
    pub start_us: i64,
    pub end_us: i64,
    pub records_written: u64,
    pub executed_query: String,
    pub duration_s: f64,
    pub executed_at_us: i64,
}

/// How a run was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAs {
    /// By the scheduler: each window once.
    Scheduled,
    /// Through the API: any window, again if asked.
    Manual,
    /// Through the API, showing the query without running it.
    DryRun,
}

/// Runs continuous queries, one window at a time per node.
pub struct CqRunner {
    pub meta: Arc<Meta>,
    pub query: Arc<QueryEngine>,
    pub ingester: Arc<Ingester>,
    pub deleter: Arc<Deleter>,
    /// With shared storage on a node that is not a writer: the cluster whose writers take the
    /// results.
    pub results_to_a_writer: Option<Arc<crate::cluster::Cluster>>,
    pub running: tokio::sync::Mutex<()>,
}

impl CqRunner {
    /// Runs one window and records the execution; `RunAs::DryRun` only shows the query.
    pub async fn execute(
        &self,
        query: &ContinuousQuery,
        (start_us, end_us): (i64, i64),
        run_as: RunAs,
    ) -> Result<CqRun, CqError> {
        let started = Instant::now();
        let mut run = CqRun {
            execution_id: format!(
                "cq-exec-{:08x}",
                u32::from_le_bytes(crate::auth::random_bytes())
            ),
            start_us,
            end_us,
            records_written: 0,
            executed_query: substitute(&query.query, start_us, end_us),
            duration_s: 0.0,
            executed_at_us: Utc::now().timestamp_micros(),
        };
        if run_as == RunAs::DryRun {
            return Ok(run);
        }
        let result = {
            let _one_at_a_time = self.running.lock().await;
            self.write_window(query, &run.executed_query, start_us, end_us)
                .await
        };
        run.duration_s = started.elapsed().as_secs_f64();
        run.records_written = *result.as_ref().unwrap_or(&0);
        let execution = CqExecution {
            id: 0,
            query_id: query.id,
            execution_id: run.execution_id.clone(),
            executed_at_us: run.executed_at_us,
            status: if result.is_ok() {
                CQ_COMPLETED
            } else {
                "failed"
            }
            .to_string(),
            start_us,
            end_us,
            records_written: run.records_written,
            duration_s: run.duration_s,
            error: result.as_ref().err().map(ToString::to_string),
            scheduled: run_as == RunAs::Scheduled,
        };
        let meta = Arc::clone(&self.meta);
        let recorded = tokio::task::spawn_blocking(move || {
            meta.commit(MetaCommand::Admin(AdminCommand::RecordCqExecution(
                execution,
            )))
        })
        .await
        .expect("meta commit task panicked");
        result?;
        recorded?;
        Ok(run)
    }

    /// Replaces the window's rows in the destination with the query's results.
    async fn write_window(
        &self,
        query: &ContinuousQuery,
        sql: &str,
        start_us: i64,
        end_us: i64,
    ) -> Result<u64, CqError> {
        // With shared storage the other writers' buffered source rows become files first: the
        // query reads files and this node's buffer only.
        self.deleter
            .flush_other_writers(&query.database, Some(&query.source_measurement))
            .await
            .map_err(CqError::Sources)?;
        let running = self.query.execute_in_database(sql, &query.database).await?;
        let batches: Vec<RecordBatch> = running
            .stream
            .try_collect()
            .await
            .map_err(|e| CqError::Results(e.to_string()))?;
        let mut body = String::new();
        let mut rows = 0;
        for batch in &batches {
            rows += encode_batch(
                &query.destination_measurement,
                batch,
                &query.tag_columns,
                start_us,
                &mut body,
            )
            .map_err(|e| CqError::Results(e.to_string()))?;
        }
        self.deleter
            .remove_time_range(
                &query.database,
                &query.destination_measurement,
                start_us,
                end_us,
            )
            .await?;
        if rows > 0 {
            match &self.results_to_a_writer {
                Some(cluster) => cluster
                    .write_on_a_writer(&query.database, body)
                    .await
                    .map_err(CqError::Handover)?,
                None => {
                    self.ingester
                        .write(WriteRequest {
                            database: query.database.clone(),
                            format: PayloadFormat::LineProtocol(Precision::Microseconds),
                            body: Bytes::from(body),
                            received_at_us: Utc::now().timestamp_micros(),
                        })
                        .await?;
                }
            }
        }
        Ok(rows as u64)
    }
}

/// Runs every active continuous query at each boundary of its interval until `stop` turns true.
/// A failed window is retried one interval later.
pub async fn run_scheduled(runner: Arc<CqRunner>, mut stop: watch::Receiver<bool>) {
    let mut retry_at: HashMap<u64, i64> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SCHEDULER_TICK) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let now = Utc::now().timestamp_micros();
        let due: Vec<(ContinuousQuery, (i64, i64))> = runner
            .meta
            .state()
            .admin()
            .continuous_queries()
            .filter(|q| q.is_active && retry_at.get(&q.id).is_none_or(|at| *at <= now))
            .filter_map(|q| Some((q.clone(), due_window(q, now)?)))
            .collect();
        for (query, window) in due {
            match runner.execute(&query, window, RunAs::Scheduled).await {
                Ok(run) => {
                    retry_at.remove(&query.id);
                    tracing::info!(
                        query = %query.name,
                        records = run.records_written,
                        "continuous query ran"
                    );
                }
                Err(err) => {
                    let delay = query.interval_us.max(MIN_SCHEDULED_INTERVAL_US);
                    retry_at.insert(query.id, now.saturating_add(delay));
                    tracing::warn!(query = %query.name, error = %err, "continuous query failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000_000;

    fn every_minute(last_processed_us: Option<i64>) -> ContinuousQuery {
        ContinuousQuery {
            id: 1,
            name: "q".into(),
            description: None,
            database: "db".into(),
            source_measurement: "cpu".into(),
            destination_measurement: "cpu_1m".into(),
            query: "SELECT 1".into(),
            interval: "1m".into(),
            interval_us: MINUTE,
            tag_columns: vec![],
            retention_days: None,
            delete_source_after_days: None,
            is_active: true,
            last_processed_us,
            created_at_us: 0,
            updated_at_us: 0,
        }
    }

    #[test]
    fn scheduled_windows_end_on_interval_boundaries_and_follow_on() {
        let now = 10 * MINUTE + 5_000_000;
        assert_eq!(
            due_window(&every_minute(None), now),
            Some((9 * MINUTE, 10 * MINUTE))
        );
        assert_eq!(
            due_window(&every_minute(Some(7 * MINUTE)), now),
            Some((7 * MINUTE, 10 * MINUTE)),
            "catches up on missed windows"
        );
        assert_eq!(due_window(&every_minute(Some(10 * MINUTE)), now), None);
        let mut fast = every_minute(None);
        fast.interval_us = 1_000_000;
        assert_eq!(
            due_window(&fast, now),
            Some((now - 5_000_000 - MIN_SCHEDULED_INTERVAL_US, now - 5_000_000)),
            "at least ten seconds apart"
        );
    }

    #[test]
    fn manual_windows_default_to_since_last_run_until_now() {
        let now = 100 * MINUTE;
        assert_eq!(
            manual_window(&every_minute(None), None, None, now).unwrap(),
            (40 * MINUTE, now)
        );
        assert_eq!(
            manual_window(&every_minute(Some(90 * MINUTE)), None, None, now).unwrap(),
            (90 * MINUTE, now)
        );
        assert_eq!(
            manual_window(
                &every_minute(Some(90 * MINUTE)),
                Some(MINUTE),
                Some(2 * MINUTE),
                now
            )
            .unwrap(),
            (MINUTE, 2 * MINUTE)
        );
        assert!(matches!(
            manual_window(&every_minute(None), Some(2 * MINUTE), Some(2 * MINUTE), now),
            Err(CqError::Invalid(_))
        ));
        assert!(matches!(
            manual_window(&every_minute(None), None, Some(now + 1), now),
            Err(CqError::Invalid(_))
        ));
    }

    #[test]
    fn placeholders_become_quoted_utc_times() {
        assert_eq!(
            substitute(
                "SELECT * FROM cpu WHERE time >= {start_time} AND time < {end_time}",
                0,
                1_500_000
            ),
            "SELECT * FROM cpu WHERE time >= '1970-01-01T00:00:00Z' AND time < '1970-01-01T00:00:01.500Z'"
        );
    }
}
