//! Helpers every reconciler uses: the `Ready` condition, Events, and status
//! updates through the status subresource.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backup::{Context, Error};

/// The `Ready` condition.
pub fn ready(ok: bool, reason: &str, message: &str, generation: Option<i64>) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Record an Event about `obj`; a failure to record is logged, not fatal.
pub async fn publish<K>(ctx: &Context, obj: &K, type_: EventType, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: K::kind(&()).to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(
            "event {reason} for {} {} not recorded: {e}",
            K::kind(&()),
            obj.name_any()
        );
    }
}

/// Optional status fields a reconciler may clear. Statuses are always built
/// whole (from the old one), so a field missing from the new status is meant
/// to be gone: a merge patch needs an explicit null for that.
const CLEARABLE: &[&str] = &[
    "nextScheduleTime",
    "lastPruneResult",
    "message",
    "completionTime",
];

/// Write `status` into the object's status subresource (a merge patch that
/// also clears the optional fields `status` leaves out).
///
/// # Errors
/// API failures.
pub async fn patch_status<K>(api: &Api<K>, name: &str, status: &impl Serialize) -> Result<(), Error>
where
    K: Clone + DeserializeOwned + Debug,
{
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(obj) = value.as_object_mut() {
        for f in CLEARABLE {
            obj.entry(f.to_string()).or_insert(serde_json::Value::Null);
        }
    }
    let patch = serde_json::json!({ "status": value });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Record a Warning Event only when `reason` is new: a condition that stays
/// the same across reconciles is reported once, not on every requeue.
pub async fn warn_once<K>(
    ctx: &Context,
    obj: &K,
    previous: &[Condition],
    reason: &str,
    note: String,
) where
    K: Resource<DynamicType = ()>,
{
    if previous.first().map(|c| c.reason.as_str()) != Some(reason) {
        publish(ctx, obj, EventType::Warning, reason, note).await;
    }
}

/// The named `BackupRepository`, or the message saying it is missing.
///
/// # Errors
/// API failures.
pub async fn repository(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Result<cairn_crds::BackupRepository, String>, Error> {
    let repos: Api<cairn_crds::BackupRepository> = Api::namespaced(ctx.client.clone(), ns);
    Ok(repos
        .get_opt(name)
        .await?
        .ok_or_else(|| format!("BackupRepository {name:?} not found in namespace {ns}")))
}

/// Whether a Job has finished (succeeded, or failed for good).
pub fn job_finished(job: &k8s_openapi::api::batch::v1::Job) -> bool {
    let st = job.status.clone().unwrap_or_default();
    st.succeeded.unwrap_or(0) > 0
        || st
            .conditions
            .iter()
            .flatten()
            .any(|c| (c.type_ == "Failed" || c.type_ == "Complete") && c.status == "True")
}

/// The agent's result of a finished Job (`None` while it runs): from its
/// pods' termination messages, preferring a successful attempt; a Job whose
/// pods are gone gets a result that says so.
///
/// # Errors
/// API failures.
pub async fn job_result(
    client: &kube::Client,
    ns: &str,
    job: &k8s_openapi::api::batch::v1::Job,
) -> Result<Option<crate::result::AgentResult>, Error> {
    use crate::result::AgentResult;
    if !job_finished(job) {
        return Ok(None);
    }
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let lp = kube::api::ListParams::default().labels(&format!("job-name={}", job.name_any()));
    let best = pods
        .list(&lp)
        .await?
        .items
        .iter()
        .filter_map(AgentResult::from_pod)
        .max_by_key(|r| r.ok);
    let succeeded = job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0;
    Ok(Some(best.unwrap_or_else(|| AgentResult {
        ok: succeeded,
        exit_code: if succeeded { 0 } else { 1 },
        error: Some("the Job finished but its pod (and result) is gone".into()),
        ..AgentResult::default()
    })))
}

/// Container waiting reasons that will not resolve by waiting: the user has
/// to act (create the Secret, fix the image, load it into the node).
const STUCK_REASONS: &[&str] = &[
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];

/// Why a running Job's pod cannot make progress, if it cannot: a container
/// stuck on its configuration or image, or a pod the scheduler cannot place.
/// Kubernetes keeps such pods waiting (the Job does not fail), so without
/// this a missing Secret would show only as "running" until the deadline.
pub fn pod_stuck(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    let name = pod.metadata.name.as_deref().unwrap_or("");
    let st = pod.status.as_ref()?;
    for c in st.container_statuses.iter().flatten() {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or("");
            if STUCK_REASONS.contains(&reason) {
                return Some(format!(
                    "pod {name} is stuck: {reason}: {}",
                    w.message.as_deref().unwrap_or("")
                ));
            }
        }
    }
    st.conditions.iter().flatten().find_map(|c| {
        (c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable"))
        .then(|| {
            format!(
                "pod {name} cannot be scheduled: {}",
                c.message.as_deref().unwrap_or("")
            )
        })
    })
}

/// [`pod_stuck`] for the pods of a Job that has not finished.
///
/// # Errors
/// API failures.
pub async fn job_stuck(
    client: &kube::Client,
    ns: &str,
    job: &k8s_openapi::api::batch::v1::Job,
) -> Result<Option<String>, Error> {
    if job_finished(job) {
        return Ok(None);
    }
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let lp = kube::api::ListParams::default().labels(&format!("job-name={}", job.name_any()));
    Ok(pods.list(&lp).await?.items.iter().find_map(pod_stuck))
}
