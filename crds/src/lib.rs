//! Kubernetes custom resource types for Cairn (`cairn.dev/v1alpha1`).
//!
//! Four namespaced kinds: [`BackupRepository`] (where and how to store),
//! [`BackupSchedule`] (what to protect, when, and for how long), [`Backup`] (one
//! run) and [`Restore`]. The CRD YAML under `crds/` is generated from these
//! types (`cargo run -p cairn-crds --bin crdgen`); a test fails when it is stale.
//!
//! Validation happens in three layers: schema bounds and CEL rules
//! (`x-kubernetes-validations`) reject bad specs at apply time with a readable
//! message; everything else (a missing Secret, an unreachable bucket) surfaces as
//! a status condition and an Event.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaimSpec, PodSecurityContext, ResourceRequirements, SecurityContext,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of Cairn's custom resources.
pub const GROUP: &str = "cairn.dev";
/// API version of Cairn's custom resources.
pub const VERSION: &str = "v1alpha1";

/// Annotation on a PVC that opts it out of label-selected schedules.
pub const EXCLUDE_ANNOTATION: &str = "cairn.dev/exclude";

// ---------------------------------------------------------------- shared

/// A key in a Secret in the resource's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A reference to a `BackupRepository` in the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryRef {
    /// Name of the `BackupRepository`.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Phase of a `Backup` or `Restore`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Accepted, Job not running yet.
    #[default]
    Pending,
    /// The agent Job runs.
    Running,
    /// Finished without error.
    Succeeded,
    /// Finished with an error (see `message`).
    Failed,
    /// A `Backup` whose snapshots were written but without some files the
    /// agent could not read (see `message` and each snapshot's
    /// `unreadableFiles`). Not counted as a success: the PVC's last
    /// successful backup does not advance, so its staleness alert fires.
    PartiallyFailed,
}

impl Phase {
    /// Whether the object has finished (it is left alone from then on).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed | Phase::PartiallyFailed
        )
    }
}

/// Statistics of one volume's backup, from the agent's result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotResult {
    /// The PVC backed up.
    pub pvc: String,
    /// Snapshot ID in the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Files in the snapshot.
    #[serde(default)]
    pub files: u64,
    /// Bytes of the files in the snapshot.
    #[serde(default)]
    pub bytes_processed: u64,
    /// New bytes added to the repository (before compression).
    #[serde(default)]
    pub bytes_added: u64,
    /// Wall-clock duration in seconds.
    #[serde(default)]
    pub duration_seconds: f64,
    /// Source files that could not be read (the snapshot was still written).
    #[serde(default)]
    pub unreadable_files: u64,
}

/// Overrides for the agent Jobs' pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobOverrides {
    /// Resources of the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector (merged with the placement a ReadWriteOnce PVC requires).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Priority class of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Pod security context, merged field by field into the default
    /// (non-root user and group 65532, fsGroup 65532 with
    /// `OnRootMismatch`, RuntimeDefault seccomp): set `runAsUser` and
    /// `runAsGroup` to the application's to read data only it can read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_security_context: Option<PodSecurityContext>,
    /// Container security context, merged field by field into the default
    /// (non-root, read-only root filesystem, no privilege escalation, all
    /// capabilities dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// Run the agent as root with only the capabilities its work needs
    /// (backup: `DAC_OVERRIDE` to read every file; restore: `CHOWN`,
    /// `DAC_OVERRIDE`, `FOWNER` to restore owners and modes). Allowed only
    /// in namespaces the controller's administrator lists
    /// (`CAIRN_PRIVILEGED_MOVER_NAMESPACES`, Helm value
    /// `agent.privilegedMoverNamespaces`), which must admit the `baseline`
    /// Pod Security level.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged_mover: bool,
    /// ServiceAccount of the agent's pods (for workload identity such as
    /// IRSA); its token is mounted only when this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Seconds a run may take before Kubernetes stops it (default 6 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60))]
    pub active_deadline_seconds: Option<i64>,
}

// ---------------------------------------------------------------- BackupRepository

/// Where and how backups are stored: an S3 bucket or a volume, and the
/// password that encrypts the repository.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "cairn.dev",
    version = "v1alpha1",
    kind = "BackupRepository",
    namespaced,
    status = "BackupRepositoryStatus",
    shortname = "brepo",
    category = "cairn",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Snapshots","type":"integer","jsonPath":".status.snapshotCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.s3) != has(self.volume)").message("set exactly one of s3 and volume"))]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositorySpec {
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
    /// A PersistentVolumeClaim holding the repository (for tests and small sites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeStorage>,
    /// The repository password (encryption is always on).
    pub password_secret_ref: SecretKeyRef,
    /// Scheduled maintenance (prune). The controller runs at most one
    /// maintenance Job per repository at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// Overrides for the repository's own Jobs (init/check and prune).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobOverrides>,
}

/// Scheduled repository maintenance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// When to prune (five-field cron or `@daily`, `@weekly`, ...), in UTC.
    #[schemars(length(min = 1, max = 128))]
    pub prune_schedule: String,
    /// Prune's grace period (`24h`): must exceed the longest backup. Units
    /// `w`, `d`, `h`, `min`, `s` (`90min`, `2d`; `0` deletes at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("!self.matches('[0-9]m([^io]|$)')").message("a bare m is ambiguous: write mo for months or min for minutes"),
        validation = Rule::new("self.matches('[0-9]m([^io]|$)') || self.matches('^(0|([0-9]+(w|d|h|min|s))+)$')").message("grace must look like 24h, 90min or 2d (units w, d, h, min, s)")
    )]
    #[schemars(length(max = 32))]
    pub grace: Option<String>,
    /// Unused space tolerated in kept packs (`5%`, or `unlimited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == 'unlimited' || self.matches('^[0-9]+([.][0-9]+)?%$')").message("maxUnused must look like 5% or be unlimited"))]
    #[schemars(length(max = 16))]
    pub max_unused: Option<String>,
}

/// S3 storage settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Endpoint URL (`https://minio.example:9000`); empty for AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("endpoint must be an http:// or https:// URL"))]
    #[schemars(length(max = 2048))]
    pub endpoint: Option<String>,
    /// Bucket name (it must exist).
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Region used for signing (Garage: its `s3_region`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style addressing (default: true with an endpoint, false for AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_style: Option<bool>,
    /// Secret with the access key ID and secret access key. Omit to use the
    /// pod's identity (IRSA / web identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<S3Credentials>,
    /// PEM CA bundle for a private endpoint, from a Secret or ConfigMap key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<CaBundle>,
}

/// Where S3 credentials come from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Credentials {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the access key ID (default `AWS_ACCESS_KEY_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_key: Option<String>,
    /// Key holding the secret access key (default `AWS_SECRET_ACCESS_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_key: Option<String>,
}

/// A CA bundle in a Secret or a ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.secretName) != has(self.configMapName)").message("set exactly one of secretName and configMapName"))]
#[serde(rename_all = "camelCase")]
pub struct CaBundle {
    /// Secret holding the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// ConfigMap holding the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_name: Option<String>,
    /// Key of the PEM data: a Secret or ConfigMap key name (it becomes a
    /// file name under the CA mount, so it cannot leave it).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$') && self != '.' && self != '..'").message("key must be a Secret or ConfigMap key name"))]
    pub key: String,
}

/// A repository on a PersistentVolumeClaim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStorage {
    /// The claim.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Directory inside the volume: a relative path without `..`
    /// components or control characters (the agent must not reach outside
    /// it; a NUL cuts the path short where the kernel reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)') && !self.matches('[[:cntrl:]]')").message("subPath must be a relative path without .. components or control characters"))]
    pub sub_path: Option<String>,
}

/// What [`VolumeStorage::sub_path`]'s validation rule says, for the
/// controller to say it too: objects stored before the rule existed (or
/// before it was tightened) are not checked again by the API server.
pub const SUB_PATH_RULE: &str =
    "subPath must be a relative path without .. components or control characters";

impl VolumeStorage {
    /// Why `sub_path` breaks the CRD's rule (the [`SUB_PATH_RULE`] message
    /// and the value), or `None` when it keeps it.
    pub fn invalid_sub_path(&self) -> Option<String> {
        let p = self.sub_path.as_deref()?;
        let bad = p.starts_with('/')
            || p.split('/').any(|c| c == "..")
            || p.chars().any(|c| c.is_ascii_control());
        bad.then(|| format!("{SUB_PATH_RULE} (got {p:?})"))
    }
}

/// Observed state of a `BackupRepository`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositoryStatus {
    /// `Ready`: reachable and initialised, or why not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Snapshots in the repository, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<u64>,
    /// Bytes stored, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// When the repository was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<Time>,
    /// Scheduled time of the last prune run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune_time: Option<Time>,
    /// The Job of the last prune run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune_job: Option<String>,
    /// Outcome of the last finished prune run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune_result: Option<String>,
}

// ---------------------------------------------------------------- BackupSchedule

/// Backs up PVCs on a cron schedule, then applies a retention policy.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "cairn.dev",
    version = "v1alpha1",
    kind = "BackupSchedule",
    namespaced,
    status = "BackupScheduleStatus",
    shortname = "bsched",
    category = "cairn",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Suspend","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Last","type":"date","jsonPath":".status.lastScheduleTime"}"#,
    printcolumn = r#"{"name":"Next","type":"date","jsonPath":".status.nextScheduleTime"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[x_kube(validation = Rule::new("(has(self.pvcs) && size(self.pvcs) > 0) || has(self.selector)").message("name PVCs in pvcs or select them with selector"))]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleSpec {
    /// The repository to back up into.
    pub repository: RepositoryRef,
    /// Cron expression with five fields (`0 2 * * *`), or `@hourly`, `@daily`,
    /// `@weekly`, `@monthly`.
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// IANA time zone of the schedule (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Start each run at a random delay up to this long after the scheduled
    /// time (`10min`; units `w`, `d`, `h`, `min`, `s`), so a fleet does not
    /// hit storage at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("!self.matches('[0-9]m([^io]|$)')").message("a bare m is ambiguous: write mo for months or min for minutes"),
        validation = Rule::new("self.matches('[0-9]m([^io]|$)') || self.matches('^(0|([0-9]+(w|d|h|min|s))+)$')").message("jitter must look like 30s, 10min or 1h30min (units w, d, h, min, s)")
    )]
    #[schemars(length(max = 32))]
    pub jitter: Option<String>,
    /// A run missed by more than this many seconds (controller down) is
    /// skipped, not started late (default 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,
    /// PVCs to protect, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub pvcs: Vec<String>,
    /// PVCs to protect, by label (opt one out with the annotation
    /// `cairn.dev/exclude: "true"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Retention applied after each successful backup (`cairn forget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionPolicy>,
    /// Tags for every snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Stop scheduling new runs.
    #[serde(default)]
    pub suspend: bool,
    /// Succeeded `Backup` objects to keep (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_history_limit: Option<i32>,
    /// Failed `Backup` objects to keep (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_history_limit: Option<i32>,
    /// Overrides for the agent Jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobOverrides>,
}

/// Retention, with `cairn forget`'s meaning (a snapshot kept by any rule is kept).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.keepLast) || has(self.keepHourly) || has(self.keepDaily) || has(self.keepWeekly) || has(self.keepMonthly) || has(self.keepYearly) || has(self.keepWithin) || (has(self.keepTags) && size(self.keepTags) > 0)").message("a retention policy needs at least one keep rule"))]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    /// Keep the newest N snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_hourly: Option<u32>,
    /// ... days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_daily: Option<u32>,
    /// ... ISO weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_weekly: Option<u32>,
    /// ... months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_monthly: Option<u32>,
    /// ... years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep_yearly: Option<u32>,
    /// Keep snapshots within this duration of the newest (`7d`, `1y6mo`,
    /// `12h`; units `y`, `mo`, `w`, `d`, `h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("!self.matches('[0-9]m([^io]|$)')").message("a bare m is ambiguous: write mo for months or min for minutes"),
        validation = Rule::new("self.matches('[0-9]m([^io]|$)') || self.matches('^(0|([0-9]+(y|mo|w|d|h))+)$')").message("keepWithin must look like 7d, 1y6mo or 12h (units y, mo, w, d, h)")
    )]
    #[schemars(length(max = 32))]
    pub keep_within: Option<String>,
    /// Keep snapshots with any of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<String>,
}

/// Observed state of a `BackupSchedule`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// `Ready` (spec valid, repository found) and its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the last run was scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When the next run is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// Last successful backup of each PVC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_successful: Vec<PvcBackupStatus>,
}

/// The last successful backup of one PVC.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcBackupStatus {
    /// The PVC.
    pub pvc: String,
    /// When the backup finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Snapshot ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// New bytes added to the repository.
    #[serde(default)]
    pub bytes_added: u64,
    /// Duration in seconds.
    #[serde(default)]
    pub duration_seconds: f64,
}

// ---------------------------------------------------------------- Backup

/// One backup run, created by a schedule or by hand (on-demand).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "cairn.dev",
    version = "v1alpha1",
    kind = "Backup",
    namespaced,
    status = "BackupStatus",
    category = "cairn",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Repository","type":"string","jsonPath":".spec.repository.name"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".status.snapshots[0].snapshotId"}"#,
    printcolumn = r#"{"name":"Added","type":"integer","format":"int64","jsonPath":".status.snapshots[0].bytesAdded"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a Backup's spec cannot change; create a new Backup"))]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// The repository to back up into.
    pub repository: RepositoryRef,
    /// PVCs to back up (one snapshot each).
    #[schemars(length(min = 1, max = 256))]
    pub pvcs: Vec<String>,
    /// Tags for the snapshots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Retention to apply after success (copied from the schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionPolicy>,
    /// Overrides for the agent Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobOverrides>,
}

/// Observed state of a `Backup`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// Where the run is.
    #[serde(default)]
    pub phase: Phase,
    /// Conditions (`Ready` false with a reason when the spec cannot run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Agent Jobs (one per PVC).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub job_names: Vec<String>,
    /// When the first Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the last Job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Per-PVC results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotResult>,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

// ---------------------------------------------------------------- Restore

/// Restores a snapshot into an existing PVC or a new one.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "cairn.dev",
    version = "v1alpha1",
    kind = "Restore",
    namespaced,
    status = "RestoreStatus",
    category = "cairn",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Snapshot","type":"string","jsonPath":".status.snapshotId"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.targetPvc"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a Restore's spec cannot change; create a new Restore"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpec {
    /// The repository to restore from.
    pub repository: RepositoryRef,
    /// Which snapshot.
    pub snapshot: SnapshotSelector,
    /// Where to restore to.
    pub target: RestoreTarget,
    /// Restore only paths matching these globs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Overrides for the agent Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobOverrides>,
}

/// A snapshot by ID, or the latest one of a PVC and/or with tags.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.id) != (has(self.latestOf) || (has(self.tags) && size(self.tags) > 0))").message("give either id, or latestOf and/or tags"))]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSelector {
    /// Snapshot ID (a unique prefix is enough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{8,64}$')").message("id must be 8 to 64 hex digits"))]
    #[schemars(length(max = 64))]
    pub id: Option<String>,
    /// The latest snapshot of this PVC (as backed up by Cairn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_of: Option<String>,
    /// The latest snapshot with all of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// An existing PVC, or a new PVC created from a template.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.pvc) != has(self.newPvc)").message("set exactly one of pvc and newPvc"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreTarget {
    /// Restore into this existing PVC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    /// Create this PVC and restore into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_pvc: Option<NewPvc>,
}

/// A PVC to create.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewPvc {
    /// Name of the new PVC.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its spec (storage class, size, access modes).
    pub spec: PersistentVolumeClaimSpec,
}

/// Observed state of a `Restore`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    /// Where the run is.
    #[serde(default)]
    pub phase: Phase,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The agent Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// The snapshot restored (resolved ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// The PVC restored into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pvc: Option<String>,
    /// When the Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Files restored.
    #[serde(default)]
    pub files: u64,
    /// Bytes restored.
    #[serde(default)]
    pub bytes: u64,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// All CRDs, in apply order.
pub fn all_crds(
) -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        BackupRepository::crd(),
        BackupSchedule::crd(),
        Backup::crd(),
        Restore::crd(),
    ]
}

/// The CRDs as one multi-document YAML file (what `crds/cairn.dev_crds.yaml` holds).
///
/// # Panics
/// Never for these types (serialisation of plain data).
pub fn crds_yaml() -> String {
    let mut out = String::from(
        "# Generated by `cargo run -p cairn-crds --bin crdgen` from crds/src/lib.rs. Do not edit.\n",
    );
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).expect("CRDs serialise"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_string() {
        assert_eq!(format!("{GROUP}/{VERSION}"), "cairn.dev/v1alpha1");
    }

    /// The committed YAML must equal what the types generate.
    #[test]
    fn committed_crd_yaml_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/cairn.dev_crds.yaml");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == crds_yaml(),
            "{path} is stale: run `cargo run -p cairn-crds --bin crdgen -- --write`"
        );
    }

    #[test]
    fn crds_are_namespaced_with_status_and_validation() {
        let yaml = crds_yaml();
        for kind in ["BackupRepository", "BackupSchedule", "Backup", "Restore"] {
            assert!(yaml.contains(&format!("kind: {kind}\n")), "{kind}");
        }
        assert_eq!(yaml.matches("scope: Namespaced").count(), 4);
        assert_eq!(yaml.matches("status: {}").count(), 4, "status subresources");
        assert!(yaml.contains("x-kubernetes-validations"));
        assert!(yaml.contains("set exactly one of s3 and volume"));
        assert!(yaml.contains("additionalPrinterColumns"));
    }
}
