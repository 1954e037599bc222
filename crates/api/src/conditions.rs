//! The status conditions of a TalosEtcdBackup, exactly as the specification's table lists them.
//!
//! | Condition   | Status | Reason           |
//! |-------------|--------|------------------|
//! | Progressing | True   | BackupInProgress |
//! | Progressing | False  | BackupCompleted  |
//! | Ready       | True   | BackupSucceeded  |
//! | Failed      | True   | BackupFailed     |
//!
//! A phase always yields the whole set, so no stale condition survives to contradict the current one.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const PROGRESSING: &str = "Progressing";
pub const READY: &str = "Ready";
pub const FAILED: &str = "Failed";

pub const BACKUP_IN_PROGRESS: &str = "BackupInProgress";
pub const BACKUP_COMPLETED: &str = "BackupCompleted";
pub const BACKUP_SUCCEEDED: &str = "BackupSucceeded";
pub const BACKUP_FAILED: &str = "BackupFailed";

/// With `spec.verify`, a backup also gets `Verified`: True `SnapshotVerified` once the stored snapshot
/// read back sound, False `VerificationFailed` when it did not.
pub const VERIFIED: &str = "Verified";
pub const SNAPSHOT_VERIFIED: &str = "SnapshotVerified";
pub const VERIFICATION_FAILED: &str = "VerificationFailed";

/// Reasons of a TalosEtcdRestore's conditions (its types are a backup's: Progressing, Ready, Failed).
pub const RESTORE_IN_PROGRESS: &str = "RestoreInProgress";
pub const RESTORE_COMPLETED: &str = "RestoreCompleted";
pub const RESTORE_SUCCEEDED: &str = "RestoreSucceeded";
pub const RESTORE_FAILED: &str = "RestoreFailed";
/// Failed because etcd runs on the node: restoring over a live etcd is never done.
pub const RESTORE_REFUSED: &str = "RestoreRefused";

/// Conditions of a TalosEtcdBackupSchedule: `Ready` True (`ScheduleActive` or `SchedulePaused`) or
/// False with `Failed` True (`InvalidSchedule`), as upstream; and `Stale`.
pub const STALE: &str = "Stale";
pub const SCHEDULE_ACTIVE: &str = "ScheduleActive";
pub const SCHEDULE_PAUSED: &str = "SchedulePaused";
pub const INVALID_SCHEDULE: &str = "InvalidSchedule";
/// `Stale` True: two scheduled runs passed without a successful backup.
pub const NO_RECENT_BACKUP: &str = "NoRecentBackup";
/// `Stale` False.
pub const RECENT_BACKUP: &str = "RecentBackup";
/// Whether the bucket of a schedule's backups accepts uploads: True `StorageReachable`, False
/// `StorageUnreachable`.
pub const STORAGE_READY: &str = "StorageReady";
pub const STORAGE_REACHABLE: &str = "StorageReachable";
pub const STORAGE_UNREACHABLE: &str = "StorageUnreachable";

/// Where a backup stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    InProgress,
    Succeeded,
    Failed,
}

/// The conditions for `phase`. `existing` supplies lastTransitionTime for conditions whose status did
/// not change; `message` goes on the condition that says most about the phase.
pub fn conditions_for(
    phase: &Phase,
    message: &str,
    existing: &[Condition],
    observed_generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let wanted: Vec<(&str, &str, &str, &str)> = match phase {
        Phase::InProgress => vec![(PROGRESSING, "True", BACKUP_IN_PROGRESS, message)],
        Phase::Succeeded => vec![
            (PROGRESSING, "False", BACKUP_COMPLETED, "Backup finished"),
            (READY, "True", BACKUP_SUCCEEDED, message),
        ],
        Phase::Failed => {
            vec![(PROGRESSING, "False", BACKUP_COMPLETED, "Backup finished"), (FAILED, "True", BACKUP_FAILED, message)]
        }
    };
    wanted
        .into_iter()
        .map(|(type_, status, reason, message)| {
            condition(type_, status, reason, message, existing, observed_generation, now)
        })
        .collect()
}

/// One condition. Its lastTransitionTime is taken from `existing` when the status there is the same.
pub fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    existing: &[Condition],
    observed_generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = existing
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation,
        last_transition_time,
    }
}

/// The condition of `type_` whose status is "True", if any.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn each_phase_yields_exactly_the_table_rows() {
        let rows = |p: Phase| -> Vec<(String, String, String)> {
            conditions_for(&p, "m", &[], Some(1), &at(0)).into_iter().map(|c| (c.type_, c.status, c.reason)).collect()
        };
        let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
        assert_eq!(rows(Phase::InProgress), vec![s("Progressing", "True", "BackupInProgress")]);
        assert_eq!(
            rows(Phase::Succeeded),
            vec![s("Progressing", "False", "BackupCompleted"), s("Ready", "True", "BackupSucceeded")]
        );
        assert_eq!(
            rows(Phase::Failed),
            vec![s("Progressing", "False", "BackupCompleted"), s("Failed", "True", "BackupFailed")]
        );
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let running = conditions_for(&Phase::InProgress, "attempt 1", &[], Some(1), &at(10));
        let again = conditions_for(&Phase::InProgress, "attempt 2", &running, Some(1), &at(20));
        assert_eq!(again[0].last_transition_time, at(10));
        assert_eq!(again[0].message, "attempt 2");
        let done = conditions_for(&Phase::Succeeded, "ok", &again, Some(1), &at(30));
        assert_eq!(done[0].last_transition_time, at(30));
        assert!(is_true(&done, READY));
        assert!(!is_true(&done, FAILED));
        assert!(!is_true(&done, PROGRESSING));
    }
}
