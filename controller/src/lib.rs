//! Cairn's Kubernetes controller: the pieces that turn `Backup`, `Restore`
//! and `BackupSchedule` resources into agent Jobs and results into status.
//!
//! Built so far: the `Backup` reconciler ([`backup`], tested against an
//! in-process fake API), Job construction ([`jobs`]), schedule computation
//! ([`schedule`]) and reading the agent's result ([`result`]), each tested
//! without a cluster. Still to come: the `BackupSchedule`, `Restore` and
//! `BackupRepository` reconcilers, the kube-runtime watch loops in the
//! binary, leader election, health endpoints and metrics.

pub mod backup;
pub mod jobs;
pub mod result;
pub mod schedule;
pub mod schedules;
