//! Prometheus metrics of the controller, in the text exposition format.
//! Counters only for now; per-backup gauges come with the status of
//! schedules (docs/METRICS.md will list them).

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }
    /// Add one.
    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// Reconciles run.
pub static RECONCILES: Counter = Counter::new(
    "cairn_controller_reconciles_total",
    "Reconciles run by the controller.",
);
/// Reconciles that failed (API errors; retried).
pub static RECONCILE_ERRORS: Counter = Counter::new(
    "cairn_controller_reconcile_errors_total",
    "Reconciles that failed with an API error and were retried.",
);
/// Backups that finished successfully.
pub static BACKUPS_SUCCEEDED: Counter = Counter::new(
    "cairn_backups_succeeded_total",
    "Backup runs that finished with every snapshot written.",
);
/// Backups that failed.
pub static BACKUPS_FAILED: Counter =
    Counter::new("cairn_backups_failed_total", "Backup runs that failed.");

/// All metrics as Prometheus text.
pub fn render() -> String {
    let mut out = String::new();
    for c in [
        &RECONCILES,
        &RECONCILE_ERRORS,
        &BACKUPS_SUCCEEDED,
        &BACKUPS_FAILED,
    ] {
        out.push_str(&format!(
            "# HELP {} {}\n# TYPE {} counter\n{} {}\n",
            c.name,
            c.help,
            c.name,
            c.name,
            c.get()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_format() {
        super::BACKUPS_FAILED.inc();
        let t = super::render();
        assert!(t.contains("# TYPE cairn_backups_failed_total counter\n"));
        assert!(t.contains("\ncairn_backups_failed_total 1\n"));
    }
}
