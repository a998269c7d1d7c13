//! Kubernetes custom resource types for Cairn (`cairn.dev/v1alpha1`).
//!
//! Placeholder crate: the resource types (`BackupRepository`, `BackupSchedule`,
//! `Backup`, `Restore`) arrive with the operator work; until then this crate
//! only names the API group and version so that the workspace layout is fixed.

/// API group of Cairn's custom resources.
pub const GROUP: &str = "cairn.dev";
/// API version of Cairn's custom resources.
pub const VERSION: &str = "v1alpha1";

#[cfg(test)]
mod tests {
    #[test]
    fn api_version_string() {
        assert_eq!(
            format!("{}/{}", super::GROUP, super::VERSION),
            "cairn.dev/v1alpha1"
        );
    }
}
