//! Events about the resources the controller reconciles: notes bounded to
//! what the events API accepts, and Warnings recorded once per reason.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use crate::context::Context;
use crate::status::bounded_text;

/// The longest note the events API accepts, in bytes.
pub const NOTE_LIMIT: usize = 1024;

/// `note` cut to at most [`NOTE_LIMIT`] bytes on a character boundary,
/// ending in "… (truncated)" when it was cut. The API rejects a longer note
/// (422) and the Event is lost, and failure messages (an agent's error, a
/// list of failed PVCs) are the ones that grow long.
pub fn bounded_note(note: String) -> String {
    bounded_text(note, NOTE_LIMIT)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::TRUNCATED;

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
}
