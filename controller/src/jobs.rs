//! The agent Jobs the controller creates: one per PVC of a `Backup`, one per
//! `Restore`. Pure functions from the resources to a `Job`, so every field is
//! tested without a cluster.

use std::collections::BTreeMap;

use cairn_crds::{Backup, BackupRepository, JobOverrides, Restore, RetentionPolicy};
use cairn_protocol::{
    AgentCommand, BackupArgs, InitArgs, KeepArgs, PruneOpts, RestoreArgs, DEFAULT_GRACE,
    DEFAULT_MAX_UNUSED,
};
use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec,
    SELinuxOptions, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume,
    VolumeMount, WindowsSecurityContextOptions,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

/// Controller-wide settings for Jobs.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Agent image.
    pub image: String,
    /// Image pull policy.
    pub pull_policy: String,
    /// Seconds before Kubernetes stops a run, unless overridden (6 h).
    pub active_deadline_seconds: i64,
    /// Seconds a finished Job stays (its result is already in status).
    pub ttl_seconds_after_finished: i32,
    /// Retries of a failed pod.
    pub backoff_limit: i32,
    /// Backup Jobs running at once against one repository.
    pub max_per_repository: usize,
    /// Backup Jobs running at once on one node (counted for node-pinned Jobs).
    pub max_per_node: usize,
    /// Namespaces whose Jobs may use `job.privilegedMover` (`*`: all).
    pub privileged_mover_namespaces: Vec<String>,
}

impl JobConfig {
    /// Whether Jobs in `ns` may run the privileged mover.
    pub fn privileged_mover_allowed(&self, ns: &str) -> bool {
        self.privileged_mover_namespaces
            .iter()
            .any(|n| n == "*" || n == ns)
    }
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            image: "ghcr.io/cairn-backup/cairn:latest".into(),
            pull_policy: "IfNotPresent".into(),
            active_deadline_seconds: 6 * 3600,
            ttl_seconds_after_finished: 24 * 3600,
            backoff_limit: 1,
            max_per_repository: 4,
            max_per_node: 2,
            privileged_mover_namespaces: Vec::new(),
        }
    }
}

/// Where a source or target volume is mounted in the agent container.
pub const DATA_MOUNT: &str = "/data";
const REPO_MOUNT: &str = "/repository";
const CA_MOUNT: &str = "/etc/cairn/ca";

/// Label keys set on Jobs and their pods.
pub mod labels {
    /// `app.kubernetes.io/name`
    pub const NAME: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/component`
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// `app.kubernetes.io/managed-by`
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Name of the `Backup` a Job belongs to.
    pub const BACKUP: &str = "cairn.dev/backup";
    /// Name of the `Restore` a Job belongs to.
    pub const RESTORE: &str = "cairn.dev/restore";
    /// The PVC a Job works on.
    pub const PVC: &str = "cairn.dev/pvc";
    /// The repository a Job writes to.
    pub const REPOSITORY: &str = "cairn.dev/repository";
}

/// A Kubernetes name of at most 63 characters: `prefix` when it fits, else a
/// truncated prefix and a hash of the whole, so distinct inputs stay distinct.
pub fn bounded_name(prefix: &str) -> String {
    if prefix.len() <= 63 {
        return prefix.to_string();
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in prefix.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let head: String = prefix.chars().take(54).collect();
    format!("{}-{h:08x}", head.trim_end_matches(['-', '.', '_']))
}

/// A label value for an object name: names may be 253 characters long,
/// label values only 63 (longer ones are bounded as [`bounded_name`] does,
/// so they stay distinct and selectors built the same way still match).
pub fn label_value(name: &str) -> String {
    bounded_name(name)
}

/// Whether `job` is `owner`'s: its controller owner reference carries the
/// owner's UID. A Job under the name that an object's Job must have, owned by
/// another UID (or by nobody: orphaned), was left by an earlier object of the
/// same name, deleted and created again as GitOps does: adopting it would
/// report the old object's result as the new one's. An owner without a UID
/// (only in the in-process fake API) takes the Job as its own.
pub fn owned_by<K: Resource<DynamicType = ()>>(job: &Job, owner: &K) -> bool {
    let Some(uid) = owner.meta().uid.as_deref() else {
        return true;
    };
    job.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// Delete a Job left by an earlier object of the same name, with its pods;
/// exactly that Job (the delete is conditional on its UID).
///
/// # Errors
/// API errors other than "already gone" or "replaced meanwhile".
pub async fn delete_stale(api: &kube::Api<Job>, job: &Job) -> Result<(), kube::Error> {
    let params = kube::api::DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        preconditions: Some(kube::api::Preconditions {
            uid: job.metadata.uid.clone(),
            resource_version: None,
        }),
        ..kube::api::DeleteParams::default()
    };
    let name = job.metadata.name.as_deref().unwrap_or_default();
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Name of the Job that backs up `pvc` for `backup` (deterministic: a second
/// reconcile finds it instead of creating a duplicate).
pub fn backup_job_name(backup: &str, pvc: &str) -> String {
    bounded_name(&format!("cairn-backup-{backup}-{pvc}"))
}

/// Name of the Job of a `Restore`.
pub fn restore_job_name(restore: &str) -> String {
    bounded_name(&format!("cairn-restore-{restore}"))
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// Environment, volumes and mounts that reach the repository. Secrets are
/// passed by reference (`secretKeyRef`), never as values or arguments.
pub fn repository_access(repo: &BackupRepository) -> (Vec<EnvVar>, Vec<Volume>, Vec<VolumeMount>) {
    let spec = &repo.spec;
    let mut envs = vec![secret_env(
        "CAIRN_PASSWORD",
        &spec.password_secret_ref.name,
        &spec.password_secret_ref.key,
    )];
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if let Some(s3) = &spec.s3 {
        let mut loc = String::from("s3:");
        if let Some(ep) = &s3.endpoint {
            loc.push_str(ep.trim_end_matches('/'));
            loc.push('/');
        }
        loc.push_str(&s3.bucket);
        if let Some(p) = s3
            .prefix
            .as_deref()
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty())
        {
            loc.push('/');
            loc.push_str(p);
        }
        envs.push(env("CAIRN_REPOSITORY", loc));
        if let Some(r) = &s3.region {
            envs.push(env("CAIRN_S3_REGION", r.clone()));
        }
        if let Some(ps) = s3.path_style {
            envs.push(env("CAIRN_S3_PATH_STYLE", ps.to_string()));
        }
        if let Some(c) = &s3.credentials_secret_ref {
            envs.push(secret_env(
                "AWS_ACCESS_KEY_ID",
                &c.name,
                c.access_key_id_key
                    .as_deref()
                    .unwrap_or("AWS_ACCESS_KEY_ID"),
            ));
            envs.push(secret_env(
                "AWS_SECRET_ACCESS_KEY",
                &c.name,
                c.secret_access_key_key
                    .as_deref()
                    .unwrap_or("AWS_SECRET_ACCESS_KEY"),
            ));
        }
        if let Some(ca) = &s3.ca_bundle {
            volumes.push(Volume {
                name: "ca".into(),
                secret: ca.secret_name.as_ref().map(|n| SecretVolumeSource {
                    secret_name: Some(n.clone()),
                    ..SecretVolumeSource::default()
                }),
                config_map: ca.config_map_name.as_ref().map(|n| ConfigMapVolumeSource {
                    name: n.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: "ca".into(),
                mount_path: CA_MOUNT.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
            envs.push(env("CAIRN_S3_CA_BUNDLE", format!("{CA_MOUNT}/{}", ca.key)));
        }
    } else if let Some(v) = &spec.volume {
        let path = match v
            .sub_path
            .as_deref()
            .map(|p| p.trim_matches('/'))
            .filter(|p| !p.is_empty())
        {
            Some(p) => format!("{REPO_MOUNT}/{p}"),
            None => REPO_MOUNT.to_string(),
        };
        envs.push(env("CAIRN_REPOSITORY", path));
        volumes.push(Volume {
            name: "repository".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: v.claim_name.clone(),
                read_only: Some(false),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "repository".into(),
            mount_path: REPO_MOUNT.into(),
            ..VolumeMount::default()
        });
    }
    (envs, volumes, mounts)
}

/// A custom resource's retention policy as the agent's `--keep-*` options
/// (an absent count keeps nothing by its rule, as zero does).
pub fn retention(r: &RetentionPolicy) -> KeepArgs {
    KeepArgs {
        keep_last: r.keep_last.unwrap_or(0),
        keep_hourly: r.keep_hourly.unwrap_or(0),
        keep_daily: r.keep_daily.unwrap_or(0),
        keep_weekly: r.keep_weekly.unwrap_or(0),
        keep_monthly: r.keep_monthly.unwrap_or(0),
        keep_yearly: r.keep_yearly.unwrap_or(0),
        keep_within: r.keep_within.clone(),
        keep_tags: r.keep_tags.clone(),
    }
}

fn owner_ref<K: Resource<DynamicType = ()>>(obj: &K) -> Option<OwnerReference> {
    let mut r = obj.controller_owner_ref(&())?;
    r.block_owner_deletion = Some(true);
    Some(r)
}

/// What a Job does with its data volume: the privileged mover gets only
/// the capabilities that work needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Reads a PVC (mounted read-only).
    Backup,
    /// Writes into a PVC, restoring owners and modes.
    Restore,
    /// Only the repository (init, check, prune).
    Repository,
}

/// The user and group of the unprivileged agent (the image's `nonroot`).
pub const AGENT_UID: i64 = 65532;

/// Why `o` may not run in namespace `ns`, if it may not: a privileged mover,
/// or security overrides that give the agent more than the restricted Pod
/// Security level allows (root, privilege escalation, added capabilities,
/// a privileged container, no seccomp), asked for where the controller's
/// administrator did not allow it. Without this check, whoever may create a
/// Backup or Restore could have the controller start a root pod reading
/// every file of the namespace's volumes, even without the right to create
/// pods themselves.
pub fn privileged_mover_refused(
    o: Option<&JobOverrides>,
    ns: &str,
    cfg: &JobConfig,
) -> Option<String> {
    let o = o?;
    if cfg.privileged_mover_allowed(ns) {
        return None;
    }
    let what = if o.privileged_mover {
        Some("job.privilegedMover".to_string())
    } else {
        elevated(o)
    }?;
    Some(format!(
        "{what} is not allowed in namespace {ns}: the controller's administrator lists the \
         namespaces whose agent Jobs may run with more than restricted Pod Security allows \
         (CAIRN_PRIVILEGED_MOVER_NAMESPACES, Helm value agent.privilegedMoverNamespaces)"
    ))
}

/// The sysctls the `baseline` (and `restricted`) Pod Security levels allow.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_wmem",
];

/// The SELinux types Pod Security admits (with no user or role set).
const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// The first override that lifts the agent above restricted Pod Security.
/// `e2e/tests/apiserver.rs` checks it against the API server's Pod Security
/// admission: every override it lets through is admitted under
/// `restricted`, and every one it catches is refused there.
fn elevated(o: &JobOverrides) -> Option<String> {
    let pod = o.pod_security_context.as_ref();
    let c = o.security_context.as_ref();
    let unconfined = |s: Option<&SeccompProfile>| s.is_some_and(|s| s.type_ == "Unconfined");
    let selinux = |s: Option<&SELinuxOptions>| {
        s.is_some_and(|s| {
            s.user.as_deref().is_some_and(|u| !u.is_empty())
                || s.role.as_deref().is_some_and(|r| !r.is_empty())
                || s.type_
                    .as_deref()
                    .is_some_and(|t| !SELINUX_TYPES.contains(&t))
        })
    };
    let apparmor = |a: Option<&AppArmorProfile>| {
        a.is_some_and(|a| a.type_ != "RuntimeDefault" && a.type_ != "Localhost")
    };
    let host_process =
        |w: Option<&WindowsSecurityContextOptions>| w.and_then(|w| w.host_process) == Some(true);
    let caps = c.and_then(|c| c.capabilities.as_ref());
    let checks = [
        (
            pod.and_then(|p| p.run_as_user) == Some(0) || c.and_then(|c| c.run_as_user) == Some(0),
            "runAsUser 0",
        ),
        (
            pod.and_then(|p| p.run_as_non_root) == Some(false)
                || c.and_then(|c| c.run_as_non_root) == Some(false),
            "runAsNonRoot false",
        ),
        (c.and_then(|c| c.privileged) == Some(true), "privileged"),
        (
            c.and_then(|c| c.allow_privilege_escalation) == Some(true),
            "allowPrivilegeEscalation",
        ),
        (
            c.and_then(|c| c.capabilities.as_ref())
                .and_then(|k| k.add.as_ref())
                .is_some_and(|a| a.iter().any(|cap| cap != "NET_BIND_SERVICE")),
            "capabilities.add",
        ),
        (
            unconfined(pod.and_then(|p| p.seccomp_profile.as_ref()))
                || unconfined(c.and_then(|c| c.seccomp_profile.as_ref())),
            "an Unconfined seccomp profile",
        ),
        (
            caps.and_then(|k| k.drop.as_ref())
                .is_some_and(|d| !d.iter().any(|cap| cap == "ALL")),
            "capabilities.drop without ALL",
        ),
        (
            selinux(pod.and_then(|p| p.se_linux_options.as_ref()))
                || selinux(c.and_then(|c| c.se_linux_options.as_ref())),
            "seLinuxOptions (a user, a role or a type other than the container types)",
        ),
        (
            apparmor(pod.and_then(|p| p.app_armor_profile.as_ref()))
                || apparmor(c.and_then(|c| c.app_armor_profile.as_ref())),
            "an Unconfined AppArmor profile",
        ),
        (
            pod.and_then(|p| p.sysctls.as_ref())
                .is_some_and(|s| s.iter().any(|s| !SAFE_SYSCTLS.contains(&s.name.as_str()))),
            "an unsafe sysctl",
        ),
        (
            c.and_then(|c| c.proc_mount.as_deref())
                .is_some_and(|m| m != "Default"),
            "procMount",
        ),
        (
            host_process(pod.and_then(|p| p.windows_options.as_ref()))
                || host_process(c.and_then(|c| c.windows_options.as_ref())),
            "windowsOptions.hostProcess",
        ),
    ];
    checks
        .iter()
        .find(|(hit, _)| *hit)
        .map(|(_, what)| format!("job security override {what}"))
}

/// `over`'s fields set on top of `base`'s, objects merged field by field at
/// every depth (lists replaced whole): an override changes what it names
/// and keeps the rest of the secure default, the seccomp profile and
/// `capabilities.drop: [ALL]` beside an added capability included.
fn merged<T: serde::Serialize + serde::de::DeserializeOwned + Clone>(
    base: T,
    over: Option<&T>,
) -> T {
    fn merge(b: &mut serde_json::Value, o: serde_json::Value) {
        match (b, o) {
            (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
                for (k, v) in o {
                    if v.is_null() {
                        continue;
                    }
                    match b.get_mut(&k) {
                        Some(slot) => merge(slot, v),
                        None => {
                            b.insert(k, v);
                        }
                    }
                }
            }
            (slot, v) => *slot = v,
        }
    }
    let Some(over) = over else { return base };
    let (Ok(mut b), Ok(o)) = (serde_json::to_value(&base), serde_json::to_value(over)) else {
        return base;
    };
    merge(&mut b, o);
    serde_json::from_value(b).unwrap_or(base)
}

/// The pod and container security contexts of a Job: restricted Pod
/// Security by default (non-root 65532, fsGroup 65532 applied only when the
/// volume root does not match, RuntimeDefault seccomp, read-only root
/// filesystem, all capabilities dropped); with the privileged mover, root
/// with just the capabilities `work` needs (within `baseline`); then the
/// user's overrides, merged field by field.
pub fn security(
    work: Work,
    o: Option<&JobOverrides>,
    privileged: bool,
) -> (PodSecurityContext, SecurityContext) {
    let seccomp = Some(SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    });
    let (pod, container) = if privileged {
        let add: &[&str] = match work {
            Work::Backup => &["DAC_OVERRIDE"],
            Work::Restore => &["CHOWN", "DAC_OVERRIDE", "FOWNER"],
            Work::Repository => &[],
        };
        (
            PodSecurityContext {
                run_as_non_root: Some(false),
                run_as_user: Some(0),
                run_as_group: Some(0),
                seccomp_profile: seccomp,
                ..PodSecurityContext::default()
            },
            SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: (!add.is_empty()).then(|| add.iter().map(|c| c.to_string()).collect()),
                }),
                ..SecurityContext::default()
            },
        )
    } else {
        (
            PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(AGENT_UID),
                run_as_group: Some(AGENT_UID),
                // Lets the agent write the root of a new volume (restore,
                // a repository on block storage); read-only mounts are left
                // alone by the kubelet.
                fs_group: Some(AGENT_UID),
                fs_group_change_policy: Some("OnRootMismatch".into()),
                seccomp_profile: seccomp,
                ..PodSecurityContext::default()
            },
            SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                ..SecurityContext::default()
            },
        )
    };
    (
        merged(pod, o.and_then(|o| o.pod_security_context.as_ref())),
        merged(container, o.and_then(|o| o.security_context.as_ref())),
    )
}

/// Everything a Job needs besides its purpose.
struct JobParts<'a> {
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    owner: Option<OwnerReference>,
    args: Vec<String>,
    repo: &'a BackupRepository,
    /// The volume to back up or restore into, and whether read-only.
    data: Option<(String, bool)>,
    node: Option<String>,
    overrides: Option<&'a JobOverrides>,
    work: Work,
}

fn build(p: JobParts<'_>, cfg: &JobConfig) -> Job {
    let (mut envs, mut volumes, mut mounts) = repository_access(p.repo);
    if p.work == Work::Restore {
        // A restore only reads the repository. Read-only, its volume is also
        // left alone by the kubelet when the restore runs with another
        // fsGroup (the application's), instead of being re-grouped whole.
        for v in volumes.iter_mut().filter(|v| v.name == "repository") {
            if let Some(c) = v.persistent_volume_claim.as_mut() {
                c.read_only = Some(true);
            }
        }
        for m in mounts.iter_mut().filter(|m| m.name == "repository") {
            m.read_only = Some(true);
        }
    }
    // Read-only root filesystem: the metadata cache and temp files go to emptyDirs.
    envs.push(env("CAIRN_CACHE_DIR", "/cache"));
    envs.push(env("HOME", "/tmp"));
    envs.push(env("TMPDIR", "/tmp"));
    for (name, path) in [("cache", "/cache"), ("tmp", "/tmp")] {
        volumes.push(Volume {
            name: name.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..VolumeMount::default()
        });
    }
    if let Some((claim, read_only)) = p.data {
        volumes.push(Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim,
                read_only: Some(read_only),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "data".into(),
            mount_path: DATA_MOUNT.into(),
            read_only: Some(read_only),
            ..VolumeMount::default()
        });
    }
    let o = p.overrides;
    let privileged = o.is_some_and(|o| o.privileged_mover)
        && p.namespace
            .as_deref()
            .is_some_and(|ns| cfg.privileged_mover_allowed(ns));
    let (mut pod_security, security) = security(p.work, o, privileged);
    if p.repo.spec.volume.is_some() {
        // The repository volume is shared through group 65532 (its fsGroup
        // when created): an agent running as the application's user and
        // group still reads and writes it.
        let groups = pod_security
            .supplemental_groups
            .get_or_insert_with(Vec::new);
        if !groups.contains(&AGENT_UID) {
            groups.push(AGENT_UID);
        }
    }
    let service_account = o.and_then(|o| o.service_account_name.clone());
    let mut node_selector = o.map(|o| o.node_selector.clone()).unwrap_or_default();
    if let Some(node) = p.node {
        // A ReadWriteOnce volume in use can only be mounted on its pod's node.
        node_selector.insert("kubernetes.io/hostname".into(), node);
    }
    Job {
        metadata: ObjectMeta {
            name: Some(p.name),
            namespace: p.namespace,
            labels: Some(p.labels.clone()),
            owner_references: p.owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(cfg.backoff_limit),
            active_deadline_seconds: Some(
                o.and_then(|o| o.active_deadline_seconds)
                    .unwrap_or(cfg.active_deadline_seconds),
            ),
            ttl_seconds_after_finished: Some(cfg.ttl_seconds_after_finished),
            // Exit 3 means the snapshot was written (some files unreadable):
            // retrying would only write another one.
            pod_failure_policy: Some(PodFailurePolicy {
                rules: vec![PodFailurePolicyRule {
                    action: "FailJob".into(),
                    on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                        container_name: Some("agent".into()),
                        operator: "In".into(),
                        values: vec![3],
                    }),
                    on_pod_conditions: None,
                }],
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(p.labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    // A token only for a ServiceAccount the user chose (workload identity).
                    automount_service_account_token: Some(service_account.is_some()),
                    service_account_name: service_account,
                    enable_service_links: Some(false),
                    security_context: Some(pod_security),
                    node_selector: (!node_selector.is_empty()).then_some(node_selector),
                    tolerations: o.map(|o| o.tolerations.clone()).filter(|t| !t.is_empty()),
                    priority_class_name: o.and_then(|o| o.priority_class_name.clone()),
                    volumes: Some(volumes),
                    containers: vec![Container {
                        name: "agent".into(),
                        image: Some(cfg.image.clone()),
                        image_pull_policy: Some(cfg.pull_policy.clone()),
                        args: Some(p.args),
                        env: Some(envs),
                        volume_mounts: Some(mounts),
                        resources: o.and_then(|o| o.resources.clone()),
                        security_context: Some(security),
                        termination_message_policy: Some("FallbackToLogsOnError".into()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

fn base_labels(component: &str, repo: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_string(), "cairn".to_string()),
        (labels::COMPONENT.to_string(), component.to_string()),
        (
            labels::MANAGED_BY.to_string(),
            "cairn-controller".to_string(),
        ),
        (labels::REPOSITORY.to_string(), label_value(repo)),
    ])
}

/// The Job that backs up `pvc` for `backup`; `node` pins it to the node where
/// a pod already mounts a ReadWriteOnce `pvc`.
pub fn backup_job(
    backup: &Backup,
    repo: &BackupRepository,
    pvc: &str,
    node: Option<String>,
    cfg: &JobConfig,
) -> Job {
    let name = backup.name_any();
    let namespace = backup.namespace();
    let mut labels = base_labels("backup", &repo.name_any());
    labels.insert(labels::BACKUP.into(), label_value(&name));
    labels.insert(labels::PVC.into(), label_value(pvc));
    let args = AgentCommand::Backup(BackupArgs {
        source: DATA_MOUNT.into(),
        id: format!("{}/{pvc}", namespace.as_deref().unwrap_or("default")),
        tags: backup.spec.tags.clone(),
        ignore_inode: false,
        keep: backup
            .spec
            .retention
            .as_ref()
            .map(retention)
            .unwrap_or_default(),
    })
    .to_args();
    build(
        JobParts {
            name: backup_job_name(&name, pvc),
            namespace,
            labels,
            owner: owner_ref(backup),
            args,
            repo,
            data: Some((pvc.to_string(), true)),
            node,
            overrides: backup.spec.job.as_ref(),
            work: Work::Backup,
        },
        cfg,
    )
}

/// The Job of a `Restore` into `target_pvc`.
pub fn restore_job(
    restore: &Restore,
    repo: &BackupRepository,
    target_pvc: &str,
    node: Option<String>,
    cfg: &JobConfig,
) -> Job {
    let name = restore.name_any();
    let namespace = restore.namespace();
    let mut labels = base_labels("restore", &repo.name_any());
    labels.insert(labels::RESTORE.into(), label_value(&name));
    labels.insert(labels::PVC.into(), label_value(target_pvc));
    let sel = &restore.spec.snapshot;
    let args = AgentCommand::Restore(RestoreArgs {
        target: DATA_MOUNT.into(),
        snapshot: sel.id.clone(),
        latest_of: sel
            .latest_of
            .as_ref()
            .map(|of| format!("{}/{of}", namespace.as_deref().unwrap_or("default"))),
        tags: sel.tags.clone(),
        includes: restore.spec.include.clone(),
    })
    .to_args();
    let mut job = build(
        JobParts {
            name: restore_job_name(&name),
            namespace,
            labels,
            owner: owner_ref(restore),
            args,
            repo,
            data: Some((target_pvc.to_string(), false)),
            node,
            overrides: restore.spec.job.as_ref(),
            work: Work::Restore,
        },
        cfg,
    );
    // An existing volume holds the application's files: the default fsGroup
    // would make the kubelet re-group and open every one of them to group
    // 65532. Only a new volume (or the user's own fsGroup) gets one.
    let own_fs_group = restore
        .spec
        .job
        .as_ref()
        .and_then(|o| o.pod_security_context.as_ref())
        .is_some_and(|p| p.fs_group.is_some());
    if restore.spec.target.new_pvc.is_none() && !own_fs_group {
        if let Some(p) = job
            .spec
            .as_mut()
            .and_then(|s| s.template.spec.as_mut())
            .and_then(|p| p.security_context.as_mut())
        {
            p.fs_group = None;
            p.fs_group_change_policy = None;
        }
    }
    job
}

/// Name of the Job that initialises or checks a repository at a generation of
/// its spec (a changed spec is checked again).
pub fn repository_job_name(repo: &str, generation: i64) -> String {
    bounded_name(&format!("cairn-repo-{repo}-g{generation}"))
}

/// The Job that creates the repository unless it exists and reports what it
/// holds (`cairn agent init`).
pub fn repository_job(repo: &BackupRepository, cfg: &JobConfig) -> Job {
    let name = repo.name_any();
    let generation = repo.meta().generation.unwrap_or(0);
    build(
        JobParts {
            name: repository_job_name(&name, generation),
            namespace: repo.namespace(),
            labels: base_labels("repository", &name),
            owner: owner_ref(repo),
            // On a volume, every agent pod shares the repository through the
            // volume's group (fsGroup), whichever user it runs as.
            args: AgentCommand::Init(InitArgs {
                group_access: repo.spec.volume.is_some(),
                ..InitArgs::default()
            })
            .to_args(),
            repo,
            data: None,
            node: None,
            overrides: repo.spec.job.as_ref(),
            work: Work::Repository,
        },
        cfg,
    )
}

/// How much shorter than the prune grace a backup deadline must be: prune's
/// own run and twice the clock skew prune tolerates (10 minutes per host).
pub const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Why a backup Job with these overrides must not run against `repo`: its
/// deadline is not [`DEADLINE_MARGIN`] shorter than the repository's prune
/// grace period. Prune
/// is safe only for backups that finish within the grace period (FORMAT.md
/// §12); one allowed to run longer could write a snapshot whose data a
/// prune has deleted meanwhile. A grace of 0 (delete at once) is the
/// operator's explicit choice and is not checked.
pub fn deadline_problem(
    overrides: Option<&JobOverrides>,
    repo: &BackupRepository,
    cfg: &JobConfig,
) -> Option<String> {
    let deadline = overrides
        .and_then(|o| o.active_deadline_seconds)
        .unwrap_or(cfg.active_deadline_seconds);
    let text = repo
        .spec
        .maintenance
        .as_ref()
        .and_then(|m| m.grace.clone())
        .unwrap_or_else(|| DEFAULT_GRACE.into());
    let grace = match cairn_protocol::duration::parse_fixed(&text) {
        Ok(g) => g,
        Err(e) => return Some(format!("maintenance.grace {text:?}: {e}")),
    };
    // Room for prune's own run and for the clock skew it tolerates on each
    // of two hosts (FORMAT.md §12: backups must end within G - s).
    let margin = DEADLINE_MARGIN.as_secs();
    if grace.is_zero()
        || u64::try_from(deadline).is_ok_and(|d| d.saturating_add(margin) <= grace.as_secs())
    {
        return None;
    }
    Some(format!(
        "the backup Job's deadline ({deadline} s, job.activeDeadlineSeconds{}) is not at least 30 minutes shorter than the repository's prune grace period ({text}): a backup running that long could write a snapshot whose data prune deletes meanwhile. Lower the deadline or raise maintenance.grace",
        if overrides.and_then(|o| o.active_deadline_seconds).is_some() {
            ""
        } else {
            " defaulted by the controller"
        }
    ))
}

/// Name of the prune Job for the run scheduled at `run` (`YYYYMMDD-HHMM`).
pub fn prune_job_name(repo: &str, run: &str) -> String {
    bounded_name(&format!("cairn-prune-{repo}-{run}"))
}

/// The Job that prunes a repository (`cairn agent prune`).
pub fn prune_job(repo: &BackupRepository, job_name: &str, cfg: &JobConfig) -> Job {
    let name = repo.name_any();
    let m = repo.spec.maintenance.clone().unwrap_or_default();
    let args = AgentCommand::Prune(PruneOpts {
        grace: m.grace.unwrap_or_else(|| DEFAULT_GRACE.into()),
        max_unused: m.max_unused.unwrap_or_else(|| DEFAULT_MAX_UNUSED.into()),
    })
    .to_args();
    build(
        JobParts {
            name: job_name.to_string(),
            namespace: repo.namespace(),
            labels: base_labels("prune", &name),
            owner: owner_ref(repo),
            args,
            repo,
            data: None,
            node: None,
            overrides: repo.spec.job.as_ref(),
            work: Work::Repository,
        },
        cfg,
    )
}
