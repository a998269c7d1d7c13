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

use crate::backup::{Context, Error};
use crate::jobs;
use crate::status::{job_result, job_stuck, patch_status, publish, ready, repository, warn_once};

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
    if matches!(old.phase, Phase::Succeeded | Phase::Failed) {
        return Ok(Action::await_change());
    }
    let api: Api<Restore> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = RestoreStatus {
        observed_generation: generation,
        ..old.clone()
    };
    let repo = match repository(&ctx, &ns, &r.spec.repository.name).await? {
        Ok(r) => r,
        Err(msg) => {
            status.conditions = vec![ready(false, "RepositoryNotFound", &msg, generation)];
            warn_once(&ctx, r.as_ref(), &old.conditions, "RepositoryNotFound", msg).await;
            patch_status(&api, &name, &old, &status).await?;
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
                patch_status(&api, &name, &old, &status).await?;
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
                        labels: Some([(jobs::labels::RESTORE.to_string(), name.clone())].into()),
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
            patch_status(&api, &name, &old, &status).await?;
            return Ok(Action::await_change());
        }
    };
    status.target_pvc = Some(target.clone());

    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let job_name = jobs::restore_job_name(&name);
    let job = match jobs_api.get_opt(&job_name).await? {
        Some(j) => j,
        None => {
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
                Err(kube::Error::Api(e)) if e.code == 409 => jobs_api.get(&job_name).await?,
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
                true,
                "Running",
                "the restore Job is running",
                generation,
            )],
        };
        patch_status(&api, &name, &old, &status).await?;
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
        status.phase = Phase::Failed;
        let msg = result.error.unwrap_or_else(|| "the restore failed".into());
        status.message = Some(msg.clone());
        status.conditions = vec![ready(false, "Failed", &msg, generation)];
        publish(&ctx, r.as_ref(), EventType::Warning, "Failed", msg).await;
    }
    patch_status(&api, &name, &old, &status).await?;
    Ok(Action::await_change())
}
