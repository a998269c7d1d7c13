//! End-to-end tests against a real Kubernetes cluster (from `KUBECONFIG`).
//! See `e2e/README.md`. Without a cluster the tests say that they did not run.
//!
//! This crate holds the helpers: finding the cluster, a throw-away namespace,
//! applying the CRDs, running the controller in-process, and waiting for
//! conditions with a deadline that names what it was waiting for.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_controller::context::Context;
use cairn_controller::jobs::JobConfig;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The kubeconfig path the e2e tests would use, if any.
pub fn kubeconfig() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let home = std::env::var_os("HOME")?;
    let p = std::path::Path::new(&home).join(".kube/config");
    p.exists().then_some(p)
}

/// A client for the cluster, or `None` (with the reason printed) when there
/// is no cluster to test against. With `CAIRN_E2E_REQUIRE=1` a missing
/// cluster is a failure instead.
pub async fn cluster() -> Option<Client> {
    let why = match kubeconfig() {
        None => "no KUBECONFIG and no ~/.kube/config".to_string(),
        Some(p) if !p.exists() => format!("KUBECONFIG {} does not exist", p.display()),
        Some(_) => match Client::try_default().await {
            Err(e) => format!("cannot build a client: {e}"),
            Ok(c) => {
                match tokio::time::timeout(Duration::from_secs(15), c.apiserver_version()).await {
                    Ok(Ok(_)) => return Some(c),
                    Ok(Err(e)) => format!("the API server does not answer: {e}"),
                    Err(_) => "the API server did not answer within 15 s".to_string(),
                }
            }
        },
    };
    if std::env::var("CAIRN_E2E_REQUIRE").is_ok_and(|v| v == "1") {
        panic!("e2e: CAIRN_E2E_REQUIRE=1 but {why}");
    }
    eprintln!("e2e: NOT RUN: {why} (see e2e/README.md)");
    None
}

/// Apply every CRD of `crds/cairn.dev_crds.yaml` (server-side apply) and
/// wait until each is Established.
pub async fn apply_crds(client: &Client) {
    let text = include_str!("../../crds/cairn.dev_crds.yaml");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let pp = PatchParams::apply("cairn-e2e").force();
    let mut names = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let crd: CustomResourceDefinition =
            serde::Deserialize::deserialize(doc).expect("crds/cairn.dev_crds.yaml parses");
        let name = crd.metadata.name.clone().expect("CRD has a name");
        api.patch(&name, &pp, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
        names.push(name);
    }
    for name in names {
        wait_for(&api, &name, "Established", Duration::from_secs(60), |c| {
            c.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        })
        .await;
    }
}

/// A throw-away namespace. A test deletes it with [`TestNamespace::delete`]
/// when it passes; a failed test leaves it behind for inspection.
pub struct TestNamespace {
    /// Its name.
    pub name: String,
    client: Client,
    /// Times in which refusals are expected (see
    /// [`TestNamespace::tolerate_refusals`]).
    tolerated: std::sync::Mutex<Vec<(Timestamp, Timestamp)>>,
}

impl TestNamespace {
    /// Create `cairn-e2e-<suffix>-<time>` with the restricted Pod Security
    /// level enforced, so the agent Jobs must comply with it.
    pub async fn create(client: &Client, suffix: &str) -> Self {
        Self::create_at(client, suffix, "restricted").await
    }

    /// [`TestNamespace::create`] with another Pod Security level enforced
    /// (`baseline` for the privileged mover).
    pub async fn create_at(client: &Client, suffix: &str, level: &str) -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let name = format!("cairn-e2e-{suffix}-{}", secs % 1_000_000);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "labels": {"pod-security.kubernetes.io/enforce": level}
            }
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        eprintln!("e2e: namespace {name}");
        TestNamespace {
            name,
            client: client.clone(),
            tolerated: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Refusals received between `from` and `to` do not fail
    /// [`TestNamespace::delete`]: a restarted API server answers 403 to the
    /// requests that reach it before its authorizer's caches are filled (the
    /// controller's watches reconnect at once), and the test that restarts it
    /// checks that the controller recovers.
    pub fn tolerate_refusals(&self, from: Timestamp, to: Timestamp) {
        self.tolerated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((from, to));
    }

    /// Delete the namespace (kept with `CAIRN_E2E_KEEP=1`). First, where the
    /// local cluster's audit log is at hand: the controller's ServiceAccount
    /// of this namespace (see [`controller_client`]) was never refused (403).
    ///
    /// # Panics
    /// When it was: the chart's RBAC lacks something the controller does.
    pub async fn delete(&self) {
        let user = format!("system:serviceaccount:{}:cairn-controller", self.name);
        let tolerated = self
            .tolerated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let forbidden = forbidden_requests_outside(&user, &tolerated);
        assert!(
            forbidden.is_empty(),
            "the controller's ServiceAccount was refused: {forbidden:#?}"
        );
        if std::env::var("CAIRN_E2E_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("e2e: keeping namespace {} (CAIRN_E2E_KEEP=1)", self.name);
            return;
        }
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await;
    }
}

/// The controller, running in-process against the cluster and watching one
/// namespace. Stopped when dropped.
pub struct InProcessController {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A client for namespace `ns` with exactly the controller's rights: a
/// ServiceAccount `cairn-controller` there, bound by a RoleBinding to the
/// ClusterRole `cairn-e2e-controller`, which holds the rules of
/// `deploy/controller.yaml`'s ClusterRole (equal to the chart's, as
/// controller/tests/chart.rs checks), authenticated with a TokenRequest
/// token. `CAIRN_E2E_CONTROLLER_AS_ADMIN=1` keeps the admin client.
///
/// # Panics
/// When the cluster refuses to set it up (the test cannot go on).
pub async fn controller_client(admin: &Client, ns: &str) -> Client {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
    if std::env::var("CAIRN_E2E_CONTROLLER_AS_ADMIN").is_ok_and(|v| v == "1") {
        return admin.clone();
    }
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/controller.yaml"
    ))
    .expect("deploy/controller.yaml");
    let mut role: ClusterRole = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde_json::Value::deserialize(d).ok())
        .find(|d| d["kind"] == "ClusterRole")
        .and_then(|d| serde_json::from_value(d).ok())
        .expect("a ClusterRole in deploy/controller.yaml");
    role.metadata = kube::api::ObjectMeta {
        name: Some("cairn-e2e-controller".into()),
        ..Default::default()
    };
    let pp = PatchParams::apply("cairn-e2e").force();
    Api::<ClusterRole>::all(admin.clone())
        .patch("cairn-e2e-controller", &pp, &Patch::Apply(&role))
        .await
        .expect("apply the controller's ClusterRole");
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "cairn-controller"}
    }))
    .expect("service account");
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    sas.patch("cairn-controller", &pp, &Patch::Apply(&sa))
        .await
        .expect("apply the ServiceAccount");
    let rb: RoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "cairn-controller"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "cairn-e2e-controller"},
        "subjects": [{"kind": "ServiceAccount", "name": "cairn-controller", "namespace": ns}]
    }))
    .expect("role binding");
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .patch("cairn-controller", &pp, &Patch::Apply(&rb))
        .await
        .expect("apply the RoleBinding");
    let tr: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 7200}
    }))
    .expect("token request");
    let token = sas
        .create_token_request("cairn-controller", &PostParams::default(), &tr)
        .await
        .expect("TokenRequest")
        .status
        .expect("token")
        .token;
    let mut cfg = kube::Config::infer().await.expect("kubeconfig");
    cfg.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Client::try_from(cfg).expect("client with the ServiceAccount's token")
}

impl InProcessController {
    /// Start the four loops with the controller's own rights (see
    /// [`controller_client`]). The agent image comes from
    /// `CAIRN_E2E_AGENT_IMAGE` (default `cairn:e2e`, loaded into the cluster
    /// beforehand, see e2e/README.md), its pull policy from
    /// `CAIRN_E2E_PULL_POLICY` (default `IfNotPresent`).
    pub async fn start(admin: &Client, ns: &str) -> Self {
        Self::start_with(admin, ns, |_| {}).await
    }

    /// [`InProcessController::start`] with controller settings changed by
    /// `tweak` (e.g. the namespaces allowed the privileged mover).
    pub async fn start_with(admin: &Client, ns: &str, tweak: impl FnOnce(&mut JobConfig)) -> Self {
        let client = controller_client(admin, ns).await;
        Self::with_client(&client, ns, tweak)
    }

    /// Start the loops with `client` as it is (a test that made its own
    /// least-privileged client).
    pub fn with_client(client: &Client, ns: &str, tweak: impl FnOnce(&mut JobConfig)) -> Self {
        let image = std::env::var("CAIRN_E2E_AGENT_IMAGE").unwrap_or_else(|_| "cairn:e2e".into());
        let pull_policy =
            std::env::var("CAIRN_E2E_PULL_POLICY").unwrap_or_else(|_| "IfNotPresent".into());
        let mut jobs = JobConfig {
            image,
            pull_policy,
            ..JobConfig::default()
        };
        tweak(&mut jobs);
        let ctx = Arc::new(Context {
            client: client.clone(),
            jobs,
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "cairn-controller".into(),
                    instance: Some("cairn-e2e".into()),
                },
            ),
            metrics: Default::default(),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = rx.map(|_| ()).shared();
        let ns = ns.to_string();
        let task = tokio::spawn(async move {
            cairn_controller::run::controllers(ctx, &ns, false, shutdown).await;
        });
        InProcessController {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Stop the loops and wait for them.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
    }

    /// Stop the loops at once, wherever they are (as a killed controller
    /// would: nothing finishes, nothing is cleaned up).
    pub async fn kill(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

/// The address of the first node (its `InternalIP`).
pub async fn node_address(client: &Client) -> Option<String> {
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .list(&kube::api::ListParams::default())
        .await
        .ok()?;
    nodes.items.iter().find_map(|n| {
        n.status
            .as_ref()?
            .addresses
            .as_ref()?
            .iter()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address.clone())
    })
}

/// Where the e2e tests run an S3 server (Garage) that pods reach:
/// `CAIRN_E2E_S3_BIND`, else on the local cluster (`CAIRN_K8S_STATE` set) its
/// node's address, which is an address of this machine. `None` elsewhere
/// (kind, k3d: set `CAIRN_E2E_S3_BIND` to a host address their pods reach).
pub async fn s3_bind_address(client: &Client) -> Option<String> {
    if let Ok(a) = std::env::var("CAIRN_E2E_S3_BIND") {
        return Some(a);
    }
    std::env::var_os("CAIRN_K8S_STATE")?;
    node_address(client).await
}

impl Drop for InProcessController {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Poll `name` every two seconds until `done` holds; panic after `timeout`
/// with the last state seen.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&K) -> bool,
) -> K
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let start = Instant::now();
    let mut last;
    loop {
        match api.get_opt(name).await {
            Ok(Some(obj)) => {
                if done(&obj) {
                    return obj;
                }
                last = Some(format!("{obj:?}"));
            }
            Ok(None) => last = Some("not found".into()),
            Err(e) => last = Some(format!("error: {e}")),
        }
        if start.elapsed() > timeout {
            panic!(
                "e2e: timed out after {timeout:?} waiting for {name} to be {what}; last seen: {}",
                last.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Run a pod to completion and return its log. The pod must exit 0.
pub async fn run_pod(client: &Client, ns: &str, pod: serde_json::Value) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(pod).expect("pod object");
    let name = pod.metadata.name.clone().expect("pod has a name");
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
    let done = wait_for(
        &pods,
        &name,
        "finished",
        Duration::from_secs(300),
        |p: &Pod| {
            matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        },
    )
    .await;
    let log = pods
        .logs(&name, &LogParams::default())
        .await
        .unwrap_or_else(|e| panic!("logs of pod {name}: {e}"));
    let phase = done.status.and_then(|s| s.phase).unwrap_or_default();
    assert_eq!(phase, "Succeeded", "pod {name} failed; its log:\n{log}");
    log
}

/// A restricted-compliant busybox pod running `script` with `claims`
/// mounted at `/<claim>`.
pub fn shell_pod(name: &str, script: &str, claims: &[&str]) -> serde_json::Value {
    shell_pod_as(
        name,
        script,
        claims,
        serde_json::json!({
            "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"}
        }),
        serde_json::json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}
        }),
    )
}

/// A restricted pod as [`shell_pod`] makes, running as `uid`:`gid` with
/// fsGroup `gid` applied on root mismatch only (an application's pod, such
/// as PostgreSQL's 999).
pub fn shell_pod_as_user(
    name: &str,
    script: &str,
    claims: &[&str],
    uid: u32,
    gid: u32,
) -> serde_json::Value {
    shell_pod_as(
        name,
        script,
        claims,
        serde_json::json!({
            "runAsNonRoot": true, "runAsUser": uid, "runAsGroup": gid,
            // As application charts do: with the default policy the kubelet
            // would make every file group-writable on every mount.
            "fsGroup": gid, "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"}
        }),
        serde_json::json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]}
        }),
    )
}

/// A busybox pod running `script` with `claims` mounted at `/<claim>` and
/// the given pod and container security contexts.
pub fn shell_pod_as(
    name: &str,
    script: &str,
    claims: &[&str],
    pod_security: serde_json::Value,
    container_security: serde_json::Value,
) -> serde_json::Value {
    let image = std::env::var("CAIRN_E2E_BUSYBOX_IMAGE").unwrap_or_else(|_| "busybox:1.36".into());
    let volumes: Vec<_> = claims
        .iter()
        .map(|c| serde_json::json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    let mounts: Vec<_> = claims
        .iter()
        .map(|c| serde_json::json!({"name": c, "mountPath": format!("/{c}")}))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": pod_security,
            "containers": [{
                "name": "sh",
                "image": image,
                "command": ["sh", "-euc", script],
                "volumeMounts": mounts,
                "securityContext": container_security
            }],
            "volumes": volumes
        }
    })
}

/// A ReadWriteOnce PVC of `size` in storage class `class` (the local
/// cluster's `cairn-block`: a root-owned volume root, as on block storage).
pub fn pvc_of_class(name: &str, size: &str, class: &str) -> serde_json::Value {
    let mut v = pvc(name, size);
    v["spec"]["storageClassName"] = serde_json::json!(class);
    v
}

/// A ReadWriteOnce PVC of `size` in the default storage class.
pub fn pvc(name: &str, size: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}}
        }
    })
}

/// Create any namespaced object from JSON.
pub async fn create<K>(client: &Client, ns: &str, obj: serde_json::Value) -> K
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + Debug,
    <K as Resource>::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let obj: K = serde_json::from_value(obj).expect("object parses");
    api.create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {:?}: {e}", obj.meta().name))
}

/// The `kubectl` the tests run: `$CAIRN_K8S_BIN/kubectl` when the local
/// harness (scripts/k8s/up) exported it, else `kubectl` from PATH.
pub fn kubectl_path() -> std::path::PathBuf {
    match std::env::var_os("CAIRN_K8S_BIN").filter(|p| !p.is_empty()) {
        Some(dir) => std::path::Path::new(&dir).join("kubectl"),
        None => "kubectl".into(),
    }
}

/// The outcome of one `kubectl` run.
#[derive(Debug)]
pub struct KubectlOutput {
    /// Exit status was 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error (warnings from the API server land here).
    pub stderr: String,
}

/// Run `kubectl ARGS` with `input` on standard input.
pub fn kubectl(args: &[&str], input: &str) -> KubectlOutput {
    use std::io::Write;
    let mut child = std::process::Command::new(kubectl_path())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", kubectl_path().display()));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .expect("write kubectl's standard input");
    }
    let out = child.wait_with_output().expect("wait for kubectl");
    KubectlOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An API for any `cairn.dev/v1alpha1` kind in `ns`, as untyped objects (so
/// what is sent is exactly the JSON given, not a typed round trip).
pub fn cairn_api(client: &Client, ns: &str, kind: &str) -> Api<kube::api::DynamicObject> {
    let plural = match kind {
        "BackupRepository" => "backuprepositories",
        "BackupSchedule" => "backupschedules",
        "Backup" => "backups",
        "Restore" => "restores",
        other => panic!("not a cairn kind: {other}"),
    };
    let gvk = kube::api::GroupVersionKind::gvk("cairn.dev", "v1alpha1", kind);
    let ar = kube::api::ApiResource::from_gvk_with_plural(&gvk, plural);
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Requests of `user` that the API server refused with 403, from the local
/// cluster's audit log (`verb path`); empty without one.
pub fn forbidden_requests(user: &str) -> Vec<String> {
    forbidden_requests_outside(user, &[])
}

/// [`forbidden_requests`] but those received within one of `windows`.
pub fn forbidden_requests_outside(user: &str, windows: &[(Timestamp, Timestamp)]) -> Vec<String> {
    let Some(path) = audit_log() else {
        return Vec::new();
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| l.contains(user))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["user"]["username"] == user
                && e["stage"] == "ResponseComplete"
                && e["responseStatus"]["code"] == 403
        })
        .filter(|e| {
            let at = e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<Timestamp>().ok());
            !at.is_some_and(|at| windows.iter().any(|(from, to)| *from <= at && at <= *to))
        })
        .map(|e| {
            format!(
                "{} {}",
                e["verb"].as_str().unwrap_or(""),
                e["requestURI"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// The audit log the local harness's API server writes (JSON lines), when
/// the tests run against it (`CAIRN_K8S_AUDIT_LOG`, set by scripts/k8s/up).
pub fn audit_log() -> Option<std::path::PathBuf> {
    std::env::var_os("CAIRN_K8S_AUDIT_LOG")
        .filter(|p| !p.is_empty())
        .map(Into::into)
}

// ---- Objects most tests make, and what they wait for.

/// A Secret `name` holding `password` under the key `password`.
pub async fn password_secret(client: &Client, ns: &str, name: &str, password: &str) {
    create::<k8s_openapi::api::core::v1::Secret>(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {"password": password}
        }),
    )
    .await;
}

/// A `BackupRepository` `name` on the PVC `claim`, its password in the
/// Secret `secret` (key `password`).
pub async fn volume_repository(client: &Client, ns: &str, name: &str, claim: &str, secret: &str) {
    create::<cairn_crds::BackupRepository>(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": name},
            "spec": {
                "volume": {"claimName": claim},
                "passwordSecretRef": {"name": secret, "key": "password"}
            }
        }),
    )
    .await;
}

/// Wait (5 min) for a repository's verdict on its current generation
/// (`Initialized`, `Reachable` or `Unreachable`, not `Checking` or a
/// passing `JobStuck`); its Ready condition's (status, reason, message).
pub async fn repository_verdict(client: &Client, ns: &str, name: &str) -> (String, String, String) {
    let repos: Api<cairn_crds::BackupRepository> = Api::namespaced(client.clone(), ns);
    let r = wait_for(&repos, name, "checked", Duration::from_secs(300), |r| {
        r.status.as_ref().is_some_and(|s| {
            s.observed_generation == r.metadata.generation
                && s.conditions.first().is_some_and(|c| {
                    matches!(
                        c.reason.as_str(),
                        "Initialized" | "Reachable" | "Unreachable"
                    )
                })
        })
    })
    .await;
    let c = r.status.expect("status").conditions.remove(0);
    (c.status, c.reason, c.message)
}

/// A `Backup` `name` of `pvcs` into repository `repo`, with `job` overrides.
pub async fn create_backup(
    client: &Client,
    ns: &str,
    name: &str,
    repo: &str,
    pvcs: &[&str],
    job: serde_json::Value,
) {
    create::<cairn_crds::Backup>(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": name},
            "spec": {"repository": {"name": repo}, "pvcs": pvcs, "job": job}
        }),
    )
    .await;
}

/// Wait (5 min) until the Backup `name` has finished.
pub async fn finished_backup(client: &Client, ns: &str, name: &str) -> cairn_crds::Backup {
    let api: Api<cairn_crds::Backup> = Api::namespaced(client.clone(), ns);
    wait_for(&api, name, "finished", Duration::from_secs(300), |b| {
        b.status.as_ref().is_some_and(|s| s.phase.is_finished())
    })
    .await
}

/// Warning Events about the object `about`, as `reason: note`.
pub async fn warning_events(client: &Client, ns: &str, about: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&kube::api::ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(about)
        })
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect()
}

/// A `Restore` `name` of the latest snapshot of `of_pvc` from `repo` into a
/// new 1 GiB PVC `target.0` (of storage class `target.1`, or the default),
/// with `job` overrides; waits (5 min) until it has finished.
pub async fn restore_into_new_pvc(
    client: &Client,
    ns: &str,
    name: &str,
    repo: &str,
    of_pvc: &str,
    (target, class): (&str, Option<&str>),
    job: serde_json::Value,
) -> cairn_crds::Restore {
    let mut spec = serde_json::json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1Gi"}}
    });
    if let Some(c) = class {
        spec["storageClassName"] = serde_json::json!(c);
    }
    create::<cairn_crds::Restore>(
        client,
        ns,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Restore",
            "metadata": {"name": name},
            "spec": {
                "repository": {"name": repo},
                "snapshot": {"latestOf": of_pvc},
                "target": {"newPvc": {"name": target, "spec": spec}},
                "job": job
            }
        }),
    )
    .await;
    let api: Api<cairn_crds::Restore> = Api::namespaced(client.clone(), ns);
    wait_for(&api, name, "finished", Duration::from_secs(300), |r| {
        r.status.as_ref().is_some_and(|s| s.phase.is_finished())
    })
    .await
}
