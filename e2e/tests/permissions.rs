//! Real-cluster tests of the agent's permission model (docs/OPERATIONS.md,
//! "Permissions"): data owned by another user, volumes whose root belongs to
//! root (as on block storage), the restricted default, running as the
//! application's user, and the privileged mover.
//!
//! Volumes come from `CAIRN_E2E_BLOCK_STORAGE_CLASS` (default
//! `cairn-block`, the local cluster's root-owned `local` PVs with a
//! lost+found, to which the kubelet applies fsGroup).
//!
//! Marked `#[ignore]`; run by `scripts/e2e` (see e2e/README.md).

use cairn_crds::{Backup, Phase, Restore};
use cairn_e2e::{
    apply_crds, cluster, create, create_backup, finished_backup, password_secret, pvc_of_class,
    repository_verdict, restore_into_new_pvc, run_pod, shell_pod_as, shell_pod_as_user,
    volume_repository, warning_events, InProcessController, TestNamespace,
};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;

fn block_class() -> String {
    std::env::var("CAIRN_E2E_BLOCK_STORAGE_CLASS").unwrap_or_else(|_| "cairn-block".into())
}

/// What PostgreSQL's data directory looks like: 0700, files 0600, owned by
/// the database's user; plus a world-readable file beside it.
const WRITE_APP_DATA: &str = r#"
cd /pgdata
mkdir -m 0700 pg pg/base pg/base/1
i=0
while [ $i -lt 20 ]; do
  head -c $((i * 4099 + 1)) /dev/urandom > pg/base/1/$((16384 + i))
  chmod 0600 pg/base/1/$((16384 + i))
  i=$((i + 1))
done
echo 16 > pg/PG_VERSION; chmod 0600 pg/PG_VERSION
echo "application readme" > README; chmod 0644 README
"#;

/// The manifest of a tree with owners: type, mode, uid, gid, size, checksum.
/// Directories' set-group-ID bit (inherited from a volume root that the
/// kubelet made setgid for fsGroup; agent restore Jobs clear set-id bits) is
/// left out.
const MANIFEST: &str = r#"
cd "$1"
find . -path ./lost+found -prune -o -print | sort | while read -r p; do
  if [ "$p" = . ]; then continue; fi
  if [ -d "$p" ]; then m=$(stat -c %a "$p"); [ ${#m} -eq 4 ] && m=${m#?}; echo "D $p $m $(stat -c '%u %g' "$p")";
  else echo "F $p $(stat -c '%a %u %g %s' "$p") $(sha256sum < "$p" | cut -d' ' -f1)"; fi
done
"#;

fn manifest(dir: &str) -> String {
    format!("set -- {dir}\n{MANIFEST}")
}

async fn repository(client: &kube::Client, ns: &str) {
    password_secret(client, ns, "repo-password", "e2e-correct-horse-battery").await;
    // The repository on a root-owned volume: init must manage with fsGroup.
    create::<PersistentVolumeClaim>(client, ns, pvc_of_class("repo", "2Gi", &block_class())).await;
    volume_repository(client, ns, "local", "repo", "repo-password").await;
    let (status, reason, msg) = repository_verdict(client, ns, "local").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Initialized"),
        "repository on a root-owned volume: {msg}"
    );
}

async fn backup(client: &kube::Client, ns: &str, name: &str, job: serde_json::Value) -> Backup {
    create_backup(client, ns, name, "local", &["pgdata"], job).await;
    finished_backup(client, ns, name).await
}

async fn restore(client: &kube::Client, ns: &str, name: &str, job: serde_json::Value) -> Restore {
    let class = block_class();
    let r = restore_into_new_pvc(
        client,
        ns,
        name,
        "local",
        "pgdata",
        (name, Some(&class)),
        job,
    )
    .await;
    let st = r.status.clone().expect("status");
    assert_eq!(
        st.phase,
        Phase::Succeeded,
        "restore {name}: {:?}",
        st.message
    );
    let ready = &st.conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Succeeded")
    );
    r
}

/// The restricted default cannot read another user's 0700 data: the backup
/// is PartiallyFailed, with a Warning Event that names the files, not a
/// success. Run as the application's user (an override merged into the
/// restricted default), it reads everything, and a restore run the same way
/// gives the application back its files, modes and owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn data_of_another_user_under_restricted_pod_security() {
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "perm").await;
    let controller = InProcessController::start(&client, &ns.name).await;
    let t = std::time::Instant::now();
    repository(&client, &ns.name).await;
    eprintln!(
        "e2e: repository on a root-owned volume Ready after {:?}",
        t.elapsed()
    );

    create::<PersistentVolumeClaim>(
        &client,
        &ns.name,
        pvc_of_class("pgdata", "1Gi", &block_class()),
    )
    .await;
    run_pod(
        &client,
        &ns.name,
        shell_pod_as_user("postgres", WRITE_APP_DATA, &["pgdata"], 999, 999),
    )
    .await;
    let before = run_pod(
        &client,
        &ns.name,
        shell_pod_as_user(
            "manifest-before",
            &manifest("/pgdata"),
            &["pgdata"],
            999,
            999,
        ),
    )
    .await;
    assert!(before.contains("D ./pg 700 999 999"), "{before}");

    // The default agent (65532) cannot read pg/.
    let t = std::time::Instant::now();
    let b = backup(&client, &ns.name, "as-agent", serde_json::json!({})).await;
    let st = b.status.expect("status");
    assert_eq!(st.phase, Phase::PartiallyFailed, "{:?}", st.message);
    let msg = st.message.unwrap_or_default();
    assert!(
        msg.contains("/data/pg") && msg.contains("could not be read"),
        "{msg}"
    );
    assert_eq!(st.conditions[0].status, "False");
    assert_eq!(st.snapshots.len(), 1);
    assert_eq!(st.snapshots[0].unreadable_files, 1, "{:?}", st.snapshots[0]);
    let warnings = warning_events(&client, &ns.name, "as-agent").await;
    assert!(
        warnings.iter().any(|w| w.starts_with("PartiallyFailed:")),
        "{warnings:?}"
    );
    eprintln!(
        "e2e: default backup PartiallyFailed after {:?}",
        t.elapsed()
    );

    // The privileged mover is refused here: the administrator did not list
    // this namespace. No Job runs.
    let b = backup(
        &client,
        &ns.name,
        "as-root",
        serde_json::json!({"privilegedMover": true}),
    )
    .await;
    let st = b.status.expect("status");
    assert_eq!(st.phase, Phase::Failed);
    assert_eq!(st.conditions[0].reason, "PrivilegedMoverNotAllowed");
    assert!(st.job_names.is_empty());

    // As the application's user: everything, under restricted Pod Security.
    let t = std::time::Instant::now();
    let as_app = serde_json::json!({"podSecurityContext": {"runAsUser": 999, "runAsGroup": 999}});
    let b = backup(&client, &ns.name, "as-app", as_app).await;
    let st = b.status.expect("status");
    assert_eq!(st.phase, Phase::Succeeded, "{:?}", st.message);
    assert_eq!(st.snapshots[0].unreadable_files, 0);
    assert_eq!(st.snapshots[0].files, 22, "{:?}", st.snapshots[0]);
    assert_eq!(
        (
            st.conditions[0].status.as_str(),
            st.conditions[0].reason.as_str()
        ),
        ("True", "Succeeded")
    );
    eprintln!("e2e: backup as uid 999 Succeeded after {:?}", t.elapsed());

    // Restore as the application's user into a new root-owned volume.
    let t = std::time::Instant::now();
    let r = restore(
        &client,
        &ns.name,
        "pgdata-restored",
        serde_json::json!({"podSecurityContext": {"runAsUser": 999, "runAsGroup": 999, "fsGroup": 999}}),
    )
    .await;
    assert_eq!(r.status.expect("status").files, 22);
    let after = run_pod(
        &client,
        &ns.name,
        shell_pod_as_user(
            "manifest-after",
            &manifest("/pgdata-restored"),
            &["pgdata-restored"],
            999,
            999,
        ),
    )
    .await;
    assert_eq!(
        before, after,
        "restored tree differs (mode uid gid size sha256)"
    );
    eprintln!("e2e: restore as uid 999 verified after {:?}", t.elapsed());

    controller.stop().await;
    ns.delete().await;
}

/// The privileged mover, where the administrator allows it (a `baseline`
/// namespace listed in the controller's settings): the backup reads data of
/// several users, the restore gives every file its owner back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG and the agent image (scripts/e2e)"]
async fn the_privileged_mover_backs_up_and_restores_owners() {
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let ns = TestNamespace::create_at(&client, "mover", "baseline").await;
    let allowed = ns.name.clone();
    let controller = InProcessController::start_with(&client, &ns.name, move |c| {
        c.privileged_mover_namespaces = vec![allowed];
    })
    .await;
    repository(&client, &ns.name).await;
    create::<PersistentVolumeClaim>(
        &client,
        &ns.name,
        pvc_of_class("pgdata", "1Gi", &block_class()),
    )
    .await;
    // Data of three users, as a root init container would leave it.
    let root = |name: &str, script: &str, claim: &str| {
        shell_pod_as(
            name,
            script,
            &[claim],
            serde_json::json!({"runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}}),
            serde_json::json!({}),
        )
    };
    let write = format!(
        "{WRITE_APP_DATA}\nchown -R 999:999 /pgdata/pg\nmkdir -m 0750 /pgdata/other\n\
         echo secret > /pgdata/other/key; chmod 0400 /pgdata/other/key\n\
         chown -R 1001:2002 /pgdata/other\n"
    );
    run_pod(&client, &ns.name, root("writer", &write, "pgdata")).await;
    let before = run_pod(
        &client,
        &ns.name,
        root("manifest-before", &manifest("/pgdata"), "pgdata"),
    )
    .await;
    assert!(before.contains("F ./other/key 400 1001 2002"), "{before}");

    let b = backup(
        &client,
        &ns.name,
        "mover",
        serde_json::json!({"privilegedMover": true}),
    )
    .await;
    let st = b.status.expect("status");
    assert_eq!(st.phase, Phase::Succeeded, "{:?}", st.message);
    assert_eq!(st.snapshots[0].files, 23, "{:?}", st.snapshots[0]);

    let r = restore(
        &client,
        &ns.name,
        "pgdata-restored",
        serde_json::json!({"privilegedMover": true}),
    )
    .await;
    assert_eq!(r.status.expect("status").files, 23);
    let after = run_pod(
        &client,
        &ns.name,
        root(
            "manifest-after",
            &manifest("/pgdata-restored"),
            "pgdata-restored",
        ),
    )
    .await;
    assert_eq!(
        before, after,
        "restored tree differs (mode uid gid size sha256)"
    );

    controller.stop().await;
    ns.delete().await;
}
