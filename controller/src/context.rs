//! What every reconciler is given ([`Context`]) and may fail with
//! ([`Error`]), and the lookup they all share: the `BackupRepository` a
//! resource names.

use std::sync::Arc;

use kube::runtime::events::Recorder;
use kube::{Api, Client};

use crate::jobs::JobConfig;
use crate::metrics::Metrics;

/// Shared state of the reconcilers.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Job settings.
    pub jobs: JobConfig,
    /// Event recorder.
    pub recorder: Recorder,
    /// The controller's metrics: the same ones the client counts its
    /// requests in ([`crate::run::client`]) and `/metrics` renders.
    pub metrics: Arc<Metrics>,
}

/// Reconcile errors (API failures; spec problems go to status instead).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object without namespace or name.
    #[error("{0}")]
    Invalid(String),
}

/// The named `BackupRepository`, or the message saying it is missing.
///
/// # Errors
/// API failures.
pub async fn repository(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Result<cairn_crds::BackupRepository, String>, Error> {
    let repos: Api<cairn_crds::BackupRepository> = Api::namespaced(ctx.client.clone(), ns);
    Ok(repos
        .get_opt(name)
        .await?
        .ok_or_else(|| format!("BackupRepository {name:?} not found in namespace {ns}")))
}
