//! The four watch loops, runnable by the binary (under leader election) and
//! by the e2e tests (in-process, against a real cluster).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cairn_crds::{Backup, BackupRepository, BackupSchedule, Restore};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::backup::{self, Context};
use crate::{metrics, repositories, restores, schedules};

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

/// After an API error: count it, log it, retry soon.
fn error_policy<K: kube::Resource<DynamicType = ()>>(
    obj: Arc<K>,
    e: &backup::Error,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(
        "reconcile of {} {} failed: {e}",
        K::kind(&()),
        obj.meta().name.as_deref().unwrap_or("")
    );
    metrics::RECONCILE_ERRORS.inc();
    Action::requeue(Duration::from_secs(15))
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
        ($ctrl:expr, $reconcile:path) => {{
            let ctrl = $ctrl;
            let ctrl = if on_signal {
                ctrl.shutdown_on_signal()
            } else {
                ctrl.graceful_shutdown_on(shutdown.clone())
            };
            ctrl.run(
                |obj, ctx| async move {
                    metrics::RECONCILES.inc();
                    $reconcile(obj, ctx).await
                },
                error_policy,
                ctx.clone(),
            )
            .for_each(|_| futures::future::ready(()))
        }};
    }
    let backup_loop = run_loop!(
        Controller::new(scoped::<Backup>(&client, ns), all())
            .owns(scoped::<Job>(&client, ns), managed()),
        backup::reconcile
    );
    let schedule_ctrl = Controller::new(scoped::<BackupSchedule>(&client, ns), all())
        .owns(scoped::<Backup>(&client, ns), all());
    let schedule_store = schedule_ctrl.store();
    let schedule_loop = run_loop!(schedule_ctrl, schedules::reconcile);
    let restore_loop = run_loop!(
        Controller::new(scoped::<Restore>(&client, ns), all())
            .owns(scoped::<Job>(&client, ns), managed()),
        restores::reconcile
    );
    let repository_ctrl = Controller::new(scoped::<BackupRepository>(&client, ns), all())
        .owns(scoped::<Job>(&client, ns), managed());
    let repository_store = repository_ctrl.store();
    let repository_loop = run_loop!(repository_ctrl, repositories::reconcile);
    let gc = forget_deleted(schedule_store, repository_store);
    tokio::select! {
        _ = async { tokio::join!(backup_loop, schedule_loop, restore_loop, repository_loop) } => {}
        () = gc => {}
    }
}

/// Every minute, drop the metric series of schedules and repositories that
/// no longer exist (reconcilers do not run for deleted objects), so that
/// `CairnBackupTooOld` never fires for something that was deleted.
async fn forget_deleted(schedules: Store<BackupSchedule>, repositories: Store<BackupRepository>) {
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
        metrics::retain_known(&live_schedules, &live_repos);
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}
