//! The agent's result: one JSON object that `cairn agent ...` prints on
//! stdout and writes as its container's termination message, and that the
//! controller reads from the Pod status. The wire format is documented in
//! docs/CRDS.md ("Agent result"): camelCase keys, absent keys for what a
//! command does not report.

use serde::{Deserialize, Serialize};

/// The agent's result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentResult {
    /// `init`, `backup`, `restore` or `prune`.
    pub command: String,
    /// False when the run failed (exit code 1).
    pub ok: bool,
    /// 0 ok, 1 failed, 3 snapshot written without some unreadable files.
    pub exit_code: u8,
    /// Snapshot written or restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Files in the snapshot / restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Bytes of those files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_processed: Option<u64>,
    /// New bytes added to the repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<u64>,
    /// Bytes uploaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_stored: Option<u64>,
    /// Duration of the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Source files that could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable_files: Option<u64>,
    /// Snapshots removed by the retention policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots_forgotten: Option<u64>,
    /// `init`: whether the repository was created now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initialized: Option<bool>,
    /// `init`, `prune`: snapshots in the repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<u64>,
    /// `init`, `prune`: bytes stored in the repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// `prune`: packs deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packs_deleted: Option<u64>,
    /// `prune`: bytes deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_deleted: Option<u64>,
    /// `prune`: packs marked for deletion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packs_marked: Option<u64>,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
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

    /// The JSON the agent writes (one line).
    pub fn to_json(&self) -> String {
        // A struct of strings, numbers and booleans always serialises; a
        // non-finite duration becomes null.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// One result with every field set. A field added to `AgentResult`
    /// without being added here fails to compile (no `..Default`).
    fn full() -> AgentResult {
        AgentResult {
            command: "backup".into(),
            ok: true,
            exit_code: 3,
            snapshot_id: Some("31c9af18".into()),
            files: Some(2),
            bytes_processed: Some(3_145_734),
            bytes_added: Some(3_147_527),
            bytes_stored: Some(3_157_311),
            duration_seconds: Some(0.25),
            unreadable_files: Some(1),
            snapshots_forgotten: Some(4),
            initialized: Some(true),
            snapshots: Some(9),
            stored_bytes: Some(1_000),
            packs_deleted: Some(5),
            bytes_deleted: Some(80_000_000),
            packs_marked: Some(2),
            error: Some("1 files could not be read".into()),
        }
    }

    #[test]
    fn every_field_round_trips_under_its_documented_key() {
        let wire = json!({
            "command": "backup",
            "ok": true,
            "exitCode": 3,
            "snapshotId": "31c9af18",
            "files": 2,
            "bytesProcessed": 3_145_734,
            "bytesAdded": 3_147_527,
            "bytesStored": 3_157_311,
            "durationSeconds": 0.25,
            "unreadableFiles": 1,
            "snapshotsForgotten": 4,
            "initialized": true,
            "snapshots": 9,
            "storedBytes": 1_000,
            "packsDeleted": 5,
            "bytesDeleted": 80_000_000,
            "packsMarked": 2,
            "error": "1 files could not be read",
        });
        let r = full();
        let written: Value = serde_json::from_str(&r.to_json()).unwrap();
        // Every key, none more: a new field must be listed in `wire` too.
        assert_eq!(written, wire);
        assert_eq!(AgentResult::parse(&r.to_json()), r);
        assert_eq!(serde_json::from_value::<AgentResult>(wire).unwrap(), r);
    }

    #[test]
    fn absent_fields_are_left_out() {
        let r = AgentResult {
            command: "init".into(),
            ok: true,
            initialized: Some(false),
            ..AgentResult::default()
        };
        assert_eq!(
            r.to_json(),
            r#"{"command":"init","ok":true,"exitCode":0,"initialized":false}"#
        );
        assert_eq!(AgentResult::parse(&r.to_json()), r);
    }

    #[test]
    fn what_earlier_agents_wrote_is_read() {
        // docs/CRDS.md's examples.
        let r = AgentResult::parse(
            r#"{"command":"backup","ok":true,"exitCode":3,"snapshotId":"31c9af18","files":2,"bytesProcessed":3145734,"bytesAdded":3147527,"bytesStored":3157311,"durationSeconds":0.03,"unreadableFiles":1,"snapshotsForgotten":0}"#,
        );
        assert_eq!((r.ok, r.exit_code, r.files), (true, 3, Some(2)));
        // Keys a newer agent adds are ignored.
        let r = AgentResult::parse(r#" {"command":"prune","ok":true,"exitCode":0,"newKey":1}"#);
        assert_eq!((r.command.as_str(), r.ok), ("prune", true));
    }

    #[test]
    fn anything_else_is_a_failure_carrying_the_text() {
        for text in [
            "thread 'main' panicked\nout of memory",
            "",
            "{}",
            r#"{"ok":true}"#,
            r#"{"command":"backup","exitCode":"three"}"#,
            "[1,2]",
        ] {
            let r = AgentResult::parse(text);
            assert!(!r.ok && r.exit_code == 1, "{text:?}");
            let e = r.error.unwrap_or_default();
            assert!(e.contains(text.trim()), "{text:?}: {e}");
        }
    }
}
