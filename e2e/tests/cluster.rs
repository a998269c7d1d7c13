//! Real-cluster tests: the controller (in-process, watching a fresh
//! namespace) and the agent image back up a PVC a pod wrote, restore it into
//! a new PVC, and a pod compares the two; a schedule runs a backup by cron.
//!
//! Marked `#[ignore]` so the normal suite lists them as skipped. Run them
//! with a cluster: `scripts/e2e` (see e2e/README.md). Without a cluster they
//! print "NOT RUN" and return (or fail with `CAIRN_E2E_REQUIRE=1`).

use std::time::Duration;

use cairn_crds::{Backup, BackupRepository, BackupSchedule, Phase, Restore};
use cairn_e2e::{
    apply_crds, cluster, create, pvc, run_pod, shell_pod, wait_for, InProcessController,
    TestNamespace,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::Api;

const FIVE_MIN: Duration = Duration::from_secs(300);

/// Files of several sizes, a nested directory, an empty file and a symlink;
/// prints a sorted manifest of checksums, sizes and modes.
const WRITE: &str = r#"
cd /data
mkdir -p app/logs app/empty
i=0
while [ $i -lt 120 ]; do
  head -c $((i * 997)) /dev/urandom > app/logs/part-$i.bin
  i=$((i + 1))
done
head -c 3000000 /dev/urandom > app/big.bin
seq 1 100000 > app/numbers.txt
: > app/empty.txt
ln -s numbers.txt app/link
chmod 0640 app/numbers.txt
"#;

/// The manifest of a tree: type, mode, size and checksum of every entry.
const MANIFEST: &str = r#"
cd "$1"
find . -path ./lost+found -prune -o -print | sort | while read -r p; do
  if [ -L "$p" ]; then echo "L $p -> $(readlink "$p")";
  elif [ -d "$p" ]; then echo "D $p $(stat -c %a "$p")";
  else echo "F $p $(stat -c '%a %s' "$p") $(sha256sum < "$p" | cut -d' ' -f1)"; fi
done
"#;

fn manifest_script(dir: &str) -> String {
    format!("set -- {dir}\n{MANIFEST}")
}

async fn setup(client: &kube::Client, ns: &str) {
    create::<Secret>(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "repo-password"},
            "stringData": {"password": "e2e-correct-horse-battery"}
        }),
    )
    .await;
    create::<PersistentVolumeClaim>(client, ns, pvc("data", "1Gi")).await;
    create::<PersistentVolumeClaim>(client, ns, pvc("repo", "2Gi")).await;
    create::<BackupRepository>(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": "local"},
            "spec": {
                "volume": {"claimName": "repo"},
                "passwordSecretRef": {"name": "repo-password", "key": "password"}
            }
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn backup_and_restore_a_pvc() {
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "br").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    setup(&client, &ns.name).await;

    // The repository gets initialised by its Job and becomes Ready.
    let repos: Api<BackupRepository> = Api::namespaced(client.clone(), &ns.name);
    wait_for(&repos, "local", "Ready", FIVE_MIN, |r| {
        r.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    })
    .await;

    // An application pod writes data; its manifest is the reference.
    run_pod(&client, &ns.name, shell_pod("writer", WRITE, &["data"])).await;
    let before = run_pod(
        &client,
        &ns.name,
        shell_pod("manifest-before", &manifest_script("/data"), &["data"]),
    )
    .await;
    assert!(before.lines().count() > 120, "manifest:\n{before}");

    // On-demand backup.
    create::<Backup>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": "first"},
            "spec": {"repository": {"name": "local"}, "pvcs": ["data"], "tags": ["e2e"]}
        }),
    )
    .await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    let b = wait_for(&backups, "first", "finished", FIVE_MIN, |b| {
        b.status.as_ref().is_some_and(|s| s.phase.is_finished())
    })
    .await;
    let st = b.status.expect("status");
    assert_eq!(
        st.phase,
        Phase::Succeeded,
        "backup failed: {:?}",
        st.message
    );
    assert_eq!(st.observed_generation, b.metadata.generation);
    assert_eq!(st.snapshots.len(), 1);
    let snap = &st.snapshots[0];
    let snapshot_id = snap.snapshot_id.clone().expect("snapshot ID in status");
    assert!(snap.files >= 123, "files: {}", snap.files);
    assert!(snap.bytes_processed > 3_000_000);
    assert!(snap.bytes_added > 0);

    // Events were recorded for the run.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let evs = events.list(&ListParams::default()).await.expect("events");
    assert!(
        evs.items
            .iter()
            .any(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("first")),
        "no Event about Backup first"
    );

    // Restore the latest snapshot of the PVC into a new PVC.
    let r = cairn_e2e::restore_into_new_pvc(
        &client,
        &ns.name,
        "rehearsal",
        "local",
        "data",
        ("restored", None),
        serde_json::json!({}),
    )
    .await;
    let rs = r.status.expect("status");
    assert_eq!(
        rs.phase,
        Phase::Succeeded,
        "restore failed: {:?}",
        rs.message
    );
    assert_eq!(rs.snapshot_id.as_deref(), Some(snapshot_id.as_str()));
    assert_eq!(rs.target_pvc.as_deref(), Some("restored"));

    let after = run_pod(
        &client,
        &ns.name,
        shell_pod(
            "manifest-after",
            &manifest_script("/restored"),
            &["restored"],
        ),
    )
    .await;
    assert_eq!(before, after, "restored tree differs from the original");

    controller.stop().await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn schedule_backs_up_by_cron_and_bad_repository_is_reported() {
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "sched").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    setup(&client, &ns.name).await;
    run_pod(&client, &ns.name, shell_pod("writer", WRITE, &["data"])).await;

    create::<BackupSchedule>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "every-minute"},
            "spec": {
                "repository": {"name": "local"},
                "schedule": "* * * * *",
                "pvcs": ["data"],
                "retention": {"keepLast": 1},
                "successfulHistoryLimit": 1
            }
        }),
    )
    .await;
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), &ns.name);
    let s = wait_for(
        &schedules,
        "every-minute",
        "backed up",
        Duration::from_secs(420),
        |s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.last_successful.iter().any(|p| p.pvc == "data"))
        },
    )
    .await;
    let st = s.status.expect("status");
    assert!(st.next_schedule_time.is_some());
    assert!(st.last_successful[0].snapshot_id.is_some());

    // A repository whose password Secret is missing is reported, not retried
    // into a crash loop.
    create::<BackupRepository>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": "broken"},
            "spec": {
                "volume": {"claimName": "repo", "subPath": "other"},
                "passwordSecretRef": {"name": "no-such-secret", "key": "password"}
            }
        }),
    )
    .await;
    let repos: Api<BackupRepository> = Api::namespaced(client.clone(), &ns.name);
    // On a real cluster the Job's pod first exists without a verdict
    // (reason Checking) until the kubelet reports CreateContainerConfigError.
    let r = wait_for(&repos, "broken", "not Ready", FIVE_MIN, |r| {
        r.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason != "Checking")
        })
    })
    .await;
    let c = &r.status.expect("status").conditions[0];
    assert_eq!(c.reason, "JobStuck", "{c:?}");
    assert!(c.message.contains("no-such-secret"), "{c:?}");

    controller.stop().await;
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn backup_recreated_under_the_same_name_does_not_inherit_the_old_job() {
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "recreate").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    setup(&client, &ns.name).await;
    run_pod(&client, &ns.name, shell_pod("writer", WRITE, &["data"])).await;
    let backup = serde_json::json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "Backup",
        "metadata": {"name": "nightly"},
        "spec": {"repository": {"name": "local"}, "pvcs": ["data"]}
    });
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    let finished = |b: &Backup| b.status.as_ref().is_some_and(|s| s.phase.is_finished());
    create::<Backup>(&client, &ns.name, backup.clone()).await;
    let first = wait_for(&backups, "nightly", "finished", FIVE_MIN, finished).await;
    let first_snapshot = first
        .status
        .as_ref()
        .and_then(|s| s.snapshots.first()?.snapshot_id.clone());
    assert!(first_snapshot.is_some(), "first backup: {:?}", first.status);

    // GitOps deletes the Backup and creates it again under the same name; the
    // old Job is left behind (orphaned here, so the outcome does not depend
    // on how fast the garbage collector is).
    backups
        .delete("nightly", &kube::api::DeleteParams::orphan())
        .await
        .expect("delete the backup");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while backups
        .get_opt("nightly")
        .await
        .expect("get backup")
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "Backup nightly not gone after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let second: Backup = create(&client, &ns.name, backup).await;
    let second_uid = second.metadata.uid.clone().expect("uid");
    let second = wait_for(&backups, "nightly", "finished", FIVE_MIN, finished).await;
    let second_snapshot = second
        .status
        .as_ref()
        .and_then(|s| s.snapshots.first()?.snapshot_id.clone());
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns.name);
    let job_names = second
        .status
        .as_ref()
        .map(|s| s.job_names.clone())
        .unwrap_or_default();
    for name in &job_names {
        let job = jobs.get(name).await.expect("the second backup's Job");
        let owners: Vec<_> = job
            .metadata
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .map(|o| o.uid)
            .collect();
        assert!(
            owners.contains(&second_uid),
            "the recreated Backup uses Job {name}, owned by {owners:?}, not by itself ({second_uid})"
        );
    }
    assert_ne!(
        first_snapshot, second_snapshot,
        "the recreated Backup reports the old Backup's snapshot"
    );
    controller.stop().await;
    ns.delete().await;
}

/// A repository on S3 (Garage on an address of this machine that pods
/// reach): the repository becomes Ready, a backup written through it
/// survives the controller being killed while its Job runs (the restarted
/// controller adopts the same Job, makes no second one, and records the
/// result), and a restore from it reproduces the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn s3_repository_and_a_controller_killed_mid_job() {
    let Some(client) = cluster().await else {
        return;
    };
    let Some(bind) = cairn_e2e::s3_bind_address(&client).await else {
        eprintln!("NOT RUN: set CAIRN_E2E_S3_BIND to an address of this machine that pods reach");
        return;
    };
    let Some(garage) = cairn_testkit::garage::garage_on(&bind) else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "s3").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    create::<Secret>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "repo"},
            "stringData": {
                "password": "e2e-correct-horse-battery",
                "AWS_ACCESS_KEY_ID": garage.key_id,
                "AWS_SECRET_ACCESS_KEY": garage.secret
            }
        }),
    )
    .await;
    create::<PersistentVolumeClaim>(&client, &ns.name, pvc("data", "1Gi")).await;
    create::<BackupRepository>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": "s3"},
            "spec": {
                "s3": {
                    "endpoint": garage.endpoint, "bucket": garage.bucket,
                    "prefix": ns.name, "region": "garage", "pathStyle": true,
                    "credentialsSecretRef": {"name": "repo"}
                },
                "passwordSecretRef": {"name": "repo", "key": "password"}
            }
        }),
    )
    .await;
    let t = std::time::Instant::now();
    let repos: Api<BackupRepository> = Api::namespaced(client.clone(), &ns.name);
    let r = wait_for(&repos, "s3", "checked", FIVE_MIN, |r| {
        r.status
            .as_ref()
            .and_then(|s| s.conditions.first())
            .is_some_and(|c| {
                matches!(
                    c.reason.as_str(),
                    "Initialized" | "Reachable" | "Unreachable"
                )
            })
    })
    .await;
    let c = &r.status.expect("status").conditions[0];
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "Initialized"),
        "{}",
        c.message
    );
    eprintln!(
        "e2e: S3 repository at {} Ready after {:?}",
        garage.endpoint,
        t.elapsed()
    );

    run_pod(&client, &ns.name, shell_pod("writer", WRITE, &["data"])).await;
    let before = run_pod(
        &client,
        &ns.name,
        shell_pod("manifest-before", &manifest_script("/data"), &["data"]),
    )
    .await;

    // The controller dies right after creating the Job.
    create::<Backup>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": "to-s3"},
            "spec": {"repository": {"name": "s3"}, "pvcs": ["data"]}
        }),
    )
    .await;
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns.name);
    let job_name = cairn_controller::jobs::backup_job_name("to-s3", "data");
    let job = wait_for(&jobs, &job_name, "created", FIVE_MIN, |_| true).await;
    controller.kill().await;
    let controller = InProcessController::start(&client, &ns.name).await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    let b = wait_for(&backups, "to-s3", "finished", FIVE_MIN, |b| {
        b.status.as_ref().is_some_and(|s| s.phase.is_finished())
    })
    .await;
    let st = b.status.expect("status");
    assert_eq!(st.phase, Phase::Succeeded, "{:?}", st.message);
    assert!(st.snapshots[0].snapshot_id.is_some());
    let all = jobs.list(&ListParams::default()).await.expect("jobs");
    let backup_jobs: Vec<_> = all
        .items
        .iter()
        .filter(|j| {
            j.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("cairn-backup-"))
        })
        .collect();
    assert_eq!(
        backup_jobs.len(),
        1,
        "one Job, not a second after the restart"
    );
    assert_eq!(backup_jobs[0].metadata.uid, job.metadata.uid);

    let r = cairn_e2e::restore_into_new_pvc(
        &client,
        &ns.name,
        "from-s3",
        "s3",
        "data",
        ("restored", None),
        serde_json::json!({}),
    )
    .await;
    let rs = r.status.expect("status");
    assert_eq!(rs.phase, Phase::Succeeded, "{:?}", rs.message);
    let after = run_pod(
        &client,
        &ns.name,
        shell_pod(
            "manifest-after",
            &manifest_script("/restored"),
            &["restored"],
        ),
    )
    .await;
    assert_eq!(before, after, "restored tree differs");
    eprintln!(
        "e2e: backup to and restore from S3 verified after {:?}",
        t.elapsed()
    );
    controller.stop().await;
    ns.delete().await;
}

/// A ReadWriteOnce PVC that a running application pod mounts: its backup Job
/// is pinned to that pod's node; a restore into it waits (TargetInUse, one
/// Warning Event) until the application is gone, then runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn volumes_in_use_pin_backups_and_hold_restores() {
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "inuse").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    setup(&client, &ns.name).await;
    run_pod(&client, &ns.name, shell_pod("writer", WRITE, &["data"])).await;
    // The application keeps the volume mounted.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns.name);
    let app: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(shell_pod("app", "sleep 3600", &["data"])).expect("pod");
    pods.create(&kube::api::PostParams::default(), &app)
        .await
        .expect("create app pod");
    let app = wait_for(&pods, "app", "running", FIVE_MIN, |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    let node = app.spec.and_then(|s| s.node_name).expect("scheduled");

    create::<Backup>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": "live"},
            "spec": {"repository": {"name": "local"}, "pvcs": ["data"]}
        }),
    )
    .await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    let b = wait_for(&backups, "live", "finished", FIVE_MIN, |b| {
        b.status.as_ref().is_some_and(|s| s.phase.is_finished())
    })
    .await;
    assert_eq!(b.status.as_ref().map(|s| s.phase), Some(Phase::Succeeded));
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns.name);
    let job = jobs
        .get(&cairn_controller::jobs::backup_job_name("live", "data"))
        .await
        .expect("job");
    let selector = job
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.node_selector)
        .unwrap_or_default();
    assert_eq!(selector.get("kubernetes.io/hostname"), Some(&node));

    create::<Restore>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Restore",
            "metadata": {"name": "over-live"},
            "spec": {
                "repository": {"name": "local"},
                "snapshot": {"latestOf": "data"},
                "target": {"pvc": "data"}
            }
        }),
    )
    .await;
    let restores: Api<Restore> = Api::namespaced(client.clone(), &ns.name);
    let r = wait_for(&restores, "over-live", "held", FIVE_MIN, |r| {
        r.status
            .as_ref()
            .and_then(|s| s.conditions.first())
            .is_some_and(|c| c.reason == "TargetInUse")
    })
    .await;
    let msg = &r.status.expect("status").conditions[0].message;
    assert!(msg.contains("app"), "{msg}");
    assert!(jobs
        .get_opt(&cairn_controller::jobs::restore_job_name("over-live"))
        .await
        .expect("get")
        .is_none());
    pods.delete("app", &kube::api::DeleteParams::default().grace_period(0))
        .await
        .expect("delete app");
    let r = wait_for(&restores, "over-live", "finished", FIVE_MIN, |r| {
        r.status.as_ref().is_some_and(|s| s.phase.is_finished())
    })
    .await;
    let rs = r.status.expect("status");
    assert_eq!(rs.phase, Phase::Succeeded, "{:?}", rs.message);
    controller.stop().await;
    ns.delete().await;
}

/// While a restore Job writes to a PVC (here a suspended Job labelled as
/// one, so it stays "running" as long as the test needs), a Backup of that
/// PVC waits (Queued, naming the Job) instead of storing a half-restored
/// volume, and a second Restore into it waits (TargetInUse) instead of
/// interleaving its writes; once the Job is gone both run and succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn a_restore_in_progress_holds_backups_and_restores_of_its_volume() {
    use cairn_controller::jobs::labels;
    use k8s_openapi::api::batch::v1::Job;
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "hold").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    setup(&client, &ns.name).await;
    run_pod(&client, &ns.name, shell_pod("writer", WRITE, &["data"])).await;
    let backup = |name: &str| {
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": name},
            "spec": {"repository": {"name": "local"}, "pvcs": ["data"]}
        })
    };
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    let finished = |b: &Backup| b.status.as_ref().is_some_and(|s| s.phase.is_finished());
    create::<Backup>(&client, &ns.name, backup("first")).await;
    let b = wait_for(&backups, "first", "finished", FIVE_MIN, finished).await;
    assert_eq!(b.status.map(|s| s.phase), Some(Phase::Succeeded));

    // Another restore's Job, writing to data (suspended: no pod runs).
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    create::<Job>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "cairn-restore-earlier",
                "labels": {(labels::RESTORE): "earlier", (labels::PVC): "data"}},
            "spec": {"suspend": true, "template": {"spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "x", "image": "cairn.local/cairn:e2e",
                    "securityContext": {"allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]}}}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
            }}}
        }),
    )
    .await;
    create::<Backup>(&client, &ns.name, backup("during")).await;
    create::<Restore>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Restore",
            "metadata": {"name": "second"},
            "spec": {
                "repository": {"name": "local"},
                "snapshot": {"latestOf": "data"},
                "target": {"pvc": "data"}
            }
        }),
    )
    .await;
    let b = wait_for(&backups, "during", "queued", FIVE_MIN, |b| {
        b.status
            .as_ref()
            .and_then(|s| s.conditions.first())
            .is_some_and(|c| c.message.contains("cairn-restore-earlier"))
    })
    .await;
    assert!(!finished(&b));
    let restores: Api<Restore> = Api::namespaced(client.clone(), &ns.name);
    let r = wait_for(&restores, "second", "held", FIVE_MIN, |r| {
        r.status
            .as_ref()
            .and_then(|s| s.conditions.first())
            .is_some_and(|c| c.reason == "TargetInUse")
    })
    .await;
    let msg = &r.status.expect("status").conditions[0].message;
    assert!(msg.contains("cairn-restore-earlier"), "{msg}");
    // Neither started a Job meanwhile.
    let ours = jobs.list(&ListParams::default()).await.expect("jobs").items;
    let names: Vec<_> = ours
        .iter()
        .filter_map(|j| j.metadata.name.clone())
        .collect();
    assert!(
        !names.contains(&cairn_controller::jobs::backup_job_name("during", "data"))
            && !names.contains(&cairn_controller::jobs::restore_job_name("second")),
        "{names:?}"
    );

    jobs.delete(
        "cairn-restore-earlier",
        &kube::api::DeleteParams::background(),
    )
    .await
    .expect("delete the earlier restore's Job");
    let b = wait_for(&backups, "during", "finished", FIVE_MIN, finished).await;
    assert_eq!(b.status.map(|s| s.phase), Some(Phase::Succeeded));
    let r = wait_for(&restores, "second", "finished", FIVE_MIN, |r| {
        r.status.as_ref().is_some_and(|s| s.phase.is_finished())
    })
    .await;
    let rs = r.status.expect("status");
    assert_eq!(rs.phase, Phase::Succeeded, "{:?}", rs.message);
    controller.stop().await;
    ns.delete().await;
}

/// The movers' holds without a pod and without a Job: a backup Job of a PVC
/// that has no pod (suspended here; also before its pod is made, under a
/// ResourceQuota refusal, between retries) holds a Restore into that PVC
/// (TargetInUse, naming the Job), and a restore pod whose Job is gone
/// (deleted with orphan propagation here; background propagation leaves it
/// running the same way until it stops) holds both a Backup of the PVC
/// (Queued) and a Restore into it (TargetInUse), naming the pod. Neither
/// starts a Job meanwhile; once the holders are gone, both run and succeed.
/// Before the fix the Restore started at once beside the backup Job, and
/// both ran beside the orphaned restore pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn movers_hold_a_volume_without_a_pod_and_without_a_job() {
    use cairn_controller::jobs::{backup_job_name, labels, restore_job_name};
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{DeleteParams, PropagationPolicy};
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "movers").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    setup(&client, &ns.name).await;
    run_pod(&client, &ns.name, shell_pod("writer", WRITE, &["data"])).await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    let restores: Api<Restore> = Api::namespaced(client.clone(), &ns.name);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let finished = |b: &Backup| b.status.as_ref().is_some_and(|s| s.phase.is_finished());
    let ready_of = |c: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>| {
        c.map(|c| (c.reason.clone(), c.message.clone()))
            .unwrap_or_default()
    };
    let backup = |name: &str| {
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": name},
            "spec": {"repository": {"name": "local"}, "pvcs": ["data"]}
        })
    };
    create::<Backup>(&client, &ns.name, backup("first")).await;
    let b = wait_for(&backups, "first", "finished", FIVE_MIN, finished).await;
    assert_eq!(b.status.map(|s| s.phase), Some(Phase::Succeeded));
    let no_new_jobs = |names: Vec<String>| {
        assert!(
            !names.contains(&backup_job_name("during", "data"))
                && !names.contains(&restore_job_name("second")),
            "{names:?}"
        );
    };
    let job_names = || async {
        jobs.list(&ListParams::default())
            .await
            .expect("jobs")
            .items
            .into_iter()
            .filter_map(|j| j.metadata.name)
            .collect::<Vec<_>>()
    };

    // 1. A backup Job of data that has no pod.
    let held_backup = "cairn-backup-earlier-data";
    create::<Job>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": held_backup,
                "labels": {(labels::BACKUP): "earlier", (labels::PVC): "data"}},
            "spec": {"suspend": true, "template": {"spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "x", "image": "cairn.local/cairn:e2e",
                    "securityContext": {"allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]}}}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
            }}}
        }),
    )
    .await;
    create::<Restore>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Restore",
            "metadata": {"name": "second"},
            "spec": {
                "repository": {"name": "local"},
                "snapshot": {"latestOf": "data"},
                "target": {"pvc": "data"}
            }
        }),
    )
    .await;
    let r = wait_for(
        &restores,
        "second",
        "held by the backup Job",
        FIVE_MIN,
        |r| {
            r.status.as_ref().is_some_and(|s| {
                s.phase.is_finished() || s.job_name.is_some() || {
                    let (reason, msg) = ready_of(s.conditions.first());
                    reason == "TargetInUse" && msg.contains(held_backup)
                }
            })
        },
    )
    .await;
    let rs = r.status.expect("status");
    assert_eq!(rs.job_name, None, "the restore started beside a backup Job");
    no_new_jobs(job_names().await);

    // 2. A restore pod whose Job is gone.
    let mut spec = shell_pod("mover", "sleep 3600", &["data"])["spec"].clone();
    spec["restartPolicy"] = serde_json::json!("Never");
    let mover_labels = serde_json::json!({(labels::RESTORE): "gone", (labels::PVC): "data"});
    create::<Job>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "cairn-restore-gone", "labels": mover_labels},
            "spec": {"backoffLimit": 0, "template": {
                "metadata": {"labels": mover_labels}, "spec": spec}}
        }),
    )
    .await;
    let deadline = std::time::Instant::now() + FIVE_MIN;
    let mover = loop {
        let running = pods
            .list(&ListParams::default().labels("batch.kubernetes.io/job-name=cairn-restore-gone"))
            .await
            .expect("pods")
            .items
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        if let Some(p) = running {
            break p.metadata.name.expect("a pod name");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the mover pod never ran"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    jobs.delete(
        "cairn-restore-gone",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            ..DeleteParams::default()
        },
    )
    .await
    .expect("delete the mover's Job, leaving its pod");
    let deadline = std::time::Instant::now() + FIVE_MIN;
    while jobs
        .get_opt("cairn-restore-gone")
        .await
        .expect("get")
        .is_some()
    {
        assert!(std::time::Instant::now() < deadline, "the Job stays");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The backup Job goes: the orphaned pod holds the Restore now.
    jobs.delete(held_backup, &DeleteParams::background())
        .await
        .expect("delete the backup Job");
    create::<Backup>(&client, &ns.name, backup("during")).await;
    let r = wait_for(&restores, "second", "held by the pod", FIVE_MIN, |r| {
        r.status.as_ref().is_some_and(|s| {
            s.phase.is_finished() || s.job_name.is_some() || {
                let (reason, msg) = ready_of(s.conditions.first());
                reason == "TargetInUse" && msg.contains(&mover)
            }
        })
    })
    .await;
    let rs = r.status.expect("status");
    assert_eq!(
        rs.job_name, None,
        "the restore started beside a restore pod"
    );
    let b = wait_for(&backups, "during", "queued behind the pod", FIVE_MIN, |b| {
        finished(b)
            || b.status.as_ref().is_some_and(|s| {
                !s.job_names.is_empty() || {
                    let (reason, msg) = ready_of(s.conditions.first());
                    reason == "Queued" && msg.contains(&mover)
                }
            })
    })
    .await;
    let bs = b.status.expect("status");
    assert!(
        bs.job_names.is_empty(),
        "the backup started beside a restore pod"
    );
    no_new_jobs(job_names().await);

    pods.delete(&mover, &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the mover pod");
    let b = wait_for(&backups, "during", "finished", FIVE_MIN, finished).await;
    assert_eq!(b.status.map(|s| s.phase), Some(Phase::Succeeded));
    let r = wait_for(&restores, "second", "finished", FIVE_MIN, |r| {
        r.status.as_ref().is_some_and(|s| s.phase.is_finished())
    })
    .await;
    let rs = r.status.expect("status");
    assert_eq!(rs.phase, Phase::Succeeded, "{:?}", rs.message);
    controller.stop().await;
    ns.delete().await;
}
