//! The `BackupRepository` reconciler: for each generation of the spec, one
//! agent Job (`cairn agent init`) creates the repository unless it exists and
//! reports what it holds; its result becomes the `Ready` condition (reachable
//! and initialised, or the agent's error: wrong password, missing bucket,
//! access denied, ...) with the snapshot count and stored size.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use std::time::Duration;

use cairn_crds::{BackupRepository, BackupRepositoryStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use crate::context::{Context, Error};
use crate::cron::Schedule;
use crate::events::{publish, warn_once};
use crate::job_state::{job_finished, job_result, job_stuck};
use crate::jobs;
use crate::status::{apply_status, ready};

/// How often an unreachable repository is checked again.
pub const RETRY: Duration = Duration::from_secs(600);
/// How often a ready repository is checked again (a bucket deleted, a key
/// or credential revoked, a volume lost shows as `Ready=False` within this).
pub const RECHECK: Duration = Duration::from_secs(3600);

/// Reconcile one `BackupRepository`.
///
/// # Errors
/// API failures.
pub async fn reconcile(r: Arc<BackupRepository>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = r
        .namespace()
        .ok_or_else(|| Error::Invalid("BackupRepository without namespace".into()))?;
    let name = r.name_any();
    let generation = r.meta().generation;
    let old = r.status.clone().unwrap_or_default();
    let api: Api<BackupRepository> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(msg) = jobs::privileged_mover_refused(r.spec.job.as_ref(), &ns, &ctx.jobs) {
        // The repository's own Jobs get no more than Backups and Restores.
        let status = BackupRepositoryStatus {
            observed_generation: generation,
            conditions: vec![ready(false, "PrivilegedMoverNotAllowed", &msg, generation)],
            ..old.clone()
        };
        warn_once(
            ctx.as_ref(),
            r.as_ref(),
            &old.conditions,
            "PrivilegedMoverNotAllowed",
            msg,
        )
        .await;
        apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
        return Ok(Action::await_change());
    }
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let job_name = jobs::repository_job_name(&name, generation.unwrap_or(0));
    let reason = old.conditions.first().map(|c| c.reason.as_str());
    let ready_now = matches!(reason, Some("Initialized" | "Reachable"));
    ctx.metrics.repository_ready.set(
        &[("namespace", ns.as_str()), ("repository", name.as_str())],
        if ready_now { 1.0 } else { 0.0 },
    );
    if let Some(why) = crate::context::spec_problem(&r) {
        // Stored before the API server checked the rule: no Job is built
        // from it, and nothing changes until the spec does.
        let msg = format!("the spec is invalid: {why}");
        let status = BackupRepositoryStatus {
            observed_generation: generation,
            conditions: vec![ready(false, "InvalidSpec", &msg, generation)],
            ..old.clone()
        };
        warn_once(
            ctx.as_ref(),
            r.as_ref(),
            &old.conditions,
            "InvalidSpec",
            msg,
        )
        .await;
        apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
        return Ok(Action::await_change());
    }
    if old.observed_generation == generation {
        let since = old
            .last_check_time
            .as_ref()
            .map_or(i64::MAX, |t| Timestamp::now().as_second() - t.0.as_second());
        let due_in = |every: Duration| every.as_secs().saturating_sub(since.max(0) as u64);
        match reason {
            Some("Initialized" | "Reachable") if due_in(RECHECK) > 0 => {
                let recheck = Duration::from_secs(due_in(RECHECK));
                let wait = maintain_wait(&r, &ctx, Utc::now()).await?;
                return Ok(Action::requeue(wait.map_or(recheck, |w| w.min(recheck))));
            }
            // Checked again every RECHECK when ready, every RETRY when not (a
            // Secret or bucket may have been fixed without the spec changing).
            Some("Initialized" | "Reachable" | "Unreachable") => {
                if due_in(RETRY) > 0 {
                    return Ok(Action::requeue(Duration::from_secs(due_in(RETRY))));
                }
                // Due: the last check's Job is removed and a new one made. A
                // Job still running is that new check (left alone until its
                // result lands, which moves lastCheckTime); a Job being
                // deleted is waited for.
                match jobs_api.get_opt(&job_name).await? {
                    Some(j) if j.metadata.deletion_timestamp.is_some() => {
                        return Ok(Action::requeue(Duration::from_secs(2)));
                    }
                    // The last check's Job (made before its result was
                    // recorded); a finished Job made since is the new check.
                    Some(j)
                        if job_finished(&j)
                            && j.metadata.creation_timestamp.as_ref().is_none_or(|c| {
                                old.last_check_time
                                    .as_ref()
                                    .is_some_and(|l| c.0.as_second() <= l.0.as_second())
                            }) =>
                    {
                        match jobs_api
                            .delete(&job_name, &DeleteParams::background())
                            .await
                        {
                            Ok(_) => {}
                            Err(kube::Error::Api(e)) if e.code == 404 => {}
                            Err(e) => return Err(e.into()),
                        }
                        return Ok(Action::requeue(Duration::from_secs(2)));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    let mut status = BackupRepositoryStatus {
        observed_generation: generation,
        ..old.clone()
    };
    let job = match jobs_api.get_opt(&job_name).await? {
        Some(j) if !jobs::owned_by(&j, r.as_ref()) => {
            // Left by an earlier BackupRepository of the same name.
            jobs::delete_stale(&jobs_api, &j).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        Some(j) => j,
        None => {
            let job = jobs::repository_job(&r, &ctx.jobs);
            match jobs_api.create(&PostParams::default(), &job).await {
                Ok(j) => j,
                // Made meanwhile: the next reconcile checks whose it is.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Ok(Action::requeue(Duration::from_secs(1)))
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let Some(result) = job_result(&ctx.client, &ns, &job).await? else {
        status.conditions = match job_stuck(&ctx.client, &ns, &job).await? {
            Some(why) => {
                warn_once(&ctx, r.as_ref(), &old.conditions, "JobStuck", why.clone()).await;
                vec![ready(false, "JobStuck", &why, generation)]
            }
            // A periodic recheck keeps the last verdict (Ready, or
            // Unreachable with its one Warning) until the check gives one.
            None if old.conditions.first().is_some_and(|c| {
                c.observed_generation == generation
                    && (c.status == "True" || c.reason == "Unreachable")
            }) =>
            {
                old.conditions.clone()
            }
            None => vec![ready(
                false,
                "Checking",
                &format!("Job {job_name} is checking the repository"),
                generation,
            )],
        };
        apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
        // A stuck Job (missing Secret, image, volume) waits for a person: its
        // Job's changes wake this anyway, so look again only now and then.
        let stuck = status
            .conditions
            .first()
            .is_some_and(|c| c.reason == "JobStuck");
        return Ok(Action::requeue(Duration::from_secs(if stuck {
            300
        } else {
            30
        })));
    };
    status.last_check_time = Some(Time(Timestamp::now()));
    if result.ok {
        status.snapshot_count = result.snapshots;
        status.stored_bytes = result.stored_bytes;
        let (reason, msg) = if result.initialized == Some(true) {
            (
                "Initialized",
                "the repository was created and is reachable".to_string(),
            )
        } else {
            (
                "Reachable",
                format!("reachable; {} snapshots", result.snapshots.unwrap_or(0)),
            )
        };
        let was_ready = old
            .conditions
            .first()
            .is_some_and(|c| c.status == "True" && c.observed_generation == generation);
        status.conditions = vec![ready(true, reason, &msg, generation)];
        // A periodic recheck that finds nothing new is not news.
        if !was_ready {
            publish(&ctx, r.as_ref(), EventType::Normal, reason, msg).await;
        }
    } else {
        let msg = result
            .error
            .unwrap_or_else(|| "the repository check failed".into());
        status.conditions = vec![ready(false, "Unreachable", &msg, generation)];
        warn_once(&ctx, r.as_ref(), &old.conditions, "Unreachable", msg).await;
    }
    let written = apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
    if result.ok {
        let mut r = (*r).clone();
        r.status = Some(status);
        if written.is_some() {
            // maintain() may write again: from the version just stored.
            r.metadata.resource_version = written;
        }
        let wait = maintain_wait(&r, &ctx, Utc::now()).await?;
        return Ok(Action::requeue(wait.map_or(RECHECK, |w| w.min(RECHECK))));
    }
    Ok(Action::requeue(RETRY))
}

/// Scheduled prune: at most one prune Job per repository at a time, one per
/// scheduled run (deterministic names), its outcome in status and an Event.
///
/// # Errors
/// API failures.
pub async fn maintain(
    r: &BackupRepository,
    ctx: &Context,
    now: DateTime<Utc>,
) -> Result<Action, Error> {
    Ok(match maintain_wait(r, ctx, now).await? {
        Some(wait) => Action::requeue(wait),
        None => Action::await_change(),
    })
}

/// [`maintain`], returning when to come back (`None`: nothing scheduled).
async fn maintain_wait(
    r: &BackupRepository,
    ctx: &Context,
    now: DateTime<Utc>,
) -> Result<Option<Duration>, Error> {
    let Some(m) = &r.spec.maintenance else {
        return Ok(None);
    };
    let ns = r.namespace().unwrap_or_default();
    let name = r.name_any();
    let schedule = match Schedule::parse(&m.prune_schedule, None) {
        Ok(s) => s,
        Err(e) => {
            publish(
                ctx,
                r,
                EventType::Warning,
                "InvalidMaintenance",
                e.to_string(),
            )
            .await;
            return Ok(None);
        }
    };
    let api: Api<BackupRepository> = Api::namespaced(ctx.client.clone(), &ns);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let mut old = r.status.clone().unwrap_or_default();
    let mut status = old.clone();
    // What the last status write left: a second write starts from it.
    let mut current = r.clone();

    // The outcome of the last run, once.
    if let (Some(job_name), None) = (&status.last_prune_job, &status.last_prune_result) {
        if let Some(job) = jobs_api.get_opt(job_name).await? {
            let Some(result) = job_result(&ctx.client, &ns, &job).await? else {
                return Ok(Some(Duration::from_secs(60)));
            };
            let (kind, reason, msg) = if result.ok {
                (
                    EventType::Normal,
                    "Pruned",
                    format!(
                        "prune deleted {} packs ({} bytes), marked {}",
                        result.packs_deleted.unwrap_or(0),
                        result.bytes_deleted.unwrap_or(0),
                        result.packs_marked.unwrap_or(0)
                    ),
                )
            } else {
                (
                    EventType::Warning,
                    "PruneFailed",
                    format!("prune failed: {}", result.error.unwrap_or_default()),
                )
            };
            status.last_prune_result = Some(msg.clone());
            if result.ok {
                status.stored_bytes = result.stored_bytes.or(status.stored_bytes);
                status.snapshot_count = result.snapshots.or(status.snapshot_count);
            }
            publish(ctx, r, kind, reason, msg).await;
            if let Some(rv) = apply_status(ctx, &api, &current, &old, &status).await? {
                current.metadata.resource_version = Some(rv);
                old = status.clone();
            }
        }
    }

    // At most one maintenance Job per repository, whatever the status says.
    let lp = ListParams::default().labels(&format!(
        "{}=prune,{}={}",
        jobs::labels::COMPONENT,
        jobs::labels::REPOSITORY,
        jobs::label_value(&name)
    ));
    let active = jobs_api
        .list(&lp)
        .await?
        .items
        .iter()
        .any(|j| !job_finished(j));
    if active {
        return Ok(Some(Duration::from_secs(60)));
    }

    let since = status
        .last_prune_time
        .as_ref()
        .or(r.metadata.creation_timestamp.as_ref())
        .map_or(now, |t| {
            Utc.timestamp_opt(t.0.as_second(), 0)
                .single()
                .unwrap_or(now)
        });
    if let Some(due) = schedule.due(since, now) {
        // A run missed by more than a day is skipped; the next one comes.
        if (now - due).num_hours() < 24 {
            let job_name = jobs::prune_job_name(&name, &due.format("%Y%m%d-%H%M").to_string());
            match jobs_api
                .create(
                    &PostParams::default(),
                    &jobs::prune_job(r, &job_name, &ctx.jobs),
                )
                .await
            {
                Ok(_) => {
                    publish(
                        ctx,
                        r,
                        EventType::Normal,
                        "PruneStarted",
                        format!("Job {job_name}"),
                    )
                    .await;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            status.last_prune_job = Some(job_name);
            status.last_prune_result = None;
        }
        status.last_prune_time = Some(Time(
            Timestamp::from_second(due.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH),
        ));
        apply_status(ctx, &api, &current, &old, &status).await?;
        return Ok(Some(Duration::from_secs(60)));
    }
    let wait = schedule
        .next_after(now)
        .map_or(3600, |n| (n - now).num_seconds().clamp(1, 24 * 3600) as u64);
    Ok(Some(Duration::from_secs(wait)))
}
