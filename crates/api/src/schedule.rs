use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::TalosEtcdBackupSpec;

/// Label on every TalosEtcdBackup a schedule creates: the schedule's name (as the upstream operator
/// writes it).
pub const SCHEDULE_LABEL: &str = "talos.alperen.cloud/backup-schedule";
/// Annotation on every TalosEtcdBackup a schedule creates: the scheduled time it was created for.
pub const SCHEDULED_AT_ANNOTATION: &str = "talos.alperen.cloud/scheduled-at";
/// Annotation on every TalosEtcdBackup a schedule creates: the UID of that schedule. It stands in for
/// an owner reference, which would let the garbage collector delete backups when a schedule goes (and
/// with `deletionPolicy: Delete`, their snapshots); a schedule re-created under the same name does not
/// adopt the old one's backups.
pub const SCHEDULE_UID_ANNOTATION: &str = "talos.alperen.cloud/schedule-uid";
/// Label on every TalosEtcdBackup that imports a snapshot already in the bucket (`importKey`) for a
/// schedule with `importExisting`.
pub const IMPORTED_LABEL: &str = "talos.alperen.cloud/imported";

/// Creates TalosEtcdBackups on a cron schedule and prunes old ones. Compatible with the upstream
/// talos-operator's TalosEtcdBackupSchedule: its YAML applies unchanged.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "talos.alperen.cloud",
    version = "v1alpha1",
    kind = "TalosEtcdBackupSchedule",
    namespaced,
    status = "TalosEtcdBackupScheduleStatus",
    shortname = "tebs",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","jsonPath":".spec.paused"}"#,
    printcolumn = r#"{"name":"Stale","type":"string","jsonPath":".status.conditions[?(@.type==\"Stale\")].status"}"#,
    printcolumn = r#"{"name":"Last Backup","type":"date","jsonPath":".status.lastSuccessfulBackupTime"}"#,
    printcolumn = r#"{"name":"Next Backup","type":"date","jsonPath":".status.nextScheduleTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TalosEtcdBackupScheduleSpec {
    /// When backups run: five cron fields (`"0 2 * * *"`), a descriptor (`@hourly`, `@daily`,
    /// `@weekly`, `@monthly`, `@yearly`), or `@every <duration>` (`@every 6h`); optionally prefixed
    /// by `CRON_TZ=<IANA zone>`.
    #[schemars(length(min = 1, max = 256))]
    pub schedule: String,
    /// IANA time zone the schedule is read in, for example `Europe/Berlin`. Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// The TalosEtcdBackups to create. Their `deletionPolicy` defaults to `Delete`, so that pruning
    /// removes the stored snapshot with the backup; set `Retain` to keep pruned snapshots in the bucket.
    pub backup_template: BackupTemplate,
    /// Successful backups kept: the newest this many (default 5), together with those the `keep*`
    /// fields keep. The newest successful backup is never pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub retention: Option<i32>,
    /// Also keep the newest successful backup of each of the last this many hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_hourly: Option<i32>,
    /// Also keep the newest successful backup of each of the last this many days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_daily: Option<i32>,
    /// Also keep the newest successful backup of each of the last this many ISO weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_weekly: Option<i32>,
    /// Also keep the newest successful backup of each of the last this many months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_monthly: Option<i32>,
    /// Failed backups kept for inspection (default 3); older failed ones are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub failed_backups_history_limit: Option<i32>,
    /// No new backups while true. A run missed while paused is taken once on resuming, within
    /// `startingDeadlineSeconds`.
    #[serde(default)]
    pub paused: bool,
    /// `Forbid` (default): skip a run while a backup of this schedule is still running. `Allow`: run
    /// anyway.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// Verify each backup after its upload (`verify` of the TalosEtcdBackup); `Stale` and
    /// `lastSuccessfulBackup` then count only backups that read back sound.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
    /// Bring back the catalog: the snapshots under this schedule's prefix in the bucket
    /// (`talos-operator-etcd-backups/<controlplane>/`) that no TalosEtcdBackup in the namespace
    /// represents get one each, importing them (`importKey`), labelled `talos.alperen.cloud/imported`,
    /// so that `kubectl get`, restores and retention see the whole history again after the
    /// management cluster was rebuilt. One LIST of the prefix per reconcile. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub import_existing: bool,
    /// A run missed (operator down, schedule paused) is taken late only if at most this many seconds
    /// late; unset: always taken. Only the most recent missed run is ever taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub starting_deadline_seconds: Option<i64>,
}

/// See [`TalosEtcdBackupScheduleSpec::concurrency_policy`].
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConcurrencyPolicy {
    #[default]
    Forbid,
    Allow,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct BackupTemplate {
    /// The spec of each TalosEtcdBackup created.
    pub spec: TalosEtcdBackupSpec,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TalosEtcdBackupScheduleStatus {
    /// `Ready` (the schedule is valid and running, or paused), `Failed` (it cannot run: reason
    /// `InvalidSchedule`), `Stale` (no backup succeeded for two scheduled runs), `StorageReady` (the
    /// bucket accepted a test upload: checked when the spec changes, hourly, every 5 minutes after a
    /// failure).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The most recent scheduled time acted on: a backup was created for it, or it was skipped
    /// (a backup still running under `Forbid`, or later than `startingDeadlineSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When the next backup is due; unset while paused or invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// Completion time of the newest successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup_time: Option<Time>,
    /// Name of the newest successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<String>,
    /// Names of the backups of this schedule still running.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_backups: Vec<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the bucket was last checked (the `StorageReady` condition says how that went).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_storage_check_time: Option<Time>,
}
