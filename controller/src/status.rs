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
