//! Every object key layout, in one place (Arc's layout, so files stay readable by other tools).
//!
//! `{db}/{measurement}/{YYYY}/{MM}/{DD}/{HH}/{measurement}_{YYYYMMDD}_{HHMMSS}_{nnnnnnnnn}.parquet`:
//! the directory is the UTC hour of the rows, the file name the UTC wall-clock time of the flush.
//! Compaction writes `…/{HH}/{measurement}_{YYYYMMDD}_{HHMMSS}_{unixnano}_b{batch}_compacted.parquet`
//! (one hour) and `…/{DD}/{measurement}_{…}_b{batch}_daily.parquet` (one day, in the day directory),
//! named after the time of the compaction.

use chrono::{DateTime, Datelike, Timelike, Utc};

pub const MICROS_PER_HOUR: i64 = 3_600_000_000;
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// Name ending of a file written by the hourly compaction tier.
pub const HOURLY_COMPACTED_SUFFIX: &str = "_compacted.parquet";
/// Name ending of a file written by the daily compaction tier.
pub const DAILY_COMPACTED_SUFFIX: &str = "_daily.parquet";

/// Start of the UTC hour containing `time_us`, in µs.
pub fn hour_start(time_us: i64) -> i64 {
    time_us.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR
}

/// Start of the UTC day containing `time_us`, in µs.
pub fn day_start(time_us: i64) -> i64 {
    time_us.div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY
}

fn utc(time_us: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(time_us).expect("partition within chrono's range")
}

/// `{db}/{measurement}/{YYYY}/{MM}/{DD}/{HH}`: the directory of an hour's files.
pub fn hour_dir(database: &str, measurement: &str, hour_start_us: i64) -> String {
    let hour = utc(hour_start_us);
    format!(
        "{database}/{measurement}/{:04}/{:02}/{:02}/{:02}",
        hour.year(),
        hour.month(),
        hour.day(),
        hour.hour()
    )
}

/// `{db}/{measurement}/{YYYY}/{MM}/{DD}`: the directory of a day's hours and its daily files.
pub fn day_dir(database: &str, measurement: &str, day_start_us: i64) -> String {
    let day = utc(day_start_us);
    format!(
        "{database}/{measurement}/{:04}/{:02}/{:02}",
        day.year(),
        day.month(),
        day.day()
    )
}

/// `{measurement}_{YYYYMMDD}_{HHMMSS}_{unixnano}_b{batch}{suffix}`: unique per compaction time
/// and batch, so sibling jobs never collide.
fn compacted_name(
    measurement: &str,
    compacted_at: DateTime<Utc>,
    batch: usize,
    suffix: &str,
) -> String {
    format!(
        "{measurement}_{}_{}_b{batch}{suffix}",
        compacted_at.format("%Y%m%d_%H%M%S"),
        compacted_at
            .timestamp_nanos_opt()
            .expect("clock within i64 ns"),
    )
}

/// Key of a file the hourly tier writes for the hour starting at `hour_start_us`.
pub fn hourly_compacted_key(
    database: &str,
    measurement: &str,
    hour_start_us: i64,
    compacted_at: DateTime<Utc>,
    batch: usize,
) -> String {
    format!(
        "{}/{}",
        hour_dir(database, measurement, hour_start_us),
        compacted_name(measurement, compacted_at, batch, HOURLY_COMPACTED_SUFFIX)
    )
}

/// Key of a file the daily tier writes for the day starting at `day_start_us`.
pub fn daily_compacted_key(
    database: &str,
    measurement: &str,
    day_start_us: i64,
    compacted_at: DateTime<Utc>,
    batch: usize,
) -> String {
    format!(
        "{}/{}",
        day_dir(database, measurement, day_start_us),
        compacted_name(measurement, compacted_at, batch, DAILY_COMPACTED_SUFFIX)
    )
}

/// Key of the file a row delete writes in place of `original`: same directory and kind (flushed,
/// hourly or daily, which compaction plans by), named after the time of the delete and the
/// file's place in it.
pub fn rewritten_key(
    original: &str,
    measurement: &str,
    rewritten_at: DateTime<Utc>,
    index: usize,
) -> String {
    let dir = original.rsplit_once('/').map_or("", |(dir, _)| dir);
    let suffix = [DAILY_COMPACTED_SUFFIX, HOURLY_COMPACTED_SUFFIX]
        .into_iter()
        .find(|s| original.ends_with(s))
        .unwrap_or(".parquet");
    format!(
        "{dir}/{measurement}_{}_{}_d{index}{suffix}",
        rewritten_at.format("%Y%m%d_%H%M%S"),
        rewritten_at
            .timestamp_nanos_opt()
            .expect("clock within i64 ns"),
    )
}

/// Key of a file written by a flush. `flushed_at` must be unique per measurement and hour
/// among the flushes of one writer; `writer_log` (empty, or a shared-storage writer's node id)
/// keeps writers sharing a bucket apart when two flush in the same nanosecond.
pub fn flush_file_key(
    database: &str,
    measurement: &str,
    hour_start_us: i64,
    flushed_at: DateTime<Utc>,
    writer_log: &str,
) -> String {
    let writer = if writer_log.is_empty() {
        String::new()
    } else {
        // Node ids are free text: a key keeps to characters every object store takes as is,
        // and the `w-` marker keeps a node named like a compaction suffix from looking like one.
        let safe: String = writer_log
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("_w-{safe}")
    };
    format!(
        "{}/{measurement}_{}_{:09}{writer}.parquet",
        hour_dir(database, measurement, hour_start_us),
        flushed_at.format("%Y%m%d_%H%M%S"),
        flushed_at.nanosecond() % 1_000_000_000,
    )
}

/// Whether a key is a data file in the database/measurement tree (not a marker or state object,
/// whose first path component starts with `.` or `_`).
pub fn is_data_file(key: &str) -> bool {
    key.ends_with(".parquet")
        && key
            .split('/')
            .next()
            .is_some_and(|db| !db.starts_with('.') && !db.starts_with('_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_key_uses_data_hour_directory_and_flush_time_name() {
        let data_time = DateTime::parse_from_rfc3339("2026-03-04T05:59:59.999Z")
            .unwrap()
            .timestamp_micros();
        let flushed = DateTime::parse_from_rfc3339("2026-03-05T01:02:03.000000042Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            flush_file_key("prod", "cpu", hour_start(data_time), flushed, ""),
            "prod/cpu/2026/03/04/05/cpu_20260305_010203_000000042.parquet"
        );
        // Two shared-storage writers flushing in the same nanosecond.
        let writers = ["writer-1", "writer_2/x", "compacted"]
            .map(|w| flush_file_key("prod", "cpu", hour_start(data_time), flushed, w));
        assert_eq!(
            writers,
            [
                "prod/cpu/2026/03/04/05/cpu_20260305_010203_000000042_w-writer-1.parquet",
                "prod/cpu/2026/03/04/05/cpu_20260305_010203_000000042_w-writer-2-x.parquet",
                "prod/cpu/2026/03/04/05/cpu_20260305_010203_000000042_w-compacted.parquet",
            ]
        );
        assert!(!writers[2].ends_with(HOURLY_COMPACTED_SUFFIX));
    }

    #[test]
    fn compacted_keys_follow_arcs_layout() {
        let data_time = DateTime::parse_from_rfc3339("2026-03-04T05:30:00Z")
            .unwrap()
            .timestamp_micros();
        let at = DateTime::parse_from_rfc3339("2026-03-05T01:02:03.000000042Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            hourly_compacted_key("prod", "cpu", hour_start(data_time), at, 2),
            "prod/cpu/2026/03/04/05/cpu_20260305_010203_1772672523000000042_b2_compacted.parquet"
        );
        assert_eq!(
            daily_compacted_key("prod", "cpu", day_start(data_time), at, 0),
            "prod/cpu/2026/03/04/cpu_20260305_010203_1772672523000000042_b0_daily.parquet"
        );
        assert_eq!(day_start(-1), -MICROS_PER_DAY);
    }

    #[test]
    fn rewritten_keys_keep_directory_and_kind() {
        let at = DateTime::parse_from_rfc3339("2026-03-05T01:02:03.000000042Z")
            .unwrap()
            .with_timezone(&Utc);
        for (original, rewritten) in [
            (
                "prod/cpu/2026/03/04/05/cpu_20260304_060000_000000001.parquet",
                "prod/cpu/2026/03/04/05/cpu_20260305_010203_1772672523000000042_d3.parquet",
            ),
            (
                "prod/cpu/2026/03/04/05/cpu_x_b2_compacted.parquet",
                "prod/cpu/2026/03/04/05/cpu_20260305_010203_1772672523000000042_d3_compacted.parquet",
            ),
            (
                "prod/cpu/2026/03/04/cpu_x_b0_daily.parquet",
                "prod/cpu/2026/03/04/cpu_20260305_010203_1772672523000000042_d3_daily.parquet",
            ),
        ] {
            assert_eq!(rewritten_key(original, "cpu", at, 3), rewritten);
        }
    }

    #[test]
    fn hour_start_floors_negative_times() {
        assert_eq!(hour_start(-1), -MICROS_PER_HOUR);
        assert_eq!(hour_start(MICROS_PER_HOUR + 5), MICROS_PER_HOUR);
    }

    #[test]
    fn data_files_exclude_markers_and_state() {
        assert!(is_data_file("db/cpu/2026/01/01/00/cpu_x.parquet"));
        assert!(!is_data_file("_compaction_state/hourly/x.parquet"));
        assert!(!is_data_file("db/.arc-database"));
    }
}
