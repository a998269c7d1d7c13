//! Cairn's Kubernetes controller: the pieces that turn `Backup`, `Restore`
//! and `BackupSchedule` resources into agent Jobs and results into status.
//!
//! Built so far: the `Backup` reconciler ([`backup`], tested against an
//! in-process fake API), Job construction ([`jobs`]), schedule computation
//! ([`schedule`]) and reading the agent's result ([`result`]), each tested
//! without a cluster. The watch loops that call them (kube-runtime
//! controllers, leader election, status updates) are the next step.

pub mod backup;
pub mod jobs;
pub mod result;
pub mod schedule;
