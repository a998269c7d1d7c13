//! Cairn's Kubernetes controller.
//!
//! Not implemented yet: the reconcilers for `BackupRepository`,
//! `BackupSchedule`, `Backup` and `Restore` arrive with the operator work.
//! Running this binary says so and exits non-zero rather than pretending.

fn main() {
    eprintln!(
        "cairn-controller: the operator is not implemented in this version (API group {}/{})",
        cairn_crds::GROUP,
        cairn_crds::VERSION
    );
    std::process::exit(2);
}
