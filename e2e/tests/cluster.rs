//! Real-cluster tests. Marked `#[ignore]`: run them with `cargo test -p cairn-e2e -- --ignored`.

#[test]
#[ignore = "needs a Kubernetes cluster in KUBECONFIG"]
fn cluster_is_reachable() {
    match cairn_e2e::kubeconfig() {
        None => eprintln!("e2e: no KUBECONFIG and no ~/.kube/config: not run"),
        Some(p) => assert!(
            p.exists(),
            "KUBECONFIG points to {} which does not exist",
            p.display()
        ),
    }
}
