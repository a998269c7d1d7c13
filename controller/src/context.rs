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
    /// A status write was refused because the object changed since the
    /// reconcile read it (its informer cache was behind): not a failure,
    /// the newer version is reconciled next.
    #[error("{0} changed since it was read; reconciling its newer version")]
    Stale(String),
}

/// Why a resource cannot use the repository it names: the reason and
/// message of its `Ready` condition.
#[derive(Debug)]
pub struct Unusable {
    /// `RepositoryNotFound` or `RepositoryInvalid`.
    pub reason: &'static str,
    /// What is wrong, for the condition and the Event.
    pub message: String,
}

/// The named `BackupRepository`, or why it cannot be used: it is missing,
/// or its spec breaks a rule the API server no longer checks for it
/// ([`spec_problem`]: stored before the rule existed). Agent Jobs are only
/// ever built from a repository that passed this.
///
/// # Errors
/// API failures.
pub async fn repository(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Result<cairn_crds::BackupRepository, Unusable>, Error> {
    let repos: Api<cairn_crds::BackupRepository> = Api::namespaced(ctx.client.clone(), ns);
    let Some(repo) = repos.get_opt(name).await? else {
        return Ok(Err(Unusable {
            reason: "RepositoryNotFound",
            message: format!("BackupRepository {name:?} not found in namespace {ns}"),
        }));
    };
    Ok(match spec_problem(&repo) {
        Some(why) => Err(Unusable {
            reason: "RepositoryInvalid",
            message: format!("BackupRepository {name:?} is invalid: {why}"),
        }),
        None => Ok(repo),
    })
}

/// What the controller checks in a repository's spec itself, because the
/// API server checks a rule only when an object is written: one stored
/// before the rule existed keeps whatever it held (a `volume.subPath` that
/// climbs out of the volume, or holds a NUL).
pub fn spec_problem(repo: &cairn_crds::BackupRepository) -> Option<String> {
    repo.spec
        .volume
        .as_ref()
        .and_then(cairn_crds::VolumeStorage::invalid_sub_path)
}
