//! The API server restarted (killed, down for a few seconds, started again)
//! while the controller is in the middle of a backup: the Backup still ends
//! with its one Job's result, and the controller's watches come back (a
//! Backup created afterwards is done too). Local cluster only
//! (`scripts/k8s/restart`); a test binary of its own, because the restart
//! disturbs every test that talks to the API server meanwhile.
//!
//! Marked `#[ignore]`; run by `scripts/e2e local`.

use std::time::{Duration, Instant};

use cairn_crds::{Backup, BackupRepository, Phase};
use cairn_e2e::{apply_crds, cluster, create, pvc, wait_for, InProcessController, TestNamespace};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::ListParams;
use kube::Api;

const FIVE_MIN: Duration = Duration::from_secs(300);

async fn backup(client: &kube::Client, ns: &str, name: &str) {
    create::<Backup>(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": name},
            "spec": {"repository": {"name": "local"}, "pvcs": ["data"]}
        }),
    )
    .await;
}

async fn succeeded(api: &Api<Backup>, name: &str) {
    let b = wait_for(api, name, "finished", FIVE_MIN, |b| {
        b.status.as_ref().is_some_and(|s| s.phase.is_finished())
    })
    .await;
    let st = b.status.expect("status");
    assert_eq!(st.phase, Phase::Succeeded, "{name}: {:?}", st.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster of scripts/e2e local (it restarts its API server)"]
async fn apiserver_restarted_mid_backup() {
    let Some(client) = cluster().await else {
        return;
    };
    if std::env::var_os("CAIRN_K8S_STATE").is_none() {
        eprintln!(
            "e2e: NOT RUN: not the local cluster (CAIRN_K8S_STATE), which this test restarts"
        );
        return;
    }
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "restart").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    create::<Secret>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "repo-password"},
            "stringData": {"password": "e2e-correct-horse-battery"}
        }),
    )
    .await;
    create::<PersistentVolumeClaim>(&client, &ns.name, pvc("data", "1Gi")).await;
    create::<PersistentVolumeClaim>(&client, &ns.name, pvc("repo", "1Gi")).await;
    create::<BackupRepository>(
        &client,
        &ns.name,
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
    let repos: Api<BackupRepository> = Api::namespaced(client.clone(), &ns.name);
    wait_for(&repos, "local", "Ready", FIVE_MIN, |r| {
        r.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    })
    .await;

    backup(&client, &ns.name, "before").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let name = cairn_controller::jobs::backup_job_name("before", "data");
    wait_for(&jobs, &name, "created", FIVE_MIN, |_| true).await;
    let t = Instant::now();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/k8s/restart");
    let out = std::process::Command::new(script)
        .args(["kube-apiserver", "--down", "5"])
        .output()
        .expect("run scripts/k8s/restart");
    assert!(
        out.status.success(),
        "restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "e2e: API server killed, down 5 s, ready again after {:?}",
        t.elapsed()
    );
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    succeeded(&backups, "before").await;
    let n = jobs
        .list(&ListParams::default())
        .await
        .expect("jobs")
        .items
        .iter()
        .filter(|j| {
            j.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("cairn-backup-"))
        })
        .count();
    assert_eq!(n, 1, "one backup Job across the restart");
    // The watches came back.
    backup(&client, &ns.name, "after").await;
    succeeded(&backups, "after").await;
    eprintln!("e2e: both backups done {:?} after the restart", t.elapsed());
    controller.stop().await;
    ns.delete().await;
}
