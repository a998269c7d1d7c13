//! The `Backup` reconciler: one agent Job per PVC, results into status.
//!
//! Idempotent: Job names are deterministic, so a repeated reconcile finds the
//! Jobs it created (a create that races answers 409 and is ignored). Status
//! goes through the status subresource with `observedGeneration`. A finished
//! `Backup` is left alone.

use std::sync::Arc;
use std::time::Duration;

use cairn_crds::{Backup, BackupRepository, BackupStatus, Phase};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use crate::context::{repository, Context, Error};
use crate::events::{publish, warn_once};
use crate::job_state::{job_finished, job_result, job_stuck};
use crate::jobs;
use crate::result::AgentResult;
use crate::status::{apply_status, bounded_text, ready};
use crate::volumes::{mover_running, rwo_node, Mover};

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
        apply_status(&ctx, &backups, b.as_ref(), &old, &status).await?;
        ctx.metrics.backups_failed.inc();
        return Ok(Action::await_change());
    }

    // The repository must exist; otherwise wait (it may be applied next).
    let repo = match repository(&ctx, &ns, &b.spec.repository.name).await? {
        Ok(r) => r,
        Err(why) => {
            status.phase = Phase::Pending;
            status.conditions = vec![ready(false, why.reason, &why.message, generation)];
            warn_once(&ctx, b.as_ref(), &old.conditions, why.reason, why.message).await;
            apply_status(&ctx, &backups, b.as_ref(), &old, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };

    // A deadline beyond prune's grace period breaks the assumption prune's
    // safety rests on: refused before any Job exists (Jobs already started
    // under an older spec run on).
    if status.job_names.is_empty() {
        if let Some(msg) = jobs::deadline_problem(b.spec.job.as_ref(), &repo, &ctx.jobs) {
            status.phase = Phase::Failed;
            status.message = Some(msg.clone());
            status.completion_time = Some(Time(Timestamp::now()));
            status.conditions = vec![ready(false, "DeadlineExceedsGrace", &msg, generation)];
            publish(
                &ctx,
                b.as_ref(),
                EventType::Warning,
                "DeadlineExceedsGrace",
                msg,
            )
            .await;
            apply_status(&ctx, &backups, b.as_ref(), &old, &status).await?;
            ctx.metrics.backups_failed.inc();
            return Ok(Action::await_change());
        }
    }

    let mut progress = run_jobs(&b, &ctx, &ns, &repo).await?;
    status.job_names = std::mem::take(&mut progress.job_names);
    if status.start_time.is_none() {
        status.start_time = Some(Time(Timestamp::now()));
    }
    // A PVC that does not come is given up after PVC_WAIT: a Backup waiting
    // for ever would also hold every later run of its schedule.
    let waited = status
        .start_time
        .as_ref()
        .map_or(0, |t| Timestamp::now().as_second() - t.0.as_second());
    if !progress.missing.is_empty() && waited >= PVC_WAIT.as_secs() as i64 {
        for pvc in progress.missing.drain(..) {
            let given_up = pvc_given_up(&pvc, &ns);
            progress.results.push((pvc, given_up));
        }
    }
    status.snapshots = progress
        .results
        .iter()
        .map(|(pvc, r)| crate::result::snapshot_result(r, pvc))
        .collect();

    if progress.unfinished() {
        let (phase, reason, msg) = waiting_verdict(&progress, &ns);
        if matches!(reason, "JobStuck" | "PVCNotFound") {
            warn_once(&ctx, b.as_ref(), &old.conditions, reason, msg.clone()).await;
        }
        status.phase = phase;
        // Ready only once the snapshots exist: `kubectl wait
        // --for=condition=Ready` must not return while the data is not there.
        status.conditions = vec![ready(false, reason, &msg, generation)];
        apply_status(&ctx, &backups, b.as_ref(), &old, &status).await?;
        let wait = if progress.queued.is_empty() && progress.missing.is_empty() {
            60
        } else {
            20
        };
        return Ok(Action::requeue(Duration::from_secs(wait)));
    }

    let out = outcome(&progress.results);
    let succeeded = out.phase == Phase::Succeeded;
    status.phase = out.phase;
    status.completion_time = Some(Time(Timestamp::now()));
    if !succeeded {
        status.message = Some(out.message.clone());
    }
    status.conditions = vec![ready(succeeded, out.reason, &out.message, generation)];
    let kind = if succeeded {
        EventType::Normal
    } else {
        EventType::Warning
    };
    publish(&ctx, b.as_ref(), kind, out.reason, out.message).await;
    apply_status(&ctx, &backups, b.as_ref(), &old, &status).await?;
    // Counted once the finished status is stored: a failed write is retried
    // and must not count the same Backup twice.
    if succeeded {
        ctx.metrics.backups_succeeded.inc();
    } else {
        ctx.metrics.backups_failed.inc();
    }
    Ok(Action::await_change())
}

/// Where a Backup's PVCs stand after one pass over their Jobs.
#[derive(Default)]
struct Progress {
    /// The Jobs that exist and are this Backup's, one per PVC.
    job_names: Vec<String>,
    /// The agent's result per PVC whose Job finished.
    results: Vec<(String, AgentResult)>,
    /// Some Job is still running.
    running: bool,
    /// PVCs waiting for a concurrency slot (or a stale Job's deletion), with why.
    queued: Vec<String>,
    /// Running Jobs whose pods cannot make progress, with why.
    stuck: Vec<String>,
    /// PVCs that do not exist (yet).
    missing: Vec<String>,
}

impl Progress {
    /// Some PVC is not done: its Job runs, waits for a slot, or its claim
    /// has not appeared yet.
    fn unfinished(&self) -> bool {
        self.running || !self.queued.is_empty() || !self.missing.is_empty()
    }
}

/// What became of starting a PVC's Job.
enum Start {
    /// The Job (created now, or by a reconcile that raced this one).
    Job(Box<Job>),
    /// The PVC does not exist.
    Missing,
    /// A concurrency limit is reached (why).
    Queued(String),
}

/// One pass over the Backup's PVCs: each one's Job found, or started when a
/// slot is free, and read.
async fn run_jobs(
    b: &Backup,
    ctx: &Context,
    ns: &str,
    repo: &BackupRepository,
) -> Result<Progress, Error> {
    let name = b.name_any();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let mut p = Progress::default();
    for pvc in &b.spec.pvcs {
        let job_name = jobs::backup_job_name(&name, pvc);
        let job = match jobs_api.get_opt(&job_name).await? {
            Some(j) => j,
            None => match start_job(b, ctx, &jobs_api, ns, repo, pvc, &job_name).await? {
                Start::Job(j) => *j,
                // Waits: a GitOps tool may apply the PVC after the Backup.
                Start::Missing => {
                    p.missing.push(pvc.clone());
                    continue;
                }
                Start::Queued(why) => {
                    p.queued.push(format!("{pvc} ({why})"));
                    continue;
                }
            },
        };
        if !jobs::owned_by(&job, b) {
            jobs::delete_stale(&jobs_api, &job).await?;
            p.queued.push(format!(
                "{pvc} (Job {job_name} of an earlier Backup named {name} is being deleted)"
            ));
            continue;
        }
        p.job_names.push(job_name);
        match job_result(&ctx.client, ns, &job).await? {
            None => {
                p.running = true;
                if let Some(why) = job_stuck(&ctx.client, ns, &job).await? {
                    p.stuck.push(format!("{pvc}: {why}"));
                }
            }
            Some(r) => p.results.push((pvc.clone(), r)),
        }
    }
    Ok(p)
}

/// Create the backup Job of `pvc`, unless its claim is missing or a
/// concurrency limit says wait.
async fn start_job(
    b: &Backup,
    ctx: &Context,
    jobs_api: &Api<Job>,
    ns: &str,
    repo: &BackupRepository,
    pvc: &str,
    job_name: &str,
) -> Result<Start, Error> {
    let Some(node) = rwo_node(&ctx.client, ns, pvc).await? else {
        return Ok(Start::Missing);
    };
    if let Some(why) = at_limit(ctx, ns, &repo.name_any(), node.as_deref()).await? {
        return Ok(Start::Queued(why));
    }
    // A backup taken while a restore writes would store a half-restored volume.
    if let Some(restore) = mover_running(&ctx.client, ns, pvc, Mover::Restore).await? {
        return Ok(Start::Queued(format!(
            "restore {restore} is writing to it; the backup starts when it ends"
        )));
    }
    let job = jobs::backup_job(b, repo, pvc, node, &ctx.jobs);
    match jobs_api.create(&PostParams::default(), &job).await {
        Ok(j) => {
            publish(
                ctx,
                b,
                EventType::Normal,
                "Started",
                format!("backing up PVC {pvc} with Job {job_name}"),
            )
            .await;
            Ok(Start::Job(Box::new(j)))
        }
        // Created meanwhile by another reconcile: use it.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            Ok(Start::Job(Box::new(jobs_api.get(job_name).await?)))
        }
        Err(e) => Err(e.into()),
    }
}

/// The failed result standing in for a PVC given up after [`PVC_WAIT`].
fn pvc_given_up(pvc: &str, ns: &str) -> AgentResult {
    AgentResult {
        command: "backup".into(),
        ok: false,
        exit_code: 1,
        error: Some(format!(
            "PVC {pvc} not found in namespace {ns} (waited {} min)",
            PVC_WAIT.as_secs() / 60
        )),
        ..AgentResult::default()
    }
}

/// The phase, `Ready` reason and message of a Backup not done yet: stuck
/// pods first, then PVCs not there yet, then running Jobs, then queued ones.
fn waiting_verdict(p: &Progress, ns: &str) -> (Phase, &'static str, String) {
    let phase_now = if p.running {
        Phase::Running
    } else {
        Phase::Pending
    };
    if !p.stuck.is_empty() {
        (Phase::Running, "JobStuck", p.stuck.join("; "))
    } else if !p.missing.is_empty() {
        let msg = format!(
            "PVC {} not found in namespace {ns}; waiting for it",
            p.missing.join(", ")
        );
        (phase_now, "PVCNotFound", msg)
    } else if p.queued.is_empty() {
        (
            Phase::Running,
            "Running",
            "agent Jobs are running".to_string(),
        )
    } else {
        let msg = format!("waiting for a concurrency slot: {}", p.queued.join(", "));
        (phase_now, "Queued", msg)
    }
}

/// How a Backup whose Jobs are all done ended.
struct Outcome {
    /// `Succeeded`, `PartiallyFailed` or `Failed`.
    phase: Phase,
    /// The `Ready` reason, also the Event's.
    reason: &'static str,
    /// The `Ready` message (and, unless it succeeded, the status message).
    message: String,
}

/// Succeeded when every PVC has a complete snapshot; PartiallyFailed when
/// all have one but some lack files the agent could not read (exit 3: not
/// a success, or the PVC's last successful backup would advance and no
/// alert would fire); Failed when some PVC has none.
fn outcome(results: &[(String, AgentResult)]) -> Outcome {
    let failures: Vec<String> = results
        .iter()
        .filter(|(_, r)| !r.ok)
        .map(|(pvc, r)| {
            bounded_text(
                format!("{pvc}: {}", r.error.as_deref().unwrap_or("failed")),
                PVC_MESSAGE_LIMIT,
            )
        })
        .collect();
    if !failures.is_empty() {
        return Outcome {
            phase: Phase::Failed,
            reason: "Failed",
            message: bounded_text(failures.join("; "), MESSAGE_LIMIT),
        };
    }
    let partial: Vec<String> = results
        .iter()
        .filter(|(_, r)| r.ok && r.exit_code == 3)
        .map(|(pvc, r)| {
            let why = r.error.clone().unwrap_or_else(|| {
                format!(
                    "{} files could not be read",
                    r.unreadable_files.unwrap_or(0)
                )
            });
            bounded_text(format!("{pvc}: {why}"), PVC_MESSAGE_LIMIT)
        })
        .collect();
    if partial.is_empty() {
        return Outcome {
            phase: Phase::Succeeded,
            reason: "Succeeded",
            message: format!("{} snapshot(s) written", results.len()),
        };
    }
    let msg = format!(
        "{} snapshot(s) written, {} of them without files the agent could not read \
         (run it as the data's user or as the privileged mover, see OPERATIONS.md): {}",
        results.len(),
        partial.len(),
        partial.join("; ")
    );
    Outcome {
        phase: Phase::PartiallyFailed,
        reason: "PartiallyFailed",
        message: bounded_text(msg, MESSAGE_LIMIT),
    }
}
