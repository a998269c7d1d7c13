//! Cairn's Kubernetes controller binary.
//!
//! The reconcile loops are not built yet (the library has the Job, schedule
//! and result logic they will use). Running this binary says so and exits
//! non-zero rather than pretending.

fn main() {
    eprintln!(
        "cairn-controller: the reconcile loops are not implemented in this version (API group {}/{}); \
         use `cairn agent` Jobs directly for now",
        cairn_crds::GROUP,
        cairn_crds::VERSION
    );
    std::process::exit(2);
}
