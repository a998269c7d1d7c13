//! The `Backup` reconciler against an in-process fake API server: a kube
//! `Client` over a tower service that stores objects in memory and answers
//! GET, LIST (with label selectors), POST (409 on duplicates) and merge
//! PATCH, including the status subresource, like the apiserver does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_controller::backups::reconcile;
use cairn_controller::context::Context;
use cairn_controller::jobs::{self, JobConfig};
use cairn_crds::{Backup, Phase};
use http_body_util::{BodyExt, Full};
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct FakeApi {
    /// Object path (collection path + "/" + name) → object.
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    /// Method and path of every request, in order.
    log: Arc<Mutex<Vec<String>>>,
    next_uid: Arc<Mutex<u64>>,
}

fn status(code: u16, reason: &str, message: &str) -> http::Response<Full<Bytes>> {
    let body = json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
        "message": message, "reason": reason, "code": code});
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn ok(code: u16, v: &Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn matches_selector(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|kv| match kv.split_once('=') {
            Some((k, v)) => obj["metadata"]["labels"][k].as_str() == Some(v),
            // A bare key: the label exists.
            None => obj["metadata"]["labels"].get(kv).is_some(),
        })
}

impl FakeApi {
    fn insert(&self, path: &str, obj: Value) {
        self.objects.lock().unwrap().insert(path.to_string(), obj);
    }
    fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }
    fn delete_key(&self, path: &str) {
        self.objects.lock().unwrap().remove(path);
    }
    fn under(&self, collection: &str) -> Vec<Value> {
        let prefix = format!("{collection}/");
        self.objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
            .map(|(_, v)| v.clone())
            .collect()
    }
    fn requests(&self, method: &str, fragment: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with(method) && l.contains(fragment))
            .count()
    }

    fn handle(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> http::Response<Full<Bytes>> {
        self.log.lock().unwrap().push(format!("{method} {path}"));
        let selector = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("labelSelector="))
            .map(|s| {
                s.replace("%3D", "=")
                    .replace("%2C", ",")
                    .replace("%2F", "/")
            })
            .unwrap_or_default();
        match method {
            "GET" => {
                if let Some(obj) = self.get(path) {
                    return ok(200, &obj);
                }
                let items: Vec<Value> = self
                    .under(path)
                    .into_iter()
                    .filter(|o| matches_selector(o, &selector))
                    .collect();
                // A collection path has an even number of segments after the group/version.
                let is_collection = path.ends_with('s') && self.get(path).is_none() && {
                    let last = path.rsplit('/').next().unwrap_or("");
                    [
                        "jobs",
                        "pods",
                        "backups",
                        "backupschedules",
                        "restores",
                        "backuprepositories",
                        "persistentvolumeclaims",
                        "events",
                    ]
                    .contains(&last)
                };
                if is_collection {
                    ok(
                        200,
                        &json!({"apiVersion":"v1","kind":"List","metadata":{"resourceVersion":"1"},"items":items}),
                    )
                } else {
                    status(404, "NotFound", &format!("{path} not found"))
                }
            }
            "POST" => {
                let mut obj: Value = serde_json::from_slice(body).unwrap();
                // events.k8s.io/v1 validation: note must have at most 1024 bytes.
                if path.ends_with("/events") && obj["note"].as_str().is_some_and(|n| n.len() > 1024)
                {
                    return status(
                        422,
                        "Invalid",
                        "note: Too long: may not be more than 1024 bytes",
                    );
                }
                let name = obj["metadata"]["name"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        let mut n = self.next_uid.lock().unwrap();
                        *n += 1;
                        format!(
                            "{}{n}",
                            obj["metadata"]["generateName"].as_str().unwrap_or("obj-")
                        )
                    });
                let key = format!("{path}/{name}");
                if self.get(&key).is_some() {
                    return status(409, "AlreadyExists", &format!("{key} already exists"));
                }
                let uid = {
                    let mut n = self.next_uid.lock().unwrap();
                    *n += 1;
                    format!("uid-{n}")
                };
                obj["metadata"]["name"] = json!(name);
                obj["metadata"]["uid"] = json!(uid);
                obj["metadata"]["resourceVersion"] = json!("1");
                let n = self.log.lock().unwrap().len();
                obj["metadata"]["creationTimestamp"] =
                    json!(format!("2026-01-01T{:02}:{:02}:00Z", n / 60 % 24, n % 60));
                self.insert(&key, obj.clone());
                ok(201, &obj)
            }
            "PATCH" => {
                let (key, sub) = match path.strip_suffix("/status") {
                    Some(k) => (k.to_string(), true),
                    None => (path.to_string(), false),
                };
                let Some(mut obj) = self.get(&key) else {
                    return status(404, "NotFound", &format!("{key} not found"));
                };
                let patch: Value = serde_json::from_slice(body).unwrap();
                // A resourceVersion in the patch is a precondition, as on
                // the real API server; every write moves it.
                let current_rv = obj["metadata"]["resourceVersion"].clone();
                if let Some(rv) = patch["metadata"]["resourceVersion"].as_str() {
                    if current_rv.as_str() != Some(rv) {
                        return status(409, "Conflict", "the object has been modified");
                    }
                }
                let next_rv = current_rv
                    .as_str()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1)
                    + 1;
                // Server-side apply (the controller's status writes): the
                // controller is the status's only manager here, so what it
                // applies is the whole status.
                let apply = query.contains("fieldManager=") && patch.get("apiVersion").is_some();
                if sub && apply {
                    obj["status"] = patch["status"].clone();
                } else if sub {
                    // The status subresource ignores everything but status.
                    merge(&mut obj["status"], &patch["status"]);
                } else {
                    merge(&mut obj, &patch);
                }
                obj["metadata"]["resourceVersion"] = json!(next_rv.to_string());
                self.insert(&key, obj.clone());
                ok(200, &obj)
            }
            "DELETE" => match self.objects.lock().unwrap().remove(path) {
                Some(obj) => ok(200, &obj),
                None => status(404, "NotFound", &format!("{path} not found")),
            },
            _ => status(405, "MethodNotAllowed", method),
        }
    }

    fn client(&self) -> Client {
        let api = self.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let api = api.clone();
            async move {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or("").to_string();
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                Ok::<_, Infallible>(api.handle(&method, &path, &query, &body))
            }
        });
        Client::new(svc, "default")
    }
}

const NS: &str = "shop";
const BACKUPS: &str = "/apis/cairn.dev/v1alpha1/namespaces/shop/backups";
const REPOS: &str = "/apis/cairn.dev/v1alpha1/namespaces/shop/backuprepositories";
const JOBS: &str = "/apis/batch/v1/namespaces/shop/jobs";
const PODS: &str = "/api/v1/namespaces/shop/pods";
const PVCS: &str = "/api/v1/namespaces/shop/persistentvolumeclaims";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/shop/events";

fn yaml(path: &str) -> Value {
    let p = format!("{}/../crds/examples/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn setup(with_repo: bool) -> (FakeApi, Arc<Context>) {
    setup_with(with_repo, JobConfig::default())
}

fn setup_with(with_repo: bool, jobs_cfg: JobConfig) -> (FakeApi, Arc<Context>) {
    let api = FakeApi::default();
    if with_repo {
        let mut repo = yaml("repository-s3.yaml");
        repo["metadata"]["uid"] = json!("repo-uid");
        api.insert(&format!("{REPOS}/offsite"), repo);
    }
    let mut b = yaml("backup.yaml");
    b["metadata"]["uid"] = json!("backup-uid");
    b["metadata"]["generation"] = json!(1);
    b["spec"]["pvcs"] = json!(["postgres-data", "uploads"]);
    api.insert(&format!("{BACKUPS}/before-upgrade"), b);
    // postgres-data is ReadWriteOnce and mounted by a running pod on node-3.
    api.insert(
        &format!("{PVCS}/postgres-data"),
        json!({"apiVersion":"v1","kind":"PersistentVolumeClaim",
               "metadata":{"name":"postgres-data","namespace":NS},
               "spec":{"accessModes":["ReadWriteOnce"]}}),
    );
    api.insert(
        &format!("{PVCS}/uploads"),
        json!({"apiVersion":"v1","kind":"PersistentVolumeClaim",
               "metadata":{"name":"uploads","namespace":NS},
               "spec":{"accessModes":["ReadWriteMany"]}}),
    );
    api.insert(
        &format!("{PODS}/postgres-0"),
        json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"postgres-0","namespace":NS},
               "spec":{"nodeName":"node-3","containers":[{"name":"pg"}],
                       "volumes":[{"name":"d","persistentVolumeClaim":{"claimName":"postgres-data"}}]},
               "status":{"phase":"Running"}}),
    );
    let client = api.client();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "cairn-controller".into(),
            instance: None,
        },
    );
    let ctx = Arc::new(Context {
        client,
        jobs: jobs_cfg,
        recorder,
        metrics: Default::default(),
    });
    (api, ctx)
}

fn backup(api: &FakeApi) -> Arc<Backup> {
    Arc::new(
        serde_json::from_value(api.get(&format!("{BACKUPS}/before-upgrade")).unwrap()).unwrap(),
    )
}

fn events(api: &FakeApi) -> Vec<String> {
    api.under(EVENTS)
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Mark a Job finished and give it a terminated pod with this termination message.
fn finish_job(api: &FakeApi, job: &str, succeeded: bool, message: &str, exit_code: i32) {
    let key = format!("{JOBS}/{job}");
    let mut j = api.get(&key).unwrap();
    j["status"] = if succeeded {
        json!({"succeeded":1,"conditions":[{"type":"Complete","status":"True"}]})
    } else {
        json!({"failed":1,"conditions":[{"type":"Failed","status":"True"}]})
    };
    // The Job controller labels its pods with the Job's name and UID.
    let uid = j["metadata"]["uid"].clone();
    api.insert(&key, j);
    api.insert(
        &format!("{PODS}/{job}-abcde"),
        json!({"apiVersion":"v1","kind":"Pod",
               "metadata":{"name":format!("{job}-abcde"),"namespace":NS,
                           "labels":{"job-name":job,"batch.kubernetes.io/controller-uid":uid}},
               "spec":{"containers":[{"name":"agent"}]},
               "status":{"phase": if succeeded {"Succeeded"} else {"Failed"},
                 "containerStatuses":[{"name":"agent","image":"x","imageID":"","ready":false,"restartCount":0,
                   "state":{"terminated":{"exitCode":exit_code,"message":message}}}]}}),
    );
}

#[tokio::test]
async fn backup_runs_one_job_per_pvc_and_writes_typed_status() {
    let (api, ctx) = setup(true);
    reconcile(backup(&api), ctx.clone()).await.unwrap();

    let jobs_created = api.under(JOBS);
    assert_eq!(jobs_created.len(), 2);
    let pg = api
        .get(&format!(
            "{JOBS}/{}",
            jobs::backup_job_name("before-upgrade", "postgres-data")
        ))
        .unwrap();
    assert_eq!(
        pg["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"],
        "node-3"
    );
    assert_eq!(pg["metadata"]["ownerReferences"][0]["uid"], "backup-uid");
    let up = api
        .get(&format!(
            "{JOBS}/{}",
            jobs::backup_job_name("before-upgrade", "uploads")
        ))
        .unwrap();
    assert!(
        up["spec"]["template"]["spec"]["nodeSelector"].is_null(),
        "no RWO pin for an unknown claim"
    );

    let b = backup(&api);
    let st = b.status.as_ref().unwrap();
    assert_eq!(st.phase, Phase::Running);
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.job_names.len(), 2);
    assert!(st.start_time.is_some());
    // One Event per reason and object; the recorder counts repeats in its series.
    assert_eq!(events(&api), vec!["Normal Started"]);
    assert_eq!(
        api.requests("POST", "/events") + api.requests("PATCH", "/events"),
        2
    );

    // A second reconcile creates nothing new.
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    assert_eq!(api.under(JOBS).len(), 2);
    assert_eq!(api.requests("POST", "/jobs"), 2);

    // Both Jobs finish; one volume had an unreadable file (exit 3, still a snapshot).
    let ok = r#"{"command":"backup","ok":true,"exitCode":0,"snapshotId":"aaaa1111","files":10,"bytesProcessed":1000,"bytesAdded":400,"bytesStored":300,"durationSeconds":2.5,"unreadableFiles":0,"snapshotsForgotten":1}"#;
    let partial = r#"{"command":"backup","ok":true,"exitCode":3,"snapshotId":"bbbb2222","files":5,"bytesProcessed":50,"bytesAdded":0,"bytesStored":0,"durationSeconds":0.5,"unreadableFiles":1,"snapshotsForgotten":0}"#;
    finish_job(
        &api,
        &jobs::backup_job_name("before-upgrade", "postgres-data"),
        true,
        ok,
        0,
    );
    finish_job(
        &api,
        &jobs::backup_job_name("before-upgrade", "uploads"),
        false,
        partial,
        3,
    );
    reconcile(backup(&api), ctx.clone()).await.unwrap();

    let b = backup(&api);
    let st = b.status.as_ref().unwrap();
    // Exit 3 (a snapshot without unreadable files) is not a success.
    assert_eq!(st.phase, Phase::PartiallyFailed, "{st:?}");
    assert!(st.completion_time.is_some());
    let pg = st
        .snapshots
        .iter()
        .find(|s| s.pvc == "postgres-data")
        .unwrap();
    assert_eq!(pg.snapshot_id.as_deref(), Some("aaaa1111"));
    assert_eq!(
        (pg.files, pg.bytes_processed, pg.bytes_added),
        (10, 1000, 400)
    );
    assert_eq!(pg.duration_seconds, 2.5);
    let up = st.snapshots.iter().find(|s| s.pvc == "uploads").unwrap();
    assert_eq!(up.unreadable_files, 1);
    let ready = &st.conditions[0];
    assert_eq!(
        (
            ready.type_.as_str(),
            ready.status.as_str(),
            ready.reason.as_str()
        ),
        ("Ready", "False", "PartiallyFailed")
    );
    assert!(
        ready.message.contains("uploads: 1 files could not be read"),
        "{}",
        ready.message
    );
    assert!(events(&api).contains(&"Warning PartiallyFailed".to_string()));

    // Finished: further reconciles change nothing.
    let patches = api.requests("PATCH", "/status");
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    assert_eq!(api.requests("PATCH", "/status"), patches);
    assert_eq!(api.requests("POST", "/jobs"), 2);
}

#[tokio::test]
async fn failed_agent_fails_the_backup_with_its_message() {
    let (api, ctx) = setup(true);
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    let fail = r#"{"command":"backup","ok":false,"exitCode":1,"error":"storage: read s3://shop-backups/prod/config: access denied"}"#;
    finish_job(
        &api,
        &jobs::backup_job_name("before-upgrade", "postgres-data"),
        false,
        fail,
        1,
    );
    // The agent was OOM-killed before writing a result: the log tail stands in.
    finish_job(
        &api,
        &jobs::backup_job_name("before-upgrade", "uploads"),
        false,
        "memory allocation failed",
        137,
    );
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    let b = backup(&api);
    let st = b.status.as_ref().unwrap();
    assert_eq!(st.phase, Phase::Failed);
    let msg = st.message.as_deref().unwrap();
    assert!(
        msg.contains("postgres-data: storage: read s3://shop-backups/prod/config: access denied"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "uploads: the agent ended without a result; its last output: memory allocation failed"
        ),
        "{msg}"
    );
    assert_eq!(st.conditions[0].reason, "Failed");
    assert!(events(&api).contains(&"Warning Failed".to_string()));
}

/// The backup counters count each finished Backup exactly once: not while
/// it runs, once when it finishes, not again when the finished Backup is
/// reconciled again. Each Context has its own metrics, so the values are
/// this test's alone.
#[tokio::test]
async fn a_finished_backup_is_counted_once() {
    let ok = r#"{"command":"backup","ok":true,"exitCode":0,"snapshotId":"aaaa1111","files":1,"bytesProcessed":1,"bytesAdded":1,"bytesStored":1,"durationSeconds":1.0,"unreadableFiles":0,"snapshotsForgotten":0}"#;
    let fail = r#"{"command":"backup","ok":false,"exitCode":1,"error":"access denied"}"#;
    for (succeeds, result) in [(true, ok), (false, fail)] {
        let (api, ctx) = setup(true);
        let m = &ctx.metrics;
        let counted = || (m.backups_succeeded.get(), m.backups_failed.get());
        for _ in 0..3 {
            reconcile(backup(&api), ctx.clone()).await.unwrap();
        }
        assert_eq!(counted(), (0, 0), "a running Backup is not counted");
        assert_eq!(
            (m.status_writes.get(), m.status_writes_skipped.get()),
            (1, 2),
            "one write, then two reconciles that found nothing new"
        );
        for pvc in ["postgres-data", "uploads"] {
            let job = jobs::backup_job_name("before-upgrade", pvc);
            finish_job(&api, &job, succeeds, result, if succeeds { 0 } else { 1 });
        }
        reconcile(backup(&api), ctx.clone()).await.unwrap();
        let phase = backup(&api).status.clone().unwrap().phase;
        let once = if succeeds { (1, 0) } else { (0, 1) };
        assert_eq!(counted(), once, "finished {phase:?}");
        assert_eq!(m.status_writes.get(), 2);
        for _ in 0..2 {
            reconcile(backup(&api), ctx.clone()).await.unwrap();
        }
        assert_eq!(counted(), once, "a finished Backup is counted once");
        assert_eq!(m.status_writes.get(), 2, "and not written again");
        let text = m.render();
        let line = if succeeds {
            "\ncairn_backups_succeeded_total 1\n"
        } else {
            "\ncairn_backups_failed_total 1\n"
        };
        assert!(text.contains(line), "{text}");
    }
}

#[tokio::test]
async fn a_long_failure_still_makes_its_event() {
    let (api, ctx) = setup(true);
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    // An error of 3 KB of multi-byte text: the events API takes 1024 bytes.
    let error = "ÿ".repeat(1500);
    let fail = json!({"command":"backup","ok":false,"exitCode":1,"error":error}).to_string();
    for pvc in ["postgres-data", "uploads"] {
        finish_job(
            &api,
            &jobs::backup_job_name("before-upgrade", pvc),
            false,
            &fail,
            1,
        );
    }
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    assert_eq!(backup(&api).status.as_ref().unwrap().phase, Phase::Failed);
    let failed: Vec<Value> = api
        .under(EVENTS)
        .into_iter()
        .filter(|e| e["reason"] == "Failed")
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", events(&api));
    let note = failed[0]["note"].as_str().unwrap();
    assert!(
        note.len() <= 1024 && note.ends_with("… (truncated)"),
        "{note}"
    );
    assert!(note.starts_with("postgres-data: ÿÿ"), "{note}");
}

#[tokio::test]
async fn missing_repository_is_a_condition_and_an_event_not_a_crash() {
    let (api, ctx) = setup(false);
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    let b = backup(&api);
    let st = b.status.as_ref().unwrap();
    assert_eq!(st.phase, Phase::Pending);
    assert_eq!(st.conditions[0].reason, "RepositoryNotFound");
    assert!(st.conditions[0].message.contains("\"offsite\""));
    assert!(api.under(JOBS).is_empty());
    assert_eq!(events(&api), vec!["Warning RepositoryNotFound"]);
    // Reconciling again does not repeat the event.
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    assert_eq!(events(&api).len(), 1);
}

// ---- BackupSchedule ----

use cairn_controller::schedules::{reconcile_at as reconcile_schedule, run_name};
use cairn_crds::BackupSchedule;
use chrono::{TimeZone, Utc};

const SCHEDULES: &str = "/apis/cairn.dev/v1alpha1/namespaces/shop/backupschedules";

fn at(d: u32, h: u32, m: u32) -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, d, h, m, 0).unwrap()
}

/// A daily 02:00 UTC schedule created on 1 March, selecting PVCs labelled
/// backup=true; of three such PVCs one opts out by annotation.
fn schedule_setup(edit: impl FnOnce(&mut Value)) -> (FakeApi, Arc<Context>) {
    let (api, ctx) = setup(true);
    let mut s = yaml("schedule.yaml");
    s["metadata"]["uid"] = json!("sched-uid");
    s["metadata"]["generation"] = json!(2);
    s["metadata"]["creationTimestamp"] = json!("2026-03-01T00:00:00Z");
    s["spec"]["timeZone"] = Value::Null;
    s["spec"]["jitter"] = Value::Null;
    edit(&mut s);
    api.insert(&format!("{SCHEDULES}/nightly"), s);
    for (name, exclude) in [("db", false), ("files", false), ("scratch", true)] {
        let mut pvc = json!({"apiVersion":"v1","kind":"PersistentVolumeClaim",
            "metadata":{"name":name,"namespace":NS,"labels":{"backup":"true"}},"spec":{}});
        if exclude {
            pvc["metadata"]["annotations"] = json!({"cairn.dev/exclude":"true"});
        }
        api.insert(&format!("{PVCS}/{name}"), pvc);
    }
    (api, ctx)
}

fn schedule(api: &FakeApi) -> Arc<BackupSchedule> {
    Arc::new(serde_json::from_value(api.get(&format!("{SCHEDULES}/nightly")).unwrap()).unwrap())
}

fn schedule_events(api: &FakeApi) -> Vec<String> {
    events(api)
}

#[tokio::test]
async fn schedule_creates_each_run_once_with_the_selected_pvcs() {
    let (api, ctx) = schedule_setup(|_| {});
    // 01:00: nothing due yet; the next run is 02:00.
    reconcile_schedule(schedule(&api), ctx.clone(), at(1, 1, 0))
        .await
        .unwrap();
    assert!(api
        .under(BACKUPS)
        .iter()
        .all(|b| b["metadata"]["labels"]["cairn.dev/schedule"].is_null()));
    let st = schedule(&api).status.clone().unwrap();
    assert_eq!(
        st.next_schedule_time.unwrap().0.as_second(),
        at(1, 2, 0).timestamp()
    );
    assert_eq!(st.observed_generation, Some(2));

    // 02:00:30: the run is created, once.
    for _ in 0..3 {
        reconcile_schedule(
            schedule(&api),
            ctx.clone(),
            at(1, 2, 0) + chrono::Duration::seconds(30),
        )
        .await
        .unwrap();
    }
    let run = run_name("nightly", at(1, 2, 0));
    assert_eq!(run, "nightly-20260301-0200");
    let b = api.get(&format!("{BACKUPS}/{run}")).expect("run created");
    assert_eq!(b["spec"]["pvcs"], json!(["db", "files"]));
    assert_eq!(b["spec"]["tags"], json!(["nightly"]));
    assert_eq!(b["spec"]["retention"]["keepDaily"], 7);
    assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "sched-uid");
    assert_eq!(b["metadata"]["labels"]["cairn.dev/schedule"], "nightly");
    assert_eq!(api.requests("POST", "/backups"), 1);
    let st = schedule(&api).status.clone().unwrap();
    assert_eq!(
        st.last_schedule_time.unwrap().0.as_second(),
        at(1, 2, 0).timestamp()
    );
    assert_eq!(
        st.next_schedule_time.unwrap().0.as_second(),
        at(2, 2, 0).timestamp()
    );
    assert_eq!(st.conditions[0].reason, "Scheduled");
    assert!(schedule_events(&api).contains(&"Normal Scheduled".to_string()));

    // Next day, while that run is still going: skipped, with an Event.
    reconcile_schedule(schedule(&api), ctx.clone(), at(2, 2, 1))
        .await
        .unwrap();
    assert_eq!(api.requests("POST", "/backups"), 1);
    assert!(schedule_events(&api).contains(&"Warning Skipped".to_string()));

    // Once it succeeded, its results show per PVC and the next run goes ahead.
    let key = format!("{BACKUPS}/{run}");
    let mut done = api.get(&key).unwrap();
    done["status"] = json!({"phase":"Succeeded","completionTime":"2026-03-01T02:10:00Z",
        "snapshots":[{"pvc":"db","snapshotId":"abcd1234","bytesAdded":42,"durationSeconds":3.0},
                     {"pvc":"files","snapshotId":"ef567890","bytesAdded":7,"durationSeconds":1.0}]});
    api.insert(&key, done);
    reconcile_schedule(schedule(&api), ctx.clone(), at(3, 2, 1))
        .await
        .unwrap();
    assert!(api
        .get(&format!("{BACKUPS}/{}", run_name("nightly", at(3, 2, 0))))
        .is_some());
    let st = schedule(&api).status.clone().unwrap();
    let db = st.last_successful.iter().find(|p| p.pvc == "db").unwrap();
    assert_eq!(
        (db.snapshot_id.as_deref(), db.bytes_added),
        (Some("abcd1234"), 42)
    );
}

/// The per-PVC gauges of a schedule hold the values of each PVC's last
/// successful backup, and go when the schedule is suspended.
#[tokio::test]
async fn schedule_gauges_hold_each_pvcs_last_success() {
    let (api, ctx) = schedule_setup(|_| {});
    reconcile_schedule(schedule(&api), ctx.clone(), at(1, 2, 1))
        .await
        .unwrap();
    let key = format!("{BACKUPS}/{}", run_name("nightly", at(1, 2, 0)));
    let mut done = api.get(&key).expect("run created");
    done["status"] = json!({"phase":"Succeeded","completionTime":"2026-03-01T02:10:00Z",
        "snapshots":[{"pvc":"db","snapshotId":"abcd1234","bytesAdded":42,"durationSeconds":3.5}]});
    api.insert(&key, done);
    reconcile_schedule(schedule(&api), ctx.clone(), at(1, 3, 0))
        .await
        .unwrap();
    let m = &ctx.metrics;
    let db = [("namespace", NS), ("schedule", "nightly"), ("pvc", "db")];
    assert_eq!(
        m.last_success.get(&db),
        Some(at(1, 2, 10).timestamp() as f64)
    );
    assert_eq!(m.last_bytes_added.get(&db), Some(42.0));
    assert_eq!(m.last_duration.get(&db), Some(3.5));
    let files = [("namespace", NS), ("schedule", "nightly"), ("pvc", "files")];
    assert_eq!(m.last_success.get(&files), None, "no success yet");

    let skey = format!("{SCHEDULES}/nightly");
    let mut s = api.get(&skey).unwrap();
    s["spec"]["suspend"] = json!(true);
    api.insert(&skey, s);
    reconcile_schedule(schedule(&api), ctx.clone(), at(1, 4, 0))
        .await
        .unwrap();
    assert_eq!(m.last_success.get(&db), None, "suspended: not tracked");
    assert_eq!(m.last_bytes_added.get(&db), None);
}

/// A run that finished PartiallyFailed is finished: the next run goes ahead
/// (it must not be skipped as "still running" forever), and it is not a
/// success for the PVC's last successful backup.
#[tokio::test]
async fn a_partially_failed_run_neither_blocks_the_next_nor_counts_as_success() {
    let (api, ctx) = schedule_setup(|_| {});
    reconcile_schedule(schedule(&api), ctx.clone(), at(1, 2, 1))
        .await
        .unwrap();
    let run = run_name("nightly", at(1, 2, 0));
    let key = format!("{BACKUPS}/{run}");
    let mut done = api.get(&key).expect("run created");
    done["status"] = json!({"phase":"PartiallyFailed","completionTime":"2026-03-01T02:10:00Z",
        "snapshots":[{"pvc":"db","snapshotId":"abcd1234","unreadableFiles":3}]});
    api.insert(&key, done);
    reconcile_schedule(schedule(&api), ctx.clone(), at(2, 2, 1))
        .await
        .unwrap();
    assert!(api
        .get(&format!("{BACKUPS}/{}", run_name("nightly", at(2, 2, 0))))
        .is_some());
    assert!(!schedule_events(&api).contains(&"Warning Skipped".to_string()));
    let st = schedule(&api).status.clone().unwrap();
    assert!(st.last_successful.iter().all(|p| p.pvc != "db"), "{st:?}");
}

/// More PVCs than a Backup may hold: one Backup per 256, covering them all.
#[test]
fn runs_are_split_in_parts_a_backup_can_hold() {
    let t = at(1, 2, 0);
    assert_eq!(
        cairn_controller::schedules::run_part_name("s", t, 0),
        run_name("s", t)
    );
    assert_eq!(
        cairn_controller::schedules::run_part_name("s", t, 1),
        format!("{}-2", run_name("s", t))
    );
    let long = "n".repeat(70);
    assert!(cairn_controller::schedules::run_part_name(&long, t, 1).len() <= 63);
    assert_ne!(
        cairn_controller::schedules::run_part_name(&long, t, 1),
        cairn_controller::schedules::run_part_name(&long, t, 2)
    );
}

#[tokio::test]
async fn missed_runs_past_the_deadline_are_skipped_not_started_late() {
    let (api, ctx) = schedule_setup(|_| {});
    // The controller was down from 1 March until 5 March 10:00.
    reconcile_schedule(schedule(&api), ctx.clone(), at(5, 10, 0))
        .await
        .unwrap();
    assert_eq!(api.requests("POST", "/backups"), 0);
    assert!(schedule_events(&api).contains(&"Warning MissedRun".to_string()));
    let st = schedule(&api).status.clone().unwrap();
    assert_eq!(
        st.last_schedule_time.unwrap().0.as_second(),
        at(5, 2, 0).timestamp()
    );
    // Within the deadline it would have run: 02:30 with the default 1 h.
    let (api, ctx) = schedule_setup(|_| {});
    reconcile_schedule(schedule(&api), ctx.clone(), at(5, 2, 30))
        .await
        .unwrap();
    assert_eq!(api.requests("POST", "/backups"), 1);
}

#[tokio::test]
async fn invalid_schedule_and_suspend_are_conditions() {
    let (api, ctx) = schedule_setup(|s| s["spec"]["timeZone"] = json!("Mars/Olympus"));
    let action = reconcile_schedule(schedule(&api), ctx.clone(), at(1, 3, 0))
        .await
        .unwrap();
    let st = schedule(&api).status.clone().unwrap();
    assert_eq!(st.conditions[0].reason, "InvalidSpec");
    assert!(st.conditions[0].message.contains("Mars/Olympus"));
    assert_eq!(api.requests("POST", "/backups"), 0);
    assert_eq!(schedule_events(&api), vec!["Warning InvalidSpec"]);
    assert_eq!(
        format!("{action:?}"),
        format!("{:?}", kube::runtime::controller::Action::await_change())
    );

    // Durations stored before a bare `m` was refused: the schedule says so
    // instead of creating Backups whose agents would all refuse them.
    for (field, value) in [
        ("jitter", json!("10m")),
        ("retention", json!({"keepWithin": "6m"})),
    ] {
        let (api, ctx) = schedule_setup(|s| s["spec"][field] = value.clone());
        reconcile_schedule(schedule(&api), ctx.clone(), at(1, 3, 0))
            .await
            .unwrap();
        let st = schedule(&api).status.clone().unwrap();
        assert_eq!(st.conditions[0].reason, "InvalidSpec", "{field}");
        let msg = &st.conditions[0].message;
        assert!(
            msg.contains("\"mo\" for months or \"min\" for minutes"),
            "{msg}"
        );
        assert_eq!(api.requests("POST", "/backups"), 0);
    }

    let (api, ctx) = schedule_setup(|_| {});
    reconcile_schedule(schedule(&api), ctx.clone(), at(1, 1, 0))
        .await
        .unwrap();
    assert!(schedule(&api)
        .status
        .clone()
        .unwrap()
        .next_schedule_time
        .is_some());
    let key = format!("{SCHEDULES}/nightly");
    let mut s = api.get(&key).unwrap();
    s["spec"]["suspend"] = json!(true);
    api.insert(&key, s);
    reconcile_schedule(schedule(&api), ctx.clone(), at(1, 3, 0))
        .await
        .unwrap();
    let st = schedule(&api).status.clone().unwrap();
    assert_eq!(st.conditions[0].reason, "Suspended");
    assert!(st.next_schedule_time.is_none(), "cleared while suspended");
    assert_eq!(api.requests("POST", "/backups"), 0);
}

#[tokio::test]
async fn history_is_kept_within_its_limits() {
    let (api, ctx) = schedule_setup(|s| s["spec"]["successfulHistoryLimit"] = json!(2));
    for (i, phase) in ["Succeeded", "Succeeded", "Failed", "Succeeded"]
        .iter()
        .enumerate()
    {
        api.insert(
            &format!("{BACKUPS}/old-{i}"),
            json!({"apiVersion":"cairn.dev/v1alpha1","kind":"Backup",
                "metadata":{"name":format!("old-{i}"),"namespace":NS,"labels":{"cairn.dev/schedule":"nightly"},
                            "creationTimestamp":format!("2026-02-0{}T02:00:00Z", i + 1)},
                "spec":{"repository":{"name":"offsite"},"pvcs":["db"]},
                "status":{"phase":phase}}),
        );
    }
    reconcile_schedule(schedule(&api), ctx.clone(), at(1, 1, 0))
        .await
        .unwrap();
    assert!(
        api.get(&format!("{BACKUPS}/old-0")).is_none(),
        "oldest success removed"
    );
    for kept in ["old-1", "old-2", "old-3"] {
        assert!(api.get(&format!("{BACKUPS}/{kept}")).is_some(), "{kept}");
    }
}

#[tokio::test]
async fn reconciles_that_find_nothing_new_write_no_status() {
    use cairn_controller::schedules::reconcile_at;
    // An idle schedule: reconciled again before its next run.
    let (api, ctx) = schedule_setup(|_| {});
    reconcile_at(schedule(&api), ctx.clone(), at(1, 1, 0))
        .await
        .unwrap();
    let key = format!("{SCHEDULES}/nightly");
    let writes = |api: &FakeApi| api.requests("PATCH", &format!("{key}/status"));
    assert_eq!(writes(&api), 1, "the first reconcile writes the status");
    let stamp = api.get(&key).unwrap()["status"]["conditions"][0]["lastTransitionTime"].clone();
    // Condition times have second precision: make "now" differ for sure.
    let mut s = api.get(&key).unwrap();
    s["status"]["conditions"][0]["lastTransitionTime"] = json!("2026-03-01T00:30:00Z");
    api.insert(&key, s);
    for m in [10, 20, 30] {
        reconcile_at(schedule(&api), ctx.clone(), at(1, 1, m))
            .await
            .unwrap();
    }
    assert_eq!(writes(&api), 1, "idle reconciles write nothing");
    assert_ne!(stamp, Value::Null);
    assert_eq!(
        api.get(&key).unwrap()["status"]["conditions"][0]["lastTransitionTime"],
        "2026-03-01T00:30:00Z"
    );

    // Suspending changes the reason but not the status: written, and the
    // condition keeps its transition time.
    let mut s = api.get(&key).unwrap();
    s["spec"]["suspend"] = json!(true);
    api.insert(&key, s);
    reconcile_at(schedule(&api), ctx.clone(), at(1, 1, 40))
        .await
        .unwrap();
    assert_eq!(writes(&api), 2);
    let cond = api.get(&key).unwrap()["status"]["conditions"][0].clone();
    assert_eq!(cond["reason"], "Suspended");
    assert_eq!(cond["lastTransitionTime"], "2026-03-01T00:30:00Z");

    // A running Backup requeued with nothing new: one write, not one per reconcile.
    let (api, ctx) = setup(true);
    for _ in 0..3 {
        reconcile(backup(&api), ctx.clone()).await.unwrap();
    }
    assert_eq!(
        api.requests("PATCH", &format!("{BACKUPS}/before-upgrade/status")),
        1
    );
    let b = api.get(&format!("{BACKUPS}/before-upgrade")).unwrap();
    assert_eq!(b["status"]["phase"], "Running");
}

// ---- leader election ----

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/shop/leases/cairn-controller";

fn elector(api: &FakeApi, who: &str) -> cairn_controller::leader::LeaderElector {
    cairn_controller::leader::LeaderElector::new(api.client(), NS, who, Default::default())
}

#[tokio::test]
async fn a_standby_takes_over_only_after_seeing_the_lease_unchanged_for_its_duration() {
    use std::time::{Duration, Instant};
    let api = FakeApi::default();
    let (mut a, mut b) = (elector(&api, "replica-a"), elector(&api, "replica-b"));
    let t0 = Instant::now();
    assert!(a.try_acquire_or_renew_at(t0).await.unwrap());
    assert!(!b.try_acquire_or_renew_at(t0).await.unwrap());
    assert!(
        a.try_acquire_or_renew_at(t0).await.unwrap(),
        "the holder renews"
    );
    assert_eq!(
        api.get(LEASE).unwrap()["spec"]["holderIdentity"],
        "replica-a"
    );

    // The holder's renewTime says nothing to the standby: a renewTime far in
    // the past (skewed clocks) is not an expired lease.
    let mut lease = api.get(LEASE).unwrap();
    lease["spec"]["renewTime"] = json!("2020-01-01T00:00:00.000000Z");
    api.insert(LEASE, lease);
    assert!(
        !b.try_acquire_or_renew_at(t0).await.unwrap(),
        "not by renewTime"
    );
    // b saw that record first at t0: 14 s later (duration 15 s) it still waits ...
    let later = |s| t0 + Duration::from_secs(s);
    assert!(!b.try_acquire_or_renew_at(later(14)).await.unwrap());
    // ... and a renewal it sees starts its wait over.
    assert!(a.try_acquire_or_renew_at(later(14)).await.unwrap());
    assert!(!b.try_acquire_or_renew_at(later(16)).await.unwrap());
    assert!(!b.try_acquire_or_renew_at(later(30)).await.unwrap());
    // Unchanged for 15 s on b's clock: b takes it over.
    assert!(b.try_acquire_or_renew_at(later(31)).await.unwrap());
    let lease = api.get(LEASE).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
    // a notices on its next renewal and must step down.
    assert!(!a.try_acquire_or_renew_at(later(32)).await.unwrap());
}

#[tokio::test]
async fn two_candidates_racing_for_the_same_record_cannot_both_win() {
    use std::time::{Duration, Instant};
    let api = FakeApi::default();
    let (mut a, mut b, mut c) = (
        elector(&api, "replica-a"),
        elector(&api, "replica-b"),
        elector(&api, "replica-c"),
    );
    let t0 = Instant::now();
    assert!(a.try_acquire_or_renew_at(t0).await.unwrap());
    assert!(!b.try_acquire_or_renew_at(t0).await.unwrap());
    assert!(!c.try_acquire_or_renew_at(t0).await.unwrap());
    let t1 = t0 + Duration::from_secs(20);
    // Both saw the same expired record; b writes first, c's write carries
    // the old resourceVersion and loses.
    assert!(b.try_acquire_or_renew_at(t1).await.unwrap());
    assert!(!c.try_acquire_or_renew_at(t1).await.unwrap());
    assert_eq!(
        api.get(LEASE).unwrap()["spec"]["holderIdentity"],
        "replica-b"
    );
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once() {
    use std::time::Instant;
    let api = FakeApi::default();
    let (mut a, mut b) = (elector(&api, "replica-a"), elector(&api, "replica-b"));
    let t0 = Instant::now();
    assert!(a.try_acquire_or_renew_at(t0).await.unwrap());
    assert!(!b.try_acquire_or_renew_at(t0).await.unwrap());
    // b does not release what it does not hold.
    b.release().await.unwrap();
    assert_eq!(
        api.get(LEASE).unwrap()["spec"]["holderIdentity"],
        "replica-a"
    );
    a.release().await.unwrap();
    let lease = api.get(LEASE).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], Value::Null);
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
    assert!(b.try_acquire_or_renew_at(t0).await.unwrap(), "no waiting");
    let lease = api.get(LEASE).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_before_the_lease_expires() {
    use cairn_controller::leader::{LeaderElector, LeaseConfig, Lost};
    use std::time::{Duration, Instant};
    // A fake API server that stops answering after the first two requests
    // (the GET and the create of the Lease): every later request hangs.
    let api = FakeApi::default();
    let served = Arc::new(Mutex::new(0u32));
    let inner = api.clone();
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let api = inner.clone();
        let served = served.clone();
        async move {
            let n = {
                let mut n = served.lock().unwrap();
                *n += 1;
                *n
            };
            if n > 2 {
                futures::future::pending::<()>().await;
            }
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, Infallible>(api.handle(&method, &path, "", &body))
        }
    });
    let config = LeaseConfig {
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_millis(1000),
        retry_period: Duration::from_millis(200),
    };
    let mut a = LeaderElector::new(Client::new(svc, "default"), NS, "replica-a", config);
    assert!(a.try_acquire_or_renew().await.unwrap());
    let start = Instant::now();
    let lost = tokio::time::timeout(Duration::from_secs(10), a.keep())
        .await
        .expect("keep returns");
    let took = start.elapsed();
    assert_eq!(lost, Lost::RenewDeadline);
    // The first renewal starts after one retry period; the deadline counts
    // from the last success.
    assert!(took >= Duration::from_millis(1000), "{took:?}");
    assert!(took < config.lease_duration, "{took:?}");

    // A leader whose Lease was taken over steps down on its next renewal.
    let api = FakeApi::default();
    let mut a = LeaderElector::new(api.client(), NS, "replica-a", config);
    assert!(a.try_acquire_or_renew().await.unwrap());
    let mut lease = api.get(LEASE).unwrap();
    lease["spec"]["holderIdentity"] = json!("replica-b");
    lease["metadata"]["resourceVersion"] = json!("99");
    api.insert(LEASE, lease);
    let lost = tokio::time::timeout(Duration::from_secs(10), a.keep())
        .await
        .expect("keep returns");
    assert_eq!(lost, Lost::TakenOver("replica-b".into()));
}

// ---- Restore ----

use cairn_crds::Restore;

const RESTORES: &str = "/apis/cairn.dev/v1alpha1/namespaces/shop/restores";

fn restore_obj(api: &FakeApi) -> Arc<Restore> {
    Arc::new(
        serde_json::from_value(api.get(&format!("{RESTORES}/postgres-rehearsal")).unwrap())
            .unwrap(),
    )
}

#[tokio::test]
async fn restore_creates_the_volume_runs_one_job_and_records_the_result() {
    let (api, ctx) = setup(true);
    let mut r = yaml("restore.yaml");
    r["metadata"]["uid"] = json!("restore-uid");
    r["metadata"]["generation"] = json!(1);
    api.insert(&format!("{RESTORES}/postgres-rehearsal"), r);

    cairn_controller::restores::reconcile(restore_obj(&api), ctx.clone())
        .await
        .unwrap();
    let pvc = api
        .get(&format!("{PVCS}/postgres-data-restored"))
        .expect("target PVC created");
    assert_eq!(pvc["spec"]["resources"]["requests"]["storage"], "20Gi");
    let job_name = jobs::restore_job_name("postgres-rehearsal");
    let job = api.get(&format!("{JOBS}/{job_name}")).expect("job");
    assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "restore-uid");
    let st = restore_obj(&api).status.clone().unwrap();
    assert_eq!(st.phase, Phase::Running);
    assert_eq!(st.target_pvc.as_deref(), Some("postgres-data-restored"));

    // Idempotent.
    cairn_controller::restores::reconcile(restore_obj(&api), ctx.clone())
        .await
        .unwrap();
    assert_eq!(api.requests("POST", "/jobs"), 1);
    assert_eq!(api.requests("POST", "/persistentvolumeclaims"), 1);

    let msg = r#"{"command":"restore","ok":true,"exitCode":0,"snapshotId":"d29ea22c","files":2,"bytesProcessed":3145734,"durationSeconds":0.4}"#;
    finish_job(&api, &job_name, true, msg, 0);
    cairn_controller::restores::reconcile(restore_obj(&api), ctx.clone())
        .await
        .unwrap();
    let st = restore_obj(&api).status.clone().unwrap();
    assert_eq!(st.phase, Phase::Succeeded);
    assert_eq!(st.snapshot_id.as_deref(), Some("d29ea22c"));
    assert_eq!((st.files, st.bytes), (2, 3145734));
    assert!(events(&api).contains(&"Normal Succeeded".to_string()));
}

#[tokio::test]
async fn restore_into_a_missing_pvc_waits_with_a_condition() {
    let (api, ctx) = setup(true);
    let mut r = yaml("restore.yaml");
    r["spec"]["target"] = json!({"pvc": "nope"});
    api.insert(&format!("{RESTORES}/postgres-rehearsal"), r);
    cairn_controller::restores::reconcile(restore_obj(&api), ctx.clone())
        .await
        .unwrap();
    let st = restore_obj(&api).status.clone().unwrap();
    assert_eq!(st.conditions[0].reason, "TargetNotFound");
    assert!(api.under(JOBS).is_empty());
}

// ---- BackupRepository ----

fn repo_obj(api: &FakeApi) -> Arc<cairn_crds::BackupRepository> {
    Arc::new(serde_json::from_value(api.get(&format!("{REPOS}/offsite")).unwrap()).unwrap())
}

/// The hourly recheck of a Ready repository: the finished Job of the last
/// check is deleted once, a new one made once, and while it runs it is left
/// alone (no delete-and-create loop) and the repository stays Ready.
#[tokio::test]
async fn a_ready_repository_is_rechecked_once_not_in_a_loop() {
    use cairn_controller::repositories::reconcile as reconcile_repo;
    let (api, ctx) = setup(true);
    let key = format!("{REPOS}/offsite");
    let mut r = api.get(&key).unwrap();
    r["metadata"]["generation"] = json!(1);
    api.insert(&key, r);
    let job_name = jobs::repository_job_name("offsite", 1);
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    finish_job(
        &api,
        &job_name,
        true,
        r#"{"command":"init","ok":true,"exitCode":0,"initialized":true,"snapshots":0,"storedBytes":0}"#,
        0,
    );
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    assert_eq!(
        repo_obj(&api).status.clone().unwrap().conditions[0].status,
        "True"
    );
    // Two hours later (that check's Job was made just before it).
    let mut r = api.get(&key).unwrap();
    r["status"]["lastCheckTime"] = json!("2020-01-01T00:00:00Z");
    api.insert(&key, r);
    let mut j = api.get(&format!("{JOBS}/{job_name}")).unwrap();
    j["metadata"]["creationTimestamp"] = json!("2019-12-31T23:59:00Z");
    api.insert(&format!("{JOBS}/{job_name}"), j);
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    assert_eq!(
        api.requests("DELETE", "/jobs"),
        1,
        "the old check's Job goes"
    );
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    assert_eq!(api.requests("POST", "/jobs"), 2, "one new check");
    for _ in 0..3 {
        reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    }
    assert_eq!(
        api.requests("DELETE", "/jobs"),
        1,
        "the running check is left alone"
    );
    assert_eq!(api.requests("POST", "/jobs"), 2);
    let st = repo_obj(&api).status.clone().unwrap();
    assert_eq!(st.conditions[0].status, "True", "Ready while rechecking");
    let mut j = api.get(&format!("{JOBS}/{job_name}")).unwrap();
    j["metadata"]["creationTimestamp"] = json!("2020-01-01T01:00:00Z");
    api.insert(&format!("{JOBS}/{job_name}"), j);
    finish_job(
        &api,
        &job_name,
        true,
        r#"{"command":"init","ok":true,"exitCode":0,"initialized":false,"snapshots":3,"storedBytes":10}"#,
        0,
    );
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    let st = repo_obj(&api).status.clone().unwrap();
    assert_eq!(
        (st.conditions[0].reason.as_str(), st.snapshot_count),
        ("Reachable", Some(3))
    );
    assert_ne!(
        st.last_check_time.unwrap().0.to_string(),
        "2020-01-01T00:00:00Z"
    );
}

#[tokio::test]
async fn repository_is_checked_once_per_generation_and_reports_ready() {
    use cairn_controller::repositories::reconcile as reconcile_repo;
    let (api, ctx) = setup(true);
    let key = format!("{REPOS}/offsite");
    let mut r = api.get(&key).unwrap();
    r["metadata"]["generation"] = json!(1);
    api.insert(&key, r);

    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    let job_name = jobs::repository_job_name("offsite", 1);
    let job = api.get(&format!("{JOBS}/{job_name}")).expect("init job");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["agent", "init"])
    );
    assert!(job["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["name"] != "data"));
    let st = repo_obj(&api).status.clone().unwrap();
    assert_eq!(
        (
            st.conditions[0].status.as_str(),
            st.conditions[0].reason.as_str()
        ),
        ("False", "Checking")
    );

    finish_job(
        &api,
        &job_name,
        false,
        r#"{"command":"init","ok":false,"exitCode":1,"error":"wrong password: no key in the repository matches it"}"#,
        1,
    );
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    let st = repo_obj(&api).status.clone().unwrap();
    assert_eq!(st.conditions[0].reason, "Unreachable");
    assert!(st.conditions[0].message.contains("wrong password"));
    assert!(events(&api).contains(&"Warning Unreachable".to_string()));
    // Checked again only after the retry interval, not on every reconcile.
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    assert_eq!(api.requests("POST", "/jobs"), 1);

    // The spec changes (generation 2): checked again, now fine.
    let mut r = api.get(&key).unwrap();
    r["metadata"]["generation"] = json!(2);
    api.insert(&key, r);
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    let job2 = jobs::repository_job_name("offsite", 2);
    finish_job(
        &api,
        &job2,
        true,
        r#"{"command":"init","ok":true,"exitCode":0,"initialized":false,"snapshots":12,"storedBytes":123456}"#,
        0,
    );
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    let st = repo_obj(&api).status.clone().unwrap();
    assert_eq!(
        (
            st.conditions[0].status.as_str(),
            st.conditions[0].reason.as_str()
        ),
        ("True", "Reachable")
    );
    assert_eq!(
        (st.snapshot_count, st.stored_bytes, st.observed_generation),
        (Some(12), Some(123456), Some(2))
    );
    assert!(st.last_check_time.is_some());
    let posts = api.requests("POST", "/jobs");
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    assert_eq!(
        api.requests("POST", "/jobs"),
        posts,
        "a Ready repository is not re-checked"
    );
}

/// A tenant's long file names in the agent's error do not grow the Backup's
/// status without bound: each PVC's part and the whole message are cut.
#[tokio::test]
async fn long_unreadable_paths_are_bounded_in_status() {
    let (api, ctx) = setup(true);
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    let long = format!("/data/{}", "x".repeat(4000));
    let partial = serde_json::json!({"command":"backup","ok":true,"exitCode":3,
        "snapshotId":"bbbb2222","unreadableFiles":1,
        "error": format!("1 files could not be read (the snapshot lacks them): {long}: permission denied")})
    .to_string();
    for pvc in ["postgres-data", "uploads"] {
        finish_job(
            &api,
            &jobs::backup_job_name("before-upgrade", pvc),
            false,
            &partial,
            3,
        );
    }
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    let st = backup(&api).status.clone().unwrap();
    assert_eq!(st.phase, Phase::PartiallyFailed);
    let msg = st.message.unwrap_or_default();
    assert!(msg.len() < 2 * 512 + 300, "{} bytes", msg.len());
    assert!(msg.contains("postgres-data: ") && msg.contains("uploads: "));
    assert!(msg.contains("(truncated)"));
}

/// A PVC that does not exist is waited for (PVCNotFound, no Job), and given
/// up after an hour so that the Backup ends and its schedule goes on.
#[tokio::test]
async fn a_missing_pvc_is_waited_for_then_given_up() {
    let (api, ctx) = setup(true);
    api.delete_key(&format!("{PVCS}/uploads"));
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    let st = backup(&api).status.clone().unwrap();
    assert_eq!(st.conditions[0].reason, "PVCNotFound", "{st:?}");
    assert!(!st.phase.is_finished());
    assert_eq!(
        api.under(JOBS).len(),
        1,
        "a Job for the PVC that exists only"
    );
    let ok = r#"{"command":"backup","ok":true,"exitCode":0,"snapshotId":"aaaa1111"}"#;
    finish_job(
        &api,
        &jobs::backup_job_name("before-upgrade", "postgres-data"),
        true,
        ok,
        0,
    );
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    assert!(!backup(&api).status.clone().unwrap().phase.is_finished());
    // An hour and more later.
    let key = format!("{BACKUPS}/before-upgrade");
    let mut b = api.get(&key).unwrap();
    b["status"]["startTime"] = json!("2020-01-01T00:00:00Z");
    api.insert(&key, b);
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    let st = backup(&api).status.clone().unwrap();
    assert_eq!(st.phase, Phase::Failed, "{st:?}");
    let msg = st.message.unwrap_or_default();
    assert!(msg.contains("uploads: PVC uploads not found"), "{msg}");
}

#[tokio::test]
async fn backups_wait_for_a_repository_slot() {
    let (api, ctx) = setup_with(
        true,
        JobConfig {
            max_per_repository: 1,
            ..JobConfig::default()
        },
    );
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    assert_eq!(api.under(JOBS).len(), 1, "one slot for the repository");
    let st = backup(&api).status.clone().unwrap();
    assert_eq!(st.phase, Phase::Running);
    assert_eq!(st.conditions[0].reason, "Queued");
    assert!(
        st.conditions[0]
            .message
            .contains("already run against repository offsite"),
        "{}",
        st.conditions[0].message
    );
    assert_eq!(st.job_names.len(), 1);

    let ok = r#"{"command":"backup","ok":true,"exitCode":0,"snapshotId":"aaaa1111","files":1,"bytesProcessed":1,"bytesAdded":1,"durationSeconds":1.0}"#;
    finish_job(
        &api,
        api.under(JOBS)[0]["metadata"]["name"].as_str().unwrap(),
        true,
        ok,
        0,
    );
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    assert_eq!(
        api.under(JOBS).len(),
        2,
        "the slot freed, the second Job starts"
    );
}

#[tokio::test]
async fn scheduled_prune_runs_one_job_per_repository_at_a_time() {
    use cairn_controller::repositories::maintain;
    let (api, ctx) = setup(true);
    let key = format!("{REPOS}/offsite");
    let mut r = api.get(&key).unwrap();
    r["metadata"]["creationTimestamp"] = json!("2026-03-01T00:00:00Z");
    r["spec"]["maintenance"] =
        json!({"pruneSchedule": "0 3 * * *", "grace": "2d", "maxUnused": "10%"});
    r["status"] = json!({"conditions":[{"type":"Ready","status":"True","reason":"Reachable","message":"","lastTransitionTime":"2026-03-01T00:00:00Z"}]});
    api.insert(&key, r);

    maintain(
        &repo_obj(&api),
        &ctx,
        at(1, 3, 0) + chrono::Duration::seconds(30),
    )
    .await
    .unwrap();
    let first = jobs::prune_job_name("offsite", "20260301-0300");
    let job = api.get(&format!("{JOBS}/{first}")).expect("prune job");
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["agent", "prune", "--grace", "2d", "--max-unused", "10%"])
    );
    assert_eq!(
        repo_obj(&api)
            .status
            .clone()
            .unwrap()
            .last_prune_job
            .as_deref(),
        Some(first.as_str())
    );

    // Reconciled again, and the next day while it still runs: no second Job.
    maintain(&repo_obj(&api), &ctx, at(1, 3, 1)).await.unwrap();
    maintain(&repo_obj(&api), &ctx, at(2, 3, 1)).await.unwrap();
    assert_eq!(api.requests("POST", "/jobs"), 1);

    // It finishes: the outcome lands in status and an Event; the due run starts.
    let out = r#"{"command":"prune","ok":true,"exitCode":0,"packsDeleted":5,"bytesDeleted":80000000,"packsMarked":2,"snapshots":9,"storedBytes":1000}"#;
    finish_job(&api, &first, true, out, 0);
    maintain(&repo_obj(&api), &ctx, at(2, 3, 5)).await.unwrap();
    let st = repo_obj(&api).status.clone().unwrap();
    assert_eq!(st.stored_bytes, Some(1000));
    assert!(events(&api).contains(&"Normal Pruned".to_string()));
    assert_eq!(api.requests("POST", "/jobs"), 2);
    assert!(api
        .get(&format!(
            "{JOBS}/{}",
            jobs::prune_job_name("offsite", "20260302-0300")
        ))
        .is_some());
    assert_eq!(st.last_prune_result, None, "a new run is under way");
}

// ---- deploy/controller.yaml: RBAC covers exactly what the reconcilers call ----

/// (API group, resource, verb) of a request the fake API logged.
fn permission(line: &str) -> (String, String, String) {
    let (method, path) = line.split_once(' ').unwrap();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = if parts[0] == "api" {
        (String::new(), &parts[2..])
    } else {
        (parts[1].to_string(), &parts[3..])
    };
    // namespaces/{ns}/{resource}[/{name}[/{sub}]]
    let rest = if rest.first() == Some(&"namespaces") {
        &rest[2..]
    } else {
        rest
    };
    let mut resource = rest[0].to_string();
    if rest.len() > 2 {
        resource = format!("{resource}/{}", rest[2]);
    }
    let verb = match (method, rest.len()) {
        ("GET", 1) => "list",
        ("GET", _) => "get",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        (m, _) => panic!("unexpected method {m}"),
    };
    (group, resource, verb.to_string())
}

#[tokio::test]
async fn rbac_in_deploy_manifest_covers_every_request_and_no_more() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
    // Run every reconciler once through its main paths, collecting requests.
    let mut logged: Vec<String> = Vec::new();
    {
        let (api, ctx) = setup(true);
        reconcile(backup(&api), ctx.clone()).await.unwrap();
        let ok = r#"{"command":"backup","ok":true,"exitCode":0,"snapshotId":"aaaa1111"}"#;
        for pvc in ["postgres-data", "uploads"] {
            finish_job(
                &api,
                &jobs::backup_job_name("before-upgrade", pvc),
                true,
                ok,
                0,
            );
        }
        reconcile(backup(&api), ctx.clone()).await.unwrap();
        logged.extend(api.log.lock().unwrap().clone());
    }
    {
        let (api, ctx) = schedule_setup(|s| s["spec"]["successfulHistoryLimit"] = json!(0));
        api.insert(
            &format!("{BACKUPS}/old"),
            json!({"apiVersion":"cairn.dev/v1alpha1","kind":"Backup",
                "metadata":{"name":"old","namespace":NS,"labels":{"cairn.dev/schedule":"nightly"}},
                "spec":{"repository":{"name":"offsite"},"pvcs":["db"]},"status":{"phase":"Succeeded"}}),
        );
        reconcile_schedule(schedule(&api), ctx.clone(), at(1, 2, 1))
            .await
            .unwrap();
        logged.extend(api.log.lock().unwrap().clone());
    }
    {
        let (api, ctx) = setup(true);
        api.insert(
            &format!("{RESTORES}/postgres-rehearsal"),
            yaml("restore.yaml"),
        );
        cairn_controller::restores::reconcile(restore_obj(&api), ctx.clone())
            .await
            .unwrap();
        logged.extend(api.log.lock().unwrap().clone());
    }
    {
        let (api, ctx) = setup(true);
        let key = format!("{REPOS}/offsite");
        let mut r = api.get(&key).unwrap();
        r["metadata"]["generation"] = json!(1);
        r["spec"]["maintenance"] = json!({"pruneSchedule": "@hourly"});
        api.insert(&key, r);
        cairn_controller::repositories::reconcile(repo_obj(&api), ctx.clone())
            .await
            .unwrap();
        finish_job(
            &api,
            &jobs::repository_job_name("offsite", 1),
            false,
            r#"{"command":"init","ok":false,"exitCode":1,"error":"x"}"#,
            1,
        );
        cairn_controller::repositories::reconcile(repo_obj(&api), ctx.clone())
            .await
            .unwrap();
        // The retry after the interval deletes the failed check Job (made
        // before that check's result).
        let mut r = api.get(&key).unwrap();
        r["status"]["lastCheckTime"] = json!("2020-01-01T00:00:00Z");
        api.insert(&key, r);
        let job_key = format!("{JOBS}/{}", jobs::repository_job_name("offsite", 1));
        let mut j = api.get(&job_key).unwrap();
        j["metadata"]["creationTimestamp"] = json!("2019-12-31T23:59:00Z");
        api.insert(&job_key, j);
        cairn_controller::repositories::reconcile(repo_obj(&api), ctx.clone())
            .await
            .unwrap();
        cairn_controller::repositories::maintain(&repo_obj(&api), &ctx, Utc::now())
            .await
            .unwrap();
        let mut me = cairn_controller::leader::LeaderElector::new(
            api.client(),
            "cairn-system",
            "me",
            Default::default(),
        );
        me.try_acquire_or_renew().await.unwrap();
        me.try_acquire_or_renew().await.unwrap();
        me.release().await.unwrap();
        logged.extend(api.log.lock().unwrap().clone());
    }
    let used: std::collections::BTreeSet<(String, String, String)> =
        logged.iter().map(|l| permission(l)).collect();

    let text = std::fs::read_to_string(format!(
        "{}/../deploy/controller.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut granted = std::collections::BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        let rules = match v["kind"].as_str() {
            Some("ClusterRole") => serde_json::from_value::<ClusterRole>(v)
                .unwrap()
                .rules
                .unwrap(),
            Some("Role") => serde_json::from_value::<Role>(v).unwrap().rules.unwrap(),
            _ => continue,
        };
        for rule in rules {
            for g in rule.api_groups.clone().unwrap() {
                for r in rule.resources.clone().unwrap() {
                    for verb in &rule.verbs {
                        assert!(g != "*" && r != "*" && verb != "*", "no wildcards");
                        assert_ne!(r, "secrets", "the controller never reads Secrets");
                        granted.insert((g.clone(), r.clone(), verb.clone()));
                    }
                }
            }
        }
    }
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "requests without permission: {missing:?}"
    );
    // Granted but not exercised here: only what the watch loops of the binary
    // need (list and watch of the kinds they watch).
    let watched = [
        "backuprepositories",
        "backupschedules",
        "backups",
        "restores",
        "jobs",
    ];
    // And `update` of the owners' finalizers: never called, but checked by
    // the API server (OwnerReferencesPermissionEnforcement) whenever the
    // controller creates an object whose owner reference blocks deletion.
    let owners = [
        "backups/finalizers",
        "backuprepositories/finalizers",
        "backupschedules/finalizers",
        "restores/finalizers",
    ];
    let extra: Vec<_> = granted
        .difference(&used)
        .filter(|(_, r, v)| !(watched.contains(&r.as_str()) && (v == "list" || v == "watch")))
        .filter(|(_, r, v)| !(owners.contains(&r.as_str()) && v == "update"))
        .collect();
    assert!(extra.is_empty(), "granted but never used: {extra:?}");
}

#[test]
fn deploy_manifest_runs_the_controller_restricted() {
    use k8s_openapi::api::apps::v1::Deployment;
    let text = std::fs::read_to_string(format!(
        "{}/../deploy/controller.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc).unwrap();
        kinds.push(v["kind"].as_str().unwrap().to_string());
        if v["kind"] == "Deployment" {
            let d: Deployment = serde_json::from_value(v).unwrap();
            let pod = d.spec.unwrap().template.spec.unwrap();
            assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
            let c = &pod.containers[0];
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            let env: Vec<&str> = c
                .env
                .as_ref()
                .unwrap()
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            for needed in ["CAIRN_AGENT_IMAGE", "POD_NAME", "POD_NAMESPACE"] {
                assert!(env.contains(&needed), "{needed}");
            }
            assert_eq!(
                c.readiness_probe
                    .as_ref()
                    .unwrap()
                    .http_get
                    .as_ref()
                    .unwrap()
                    .path
                    .as_deref(),
                Some("/readyz")
            );
            assert_eq!(
                c.liveness_probe
                    .as_ref()
                    .unwrap()
                    .http_get
                    .as_ref()
                    .unwrap()
                    .path
                    .as_deref(),
                Some("/healthz")
            );
        }
    }
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k}");
    }
}

#[test]
fn alert_rules_use_real_metrics_and_have_runbooks() {
    let root = format!("{}/..", env!("CARGO_MANIFEST_DIR"));
    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/alerts.yaml")).unwrap(),
    )
    .unwrap();
    let ops = std::fs::read_to_string(format!("{root}/docs/OPERATIONS.md"))
        .unwrap()
        .to_lowercase();
    let exposed = cairn_controller::metrics::Metrics::default().render();
    let rules = rules["spec"]["groups"][0]["rules"].as_array().unwrap();
    assert!(rules.len() >= 4);
    for r in rules {
        let alert = r["alert"].as_str().unwrap();
        let expr = r["expr"].as_str().unwrap();
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("cairn_") {
                assert!(
                    exposed.contains(&format!("# TYPE {word} ")),
                    "{alert}: {word} is not a metric the controller exposes"
                );
            }
        }
        let runbook = r["annotations"]["runbook"].as_str().unwrap();
        let anchor = runbook.split('#').nth(1).unwrap();
        assert!(
            ops.contains(&format!("## {anchor}")),
            "{alert}: no runbook section for #{anchor}"
        );
    }
}

/// Give a Job a pod whose agent container waits for a reason that needs the
/// user (a missing Secret, a bad image).
fn stuck_pod(api: &FakeApi, job: &str, reason: &str, message: &str) {
    let uid = api
        .get(&format!("{JOBS}/{job}"))
        .map(|j| j["metadata"]["uid"].clone())
        .unwrap_or_default();
    api.insert(
        &format!("{PODS}/{job}-stuck"),
        json!({"apiVersion":"v1","kind":"Pod",
               "metadata":{"name":format!("{job}-stuck"),"namespace":NS,
                           "labels":{"job-name":job,"batch.kubernetes.io/controller-uid":uid}},
               "spec":{"containers":[{"name":"agent"}]},
               "status":{"phase":"Pending",
                 "containerStatuses":[{"name":"agent","image":"x","imageID":"","ready":false,"restartCount":0,
                   "state":{"waiting":{"reason":reason,"message":message}}}]}}),
    );
}

#[tokio::test]
async fn stuck_job_pods_are_reported_not_shown_as_running() {
    use cairn_controller::repositories::reconcile as reconcile_repo;
    let (api, ctx) = setup(true);
    let key = format!("{REPOS}/offsite");
    let mut r = api.get(&key).unwrap();
    r["metadata"]["generation"] = json!(1);
    api.insert(&key, r);
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    let job_name = jobs::repository_job_name("offsite", 1);
    stuck_pod(
        &api,
        &job_name,
        "CreateContainerConfigError",
        "secret \"offsite-password\" not found",
    );
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    let st = repo_obj(&api).status.clone().unwrap();
    assert_eq!(
        (
            st.conditions[0].status.as_str(),
            st.conditions[0].reason.as_str()
        ),
        ("False", "JobStuck")
    );
    assert!(
        st.conditions[0]
            .message
            .contains("secret \"offsite-password\" not found"),
        "{}",
        st.conditions[0].message
    );
    // Reported once, not on every requeue.
    reconcile_repo(repo_obj(&api), ctx.clone()).await.unwrap();
    let warnings = events(&api)
        .iter()
        .filter(|e| *e == "Warning JobStuck")
        .count();
    assert_eq!(warnings, 1);

    // A backup whose image cannot be pulled says so per PVC.
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    let job = api
        .under(JOBS)
        .into_iter()
        .find(|j| {
            j["metadata"]["labels"]["app.kubernetes.io/component"] == "backup"
                && j["metadata"]["labels"]["cairn.dev/pvc"] == "uploads"
        })
        .expect("backup job for uploads");
    let jname = job["metadata"]["name"].as_str().unwrap().to_string();
    stuck_pod(
        &api,
        &jname,
        "ImagePullBackOff",
        "Back-off pulling image \"cairn:typo\"",
    );
    reconcile(backup(&api), ctx.clone()).await.unwrap();
    let st = backup(&api).status.clone().unwrap();
    assert_eq!(st.phase, Phase::Running);
    assert_eq!(st.conditions[0].reason, "JobStuck");
    assert!(st.conditions[0].message.starts_with("uploads: pod "));
    assert!(st.conditions[0].message.contains("ImagePullBackOff"));
}

// ---- the controller's client ----

/// A plain HTTP server that answers every request with a 404 Status and
/// remembers each request's User-Agent.
async fn http_404_server() -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let agents = Arc::new(Mutex::new(Vec::new()));
    let seen = agents.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let (read, mut write) = sock.into_split();
                let mut lines = BufReader::new(read).lines();
                let mut agent = String::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(v) = line
                        .to_ascii_lowercase()
                        .strip_prefix("user-agent:")
                        .map(str::trim)
                    {
                        agent = v.to_string();
                    }
                    if line.is_empty() {
                        seen.lock().unwrap().push(std::mem::take(&mut agent));
                        let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}"#;
                        let resp = format!(
                            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if write.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, agents)
}

#[tokio::test]
async fn the_controllers_client_names_itself_counts_and_limits_its_requests() {
    use cairn_controller::{metrics::Metrics, run};
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::time::{Duration, Instant};
    let (url, agents) = http_404_server().await;
    let config = kube::Config::new(url.parse().unwrap());
    let metrics = Arc::new(Metrics::default());
    let client = run::client(
        config,
        "cairn-controller/test",
        run::API_QPS,
        metrics.clone(),
    )
    .unwrap();
    let maps: kube::Api<ConfigMap> = kube::Api::namespaced(client, NS);
    let n = run::API_QPS * 2 + 5;
    let start = Instant::now();
    for i in 0..n {
        assert!(maps.get_opt(&format!("m{i}")).await.unwrap().is_none());
    }
    let took = start.elapsed();
    // At most API_QPS per second: the last 5 wait for the third second.
    assert!(
        took >= Duration::from_millis(1900),
        "{n} requests in {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(metrics.api_requests.get(), n, "one count per request");
    let agents = agents.lock().unwrap();
    assert_eq!(agents.len() as u64, n);
    assert!(
        agents.iter().all(|a| a == "cairn-controller/test"),
        "{agents:?}"
    );
}
