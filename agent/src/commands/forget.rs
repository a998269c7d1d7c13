//! Retention: which snapshots a policy keeps, with restic's semantics.
//!
//! Snapshots are grouped (by default by host and paths) and each group is
//! judged on its own, newest first. A snapshot is kept if any rule keeps it:
//! `last` keeps the newest N; `hourly`/`daily`/`weekly`/`monthly`/`yearly`
//! keep the newest snapshot of each of the N most recent periods (in local
//! time) that have snapshots; `within` keeps everything within a duration of
//! the group's newest snapshot; `tags` keeps snapshots carrying any given tag.
//! Every decision says why.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, FixedOffset, Local, Months, TimeDelta, Timelike};
use serde::Serialize;

use crate::backend::FileKind;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repository::Repository;
use crate::snapshot::Snapshot;

/// A duration in calendar units, as in `--keep-within 1y2mo3d4h` (the
/// grammar is the protocol crate's, `cairn_protocol::duration`: weeks count
/// as 7 days, and a bare `m` is refused as ambiguous).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CalendarDuration {
    /// Years.
    pub years: u32,
    /// Months.
    pub months: u32,
    /// Days.
    pub days: u32,
    /// Hours.
    pub hours: u32,
}

impl std::str::FromStr for CalendarDuration {
    type Err = Error;
    fn from_str(s: &str) -> Result<CalendarDuration> {
        let c = cairn_protocol::duration::parse_calendar(s)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        Ok(CalendarDuration {
            years: c.years,
            months: c.months,
            days: c.days,
            hours: c.hours,
        })
    }
}

impl CalendarDuration {
    /// `t` minus this duration; `None` when that is before any time chrono
    /// can represent (every snapshot is then within the duration).
    fn before(&self, t: DateTime<FixedOffset>) -> Option<DateTime<FixedOffset>> {
        let months = self.years.checked_mul(12)?.checked_add(self.months)?;
        let t = t.checked_sub_months(Months::new(months))?;
        let span = TimeDelta::try_days(i64::from(self.days))?
            .checked_add(&TimeDelta::try_hours(i64::from(self.hours))?)?;
        t.checked_sub_signed(span)
    }
}

/// What to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep the newest N snapshots.
    pub last: u32,
    /// Keep the newest snapshot of each of the last N hours with snapshots.
    pub hourly: u32,
    /// ... days.
    pub daily: u32,
    /// ... ISO weeks.
    pub weekly: u32,
    /// ... months.
    pub monthly: u32,
    /// ... years.
    pub yearly: u32,
    /// Keep snapshots within this duration of the group's newest snapshot.
    pub within: Option<CalendarDuration>,
    /// Keep snapshots with any of these tags.
    pub tags: Vec<String>,
}

impl RetentionPolicy {
    /// True when the policy keeps nothing (then `forget` refuses to run).
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }
}

/// The verdict on one snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    /// Snapshot ID.
    pub id: Id,
    /// Snapshot time.
    pub time: DateTime<FixedOffset>,
    /// Kept or to be removed.
    pub keep: bool,
    /// Why it is kept (empty when removed).
    pub reasons: Vec<String>,
}

/// How to group snapshots before applying the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    /// By host name.
    pub host: bool,
    /// By the set of paths.
    pub paths: bool,
    /// By the set of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl std::str::FromStr for GroupBy {
    type Err = Error;
    fn from_str(s: &str) -> Result<GroupBy> {
        let mut g = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" => g.paths = true,
                "tags" => g.tags = true,
                other => {
                    return Err(Error::InvalidInput(format!(
                        "--group-by: unknown key {other:?} (host, paths, tags)"
                    )))
                }
            }
        }
        Ok(g)
    }
}

/// One group of snapshots and the decisions for it.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    /// Host name, when grouping by host.
    pub host: Option<String>,
    /// Paths, when grouping by paths.
    pub paths: Option<Vec<String>>,
    /// Tags, when grouping by tags.
    pub tags: Option<Vec<String>>,
    /// Decisions, newest first.
    pub decisions: Vec<Decision>,
}

/// Group snapshots and decide which to keep.
///
/// # Errors
/// [`Error::InvalidInput`] for an empty policy.
pub fn plan(
    snapshots: &[(Id, Snapshot)],
    policy: &RetentionPolicy,
    group_by: GroupBy,
) -> Result<Vec<Group>> {
    if policy.is_empty() {
        return Err(Error::InvalidInput(
            "no retention policy given (--keep-last, --keep-daily, ...): refusing to remove every snapshot".into(),
        ));
    }
    type Key = (Option<String>, Option<Vec<String>>, Option<Vec<String>>);
    let mut groups: BTreeMap<Key, Vec<(Id, &Snapshot)>> = BTreeMap::new();
    for (id, s) in snapshots {
        let sorted = |v: &Vec<String>| {
            let mut v = v.clone();
            v.sort();
            v
        };
        let key = (
            group_by.host.then(|| s.hostname.clone()),
            group_by.paths.then(|| sorted(&s.paths)),
            group_by.tags.then(|| sorted(&s.tags)),
        );
        groups.entry(key).or_default().push((*id, s));
    }
    Ok(groups
        .into_iter()
        .map(|((host, paths, tags), list)| Group {
            host,
            paths,
            tags,
            decisions: decide(&list, policy),
        })
        .collect())
}

/// What [`forget`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Forgotten {
    /// The groups and the decision on each snapshot.
    pub groups: Vec<Group>,
    /// Snapshots removed (with `dry_run`: that would be removed).
    pub removed: u64,
}

/// Apply `policy` to `snapshots` (grouped by `group_by`) and delete the
/// snapshot files it does not keep, unless `dry_run`; each removal is logged
/// (info). A snapshot already gone (removed by a concurrent forget) counts as
/// removed. The data only they referenced stays until prune.
///
/// # Errors
/// [`Error::InvalidInput`] for an empty policy; a storage error stops at the
/// first snapshot it could not remove (those before it are removed).
pub fn forget(
    repo: &Repository,
    snapshots: &[(Id, Snapshot)],
    policy: &RetentionPolicy,
    group_by: GroupBy,
    dry_run: bool,
) -> Result<Forgotten> {
    let groups = plan(snapshots, policy, group_by)?;
    let mut removed = 0;
    for d in groups.iter().flat_map(|g| &g.decisions).filter(|d| !d.keep) {
        if !dry_run {
            match repo.backend().remove(FileKind::Snapshot, &d.id.to_hex()) {
                Ok(()) | Err(Error::NotFound(_)) => {
                    tracing::info!("removed snapshot {}", d.id.short())
                }
                Err(e) => return Err(e),
            }
        }
        removed += 1;
    }
    Ok(Forgotten { groups, removed })
}

/// Decide for one group (any order in; newest first out).
pub fn decide(snapshots: &[(Id, &Snapshot)], policy: &RetentionPolicy) -> Vec<Decision> {
    let mut list: Vec<(Id, &Snapshot)> = snapshots.to_vec();
    list.sort_by(|a, b| b.1.time.cmp(&a.1.time).then(b.0.cmp(&a.0)));
    let local = |t: DateTime<FixedOffset>| t.with_timezone(&Local);
    type Bucket = fn(DateTime<Local>) -> (i32, u32, u32, u32);
    let buckets: [(&str, u32, Bucket); 5] = [
        ("hourly", policy.hourly, |t| {
            (t.year(), t.month(), t.day(), t.hour())
        }),
        ("daily", policy.daily, |t| (t.year(), t.month(), t.day(), 0)),
        ("weekly", policy.weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }),
        ("monthly", policy.monthly, |t| (t.year(), t.month(), 0, 0)),
        ("yearly", policy.yearly, |t| (t.year(), 0, 0, 0)),
    ];
    let mut left: Vec<u32> = buckets.iter().map(|b| b.1).collect();
    let mut last: Vec<Option<(i32, u32, u32, u32)>> = vec![None; buckets.len()];
    let newest = list.first().map(|(_, s)| s.time);
    // Some(None): a duration reaching before any representable time keeps all.
    let within_from = policy.within.zip(newest).map(|(d, t)| d.before(t));
    list.iter()
        .enumerate()
        .map(|(n, (id, s))| {
            let mut reasons = Vec::new();
            if (n as u32) < policy.last {
                reasons.push(format!("last snapshot #{}", n + 1));
            }
            for (i, (name, _, bucket)) in buckets.iter().enumerate() {
                if left[i] == 0 {
                    continue;
                }
                let key = bucket(local(s.time));
                if last[i] != Some(key) {
                    last[i] = Some(key);
                    left[i] -= 1;
                    reasons.push(format!("{name} snapshot"));
                }
            }
            if let Some(from) = within_from {
                if from.is_none_or(|from| s.time >= from) {
                    reasons.push("within the keep-within duration".into());
                }
            }
            let tags: Vec<&String> = policy.tags.iter().filter(|t| s.tags.contains(t)).collect();
            if !tags.is_empty() {
                reasons.push(format!(
                    "has tag {}",
                    tags.iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            Decision {
                id: *id,
                time: s.time,
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Summary;
    use chrono::TimeZone;

    fn snap(t: DateTime<FixedOffset>, tags: &[&str]) -> Snapshot {
        Snapshot {
            time: t,
            hostname: "h".into(),
            username: "u".into(),
            paths: vec!["/data".into()],
            tags: tags.iter().map(|s| s.to_string()).collect(),
            tree: Id::default(),
            parent: None,
            original: None,
            program_version: "test".into(),
            summary: Summary::default(),
        }
    }

    /// Snapshots at local times `start + k * step_hours` for k in 0..count.
    fn timeline(start: (i32, u32, u32, u32), step_hours: i64, count: usize) -> Vec<(Id, Snapshot)> {
        let t0 = Local
            .with_ymd_and_hms(start.0, start.1, start.2, start.3, 30, 0)
            .single()
            .expect("unambiguous local time")
            .fixed_offset();
        (0..count)
            .map(|k| {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&(k as u64).to_be_bytes());
                (
                    Id(id),
                    snap(t0 + TimeDelta::hours(step_hours * k as i64), &[]),
                )
            })
            .collect()
    }

    /// Indices (0 = oldest) of kept snapshots.
    fn kept(list: &[(Id, Snapshot)], policy: &RetentionPolicy) -> Vec<usize> {
        let refs: Vec<(Id, &Snapshot)> = list.iter().map(|(i, s)| (*i, s)).collect();
        let mut k: Vec<usize> = decide(&refs, policy)
            .into_iter()
            .filter(|d| d.keep)
            .map(|d| list.iter().position(|(i, _)| *i == d.id).unwrap())
            .collect();
        k.sort();
        k
    }

    #[test]
    fn retention_table() {
        // 30 days of snapshots every 6 hours starting 2026-01-01 00:30 local (120 snapshots).
        let six_hourly = timeline((2026, 1, 1, 0), 6, 120);
        // one snapshot a day for 400 days from 2025-01-01 (crosses weeks, months, a year).
        let daily = timeline((2025, 1, 1, 12), 24, 400);
        type Case<'a> = (
            &'a str,
            &'a Vec<(Id, Snapshot)>,
            RetentionPolicy,
            Vec<usize>,
        );
        let cases: Vec<Case> = vec![
            (
                "last 3",
                &six_hourly,
                RetentionPolicy {
                    last: 3,
                    ..Default::default()
                },
                vec![117, 118, 119],
            ),
            // the newest of each of the last 2 days: day 30 (last at idx 119) and day 29 (idx 115)
            (
                "daily 2",
                &six_hourly,
                RetentionPolicy {
                    daily: 2,
                    ..Default::default()
                },
                vec![115, 119],
            ),
            (
                "hourly 2",
                &six_hourly,
                RetentionPolicy {
                    hourly: 2,
                    ..Default::default()
                },
                vec![118, 119],
            ),
            (
                "last 1 + daily 2 overlap",
                &six_hourly,
                RetentionPolicy {
                    last: 1,
                    daily: 2,
                    ..Default::default()
                },
                vec![115, 119],
            ),
            (
                "last 2 + daily 2",
                &six_hourly,
                RetentionPolicy {
                    last: 2,
                    daily: 2,
                    ..Default::default()
                },
                vec![115, 118, 119],
            ),
            // within 1d of the newest (idx 119 at day 30 18:30): 18:30 the day before and later
            (
                "within 1d",
                &six_hourly,
                RetentionPolicy {
                    within: Some("1d".parse().unwrap()),
                    ..Default::default()
                },
                vec![115, 116, 117, 118, 119],
            ),
            // 2026-01-01 is a Thursday; daily snapshots from 2025-01-01 (Wed) to 2026-02-04 (idx 399)
            (
                "monthly 3",
                &daily,
                RetentionPolicy {
                    monthly: 3,
                    ..Default::default()
                },
                vec![364, 395, 399],
            ),
            (
                "yearly 5",
                &daily,
                RetentionPolicy {
                    yearly: 5,
                    ..Default::default()
                },
                vec![364, 399],
            ),
            (
                "weekly 2",
                &daily,
                RetentionPolicy {
                    weekly: 2,
                    ..Default::default()
                },
                vec![396, 399],
            ),
            (
                "daily 3 + weekly 1 + monthly 1",
                &daily,
                RetentionPolicy {
                    daily: 3,
                    weekly: 1,
                    monthly: 1,
                    ..Default::default()
                },
                vec![397, 398, 399],
            ),
            (
                "within 1mo",
                &daily,
                RetentionPolicy {
                    within: Some("1mo".parse().unwrap()),
                    ..Default::default()
                },
                (368..400).collect(),
            ),
        ];
        for (name, list, policy, expect) in cases {
            assert_eq!(kept(list, &policy), expect, "case {name}");
        }
    }

    #[test]
    fn tags_keep_and_reasons_are_given() {
        let mut list = timeline((2026, 3, 1, 0), 24, 5);
        list[1].1.tags = vec!["release".into()];
        let refs: Vec<(Id, &Snapshot)> = list.iter().map(|(i, s)| (*i, s)).collect();
        let policy = RetentionPolicy {
            last: 1,
            tags: vec!["release".into()],
            ..Default::default()
        };
        let d = decide(&refs, &policy);
        assert_eq!(d.iter().filter(|d| d.keep).count(), 2);
        assert_eq!(d[0].reasons, vec!["last snapshot #1"]);
        let tagged = d.iter().find(|x| x.id == list[1].0).unwrap();
        assert_eq!(tagged.reasons, vec!["has tag release"]);
        assert!(d.iter().filter(|x| !x.keep).all(|x| x.reasons.is_empty()));
    }

    #[test]
    fn groups_and_empty_policy() {
        let mut list = timeline((2026, 3, 1, 0), 24, 4);
        list[0].1.hostname = "other".into();
        let groups = plan(
            &list,
            &RetentionPolicy {
                last: 1,
                ..Default::default()
            },
            GroupBy::default(),
        )
        .unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(
            groups
                .iter()
                .map(|g| g.decisions.iter().filter(|d| d.keep).count())
                .sum::<usize>(),
            2
        );
        let one = plan(
            &list,
            &RetentionPolicy {
                last: 1,
                ..Default::default()
            },
            "paths".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert!(plan(&list, &RetentionPolicy::default(), GroupBy::default()).is_err());
        assert!("hosts".parse::<GroupBy>().is_err());
    }

    #[test]
    fn durations() {
        let d: CalendarDuration = "1y2mo3d4h".parse().unwrap();
        assert_eq!(
            d,
            CalendarDuration {
                years: 1,
                months: 2,
                days: 3,
                hours: 4
            }
        );
        assert_eq!("2w".parse::<CalendarDuration>().unwrap().days, 14);
        for bad in ["", "5", "3x", "d", "1.5d", "1y2m3d4h", "6m", "90min"] {
            assert!(bad.parse::<CalendarDuration>().is_err(), "{bad:?}");
        }
        let e = "6m".parse::<CalendarDuration>().unwrap_err().to_string();
        assert!(e.contains("\"mo\" for months"), "{e}");
    }

    #[test]
    fn a_duration_longer_than_time_keeps_everything() {
        let list = timeline((2026, 3, 1, 0), 24, 5);
        for within in ["4000000000y", "4294967295mo", "4294967295d", "4294967295h"] {
            let policy = RetentionPolicy {
                within: Some(within.parse().unwrap()),
                ..Default::default()
            };
            assert_eq!(kept(&list, &policy).len(), list.len(), "{within}");
        }
    }

    #[test]
    fn forget_removes_what_the_plan_does_not_keep() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::Repository::init(
            crate::backend::open(&dir.path().display().to_string()).unwrap(),
            b"pw",
            crate::repository::KdfCost {
                memory_kib: 1024,
                iterations: 1,
            },
        )
        .unwrap();
        for (_, s) in timeline((2026, 3, 1, 0), 24, 4) {
            repo.save_json(crate::backend::FileKind::Snapshot, &s)
                .unwrap();
        }
        let policy = RetentionPolicy {
            last: 1,
            ..Default::default()
        };
        let all = repo.snapshots().unwrap();
        let dry = forget(&repo, &all, &policy, GroupBy::default(), true).unwrap();
        assert_eq!(dry.removed, 3);
        assert_eq!(repo.snapshots().unwrap().len(), 4);
        let done = forget(&repo, &all, &policy, GroupBy::default(), false).unwrap();
        assert_eq!(done.removed, 3);
        let left = repo.snapshots().unwrap();
        assert_eq!(left.len(), 1);
        let kept: Vec<Id> = done.groups[0]
            .decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id)
            .collect();
        assert_eq!(kept, [left[0].0]);
        // Already gone (a concurrent forget): counted, not an error.
        let again = forget(&repo, &all, &policy, GroupBy::default(), false).unwrap();
        assert_eq!(again.removed, 3);
    }
}
