//! The `Ready` condition and status writes: server-side apply through the
//! status subresource, only when something changed, each condition keeping
//! its `lastTransitionTime` while its `status` stays.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
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

/// The field manager the controller writes status under (server-side
/// apply): `kubectl get -o yaml --show-managed-fields` names it.
pub const FIELD_MANAGER: &str = "cairn-controller";

/// Write `status` into `obj`'s status subresource with server-side
/// apply, unless it equals `old`, the status the reconcile started from.
///
/// Statuses are always built whole (from the old one), so the applied
/// status is the whole of what the controller owns: a field it leaves out
/// is removed by the API server. A field it never applied is not: one that
/// an older controller (which wrote merge patches) or a person (`kubectl
/// edit --subresource=status`) left stays owned by them, so when the
/// stored status still holds fields the applied one lacks, a second write
/// (a merge patch) removes them. That happens once per object, after which
/// every write is one apply.
///
/// The apply carries `obj`'s `resourceVersion` as a precondition: a
/// reconcile that read `obj` from an informer cache that was behind would
/// otherwise apply a status built from an old one, removing what a newer
/// status held (a finished Backup's snapshots). The API server refuses it
/// (409), and that is [`Error::Stale`]: not a failure, the newer version
/// is reconciled next. So a reconcile that writes twice passes the second
/// write an object with the `resourceVersion` the first returned.
///
/// Each condition keeps `old`'s `lastTransitionTime` while its `status`
/// stays the same (the Kubernetes convention), so a reconcile that finds
/// nothing new writes nothing: every write is a watch event, and writing
/// on every reconcile made the controller wake itself up again.
///
/// Returns the `resourceVersion` the write left (`None`: nothing written).
///
/// # Errors
/// [`Error::Stale`] when `obj` is not the stored version; API failures.
pub async fn apply_status<K, S>(
    ctx: &Context,
    api: &Api<K>,
    obj: &K,
    old: &S,
    status: &S,
) -> Result<Option<String>, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
    S: Serialize,
{
    let Some(value) = status_update(old, status) else {
        ctx.metrics.status_writes_skipped.inc();
        return Ok(None);
    };
    let name = obj.meta().name.as_deref().unwrap_or_default();
    let body = apply_body::<K>(name, obj.meta().resource_version.as_deref(), &value);
    let stored = match api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(stored) => stored,
        Err(kube::Error::Api(e)) if e.code == 409 => {
            ctx.metrics.status_write_conflicts.inc();
            return Err(Error::Stale(format!("{} {name}", K::kind(&()))));
        }
        Err(e) => return Err(e.into()),
    };
    ctx.metrics.status_writes.inc();
    let mut version = stored.meta().resource_version.clone();
    let stored = serde_json::to_value(&stored).unwrap_or_default();
    if let Some(extra) = stale_fields(&stored["status"], &value) {
        tracing::debug!(name, ?extra, "removing status fields another manager left");
        // On the version just written: a newer one is left alone.
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": version },
            "status": extra,
        });
        // Best effort: the apply is written, and failing the reconcile now
        // would leave nothing for the retry to write (its status equals
        // the stored one), so the leftovers would stay all the same.
        match api
            .patch_status(
                name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(repaired) => {
                ctx.metrics.status_writes.inc();
                version = repaired.meta().resource_version.clone();
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(name, "status changed before its leftovers were removed");
            }
            Err(e) => tracing::warn!(name, "removing status fields another manager left: {e}"),
        }
    }
    Ok(version)
}

/// The server-side apply body of a status write: `resourceVersion`, when
/// known, makes it conditional on the object being the version read.
pub fn apply_body<K: Resource<DynamicType = ()>>(
    name: &str,
    resource_version: Option<&str>,
    status: &serde_json::Value,
) -> serde_json::Value {
    let mut metadata = serde_json::json!({ "name": name });
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = serde_json::json!(rv);
    }
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
        "status": status,
    })
}

/// A merge patch that turns `stored` into `applied`, for what server-side
/// apply left behind: fields only in `stored` (set to null, recursively in
/// objects) and values that differ (lists, scalars: `applied`'s). `None`
/// when `stored` already equals `applied`.
pub fn stale_fields(
    stored: &serde_json::Value,
    applied: &serde_json::Value,
) -> Option<serde_json::Value> {
    use serde_json::Value;
    match (stored, applied) {
        (Value::Object(s), Value::Object(a)) => {
            let mut patch = serde_json::Map::new();
            for (k, sv) in s {
                match a.get(k) {
                    None => {
                        patch.insert(k.clone(), Value::Null);
                    }
                    Some(av) => {
                        if let Some(p) = stale_fields(sv, av) {
                            patch.insert(k.clone(), p);
                        }
                    }
                }
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        (s, a) if s == a => None,
        (_, a) => Some(a.clone()),
    }
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

    #[test]
    fn fields_left_by_another_manager_are_nulled() {
        let stored = serde_json::json!({
            "phase": "Succeeded", "message": "an old failure",
            "result": {"snapshot": "ab", "errors": 3},
            "conditions": [{"type": "Ready", "status": "False"}],
        });
        let applied = serde_json::json!({
            "phase": "Succeeded",
            "result": {"snapshot": "ab"},
            "conditions": [{"type": "Ready", "status": "True"}],
        });
        assert_eq!(
            stale_fields(&stored, &applied),
            Some(serde_json::json!({
                "message": null,
                "result": {"errors": null},
                "conditions": [{"type": "Ready", "status": "True"}],
            }))
        );
        assert_eq!(stale_fields(&applied, &applied), None);
        // Fields only in what was applied are the apply's business.
        assert_eq!(stale_fields(&serde_json::json!({}), &applied), None);
    }
}
