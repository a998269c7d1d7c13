//! Real-API-server tests that need no kubelet: they run against the local
//! control plane of `scripts/e2e local` (scripts/k8s/up: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) and against any other cluster in
//! KUBECONFIG (kind, k3d).
//!
//! - the CRDs server-side apply and become Established;
//! - every invalid spec of the shared validation cases (crds/tests/cases) is
//!   rejected by the apiserver with its message, every example and valid
//!   variant is accepted, immutable specs stay immutable;
//! - deploy/controller.yaml, the CRDs and the chart's rendered output pass
//!   `kubectl apply --dry-run=server` without warnings;
//! - the controller, in-process but authenticated as the chart's
//!   ServiceAccount (a TokenRequest token), creates a repository Job that
//!   admission (restricted Pod Security) lets create its pod, writes status,
//!   and is never refused (audit log: no 403); the real garbage collector
//!   deletes the Job with its owner;
//! - spec and status writes as the real apiserver treats them (generation,
//!   the status subresource).
//!
//! `#[ignore]`d in the normal suite; `scripts/e2e local` runs them with
//! `--ignored` and `CAIRN_E2E_REQUIRE=1`, so a missing cluster fails.

#[path = "../../crds/tests/cases/mod.rs"]
mod cases;
#[path = "../../controller/tests/support/helm.rs"]
mod helm;

use std::time::{Duration, Instant};

use cairn_crds::BackupRepository;
use cairn_e2e::{
    apply_crds, audit_log, cairn_api, cluster, create, kubectl, pvc, wait_for, InProcessController,
    TestNamespace,
};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, ServiceAccount};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

const IGNORE: &str = "needs a Kubernetes API server in KUBECONFIG (scripts/e2e local)";

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn timed(name: &str, start: Instant) {
    eprintln!("e2e: {name} took {:.1}s", start.elapsed().as_secs_f64());
}

/// `obj` placed in `ns` under `name`.
fn placed(mut obj: Value, ns: &str, name: &str) -> Value {
    obj["metadata"]["namespace"] = json!(ns);
    obj["metadata"]["name"] = json!(name);
    obj
}

async fn create_raw(client: &Client, ns: &str, obj: &Value) -> Result<DynamicObject, kube::Error> {
    let kind = obj["kind"].as_str().expect("a case has a kind");
    let dynamic: DynamicObject = serde_json::from_value(obj.clone()).expect("case is an object");
    cairn_api(client, ns, kind)
        .create(&PostParams::default(), &dynamic)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes API server in KUBECONFIG (scripts/e2e local)"]
async fn crds_apply_and_become_established() {
    let _ = IGNORE;
    let Some(client) = cluster().await else {
        return;
    };
    let start = Instant::now();
    apply_crds(&client).await;
    // A second server-side apply of the same manifests changes nothing.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let names = [
        "backuprepositories.cairn.dev",
        "backupschedules.cairn.dev",
        "backups.cairn.dev",
        "restores.cairn.dev",
    ];
    let mut before = Vec::new();
    for n in names {
        let c = crds.get(n).await.unwrap_or_else(|e| panic!("CRD {n}: {e}"));
        before.push(c.metadata.generation);
    }
    apply_crds(&client).await;
    for (n, g) in names.iter().zip(before) {
        let c = crds.get(n).await.unwrap_or_else(|e| panic!("CRD {n}: {e}"));
        assert_eq!(c.metadata.generation, g, "re-applying {n} changed its spec");
        let conds = c.status.and_then(|s| s.conditions).unwrap_or_default();
        for t in ["Established", "NamesAccepted"] {
            assert!(
                conds.iter().any(|x| x.type_ == t && x.status == "True"),
                "{n} not {t}: {conds:?}"
            );
        }
    }
    timed("crds_apply_and_become_established", start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes API server in KUBECONFIG (scripts/e2e local)"]
async fn apiserver_enforces_the_validation_cases() {
    let Some(client) = cluster().await else {
        return;
    };
    let start = Instant::now();
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "cel").await;

    let mut accepted = 0;
    for (i, (what, obj)) in cases::examples()
        .into_iter()
        .chain(cases::valid())
        .enumerate()
    {
        let obj = placed(obj, &ns.name, &format!("valid-{i}"));
        create_raw(&client, &ns.name, &obj)
            .await
            .unwrap_or_else(|e| panic!("{what}: rejected by the apiserver: {e}\n{obj:#}"));
        accepted += 1;
    }
    let invalid = cases::invalid();
    assert!(invalid.len() >= 13);
    for (i, c) in invalid.iter().enumerate() {
        let obj = placed(c.object.clone(), &ns.name, &format!("invalid-{i}"));
        match create_raw(&client, &ns.name, &obj).await {
            Ok(_) => panic!(
                "{}: accepted by the apiserver, expected {:?}",
                c.what, c.message
            ),
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{}: {s:?}", c.what);
                assert!(
                    s.message.contains(c.message),
                    "{}: the apiserver said {:?}, expected {:?}",
                    c.what,
                    s.message,
                    c.message
                );
            }
            Err(e) => panic!("{}: {e}", c.what),
        }
    }
    for (i, c) in cases::invalid_updates().iter().enumerate() {
        let name = format!("update-{i}");
        let kind = c.old["kind"].as_str().expect("kind");
        let api = cairn_api(&client, &ns.name, kind);
        let created = create_raw(&client, &ns.name, &placed(c.old.clone(), &ns.name, &name))
            .await
            .unwrap_or_else(|e| panic!("{}: create: {e}", c.what));
        let mut new = placed(c.new.clone(), &ns.name, &name);
        new["metadata"]["resourceVersion"] = json!(created.metadata.resource_version);
        let new: DynamicObject = serde_json::from_value(new).expect("object");
        match api.replace(&name, &PostParams::default(), &new).await {
            Ok(_) => panic!("{}: update accepted, expected {:?}", c.what, c.message),
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{}: {s:?}", c.what);
                assert!(s.message.contains(c.message), "{}: {:?}", c.what, s.message);
            }
            Err(e) => panic!("{}: {e}", c.what),
        }
        // A metadata-only change of the same object is allowed.
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: label change refused: {e}", c.what));
    }
    eprintln!(
        "e2e: {accepted} valid manifests accepted, {} invalid and {} invalid updates rejected with their messages",
        invalid.len(),
        cases::invalid_updates().len()
    );
    ns.delete().await;
    timed("apiserver_enforces_the_validation_cases", start);
}

/// The rendered chart (default values, release `cairn` in `ns`), as YAML.
fn chart_yaml(values: Value, release: &str, ns: &str) -> (String, Vec<Value>) {
    let chart = helm::Chart::load(&root().join("charts/cairn")).expect("chart loads");
    let rendered = chart.render(&values, release, ns).expect("chart renders");
    let docs = helm::documents(&rendered).expect("rendered YAML parses");
    let text = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).expect("YAML"))
        .collect::<Vec<_>>()
        .join("---\n");
    (text, docs)
}

/// `kubectl apply --dry-run=server` (client-side apply, as users run it).
fn dry_run(what: &str, yaml: &str) {
    dry_run_with(what, yaml, &["apply", "--dry-run=server", "-f", "-"]);
}

/// The same as a server-side apply: for the CRDs, which the tests have
/// already server-side applied (a client-side apply over them would warn
/// about the missing last-applied annotation, a kubectl-side warning).
fn dry_run_server_side(what: &str, yaml: &str) {
    dry_run_with(
        what,
        yaml,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=cairn-e2e",
            "--dry-run=server",
            "-f",
            "-",
        ],
    );
}

fn dry_run_with(what: &str, yaml: &str, args: &[&str]) {
    let out = kubectl(args, yaml);
    assert!(
        out.success,
        "{what}: kubectl apply --dry-run=server failed:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.to_lowercase().contains("warning"),
        "{what}: warnings from the apiserver:\n{}",
        out.stderr
    );
    let applied = out
        .stdout
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    assert!(applied > 0, "{what}: nothing applied:\n{}", out.stdout);
    eprintln!("e2e: {what}: {applied} objects pass a server-side dry run, no warnings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes API server in KUBECONFIG (scripts/e2e local)"]
async fn manifests_and_chart_pass_a_server_side_dry_run() {
    let Some(client) = cluster().await else {
        return;
    };
    let start = Instant::now();
    apply_crds(&client).await;
    let crds = std::fs::read_to_string(root().join("crds/cairn.dev_crds.yaml")).expect("CRDs");
    dry_run_server_side("crds/cairn.dev_crds.yaml", &crds);
    // deploy/controller.yaml names its namespace; the objects in it can only
    // be dry-run once it exists: apply its Namespace for real (kubectl apply,
    // so a later apply of the file has the last-applied annotation).
    let ns = kubectl(
        &["apply", "-f", "-"],
        &serde_yaml::to_string(&json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cairn-system"}
        }))
        .expect("YAML"),
    );
    assert!(ns.success, "{ns:?}");
    let deploy = std::fs::read_to_string(root().join("deploy/controller.yaml")).expect("deploy");
    dry_run("deploy/controller.yaml", &deploy);

    let (text, docs) = chart_yaml(json!({}), "cairn", "cairn-system");
    assert!(docs.iter().any(|d| d["kind"] == "Deployment"));
    dry_run("chart (default values)", &text);
    let chart_crds = std::fs::read_to_string(root().join("charts/cairn/crds/cairn.dev_crds.yaml"))
        .expect("chart CRDs");
    dry_run_server_side("chart CRDs", &chart_crds);
    let tns = TestNamespace::create(&client, "chartns").await;
    let (text, _) = chart_yaml(json!({"watchNamespace": tns.name}), "cairn", "cairn-system");
    dry_run("chart (watchNamespace)", &text);
    tns.delete().await;
    timed("manifests_and_chart_pass_a_server_side_dry_run", start);
}

/// A client that authenticates with `token` to the same server as `admin`.
async fn client_with_token(token: &str) -> Client {
    let mut cfg = kube::Config::infer().await.expect("kubeconfig");
    cfg.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Client::try_from(cfg).expect("client with a token")
}

/// Audit events (JSON lines of the local apiserver) whose user is `user`.
fn audited(user: &str) -> Vec<Value> {
    let Some(path) = audit_log() else {
        return Vec::new();
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("audit log {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == user && e["stage"] == "ResponseComplete")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes API server in KUBECONFIG (scripts/e2e local)"]
async fn controller_under_the_charts_service_account() {
    let Some(admin) = cluster().await else {
        return;
    };
    let start = Instant::now();
    apply_crds(&admin).await;
    let ns = TestNamespace::create(&admin, "rbac").await;
    // The chart's RBAC, installed for real for a release in the test
    // namespace (ClusterRole mode, the default); nothing else of it.
    let release = format!("c{}", &ns.name[ns.name.len() - 6..]);
    let (_, docs) = chart_yaml(json!({}), &release, &ns.name);
    let rbac: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .collect();
    assert!(rbac.len() >= 4, "chart RBAC: {rbac:?}");
    let yaml = rbac
        .iter()
        .map(|d| serde_yaml::to_string(d).expect("YAML"))
        .collect::<Vec<_>>()
        .join("---\n");
    let out = kubectl(&["apply", "-f", "-"], &yaml);
    assert!(out.success, "apply the chart's RBAC: {}", out.stderr);
    let sa_name = rbac
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .and_then(|d| d["metadata"]["name"].as_str())
        .expect("the chart has a ServiceAccount")
        .to_string();
    let user = format!("system:serviceaccount:{}:{sa_name}", ns.name);

    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns.name);
    let tr: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600}
    }))
    .expect("token request");
    let tr = sas
        .create_token_request(&sa_name, &PostParams::default(), &tr)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {sa_name}: {e}"));
    let token = tr.status.expect("token in status").token;
    let sa = client_with_token(&token).await;

    // The token is the ServiceAccount's: it may read Jobs but not Secrets'
    // contents outside what the chart grants, and not Nodes.
    let forbidden = Api::<k8s_openapi::api::core::v1::Node>::all(sa.clone())
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&forbidden, Err(kube::Error::Api(s)) if s.code == 403),
        "the chart's ServiceAccount may list nodes? {forbidden:?}"
    );

    let controller = InProcessController::with_client(&sa, &ns.name, |_| {});
    create::<Secret>(
        &admin,
        &ns.name,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-password"},
               "stringData": {"password": "e2e-correct-horse-battery"}}),
    )
    .await;
    create::<PersistentVolumeClaim>(&admin, &ns.name, pvc("repo", "1Gi")).await;
    let repo: BackupRepository = create(
        &admin,
        &ns.name,
        json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": "local"},
            "spec": {"volume": {"claimName": "repo"},
                     "passwordSecretRef": {"name": "repo-password", "key": "password"}}
        }),
    )
    .await;
    let uid = repo.metadata.uid.clone().expect("uid");

    // The init Job appears, owned by the repository, and the Job controller
    // creates its pod: restricted Pod Security admits the agent pod.
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &ns.name);
    let job_name = cairn_controller::jobs::repository_job_name("local", 1);
    let job = wait_for(&jobs, &job_name, "created", Duration::from_secs(60), |_| {
        true
    })
    .await;
    let owner = job
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.first())
        .expect("the Job has an owner reference");
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("BackupRepository", "local", uid.as_str())
    );
    assert_eq!(owner.controller, Some(true));
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let lp = ListParams::default().labels(&format!("job-name={job_name}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let pod = loop {
        let list = pods.list(&lp).await.expect("list pods");
        if let Some(p) = list.items.into_iter().next() {
            break p;
        }
        if Instant::now() > deadline {
            let ev = kubectl(&["-n", &ns.name, "get", "events", "-o", "wide"], "");
            panic!(
                "the Job controller created no pod for {job_name} in 60 s; events:\n{}",
                ev.stdout
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let spec = pod.spec.expect("pod spec");
    let psc = spec.security_context.expect("pod security context");
    assert_eq!(psc.run_as_non_root, Some(true));
    eprintln!(
        "e2e: Job {job_name} and its pod {} admitted under restricted Pod Security",
        pod.metadata.name.unwrap_or_default()
    );

    // The controller wrote status through the status subresource.
    let repos: Api<BackupRepository> = Api::namespaced(admin.clone(), &ns.name);
    let r = wait_for(
        &repos,
        "local",
        "given a status",
        Duration::from_secs(60),
        |r| r.status.as_ref().is_some_and(|s| !s.conditions.is_empty()),
    )
    .await;
    let st = r.status.expect("status");
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.conditions[0].type_, "Ready");
    assert_eq!(st.conditions[0].status, "False", "{:?}", st.conditions);

    // The real garbage collector deletes the Job (and its pod) once the
    // owner is gone.
    let gc_start = Instant::now();
    controller.stop().await;
    repos
        .delete("local", &DeleteParams::background())
        .await
        .expect("delete the repository");
    let deadline = Instant::now() + Duration::from_secs(90);
    while jobs.get_opt(&job_name).await.expect("get job").is_some() {
        assert!(
            Instant::now() < deadline,
            "Job {job_name} outlived its owner by 90 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "e2e: garbage collector deleted Job {job_name} {:.1}s after its owner",
        gc_start.elapsed().as_secs_f64()
    );

    // Nothing the controller asked for was refused.
    if audit_log().is_some() {
        let events = audited(&user);
        assert!(
            events.len() > 5,
            "the controller made only {} requests as {user}",
            events.len()
        );
        let refused: Vec<String> = events
            .iter()
            .filter(|e| e["responseStatus"]["code"] == 403)
            .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
            .collect();
        // The one deliberate probe above (list nodes) is the only 403.
        let unexpected: Vec<&String> = refused
            .iter()
            .filter(|r| !r.contains("/api/v1/nodes"))
            .collect();
        assert!(unexpected.is_empty(), "403 for {user}: {unexpected:#?}");
        assert_eq!(refused.len(), 1, "{refused:?}");
        eprintln!(
            "e2e: {} requests as {user}, none refused but the deliberate probe",
            events.len()
        );
    } else {
        eprintln!("e2e: no audit log (not the local harness): the 403 check covers only the assertions above");
    }
    let _ = kubectl(
        &[
            "delete",
            "clusterrole,clusterrolebinding",
            &release,
            "--ignore-not-found",
        ],
        "",
    );
    ns.delete().await;
    timed("controller_under_the_charts_service_account", start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes API server in KUBECONFIG (scripts/e2e local)"]
async fn spec_and_status_writes_as_the_apiserver_treats_them() {
    let Some(client) = cluster().await else {
        return;
    };
    let start = Instant::now();
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "gen").await;
    let (_, schedule) = cases::examples()
        .into_iter()
        .find(|(n, _)| *n == "schedule.yaml")
        .expect("schedule example");
    let created = create_raw(&client, &ns.name, &placed(schedule, &ns.name, "nightly"))
        .await
        .expect("create the schedule");
    assert_eq!(
        created.metadata.generation,
        Some(1),
        "a new object starts at generation 1"
    );
    let api = cairn_api(&client, &ns.name, "BackupSchedule");

    // A status written with the object (not the subresource) is dropped.
    let with_status = api
        .patch(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 7}})),
        )
        .await
        .expect("patch");
    assert!(
        with_status
            .data
            .get("status")
            .is_none_or(|s| s.get("observedGeneration").is_none()),
        "status written through the main resource: {:?}",
        with_status.data.get("status")
    );
    assert_eq!(with_status.metadata.generation, Some(1));

    // The status subresource: status changes, spec and generation do not.
    let st = api
        .patch_status(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"observedGeneration": 1}, "spec": {"schedule": "5 5 * * *"}}),
            ),
        )
        .await
        .expect("patch status");
    assert_eq!(st.data["status"]["observedGeneration"], 1);
    assert_eq!(
        st.data["spec"]["schedule"], "0 2 * * *",
        "status write changed spec"
    );
    assert_eq!(
        st.metadata.generation,
        Some(1),
        "status write moved generation"
    );

    // Metadata changes keep the generation; a spec change moves it by one and
    // leaves status alone.
    let labelled = api
        .patch(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .expect("label");
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "a label moved generation"
    );
    let changed = api
        .patch(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"schedule": "5 5 * * *"}})),
        )
        .await
        .expect("spec change");
    assert_eq!(changed.metadata.generation, Some(2));
    assert_eq!(
        changed.data["status"]["observedGeneration"], 1,
        "spec write changed status"
    );

    // Unknown fields are pruned (structural schema), not stored.
    let pruned = api
        .patch(
            "nightly",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"noSuchField": 1}})),
        )
        .await
        .expect("unknown field");
    assert!(
        pruned.data["spec"].get("noSuchField").is_none(),
        "unknown field kept: {:?}",
        pruned.data["spec"]
    );
    assert_eq!(
        pruned.metadata.generation,
        Some(2),
        "a pruned field moved generation"
    );

    // Optimistic concurrency: a write with a stale resourceVersion is a 409.
    let mut stale = created.clone();
    stale.data["spec"]["schedule"] = json!("1 1 * * *");
    match api.replace("nightly", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("a stale replace was not refused with 409: {other:?}"),
    }
    ns.delete().await;
    timed("spec_and_status_writes_as_the_apiserver_treats_them", start);
}

/// The controller's own judgement of security overrides
/// (`privileged_mover_refused`, for namespaces the administrator did not
/// list) agrees with the API server's Pod Security admission at the
/// `restricted` level: what it lets through is admitted, what it refuses is
/// refused there too. Each pod is the agent's security contexts as the
/// controller builds them (defaults merged with the override), created with
/// a server-side dry run.
#[tokio::test]
#[ignore = "needs a Kubernetes API server in KUBECONFIG (scripts/e2e local)"]
async fn security_overrides_agree_with_restricted_pod_security() {
    use cairn_controller::jobs::{privileged_mover_refused, security, JobConfig, Work};
    use cairn_crds::JobOverrides;

    let Some(client) = cluster().await else {
        return;
    };
    let start = Instant::now();
    let ns = TestNamespace::create(&client, "psa").await;
    // (override as the user writes it, whether restricted admits it)
    let cases: Vec<(Value, bool)> = vec![
        (json!({}), true),
        (
            json!({"podSecurityContext": {"runAsUser": 999, "runAsGroup": 999, "fsGroup": 999}}),
            true,
        ),
        // An added capability keeps the default's drop: [ALL].
        (
            json!({"securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}}),
            true,
        ),
        (
            json!({"podSecurityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "cairn.json"}}}),
            true,
        ),
        (
            json!({"podSecurityContext": {"seLinuxOptions": {"level": "s0:c123,c456"}}}),
            true,
        ),
        (
            json!({"podSecurityContext": {"seLinuxOptions": {"type": "container_init_t"}}}),
            true,
        ),
        (
            json!({"podSecurityContext": {"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]}}),
            true,
        ),
        (
            json!({"securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}}}),
            true,
        ),
        (json!({"podSecurityContext": {"runAsUser": 0}}), false),
        (
            json!({"podSecurityContext": {"runAsNonRoot": false}}),
            false,
        ),
        (json!({"securityContext": {"privileged": true}}), false),
        (
            json!({"securityContext": {"allowPrivilegeEscalation": true}}),
            false,
        ),
        (
            json!({"securityContext": {"capabilities": {"add": ["DAC_READ_SEARCH"]}}}),
            false,
        ),
        (
            json!({"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}),
            false,
        ),
        (
            json!({"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}}),
            false,
        ),
        (
            json!({"podSecurityContext": {"seLinuxOptions": {"type": "spc_t"}}}),
            false,
        ),
        (
            json!({"securityContext": {"seLinuxOptions": {"user": "system_u"}}}),
            false,
        ),
        (
            json!({"podSecurityContext": {"appArmorProfile": {"type": "Unconfined"}}}),
            false,
        ),
        (
            json!({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}),
            false,
        ),
        (
            json!({"podSecurityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "65536"}]}}),
            false,
        ),
        (json!({"securityContext": {"procMount": "Unmasked"}}), false),
    ];
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let cfg = JobConfig::default();
    let mut disagreements = Vec::new();
    for (i, (over, admitted)) in cases.iter().enumerate() {
        let o: JobOverrides = serde_json::from_value(over.clone()).expect("an override");
        let refused = privileged_mover_refused(Some(&o), &ns.name, &cfg);
        let (pod_sc, sc) = security(Work::Backup, Some(&o), false);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("psa-{i}")},
            "spec": {
                "securityContext": pod_sc,
                "containers": [{"name": "agent", "image": "cairn.local/cairn:e2e", "securityContext": sc}],
            }
        }))
        .expect("a pod");
        let result = pods.create(&dry, &pod).await;
        let psa_admits = match &result {
            Ok(_) => true,
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("PodSecurity") => false,
            // Refused before admission (e.g. procMount needs hostUsers: false).
            Err(kube::Error::Api(s)) if s.code == 422 => false,
            Err(e) => panic!("case {over}: {e:?}"),
        };
        if psa_admits != *admitted || refused.is_none() != *admitted {
            disagreements.push(format!(
                "{over}: expected admitted={admitted}; Pod Security admitted={psa_admits} ({:?}); controller refused={refused:?}",
                result.err()
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    ns.delete().await;
    timed(
        "security_overrides_agree_with_restricted_pod_security",
        start,
    );
}
