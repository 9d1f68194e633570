//! Cron schedules for background jobs (compaction tiers, retention): five fields
//! (`minute hour day-of-month month day-of-week`) or an `@hourly`-style descriptor, as Arc's
//! robfig/cron accepts, evaluated in UTC. A sixth leading seconds field is accepted too, for
//! schedules finer than a minute.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid cron schedule {text:?}: {reason}")]
pub struct ScheduleError {
    pub text: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct CronSchedule {
    text: String,
    cron: croner::Cron,
}

impl CronSchedule {
    /// The first firing strictly after `after`; `None` for a schedule that never fires again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }

    /// Sleeps until the next firing after now and returns its time; never returns for a
    /// schedule that cannot fire.
    pub async fn sleep_until_next(&self) -> DateTime<Utc> {
        let now = Utc::now();
        let Some(next) = self.next_after(now) else {
            return std::future::pending().await;
        };
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        next
    }

    /// The latest firing after `after` and at or before `now`: the one run due now when
    /// everything up to `after` ran (missed earlier firings are not run one by one). Looks at
    /// most a day back.
    pub fn latest_firing(&self, after: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = after.max(now - chrono::Duration::days(1));
        let mut latest = None;
        while let Some(next) = self.next_after(from).filter(|next| *next <= now) {
            latest = Some(next);
            from = next;
        }
        latest
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for CronSchedule {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(text).map_err(|e| ScheduleError {
            text: text.to_string(),
            reason: e.to_string(),
        })?;
        Ok(CronSchedule {
            text: text.trim().to_string(),
            cron,
        })
    }
}

/// Parses a duration as Arc's API takes them (Go's syntax plus days): `"90s"`, `"5m"`,
/// `"1h30m"`, `"7d"`. Units: ms, s, m, h, d; every number needs a unit.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total_ms: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total_ms = total_ms.checked_add(number.checked_mul(unit_ms)?)?;
    }
    Some(std::time::Duration::from_millis(total_ms))
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 10, h, m, 0).unwrap()
    }

    #[test]
    fn five_field_schedules_fire_at_the_next_match() {
        let hourly: CronSchedule = "5 * * * *".parse().unwrap();
        assert_eq!(hourly.next_after(at(10, 4)), Some(at(10, 5)));
        assert_eq!(hourly.next_after(at(10, 5)), Some(at(11, 5)));
        let daily: CronSchedule = "0 3 * * *".parse().unwrap();
        assert_eq!(
            daily.next_after(at(3, 0)),
            Some(Utc.with_ymd_and_hms(2026, 3, 11, 3, 0, 0).unwrap())
        );
        let seconds: CronSchedule = "*/10 * * * * *".parse().unwrap();
        assert_eq!(
            seconds.next_after(at(10, 4)),
            Some(at(10, 4) + chrono::Duration::seconds(10))
        );
        let descriptor: CronSchedule = "@hourly".parse().unwrap();
        assert_eq!(descriptor.next_after(at(10, 30)), Some(at(11, 0)));
    }

    #[test]
    fn the_latest_firing_since_the_last_run_is_due_once() {
        let every_10s: CronSchedule = "*/10 * * * * *".parse().unwrap();
        let t = |s: i64| at(10, 0) + chrono::Duration::seconds(s);
        assert_eq!(every_10s.latest_firing(t(0), t(9)), None);
        assert_eq!(every_10s.latest_firing(t(0), t(10)), Some(t(10)));
        // A leader that took over after two missed firings runs the latest one only.
        assert_eq!(every_10s.latest_firing(t(10), t(35)), Some(t(30)));
        assert_eq!(every_10s.latest_firing(t(30), t(35)), None);
        let old = every_10s.latest_firing(t(0) - chrono::Duration::days(30), t(35));
        assert_eq!(old, Some(t(30)));
    }

    #[test]
    fn durations_parse_like_go_with_days() {
        let secs = |s: &str| parse_duration(s).map(|d| d.as_secs());
        assert_eq!(secs("90s"), Some(90));
        assert_eq!(secs("1h30m"), Some(5400));
        assert_eq!(secs("7d"), Some(604_800));
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        for bad in ["", "5", "m", "1x", "-5m", "1.5h", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn malformed_schedules_are_refused() {
        for text in ["", "* * *", "61 * * * *", "0 0 * * * * 2030", "every hour"] {
            let err = text.parse::<CronSchedule>().unwrap_err();
            assert_eq!(err.text, text);
        }
    }
}
