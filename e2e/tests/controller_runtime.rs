//! Real-cluster tests of how the controller runs, rather than what it
//! reconciles: leader election between controller processes (the
//! `cairn-controller` binary, killed and stopped as a kubelet would), and
//! that an idle controller stays quiet (reconciles and API requests per
//! minute with 50 idle schedules, counted by the controller's own metrics
//! and by the API server's audit log).
//!
//! Marked `#[ignore]`; run with a cluster (`scripts/e2e`, see e2e/README.md).
//! The controller binary comes from `CAIRN_E2E_CONTROLLER_BINARY`, or is
//! built here with `cargo build -p cairn-controller`.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_controller::context::Context;
use cairn_controller::jobs::JobConfig;
use cairn_controller::metrics::Metrics;
use cairn_controller::{leader, run};
use cairn_crds::{BackupRepository, BackupSchedule};
use cairn_e2e::{apply_crds, audit_log, cluster, create, TestNamespace};
use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::{Recorder, Reporter};
use kube::Api;

/// The in-process tests that time what the controller does (an idle minute,
/// the error backoff) run one at a time, whatever `--test-threads` says.
/// (Their counters are their own: each Context has its own `Metrics`.)
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A Context for in-process loops over `client`, counting in `metrics`
/// (the ones `client` counts its requests in, if it is [`run::client`]'s).
fn context(client: &kube::Client, instance: &str, metrics: Arc<Metrics>) -> Arc<Context> {
    Arc::new(Context {
        client: client.clone(),
        jobs: JobConfig {
            image: "cairn.local/cairn:e2e".into(),
            ..JobConfig::default()
        },
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "cairn-controller".into(),
                instance: Some(instance.into()),
            },
        ),
        metrics,
    })
}

// ---- the controller binary as processes ----

/// The `cairn-controller` binary: `CAIRN_E2E_CONTROLLER_BINARY`, or the
/// debug build (made now if needed; cargo does nothing when it is current).
fn controller_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_E2E_CONTROLLER_BINARY").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--locked", "-p", "cairn-controller"])
        .current_dir(&root);
    // What cargo set for this test process (its package's name, manifest
    // directory, ...) would look like a changed environment to build
    // scripts that watch it (ring's), and rebuild them for nothing.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let ours = k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || k.starts_with("CARGO_CFG_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&k.as_ref());
        if ours {
            build.env_remove(&key);
        }
    }
    let built = build.status().expect("run cargo build -p cairn-controller");
    assert!(built.success(), "cargo build -p cairn-controller failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug/cairn-controller")
}

/// One controller process; killed when dropped.
struct Replica {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Replica {
    fn start(bin: &std::path::Path, ns: &str, name: &str, dir: &std::path::Path) -> Replica {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .env("CAIRN_AGENT_IMAGE", "cairn.local/cairn:e2e")
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", ns)
            .env("CAIRN_WATCH_NAMESPACE", ns)
            .env("CAIRN_HTTP_ADDR", "127.0.0.1:0")
            .env("CAIRN_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start cairn-controller");
        Replica {
            name: name.to_string(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn led(&self) -> bool {
        self.log().contains("is the leader; starting controllers")
    }

    /// SIGTERM, as the kubelet sends on a rollout; the exit code.
    fn terminate(&mut self) -> Option<i32> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -TERM {}", self.name);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not exit within 20 s of SIGTERM:\n{}",
            self.name,
            self.log()
        );
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Lease's holder and renew time, if the Lease exists.
async fn holder(leases: &Api<Lease>) -> (Option<String>, Option<Timestamp>) {
    match leases.get_opt(leader::LEASE_NAME).await {
        Ok(Some(l)) => {
            let spec = l.spec.unwrap_or_default();
            (
                spec.holder_identity.filter(|h| !h.is_empty()),
                spec.renew_time.map(|t| t.0),
            )
        }
        Ok(None) => (None, None),
        Err(e) => panic!("get lease: {e}"),
    }
}

/// Poll (every 100 ms) until `who` holds the Lease; how long that took.
async fn wait_for_holder(
    leases: &Api<Lease>,
    who: &str,
    limit: Duration,
    logs: &[&Replica],
) -> Duration {
    let start = Instant::now();
    loop {
        if holder(leases).await.0.as_deref() == Some(who) {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            let logs: Vec<String> = logs
                .iter()
                .map(|r| format!("--- {}:\n{}", r.name, r.log()))
                .collect();
            panic!(
                "{who} did not take the lease within {limit:?} (holder: {:?})\n{}",
                holder(leases).await,
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: scripts/e2e"]
async fn one_replica_leads_and_a_standby_takes_over() {
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let bin = controller_binary();
    let ns = TestNamespace::create(&client, "leader").await;
    let dir = std::env::temp_dir().join(format!("cairn-e2e-{}", ns.name));
    std::fs::create_dir_all(&dir).expect("log directory");
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let config = leader::LeaseConfig::default();
    let (duration, retry) = (config.lease_duration, config.retry_period);

    // Two replicas: exactly one leads, the other stands by.
    let mut a = Replica::start(&bin, &ns.name, "replica-a", &dir);
    let took = wait_for_holder(&leases, "replica-a", Duration::from_secs(60), &[&a]).await;
    eprintln!(
        "e2e: replica-a holds the lease {} ms after its start",
        took.as_millis()
    );
    let mut b = Replica::start(&bin, &ns.name, "replica-b", &dir);
    let (_, renewed_before) = holder(&leases).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (now_holder, renewed_after) = holder(&leases).await;
    assert_eq!(
        now_holder.as_deref(),
        Some("replica-a"),
        "the leader keeps the lease"
    );
    assert!(
        renewed_after > renewed_before,
        "the leader renews: {renewed_before:?} -> {renewed_after:?}"
    );
    assert!(a.led(), "replica-a runs the controllers:\n{}", a.log());
    assert!(
        !b.led(),
        "replica-b must not act while replica-a leads:\n{}",
        b.log()
    );

    // The leader dies without releasing: replica-b takes over only after it
    // saw the lease unchanged for its duration, and not much later.
    let (_, last_renewal) = holder(&leases).await;
    a.child.kill().expect("SIGKILL replica-a");
    let _ = a.child.wait();
    let took = wait_for_holder(&leases, "replica-b", duration + retry * 4, &[&a, &b]).await;
    eprintln!(
        "e2e: replica-a killed (SIGKILL); replica-b took over after {} ms (lease duration {} s, retry period {} s; last renewal {last_renewal:?})",
        took.as_millis(),
        duration.as_secs(),
        retry.as_secs()
    );
    // replica-a renewed at most one retry period before it died.
    assert!(
        took + retry + Duration::from_millis(500) >= duration,
        "replica-b took over after {took:?}, before the lease could have expired"
    );
    assert!(
        took <= duration + retry * 2 + Duration::from_secs(1),
        "takeover took {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        b.led(),
        "replica-b runs the controllers after taking over:\n{}",
        b.log()
    );

    // A graceful stop releases the lease: the standby takes over at once.
    let mut c = Replica::start(&bin, &ns.name, "replica-c", &dir);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!c.led(), "replica-c stands by:\n{}", c.log());
    let stopped = Instant::now();
    let code = b.terminate();
    let exited = stopped.elapsed();
    assert_eq!(code, Some(0), "replica-b exits 0 on SIGTERM:\n{}", b.log());
    assert!(b.log().contains("lease released"), "{}", b.log());
    wait_for_holder(&leases, "replica-c", Duration::from_secs(10), &[&b, &c]).await;
    let total = stopped.elapsed();
    eprintln!(
        "e2e: replica-b stopped (SIGTERM, exit after {} ms); replica-c took over {} ms after the signal",
        exited.as_millis(),
        total.as_millis()
    );
    assert!(
        total <= retry + Duration::from_secs(3),
        "takeover after a release took {total:?}"
    );

    // The last one stops too and leaves the lease free.
    assert_eq!(c.terminate(), Some(0), "{}", c.log());
    assert_eq!(
        holder(&leases).await.0,
        None,
        "a released lease has no holder"
    );
    let lease = leases.get(leader::LEASE_NAME).await.expect("lease");
    let transitions = lease.spec.and_then(|s| s.lease_transitions);
    assert_eq!(transitions, Some(2), "two takeovers: a -> b -> c");
    ns.delete().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- quiet when idle ----

/// Requests in the API server's audit log sent with `user_agent` and
/// received in `[from, to)`: distinct audit IDs, by verb.
fn audited(
    path: &std::path::Path,
    user_agent: &str,
    from: Timestamp,
    to: Timestamp,
) -> BTreeMap<String, usize> {
    let file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("audit log {}: {e}", path.display()));
    let mut seen = HashSet::new();
    let mut by_verb = BTreeMap::new();
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        if !line.contains(user_agent) {
            continue;
        }
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if ev["userAgent"].as_str() != Some(user_agent) {
            continue;
        }
        let Some(at) = ev["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok())
        else {
            continue;
        };
        let id = ev["auditID"].as_str().unwrap_or("").to_string();
        if at >= from && at < to && seen.insert(id) {
            *by_verb
                .entry(ev["verb"].as_str().unwrap_or("?").to_string())
                .or_insert(0) += 1;
        }
    }
    by_verb
}

struct Counts {
    reconciles: u64,
    requests: u64,
    writes: u64,
    skipped: u64,
    errors: u64,
}

fn counts(metrics: &Metrics) -> Counts {
    Counts {
        reconciles: metrics.reconciles.get(),
        requests: metrics.api_requests.get(),
        writes: metrics.status_writes.get(),
        skipped: metrics.status_writes_skipped.get(),
        errors: metrics.reconcile_errors.get(),
    }
}

const SCHEDULES: usize = 50;

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: scripts/e2e"]
async fn an_idle_controller_stays_quiet() {
    let Some(client) = cluster().await else {
        return;
    };
    let _serial = SERIAL.lock().await;
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "quiet").await;

    // A repository whose status is steady (checked a moment ago by an
    // earlier controller) and 50 schedules: half suspended, half yearly.
    let repo: BackupRepository = create(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": "local"},
            "spec": {
                "volume": {"claimName": "repo"},
                "passwordSecretRef": {"name": "repo-password", "key": "password"},
                "maintenance": {"pruneSchedule": "0 3 1 1 *"}
            }
        }),
    )
    .await;
    // Conditions carry whole seconds.
    let now = Timestamp::from_second(Timestamp::now().as_second())
        .expect("now")
        .to_string();
    let repos: Api<BackupRepository> = Api::namespaced(client.clone(), &ns.name);
    repos
        .patch_status(
            "local",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {
                "observedGeneration": repo.metadata.generation,
                "lastCheckTime": now,
                "snapshotCount": 0,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Reachable",
                    "message": "reachable; 0 snapshots", "lastTransitionTime": now,
                    "observedGeneration": repo.metadata.generation}]
            }})),
        )
        .await
        .expect("repository status");
    for i in 0..SCHEDULES {
        create::<BackupSchedule>(
            &client,
            &ns.name,
            serde_json::json!({
                "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupSchedule",
                "metadata": {"name": format!("idle-{i:02}")},
                "spec": {
                    "repository": {"name": "local"},
                    "schedule": "0 3 1 1 *",
                    "suspend": i % 2 == 0,
                    "pvcs": ["data"]
                }
            }),
        )
        .await;
    }

    // The controller, in-process, with a client of its own: a user agent
    // that names this run in the audit log, the binary's rate limit and
    // request counter.
    let user_agent = format!("cairn-e2e-quiet/{}", ns.name);
    let config = kube::Config::infer().await.expect("kubeconfig");
    let metrics = Arc::new(Metrics::default());
    let own =
        run::client(config, &user_agent, run::API_QPS, metrics.clone()).expect("controller client");
    let ctx = context(&own, "cairn-e2e-quiet", metrics.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = rx.map(|_| ()).shared();
    let watched = ns.name.clone();
    let started = Instant::now();
    let before = counts(&metrics);
    let task = tokio::spawn(async move {
        run::controllers(ctx, &watched, false, shutdown).await;
    });

    // Settled: every schedule has a status and nothing moved for 10 s.
    let schedules: Api<BackupSchedule> = Api::namespaced(client.clone(), &ns.name);
    let mut last = (u64::MAX, u64::MAX);
    let mut still_since = Instant::now();
    loop {
        let list = schedules
            .list(&ListParams::default())
            .await
            .expect("list schedules");
        let done = list
            .items
            .iter()
            .filter(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.observed_generation.is_some())
            })
            .count();
        let c = counts(&metrics);
        let now = (c.reconciles, c.requests);
        if now != last {
            last = now;
            still_since = Instant::now();
        }
        if done == SCHEDULES && still_since.elapsed() >= Duration::from_secs(10) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not settled after 180 s: {done}/{SCHEDULES} schedules have a status; reconciles {}",
            c.reconciles - before.reconciles
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let settled = counts(&metrics);
    eprintln!(
        "e2e: settled after {} s: {} reconciles, {} API requests, {} status writes ({} skipped as unchanged), {} errors",
        started.elapsed().as_secs(),
        settled.reconciles - before.reconciles,
        settled.requests - before.requests,
        settled.writes - before.writes,
        settled.skipped - before.skipped,
        settled.errors - before.errors
    );
    assert_eq!(
        settled.errors, before.errors,
        "no reconcile failed while settling"
    );
    // Each object is reconciled once and each schedule's status written
    // once: its own write does not wake it. (Before, each write with a new
    // second in lastTransitionTime woke the next reconcile: 140 reconciles
    // and 434 requests to settle the same 51 objects; it died out only
    // because a write within the same second is a no-op the API server
    // sends no event for.)
    let settle_reconciles = settled.reconciles - before.reconciles;
    assert!(
        settle_reconciles <= (SCHEDULES as u64 + 1) + 5,
        "{settle_reconciles} reconciles to settle {SCHEDULES} schedules and a repository"
    );
    assert_eq!(
        settled.writes - before.writes,
        SCHEDULES as u64,
        "one status write per schedule"
    );

    // One idle minute.
    let window = Duration::from_secs(60);
    let from = Timestamp::now();
    tokio::time::sleep(window).await;
    let to = Timestamp::now();
    let after = counts(&metrics);
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;

    let reconciles = after.reconciles - settled.reconciles;
    let requests = after.requests - settled.requests;
    let writes = after.writes - settled.writes;
    eprintln!(
        "e2e: idle minute with {SCHEDULES} schedules and 1 repository: {reconciles} reconciles, {requests} API requests (client), {writes} status writes"
    );
    if let Some(path) = audit_log() {
        // The audit log is written asynchronously: give it a moment.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let by_verb = audited(&path, &user_agent, from, to);
        let total: usize = by_verb.values().sum();
        eprintln!("e2e: idle minute per the API server's audit log: {total} requests {by_verb:?}");
        assert!(
            total <= 30,
            "{total} requests in an idle minute: {by_verb:?}"
        );
        let settle = audited(&path, &user_agent, Timestamp::UNIX_EPOCH, from);
        let settle_total: usize = settle.values().sum();
        eprintln!(
            "e2e: start-up until settled per the audit log: {settle_total} requests {settle:?}"
        );
        assert!(
            settle_total > 0,
            "the audit log names the controller's user agent"
        );
    } else {
        eprintln!("e2e: no CAIRN_K8S_AUDIT_LOG; counted in the client only");
    }
    // Nothing is due for a year and no status changes: every requeue is
    // hours away. A hot loop (a status write waking the next reconcile)
    // makes thousands per minute.
    assert!(
        reconciles <= 10,
        "{reconciles} reconciles in an idle minute"
    );
    assert!(requests <= 30, "{requests} API requests in an idle minute");
    assert_eq!(writes, 0, "an idle controller writes no status");
    ns.delete().await;
}

// ---- Events and errors, as the real API answers them ----

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: scripts/e2e"]
async fn a_long_event_note_is_cut_not_rejected() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::events::{Event, EventType};
    use kube::Resource;
    let Some(client) = cluster().await else {
        return;
    };
    let ns = TestNamespace::create(&client, "events").await;
    let about: ConfigMap = create(
        &client,
        &ns.name,
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "about"}}),
    )
    .await;
    let ctx = context(&client, "cairn-e2e-events", Default::default());
    // An agent's error can be long, and in any language.
    let long = format!("postgres-data: {}", "ÿ".repeat(1500));

    // The events API refuses it whole ...
    let refused = ctx
        .recorder
        .publish(
            &Event {
                type_: EventType::Warning,
                reason: "Unbounded".into(),
                note: Some(long.clone()),
                action: "Backup".into(),
                secondary: None,
            },
            &about.object_ref(&()),
        )
        .await;
    match refused {
        Err(kube::Error::Api(e)) => {
            eprintln!("e2e: a {} byte note: {} {}", long.len(), e.code, e.message);
            assert_eq!(e.code, 422, "{e:?}");
        }
        other => panic!("a {} byte note was not refused: {other:?}", long.len()),
    }
    // ... so the controller cuts it.
    cairn_controller::events::publish(&ctx, &about, EventType::Warning, "Failed", long.clone())
        .await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &ns.name);
    let list = events
        .list(&ListParams::default())
        .await
        .expect("list events");
    let reasons: Vec<_> = list.items.iter().map(|e| e.reason.clone()).collect();
    let failed = list
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("Failed"))
        .unwrap_or_else(|| panic!("no Failed event: {reasons:?}"));
    let note = failed.note.as_deref().unwrap_or("");
    eprintln!(
        "e2e: recorded a {} byte note ending {:?}",
        note.len(),
        note.chars()
            .rev()
            .take(16)
            .collect::<String>()
            .chars()
            .rev()
            .collect::<String>()
    );
    assert!(note.len() <= 1024, "{}", note.len());
    assert!(note.ends_with("… (truncated)"), "{note}");
    assert!(long.starts_with(note.trim_end_matches("… (truncated)")));
    assert!(
        !reasons.iter().any(|r| r.as_deref() == Some("Unbounded")),
        "{reasons:?}"
    );
    ns.delete().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: scripts/e2e"]
async fn a_failing_reconcile_backs_off() {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let Some(client) = cluster().await else {
        return;
    };
    apply_crds(&client).await;
    let _serial = SERIAL.lock().await;
    let ns = TestNamespace::create(&client, "backoff").await;
    // A user who may watch everything the loops watch but not read a
    // BackupRepository: every reconcile of a schedule fails with 403.
    let user = format!("cairn-e2e-nobody-{}", ns.name);
    create::<Role>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "watch-only"},
            "rules": [
                {"apiGroups": ["cairn.dev"], "verbs": ["list", "watch"],
                 "resources": ["backups", "backupschedules", "restores", "backuprepositories"]},
                {"apiGroups": ["batch"], "verbs": ["list", "watch"], "resources": ["jobs"]}
            ]
        }),
    )
    .await;
    create::<RoleBinding>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "watch-only"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "watch-only"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
        }),
    )
    .await;
    create::<BackupSchedule>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "forbidden"},
            "spec": {"repository": {"name": "local"}, "schedule": "0 3 1 1 *", "pvcs": ["data"]}
        }),
    )
    .await;
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info.impersonate = Some(user.clone());
    let metrics = Arc::new(Metrics::default());
    let own = run::client(
        config,
        &format!("cairn-e2e-backoff/{}", ns.name),
        run::API_QPS,
        metrics.clone(),
    )
    .expect("client");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = rx.map(|_| ()).shared();
    let watched = ns.name.clone();
    let ctx = context(&own, "cairn-e2e-backoff", metrics.clone());
    let errors_before = metrics.reconcile_errors.get();
    let start = Instant::now();
    let task = tokio::spawn(async move {
        run::controllers(ctx, &watched, false, shutdown).await;
    });
    // Watch the error counter for 45 s: failures at about 0, 5, 15 and 35 s.
    let mut at = Vec::new();
    let mut seen = errors_before;
    while start.elapsed() < Duration::from_secs(45) {
        let now = metrics.reconcile_errors.get();
        for _ in seen..now {
            at.push(start.elapsed());
        }
        seen = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    let gaps: Vec<f64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    eprintln!(
        "e2e: a permanently failing reconcile (403) failed at {:?} s; gaps {gaps:.1?} s",
        at.iter()
            .map(|d| (d.as_secs_f64() * 10.0).round() / 10.0)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        at.len(),
        4,
        "failures at {at:?} (a fixed 15 s policy: 3; a hot loop: many)"
    );
    for (gap, want) in gaps.iter().zip([5.0, 10.0, 20.0]) {
        assert!(
            *gap >= want - 0.5 && *gap <= want + 3.0,
            "gaps {gaps:?}, expected about 5, 10, 20 s"
        );
    }
    ns.delete().await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: scripts/e2e"]
async fn status_is_applied_and_fields_an_older_writer_left_are_removed() {
    use cairn_controller::status::{apply_status, ready, FIELD_MANAGER};
    use cairn_crds::BackupScheduleStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    let Some(client) = cluster().await else {
        return;
    };
    let _serial = SERIAL.lock().await;
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "apply").await;
    create::<BackupSchedule>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "nightly"},
            "spec": {"repository": {"name": "local"}, "schedule": "0 3 * * *", "pvcs": ["data"]}
        }),
    )
    .await;
    let api: Api<BackupSchedule> = Api::namespaced(client.clone(), &ns.name);
    let metrics = Arc::new(Metrics::default());
    let ctx = context(&client, "apply", metrics.clone());
    let status_of = |s: &BackupSchedule| s.status.clone().unwrap_or_default();
    let managers = |s: &BackupSchedule| -> Vec<(String, String)> {
        s.metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.subresource.as_deref() == Some("status"))
            .map(|m| {
                (
                    m.manager.clone().unwrap_or_default(),
                    m.operation.clone().unwrap_or_default(),
                )
            })
            .collect()
    };

    // The status as a controller that wrote merge patches left it (no
    // field manager named, as before): a next run time and a condition.
    api.patch_status(
        "nightly",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {
            "observedGeneration": 1,
            "nextScheduleTime": "2026-12-03T03:00:00Z",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Scheduled",
                "message": "the schedule is active", "lastTransitionTime": "2026-12-01T00:00:00Z",
                "observedGeneration": 1}]
        }})),
    )
    .await
    .expect("an older controller's status");
    let before = api.get("nightly").await.expect("get");
    let old = status_of(&before);
    assert!(old.next_schedule_time.is_some());

    // Suspended: no next run time. The apply alone cannot remove a field
    // another manager owns; the controller notices and removes it.
    let suspended = BackupScheduleStatus {
        next_schedule_time: None,
        conditions: vec![ready(
            true,
            "Suspended",
            "the schedule is suspended",
            Some(1),
        )],
        ..old.clone()
    };
    apply_status(&ctx, &api, &before, &old, &suspended)
        .await
        .expect("apply");
    let after = api.get("nightly").await.expect("get");
    let got = status_of(&after);
    assert_eq!(
        got.next_schedule_time, None,
        "a field an older writer left survived"
    );
    assert_eq!(got.conditions[0].reason, "Suspended");
    assert_eq!(
        got.conditions[0].last_transition_time, old.conditions[0].last_transition_time,
        "same status: the transition time stays"
    );
    assert_eq!(metrics.status_writes.get(), 2, "the apply and one repair");
    assert!(
        managers(&after).contains(&(FIELD_MANAGER.into(), "Apply".into())),
        "{:?}",
        managers(&after)
    );
    assert_eq!(after.metadata.generation, Some(1), "spec untouched");
    assert_eq!(after.spec.schedule, "0 3 * * *");

    // From now on one apply per change: a field set and then left out is
    // gone without a second write.
    let next = Time(Timestamp::from_second(1_800_000_000).expect("time"));
    let resumed = BackupScheduleStatus {
        next_schedule_time: Some(next.clone()),
        conditions: vec![ready(true, "Scheduled", "the schedule is active", Some(1))],
        ..got.clone()
    };
    apply_status(&ctx, &api, &after, &got, &resumed)
        .await
        .expect("apply");
    let read2 = api.get("nightly").await.expect("get");
    let got2 = status_of(&read2);
    assert_eq!(got2.next_schedule_time, Some(next));
    assert_eq!(metrics.status_writes.get(), 3);
    let again = BackupScheduleStatus {
        next_schedule_time: None,
        ..got2.clone()
    };
    apply_status(&ctx, &api, &read2, &got2, &again)
        .await
        .expect("apply");
    let read3 = api.get("nightly").await.expect("get");
    let got3 = status_of(&read3);
    assert_eq!(got3.next_schedule_time, None);
    assert_eq!(metrics.status_writes.get(), 4, "one write, no repair");
    // Nothing new: nothing written.
    apply_status(&ctx, &api, &read3, &got3, &got3.clone())
        .await
        .expect("apply");
    assert_eq!(metrics.status_writes.get(), 4);
    assert_eq!(metrics.status_writes_skipped.get(), 1);

    // A reconcile working from a cache that is behind: it read read2 (a
    // next run time), the stored status (read3) has none and a newer
    // condition. Its apply is refused (the resourceVersion is a
    // precondition) and the stored status stays as it is.
    let stale = BackupScheduleStatus {
        conditions: vec![ready(false, "RepositoryNotFound", "stale view", Some(1))],
        ..got2.clone()
    };
    assert_ne!(
        read2.metadata.resource_version,
        read3.metadata.resource_version
    );
    let refused = apply_status(&ctx, &api, &read2, &got2, &stale).await;
    assert!(
        matches!(refused, Err(cairn_controller::context::Error::Stale(_))),
        "{refused:?}"
    );
    assert_eq!(metrics.status_write_conflicts.get(), 1);
    assert_eq!(metrics.status_writes.get(), 4, "nothing written");
    let read4 = api.get("nightly").await.expect("get");
    assert_eq!(
        read4.metadata.resource_version, read3.metadata.resource_version,
        "the stored object is untouched"
    );
    assert_eq!(status_of(&read4), got3);
    // From the stored version, the same change goes through.
    apply_status(&ctx, &api, &read4, &got3, &stale)
        .await
        .expect("apply on the stored version");
    let got5 = status_of(&api.get("nightly").await.expect("get"));
    assert_eq!(got5.conditions[0].reason, "RepositoryNotFound");
    assert_eq!(metrics.status_write_conflicts.get(), 1);
    ns.delete().await;
}

/// A BackupRepository stored before its subPath rule existed (here: under
/// a CRD without the rule, then the current CRD applied again) is not
/// checked again by the API server. The controller checks it: the
/// repository gets `Ready=False` `InvalidSpec` naming the rule, one Warning,
/// no Job and no further writes (no hot loop); a Backup naming it waits
/// with `RepositoryInvalid` and starts no Job either.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster: scripts/e2e"]
async fn a_repository_stored_before_the_sub_path_rule_gets_an_invalid_spec_status() {
    use cairn_crds::{Backup, SUB_PATH_RULE};
    use cairn_e2e::{wait_for, warning_events, InProcessController};
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::PostParams;
    use serde::Deserialize;

    let Some(client) = cluster().await else {
        return;
    };
    // The CRDs are shared: no other test of this file changes them meanwhile.
    let _serial = SERIAL.lock().await;
    apply_crds(&client).await;
    let ns = TestNamespace::create(&client, "oldrule").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut older =
        serde_yaml::Deserializer::from_str(include_str!("../../crds/cairn.dev_crds.yaml"))
            .map(|d| serde_json::Value::deserialize(d).expect("a CRD"))
            .find(|c| c["spec"]["names"]["kind"] == "BackupRepository")
            .expect("the BackupRepository CRD");
    older
        .pointer_mut(
            "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/volume/properties/subPath",
        )
        .and_then(serde_json::Value::as_object_mut)
        .expect("the subPath schema")
        .remove("x-kubernetes-validations")
        .expect("the subPath rule");
    let name = older["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    let repo: BackupRepository = serde_json::from_value(serde_json::json!({
        "apiVersion": "cairn.dev/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": "old"},
        "spec": {
            "volume": {"claimName": "repo", "subPath": "backups/../../outside"},
            "passwordSecretRef": {"name": "repo-password", "key": "password"}
        }
    }))
    .expect("repository");
    let repos: Api<BackupRepository> = Api::namespaced(client.clone(), &ns.name);
    // The API server takes a moment to serve the CRD it was given.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        crds.patch(
            &name,
            &PatchParams::apply("cairn-e2e").force(),
            &Patch::Apply(&older),
        )
        .await
        .expect("apply the CRD without the rule");
        match repos.create(&PostParams::default(), &repo).await {
            Ok(_) => break,
            Err(kube::Error::Api(e)) if e.code == 422 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("create the repository under the older CRD: {e}"),
        }
    }
    apply_crds(&client).await;
    // The rule is back before the controller starts (and for later tests).
    let probe = || {
        let mut r = repo.clone();
        r.metadata.name = Some("probe".into());
        r
    };
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while repos.create(&dry_run, &probe()).await.is_ok() {
        assert!(Instant::now() < deadline, "the rule did not come back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let controller = InProcessController::start(&client, &ns.name).await;
    create::<Backup>(
        &client,
        &ns.name,
        serde_json::json!({
            "apiVersion": "cairn.dev/v1alpha1", "kind": "Backup",
            "metadata": {"name": "into-old"},
            "spec": {"repository": {"name": "old"}, "pvcs": ["data"]}
        }),
    )
    .await;
    let reason_is = |want: &'static str| {
        move |conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]| {
            conds.first().is_some_and(|c| c.reason == want)
        }
    };
    let invalid = reason_is("InvalidSpec");
    let r = wait_for(
        &repos,
        "old",
        "InvalidSpec",
        Duration::from_secs(120),
        |r| r.status.as_ref().is_some_and(|s| invalid(&s.conditions)),
    )
    .await;
    let msg = r.status.as_ref().expect("status").conditions[0]
        .message
        .clone();
    assert!(
        msg.contains(SUB_PATH_RULE) && msg.contains("outside"),
        "{msg}"
    );
    let backups: Api<Backup> = Api::namespaced(client.clone(), &ns.name);
    let waiting = reason_is("RepositoryInvalid");
    let b = wait_for(
        &backups,
        "into-old",
        "RepositoryInvalid",
        Duration::from_secs(120),
        |b| b.status.as_ref().is_some_and(|s| waiting(&s.conditions)),
    )
    .await;
    let bmsg = b.status.expect("status").conditions[0].message.clone();
    assert!(bmsg.contains(SUB_PATH_RULE), "{bmsg}");

    // Nothing more happens: no hot loop, no Job.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let again = repos.get("old").await.expect("get");
    assert_eq!(
        again.metadata.resource_version, r.metadata.resource_version,
        "the repository's status was written again"
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    let made: Vec<_> = jobs
        .list(&ListParams::default())
        .await
        .expect("jobs")
        .items
        .into_iter()
        .filter_map(|j| j.metadata.name)
        .collect();
    assert!(
        made.is_empty(),
        "Jobs built from an invalid repository: {made:?}"
    );
    let warnings = warning_events(&client, &ns.name, "old").await;
    assert_eq!(
        warnings
            .iter()
            .filter(|w| w.starts_with("InvalidSpec:"))
            .count(),
        1,
        "{warnings:?}"
    );
    controller.stop().await;
    ns.delete().await;
}
