//! The PVCs a Job mounts and the pods that use them: where a backup Job of
//! a ReadWriteOnce claim must run, whether a restore target is in use, and
//! whether a restore is writing to a volume.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::context::Error;
use crate::jobs;

/// A pod (not finished) that mounts `pvc`, other than the agent's own.
///
/// # Errors
/// API failures.
pub async fn pod_using(client: &Client, ns: &str, pvc: &str) -> Result<Option<String>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    Ok(pods
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| !p.labels().contains_key(jobs::labels::RESTORE))
        .find(|p| mounts(p, pvc))
        .map(|p| p.name_any()))
}

/// An unfinished restore Job, other than `except`, that writes to `pvc`:
/// while it runs, a backup of `pvc` would store a half-restored volume and
/// a second restore would interleave its writes with the first's.
///
/// # Errors
/// API failures.
pub async fn restore_running(
    client: &Client,
    ns: &str,
    pvc: &str,
    except: Option<&str>,
) -> Result<Option<String>, Error> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "{},{}={}",
        jobs::labels::RESTORE,
        jobs::labels::PVC,
        jobs::label_value(pvc)
    ));
    Ok(api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|j| except != Some(j.name_any().as_str()))
        .filter(|j| !crate::job_state::job_finished(j))
        // The label value may be a bounded (hashed) name: the volume decides.
        .find(|j| {
            j.spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .is_some_and(|s| {
                    s.volumes.iter().flatten().any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == pvc)
                    })
                })
        })
        .map(|j| j.name_any()))
}

fn mounts(p: &Pod, pvc: &str) -> bool {
    p.spec.as_ref().is_some_and(|s| {
        s.volumes.iter().flatten().any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == pvc)
        })
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
