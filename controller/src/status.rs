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

/// The longest note the events API accepts, in bytes.
pub const NOTE_LIMIT: usize = 1024;
const TRUNCATED: &str = "… (truncated)";

/// `note` cut to at most [`NOTE_LIMIT`] bytes on a character boundary,
/// ending in "… (truncated)" when it was cut. The API rejects a longer note
/// (422) and the Event is lost, and failure messages (an agent's error, a
/// list of failed PVCs) are the ones that grow long.
pub fn bounded_note(note: String) -> String {
    bounded_text(note, NOTE_LIMIT)
}

/// `text` cut to at most `limit` bytes on a character boundary, marked when
/// cut: what a tenant's file names can make long (an agent's error listing
/// unreadable paths, one per PVC) must not grow a status without bound.
pub fn bounded_text(mut note: String, limit: usize) -> String {
    if note.len() <= limit {
        return note;
    }
    let mut end = limit.saturating_sub(TRUNCATED.len());
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push_str(TRUNCATED);
    note
}

/// Record an Event about `obj` (its note bounded by [`bounded_note`]); a
/// failure to record is logged, not fatal.
pub async fn publish<K>(ctx: &Context, obj: &K, type_: EventType, reason: &str, note: String)
where
    K: Resource<DynamicType = ()>,
{
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(bounded_note(note)),
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
/// also clears the optional fields `status` leaves out), unless it equals
/// `old`, the status the reconcile started from.
///
/// Each condition keeps `old`'s `lastTransitionTime` while its `status`
/// stays the same (the Kubernetes convention), so a reconcile that finds
/// nothing new writes nothing: every write is a watch event, and writing
/// on every reconcile made the controller wake itself up again.
///
/// # Errors
/// API failures.
pub async fn patch_status<K, S>(api: &Api<K>, name: &str, old: &S, status: &S) -> Result<(), Error>
where
    K: Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let Some(mut value) = status_update(old, status) else {
        crate::metrics::STATUS_WRITES_SKIPPED.inc();
        return Ok(());
    };
    if let Some(obj) = value.as_object_mut() {
        for f in CLEARABLE {
            obj.entry(f.to_string()).or_insert(serde_json::Value::Null);
        }
    }
    let patch = serde_json::json!({ "status": value });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    crate::metrics::STATUS_WRITES.inc();
    Ok(())
}

/// The status to write, as JSON, with the transition times carried over
/// from `old`; `None` when it equals `old` (nothing to write).
pub fn status_update<S: Serialize>(old: &S, status: &S) -> Option<serde_json::Value> {
    let old = serde_json::to_value(old).unwrap_or_default();
    let mut new = serde_json::to_value(status).unwrap_or_default();
    carry_transition_times(&old, &mut new);
    (new != old).then_some(new)
}

/// In `new`'s `conditions`, give each condition whose type has the same
/// `status` in `old` the `lastTransitionTime` it had there.
fn carry_transition_times(old: &serde_json::Value, new: &mut serde_json::Value) {
    let Some(before) = old.get("conditions").and_then(|c| c.as_array()) else {
        return;
    };
    let Some(after) = new.get_mut("conditions").and_then(|c| c.as_array_mut()) else {
        return;
    };
    for c in after.iter_mut() {
        let same = before
            .iter()
            .find(|o| o.get("type") == c.get("type") && o.get("status") == c.get("status"));
        if let (Some(t), Some(obj)) = (
            same.and_then(|o| o.get("lastTransitionTime")),
            c.as_object_mut(),
        ) {
            obj.insert("lastTransitionTime".into(), t.clone());
        }
    }
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

/// The label selector of a Job's pods: by the Job's UID where it has one,
/// so that pods of a deleted Job of the same name (still terminating) are
/// never taken for the new Job's.
fn pods_of(job: &k8s_openapi::api::batch::v1::Job) -> String {
    match job.metadata.uid.as_deref() {
        Some(uid) => format!("batch.kubernetes.io/controller-uid={uid}"),
        None => format!("job-name={}", job.name_any()),
    }
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
    let lp = kube::api::ListParams::default().labels(&pods_of(job));
    let best = pods
        .list(&lp)
        .await?
        .items
        .iter()
        .filter_map(crate::result::from_pod)
        .max_by_key(|r| r.ok);
    let succeeded = job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0;
    let failure = job_failure(job);
    Ok(Some(match best {
        // Killed at the deadline or out of retries: say so first, the
        // agent's last words (a log tail, often) after.
        Some(mut r) if !r.ok => {
            // Not when the agent reported its own error: that says it all.
            let agent_reported = !r.command.is_empty() && !deadline_exceeded(job);
            if let (Some(f), false) = (failure, agent_reported) {
                r.error = Some(match r.error.take() {
                    Some(e) if !e.is_empty() => format!("{f}; the agent's last message: {e}"),
                    _ => f,
                });
            }
            r
        }
        Some(r) => r,
        None => AgentResult {
            ok: succeeded,
            exit_code: if succeeded { 0 } else { 1 },
            error: Some(
                failure
                    .unwrap_or_else(|| "the Job finished but its pod (and result) is gone".into()),
            ),
            ..AgentResult::default()
        },
    }))
}

/// Why Kubernetes failed a Job, from its `Failed` condition: the deadline
/// (`DeadlineExceeded`), the retries (`BackoffLimitExceeded`), the pod
/// failure policy (`PodFailurePolicy`), ...
pub fn job_failure(job: &k8s_openapi::api::batch::v1::Job) -> Option<String> {
    let st = job.status.as_ref()?;
    st.conditions.iter().flatten().find_map(|c| {
        let reason = c.reason.as_deref().filter(|r| !r.is_empty())?;
        (c.type_ == "Failed" && c.status == "True").then(|| {
            format!(
                "Job {} failed: {reason}: {}",
                job.name_any(),
                c.message.as_deref().unwrap_or("")
            )
        })
    })
}

fn deadline_exceeded(job: &k8s_openapi::api::batch::v1::Job) -> bool {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| {
            c.type_ == "Failed"
                && c.status == "True"
                && c.reason.as_deref() == Some("DeadlineExceeded")
        })
}

/// Seconds a Job may go without a pod before its Events are read for why.
const NO_POD_GRACE: i64 = 20;

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

/// Seconds a pod may be unschedulable before its Job counts as stuck.
const UNSCHEDULABLE_GRACE: i64 = 30;

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
        // Unschedulable for a moment is normal (a claim being bound, a node
        // scaling up): stuck only after UNSCHEDULABLE_GRACE.
        let waited = c
            .last_transition_time
            .as_ref()
            .map_or(i64::MAX, |t| Timestamp::now().as_second() - t.0.as_second());
        (c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
            && waited >= UNSCHEDULABLE_GRACE)
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
    let lp = kube::api::ListParams::default().labels(&pods_of(job));
    let pods = pods.list(&lp).await?.items;
    if !pods.is_empty() {
        return Ok(pods.iter().find_map(pod_stuck));
    }
    // No pod at all: admission (Pod Security, a ResourceQuota, a LimitRange,
    // a webhook) may refuse to create it. The Job controller retries and
    // says why only in a FailedCreate Event on the Job.
    let age = job
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(i64::MAX, |t| Timestamp::now().as_second() - t.0.as_second());
    if age < NO_POD_GRACE {
        return Ok(None);
    }
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let name = job.name_any();
    let lp = kube::api::ListParams::default().fields(&format!(
        "involvedObject.kind=Job,involvedObject.name={name},reason=FailedCreate"
    ));
    let newest = events
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(name.as_str())
                && e.involved_object.uid == job.metadata.uid
                && e.reason.as_deref() == Some("FailedCreate")
        })
        .max_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .or(e.event_time.as_ref().map(|t| t.0.as_second()))
                .unwrap_or(0)
        });
    Ok(newest.map(|e| {
        format!(
            "the pod of Job {name} cannot be created: {}",
            e.message.unwrap_or_default()
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_crds::BackupScheduleStatus;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    fn with(cond: Condition) -> BackupScheduleStatus {
        BackupScheduleStatus {
            observed_generation: Some(1),
            conditions: vec![cond],
            ..BackupScheduleStatus::default()
        }
    }

    #[test]
    fn a_pod_is_stuck_unschedulable_only_after_a_grace_period() {
        let pod = |secs_ago: i64| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p"},
                "status": {"conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": "pod has unbound immediate PersistentVolumeClaims",
                    "lastTransitionTime": at(Timestamp::now().as_second() - secs_ago).0.to_string()
                }]}
            }))
            .expect("pod")
        };
        assert_eq!(pod_stuck(&pod(1)), None, "a claim being bound is not stuck");
        assert!(pod_stuck(&pod(UNSCHEDULABLE_GRACE + 5))
            .is_some_and(|m| m.contains("cannot be scheduled")));
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        assert_eq!(bounded_note("short".into()), "short");
        let exact = "x".repeat(NOTE_LIMIT);
        assert_eq!(bounded_note(exact.clone()), exact);
        for filler in ["x", "é", "日本", "🦀"] {
            for pad in 0..4 {
                let note = format!("{}{}", "a".repeat(pad), filler.repeat(2000));
                let cut = bounded_note(note.clone());
                assert!(cut.len() <= NOTE_LIMIT, "{} bytes", cut.len());
                assert!(cut.len() > NOTE_LIMIT - TRUNCATED.len() - 4);
                assert!(cut.ends_with("… (truncated)"));
                let kept = cut.trim_end_matches(TRUNCATED);
                assert!(note.starts_with(kept));
            }
        }
    }

    #[test]
    fn unchanged_status_is_not_written() {
        let mut before = ready(true, "Scheduled", "the schedule is active", Some(1));
        before.last_transition_time = at(1_000);
        let old = with(before);
        // A later reconcile builds the same condition with a new time.
        let again = with(ready(true, "Scheduled", "the schedule is active", Some(1)));
        assert!(status_update(&old, &again).is_none());
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut before = ready(true, "Scheduled", "the schedule is active", Some(1));
        before.last_transition_time = at(1_000);
        let old = with(before);
        let stamp = |v: &serde_json::Value| v["conditions"][0]["lastTransitionTime"].clone();

        // Same status, new reason and message: written, time kept.
        let reworded = with(ready(
            true,
            "Suspended",
            "the schedule is suspended",
            Some(1),
        ));
        let v = status_update(&old, &reworded).expect("a changed reason is written");
        assert_eq!(stamp(&v), serde_json::json!("1970-01-01T00:16:40Z"));
        assert_eq!(v["conditions"][0]["reason"], "Suspended");

        // Status flips: the new time stays.
        let flipped = ready(false, "NoVolumes", "no PVC", Some(1));
        let now = serde_json::to_value(&flipped.last_transition_time).unwrap_or_default();
        let v = status_update(&old, &with(flipped)).expect("a flipped status is written");
        assert_eq!(stamp(&v), now);
        assert_ne!(stamp(&v), serde_json::json!("1970-01-01T00:16:40Z"));

        // Another field changed: written, condition time kept.
        let mut moved = with(ready(true, "Scheduled", "the schedule is active", Some(1)));
        moved.next_schedule_time = Some(at(5_000));
        let v = status_update(&old, &moved).expect("a new nextScheduleTime is written");
        assert_eq!(stamp(&v), serde_json::json!("1970-01-01T00:16:40Z"));
    }
}
