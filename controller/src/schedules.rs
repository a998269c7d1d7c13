//! The `BackupSchedule` reconciler: creates a `Backup` when a run is due,
//! keeps history within its limits, and reports the last successful backup of
//! each PVC and the next run in status.
//!
//! Runs are named after their scheduled time, so a run is created once no
//! matter how often the schedule is reconciled or the controller restarts. A
//! run missed by more than the starting deadline is skipped (with an Event);
//! several missed runs collapse into the latest. A run is skipped while the
//! previous one is still going (like a CronJob with `concurrencyPolicy: Forbid`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_crds::{
    Backup, BackupSchedule, BackupScheduleStatus, BackupSpec, Phase, PvcBackupStatus,
    EXCLUDE_ANNOTATION,
};
use chrono::{DateTime, TimeZone, Utc};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use crate::context::{repository, Context, Error};
use crate::cron::{jitter_seconds, parse_jitter, Schedule};
use crate::events::{publish, warn_once};
use crate::metrics::Metrics;
use crate::status::{apply_status, ready};

/// Label on `Backup`s created by a schedule.
pub const SCHEDULE_LABEL: &str = "cairn.dev/schedule";
const DEFAULT_STARTING_DEADLINE: i64 = 3600;
const DEFAULT_HISTORY: i32 = 3;

fn to_chrono(t: &Time) -> DateTime<Utc> {
    Utc.timestamp_opt(t.0.as_second(), 0)
        .single()
        .unwrap_or_default()
}

fn to_time(t: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A label selector as the API's query string (`a=b,c in (d,e),!f`).
pub fn selector_string(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// Name of the `Backup` for the run scheduled at `t`.
pub fn run_name(schedule: &str, t: DateTime<Utc>) -> String {
    crate::jobs::bounded_name(&format!("{schedule}-{}", t.format("%Y%m%d-%H%M")))
}

/// PVCs of one `Backup` (the CRD's `maxItems` for `spec.pvcs`).
pub const MAX_PVCS_PER_BACKUP: usize = 256;

/// Name of part `i` of the run at `t`: the run's name, then `-2`, `-3`, ...
pub fn run_part_name(schedule: &str, t: DateTime<Utc>, i: usize) -> String {
    if i == 0 {
        return run_name(schedule, t);
    }
    crate::jobs::bounded_name(&format!("{schedule}-{}-{}", t.format("%Y%m%d-%H%M"), i + 1))
}

/// Reconcile one `BackupSchedule` at the current time.
///
/// # Errors
/// API failures.
pub async fn reconcile(s: Arc<BackupSchedule>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_at(s, ctx, Utc::now()).await
}

/// Reconcile as if it were `now` (tests drive the clock).
///
/// # Errors
/// API failures.
pub async fn reconcile_at(
    s: Arc<BackupSchedule>,
    ctx: Arc<Context>,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    let ns = s
        .namespace()
        .ok_or_else(|| Error::Invalid("BackupSchedule without namespace".into()))?;
    let name = s.name_any();
    let generation = s.meta().generation;
    let schedules: Api<BackupSchedule> = Api::namespaced(ctx.client.clone(), &ns);
    let old = s.status.clone().unwrap_or_default();
    let mut status = BackupScheduleStatus {
        observed_generation: generation,
        ..old.clone()
    };

    // 1. The spec.
    let (schedule, jitter_max) = match parse_spec(&s) {
        Ok(p) => p,
        Err(msg) => {
            status.conditions = vec![ready(false, "InvalidSpec", &msg, generation)];
            status.next_schedule_time = None;
            warn_once(&ctx, s.as_ref(), &old.conditions, "InvalidSpec", msg).await;
            apply_status(&ctx, &schedules, s.as_ref(), &old, &status).await?;
            return Ok(Action::await_change());
        }
    };
    if let Err(why) = repository(&ctx, &ns, &s.spec.repository.name).await? {
        status.conditions = vec![ready(false, why.reason, &why.message, generation)];
        warn_once(&ctx, s.as_ref(), &old.conditions, why.reason, why.message).await;
        apply_status(&ctx, &schedules, s.as_ref(), &old, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }

    // 2. History: this schedule's Backups.
    let backups: Api<Backup> = Api::namespaced(ctx.client.clone(), &ns);
    let mut history: Vec<Backup> = backups
        .list(&ListParams::default().labels(&format!(
            "{SCHEDULE_LABEL}={}",
            crate::jobs::label_value(&name)
        )))
        .await?
        .items;
    history.sort_by_key(|b| b.metadata.creation_timestamp.as_ref().map(|t| t.0));
    status.last_successful = last_successful(&history);
    let tracked: &[PvcBackupStatus] = if s.spec.suspend {
        &[]
    } else {
        &status.last_successful
    };
    track(&ctx.metrics, &ns, &name, tracked);
    prune_history(&backups, &history, &s).await?;

    // 3. Is a run due?
    let uid = s.metadata.uid.clone().unwrap_or_default();
    let since = old
        .last_schedule_time
        .as_ref()
        .map(to_chrono)
        .or_else(|| s.metadata.creation_timestamp.as_ref().map(to_chrono))
        .unwrap_or(now);
    let mut requeue_at = None;
    let mut ready_now = ready(true, "Scheduled", "the schedule is active", generation);
    if s.spec.suspend {
        status.conditions = vec![ready(
            true,
            "Suspended",
            "the schedule is suspended",
            generation,
        )];
        status.next_schedule_time = None;
        apply_status(&ctx, &schedules, s.as_ref(), &old, &status).await?;
        return Ok(Action::await_change());
    }
    if let Some(due) = schedule.due(since, now) {
        let deadline = s
            .spec
            .starting_deadline_seconds
            .unwrap_or(DEFAULT_STARTING_DEADLINE);
        let start_at =
            due + chrono::Duration::seconds(jitter_seconds(&uid, due, jitter_max) as i64);
        if (now - due).num_seconds() > deadline + jitter_max as i64 {
            status.last_schedule_time = Some(to_time(due));
            publish(
                &ctx,
                s.as_ref(),
                EventType::Warning,
                "MissedRun",
                format!("the run due at {due} was missed by more than {deadline} s and is skipped"),
            )
            .await;
        } else if now < start_at {
            requeue_at = Some(start_at);
        } else if let Some(active) = history
            .iter()
            .find(|b| !b.status.as_ref().is_some_and(|st| st.phase.is_finished()))
        {
            status.last_schedule_time = Some(to_time(due));
            publish(
                &ctx,
                s.as_ref(),
                EventType::Warning,
                "Skipped",
                format!(
                    "the run due at {due} is skipped: {} is still running",
                    active.name_any()
                ),
            )
            .await;
        } else {
            let pvcs = target_pvcs(&ctx, &ns, &s).await?;
            if pvcs.is_empty() {
                let msg = "no PVC matches pvcs/selector (or all are excluded)".to_string();
                ready_now = ready(false, "NoVolumes", &msg, generation);
                status.last_schedule_time = Some(to_time(due));
                publish(&ctx, s.as_ref(), EventType::Warning, "NoVolumes", msg).await;
            } else {
                create_run(&ctx, &s, &backups, due, &pvcs).await?;
                status.last_schedule_time = Some(to_time(due));
            }
        }
    }
    status.conditions = vec![ready_now];

    // 4. The next run.
    let next = schedule
        .next_after(now)
        .map(|n| n + chrono::Duration::seconds(jitter_seconds(&uid, n, jitter_max) as i64));
    status.next_schedule_time = next.map(to_time);
    apply_status(&ctx, &schedules, s.as_ref(), &old, &status).await?;
    let wake = requeue_at
        .or(next)
        .unwrap_or(now + chrono::Duration::hours(1));
    let secs = (wake - now).num_seconds().clamp(1, 24 * 3600) as u64;
    Ok(Action::requeue(Duration::from_secs(secs)))
}

/// The spec's problems the schema cannot catch, as the message of an
/// `InvalidSpec` condition: the cron expression, time zone and jitter, and a
/// `keepWithin` stored before the grammar refused a bare `m` (each Backup's
/// agent would refuse it). Else the schedule and its largest jitter.
fn parse_spec(s: &BackupSchedule) -> Result<(Schedule, u64), String> {
    let schedule = Schedule::parse(&s.spec.schedule, s.spec.time_zone.as_deref())
        .map_err(|e| e.to_string())?;
    let jitter = s
        .spec
        .jitter
        .as_deref()
        .map(parse_jitter)
        .transpose()
        .map_err(|e| e.to_string())?;
    let within = s
        .spec
        .retention
        .as_ref()
        .and_then(|r| r.keep_within.as_deref());
    if let Some(Err(e)) = within.map(cairn_protocol::duration::parse_calendar) {
        return Err(format!("invalid retention.keepWithin: {e}"));
    }
    Ok((schedule, jitter.unwrap_or(0)))
}

/// The per-PVC gauges of schedule `name`: the last successful backup of each
/// PVC in `tracked`, and no series for any other PVC.
fn track(metrics: &Metrics, ns: &str, name: &str, tracked: &[PvcBackupStatus]) {
    let pvcs: Vec<&str> = tracked.iter().map(|p| p.pvc.as_str()).collect();
    metrics.retain_schedule(ns, name, &pvcs);
    for p in tracked {
        let labels = [
            ("namespace", ns),
            ("schedule", name),
            ("pvc", p.pvc.as_str()),
        ];
        if let Some(t) = &p.time {
            metrics.last_success.set(&labels, t.0.as_second() as f64);
        }
        metrics.last_bytes_added.set(&labels, p.bytes_added as f64);
        metrics.last_duration.set(&labels, p.duration_seconds);
    }
}

/// Create the `Backup`s of the run due at `due` over `pvcs` (one per
/// [`MAX_PVCS_PER_BACKUP`]: a Backup's CRD allows no more), each once; an
/// Event names those created now.
async fn create_run(
    ctx: &Context,
    s: &BackupSchedule,
    backups: &Api<Backup>,
    due: DateTime<Utc>,
    pvcs: &[String],
) -> Result<(), Error> {
    let name = s.name_any();
    let parts: Vec<&[String]> = pvcs.chunks(MAX_PVCS_PER_BACKUP).collect();
    let mut created = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let run = run_part_name(&name, due, i);
        match backups
            .create(&PostParams::default(), &run_backup(s, &run, part))
            .await
        {
            Ok(_) => created.push(run),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if created.is_empty() {
        return Ok(());
    }
    let msg = if parts.len() == 1 {
        format!("created Backup {}", created.join(", "))
    } else {
        format!(
            "{} PVCs, more than {MAX_PVCS_PER_BACKUP} per Backup: created Backups {}",
            pvcs.len(),
            created.join(", ")
        )
    };
    publish(ctx, s, EventType::Normal, "Scheduled", msg).await;
    Ok(())
}

/// The `Backup` named `run` of schedule `s` over `pvcs`: labelled with and
/// owned by the schedule, its spec the schedule's.
fn run_backup(s: &BackupSchedule, run: &str, pvcs: &[String]) -> Backup {
    Backup {
        metadata: ObjectMeta {
            name: Some(run.to_string()),
            namespace: s.namespace(),
            labels: Some(BTreeMap::from([(
                SCHEDULE_LABEL.to_string(),
                crate::jobs::label_value(&s.name_any()),
            )])),
            owner_references: s.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: BackupSpec {
            repository: s.spec.repository.clone(),
            pvcs: pvcs.to_vec(),
            tags: s.spec.tags.clone(),
            retention: s.spec.retention.clone(),
            job: s.spec.job.clone(),
        },
        status: None,
    }
}

/// The PVCs a run covers: named ones plus selected ones, minus those
/// annotated `cairn.dev/exclude: "true"`.
async fn target_pvcs(ctx: &Context, ns: &str, s: &BackupSchedule) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = s.spec.pvcs.clone();
    if let Some(sel) = &s.spec.selector {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
        let lp = ListParams::default().labels(&selector_string(sel));
        for c in claims.list(&lp).await? {
            let excluded = c
                .annotations()
                .get(EXCLUDE_ANNOTATION)
                .is_some_and(|v| v == "true");
            if !excluded && !out.contains(&c.name_any()) {
                out.push(c.name_any());
            }
        }
    }
    Ok(out)
}

fn last_successful(history: &[Backup]) -> Vec<PvcBackupStatus> {
    let mut by_pvc: BTreeMap<String, PvcBackupStatus> = BTreeMap::new();
    for b in history {
        let Some(st) = &b.status else { continue };
        if st.phase != Phase::Succeeded {
            continue;
        }
        for snap in &st.snapshots {
            by_pvc.insert(
                snap.pvc.clone(),
                PvcBackupStatus {
                    pvc: snap.pvc.clone(),
                    time: st.completion_time.clone(),
                    snapshot_id: snap.snapshot_id.clone(),
                    bytes_added: snap.bytes_added,
                    duration_seconds: snap.duration_seconds,
                },
            );
        }
    }
    by_pvc.into_values().collect()
}

async fn prune_history(
    api: &Api<Backup>,
    history: &[Backup],
    s: &BackupSchedule,
) -> Result<(), Error> {
    // PartiallyFailed runs count as failed ones: they are kept as long.
    for (phases, limit) in [
        (
            &[Phase::Succeeded][..],
            s.spec.successful_history_limit.unwrap_or(DEFAULT_HISTORY),
        ),
        (
            &[Phase::Failed, Phase::PartiallyFailed][..],
            s.spec.failed_history_limit.unwrap_or(DEFAULT_HISTORY),
        ),
    ] {
        let done: Vec<&Backup> = history
            .iter()
            .filter(|b| {
                b.status
                    .as_ref()
                    .is_some_and(|st| phases.contains(&st.phase))
            })
            .collect();
        let excess = done
            .len()
            .saturating_sub(usize::try_from(limit.max(0)).unwrap_or(0));
        for b in done.into_iter().take(excess) {
            match api.delete(&b.name_any(), &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}
