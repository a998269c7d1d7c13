//! Prometheus metrics of the controller, in the text exposition format.
//! Counters for the controller's work, a histogram of reconcile durations
//! per kind, and gauges per schedule and PVC and per repository, which the
//! alert rules in deploy/alerts.yaml use.
//!
//! One [`Metrics`] per controller, held in the reconcilers' `Context` (and
//! counted in by its client), not process-wide: a test reads the values its
//! own reconciles made.

use std::collections::{BTreeMap, HashSet};
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
    /// Observations recorded for `kind`.
    pub fn count(&self, kind: &str) -> u64 {
        self.series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(kind)
            .map_or(0, |b| b.count)
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
    /// The value for exactly these labels, if set.
    pub fn get(&self, labels: &[(&'static str, &str)]) -> Option<f64> {
        let key: Vec<(&'static str, String)> =
            labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        self.values
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .copied()
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

/// Every metric of one controller.
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconciles that failed (API errors; retried).
    pub reconcile_errors: Counter,
    /// Requests the controller's client sent to the API server.
    pub api_requests: Counter,
    /// Status writes made (a reconcile that changed the object's status).
    pub status_writes: Counter,
    /// Status writes left out because the status had not changed.
    pub status_writes_skipped: Counter,
    /// Status writes refused because the object changed since the
    /// reconcile read it (a stale cache; retried on the newer version).
    pub status_write_conflicts: Counter,
    /// Backups that finished successfully.
    pub backups_succeeded: Counter,
    /// Backups that failed (or partially failed).
    pub backups_failed: Counter,
    /// How long reconciles take, per kind (`Backup`, `BackupSchedule`,
    /// `Restore`, `BackupRepository`), including the wait for the client's
    /// rate limit.
    pub reconcile_duration: Histogram,
    /// Unix time of the last successful backup of a PVC by a schedule.
    pub last_success: LabeledGauge,
    /// Bytes the last successful backup added to the repository.
    pub last_bytes_added: LabeledGauge,
    /// Duration of the last successful backup.
    pub last_duration: LabeledGauge,
    /// Whether a repository is Ready (1) or not (0).
    pub repository_ready: LabeledGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            reconciles: Counter::new(
                "cairn_controller_reconciles_total",
                "Reconciles run by the controller.",
            ),
            reconcile_errors: Counter::new(
                "cairn_controller_reconcile_errors_total",
                "Reconciles that failed with an API error and were retried.",
            ),
            api_requests: Counter::new(
                "cairn_controller_api_requests_total",
                "Requests sent to the Kubernetes API server (watches count once, when they start).",
            ),
            status_writes: Counter::new(
                "cairn_controller_status_writes_total",
                "Status subresource patches the controller sent.",
            ),
            status_writes_skipped: Counter::new(
                "cairn_controller_status_writes_skipped_total",
                "Reconciles whose status equalled the stored one, so nothing was written.",
            ),
            status_write_conflicts: Counter::new(
                "cairn_controller_status_write_conflicts_total",
                "Status writes refused (409) because the object had changed since it was read.",
            ),
            backups_succeeded: Counter::new(
                "cairn_backups_succeeded_total",
                "Backup runs that finished with every snapshot written.",
            ),
            backups_failed: Counter::new("cairn_backups_failed_total", "Backup runs that failed."),
            reconcile_duration: Histogram::new(
                "cairn_controller_reconcile_duration_seconds",
                "Duration of reconciles by kind, including waits for the client-side rate limit.",
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0,
                ],
            ),
            last_success: LabeledGauge::new(
                "cairn_backup_last_success_timestamp_seconds",
                "Unix time of the last successful backup of a PVC by a BackupSchedule.",
            ),
            last_bytes_added: LabeledGauge::new(
                "cairn_backup_last_bytes_added",
                "New bytes the last successful backup of a PVC added to the repository.",
            ),
            last_duration: LabeledGauge::new(
                "cairn_backup_last_duration_seconds",
                "Duration of the last successful backup of a PVC.",
            ),
            repository_ready: LabeledGauge::new(
                "cairn_repository_ready",
                "1 when the BackupRepository is reachable and initialised, else 0.",
            ),
        }
    }
}

impl Metrics {
    /// The per-PVC gauges of schedules.
    fn per_pvc(&self) -> [&LabeledGauge; 3] {
        [
            &self.last_success,
            &self.last_bytes_added,
            &self.last_duration,
        ]
    }

    /// Keep a schedule's per-PVC series only for `pvcs` (all of them go when
    /// the schedule is deleted or suspended), so that `CairnBackupTooOld`
    /// never fires for a PVC nobody backs up any more.
    pub fn retain_schedule(&self, ns: &str, schedule: &str, pvcs: &[&str]) {
        for g in self.per_pvc() {
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
        &self,
        schedules: &HashSet<(String, String)>,
        repositories: &HashSet<(String, String)>,
    ) {
        let known =
            |labels: &[(&'static str, String)], kind: &str, set: &HashSet<(String, String)>| {
                let get = |k: &str| labels.iter().find(|(l, _)| *l == k).map(|(_, v)| v.clone());
                match (get("namespace"), get(kind)) {
                    (Some(ns), Some(name)) => set.contains(&(ns, name)),
                    _ => true,
                }
            };
        for g in self.per_pvc() {
            g.remove_where(&[], |l| known(l, "schedule", schedules));
        }
        self.repository_ready
            .remove_where(&[], |l| known(l, "repository", repositories));
    }

    /// All metrics as Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in [
            &self.reconciles,
            &self.reconcile_errors,
            &self.api_requests,
            &self.status_writes,
            &self.status_writes_skipped,
            &self.status_write_conflicts,
            &self.backups_succeeded,
            &self.backups_failed,
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
        for g in self.per_pvc() {
            g.render(&mut out);
        }
        self.repository_ready.render(&mut out);
        self.reconcile_duration.render(&mut out);
        out
    }
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
        assert_eq!(
            (h.count("Backup"), h.count("Restore"), h.count("x")),
            (4, 1, 0)
        );
        let m = super::Metrics::default();
        m.reconcile_duration.observe("BackupSchedule", 0.003);
        assert!(m
            .render()
            .contains("# TYPE cairn_controller_reconcile_duration_seconds histogram\n"));
    }

    #[test]
    fn text_format() {
        let m = super::Metrics::default();
        m.backups_failed.inc();
        let t = m.render();
        assert!(t.contains("# TYPE cairn_backups_failed_total counter\n"));
        assert!(t.contains("\ncairn_backups_failed_total 1\n"));
        m.last_success.set(
            &[
                ("namespace", "shop"),
                ("schedule", "nightly"),
                ("pvc", "d\"b"),
            ],
            1.5e9,
        );
        let t = m.render();
        assert!(
            t.contains("cairn_backup_last_success_timestamp_seconds{namespace=\"shop\",schedule=\"nightly\",pvc=\"d\\\"b\"} 1500000000\n"),
            "{t}"
        );
        m.last_success.set(
            &[("namespace", "shop"), ("schedule", "nightly"), ("pvc", "x")],
            1.0,
        );
        m.last_success.set(
            &[("namespace", "shop"), ("schedule", "hourly"), ("pvc", "x")],
            1.0,
        );
        m.retain_schedule("shop", "nightly", &["x"]);
        let t = m.render();
        assert!(!t.contains("pvc=\"d\\\"b\""), "{t}");
        assert!(t.contains("schedule=\"nightly\",pvc=\"x\""), "{t}");
        m.retain_schedule("shop", "nightly", &[]);
        let t = m.render();
        assert!(!t.contains("schedule=\"nightly\""), "{t}");
        assert!(t.contains("schedule=\"hourly\",pvc=\"x\""), "{t}");
        m.repository_ready
            .set(&[("namespace", "shop"), ("repository", "gone")], 1.0);
        m.repository_ready
            .set(&[("namespace", "shop"), ("repository", "here")], 1.0);
        let here: std::collections::HashSet<_> = [("shop".to_string(), "here".to_string())].into();
        m.retain_known(&std::collections::HashSet::new(), &here);
        let t = m.render();
        assert!(!t.contains("schedule=\"hourly\""), "{t}");
        assert!(!t.contains("repository=\"gone\""), "{t}");
        assert!(t.contains("repository=\"here\""), "{t}");
    }
}
