//! Every object key layout, in one place (Arc's layout, so files stay readable by other tools).
//!
//! `{db}/{measurement}/{YYYY}/{MM}/{DD}/{HH}/{measurement}_{YYYYMMDD}_{HHMMSS}_{nnnnnnnnn}.parquet`:
//! the directory is the UTC hour of the rows, the file name the UTC wall-clock time of the flush.

use chrono::{DateTime, Datelike, Timelike, Utc};

pub const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// Start of the UTC hour containing `time_us`, in µs.
pub fn hour_start(time_us: i64) -> i64 {
    time_us.div_euclid(MICROS_PER_HOUR) * MICROS_PER_HOUR
}

/// Key of a file written by a flush. `flushed_at` must be unique per measurement and hour.
pub fn flush_file_key(
    database: &str,
    measurement: &str,
    hour_start_us: i64,
    flushed_at: DateTime<Utc>,
) -> String {
    let hour = DateTime::<Utc>::from_timestamp_micros(hour_start_us)
        .expect("hour bucket within chrono's range");
    format!(
        "{database}/{measurement}/{:04}/{:02}/{:02}/{:02}/{measurement}_{}_{:09}.parquet",
        hour.year(),
        hour.month(),
        hour.day(),
        hour.hour(),
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
            flush_file_key("prod", "cpu", hour_start(data_time), flushed),
            "prod/cpu/2026/03/04/05/cpu_20260305_010203_000000042.parquet"
        );
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
