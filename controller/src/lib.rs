//! Cairn's Kubernetes controller: the pieces that turn `Backup`, `Restore`
//! and `BackupSchedule` resources into agent Jobs and results into status.
//!
//! The reconcilers, one per kind: [`backups`], [`schedules`], [`restores`]
//! and [`repositories`], tested against an in-process fake API server
//! (controller/tests/reconcile.rs). What they share: the [`context`] they
//! are given (client, Job settings, Event recorder, [`metrics`]) and their
//! error; the `Ready` condition and status writes ([`status`]); Events
//! ([`events`]); what a Job's state says ([`job_state`]); the PVCs and the
//! pods using them ([`volumes`]). Below them: Job construction ([`jobs`]),
//! cron maths ([`cron`]), the agent's result ([`result`]), Lease-based
//! leader election ([`leader`]). The binary runs the four loops ([`run`])
//! under leader election with `/healthz`, `/readyz`, `/metrics`.
//!
//! Per-repository and per-node limits on concurrent backup Jobs are applied
//! by the `Backup` reconciler. Scheduled prune Jobs (at most one per
//! repository) are run by the `BackupRepository` reconciler. [`run`] holds
//! the watch loops (the binary and the e2e tests run them); the Helm chart
//! is `charts/cairn`.

pub mod backups;
pub mod context;
pub mod cron;
pub mod events;
pub mod job_state;
pub mod jobs;
pub mod leader;
pub mod metrics;
pub mod repositories;
pub mod restores;
pub mod result;
pub mod run;
pub mod schedules;
pub mod status;
pub mod volumes;
