//! Retention policies: whole files whose newest row is older than the policy's cutoff are
//! removed from the manifest (one command per measurement); their objects are deleted later by
//! `reclaim`, once no running query can be reading them. Files are never rewritten here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::meta::{
    AdminCommand, FileEntry, Meta, MetaCommand, MetaError, MetaState, RetentionExecution,
    RetentionPolicy,
};
use crate::schedule::CronSchedule;

const DAY_US: i64 = 86_400_000_000;

/// What one execution removes (or would remove).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RetentionOutcome {
    pub cutoff_us: i64,
    pub rows: u64,
    /// Measurement → paths of its expired files.
    pub files: BTreeMap<String, Vec<String>>,
}

impl RetentionOutcome {
    pub fn file_count(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }
}

/// Pure: files of the policy's measurements whose newest row is before
/// `now − (retention_days + buffer_days)`.
pub fn expired_files(state: &MetaState, policy: &RetentionPolicy, now_us: i64) -> RetentionOutcome {
    let days = i64::from(policy.retention_days) + i64::from(policy.buffer_days);
    let cutoff_us = now_us.saturating_sub(days.saturating_mul(DAY_US));
    let mut outcome = RetentionOutcome {
        cutoff_us,
        ..RetentionOutcome::default()
    };
    let in_scope = |file: &&FileEntry| {
        file.database == policy.database
            && policy
                .measurement
                .as_ref()
                .is_none_or(|m| *m == file.measurement)
            && file.max_time_us < cutoff_us
    };
    for file in state.files().filter(in_scope) {
        outcome.rows += file.rows;
        outcome
            .files
            .entry(file.measurement.clone())
            .or_default()
            .push(file.path.clone());
    }
    outcome
}

/// Runs a policy now: removes its expired files (unless `dry_run`) and records the execution,
/// as the scheduled run at `slot_us` if it is one.
pub fn execute(
    meta: &Meta,
    policy: &RetentionPolicy,
    dry_run: bool,
    now_us: i64,
    slot_us: Option<i64>,
) -> Result<RetentionOutcome, MetaError> {
    let started = Instant::now();
    let outcome = expired_files(&meta.state(), policy, now_us);
    if dry_run {
        return Ok(outcome);
    }
    let mut result = Ok(());
    for (measurement, removed) in &outcome.files {
        result = meta.commit(MetaCommand::ReplaceFiles {
            database: policy.database.clone(),
            measurement: measurement.clone(),
            removed: removed.clone(),
            added: Vec::new(),
            at_us: now_us,
            compactor_epoch: None,
        });
        if result.is_err() {
            break;
        }
    }
    let execution = RetentionExecution {
        id: 0,
        policy_id: policy.id,
        executed_at_us: now_us,
        status: if result.is_ok() {
            "completed"
        } else {
            "failed"
        }
        .to_string(),
        deleted_count: if result.is_ok() { outcome.rows } else { 0 },
        files_deleted: if result.is_ok() {
            outcome.file_count() as u64
        } else {
            0
        },
        cutoff_us: outcome.cutoff_us,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        error: result.as_ref().err().map(ToString::to_string),
        slot_us,
    };
    meta.commit(MetaCommand::Admin(AdminCommand::RecordRetentionExecution(
        execution,
    )))?;
    result.map(|()| outcome)
}

/// How often the scheduler looks for a due run.
const SCHEDULER_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs every active policy once per firing of `schedule` until `stop` turns true. Each run is
/// recorded with its firing, and a firing recorded once is never run again: a scheduler that
/// starts (a new leader) runs the latest firing after the recorded one, if it is due.
pub async fn run_scheduled(
    meta: Arc<Meta>,
    schedule: CronSchedule,
    mut stop: watch::Receiver<bool>,
) {
    let started = chrono::Utc::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SCHEDULER_TICK) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let now = chrono::Utc::now();
        let due: Vec<(RetentionPolicy, i64)> = {
            let state = meta.state();
            let admin = state.admin();
            admin
                .retention_policies()
                .filter(|p| p.is_active)
                .filter_map(|policy| {
                    let after = admin
                        .retention_slot(policy.id)
                        .and_then(chrono::DateTime::from_timestamp_micros)
                        .unwrap_or(started);
                    let slot = schedule.latest_firing(after, now)?;
                    Some((policy.clone(), slot.timestamp_micros()))
                })
                .collect()
        };
        if due.is_empty() {
            continue;
        }
        let meta = Arc::clone(&meta);
        let ran = tokio::task::spawn_blocking(move || {
            for (policy, slot_us) in due {
                let now = crate::auth::now_us();
                match execute(&meta, &policy, false, now, Some(slot_us)) {
                    Ok(outcome) => tracing::info!(
                        policy = %policy.name,
                        files = outcome.file_count(),
                        rows = outcome.rows,
                        "retention policy ran"
                    ),
                    Err(err) => {
                        tracing::error!(policy = %policy.name, error = %err, "retention policy failed")
                    }
                }
            }
        })
        .await;
        if let Err(err) = ran {
            tracing::error!(error = %err, "retention run panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::ColumnType;

    fn file(path: &str, measurement: &str, max_time_us: i64, lsn: u64) -> MetaCommand {
        MetaCommand::AddFiles {
            database: "db".into(),
            measurement: measurement.into(),
            files: vec![FileEntry {
                path: path.into(),
                database: "db".into(),
                measurement: measurement.into(),
                min_time_us: max_time_us - 10,
                max_time_us,
                rows: 5,
                size_bytes: 1,
                sha256: String::new(),
                min_lsn: lsn,
                max_lsn: lsn,
                log: String::new(),
                columns: BTreeMap::from([("v".to_string(), ColumnType::Int64)]),
                tags: vec![],
                created_at_us: 0,
                origin_node: "n".into(),
            }],
            flushed_through_lsn: lsn,
            log: String::new(),
            writer_epoch: None,
        }
    }

    #[test]
    fn only_files_entirely_before_the_cutoff_expire() {
        let mut state = MetaState::default();
        let now = 100 * DAY_US;
        state
            .apply(&file("db/cpu/old", "cpu", 89 * DAY_US - 1, 1))
            .unwrap();
        state
            .apply(&file("db/cpu/edge", "cpu", 89 * DAY_US, 2))
            .unwrap();
        state.apply(&file("db/mem/old", "mem", DAY_US, 3)).unwrap();
        let mut policy = RetentionPolicy {
            id: 1,
            name: "p".into(),
            database: "db".into(),
            measurement: Some("cpu".into()),
            retention_days: 4,
            buffer_days: 7,
            is_active: true,
            created_at_us: 0,
            updated_at_us: 0,
        };
        let outcome = expired_files(&state, &policy, now);
        assert_eq!(outcome.cutoff_us, 89 * DAY_US);
        assert_eq!(
            outcome.files,
            BTreeMap::from([("cpu".into(), vec!["db/cpu/old".into()])])
        );
        assert_eq!(outcome.rows, 5);
        policy.measurement = None;
        assert_eq!(expired_files(&state, &policy, now).file_count(), 2);
        policy.database = "other".into();
        assert_eq!(expired_files(&state, &policy, now).file_count(), 0);
    }
}
