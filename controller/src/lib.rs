//! Cairn's Kubernetes controller: the pieces that turn `Backup`, `Restore`
//! and `BackupSchedule` resources into agent Jobs and results into status.
//!
//! Built: the `Backup` ([`backup`]), `BackupSchedule` ([`schedules`]),
//! `Restore` ([`restores`]) and `BackupRepository` ([`repositories`])
//! reconcilers, tested against an in-process fake API server
//! (controller/tests/reconcile.rs); Job construction ([`jobs`]); schedules
//! ([`schedule`]); the agent's result ([`result`]); Lease-based leader
//! election ([`leader`]); Prometheus counters ([`metrics`]). The binary runs
//! the four loops under leader election with `/healthz`, `/readyz`, `/metrics`.
//!
//! Per-repository and per-node limits on concurrent backup Jobs are applied
//! by the `Backup` reconciler. Scheduled prune Jobs (at most one per repository) are run by the
//! `BackupRepository` reconciler. [`run`] holds the watch loops (the binary and
//! the e2e tests run them); the Helm chart is `charts/cairn`.

pub mod backup;
pub mod jobs;
pub mod leader;
pub mod metrics;
pub mod repositories;
pub mod restores;
pub mod result;
pub mod run;
pub mod schedule;
pub mod schedules;
pub mod status;
