//! The PVCs a Job mounts and the pods that use them: where a backup Job of
//! a ReadWriteOnce claim must run, whether a restore target is in use, and
//! whether a backup or restore (its Job or its pod) is at work on a volume.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodSpec};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::context::Error;
use crate::jobs;

/// A pod (not finished) that mounts `pvc`, other than a mover of `pvc`
/// (a backup or restore pod of it: [`mover_running`] reports those).
///
/// # Errors
/// API failures.
pub async fn pod_using(client: &Client, ns: &str, pvc: &str) -> Result<Option<String>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(UNFINISHED_POD);
    let value = jobs::label_value(pvc);
    let is_mover = |p: &Pod| {
        let l = p.labels();
        (l.contains_key(jobs::labels::BACKUP) || l.contains_key(jobs::labels::RESTORE))
            && l.get(jobs::labels::PVC) == Some(&value)
    };
    Ok(pods
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| !is_mover(p))
        .find(|p| mounts(p, pvc))
        .map(|p| p.name_any()))
}

/// Pods that may still run: their containers can still write.
const UNFINISHED_POD: &str = "status.phase!=Succeeded,status.phase!=Failed";

/// What moves data in or out of a volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mover {
    /// A backup Job reads the volume.
    Backup,
    /// A restore Job writes to it.
    Restore,
}

impl Mover {
    fn label(self) -> &'static str {
        match self {
            Mover::Backup => jobs::labels::BACKUP,
            Mover::Restore => jobs::labels::RESTORE,
        }
    }
}

/// A `mover` at work on `pvc`, as `Job NAME` or `pod NAME of Job JOB`:
/// while a restore runs, a backup of `pvc` would store a half-restored
/// volume and a second restore would interleave its writes with the
/// first's; while a backup runs, a restore would change the files under
/// it.
///
/// An unfinished Job holds the volume whether or not it has a pod (not
/// created yet, refused by a ResourceQuota, between retries), and a pod
/// that may still run holds it whether or not its Job exists (a Job
/// deleted with background or orphan propagation leaves its pod running
/// until it stops). Both are found by the labels the Job and its pod
/// template carry ([`jobs::labels`]), and must mount `pvc` (a label value
/// may be a bounded, hashed name).
///
/// # Errors
/// API failures.
pub async fn mover_running(
    client: &Client,
    ns: &str,
    pvc: &str,
    mover: Mover,
) -> Result<Option<String>, Error> {
    let selector = format!(
        "{},{}={}",
        mover.label(),
        jobs::labels::PVC,
        jobs::label_value(pvc)
    );
    let job_api: Api<Job> = Api::namespaced(client.clone(), ns);
    let job = job_api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|j| !crate::job_state::job_finished(j))
        .find(|j| {
            j.spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .is_some_and(|s| spec_mounts(s, pvc))
        });
    if let Some(j) = job {
        return Ok(Some(format!("Job {}", j.name_any())));
    }
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default()
        .labels(&selector)
        .fields(UNFINISHED_POD);
    Ok(pod_api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .find(|p| mounts(p, pvc))
        .map(|p| match p.labels().get("batch.kubernetes.io/job-name") {
            Some(job) => format!("pod {} of Job {job}", p.name_any()),
            None => format!("pod {}", p.name_any()),
        }))
}

fn mounts(p: &Pod, pvc: &str) -> bool {
    p.spec.as_ref().is_some_and(|s| spec_mounts(s, pvc))
}

fn spec_mounts(s: &PodSpec, pvc: &str) -> bool {
    s.volumes.iter().flatten().any(|v| {
        v.persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == pvc)
    })
}

/// Where a backup Job for `pvc` must run: `None` when the claim does not
/// exist, else [`claim_node`]'s answer (a node, or anywhere).
pub async fn rwo_node(
    client: &Client,
    ns: &str,
    pvc: &str,
) -> Result<Option<Option<String>>, Error> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let Some(claim) = claims.get_opt(pvc).await? else {
        return Ok(None);
    };
    Ok(Some(claim_node(client, ns, pvc, &claim).await?))
}

/// The node of a running pod that mounts `pvc`, when the claim is
/// ReadWriteOnce: the agent must run there to mount it too (`None`:
/// anywhere).
async fn claim_node(
    client: &Client,
    ns: &str,
    pvc: &str,
    claim: &PersistentVolumeClaim,
) -> Result<Option<String>, Error> {
    let rwo = claim
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .is_some_and(|m| m.iter().any(|m| m == "ReadWriteOnce"));
    if !rwo {
        return Ok(None);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields("status.phase=Running");
    for p in pods.list(&lp).await? {
        if mounts(&p, pvc) {
            if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                return Ok(Some(node));
            }
        }
    }
    Ok(None)
}
