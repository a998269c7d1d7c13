//! The `Restore` reconciler: creates the target PVC when asked to, runs one
//! agent Job that restores into it, and records the result in status.

use std::sync::Arc;
use std::time::Duration;

use cairn_crds::{Phase, Restore, RestoreStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use crate::context::{repository, Context, Error};
use crate::events::{publish, warn_once};
use crate::job_state::{job_result, job_stuck};
use crate::jobs;
use crate::status::{apply_status, ready};
use crate::volumes::{mover_running, pod_using, Mover};

/// Reconcile one `Restore`.
///
/// # Errors
/// API failures.
pub async fn reconcile(r: Arc<Restore>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = r
        .namespace()
        .ok_or_else(|| Error::Invalid("Restore without namespace".into()))?;
    let name = r.name_any();
    let generation = r.meta().generation;
    let old = r.status.clone().unwrap_or_default();
    if old.phase.is_finished() {
        return Ok(Action::await_change());
    }
    let api: Api<Restore> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = RestoreStatus {
        observed_generation: generation,
        ..old.clone()
    };
    let fail = |status: &mut RestoreStatus, reason: &str, msg: String| {
        status.phase = Phase::Failed;
        status.message = Some(msg.clone());
        status.completion_time = Some(Time(Timestamp::now()));
        status.conditions = vec![ready(false, reason, &msg, generation)];
        msg
    };
    if let Some(msg) = jobs::privileged_mover_refused(r.spec.job.as_ref(), &ns, &ctx.jobs) {
        let msg = fail(&mut status, "PrivilegedMoverNotAllowed", msg);
        publish(
            &ctx,
            r.as_ref(),
            EventType::Warning,
            "PrivilegedMoverNotAllowed",
            msg,
        )
        .await;
        apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
        return Ok(Action::await_change());
    }
    let repo = match repository(&ctx, &ns, &r.spec.repository.name).await? {
        Ok(r) => r,
        Err(why) => {
            status.conditions = vec![ready(false, why.reason, &why.message, generation)];
            warn_once(&ctx, r.as_ref(), &old.conditions, why.reason, why.message).await;
            apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };

    // The target volume: an existing claim, or one we create (owned by the
    // Restore? no: a restored volume outlives its Restore, so no owner).
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let target = match (&r.spec.target.pvc, &r.spec.target.new_pvc) {
        (Some(existing), _) => {
            if claims.get_opt(existing).await?.is_none() {
                let msg = format!("target PVC {existing:?} not found");
                status.conditions = vec![ready(false, "TargetNotFound", &msg, generation)];
                warn_once(&ctx, r.as_ref(), &old.conditions, "TargetNotFound", msg).await;
                apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
                return Ok(Action::requeue(Duration::from_secs(60)));
            }
            existing.clone()
        }
        (None, Some(new)) => {
            if claims.get_opt(&new.name).await?.is_none() {
                let pvc = PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some(new.name.clone()),
                        namespace: Some(ns.clone()),
                        labels: Some(
                            [(jobs::labels::RESTORE.to_string(), jobs::label_value(&name))].into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    spec: Some(new.spec.clone()),
                    status: None,
                };
                match claims.create(&PostParams::default(), &pvc).await {
                    Ok(_) => {
                        publish(
                            &ctx,
                            r.as_ref(),
                            EventType::Normal,
                            "VolumeCreated",
                            format!("created PVC {}", new.name),
                        )
                        .await;
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            new.name.clone()
        }
        (None, None) => {
            let msg = "spec.target names no PVC".to_string();
            status.conditions = vec![ready(false, "InvalidSpec", &msg, generation)];
            apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
            return Ok(Action::await_change());
        }
    };
    status.target_pvc = Some(target.clone());

    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let job_name = jobs::restore_job_name(&name);
    let job = match jobs_api.get_opt(&job_name).await? {
        Some(j) if !jobs::owned_by(&j, r.as_ref()) => {
            // Left by an earlier Restore of the same name: not ours to report.
            jobs::delete_stale(&jobs_api, &j).await?;
            let msg = format!("Job {job_name} of an earlier Restore named {name} is being deleted");
            status.conditions = vec![ready(false, "Queued", &msg, generation)];
            apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
        Some(j) => j,
        None if old.job_name.is_some() => {
            // Our Job ran and is gone (deleted, or its TTL expired while the
            // controller was down) before its result was recorded: running
            // the restore again could overwrite what the application has
            // written since.
            let msg = fail(
                &mut status,
                "JobLost",
                format!(
                    "the restore Job {job_name} disappeared before its result was recorded; \
                     the target PVC {target} may be partly restored: check it, then create a \
                     new Restore to run again"
                ),
            );
            publish(&ctx, r.as_ref(), EventType::Warning, "JobLost", msg).await;
            apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
            return Ok(Action::await_change());
        }
        None => {
            // Restoring under a running application corrupts what it has
            // open, a backup taken meanwhile would store a half-restored
            // volume, and two restores into one volume would interleave
            // their writes: wait until no pod uses the target and no backup
            // or other restore (its Job, or a pod its deleted Job left
            // running) is at work on it.
            let holder = match pod_using(&ctx.client, &ns, &target).await? {
                Some(pod) => Some(format!(
                    "target PVC {target} is in use by pod {pod}: the restore waits until no pod \
                     mounts it (scale the application down)"
                )),
                None => match mover_running(&ctx.client, &ns, &target, Mover::Backup).await? {
                    Some(backup) => Some(format!(
                        "backup {backup} is reading target PVC {target}: the restore waits \
                         until it ends"
                    )),
                    None => mover_running(&ctx.client, &ns, &target, Mover::Restore)
                        .await?
                        .map(|other| {
                            format!(
                                "restore {other} is writing to target PVC {target}: this \
                                 restore waits until it ends"
                            )
                        }),
                },
            };
            if let Some(msg) = holder {
                warn_once(
                    &ctx,
                    r.as_ref(),
                    &old.conditions,
                    "TargetInUse",
                    msg.clone(),
                )
                .await;
                status.conditions = vec![ready(false, "TargetInUse", &msg, generation)];
                apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
                return Ok(Action::requeue(Duration::from_secs(30)));
            }
            let job = jobs::restore_job(&r, &repo, &target, None, &ctx.jobs);
            match jobs_api.create(&PostParams::default(), &job).await {
                Ok(j) => {
                    publish(
                        &ctx,
                        r.as_ref(),
                        EventType::Normal,
                        "Started",
                        format!("restoring into PVC {target} with Job {job_name}"),
                    )
                    .await;
                    j
                }
                // Made meanwhile: the next reconcile checks whose it is.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    return Ok(Action::requeue(Duration::from_secs(1)))
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    status.job_name = Some(job_name.clone());
    if status.start_time.is_none() {
        status.start_time = Some(Time(Timestamp::now()));
    }
    let Some(result) = job_result(&ctx.client, &ns, &job).await? else {
        status.phase = Phase::Running;
        status.conditions = match job_stuck(&ctx.client, &ns, &job).await? {
            Some(why) => {
                warn_once(&ctx, r.as_ref(), &old.conditions, "JobStuck", why.clone()).await;
                vec![ready(false, "JobStuck", &why, generation)]
            }
            None => vec![ready(
                false,
                "Running",
                "the restore Job is running",
                generation,
            )],
        };
        apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    };
    status.completion_time = Some(Time(Timestamp::now()));
    status.snapshot_id = result.snapshot_id.clone();
    status.files = result.files.unwrap_or(0);
    status.bytes = result.bytes_processed.unwrap_or(0);
    if result.ok {
        status.phase = Phase::Succeeded;
        let msg = format!("restored {} files into PVC {target}", status.files);
        status.conditions = vec![ready(true, "Succeeded", &msg, generation)];
        publish(&ctx, r.as_ref(), EventType::Normal, "Succeeded", msg).await;
    } else {
        let msg = result.error.unwrap_or_else(|| "the restore failed".into());
        let msg = fail(&mut status, "Failed", msg);
        publish(&ctx, r.as_ref(), EventType::Warning, "Failed", msg).await;
    }
    apply_status(&ctx, &api, r.as_ref(), &old, &status).await?;
    Ok(Action::await_change())
}
