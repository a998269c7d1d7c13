//! Prometheus metrics of the controller, in the text exposition format.
//! Counters for the controller's work, a histogram of reconcile durations
//! per kind, and gauges per schedule and PVC and per repository, which the
//! alert rules in deploy/alerts.yaml use.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
/// Requests the controller's client sent to the API server.
pub static API_REQUESTS: Counter = Counter::new(
    "cairn_controller_api_requests_total",
    "Requests sent to the Kubernetes API server (watches count once, when they start).",
);
/// Status writes made (a reconcile that changed the object's status).
pub static STATUS_WRITES: Counter = Counter::new(
    "cairn_controller_status_writes_total",
    "Status subresource patches the controller sent.",
);
/// Status writes left out because the status had not changed.
pub static STATUS_WRITES_SKIPPED: Counter = Counter::new(
    "cairn_controller_status_writes_skipped_total",
    "Reconciles whose status equalled the stored one, so nothing was written.",
);
/// Backups that finished successfully.
pub static BACKUPS_SUCCEEDED: Counter = Counter::new(
    "cairn_backups_succeeded_total",
    "Backup runs that finished with every snapshot written.",
);
/// Backups that failed.
pub static BACKUPS_FAILED: Counter =
    Counter::new("cairn_backups_failed_total", "Backup runs that failed.");

/// A histogram of durations in seconds with one `kind` label and fixed
/// bucket bounds.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    series: Mutex<BTreeMap<&'static str, Buckets>>,
}

/// One series: observations per bucket (not cumulative; the last one is
/// above every bound), their sum and count.
#[derive(Default)]
struct Buckets {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Histogram {
        Histogram {
            name,
            help,
            bounds,
            series: Mutex::new(BTreeMap::new()),
        }
    }
    /// Record one observation of `seconds` for `kind`.
    pub fn observe(&self, kind: &'static str, seconds: f64) {
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = series.entry(kind).or_default();
        if b.counts.is_empty() {
            b.counts = vec![0; self.bounds.len() + 1];
        }
        let i = self.bounds.partition_point(|&le| le < seconds);
        b.counts[i] += 1;
        b.sum += seconds;
        b.count += 1;
    }
    fn render(&self, out: &mut String) {
        let name = self.name;
        out.push_str(&format!(
            "# HELP {name} {}\n# TYPE {name} histogram\n",
            self.help
        ));
        let series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (kind, b) in series.iter() {
            let mut cumulative = 0;
            for (i, n) in b.counts.iter().enumerate() {
                cumulative += n;
                let le = self
                    .bounds
                    .get(i)
                    .map_or_else(|| "+Inf".to_string(), f64::to_string);
                out.push_str(&format!(
                    "{name}_bucket{{kind=\"{kind}\",le=\"{le}\"}} {cumulative}\n"
                ));
            }
            out.push_str(&format!("{name}_sum{{kind=\"{kind}\"}} {}\n", b.sum));
            out.push_str(&format!("{name}_count{{kind=\"{kind}\"}} {}\n", b.count));
        }
    }
}

/// How long reconciles take, per kind (`Backup`, `BackupSchedule`,
/// `Restore`, `BackupRepository`), including the wait for the client's rate
/// limit.
pub static RECONCILE_DURATION: Histogram = Histogram::new(
    "cairn_controller_reconcile_duration_seconds",
    "Duration of reconciles by kind, including waits for the client-side rate limit.",
    &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ],
);

/// A gauge with labels.
pub struct LabeledGauge {
    name: &'static str,
    help: &'static str,
    values: Mutex<BTreeMap<Vec<(&'static str, String)>, f64>>,
}

impl LabeledGauge {
    const fn new(name: &'static str, help: &'static str) -> LabeledGauge {
        LabeledGauge {
            name,
            help,
            values: Mutex::new(BTreeMap::new()),
        }
    }
    /// Set the value for these labels.
    pub fn set(&self, labels: &[(&'static str, &str)], v: f64) {
        let key = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.values
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, v);
    }
    /// Drop every series whose labels include all of `having` and for which
    /// `keep` is false.
    pub fn remove_where(
        &self,
        having: &[(&'static str, &str)],
        keep: impl Fn(&[(&'static str, String)]) -> bool,
    ) {
        self.values
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|labels, _| {
                let matches = having
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v));
                !matches || keep(labels)
            });
    }
    fn render(&self, out: &mut String) {
        out.push_str(&format!(
            "# HELP {} {}\n# TYPE {} gauge\n",
            self.name, self.help, self.name
        ));
        let values = self
            .values
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (labels, v) in values.iter() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            out.push_str(&format!("{}{{{}}} {v}\n", self.name, l.join(",")));
        }
    }
}

/// Unix time of the last successful backup of a PVC by a schedule.
pub static LAST_SUCCESS: LabeledGauge = LabeledGauge::new(
    "cairn_backup_last_success_timestamp_seconds",
    "Unix time of the last successful backup of a PVC by a BackupSchedule.",
);
/// Bytes the last successful backup added to the repository.
pub static LAST_BYTES_ADDED: LabeledGauge = LabeledGauge::new(
    "cairn_backup_last_bytes_added",
    "New bytes the last successful backup of a PVC added to the repository.",
);
/// Duration of the last successful backup.
pub static LAST_DURATION: LabeledGauge = LabeledGauge::new(
    "cairn_backup_last_duration_seconds",
    "Duration of the last successful backup of a PVC.",
);
/// Whether a repository is Ready (1) or not (0).
pub static REPOSITORY_READY: LabeledGauge = LabeledGauge::new(
    "cairn_repository_ready",
    "1 when the BackupRepository is reachable and initialised, else 0.",
);

/// Keep a schedule's per-PVC series only for `pvcs` (all of them go when the
/// schedule is deleted or suspended), so that `CairnBackupTooOld` never fires
/// for a PVC nobody backs up any more.
pub fn retain_schedule(ns: &str, schedule: &str, pvcs: &[&str]) {
    for g in [&LAST_SUCCESS, &LAST_BYTES_ADDED, &LAST_DURATION] {
        g.remove_where(&[("namespace", ns), ("schedule", schedule)], |labels| {
            labels
                .iter()
                .any(|(k, v)| *k == "pvc" && pvcs.contains(&v.as_str()))
        });
    }
}

/// Keep only the series of schedules and repositories in these sets of
/// (namespace, name).
pub fn retain_known(
    schedules: &std::collections::HashSet<(String, String)>,
    repositories: &std::collections::HashSet<(String, String)>,
) {
    let known = |labels: &[(&'static str, String)],
                 kind: &str,
                 set: &std::collections::HashSet<(String, String)>| {
        let get = |k: &str| labels.iter().find(|(l, _)| *l == k).map(|(_, v)| v.clone());
        match (get("namespace"), get(kind)) {
            (Some(ns), Some(name)) => set.contains(&(ns, name)),
            _ => true,
        }
    };
    for g in [&LAST_SUCCESS, &LAST_BYTES_ADDED, &LAST_DURATION] {
        g.remove_where(&[], |l| known(l, "schedule", schedules));
    }
    REPOSITORY_READY.remove_where(&[], |l| known(l, "repository", repositories));
}

/// All metrics as Prometheus text.
pub fn render() -> String {
    let mut out = String::new();
    for c in [
        &RECONCILES,
        &RECONCILE_ERRORS,
        &API_REQUESTS,
        &STATUS_WRITES,
        &STATUS_WRITES_SKIPPED,
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
    for g in [
        &LAST_SUCCESS,
        &LAST_BYTES_ADDED,
        &LAST_DURATION,
        &REPOSITORY_READY,
    ] {
        g.render(&mut out);
    }
    RECONCILE_DURATION.render(&mut out);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn histogram_buckets_are_cumulative_per_kind() {
        let h = super::Histogram::new("t_seconds", "Test.", &[0.25, 1.0]);
        for s in [0.125, 0.25, 0.5, 3.0] {
            h.observe("Backup", s);
        }
        h.observe("Restore", 2.0);
        let mut t = String::new();
        h.render(&mut t);
        assert!(
            t.starts_with("# HELP t_seconds Test.\n# TYPE t_seconds histogram\n"),
            "{t}"
        );
        for line in [
            "t_seconds_bucket{kind=\"Backup\",le=\"0.25\"} 2\n",
            "t_seconds_bucket{kind=\"Backup\",le=\"1\"} 3\n",
            "t_seconds_bucket{kind=\"Backup\",le=\"+Inf\"} 4\n",
            "t_seconds_sum{kind=\"Backup\"} 3.875\n",
            "t_seconds_count{kind=\"Backup\"} 4\n",
            "t_seconds_bucket{kind=\"Restore\",le=\"1\"} 0\n",
            "t_seconds_bucket{kind=\"Restore\",le=\"+Inf\"} 1\n",
        ] {
            assert!(t.contains(line), "{line} in {t}");
        }
        super::RECONCILE_DURATION.observe("BackupSchedule", 0.003);
        assert!(super::render()
            .contains("# TYPE cairn_controller_reconcile_duration_seconds histogram\n"));
    }

    #[test]
    fn text_format() {
        super::BACKUPS_FAILED.inc();
        let t = super::render();
        assert!(t.contains("# TYPE cairn_backups_failed_total counter\n"));
        assert!(t.contains("\ncairn_backups_failed_total 1\n"));
        super::LAST_SUCCESS.set(
            &[
                ("namespace", "shop"),
                ("schedule", "nightly"),
                ("pvc", "d\"b"),
            ],
            1.5e9,
        );
        let t = super::render();
        assert!(
            t.contains("cairn_backup_last_success_timestamp_seconds{namespace=\"shop\",schedule=\"nightly\",pvc=\"d\\\"b\"} 1500000000\n"),
            "{t}"
        );
        super::LAST_SUCCESS.set(
            &[("namespace", "shop"), ("schedule", "nightly"), ("pvc", "x")],
            1.0,
        );
        super::LAST_SUCCESS.set(
            &[("namespace", "shop"), ("schedule", "hourly"), ("pvc", "x")],
            1.0,
        );
        super::retain_schedule("shop", "nightly", &["x"]);
        let t = super::render();
        assert!(!t.contains("pvc=\"d\\\"b\""), "{t}");
        assert!(t.contains("schedule=\"nightly\",pvc=\"x\""), "{t}");
        super::retain_schedule("shop", "nightly", &[]);
        let t = super::render();
        assert!(!t.contains("schedule=\"nightly\""), "{t}");
        assert!(t.contains("schedule=\"hourly\",pvc=\"x\""), "{t}");
        super::REPOSITORY_READY.set(&[("namespace", "shop"), ("repository", "gone")], 1.0);
        super::REPOSITORY_READY.set(&[("namespace", "shop"), ("repository", "here")], 1.0);
        let here: std::collections::HashSet<_> = [("shop".to_string(), "here".to_string())].into();
        super::retain_known(&std::collections::HashSet::new(), &here);
        let t = super::render();
        assert!(!t.contains("schedule=\"hourly\""), "{t}");
        assert!(!t.contains("repository=\"gone\""), "{t}");
        assert!(t.contains("repository=\"here\""), "{t}");
    }
}
