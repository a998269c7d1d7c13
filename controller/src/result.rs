//! Reading the agent's result: the JSON it writes as its container's
//! termination message (`cairn agent ...`, see docs/CRDS.md). The type and
//! its wire format are the protocol crate's; here is what only the
//! controller needs: finding it in a Pod, and turning it into status fields.

use cairn_crds::SnapshotResult;
use k8s_openapi::api::core::v1::Pod;

pub use cairn_protocol::AgentResult;

/// The agent's result from a finished pod, if its container terminated.
pub fn from_pod(pod: &Pod) -> Option<AgentResult> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let c = statuses.iter().find(|c| c.name == "agent")?;
    let t = c.state.as_ref()?.terminated.as_ref()?;
    Some(match t.message.as_deref() {
        Some(m) if !m.trim().is_empty() => AgentResult::parse(m),
        _ => AgentResult {
            exit_code: u8::try_from(t.exit_code).unwrap_or(1),
            ok: false,
            error: Some(format!(
                "the agent container ended ({}, exit code {}) without a result",
                t.reason.as_deref().unwrap_or("unknown reason"),
                t.exit_code
            )),
            ..AgentResult::default()
        },
    })
}

/// Typed status fields of `r` for one PVC of a `Backup`.
pub fn snapshot_result(r: &AgentResult, pvc: &str) -> SnapshotResult {
    SnapshotResult {
        pvc: pvc.to_string(),
        snapshot_id: r.snapshot_id.clone(),
        files: r.files.unwrap_or(0),
        bytes_processed: r.bytes_processed.unwrap_or(0),
        bytes_added: r.bytes_added.unwrap_or(0),
        duration_seconds: r.duration_seconds.unwrap_or(0.0),
        unreadable_files: r.unreadable_files.unwrap_or(0),
    }
}
