//! The `Backup` reconciler: one agent Job per PVC, results into status.
//!
//! Idempotent: Job names are deterministic, so a repeated reconcile finds the
//! Jobs it created (a create that races answers 409 and is ignored). Status
//! goes through the status subresource with `observedGeneration`. A finished
//! `Backup` is left alone.

use std::sync::Arc;
use std::time::Duration;

use cairn_crds::{Backup, BackupStatus, Phase};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};

use crate::jobs::{self, JobConfig};
use crate::status::{
    job_finished, job_result, job_stuck, patch_status, publish, ready, repository, warn_once,
};

/// Shared state of the reconcilers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Job settings.
    pub jobs: JobConfig,
    /// Event recorder.
    pub recorder: Recorder,
}

/// Reconcile errors (API failures; spec problems go to status instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object without namespace or name.
    #[error("{0}")]
    Invalid(String),
}

/// A pod (not finished) that mounts `pvc`, other than the agent's own.
///
/// # Errors
/// API failures.
pub async fn pod_using(client: &Client, ns: &str, pvc: &str) -> Result<Option<String>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    Ok(pods
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| !p.labels().contains_key(jobs::labels::RESTORE))
        .find(|p| mounts(p, pvc))
        .map(|p| p.name_any()))
}

fn mounts(p: &Pod, pvc: &str) -> bool {
    p.spec.as_ref().is_some_and(|s| {
        s.volumes.iter().flatten().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == pvc)
        })
    })
}

/// The node of a running pod that mounts `pvc`, when the claim is
/// ReadWriteOnce: the agent must run there to mount it too.
/// Where a backup Job for `pvc` must run: `None` when the claim does not
/// exist, else [`claim_node`]'s answer (a node, or anywhere).
async fn rwo_node(client: &Client, ns: &str, pvc: &str) -> Result<Option<Option<String>>, Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let Some(claim) = claims.get_opt(pvc).await? else {
        return Ok(None);
    };
    Ok(Some(claim_node(client, ns, pvc, &claim).await?))
}

async fn claim_node(
    client: &Client,
    ns: &str,
    pvc: &str,
    claim: &PersistentVolumeClaim,
) -> Result<Option<String>, Error> {
    let rwo = claim
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .is_some_and(|m| m.iter().any(|m| m == "ReadWriteOnce"));
    if !rwo {
        return Ok(None);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields("status.phase=Running");
    for p in pods.list(&lp).await? {
        if mounts(&p, pvc) {
            if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                return Ok(Some(node));
            }
        }
    }
    Ok(None)
}

/// Why a new backup Job must wait, if it must: the repository or the node
/// already runs as many backup Jobs as allowed.
async fn at_limit(
    ctx: &Context,
    ns: &str,
    repo: &str,
    node: Option<&str>,
) -> Result<Option<String>, Error> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "{}=backup,{}=cairn-controller",
        jobs::labels::COMPONENT,
        jobs::labels::MANAGED_BY
    ));
    let active: Vec<Job> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|j| !job_finished(j))
        .collect();
    let same_repo = active
        .iter()
        .filter(|j| {
            j.labels().get(jobs::labels::REPOSITORY).map(String::as_str)
                == Some(jobs::label_value(repo).as_str())
        })
        .count();
    if same_repo >= ctx.jobs.max_per_repository {
        return Ok(Some(format!(
            "{same_repo} backups already run against repository {repo}"
        )));
    }
    if let Some(node) = node {
        let on_node = active
            .iter()
            .filter(|j| {
                j.spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .and_then(|p| p.node_selector.as_ref())
                    .and_then(|n| n.get("kubernetes.io/hostname"))
                    .map(String::as_str)
                    == Some(node)
            })
            .count();
        if on_node >= ctx.jobs.max_per_node {
            return Ok(Some(format!(
                "{on_node} backups already run on node {node}"
            )));
        }
    }
    Ok(None)
}

/// Bytes of one PVC's error in a Backup's message, and of the message.
const PVC_MESSAGE_LIMIT: usize = 512;
const MESSAGE_LIMIT: usize = 8192;

/// How long a Backup waits for a PVC that does not exist.
pub const PVC_WAIT: Duration = Duration::from_secs(3600);

/// Reconcile one `Backup`.
///
/// # Errors
/// API failures (the controller retries with backoff).
pub async fn reconcile(b: Arc<Backup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = b
        .namespace()
        .ok_or_else(|| Error::Invalid("Backup without namespace".into()))?;
    let name = b.name_any();
    let generation = b.meta().generation;
    let old = b.status.clone().unwrap_or_default();
    if old.phase.is_finished() {
        return Ok(Action::await_change());
    }
    let backups: Api<Backup> = Api::namespaced(ctx.client.clone(), &ns);
    let mut status = BackupStatus {
        observed_generation: generation,
        ..old.clone()
    };

    if let Some(msg) = jobs::privileged_mover_refused(b.spec.job.as_ref(), &ns, &ctx.jobs) {
        status.phase = Phase::Failed;
        status.message = Some(msg.clone());
        status.completion_time = Some(Time(Timestamp::now()));
        status.conditions = vec![ready(false, "PrivilegedMoverNotAllowed", &msg, generation)];
        publish(
            &ctx,
            b.as_ref(),
            EventType::Warning,
            "PrivilegedMoverNotAllowed",
            msg,
        )
        .await;
        crate::metrics::BACKUPS_FAILED.inc();
        patch_status(&backups, &name, &old, &status).await?;
        return Ok(Action::await_change());
    }

    // The repository must exist; otherwise wait (it may be applied next).
    let repo = match repository(&ctx, &ns, &b.spec.repository.name).await? {
        Ok(r) => r,
        Err(msg) => {
            status.phase = Phase::Pending;
            status.conditions = vec![ready(false, "RepositoryNotFound", &msg, generation)];
            warn_once(&ctx, b.as_ref(), &old.conditions, "RepositoryNotFound", msg).await;
            patch_status(&backups, &name, &old, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };

    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let mut results = Vec::new();
    let mut running = false;
    let mut job_names = Vec::new();
    let mut queued = Vec::new();
    let mut stuck: Vec<String> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for pvc in &b.spec.pvcs {
        let job_name = jobs::backup_job_name(&name, pvc);
        job_names.push(job_name.clone());
        let job = match jobs_api.get_opt(&job_name).await? {
            Some(j) => j,
            None => {
                let Some(node) = rwo_node(&ctx.client, &ns, pvc).await? else {
                    // Waits: a GitOps tool may apply the PVC after the Backup.
                    missing.push(pvc.clone());
                    job_names.pop();
                    continue;
                };
                if let Some(why) = at_limit(&ctx, &ns, &repo.name_any(), node.as_deref()).await? {
                    queued.push(format!("{pvc} ({why})"));
                    job_names.pop();
                    continue;
                }
                let job = jobs::backup_job(&b, &repo, pvc, node, &ctx.jobs);
                match jobs_api.create(&PostParams::default(), &job).await {
                    Ok(j) => {
                        publish(
                            &ctx,
                            b.as_ref(),
                            EventType::Normal,
                            "Started",
                            format!("backing up PVC {pvc} with Job {job_name}"),
                        )
                        .await;
                        j
                    }
                    // Created meanwhile by another reconcile: use it.
                    Err(kube::Error::Api(e)) if e.code == 409 => jobs_api.get(&job_name).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if !jobs::owned_by(&job, b.as_ref()) {
            jobs::delete_stale(&jobs_api, &job).await?;
            queued.push(format!(
                "{pvc} (Job {job_name} of an earlier Backup named {name} is being deleted)"
            ));
            job_names.pop();
            continue;
        }
        match job_result(&ctx.client, &ns, &job).await? {
            None => {
                running = true;
                if let Some(why) = job_stuck(&ctx.client, &ns, &job).await? {
                    stuck.push(format!("{pvc}: {why}"));
                }
            }
            Some(r) => results.push((pvc.clone(), r)),
        }
    }
    status.job_names = job_names;
    if status.start_time.is_none() {
        status.start_time = Some(Time(Timestamp::now()));
    }
    // A PVC that does not come is given up after PVC_WAIT: a Backup waiting
    // for ever would also hold every later run of its schedule.
    let waited = status
        .start_time
        .as_ref()
        .map_or(0, |t| Timestamp::now().as_second() - t.0.as_second());
    if !missing.is_empty() && waited >= PVC_WAIT.as_secs() as i64 {
        for pvc in missing.drain(..) {
            results.push((
                pvc.clone(),
                crate::result::AgentResult {
                    command: "backup".into(),
                    ok: false,
                    exit_code: 1,
                    error: Some(format!(
                        "PVC {pvc} not found in namespace {ns} (waited {} min)",
                        PVC_WAIT.as_secs() / 60
                    )),
                    ..crate::result::AgentResult::default()
                },
            ));
        }
    }
    status.snapshots = results
        .iter()
        .map(|(pvc, r)| crate::result::snapshot_result(r, pvc))
        .collect();
    if running || !queued.is_empty() || !missing.is_empty() {
        let phase_now = if running {
            Phase::Running
        } else {
            Phase::Pending
        };
        let (phase, reason, msg) = if !stuck.is_empty() {
            let msg = stuck.join("; ");
            warn_once(&ctx, b.as_ref(), &old.conditions, "JobStuck", msg.clone()).await;
            (Phase::Running, "JobStuck", msg)
        } else if !missing.is_empty() {
            let msg = format!(
                "PVC {} not found in namespace {ns}; waiting for it",
                missing.join(", ")
            );
            warn_once(
                &ctx,
                b.as_ref(),
                &old.conditions,
                "PVCNotFound",
                msg.clone(),
            )
            .await;
            (phase_now, "PVCNotFound", msg)
        } else if queued.is_empty() {
            (
                Phase::Running,
                "Running",
                "agent Jobs are running".to_string(),
            )
        } else {
            (
                if running {
                    Phase::Running
                } else {
                    Phase::Pending
                },
                "Queued",
                format!("waiting for a concurrency slot: {}", queued.join(", ")),
            )
        };
        status.phase = phase;
        // Ready only once the snapshots exist: `kubectl wait
        // --for=condition=Ready` must not return while the data is not there.
        status.conditions = vec![ready(false, reason, &msg, generation)];
        patch_status(&backups, &name, &old, &status).await?;
        let wait = if queued.is_empty() && missing.is_empty() {
            60
        } else {
            20
        };
        return Ok(Action::requeue(Duration::from_secs(wait)));
    }
    status.completion_time = Some(Time(Timestamp::now()));
    let failures: Vec<String> = results
        .iter()
        .filter(|(_, r)| !r.ok)
        .map(|(pvc, r)| {
            crate::status::bounded_text(
                format!("{pvc}: {}", r.error.as_deref().unwrap_or("failed")),
                PVC_MESSAGE_LIMIT,
            )
        })
        .collect();
    // Snapshots written without some files (exit 3): not a success, or the
    // PVC's last successful backup would advance and no alert would fire.
    let partial: Vec<String> = results
        .iter()
        .filter(|(_, r)| r.ok && r.exit_code == 3)
        .map(|(pvc, r)| {
            crate::status::bounded_text(
                format!(
                    "{pvc}: {}",
                    r.error.clone().unwrap_or_else(|| format!(
                        "{} files could not be read",
                        r.unreadable_files.unwrap_or(0)
                    ))
                ),
                PVC_MESSAGE_LIMIT,
            )
        })
        .collect();
    if failures.is_empty() && partial.is_empty() {
        status.phase = Phase::Succeeded;
        let msg = format!("{} snapshot(s) written", status.snapshots.len());
        status.conditions = vec![ready(true, "Succeeded", &msg, generation)];
        publish(&ctx, b.as_ref(), EventType::Normal, "Succeeded", msg).await;
        crate::metrics::BACKUPS_SUCCEEDED.inc();
    } else if failures.is_empty() {
        status.phase = Phase::PartiallyFailed;
        let msg = format!(
            "{} snapshot(s) written, {} of them without files the agent could not read \
             (run it as the data's user or as the privileged mover, see OPERATIONS.md): {}",
            status.snapshots.len(),
            partial.len(),
            partial.join("; ")
        );
        let msg = crate::status::bounded_text(msg, MESSAGE_LIMIT);
        status.message = Some(msg.clone());
        status.conditions = vec![ready(false, "PartiallyFailed", &msg, generation)];
        publish(&ctx, b.as_ref(), EventType::Warning, "PartiallyFailed", msg).await;
        crate::metrics::BACKUPS_FAILED.inc();
    } else {
        status.phase = Phase::Failed;
        let msg = crate::status::bounded_text(failures.join("; "), MESSAGE_LIMIT);
        status.message = Some(msg.clone());
        status.conditions = vec![ready(false, "Failed", &msg, generation)];
        publish(&ctx, b.as_ref(), EventType::Warning, "Failed", msg).await;
        crate::metrics::BACKUPS_FAILED.inc();
    }
    patch_status(&backups, &name, &old, &status).await?;
    Ok(Action::await_change())
}
