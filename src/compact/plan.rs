//! Pure planning: which partitions to compact and in which batches, from the manifest, the time
//! and the settings. Nothing here reads storage or the clock.
//!
//! A partition's inputs are merged in write order (file LSN order) so the merge can keep the
//! latest of duplicate points; batches take consecutive files in that order, so the files of one
//! partition keep disjoint, ordered LSN ranges after any number of cycles. With shared storage
//! each writer numbers its own log, and a file's LSN range is in one log: batches never mix the
//! files of two writers, so a partition keeps one run of files per writer.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use crate::config::CompactionConfig;
use crate::meta::{FileEntry, MetaState};
use crate::storage::paths::{
    DAILY_COMPACTED_SUFFIX, HOURLY_COMPACTED_SUFFIX, MICROS_PER_DAY, day_dir, day_start, hour_dir,
    hour_start,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Hourly,
    Daily,
}

impl Tier {
    pub const ALL: [Tier; 2] = [Tier::Hourly, Tier::Daily];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hourly => "hourly",
            Tier::Daily => "daily",
        }
    }
}

impl std::str::FromStr for Tier {
    type Err = String;

    fn from_str(text: &str) -> Result<Tier, String> {
        match text.trim() {
            "hourly" => Ok(Tier::Hourly),
            "daily" => Ok(Tier::Daily),
            other => Err(format!(
                "unknown compaction tier {other:?} (expected hourly or daily)"
            )),
        }
    }
}

/// The planning rules of `[compaction]`.
#[derive(Debug, Clone)]
pub struct PlanRules {
    pub hourly_min_age: Duration,
    pub hourly_quiet_for: Duration,
    pub hourly_min_files: usize,
    pub daily_min_age: Duration,
    pub daily_min_files: usize,
    pub daily_skip_age_check_after: Duration,
    pub max_files_per_batch: usize,
}

impl PlanRules {
    pub fn from_config(config: &CompactionConfig) -> PlanRules {
        let hours = |h: u64| Duration::hours(h.min(1 << 30) as i64);
        PlanRules {
            hourly_min_age: config.hourly_min_age(),
            hourly_quiet_for: hours(config.hourly_min_age_hours),
            hourly_min_files: config.hourly_min_files,
            daily_min_age: hours(config.daily_min_age_hours),
            daily_min_files: config.daily_min_files,
            daily_skip_age_check_after: Duration::days(
                config.daily_skip_file_age_check_days.min(1 << 20) as i64,
            ),
            max_files_per_batch: config.max_files_per_batch,
        }
    }
}

/// How a file came to be, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Written by a flush.
    Flushed,
    HourlyCompacted,
    DailyCompacted,
}

pub fn file_kind(path: &str) -> FileKind {
    if path.ends_with(DAILY_COMPACTED_SUFFIX) {
        FileKind::DailyCompacted
    } else if path.ends_with(HOURLY_COMPACTED_SUFFIX) {
        FileKind::HourlyCompacted
    } else {
        FileKind::Flushed
    }
}

/// A partition (one hour or one day of one measurement) that a tier should compact.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub tier: Tier,
    pub database: String,
    pub measurement: String,
    /// Start of the hour or day, in µs.
    pub partition_start_us: i64,
    /// The partition's directory, as Arc reports it.
    pub partition_path: String,
    /// Every file the job merges, in write order.
    pub files: Vec<FileEntry>,
}

/// One job: up to `max_files_per_batch` consecutive files of a candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub tier: Tier,
    pub database: String,
    pub measurement: String,
    pub partition_start_us: i64,
    pub partition_path: String,
    /// Position of the batch within its candidate; part of the output name.
    pub index: usize,
    pub inputs: Vec<FileEntry>,
}

/// Write order within each writer's log: LSN, then path for files from the same flush.
fn write_order(files: &mut [FileEntry]) {
    files.sort_by(|a, b| {
        (&a.log, a.min_lsn, a.max_lsn, &a.path).cmp(&(&b.log, b.min_lsn, b.max_lsn, &b.path))
    });
}

/// The partitions of `tier` due at `now`, optionally of one database only.
pub fn candidates(
    state: &MetaState,
    tier: Tier,
    database: Option<&str>,
    now: DateTime<Utc>,
    rules: &PlanRules,
) -> Vec<Candidate> {
    let now_us = now.timestamp_micros();
    let mut out = Vec::new();
    for (db, measurement, _) in state.measurements() {
        if database.is_some_and(|only| only != db) {
            continue;
        }
        let mut partitions: BTreeMap<i64, Vec<FileEntry>> = BTreeMap::new();
        for file in state.files_of(db, measurement) {
            let kind = file_kind(&file.path);
            let start = match (tier, kind) {
                (Tier::Hourly, FileKind::DailyCompacted) => continue,
                (Tier::Hourly, _) => hour_start(file.min_time_us),
                (Tier::Daily, _) => day_start(file.min_time_us),
            };
            partitions.entry(start).or_default().push(file.clone());
        }
        for (start, mut files) in partitions {
            let due = match tier {
                Tier::Hourly => hourly_due(start, &files, now_us, rules),
                Tier::Daily => daily_due(start, &files, now_us, rules),
            };
            if !due {
                continue;
            }
            write_order(&mut files);
            out.push(Candidate {
                tier,
                database: db.to_string(),
                measurement: measurement.to_string(),
                partition_start_us: start,
                partition_path: match tier {
                    Tier::Hourly => hour_dir(db, measurement, start),
                    Tier::Daily => day_dir(db, measurement, start),
                },
                files,
            });
        }
    }
    out
}

fn micros(duration: Duration) -> i64 {
    duration.num_microseconds().unwrap_or(i64::MAX)
}

fn newest_written(files: &[FileEntry]) -> i64 {
    files
        .iter()
        .map(|f| f.created_at_us)
        .max()
        .unwrap_or(i64::MIN)
}

/// A finished hour, quiet for `hourly_quiet_for`, with enough flushed files.
fn hourly_due(start: i64, files: &[FileEntry], now_us: i64, rules: &PlanRules) -> bool {
    let flushed = files
        .iter()
        .filter(|f| file_kind(&f.path) == FileKind::Flushed)
        .count();
    // `hourly_min_age` is at least an hour: the hour has ended.
    start.saturating_add(micros(rules.hourly_min_age)) <= now_us
        && newest_written(files).saturating_add(micros(rules.hourly_quiet_for)) <= now_us
        && flushed >= rules.hourly_min_files
}

/// A day old enough, quiet for `daily_min_age` unless it is older than the age-check limit,
/// with enough hour-level files. An earlier daily file of the day is merged again but does not
/// count towards the minimum.
fn daily_due(start: i64, files: &[FileEntry], now_us: i64, rules: &PlanRules) -> bool {
    let hour_level = files
        .iter()
        .filter(|f| file_kind(&f.path) != FileKind::DailyCompacted)
        .count();
    let old_enough = start.saturating_add(micros(rules.daily_min_age)) <= now_us
        && start + MICROS_PER_DAY <= now_us;
    let skip_age_check = start.saturating_add(micros(rules.daily_skip_age_check_after)) <= now_us;
    let quiet = newest_written(files).saturating_add(micros(rules.daily_min_age)) <= now_us;
    old_enough && (skip_age_check || quiet) && hour_level >= rules.daily_min_files
}

/// Cuts a candidate into jobs of consecutive files of one log; a last batch of one file joins
/// nothing and is left alone (merging one file would only rewrite it).
pub fn batches(candidate: &Candidate, max_files_per_batch: usize) -> Vec<Batch> {
    candidate
        .files
        .chunk_by(|a, b| a.log == b.log)
        .flat_map(|one_log| one_log.chunks(max_files_per_batch.max(2)))
        .filter(|inputs| inputs.len() >= 2)
        .enumerate()
        .map(|(index, inputs)| Batch {
            tier: candidate.tier,
            database: candidate.database.clone(),
            measurement: candidate.measurement.clone(),
            partition_start_us: candidate.partition_start_us,
            partition_path: candidate.partition_path.clone(),
            index,
            inputs: inputs.to_vec(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaCommand;
    use crate::storage::paths::MICROS_PER_HOUR;
    use chrono::TimeZone;

    const H: i64 = MICROS_PER_HOUR;

    fn rules() -> PlanRules {
        PlanRules::from_config(&CompactionConfig {
            hourly_min_files: 3,
            daily_min_files: 3,
            max_files_per_batch: 4,
            ..CompactionConfig::default()
        })
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 20, 12, 30, 0).unwrap()
    }

    fn at(day: u32, hour: u32) -> i64 {
        Utc.with_ymd_and_hms(2026, 3, day, hour, 0, 0)
            .unwrap()
            .timestamp_micros()
    }

    fn entry(path: &str, time_us: i64, lsn: u64, created_at_us: i64) -> FileEntry {
        FileEntry {
            path: path.into(),
            database: "db".into(),
            measurement: "cpu".into(),
            min_time_us: time_us,
            max_time_us: time_us + 10,
            rows: 1,
            size_bytes: 1,
            sha256: String::new(),
            min_lsn: lsn,
            max_lsn: lsn,
            log: String::new(),
            columns: Default::default(),
            tags: vec![],
            created_at_us,
            origin_node: "n".into(),
        }
    }

    /// `count` flushed files in the hour starting at `hour_us`, written at `written_us`.
    fn state_with(groups: &[(i64, usize, i64, &str)]) -> MetaState {
        let mut state = MetaState::default();
        let mut lsn = 0;
        for &(hour_us, count, written_us, suffix) in groups {
            let mut files = Vec::new();
            for _ in 0..count {
                lsn += 1;
                let path = format!(
                    "{}/cpu_{lsn:04}{}",
                    hour_dir("db", "cpu", hour_us),
                    if suffix.is_empty() {
                        ".parquet"
                    } else {
                        suffix
                    }
                );
                files.push(entry(&path, hour_us + lsn as i64, lsn, written_us));
            }
            state
                .apply(&MetaCommand::AddFiles {
                    database: "db".into(),
                    measurement: "cpu".into(),
                    files,
                    flushed_through_lsn: lsn,
                    log: String::new(),
                    writer_epoch: None,
                })
                .unwrap();
        }
        state
    }

    fn partitions(candidates: &[Candidate]) -> Vec<(String, usize)> {
        candidates
            .iter()
            .map(|c| (c.partition_path.clone(), c.files.len()))
            .collect()
    }

    #[test]
    fn hourly_takes_finished_hours_with_enough_flushed_files() {
        let written = now().timestamp_micros();
        let state = state_with(&[
            (at(20, 9), 3, written, ""),
            (at(20, 10), 2, written, ""),
            (at(20, 10), 5, written, HOURLY_COMPACTED_SUFFIX),
            (at(20, 12), 5, written, ""),
            (at(20, 11), 2, written, ""),
            (at(20, 11), 1, written, "_compacted.parquet"),
        ]);
        let found = candidates(&state, Tier::Hourly, None, now(), &rules());
        assert_eq!(
            partitions(&found),
            [("db/cpu/2026/03/20/09".to_string(), 3)],
            "the current hour and hours with too few flushed files wait"
        );
        assert!(candidates(&state, Tier::Hourly, Some("other"), now(), &rules()).is_empty());

        let recompact = state_with(&[
            (at(20, 8), 1, written, HOURLY_COMPACTED_SUFFIX),
            (at(20, 8), 3, written, ""),
        ]);
        let found = candidates(&recompact, Tier::Hourly, None, now(), &rules());
        assert_eq!(found[0].files.len(), 4, "an earlier output is merged again");
    }

    #[test]
    fn hourly_min_age_waits_for_quiet_hours() {
        let rules = PlanRules::from_config(&CompactionConfig {
            hourly_min_files: 3,
            hourly_min_age_hours: 2,
            ..CompactionConfig::default()
        });
        let recent = now().timestamp_micros() - H;
        let old = now().timestamp_micros() - 3 * H;
        let state = state_with(&[(at(20, 9), 3, recent, ""), (at(20, 8), 3, old, "")]);
        let found = candidates(&state, Tier::Hourly, None, now(), &rules);
        assert_eq!(
            partitions(&found),
            [("db/cpu/2026/03/20/08".to_string(), 3)]
        );
    }

    #[test]
    fn daily_takes_old_quiet_days_and_skips_the_check_for_very_old_ones() {
        let now_us = now().timestamp_micros();
        let state = state_with(&[
            // Yesterday, written just now: not quiet for 24 h yet.
            (at(19, 1), 3, now_us, HOURLY_COMPACTED_SUFFIX),
            // Three days ago, quiet for two days.
            (at(17, 1), 2, now_us - 48 * H, HOURLY_COMPACTED_SUFFIX),
            (at(17, 2), 1, now_us - 48 * H, ""),
            // Ten days ago, written just now: old enough to skip the check.
            (at(10, 5), 3, now_us, ""),
            (at(10, 0), 1, now_us, DAILY_COMPACTED_SUFFIX),
            // Today: never.
            (at(20, 0), 5, now_us - 48 * H, ""),
            // Too few hour-level files.
            (at(5, 0), 2, 0, ""),
        ]);
        let found = candidates(&state, Tier::Daily, None, now(), &rules());
        assert_eq!(
            partitions(&found),
            [
                ("db/cpu/2026/03/10".to_string(), 4),
                ("db/cpu/2026/03/17".to_string(), 3)
            ]
        );
    }

    #[test]
    fn batches_are_consecutive_in_write_order_and_skip_a_lone_file() {
        let written = now().timestamp_micros();
        let state = state_with(&[(at(20, 9), 9, written, "")]);
        let mut candidate = candidates(&state, Tier::Hourly, None, now(), &rules()).remove(0);
        candidate.files.reverse();
        write_order(&mut candidate.files);
        let jobs = batches(&candidate, 4);
        let lsns: Vec<Vec<u64>> = jobs
            .iter()
            .map(|b| b.inputs.iter().map(|f| f.min_lsn).collect())
            .collect();
        assert_eq!(lsns, [vec![1, 2, 3, 4], vec![5, 6, 7, 8]]);
        assert_eq!(jobs[1].index, 1);
        let jobs = batches(&candidate, 5);
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].inputs.len(), 4);
    }

    #[test]
    fn batches_never_mix_two_writers_logs_and_keep_distinct_indexes() {
        let written = now().timestamp_micros();
        let state = state_with(&[(at(20, 9), 7, written, "")]);
        let mut candidate = candidates(&state, Tier::Hourly, None, now(), &rules()).remove(0);
        // Two shared-storage writers, each numbering its own log from 1, interleaved.
        for (i, file) in candidate.files.iter_mut().enumerate() {
            file.log = ["writer-a", "writer-b"][i % 2].into();
            file.min_lsn = i as u64 / 2 + 1;
            file.max_lsn = file.min_lsn;
        }
        write_order(&mut candidate.files);
        let jobs = batches(&candidate, 3);
        let shape: Vec<(usize, &str, Vec<u64>)> = jobs
            .iter()
            .map(|b| {
                let lsns = b.inputs.iter().map(|f| f.min_lsn).collect();
                (b.index, b.inputs[0].log.as_str(), lsns)
            })
            .collect();
        assert_eq!(
            shape,
            [
                (0, "writer-a", vec![1, 2, 3]),
                (1, "writer-b", vec![1, 2, 3]),
            ],
            "writer-a's fourth file is left alone, as a last batch of one"
        );
        assert!(
            jobs.iter()
                .all(|b| b.inputs.iter().all(|f| f.log == b.inputs[0].log))
        );
    }

    #[test]
    fn tiers_parse_from_their_names() {
        assert_eq!("daily".parse::<Tier>(), Ok(Tier::Daily));
        assert!("weekly".parse::<Tier>().is_err());
        assert_eq!(
            file_kind("a/b_compacted.parquet"),
            FileKind::HourlyCompacted
        );
        assert_eq!(file_kind("a/b_daily.parquet"), FileKind::DailyCompacted);
        assert_eq!(file_kind("a/b.parquet"), FileKind::Flushed);
    }
}
