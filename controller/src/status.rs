//! The `Ready` condition and status writes: through the status
//! subresource, only when something changed, each condition keeping its
//! `lastTransitionTime` while its `status` stays.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::{Context, Error};

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

/// What ends a cut text.
pub(crate) const TRUNCATED: &str = "… (truncated)";

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
pub async fn patch_status<K, S>(
    ctx: &Context,
    api: &Api<K>,
    name: &str,
    old: &S,
    status: &S,
) -> Result<(), Error>
where
    K: Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let Some(mut value) = status_update(old, status) else {
        ctx.metrics.status_writes_skipped.inc();
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
    ctx.metrics.status_writes.inc();
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
