//! The `BackupRepository` reconciler: for each generation of the spec, one
//! agent Job (`cairn agent init`) creates the repository unless it exists and
//! reports what it holds; its result becomes the `Ready` condition (reachable
//! and initialised, or the agent's error: wrong password, missing bucket,
//! access denied, ...) with the snapshot count and stored size.

use std::sync::Arc;
use std::time::Duration;

use cairn_crds::{BackupRepository, BackupRepositoryStatus};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use crate::backup::{Context, Error};
use crate::jobs;
use crate::result::AgentResult;
use crate::status::{patch_status, publish, ready, warn_once};

/// How often an unreachable repository is checked again.
pub const RETRY: Duration = Duration::from_secs(600);

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
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let job_name = jobs::repository_job_name(&name, generation.unwrap_or(0));
    let reason = old.conditions.first().map(|c| c.reason.as_str());
    if old.observed_generation == generation {
        match reason {
            Some("Initialized" | "Reachable") => return Ok(Action::await_change()),
            // Unreachable: check again every RETRY (a Secret or bucket may
            // have been fixed without the spec changing).
            Some("Unreachable") => {
                let since = old
                    .last_check_time
                    .as_ref()
                    .map_or(i64::MAX, |t| Timestamp::now().as_second() - t.0.as_second());
                if since < RETRY.as_secs() as i64 {
                    return Ok(Action::requeue(Duration::from_secs(
                        RETRY.as_secs() - since.max(0) as u64,
                    )));
                }
                match jobs_api
                    .delete(&job_name, &DeleteParams::background())
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            _ => {}
        }
    }
    let api: Api<BackupRepository> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = BackupRepositoryStatus {
        observed_generation: generation,
        ..old.clone()
    };
    let job = match jobs_api.get_opt(&job_name).await? {
        Some(j) => j,
        None => {
            let job = jobs::repository_job(&r, &ctx.jobs);
            match jobs_api.create(&PostParams::default(), &job).await {
                Ok(j) => j,
                Err(kube::Error::Api(e)) if e.code == 409 => jobs_api.get(&job_name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let st = job.status.clone().unwrap_or_default();
    let finished = st.succeeded.unwrap_or(0) > 0
        || st
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" && c.status == "True");
    if !finished {
        status.conditions = vec![ready(
            false,
            "Checking",
            &format!("Job {job_name} is checking the repository"),
            generation,
        )];
        patch_status(&api, &name, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let result = pods
        .list(&ListParams::default().labels(&format!("job-name={job_name}")))
        .await?
        .items
        .iter()
        .filter_map(AgentResult::from_pod)
        .max_by_key(|r| r.ok)
        .unwrap_or_else(|| AgentResult {
            ok: st.succeeded.unwrap_or(0) > 0,
            error: Some("the check Job finished but its pod (and result) is gone".into()),
            ..AgentResult::default()
        });
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
        status.conditions = vec![ready(true, reason, &msg, generation)];
        publish(&ctx, r.as_ref(), EventType::Normal, reason, msg).await;
    } else {
        let msg = result
            .error
            .unwrap_or_else(|| "the repository check failed".into());
        status.conditions = vec![ready(false, "Unreachable", &msg, generation)];
        warn_once(&ctx, r.as_ref(), &old.conditions, "Unreachable", msg).await;
    }
    let next = if result.ok {
        Action::await_change()
    } else {
        Action::requeue(RETRY)
    };
    patch_status(&api, &name, &status).await?;
    Ok(next)
}
