//! Specs the CRDs' validation rules must accept or reject, shared by the
//! client-side CEL tests (`crds/tests/validation.rs`, kube's evaluator) and the
//! real-apiserver tests (`e2e/tests/apiserver.rs`, via `#[path]`), so both
//! check the same cases. Each case is a whole manifest as JSON, built from the
//! examples in `crds/examples`; `message` is what the user must see.

#![allow(dead_code)] // each includer uses a different part

use serde_json::{json, Value};

/// The example manifests, by file name.
pub fn examples() -> Vec<(&'static str, Value)> {
    vec![
        (
            "repository-s3.yaml",
            yaml(include_str!("../../examples/repository-s3.yaml")),
        ),
        (
            "schedule.yaml",
            yaml(include_str!("../../examples/schedule.yaml")),
        ),
        (
            "backup.yaml",
            yaml(include_str!("../../examples/backup.yaml")),
        ),
        (
            "restore.yaml",
            yaml(include_str!("../../examples/restore.yaml")),
        ),
    ]
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("an example parses as YAML")
}

fn example(name: &str) -> Value {
    examples()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .expect("a known example")
}

/// `obj` with the JSON object at `pointer` (under the root) changed by `f`.
fn with(
    mut obj: Value,
    pointer: &str,
    f: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> Value {
    let target = obj
        .pointer_mut(pointer)
        .and_then(Value::as_object_mut)
        .expect("the pointer names an object in the example");
    f(target);
    obj
}

fn set(obj: Value, pointer: &str, key: &str, value: Value) -> Value {
    with(obj, pointer, |m| {
        m.insert(key.into(), value);
    })
}

fn unset(obj: Value, pointer: &str, key: &str) -> Value {
    with(obj, pointer, |m| {
        m.remove(key);
    })
}

/// The message of every duration field's rule against a bare `m`.
pub const AMBIGUOUS_M: &str = "a bare m is ambiguous: write mo for months or min for minutes";

/// Durations the CRDs' rules and the protocol's parsers must judge alike
/// (`crds/tests/validation.rs` checks both on each).
pub const DURATIONS: &[&str] = &[
    "0",
    "00",
    "7d",
    "1y6mo",
    "2w12h",
    "12h",
    "24h",
    "90min",
    "1h30min",
    "45s",
    "1w1d1h1min1s",
    "3h1y",
    "0d",
    "6m",
    "1y6m",
    "1h30m",
    "0m",
    "6m3d",
    "1mo",
    "1y",
    "30s",
    "10min",
    "5",
    "d",
    "",
    "7 d",
    " 7d",
    "7D",
    "1.5d",
    "-1d",
    "+1d",
    "1mon",
    "1month",
    "7days",
    "1mi",
    "1m0",
    "a week",
    "1é",
];

/// A spec the apiserver must reject with `message`.
pub struct Invalid {
    /// What is wrong, for failure messages.
    pub what: &'static str,
    /// The whole manifest.
    pub object: Value,
    /// The rule's message (contained in the error).
    pub message: &'static str,
}

/// Variants of the examples that must be accepted (besides the examples).
pub fn valid() -> Vec<(&'static str, Value)> {
    let schedule_pvcs = set(
        unset(example("schedule.yaml"), "/spec", "selector"),
        "/spec",
        "pvcs",
        json!(["data"]),
    );
    let restore_by_id = set(
        unset(example("restore.yaml"), "/spec/snapshot", "latestOf"),
        "/spec/snapshot",
        "id",
        json!("0123abcd"),
    );
    vec![
        (
            "schedule naming PVCs instead of a selector",
            schedule_pvcs.clone(),
        ),
        (
            "schedule with jitter 1h30min",
            set(schedule_pvcs.clone(), "/spec", "jitter", json!("1h30min")),
        ),
        (
            "schedule with jitter 0",
            set(schedule_pvcs.clone(), "/spec", "jitter", json!("0")),
        ),
        (
            "schedule keeping 1y6mo (months written mo)",
            set(
                schedule_pvcs.clone(),
                "/spec",
                "retention",
                json!({"keepWithin": "1y6mo"}),
            ),
        ),
        (
            "schedule keeping 2w12h",
            set(
                schedule_pvcs.clone(),
                "/spec",
                "retention",
                json!({"keepWithin": "2w12h"}),
            ),
        ),
        (
            "repository with grace 90min",
            set(
                example("repository-s3.yaml"),
                "/spec",
                "maintenance",
                json!({"pruneSchedule": "@daily", "grace": "90min"}),
            ),
        ),
        (
            "repository with grace 0",
            set(
                example("repository-s3.yaml"),
                "/spec",
                "maintenance",
                json!({"pruneSchedule": "@daily", "grace": "0"}),
            ),
        ),
        (
            "schedule keeping only tagged snapshots",
            set(
                schedule_pvcs,
                "/spec",
                "retention",
                json!({"keepTags": ["important"]}),
            ),
        ),
        ("restore by snapshot ID", restore_by_id),
        (
            "repository with a maintenance schedule",
            set(
                example("repository-s3.yaml"),
                "/spec",
                "maintenance",
                json!({"pruneSchedule": "@weekly", "grace": "2d", "maxUnused": "2.5%"}),
            ),
        ),
        (
            "repository with a CA bundle from a ConfigMap",
            set(
                example("repository-s3.yaml"),
                "/spec/s3",
                "caBundle",
                json!({"configMapName": "ca", "key": "ca.crt"}),
            ),
        ),
        (
            "volume repository in a subdirectory whose name holds dots",
            set(
                unset(example("repository-s3.yaml"), "/spec", "s3"),
                "/spec",
                "volume",
                json!({"claimName": "repo", "subPath": "backups/..v2/cairn"}),
            ),
        ),
    ]
}

/// Specs every validation rule must reject, with the rule's message.
pub fn invalid() -> Vec<Invalid> {
    let repo = example("repository-s3.yaml");
    let schedule_pvcs = set(
        unset(example("schedule.yaml"), "/spec", "selector"),
        "/spec",
        "pvcs",
        json!(["data"]),
    );
    let restore = example("restore.yaml");
    let maintenance = |m: Value| set(repo.clone(), "/spec", "maintenance", m);
    vec![
        Invalid {
            what: "repository with both s3 and volume",
            object: set(
                repo.clone(),
                "/spec",
                "volume",
                json!({"claimName": "repo"}),
            ),
            message: "set exactly one of s3 and volume",
        },
        Invalid {
            what: "repository with neither s3 nor volume",
            object: unset(repo.clone(), "/spec", "s3"),
            message: "set exactly one of s3 and volume",
        },
        Invalid {
            what: "volume repository whose subPath climbs out",
            object: set(
                unset(repo.clone(), "/spec", "s3"),
                "/spec",
                "volume",
                json!({"claimName": "repo", "subPath": "backups/../../etc"}),
            ),
            message: "subPath must be a relative path without .. components or control characters",
        },
        Invalid {
            what: "volume repository with an absolute subPath",
            object: set(
                unset(repo.clone(), "/spec", "s3"),
                "/spec",
                "volume",
                json!({"claimName": "repo", "subPath": "/etc"}),
            ),
            message: "subPath must be a relative path without .. components or control characters",
        },
        Invalid {
            what: "volume repository whose subPath holds a NUL",
            object: set(
                unset(repo.clone(), "/spec", "s3"),
                "/spec",
                "volume",
                json!({"claimName": "repo", "subPath": "backups\u{0}/cairn"}),
            ),
            message: "subPath must be a relative path without .. components or control characters",
        },
        Invalid {
            what: "volume repository whose subPath holds a newline",
            object: set(
                unset(repo.clone(), "/spec", "s3"),
                "/spec",
                "volume",
                json!({"claimName": "repo", "subPath": "backups\ncairn"}),
            ),
            message: "subPath must be a relative path without .. components or control characters",
        },
        Invalid {
            what: "CA bundle key that leaves the CA mount",
            object: set(
                repo.clone(),
                "/spec/s3",
                "caBundle",
                json!({"secretName": "ca", "key": "../../data/fifo"}),
            ),
            message: "key must be a Secret or ConfigMap key name",
        },
        Invalid {
            what: "S3 endpoint without a scheme",
            object: set(
                repo.clone(),
                "/spec/s3",
                "endpoint",
                json!("s3.example.net"),
            ),
            message: "endpoint must be an http:// or https:// URL",
        },
        Invalid {
            what: "CA bundle naming both a Secret and a ConfigMap",
            object: set(
                repo.clone(),
                "/spec/s3",
                "caBundle",
                json!({"secretName": "ca", "configMapName": "ca", "key": "ca.crt"}),
            ),
            message: "set exactly one of secretName and configMapName",
        },
        Invalid {
            what: "schedule with neither pvcs nor selector",
            object: unset(example("schedule.yaml"), "/spec", "selector"),
            message: "name PVCs in pvcs or select them with selector",
        },
        Invalid {
            what: "schedule jitter in words",
            object: set(
                schedule_pvcs.clone(),
                "/spec",
                "jitter",
                json!("ten minutes"),
            ),
            message: "jitter must look like 30s, 10min or 1h30min",
        },
        Invalid {
            what: "empty retention policy",
            object: set(schedule_pvcs.clone(), "/spec", "retention", json!({})),
            message: "a retention policy needs at least one keep rule",
        },
        Invalid {
            what: "schedule jitter 10m (bare m)",
            object: set(schedule_pvcs.clone(), "/spec", "jitter", json!("10m")),
            message: AMBIGUOUS_M,
        },
        Invalid {
            what: "keepWithin 6m (restic's months, or minutes?)",
            object: set(
                schedule_pvcs.clone(),
                "/spec",
                "retention",
                json!({"keepWithin": "6m"}),
            ),
            message: AMBIGUOUS_M,
        },
        Invalid {
            what: "keepWithin 1y6m (bare m after a year)",
            object: set(
                schedule_pvcs.clone(),
                "/spec",
                "retention",
                json!({"keepWithin": "1y6m"}),
            ),
            message: AMBIGUOUS_M,
        },
        Invalid {
            what: "keepWithin in minutes (finer than restic's hours)",
            object: set(
                schedule_pvcs.clone(),
                "/spec",
                "retention",
                json!({"keepWithin": "90min"}),
            ),
            message: "keepWithin must look like 7d, 1y6mo or 12h",
        },
        Invalid {
            what: "a Backup's keepWithin 3m",
            object: set(
                example("backup.yaml"),
                "/spec",
                "retention",
                json!({"keepWithin": "3m"}),
            ),
            message: AMBIGUOUS_M,
        },
        Invalid {
            what: "keepWithin in words",
            object: set(
                schedule_pvcs,
                "/spec",
                "retention",
                json!({"keepWithin": "a week"}),
            ),
            message: "keepWithin must look like 7d, 1y6mo or 12h",
        },
        Invalid {
            what: "restore naming both an ID and latestOf",
            object: set(restore.clone(), "/spec/snapshot", "id", json!("0123abcd")),
            message: "give either id, or latestOf and/or tags",
        },
        Invalid {
            what: "restore ID that is not hex",
            object: set(
                unset(restore.clone(), "/spec/snapshot", "latestOf"),
                "/spec/snapshot",
                "id",
                json!("latest"),
            ),
            message: "id must be 8 to 64 hex digits",
        },
        Invalid {
            what: "restore target with both pvc and newPvc",
            object: set(restore, "/spec/target", "pvc", json!("existing")),
            message: "set exactly one of pvc and newPvc",
        },
        Invalid {
            what: "maxUnused in words",
            object: maintenance(
                json!({"pruneSchedule": "@weekly", "grace": "2d", "maxUnused": "lots"}),
            ),
            message: "maxUnused must look like 5% or be unlimited",
        },
        Invalid {
            what: "grace 90m (bare m)",
            object: maintenance(json!({"pruneSchedule": "@weekly", "grace": "90m"})),
            message: AMBIGUOUS_M,
        },
        Invalid {
            what: "grace in months (no fixed length)",
            object: maintenance(json!({"pruneSchedule": "@weekly", "grace": "1mo"})),
            message: "grace must look like 24h, 90min or 2d",
        },
        Invalid {
            what: "grace in words",
            object: maintenance(
                json!({"pruneSchedule": "@weekly", "grace": "a day", "maxUnused": "unlimited"}),
            ),
            message: "grace must look like 24h, 90min or 2d",
        },
    ]
}

/// An update the apiserver must reject: `old` is created, then `new` replaces it.
pub struct InvalidUpdate {
    /// What is wrong.
    pub what: &'static str,
    /// The object as created.
    pub old: Value,
    /// The changed object.
    pub new: Value,
    /// The rule's message.
    pub message: &'static str,
}

/// Spec changes that must be rejected on update.
pub fn invalid_updates() -> Vec<InvalidUpdate> {
    let backup = example("backup.yaml");
    let restore = example("restore.yaml");
    vec![
        InvalidUpdate {
            what: "a Backup's PVC list changed",
            old: backup.clone(),
            new: set(backup, "/spec", "pvcs", json!(["postgres-data", "other"])),
            message: "a Backup's spec cannot change; create a new Backup",
        },
        InvalidUpdate {
            what: "a Restore's snapshot changed",
            old: restore.clone(),
            new: set(restore, "/spec/snapshot", "latestOf", json!("other")),
            message: "a Restore's spec cannot change; create a new Restore",
        },
    ]
}
