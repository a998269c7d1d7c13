//! Leader election with a `coordination.k8s.io/v1` Lease, so two controller
//! replicas never act at once. It follows client-go's `leaderelection`:
//!
//! - A candidate never compares the holder's `renewTime` with its own wall
//!   clock (the clocks of two nodes need not agree). It takes the Lease over
//!   only after it has itself seen the Lease unchanged (same holder, renew
//!   time and resourceVersion) for the Lease's duration, measured on its own
//!   monotonic clock; a Lease without a holder (released) is taken at once.
//! - The leader renews every [`LeaseConfig::retry_period`]; if no renewal
//!   succeeds within [`LeaseConfig::renew_deadline`] (shorter than the
//!   Lease's duration) it must stop acting: [`LeaderElector::keep`] returns
//!   and the binary exits before any standby may take over.
//! - On a graceful shutdown the leader releases the Lease (no holder,
//!   duration 1 s) so that a standby takes over on its next try.
//!
//! Every write carries the resourceVersion it was computed from, so of two
//! replicas racing for the Lease only one wins (the other gets 409).
//! Only `get`, `create` and `patch` on Leases are needed (the RBAC in the
//! chart and deploy/controller.yaml).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

/// Name of the Lease.
pub const LEASE_NAME: &str = "cairn-controller";

/// The timings of leader election (client-go's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a standby waits, after it last saw the Lease change, before
    /// taking it over. Written into the Lease as `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up and
    /// stops acting. Must be shorter than `lease_duration`, so that the old
    /// leader has stopped before anyone may take over.
    pub renew_deadline: Duration,
    /// Time between two attempts to acquire or renew.
    pub retry_period: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Why a leader stopped being one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lost {
    /// No renewal succeeded within the renew deadline.
    RenewDeadline,
    /// Another replica holds the Lease now.
    TakenOver(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::RenewDeadline => {
                f.write_str("could not renew the lease within the renew deadline")
            }
            Lost::TakenOver(by) => write!(f, "the lease is held by {by} now"),
        }
    }
}

/// What a candidate last saw of the Lease, and when (on its own clock).
#[derive(Clone, Debug)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    resource_version: Option<String>,
    at: Instant,
}

/// One replica's side of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    identity: String,
    config: LeaseConfig,
    observed: Option<Observed>,
}

impl LeaderElector {
    /// A candidate named `identity` for the Lease in namespace `ns`.
    pub fn new(client: Client, ns: &str, identity: &str, config: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, ns),
            identity: identity.to_string(),
            config,
            observed: None,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One attempt to take or renew the Lease, now.
    ///
    /// # Errors
    /// API failures other than a lost race (which is `Ok(false)`).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        self.try_acquire_or_renew_at(Instant::now()).await
    }

    /// [`Self::try_acquire_or_renew`] as if the monotonic clock read `now`
    /// (tests move it; the wall-clock `renewTime` written is always real).
    ///
    /// # Errors
    /// API failures other than a lost race (which is `Ok(false)`).
    pub async fn try_acquire_or_renew_at(&mut self, now: Instant) -> Result<bool, kube::Error> {
        let wall = MicroTime(Timestamp::now());
        let Some(lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(0, wall.clone(), wall)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created, now);
                    Ok(true)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let changed = self.observed.as_ref().is_none_or(|o| {
            o.holder != current.holder_identity
                || o.renew_time != current.renew_time.as_ref().map(|t| t.0)
                || o.resource_version != lease.metadata.resource_version
        });
        if changed {
            self.observe(&lease, now);
        }
        let holder = current.holder_identity.as_deref().filter(|h| !h.is_empty());
        let ours = holder == Some(self.identity.as_str());
        if let (Some(_), false) = (holder, ours) {
            let duration = current
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.lease_duration, Duration::from_secs);
            let seen = self.observed.as_ref().map_or(now, |o| o.at);
            if now.saturating_duration_since(seen) < duration {
                return Ok(false);
            }
        }
        let (transitions, acquired) = if ours {
            (
                current.lease_transitions.unwrap_or(0),
                current.acquire_time.clone().unwrap_or_else(|| wall.clone()),
            )
        } else {
            (current.lease_transitions.unwrap_or(0) + 1, wall.clone())
        };
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": lease.metadata.resource_version },
            "spec": self.spec(transitions, acquired, wall),
        });
        match self
            .api
            .patch(LEASE_NAME, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(updated) => {
                self.observe(&updated, now);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Wait until this replica holds the Lease.
    pub async fn acquire(&mut self) {
        let mut said = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) if !said => {
                    said = true;
                    let by = self.observed.as_ref().and_then(|o| o.holder.clone());
                    tracing::info!(
                        "the lease is held by {}; standing by",
                        by.as_deref().unwrap_or("another replica")
                    );
                }
                Ok(false) => tracing::debug!("another replica holds the lease; standing by"),
                Err(e) => tracing::warn!("lease {LEASE_NAME}: {e}"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renew the Lease until that fails: returns when no renewal succeeded
    /// within the renew deadline, or another replica holds the Lease. The
    /// caller must stop acting at once.
    pub async fn keep(&mut self) -> Lost {
        let mut renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let deadline = renewed + self.config.renew_deadline;
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => renewed = tokio::time::Instant::now(),
                Ok(Ok(false)) => {
                    let by = self
                        .observed
                        .as_ref()
                        .and_then(|o| o.holder.clone())
                        .unwrap_or_default();
                    return Lost::TakenOver(by);
                }
                Ok(Err(e)) => {
                    tracing::warn!("renewing the lease: {e}");
                    if tokio::time::Instant::now() + self.config.retry_period >= deadline {
                        return Lost::RenewDeadline;
                    }
                }
                Err(_) => return Lost::RenewDeadline,
            }
        }
    }

    /// Give the Lease up (after the controllers stopped), so that a standby
    /// takes over on its next try instead of waiting for the Lease to expire.
    /// Does nothing when another replica holds it.
    ///
    /// # Errors
    /// API failures (the Lease then expires as if this replica had died).
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(lease) = self.api.get_opt(LEASE_NAME).await? else {
            return Ok(());
        };
        let current = lease.spec.unwrap_or_default();
        if current.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let now = MicroTime(Timestamp::now());
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": lease.metadata.resource_version },
            "spec": {
                "holderIdentity": null,
                "leaseDurationSeconds": 1,
                "renewTime": now,
                "acquireTime": now,
            },
        });
        self.api
            .patch(LEASE_NAME, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.observed = None;
        Ok(())
    }

    fn spec(&self, transitions: i32, acquired: MicroTime, renewed: MicroTime) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            renew_time: Some(renewed),
            acquire_time: Some(acquired),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    fn observe(&mut self, lease: &Lease, at: Instant) {
        let spec = lease.spec.as_ref();
        self.observed = Some(Observed {
            holder: spec.and_then(|s| s.holder_identity.clone()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            resource_version: lease.metadata.resource_version.clone(),
            at,
        });
    }
}
