//! Real-cluster failure tests: each failure ends in a clear condition and a
//! Warning Event, and the object recovers once the cause is fixed.
//!
//! Marked `#[ignore]`; run by `scripts/e2e` (see e2e/README.md).

use std::time::{Duration, Instant};

use cairn_crds::{Backup, BackupRepository, Phase};
use cairn_e2e::{
    apply_crds, cluster, create, create_backup, finished_backup, password_secret, pvc,
    repository_verdict, volume_repository, wait_for, warning_events, InProcessController,
    TestNamespace,
};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, ResourceQuota, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::Api;

const FIVE_MIN: Duration = Duration::from_secs(300);

/// Wait until the Backup's Ready condition has `reason`; return its message.
async fn condition(api: &Api<Backup>, name: &str, reason: &str, timeout: Duration) -> String {
    let b = wait_for(api, name, reason, timeout, |b| {
        b.status
            .as_ref()
            .and_then(|s| s.conditions.first())
            .is_some_and(|c| c.reason == reason)
    })
    .await;
    b.status.expect("status").conditions.remove(0).message
}

/// How many Warning Events with `reason` are about `about`.
async fn warnings(client: &kube::Client, ns: &str, about: &str, reason: &str) -> usize {
    let prefix = format!("{reason}: ");
    warning_events(client, ns, about)
        .await
        .iter()
        .filter(|w| w.starts_with(&prefix))
        .count()
}

/// A wrong password: the repository says so (Ready=False, Unreachable, an
/// Event); pointing it at the right Secret (a spec change, as GitOps makes
/// it) makes it Ready. A pod refused by a ResourceQuota: the Backup says why
/// (JobStuck, with the admission message) instead of "running", and
/// completes once the quota is gone. A PVC that does not exist (under a name
/// longer than a label value may be): the Backup waits with PVCNotFound and
/// backs it up once it appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn failures_are_reported_and_recover() {
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "fail").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    password_secret(&client, &ns.name, "right", "e2e-correct-horse-battery").await;
    password_secret(&client, &ns.name, "wrong", "not-the-password").await;
    create::<PersistentVolumeClaim>(&client, &ns.name, pvc("repo", "2Gi")).await;
    volume_repository(&client, &ns.name, "local", "repo", "right").await;
    let (status, reason, msg) = repository_verdict(&client, &ns.name, "local").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Initialized"),
        "{msg}"
    );

    // Wrong password, then fixed in the spec.
    let t = Instant::now();
    volume_repository(&client, &ns.name, "same-place", "repo", "wrong").await;
    let (status, reason, msg) = repository_verdict(&client, &ns.name, "same-place").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Unreachable"),
        "{msg}"
    );
    assert!(msg.contains("password"), "{msg}");
    assert_eq!(
        warnings(&client, &ns.name, "same-place", "Unreachable").await,
        1
    );
    let repos: Api<BackupRepository> = Api::namespaced(client.clone(), &ns.name);
    repos
        .patch(
            "same-place",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"passwordSecretRef": {"name": "right"}}})),
        )
        .await
        .expect("fix the Secret reference");
    let (status, reason, msg) = repository_verdict(&client, &ns.name, "same-place").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Reachable"),
        "{msg}"
    );
    eprintln!(
        "e2e: wrong password reported and fixed in {:?}",
        t.elapsed()
    );

    // A quota that admits no pod.
    let t = Instant::now();
    create::<PersistentVolumeClaim>(&client, &ns.name, pvc("data", "1Gi")).await;
    create::<ResourceQuota>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "no-pods"},
            "spec": {"hard": {"pods": "0"}}
        }),
    )
    .await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    create_backup(
        &client,
        &ns.name,
        "quota",
        "local",
        &["data"],
        serde_json::json!({}),
    )
    .await;
    let msg = condition(&backups, "quota", "JobStuck", FIVE_MIN).await;
    assert!(
        msg.contains("cannot be created") && msg.contains("exceeded quota"),
        "{msg}"
    );
    let b = backups.get("quota").await.expect("backup");
    assert_eq!(
        b.status.as_ref().map(|s| s.conditions[0].status.as_str()),
        Some("False")
    );
    assert_eq!(warnings(&client, &ns.name, "quota", "JobStuck").await, 1);
    eprintln!("e2e: pod refused by quota reported after {:?}", t.elapsed());
    Api::<ResourceQuota>::namespaced(client.clone(), &ns.name)
        .delete("no-pods", &DeleteParams::default())
        .await
        .expect("delete quota");
    let b = finished_backup(&client, &ns.name, "quota").await;
    let st = b.status.expect("status");
    assert_eq!(st.phase, Phase::Succeeded, "{:?}", st.message);
    eprintln!("e2e: quota removed, backup done after {:?}", t.elapsed());

    // A PVC that is not there yet, with a name no label value can hold.
    let t = Instant::now();
    let long = format!("volume-{}", "x".repeat(90));
    let name = format!("backup-of-a-volume-with-a-long-name-{}", "y".repeat(40));
    create_backup(
        &client,
        &ns.name,
        &name,
        "local",
        &[&long],
        serde_json::json!({}),
    )
    .await;
    let msg = condition(&backups, &name, "PVCNotFound", FIVE_MIN).await;
    assert!(msg.contains(&long), "{msg}");
    assert_eq!(warnings(&client, &ns.name, &name, "PVCNotFound").await, 1);
    create::<PersistentVolumeClaim>(&client, &ns.name, pvc(&long, "1Gi")).await;
    let b = finished_backup(&client, &ns.name, &name).await;
    let st = b.status.expect("status");
    assert_eq!(st.phase, Phase::Succeeded, "{:?}", st.message);
    assert!(st.job_names[0].len() <= 63);
    eprintln!(
        "e2e: missing PVC waited for and backed up in {:?}",
        t.elapsed()
    );

    controller.stop().await;
    ns.delete().await;
}

/// A Job that Kubernetes stops at its deadline (here: its pod can never
/// start, the password Secret lacks the key) fails the Backup with the
/// Job's reason, DeadlineExceeded, not an unexplained "pod gone".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn a_job_past_its_deadline_fails_with_the_reason() {
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "deadline").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    create::<Secret>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "keyless"},
            "stringData": {"not-password": "x"}
        }),
    )
    .await;
    create::<PersistentVolumeClaim>(&client, &ns.name, pvc("repo", "1Gi")).await;
    create::<PersistentVolumeClaim>(&client, &ns.name, pvc("data", "1Gi")).await;
    volume_repository(&client, &ns.name, "local", "repo", "keyless").await;
    let t = Instant::now();
    create_backup(
        &client,
        &ns.name,
        "late",
        "local",
        &["data"],
        serde_json::json!({"activeDeadlineSeconds": 60}),
    )
    .await;
    // (JobStuck may show before the deadline, if a reconcile falls in the
    // minute; the end is what counts.)
    let b = finished_backup(&client, &ns.name, "late").await;
    let st = b.status.expect("status");
    assert_eq!(st.phase, Phase::Failed);
    let msg = st.message.unwrap_or_default();
    assert!(msg.contains("DeadlineExceeded"), "{msg}");
    assert!(warnings(&client, &ns.name, "late", "Failed").await >= 1);
    eprintln!("e2e: deadline exceeded reported after {:?}", t.elapsed());
    controller.stop().await;
    ns.delete().await;
}

/// A selector that matches 300 PVCs: more than a Backup may hold (its CRD's
/// maxItems, 256). The run makes two Backups that together cover every PVC,
/// instead of one the API server refuses with a 422 on every reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn a_selector_matching_300_pvcs_makes_backups_the_api_accepts() {
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "many").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    password_secret(&client, &ns.name, "right", "e2e-correct-horse-battery").await;
    let t = Instant::now();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..300 {
        // A class nothing provides: the claims stay Pending, which is all
        // the schedule needs to see.
        let mut c = pvc(&format!("vol-{i:03}"), "1Gi");
        c["metadata"]["labels"] = serde_json::json!({"backup": "yes"});
        c["spec"]["storageClassName"] = serde_json::json!("not-provisioned");
        let c: PersistentVolumeClaim = serde_json::from_value(c).expect("claim");
        claims
            .create(&kube::api::PostParams::default(), &c)
            .await
            .expect("create claim");
    }
    eprintln!("e2e: 300 PVCs created in {:?}", t.elapsed());
    volume_repository(&client, &ns.name, "local", "repo", "right").await;
    create::<cairn_crds::BackupSchedule>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "all"},
            "spec": {
                "repository": {"name": "local"},
                "schedule": "* * * * *",
                "selector": {"matchLabels": {"backup": "yes"}}
            }
        }),
    )
    .await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    let deadline = Instant::now() + Duration::from_secs(180);
    let made = loop {
        let list = backups.list(&ListParams::default()).await.expect("backups");
        if list.items.len() >= 2 {
            break list.items;
        }
        assert!(
            Instant::now() < deadline,
            "no Backups after 180 s: {:?}",
            list.items.len()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let mut covered: Vec<String> = made.iter().flat_map(|b| b.spec.pvcs.clone()).collect();
    assert!(made.iter().all(|b| b.spec.pvcs.len() <= 256));
    covered.sort();
    covered.dedup();
    assert_eq!(
        covered.len(),
        300,
        "every PVC in exactly one Backup of the run"
    );
    assert_eq!(made.iter().map(|b| b.spec.pvcs.len()).sum::<usize>(), 300);
    eprintln!(
        "e2e: Backups {:?} after {:?}",
        made.iter()
            .map(|b| b.metadata.name.clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        t.elapsed()
    );
    controller.stop().await;
    ns.delete().await;
}

/// Prune is safe only for backups that finish within its grace period. A
/// Backup whose Job deadline (its own, or the controller's default of 6 h)
/// is not shorter than the repository's grace fails at once with
/// DeadlineExceedsGrace and a Warning, and no Job is made; one below it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn a_backup_deadline_beyond_the_prune_grace_is_refused() {
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "grace").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    password_secret(&client, &ns.name, "pw", "e2e-correct-horse-battery").await;
    create::<PersistentVolumeClaim>(&client, &ns.name, pvc("repo", "1Gi")).await;
    create::<PersistentVolumeClaim>(&client, &ns.name, pvc("data", "1Gi")).await;
    create::<BackupRepository>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": "short-grace"},
            "spec": {
                "volume": {"claimName": "repo"},
                "passwordSecretRef": {"name": "pw", "key": "password"},
                "maintenance": {"pruneSchedule": "0 3 * * 0", "grace": "2h"}
            }
        }),
    )
    .await;
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    for (name, job) in [
        (
            "own-deadline",
            serde_json::json!({"activeDeadlineSeconds": 7200}),
        ),
        ("default-deadline", serde_json::json!({})),
    ] {
        create_backup(&client, &ns.name, name, "short-grace", &["data"], job).await;
        let b = finished_backup(&client, &ns.name, name).await;
        let st = b.status.expect("status");
        assert_eq!(st.phase, Phase::Failed, "{name}");
        let msg = &st.conditions[0].message;
        assert_eq!(
            st.conditions[0].reason, "DeadlineExceedsGrace",
            "{name}: {msg}"
        );
        assert!(msg.contains("2h"), "{name}: {msg}");
        assert!(st.job_names.is_empty(), "{name}: a Job was made");
        assert_eq!(
            warnings(&client, &ns.name, name, "DeadlineExceedsGrace").await,
            1
        );
    }
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        jobs.list(&ListParams::default().labels("cairn.dev/backup"))
            .await
            .unwrap()
            .items
            .is_empty(),
        "no backup Job may exist"
    );
    create_backup(
        &client,
        &ns.name,
        "within",
        "short-grace",
        &["data"],
        serde_json::json!({"activeDeadlineSeconds": 3600}),
    )
    .await;
    let b = finished_backup(&client, &ns.name, "within").await;
    let st = b.status.expect("status");
    assert_eq!(st.phase, Phase::Succeeded, "{:?}", st.conditions);
    let _ = condition(&backups, "within", "Succeeded", FIVE_MIN).await;
    controller.stop().await;
    ns.delete().await;
}
