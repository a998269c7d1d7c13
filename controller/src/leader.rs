//! Leader election with a `coordination.k8s.io/v1` Lease, so two controller
//! replicas never act at once. The holder renews the Lease every few
//! seconds; another replica takes it over only after it expired. A holder
//! that cannot renew in time exits, and its Deployment restarts it as a
//! standby.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

/// Name of the Lease.
pub const LEASE_NAME: &str = "cairn-controller";
/// Seconds a Lease is valid without renewal.
pub const LEASE_SECONDS: i32 = 15;
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// Whether `identity` may take or keep the Lease at `now`.
pub fn may_hold(spec: &LeaseSpec, identity: &str, now: Timestamp) -> bool {
    if spec.holder_identity.as_deref() == Some(identity) {
        return true;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    match &spec.renew_time {
        Some(t) => t.0.as_second() + duration < now.as_second(),
        None => true,
    }
}

/// Try once to take or renew the Lease; true when `identity` holds it.
/// Uses the Lease's resourceVersion, so two replicas racing cannot both win.
///
/// # Errors
/// API failures other than a lost race.
pub async fn try_acquire(client: &Client, ns: &str, identity: &str) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    let now = Timestamp::now();
    let spec = |transitions: i32, acquire: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(LEASE_SECONDS),
        renew_time: Some(MicroTime(now)),
        acquire_time: acquire,
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match api.get_opt(LEASE_NAME).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    namespace: Some(ns.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(0, Some(MicroTime(now)))),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(lease) => {
            let current = lease.spec.clone().unwrap_or_default();
            if !may_hold(&current, identity, now) {
                return Ok(false);
            }
            let ours = current.holder_identity.as_deref() == Some(identity);
            let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
            let acquire = if ours {
                current.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            };
            let patch = serde_json::json!({
                "metadata": { "resourceVersion": lease.metadata.resource_version },
                "spec": spec(transitions, acquire),
            });
            match api
                .patch(LEASE_NAME, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Wait until this replica holds the Lease.
pub async fn acquire(client: &Client, ns: &str, identity: &str) {
    loop {
        match try_acquire(client, ns, identity).await {
            Ok(true) => return,
            Ok(false) => tracing::info!("another replica holds the lease; standing by"),
            Err(e) => tracing::warn!("lease {ns}/{LEASE_NAME}: {e}"),
        }
        tokio::time::sleep(RENEW_EVERY).await;
    }
}

/// Renew the Lease forever; exit the process if it is lost or cannot be
/// renewed before it expires.
pub async fn keep(client: Client, ns: String, identity: String) {
    let mut last_ok = std::time::Instant::now();
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match try_acquire(&client, &ns, &identity).await {
            Ok(true) => last_ok = std::time::Instant::now(),
            Ok(false) => {
                tracing::error!("lost the leader lease; exiting so that only one replica acts");
                std::process::exit(1);
            }
            Err(e) => {
                tracing::warn!("renewing the lease: {e}");
                if last_ok.elapsed() > Duration::from_secs(LEASE_SECONDS as u64 - 2) {
                    tracing::error!("could not renew the leader lease in time; exiting");
                    std::process::exit(1);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_rules() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let held = |by: &str, renewed: i64| LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..LeaseSpec::default()
        };
        assert!(may_hold(&held("me", 999_999), "me", now));
        assert!(
            !may_hold(&held("other", 999_990), "me", now),
            "fresh lease of another"
        );
        assert!(
            may_hold(&held("other", 999_900), "me", now),
            "expired lease"
        );
        assert!(may_hold(&LeaseSpec::default(), "me", now));
    }
}
