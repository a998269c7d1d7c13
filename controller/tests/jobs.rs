//! The agent Jobs the controller builds, field by field, and reading the
//! agent's result back from a pod.

use cairn_controller::jobs::{self, backup_job, restore_job, JobConfig, DATA_MOUNT};
use cairn_controller::result::{from_pod, snapshot_result};
use cairn_crds::{Backup, BackupRepository, JobOverrides, Restore, RetentionPolicy};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStatus, EnvVar, Pod, PodSpec,
    PodStatus, Toleration,
};
use serde::de::DeserializeOwned;

fn example<T: DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/../crds/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn with_uid<T: kube::Resource>(mut obj: T, uid: &str) -> T {
    obj.meta_mut().uid = Some(uid.into());
    obj
}

fn container(job: &Job) -> &Container {
    &job.spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
}

fn pod_spec(job: &Job) -> &PodSpec {
    job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.as_ref().unwrap().iter().find(|e| e.name == name)
}

fn env_value(c: &Container, name: &str) -> Option<String> {
    env(c, name).and_then(|e| e.value.clone())
}

fn secret_ref(c: &Container, name: &str) -> (String, String) {
    let e = env(c, name).unwrap_or_else(|| panic!("no {name}"));
    assert!(
        e.value.is_none(),
        "{name} must come from a Secret, not a value"
    );
    let s = e
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    (s.name.clone(), s.key.clone())
}

#[test]
fn backup_job_for_an_s3_repository() {
    let repo: BackupRepository = example("repository-s3.yaml");
    let mut backup: Backup = with_uid(example("backup.yaml"), "uid-1");
    backup.spec.retention = Some(RetentionPolicy {
        keep_daily: Some(7),
        keep_within: Some("30d".into()),
        ..Default::default()
    });
    let cfg = JobConfig::default();
    let job = backup_job(&backup, &repo, "postgres-data", None, &cfg);

    let meta = &job.metadata;
    assert_eq!(
        meta.name.as_deref(),
        Some("cairn-backup-before-upgrade-postgres-data")
    );
    assert_eq!(meta.namespace.as_deref(), Some("shop"));
    let owner = &meta.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Backup", "before-upgrade", "uid-1")
    );
    assert_eq!(owner.controller, Some(true));
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels[jobs::labels::BACKUP], "before-upgrade");
    assert_eq!(labels[jobs::labels::PVC], "postgres-data");
    assert_eq!(labels[jobs::labels::REPOSITORY], "offsite");

    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(1));
    assert_eq!(spec.active_deadline_seconds, Some(6 * 3600));
    assert!(spec.ttl_seconds_after_finished.is_some());
    let rule = &spec.pod_failure_policy.as_ref().unwrap().rules[0];
    assert_eq!(rule.action, "FailJob");
    assert_eq!(rule.on_exit_codes.as_ref().unwrap().values, vec![3]);
    let pod = pod_spec(&job);
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert!(pod.node_selector.is_none());

    // The PVC, read-only, at /data.
    let data = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "data")
        .unwrap();
    let claim = data.persistent_volume_claim.as_ref().unwrap();
    assert_eq!(
        (claim.claim_name.as_str(), claim.read_only),
        ("postgres-data", Some(true))
    );
    let c = container(&job);
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "data")
        .unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        (DATA_MOUNT, Some(true))
    );

    // Repository and secrets by reference only.
    assert_eq!(
        env_value(c, "CAIRN_REPOSITORY").as_deref(),
        Some("s3:https://s3.example.net/shop-backups/prod")
    );
    assert_eq!(
        env_value(c, "CAIRN_S3_REGION").as_deref(),
        Some("eu-west-1")
    );
    assert_eq!(
        secret_ref(c, "CAIRN_PASSWORD"),
        ("backup-password".into(), "password".into())
    );
    assert_eq!(
        secret_ref(c, "AWS_ACCESS_KEY_ID"),
        ("backup-s3".into(), "AWS_ACCESS_KEY_ID".into())
    );
    assert_eq!(
        secret_ref(c, "AWS_SECRET_ACCESS_KEY"),
        ("backup-s3".into(), "AWS_SECRET_ACCESS_KEY".into())
    );
    let args = c.args.as_ref().unwrap().join(" ");
    assert_eq!(
        args,
        "agent backup --source /data --id shop/postgres-data --tag manual --tag before-upgrade --keep-daily 7 --keep-within 30d"
    );
    assert!(!args.contains("password") && !args.contains("SECRET"));

    // Non-root, read-only root filesystem, nothing extra.
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(env_value(c, "CAIRN_CACHE_DIR").as_deref(), Some("/cache"));
    assert_eq!(
        c.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );
    assert_eq!(c.image.as_deref(), Some(cfg.image.as_str()));
}

#[test]
fn rwo_volume_in_use_pins_the_job_to_its_node_and_overrides_apply() {
    let repo: BackupRepository = example("repository-s3.yaml");
    let mut backup: Backup = with_uid(example("backup.yaml"), "uid-2");
    backup.spec.job = Some(JobOverrides {
        node_selector: [("disktype".to_string(), "ssd".to_string())].into(),
        tolerations: vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        }],
        priority_class_name: Some("backup-low".into()),
        active_deadline_seconds: Some(600),
        ..JobOverrides::default()
    });
    let job = backup_job(
        &backup,
        &repo,
        "postgres-data",
        Some("node-7".into()),
        &JobConfig::default(),
    );
    let pod = pod_spec(&job);
    let ns = pod.node_selector.as_ref().unwrap();
    assert_eq!(ns["kubernetes.io/hostname"], "node-7");
    assert_eq!(ns["disktype"], "ssd");
    assert_eq!(pod.tolerations.as_ref().unwrap().len(), 1);
    assert_eq!(pod.priority_class_name.as_deref(), Some("backup-low"));
    assert_eq!(
        job.spec.as_ref().unwrap().active_deadline_seconds,
        Some(600)
    );
}

#[test]
fn volume_repository_and_ca_bundle() {
    let mut repo: BackupRepository = example("repository-s3.yaml");
    repo.spec.s3.as_mut().unwrap().ca_bundle = Some(cairn_crds::CaBundle {
        config_map_name: Some("corp-ca".into()),
        secret_name: None,
        key: "ca.pem".into(),
    });
    let backup: Backup = with_uid(example("backup.yaml"), "uid-3");
    let job = backup_job(&backup, &repo, "pvc", None, &JobConfig::default());
    let c = container(&job);
    assert_eq!(
        env_value(c, "CAIRN_S3_CA_BUNDLE").as_deref(),
        Some("/etc/cairn/ca/ca.pem")
    );
    let ca = pod_spec(&job)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "ca")
        .unwrap();
    assert_eq!(ca.config_map.as_ref().unwrap().name, "corp-ca");

    repo.spec.s3 = None;
    repo.spec.volume = Some(cairn_crds::VolumeStorage {
        claim_name: "backup-store".into(),
        sub_path: Some("/shop/".into()),
    });
    let job = backup_job(&backup, &repo, "pvc", None, &JobConfig::default());
    let c = container(&job);
    assert_eq!(
        env_value(c, "CAIRN_REPOSITORY").as_deref(),
        Some("/repository/shop")
    );
    assert!(env(c, "AWS_ACCESS_KEY_ID").is_none());
    let v = pod_spec(&job)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "repository")
        .unwrap();
    assert_eq!(
        v.persistent_volume_claim.as_ref().unwrap().claim_name,
        "backup-store"
    );
}

#[test]
fn job_names_are_deterministic_bounded_and_distinct() {
    let long = "x".repeat(80);
    let a = jobs::backup_job_name(&long, "pvc-a");
    let b = jobs::backup_job_name(&long, "pvc-b");
    assert!(a.len() <= 63 && b.len() <= 63);
    assert_ne!(a, b);
    assert_eq!(a, jobs::backup_job_name(&long, "pvc-a"));
    assert_eq!(jobs::restore_job_name("r"), "cairn-restore-r");
}

#[test]
fn restore_job_writes_into_the_target() {
    let repo: BackupRepository = example("repository-s3.yaml");
    let mut restore: Restore = with_uid(example("restore.yaml"), "uid-4");
    restore.spec.include = vec!["/data/db/**".into()];
    let job = restore_job(
        &restore,
        &repo,
        "postgres-data-restored",
        None,
        &JobConfig::default(),
    );
    let c = container(&job);
    assert_eq!(
        c.args.as_ref().unwrap().join(" "),
        "agent restore --target /data --latest-of shop/postgres-data --include /data/db/**"
    );
    let data = pod_spec(&job)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "data")
        .unwrap();
    let claim = data.persistent_volume_claim.as_ref().unwrap();
    assert_eq!(
        (claim.claim_name.as_str(), claim.read_only),
        ("postgres-data-restored", Some(false))
    );
    // A repository on a volume is only read by a restore.
    let mut on_volume = repo.clone();
    on_volume.spec.s3 = None;
    on_volume.spec.volume = Some(cairn_crds::VolumeStorage {
        claim_name: "backup-store".into(),
        sub_path: None,
    });
    let job = restore_job(&restore, &on_volume, "t", None, &JobConfig::default());
    let pod = pod_spec(&job);
    let v = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "repository")
        .unwrap();
    assert_eq!(
        v.persistent_volume_claim.as_ref().unwrap().read_only,
        Some(true)
    );
    let m = container(&job).volume_mounts.as_ref().unwrap();
    assert_eq!(
        m.iter().find(|m| m.name == "repository").unwrap().read_only,
        Some(true)
    );
    // ... by any user, through the repository's group.
    assert_eq!(
        pod.security_context.as_ref().unwrap().supplemental_groups,
        Some(vec![65532])
    );
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "Restore");
}

#[test]
fn every_jobs_arguments_parse_as_the_agent_parses_them() {
    use cairn_protocol::{AgentCommand, BackupArgs, InitArgs, KeepArgs, PruneOpts, RestoreArgs};
    let parsed = |job: &Job| {
        let args = container(job).args.clone().unwrap();
        AgentCommand::parse_args(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    let repo: BackupRepository = example("repository-s3.yaml");
    let mut backup: Backup = example("backup.yaml");
    // Tags and globs come from users: one that looks like an option stays a value.
    backup.spec.tags = vec!["-v".into(), "--keep-last=9".into(), "plain".into()];
    backup.spec.retention = Some(RetentionPolicy {
        keep_last: Some(3),
        keep_within: Some("1y6mo".into()),
        keep_tags: vec!["--release".into()],
        ..RetentionPolicy::default()
    });
    let cfg = JobConfig::default();
    assert_eq!(
        parsed(&backup_job(&backup, &repo, "db", None, &cfg)),
        AgentCommand::Backup(BackupArgs {
            source: DATA_MOUNT.into(),
            id: "shop/db".into(),
            tags: backup.spec.tags.clone(),
            ignore_inode: false,
            keep: KeepArgs {
                keep_last: 3,
                keep_within: Some("1y6mo".into()),
                keep_tags: vec!["--release".into()],
                ..KeepArgs::default()
            },
        })
    );
    let mut restore: Restore = example("restore.yaml");
    restore.spec.include = vec!["-weird/**".into()];
    assert_eq!(
        parsed(&restore_job(&restore, &repo, "db-restored", None, &cfg)),
        AgentCommand::Restore(RestoreArgs {
            target: DATA_MOUNT.into(),
            snapshot: None,
            latest_of: Some("shop/postgres-data".into()),
            tags: restore.spec.snapshot.tags.clone(),
            includes: vec!["-weird/**".into()],
        })
    );
    assert_eq!(
        parsed(&jobs::repository_job(&repo, &cfg)),
        AgentCommand::Init(InitArgs::default())
    );
    let mut on_volume = repo.clone();
    on_volume.spec.s3 = None;
    on_volume.spec.volume =
        Some(serde_json::from_value(serde_json::json!({"claimName": "r"})).unwrap());
    on_volume.spec.maintenance = Some(
        serde_json::from_value(
            serde_json::json!({"pruneSchedule": "@daily", "grace": "36h", "maxUnused": "10%"}),
        )
        .unwrap(),
    );
    assert_eq!(
        parsed(&jobs::repository_job(&on_volume, &cfg)),
        AgentCommand::Init(InitArgs {
            group_access: true,
            ..InitArgs::default()
        })
    );
    assert_eq!(
        parsed(&jobs::prune_job(&on_volume, "cairn-prune-x", &cfg)),
        AgentCommand::Prune(PruneOpts {
            grace: "36h".into(),
            max_unused: "10%".into(),
        })
    );
    assert_eq!(
        parsed(&jobs::prune_job(&repo, "cairn-prune-x", &cfg)),
        AgentCommand::Prune(PruneOpts::default())
    );
}

fn terminated_pod(message: Option<&str>, exit_code: i32) -> Pod {
    Pod {
        status: Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "agent".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code,
                        message: message.map(str::to_string),
                        reason: Some("Error".into()),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}

#[test]
fn agent_results_are_read_from_the_pod() {
    // The exact shape `cairn agent backup` writes (agent/tests/cli.rs checks the writer side).
    let msg = r#"{"command":"backup","ok":true,"exitCode":3,"snapshotId":"31c9af18","files":2,"bytesProcessed":3145734,"bytesAdded":3147527,"bytesStored":3157311,"durationSeconds":0.03,"unreadableFiles":1,"snapshotsForgotten":0}"#;
    let r = from_pod(&terminated_pod(Some(msg), 3)).unwrap();
    assert!(r.ok);
    assert_eq!(r.exit_code, 3);
    let s = snapshot_result(&r, "data");
    assert_eq!(s.snapshot_id.as_deref(), Some("31c9af18"));
    assert_eq!(
        (
            s.files,
            s.bytes_processed,
            s.bytes_added,
            s.unreadable_files
        ),
        (2, 3145734, 3147527, 1)
    );

    // Killed before writing a result: the log tail the kubelet substituted.
    let r = from_pod(&terminated_pod(Some("thread panicked\nout of memory"), 137)).unwrap();
    assert!(!r.ok);
    assert!(r.error.unwrap().contains("out of memory"));
    let r = from_pod(&terminated_pod(None, 137)).unwrap();
    assert!(r.error.unwrap().contains("exit code 137"));
    assert!(from_pod(&Pod::default()).is_none());
}

#[test]
fn security_overrides_merge_into_the_restricted_default() {
    let repo: BackupRepository = example("repository-s3.yaml");
    let mut backup: Backup = with_uid(example("backup.yaml"), "uid-5");
    // The default: restricted Pod Security, fsGroup for writable volumes.
    let job = backup_job(&backup, &repo, "pgdata", None, &JobConfig::default());
    let psc = pod_spec(&job).security_context.clone().unwrap();
    assert_eq!(
        (psc.run_as_user, psc.run_as_group, psc.fs_group),
        (Some(65532), Some(65532), Some(65532))
    );
    assert_eq!(
        psc.fs_group_change_policy.as_deref(),
        Some("OnRootMismatch")
    );
    assert_eq!(pod_spec(&job).automount_service_account_token, Some(false));
    assert_eq!(pod_spec(&job).service_account_name, None);

    // Running as the application's user keeps everything else of the default.
    backup.spec.job = Some(JobOverrides {
        pod_security_context: Some(k8s_openapi::api::core::v1::PodSecurityContext {
            run_as_user: Some(999),
            run_as_group: Some(999),
            ..Default::default()
        }),
        security_context: Some(k8s_openapi::api::core::v1::SecurityContext {
            read_only_root_filesystem: Some(true),
            ..Default::default()
        }),
        service_account_name: Some("backup-irsa".into()),
        ..JobOverrides::default()
    });
    let job = backup_job(&backup, &repo, "pgdata", None, &JobConfig::default());
    let psc = pod_spec(&job).security_context.clone().unwrap();
    assert_eq!((psc.run_as_user, psc.run_as_group), (Some(999), Some(999)));
    assert_eq!(psc.run_as_non_root, Some(true));
    assert_eq!(
        psc.seccomp_profile.map(|s| s.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let sc = container(&job).security_context.clone().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        pod_spec(&job).service_account_name.as_deref(),
        Some("backup-irsa")
    );
    assert_eq!(pod_spec(&job).automount_service_account_token, Some(true));
}

#[test]
fn the_privileged_mover_needs_the_administrators_consent() {
    let repo: BackupRepository = example("repository-s3.yaml");
    let mut backup: Backup = with_uid(example("backup.yaml"), "uid-6");
    backup.spec.job = Some(JobOverrides {
        privileged_mover: true,
        ..JobOverrides::default()
    });
    let ns = backup.metadata.namespace.clone().unwrap();
    let refused = JobConfig::default();
    assert!(
        jobs::privileged_mover_refused(backup.spec.job.as_ref(), &ns, &refused)
            .is_some_and(|m| m.contains("not allowed"))
    );
    // Even if a reconciler went on, the Job is not privileged.
    let job = backup_job(&backup, &repo, "pgdata", None, &refused);
    let psc = pod_spec(&job).security_context.clone().unwrap();
    assert_eq!(psc.run_as_user, Some(65532));

    let allowed = JobConfig {
        privileged_mover_namespaces: vec!["other".into(), ns.clone()],
        ..JobConfig::default()
    };
    assert_eq!(
        jobs::privileged_mover_refused(backup.spec.job.as_ref(), &ns, &allowed),
        None
    );
    let job = backup_job(&backup, &repo, "pgdata", None, &allowed);
    let psc = pod_spec(&job).security_context.clone().unwrap();
    assert_eq!(
        (psc.run_as_user, psc.run_as_non_root, psc.fs_group),
        (Some(0), Some(false), None)
    );
    let caps = container(&job)
        .security_context
        .clone()
        .and_then(|s| s.capabilities)
        .unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert_eq!(caps.add, Some(vec!["DAC_OVERRIDE".to_string()]));

    let mut restore: Restore = with_uid(example("restore.yaml"), "uid-7");
    restore.metadata.namespace = Some(ns.clone());
    restore.spec.job = backup.spec.job.clone();
    let job = restore_job(&restore, &repo, "target", None, &allowed);
    let caps = container(&job)
        .security_context
        .clone()
        .and_then(|s| s.capabilities)
        .unwrap();
    assert_eq!(
        caps.add,
        Some(vec![
            "CHOWN".to_string(),
            "DAC_OVERRIDE".to_string(),
            "FOWNER".to_string()
        ])
    );
}

#[test]
fn label_values_stay_within_63_characters() {
    let repo: BackupRepository = example("repository-s3.yaml");
    let mut backup: Backup = with_uid(example("backup.yaml"), "uid-8");
    backup.metadata.name = Some(format!("{}.x", "nightly-".repeat(20)));
    let pvc = "p".repeat(200);
    let job = backup_job(&backup, &repo, &pvc, None, &JobConfig::default());
    let name = job.metadata.name.clone().unwrap();
    assert!(name.len() <= 63, "{name}");
    for (k, v) in job.metadata.labels.as_ref().unwrap() {
        assert!(v.len() <= 63, "label {k}={v}");
        assert!(
            v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric()),
            "label {k}={v}"
        );
    }
    assert_ne!(jobs::label_value(&pvc), jobs::label_value(&"p".repeat(201)));
    assert_eq!(jobs::label_value("short"), "short");
}

#[test]
fn repository_jobs_take_the_repositorys_overrides() {
    let mut repo: BackupRepository = with_uid(example("repository-s3.yaml"), "uid-9");
    repo.metadata.generation = Some(1);
    repo.spec.job = Some(JobOverrides {
        priority_class_name: Some("maintenance".into()),
        pod_security_context: Some(k8s_openapi::api::core::v1::PodSecurityContext {
            fs_group: Some(4000),
            ..Default::default()
        }),
        ..JobOverrides::default()
    });
    let cfg = JobConfig::default();
    for job in [
        jobs::repository_job(&repo, &cfg),
        jobs::prune_job(&repo, "cairn-prune-x", &cfg),
    ] {
        assert_eq!(
            pod_spec(&job).priority_class_name.as_deref(),
            Some("maintenance")
        );
        let psc = pod_spec(&job).security_context.clone().unwrap();
        assert_eq!((psc.fs_group, psc.run_as_user), (Some(4000), Some(65532)));
    }
}

#[test]
fn overrides_above_restricted_need_the_administrators_consent_too() {
    use k8s_openapi::api::core::v1::{Capabilities, PodSecurityContext, SecurityContext};
    let ns = "shop";
    let refused = JobConfig::default();
    let allowed = JobConfig {
        privileged_mover_namespaces: vec!["*".into()],
        ..JobConfig::default()
    };
    let pod = |p: PodSecurityContext| JobOverrides {
        pod_security_context: Some(p),
        ..JobOverrides::default()
    };
    let container = |c: SecurityContext| JobOverrides {
        security_context: Some(c),
        ..JobOverrides::default()
    };
    let escalating = [
        pod(PodSecurityContext {
            run_as_user: Some(0),
            ..Default::default()
        }),
        pod(PodSecurityContext {
            run_as_non_root: Some(false),
            ..Default::default()
        }),
        container(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        }),
        container(SecurityContext {
            allow_privilege_escalation: Some(true),
            ..Default::default()
        }),
        container(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["DAC_READ_SEARCH".into()]),
                drop: None,
            }),
            ..Default::default()
        }),
    ];
    for o in &escalating {
        let why = jobs::privileged_mover_refused(Some(o), ns, &refused);
        assert!(
            why.as_deref().is_some_and(|m| m.contains("not allowed")),
            "{o:?}"
        );
        assert_eq!(jobs::privileged_mover_refused(Some(o), ns, &allowed), None);
    }
    // Beyond users and capabilities: what Pod Security's baseline forbids.
    let more: Vec<JobOverrides> = [
        serde_json::json!({"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}),
        serde_json::json!({"podSecurityContext": {"seLinuxOptions": {"type": "spc_t"}}}),
        serde_json::json!({"securityContext": {"seLinuxOptions": {"role": "sysadm_r"}}}),
        serde_json::json!({"podSecurityContext": {"appArmorProfile": {"type": "Unconfined"}}}),
        serde_json::json!({"podSecurityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}),
        serde_json::json!({"securityContext": {"procMount": "Unmasked"}}),
        serde_json::json!({"securityContext": {"windowsOptions": {"hostProcess": true}}}),
    ]
    .into_iter()
    .map(|v| serde_json::from_value(v).unwrap())
    .collect();
    for o in &more {
        assert!(
            jobs::privileged_mover_refused(Some(o), ns, &refused).is_some(),
            "{o:?}"
        );
    }
    // Running as another unprivileged user is what restricted allows.
    let app = pod(PodSecurityContext {
        run_as_user: Some(999),
        run_as_group: Some(999),
        fs_group: Some(999),
        ..Default::default()
    });
    assert_eq!(
        jobs::privileged_mover_refused(Some(&app), ns, &refused),
        None
    );
    assert_eq!(jobs::privileged_mover_refused(None, ns, &refused), None);
}

#[test]
fn a_restore_into_an_existing_volume_does_not_regroup_it() {
    let repo: BackupRepository = example("repository-s3.yaml");
    let mut restore: Restore = with_uid(example("restore.yaml"), "uid-10");
    restore.spec.target = cairn_crds::RestoreTarget {
        pvc: Some("postgres-data".into()),
        new_pvc: None,
    };
    let job = restore_job(
        &restore,
        &repo,
        "postgres-data",
        None,
        &JobConfig::default(),
    );
    let psc = pod_spec(&job).security_context.clone().unwrap();
    assert_eq!((psc.fs_group, psc.fs_group_change_policy), (None, None));
    assert_eq!(psc.run_as_user, Some(65532));
    // The user's own fsGroup stays.
    restore.spec.job = Some(JobOverrides {
        pod_security_context: Some(k8s_openapi::api::core::v1::PodSecurityContext {
            fs_group: Some(999),
            ..Default::default()
        }),
        ..JobOverrides::default()
    });
    let job = restore_job(
        &restore,
        &repo,
        "postgres-data",
        None,
        &JobConfig::default(),
    );
    assert_eq!(
        pod_spec(&job).security_context.clone().unwrap().fs_group,
        Some(999)
    );
}

#[test]
fn an_override_keeps_the_defaults_it_does_not_name_at_every_depth() {
    use cairn_controller::jobs::{security, Work};
    let o: JobOverrides = serde_json::from_value(serde_json::json!({
        "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}},
        "podSecurityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "cairn.json"}},
    }))
    .unwrap();
    let (pod, c) = security(Work::Backup, Some(&o), false);
    let caps = c.capabilities.unwrap();
    assert_eq!(caps.add, Some(vec!["NET_BIND_SERVICE".to_string()]));
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "drop: [ALL] lost");
    assert_eq!(c.read_only_root_filesystem, Some(true));
    let seccomp = pod.seccomp_profile.unwrap();
    assert_eq!(
        (seccomp.type_.as_str(), seccomp.localhost_profile.as_deref()),
        ("Localhost", Some("cairn.json"))
    );
    assert_eq!(pod.run_as_user, Some(65532));
}

/// A backup deadline not shorter than the repository's prune grace is
/// refused (FORMAT.md §12 assumes backups end within the grace period).
#[test]
fn a_backup_deadline_must_be_shorter_than_the_prune_grace() {
    let mut repo: BackupRepository = example("repository-s3.yaml");
    let cfg = JobConfig::default(); // 6 h
    let hours = |h: i64| JobOverrides {
        active_deadline_seconds: Some(h * 3600),
        ..JobOverrides::default()
    };
    // The default grace, 24 h.
    repo.spec.maintenance = None;
    assert_eq!(jobs::deadline_problem(None, &repo, &cfg), None);
    assert!(jobs::deadline_problem(Some(&hours(24)), &repo, &cfg).is_some());
    // 2 h: the default deadline is too long, one of 1 h is fine.
    repo.spec.maintenance = Some(
        serde_json::from_value(serde_json::json!({"pruneSchedule": "0 3 * * 0", "grace": "2h"}))
            .unwrap(),
    );
    let msg = jobs::deadline_problem(None, &repo, &cfg).expect("6 h >= 2 h");
    assert!(
        msg.contains("defaulted by the controller") && msg.contains("2h"),
        "{msg}"
    );
    assert_eq!(jobs::deadline_problem(Some(&hours(1)), &repo, &cfg), None);
    assert!(jobs::deadline_problem(Some(&hours(2)), &repo, &cfg).is_some());
    // A margin for prune's run and clock skew: 1 h 31 min is too close to 2 h.
    let close = JobOverrides {
        active_deadline_seconds: Some(91 * 60),
        ..JobOverrides::default()
    };
    assert!(jobs::deadline_problem(Some(&close), &repo, &cfg).is_some());
    // 0: delete at once, the operator's explicit choice.
    repo.spec.maintenance = Some(
        serde_json::from_value(serde_json::json!({"pruneSchedule": "0 3 * * 0", "grace": "0"}))
            .unwrap(),
    );
    assert_eq!(jobs::deadline_problem(Some(&hours(100)), &repo, &cfg), None);
}
