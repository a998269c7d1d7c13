//! When `BackupSchedule` runs are due: cron in a time zone, a starting
//! deadline for missed runs, and a deterministic jitter per schedule and run.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

/// A parsed schedule.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
}

/// A spec problem, reported as a condition and an Event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("invalid schedule {0:?}: {1}")]
    Cron(String, String),
    /// Unknown time zone.
    #[error("unknown time zone {0:?} (use an IANA name such as Europe/Berlin)")]
    TimeZone(String),
    /// Jitter does not parse (why).
    #[error("invalid jitter: {0}")]
    Jitter(String),
}

impl Schedule {
    /// Parse a five-field cron expression or `@hourly`/`@daily`/`@weekly`/
    /// `@monthly`/`@yearly`, in `time_zone` (default UTC).
    ///
    /// # Errors
    /// [`ScheduleError`] naming the bad value.
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let e = expr.trim();
        if !e.starts_with('@') && e.split_whitespace().count() != 5 {
            return Err(ScheduleError::Cron(
                expr.to_string(),
                "expected five fields: minute hour day-of-month month day-of-week".into(),
            ));
        }
        let cron = Cron::from_str(e)
            .map_err(|err| ScheduleError::Cron(expr.to_string(), err.to_string()))?;
        let tz = match time_zone {
            None | Some("") => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScheduleError::TimeZone(name.to_string()))?,
        };
        Ok(Schedule { cron, tz })
    }

    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The latest scheduled time at or before `now` and after `since`, if any:
    /// the run that is due. Older missed runs are not made up for (like a
    /// CronJob, one run catches up).
    pub fn due(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut latest = None;
        let mut t = since;
        // Bounded walk: at most one scheduled time per minute over the gap,
        // capped so a controller down for months does not spin.
        for _ in 0..100_000 {
            match self.next_after(t) {
                Some(n) if n <= now => {
                    latest = Some(n);
                    t = n;
                }
                _ => break,
            }
        }
        latest
    }
}

/// Parse a jitter, a fixed duration of the protocol's grammar (`30s`,
/// `10min`, `1h30min`), into seconds.
///
/// # Errors
/// [`ScheduleError::Jitter`], saying why (a bare `m` is ambiguous).
pub fn parse_jitter(s: &str) -> Result<u64, ScheduleError> {
    cairn_protocol::duration::parse_fixed(s)
        .map(|d| d.as_secs())
        .map_err(|e| ScheduleError::Jitter(e.to_string()))
}

/// A delay in `[0, max_seconds)` that is the same every time for one schedule
/// and run, so a restarted controller does not move a run, while different
/// schedules spread out.
pub fn jitter_seconds(schedule_uid: &str, run: DateTime<Utc>, max_seconds: u64) -> u64 {
    if max_seconds == 0 {
        return 0;
    }
    // FNV-1a over the UID and the run time.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in schedule_uid
        .as_bytes()
        .iter()
        .chain(run.timestamp().to_le_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % max_seconds
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn next_run_in_a_time_zone() {
        let s = Schedule::parse("0 2 * * *", Some("Europe/Berlin")).unwrap();
        // 02:00 Berlin in winter is 01:00 UTC, in summer 00:00 UTC.
        assert_eq!(
            s.next_after(utc(2026, 1, 10, 12, 0)),
            Some(utc(2026, 1, 11, 1, 0))
        );
        assert_eq!(
            s.next_after(utc(2026, 7, 10, 12, 0)),
            Some(utc(2026, 7, 11, 0, 0))
        );
        let daily = Schedule::parse("@daily", None).unwrap();
        assert_eq!(
            daily.next_after(utc(2026, 1, 10, 12, 0)),
            Some(utc(2026, 1, 11, 0, 0))
        );
    }

    #[test]
    fn bad_specs_are_named() {
        assert!(matches!(
            Schedule::parse("0 2 * *", None),
            Err(ScheduleError::Cron(..))
        ));
        assert!(matches!(
            Schedule::parse("0 25 * * *", None),
            Err(ScheduleError::Cron(..))
        ));
        assert!(matches!(
            Schedule::parse("0 0 * * * *", None),
            Err(ScheduleError::Cron(..))
        ));
        assert_eq!(
            Schedule::parse("0 2 * * *", Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::TimeZone("Mars/Olympus".into())
        );
        assert!(parse_jitter("10 minutes").is_err());
        assert_eq!(parse_jitter("1h30min"), Ok(5400));
        assert_eq!(parse_jitter("0"), Ok(0));
        let e = parse_jitter("10m").unwrap_err().to_string();
        assert!(e.contains("\"min\" for minutes"), "{e}");
    }

    #[test]
    fn missed_runs_collapse_into_the_latest() {
        let s = Schedule::parse("0 * * * *", None).unwrap();
        // Controller down from 10:30 to 14:10: one run (14:00) is due, not four.
        assert_eq!(
            s.due(utc(2026, 3, 1, 10, 30), utc(2026, 3, 1, 14, 10)),
            Some(utc(2026, 3, 1, 14, 0))
        );
        assert_eq!(s.due(utc(2026, 3, 1, 14, 0), utc(2026, 3, 1, 14, 59)), None);
    }

    #[test]
    fn jitter_is_stable_and_bounded() {
        let run = utc(2026, 3, 1, 2, 0);
        let a = jitter_seconds("uid-a", run, 600);
        assert_eq!(a, jitter_seconds("uid-a", run, 600));
        assert!(a < 600);
        let spread: std::collections::HashSet<u64> = (0..50)
            .map(|i| jitter_seconds(&format!("uid-{i}"), run, 600))
            .collect();
        assert!(spread.len() > 40, "jitter should spread schedules");
        assert_eq!(jitter_seconds("uid-a", run, 0), 0);
    }
}
