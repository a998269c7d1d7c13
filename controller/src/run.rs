//! The four watch loops, runnable by the binary (under leader election) and
//! by the e2e tests (in-process, against a real cluster), with what keeps
//! them cheap for the API server: reconciles on spec changes only (not on
//! the controller's own status writes), bounded concurrency, a per-object
//! exponential backoff after errors, and a client-side rate limit.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_crds::{Backup, BackupRepository, BackupSchedule, Restore};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{predicates, watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::context::{Context, Error};
use crate::metrics::Metrics;
use crate::{backups, repositories, restores, schedules};

/// Reconciles of one kind that may run at once (per loop; four loops).
pub const CONCURRENCY: u16 = 4;
/// Requests per second the controller's client sends at most by default
/// (`CAIRN_API_QPS`; watches count when they start). The API server's priority and fairness still
/// applies; this keeps a burst (many objects at start) from flooding it.
pub const API_QPS: u64 = 20;

/// An API in the watched namespace, or in all namespaces when none is set.
fn scoped<K>(client: &Client, ns: &str) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    if ns.is_empty() {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), ns)
    }
}

/// A client for the controller: `config` with a user agent (so the API
/// server's audit log and metrics name the controller), at most `qps`
/// requests per second (at least 1; [`API_QPS`] unless configured), each
/// counted in `metrics` (`cairn_controller_api_requests_total`; give the
/// [`Context`] the same).
///
/// # Errors
/// An invalid configuration (TLS, credentials) or user agent.
pub fn client(
    mut config: kube::Config,
    user_agent: &str,
    qps: u64,
    metrics: Arc<Metrics>,
) -> Result<Client, kube::Error> {
    let agent = http::HeaderValue::from_str(user_agent)
        .map_err(|e| kube::Error::Service(format!("user agent {user_agent:?}: {e}").into()))?;
    config.headers.push((http::header::USER_AGENT, agent));
    let count = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        metrics.api_requests.inc();
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::limit::RateLimitLayer::new(
            qps.max(1),
            Duration::from_secs(1),
        ))
        .with_layer(&count)
        .build())
}

/// Per-object delays after failed reconciles: `first`, doubling with each
/// further failure up to `max`, forgotten after a success. A permanent
/// error (a 422, a missing permission) then costs a request every few
/// minutes instead of every few seconds, while a passing blip is retried soon.
pub struct ErrorBackoff {
    first: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Default for ErrorBackoff {
    fn default() -> Self {
        ErrorBackoff::new(Duration::from_secs(5), Duration::from_secs(300))
    }
}

impl ErrorBackoff {
    /// Start at `first`, never wait longer than `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        ErrorBackoff {
            first,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Count a failure of `key`; the delay before its next attempt.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = failures.entry(key.to_string()).or_insert(0);
        let delay = self
            .first
            .saturating_mul(2u32.saturating_pow(*n))
            .min(self.max);
        *n = n.saturating_add(1);
        delay
    }

    /// `key` reconciled fine: its next failure starts from `first` again.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

fn key_of<K: Resource>(obj: &K) -> String {
    let m = obj.meta();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or(""),
        m.name.as_deref().unwrap_or("")
    )
}

/// How soon an object whose status write met a newer version of it is
/// reconciled again.
const STALE_RETRY: Duration = Duration::from_secs(1);

/// After a failed reconcile: count it, log it, retry after the object's
/// backoff; a stale read ([`Error::Stale`]) is retried soon, uncounted.
fn error_policy<K: kube::Resource<DynamicType = ()>>(
    backoff: &ErrorBackoff,
    obj: &K,
    e: &Error,
    metrics: &Metrics,
) -> Action {
    if let Error::Stale(what) = e {
        // Not a failure: the write would have undone a newer status. The
        // watch brings the newer version; look again soon in case it came
        // before this reconcile ended (and was folded into it).
        tracing::debug!(
            "{} {what}: status not written, reconciling again",
            K::kind(&())
        );
        return Action::requeue(STALE_RETRY);
    }
    let delay = backoff.failed(&key_of(obj));
    tracing::warn!(
        "reconcile of {} {} failed (retry in {} s): {e}",
        K::kind(&()),
        obj.meta().name.as_deref().unwrap_or(""),
        delay.as_secs()
    );
    metrics.reconcile_errors.inc();
    Action::requeue(delay)
}

/// A controller for `K` that reconciles when an object appears or its spec
/// changes (`metadata.generation`), not on status or metadata writes: the
/// reconcilers' own status writes would otherwise wake them again. Changes
/// of owned objects (a Job finishing) and requeues still trigger, as with
/// `Controller::new`.
fn on_spec_change<K>(api: Api<K>) -> Controller<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let changes = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    Controller::for_stream(changes, reader)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
}

/// Run `ctrl` until it stops, but end it at once when `shutdown` comes
/// (unless `on_signal`) before its store is ready: kube-runtime's graceful
/// shutdown stops the watch that fills the store while the runner waits for
/// the store, so a controller told to stop during its first list would
/// never end (seen on the real cluster when a new leader was stopped right
/// after it took over). Nothing has been reconciled before the store is
/// ready, so there is nothing to wait for.
async fn stop_unstarted<K: Resource + Clone + 'static>(
    ctrl: impl std::future::Future<Output = ()>,
    store: Store<K>,
    shutdown: impl std::future::Future<Output = ()>,
    on_signal: bool,
) where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    let unstarted = async {
        if on_signal {
            return std::future::pending().await;
        }
        shutdown.await;
        if store.wait_until_ready().now_or_never().is_some() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = ctrl => {}
        () = unstarted => {
            tracing::debug!("stopped before its first list finished");
        }
    }
}

/// Run the `Backup`, `BackupSchedule`, `Restore` and `BackupRepository`
/// loops until `shutdown` resolves (or, when `on_signal`, until SIGTERM or
/// Ctrl-C). `ns` limits the watches to one namespace; empty means all.
pub async fn controllers(
    ctx: Arc<Context>,
    ns: &str,
    on_signal: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static + Clone,
) {
    let client = ctx.client.clone();
    let all = watcher::Config::default;
    let managed = || all().labels("app.kubernetes.io/managed-by=cairn-controller");
    macro_rules! run_loop {
        ($ctrl:expr, $reconcile:path, $kind:literal) => {{
            let ctrl = $ctrl;
            let store = ctrl.store();
            let ctrl = if on_signal {
                ctrl.shutdown_on_signal()
            } else {
                ctrl.graceful_shutdown_on(shutdown.clone())
            };
            let backoff = Arc::new(ErrorBackoff::default());
            let on_error = backoff.clone();
            let running = ctrl
                .run(
                    move |obj, ctx| {
                        let backoff = backoff.clone();
                        async move {
                            let metrics = ctx.metrics.clone();
                            metrics.reconciles.inc();
                            let key = key_of(obj.as_ref());
                            let started = std::time::Instant::now();
                            let result = $reconcile(obj, ctx).await;
                            metrics
                                .reconcile_duration
                                .observe($kind, started.elapsed().as_secs_f64());
                            if result.is_ok() {
                                backoff.succeeded(&key);
                            }
                            result
                        }
                    },
                    move |obj, e, ctx| error_policy(&on_error, obj.as_ref(), e, &ctx.metrics),
                    ctx.clone(),
                )
                .for_each(|_| futures::future::ready(()));
            stop_unstarted(running, store, shutdown.clone(), on_signal)
        }};
    }
    let backup_loop = run_loop!(
        on_spec_change(scoped::<Backup>(&client, ns)).owns(scoped::<Job>(&client, ns), managed()),
        backups::reconcile,
        "Backup"
    );
    // A schedule reacts to its Backups' status (lastSuccessful, history).
    let schedule_ctrl = on_spec_change(scoped::<BackupSchedule>(&client, ns))
        .owns(scoped::<Backup>(&client, ns), all());
    let schedule_store = schedule_ctrl.store();
    let schedule_loop = run_loop!(schedule_ctrl, schedules::reconcile, "BackupSchedule");
    let restore_loop = run_loop!(
        on_spec_change(scoped::<Restore>(&client, ns)).owns(scoped::<Job>(&client, ns), managed()),
        restores::reconcile,
        "Restore"
    );
    let repository_ctrl = on_spec_change(scoped::<BackupRepository>(&client, ns))
        .owns(scoped::<Job>(&client, ns), managed());
    let repository_store = repository_ctrl.store();
    let repository_loop = run_loop!(repository_ctrl, repositories::reconcile, "BackupRepository");
    let gc = forget_deleted(schedule_store, repository_store, ctx.metrics.clone());
    tokio::select! {
        _ = async { tokio::join!(backup_loop, schedule_loop, restore_loop, repository_loop) } => {}
        () = gc => {}
    }
}

/// Every minute, drop the metric series of schedules and repositories that
/// no longer exist (reconcilers do not run for deleted objects), so that
/// `CairnBackupTooOld` never fires for something that was deleted.
async fn forget_deleted(
    schedules: Store<BackupSchedule>,
    repositories: Store<BackupRepository>,
    metrics: Arc<Metrics>,
) {
    if schedules.wait_until_ready().await.is_err() || repositories.wait_until_ready().await.is_err()
    {
        return std::future::pending().await;
    }
    loop {
        let key = |m: &kube::api::ObjectMeta| {
            (
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            )
        };
        let live_schedules: HashSet<_> =
            schedules.state().iter().map(|s| key(&s.metadata)).collect();
        let live_repos: HashSet<_> = repositories
            .state()
            .iter()
            .map(|r| key(&r.metadata))
            .collect();
        metrics.retain_known(&live_schedules, &live_repos);
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_backoff_doubles_per_object_and_resets_on_success() {
        let b = ErrorBackoff::default();
        let secs = |d: Duration| d.as_secs();
        let delays: Vec<u64> = (0..9).map(|_| secs(b.failed("shop/a"))).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(secs(b.failed("shop/b")), 5, "another object starts fresh");
        b.succeeded("shop/a");
        assert_eq!(secs(b.failed("shop/a")), 5, "a success resets");
        for _ in 0..100 {
            b.failed("shop/c");
        }
        assert_eq!(
            secs(b.failed("shop/c")),
            300,
            "no overflow after many failures"
        );
    }
}
