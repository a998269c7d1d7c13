//! What a Job's state says: whether it finished, the agent's result from
//! its pods, why Kubernetes failed it, and why a running one's pod cannot
//! make progress (stuck on a Secret or image, unschedulable, refused by
//! admission). Reading only: what the reconcilers make of it (conditions,
//! Events, status) is theirs.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::context::Error;
use crate::result::AgentResult;

/// The label selector of a Job's pods: by the Job's UID where it has one,
/// so that pods of a deleted Job of the same name (still terminating) are
/// never taken for the new Job's.
fn pods_of(job: &Job) -> String {
    match job.metadata.uid.as_deref() {
        Some(uid) => format!("batch.kubernetes.io/controller-uid={uid}"),
        None => format!("job-name={}", job.name_any()),
    }
}

/// Whether a Job has finished (succeeded, or failed for good).
pub fn job_finished(job: &Job) -> bool {
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
    job: &Job,
) -> Result<Option<AgentResult>, Error> {
    if !job_finished(job) {
        return Ok(None);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&pods_of(job));
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
pub fn job_failure(job: &Job) -> Option<String> {
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

fn deadline_exceeded(job: &Job) -> bool {
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
pub fn pod_stuck(pod: &Pod) -> Option<String> {
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
    job: &Job,
) -> Result<Option<String>, Error> {
    if job_finished(job) {
        return Ok(None);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&pods_of(job));
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
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let name = job.name_any();
    let lp = ListParams::default().fields(&format!(
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
    }

    #[test]
    fn a_pod_is_stuck_unschedulable_only_after_a_grace_period() {
        let pod = |secs_ago: i64| -> Pod {
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
}
