//! Reading the agent's result: the JSON it writes as its container's
//! termination message (`cairn agent ...`, see docs/CRDS.md).

use cairn_crds::SnapshotResult;
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;

/// The agent's result, as written by `cairn agent`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentResult {
    /// `init`, `backup` or `restore`.
    pub command: String,
    /// False when the run failed (exit code 1).
    pub ok: bool,
    /// 0 ok, 1 failed, 3 snapshot written without some unreadable files.
    pub exit_code: u8,
    /// Snapshot written or restored.
    pub snapshot_id: Option<String>,
    /// Files in the snapshot / restored.
    pub files: Option<u64>,
    /// Bytes of those files.
    pub bytes_processed: Option<u64>,
    /// New bytes added to the repository.
    pub bytes_added: Option<u64>,
    /// Bytes uploaded.
    pub bytes_stored: Option<u64>,
    /// Duration of the run.
    pub duration_seconds: Option<f64>,
    /// Source files that could not be read.
    pub unreadable_files: Option<u64>,
    /// Snapshots removed by the retention policy.
    pub snapshots_forgotten: Option<u64>,
    /// `init`: whether the repository was created now.
    pub initialized: Option<bool>,
    /// `init`: snapshots in the repository.
    pub snapshots: Option<u64>,
    /// `init`: bytes stored in the repository.
    pub stored_bytes: Option<u64>,
    /// `prune`: packs deleted.
    pub packs_deleted: Option<u64>,
    /// `prune`: bytes deleted.
    pub bytes_deleted: Option<u64>,
    /// `prune`: packs marked for deletion.
    pub packs_marked: Option<u64>,
    /// What went wrong.
    pub error: Option<String>,
}

impl AgentResult {
    /// Parse a termination message. A message that is not our JSON (the
    /// kubelet falls back to the log tail when the agent died before writing
    /// it) becomes a failed result carrying that text.
    pub fn parse(message: &str) -> AgentResult {
        match serde_json::from_str::<AgentResult>(message.trim()) {
            Ok(r) if !r.command.is_empty() => r,
            _ => AgentResult {
                ok: false,
                exit_code: 1,
                error: Some(format!(
                    "the agent ended without a result; its last output: {}",
                    message.trim()
                )),
                ..AgentResult::default()
            },
        }
    }

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

    /// Typed status fields for one PVC of a `Backup`.
    pub fn snapshot_result(&self, pvc: &str) -> SnapshotResult {
        SnapshotResult {
            pvc: pvc.to_string(),
            snapshot_id: self.snapshot_id.clone(),
            files: self.files.unwrap_or(0),
            bytes_processed: self.bytes_processed.unwrap_or(0),
            bytes_added: self.bytes_added.unwrap_or(0),
            duration_seconds: self.duration_seconds.unwrap_or(0.0),
            unreadable_files: self.unreadable_files.unwrap_or(0),
        }
    }
}
