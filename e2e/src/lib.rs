//! End-to-end tests against a real Kubernetes cluster (from `KUBECONFIG`).
//! See `e2e/README.md`. Without a cluster the tests report that they did not run.

/// The kubeconfig path the e2e tests would use, if any.
pub fn kubeconfig() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let home = std::env::var_os("HOME")?;
    let p = std::path::Path::new(&home).join(".kube/config");
    p.exists().then_some(p)
}
