//! Prometheus metrics, served at `/metrics` beside the health endpoints (OpenMetrics text).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are written as they are named
pub enum BackupResult {
    succeeded,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: BackupResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControlPlaneLabels {
    pub namespace: String,
    pub controlplane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::Error::kind`].
    pub kind: &'static str,
}

/// How reading a stored snapshot back went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum VerifyResult {
    passed,
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerifyLabels {
    pub result: VerifyResult,
}

/// What a schedule did at a scheduled time.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RunOutcome {
    /// A backup was created.
    created,
    /// Skipped: a backup of the schedule was still running (`concurrencyPolicy: Forbid`).
    skipped,
    /// Skipped: later than `startingDeadlineSeconds` (operator down, schedule paused).
    missed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub outcome: RunOutcome,
}

/// How one reconcile ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReconcileResult {
    ok,
    error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `backup`, `schedule` or `restore`.
    pub controller: &'static str,
    pub result: ReconcileResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

type DurationFamily = Family<ResultLabels, Histogram, fn() -> Histogram>;
type ReconcileDurationFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

/// The operator's metrics. One per process; the controller records, the health server encodes.
pub struct Metrics {
    registry: Registry,
    /// `teb_backups_total{result}`: finished backups.
    pub backups: Family<ResultLabels, Counter>,
    /// `teb_backup_duration_seconds{result}`: from the first attempt's start to the end.
    pub duration: DurationFamily,
    /// `teb_backup_stored_bytes_total`: bytes of the snapshots stored.
    pub stored_bytes: Counter,
    /// `teb_last_success_timestamp_seconds{namespace,controlplane}`: newest Ready backup's completion.
    pub last_success: Family<ControlPlaneLabels, Gauge<f64, AtomicU64>>,
    /// `teb_backup_objects{namespace,controlplane}`: Kubernetes objects in the newest backup.
    pub objects: Family<ControlPlaneLabels, Gauge>,
    /// `teb_backup_keys{namespace,controlplane}`: etcd keys in the newest backup.
    pub keys: Family<ControlPlaneLabels, Gauge>,
    /// `teb_backups_objects_dropped_total{namespace,controlplane}`: backups flagged `ObjectsDropped`.
    pub objects_dropped: Family<ControlPlaneLabels, Counter>,
    /// `teb_backups_in_progress`: attempts running now.
    pub in_progress: Gauge,
    /// `teb_errors_total{kind}`: failed attempts by what failed (talos, snapshot, s3, secret, ...).
    pub errors: Family<ErrorLabels, Counter>,
    /// `teb_schedule_runs_total{outcome}`: scheduled times, by what the schedule did.
    pub schedule_runs: Family<RunLabels, Counter>,
    /// `teb_backups_pruned_total`: backups deleted by schedules' retention.
    pub pruned: Counter,
    /// `teb_verifications_total{result}`: stored snapshots read back and checked (`spec.verify`).
    pub verifications: Family<VerifyLabels, Counter>,
    /// `teb_reconciles_total{controller,result}`: reconciles by controller and how they ended.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// `teb_reconcile_duration_seconds{controller}`: how long reconciles take (a backup's includes its
    /// attempt).
    pub reconcile_duration: ReconcileDurationFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("teb");
        let backups = Family::<ResultLabels, Counter>::default();
        registry.register("backups", "Finished backups by result", backups.clone());
        // 1 s to about 4.5 h.
        let duration: DurationFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 15)));
        registry.register("backup_duration_seconds", "Backup duration, first attempt to end", duration.clone());
        let stored_bytes = Counter::default();
        registry.register("backup_stored_bytes", "Bytes of the snapshots stored", stored_bytes.clone());
        let last_success = Family::<ControlPlaneLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "last_success_timestamp_seconds",
            "Completion time of the newest Ready backup of each control plane",
            last_success.clone(),
        );
        let objects = Family::<ControlPlaneLabels, Gauge>::default();
        registry.register(
            "backup_objects",
            "Kubernetes objects in the newest backup of each control plane",
            objects.clone(),
        );
        let keys = Family::<ControlPlaneLabels, Gauge>::default();
        registry.register("backup_keys", "etcd keys in the newest backup of each control plane", keys.clone());
        let objects_dropped = Family::<ControlPlaneLabels, Counter>::default();
        registry.register(
            "backups_objects_dropped",
            "Backups holding far fewer objects than the newest good backup of their control plane",
            objects_dropped.clone(),
        );
        let in_progress = Gauge::default();
        registry.register("backups_in_progress", "Backup attempts running", in_progress.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("errors", "Failed backup attempts by kind of error", errors.clone());
        let schedule_runs = Family::<RunLabels, Counter>::default();
        registry.register(
            "schedule_runs",
            "Scheduled times by outcome: created, skipped, missed",
            schedule_runs.clone(),
        );
        let pruned = Counter::default();
        registry.register("backups_pruned", "Backups deleted by schedules' retention", pruned.clone());
        let verifications = Family::<VerifyLabels, Counter>::default();
        registry.register("verifications", "Stored snapshots read back and checked, by result", verifications.clone());
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by controller and result", reconciles.clone());
        // 1 ms to about 4.5 h.
        let reconcile_duration: ReconcileDurationFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 4.0, 13)));
        registry.register("reconcile_duration_seconds", "Reconcile duration by controller", reconcile_duration.clone());
        Metrics {
            reconciles,
            reconcile_duration,
            registry,
            backups,
            duration,
            stored_bytes,
            last_success,
            objects,
            keys,
            objects_dropped,
            in_progress,
            errors,
            schedule_runs,
            pruned,
            verifications,
        }
    }
}

impl Metrics {
    /// A reconcile of `controller` that took `seconds` and ended `ok` or not.
    pub fn reconciled(&self, controller: &'static str, ok: bool, seconds: f64) {
        let result = if ok { ReconcileResult::ok } else { ReconcileResult::error };
        self.reconciles.get_or_create(&ReconcileLabels { controller, result }).inc();
        self.reconcile_duration.get_or_create(&ControllerLabels { controller }).observe(seconds);
    }

    /// A finished backup of `seconds`.
    pub fn finished(&self, result: BackupResult, seconds: f64) {
        let labels = ResultLabels { result };
        self.backups.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }

    /// Keeps the newest completion time of a control plane's Ready backups.
    pub fn succeeded_at(&self, namespace: &str, controlplane: &str, unix_seconds: f64) {
        let labels = ControlPlaneLabels { namespace: namespace.to_owned(), controlplane: controlplane.to_owned() };
        let gauge = self.last_success.get_or_create(&labels);
        if unix_seconds > gauge.get() {
            gauge.set(unix_seconds);
        }
    }

    /// What the newest backup of a control plane holds.
    pub fn contents(&self, namespace: &str, controlplane: &str, objects: i64, keys: i64) {
        let labels = ControlPlaneLabels { namespace: namespace.to_owned(), controlplane: controlplane.to_owned() };
        self.objects.get_or_create(&labels).set(objects);
        self.keys.get_or_create(&labels).set(keys);
    }

    /// A backup of a control plane flagged `ObjectsDropped`.
    pub fn objects_dropped(&self, namespace: &str, controlplane: &str) {
        let labels = ControlPlaneLabels { namespace: namespace.to_owned(), controlplane: controlplane.to_owned() };
        self.objects_dropped.get_or_create(&labels).inc();
    }

    /// OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Counts an attempt as running while it lives (also when the attempt panics).
pub struct Running<'a>(&'a Gauge);

impl<'a> Running<'a> {
    pub fn start(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Running(gauge)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_what_was_recorded() {
        let metrics = Metrics::default();
        metrics.finished(BackupResult::succeeded, 3.0);
        metrics.stored_bytes.inc_by(4096);
        metrics.succeeded_at("ns", "cp", 20.0);
        metrics.succeeded_at("ns", "cp", 10.0);
        metrics.errors.get_or_create(&ErrorLabels { kind: "s3" }).inc();
        metrics.schedule_runs.get_or_create(&RunLabels { outcome: RunOutcome::skipped }).inc();
        metrics.pruned.inc_by(2);
        {
            let _running = Running::start(&metrics.in_progress);
            assert!(metrics.encode().contains("teb_backups_in_progress 1"));
        }
        let text = metrics.encode();
        for line in [
            "teb_backups_total{result=\"succeeded\"} 1",
            "teb_backup_stored_bytes_total 4096",
            "teb_last_success_timestamp_seconds{namespace=\"ns\",controlplane=\"cp\"} 20.0",
            "teb_errors_total{kind=\"s3\"} 1",
            "teb_backups_in_progress 0",
            "teb_backup_duration_seconds_count{result=\"succeeded\"} 1",
            "teb_schedule_runs_total{outcome=\"skipped\"} 1",
            "teb_backups_pruned_total 2",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
