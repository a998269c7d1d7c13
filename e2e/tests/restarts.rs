//! The API server restarted (killed, down for a few seconds, started again)
//! while the controller is in the middle of a backup: the Backup still ends
//! with its one Job's result, and the controller's watches come back (a
//! Backup created afterwards is done too). Local cluster only
//! (`scripts/k8s/restart`); a test binary of its own, because the restart
//! disturbs every test that talks to the API server meanwhile.
//!
//! Marked `#[ignore]`; run by `scripts/e2e local`.

use std::time::{Duration, Instant};

use cairn_crds::Phase;
use cairn_e2e::{
    apply_crds, cluster, create, create_backup, finished_backup, password_secret, pvc,
    repository_verdict, volume_repository, wait_for, InProcessController, TestNamespace,
};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::ListParams;
use kube::Api;

const FIVE_MIN: Duration = Duration::from_secs(300);

async fn succeeded(client: &kube::Client, ns: &str, name: &str) {
    let st = finished_backup(client, ns, name)
        .await
        .status
        .expect("status");
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
    password_secret(
        &client,
        &ns.name,
        "repo-password",
        "e2e-correct-horse-battery",
    )
    .await;
    create::<PersistentVolumeClaim>(&client, &ns.name, pvc("data", "1Gi")).await;
    create::<PersistentVolumeClaim>(&client, &ns.name, pvc("repo", "1Gi")).await;
    volume_repository(&client, &ns.name, "local", "repo", "repo-password").await;
    let (status, _, msg) = repository_verdict(&client, &ns.name, "local").await;
    assert_eq!(status, "True", "{msg}");

    create_backup(
        &client,
        &ns.name,
        "before",
        "local",
        &["data"],
        serde_json::json!({}),
    )
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let name = cairn_controller::jobs::backup_job_name("before", "data");
    wait_for(&jobs, &name, "created", FIVE_MIN, |_| true).await;
    let t = Instant::now();
    let down_at = k8s_openapi::jiff::Timestamp::now();
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
    // Until its RBAC caches are filled, a restarted API server refuses the
    // watches that reconnect first (seen: 4 watches, 403).
    ns.tolerate_refusals(
        down_at,
        k8s_openapi::jiff::Timestamp::now() + std::time::Duration::from_secs(5),
    );
    succeeded(&client, &ns.name, "before").await;
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
    create_backup(
        &client,
        &ns.name,
        "after",
        "local",
        &["data"],
        serde_json::json!({}),
    )
    .await;
    succeeded(&client, &ns.name, "after").await;
    eprintln!("e2e: both backups done {:?} after the restart", t.elapsed());
    controller.stop().await;
    ns.delete().await;
}
