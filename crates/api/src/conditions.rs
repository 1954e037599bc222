//! The status conditions of a TalosEtcdBackup, exactly as the specification's table lists them.
//!
//! | Condition   | Status | Reason           |
//! |-------------|--------|------------------|
//! | Progressing | True   | BackupInProgress |
//! | Progressing | False  | BackupCompleted  |
//! | Ready       | True   | BackupSucceeded  |
//! | Failed      | True   | BackupFailed     |
//!
//! A phase sets its rows and removes the one that would contradict it, so no stale condition survives
//! to contradict the current one; conditions of other types (Verified) are left alone.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// An enum of names as Kubernetes writes them: each variant is its own name.
macro_rules! names {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$doc:meta])* $variant:ident,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$doc])* $variant,)* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant),)* }
            }
        }

        /// A condition's field read back from the API server, compared with the name it should hold.
        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                self == other.as_str()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// The types of the conditions this operator writes.
    pub enum Type {
        Progressing,
        Ready,
        Failed,
        /// With `spec.verify`: whether the stored snapshot read back sound.
        Verified,
        /// A backup being deleted whose snapshot S3 Object Lock keeps, saying until when.
        SnapshotLocked,
        /// A schedule: two scheduled runs passed without a successful backup.
        Stale,
        /// A schedule: whether the bucket of its backups accepts uploads.
        StorageReady,
        /// A stored backup holding far fewer Kubernetes objects than the newest good backup of its
        /// control plane before it: True, with both counts.
        ObjectsDropped,
    }
}

names! {
    /// The reasons of the conditions this operator writes.
    pub enum Reason {
        BackupInProgress,
        BackupCompleted,
        BackupSucceeded,
        BackupFailed,
        SnapshotVerified,
        VerificationFailed,
        ObjectLockActive,
        RestoreInProgress,
        RestoreCompleted,
        RestoreSucceeded,
        RestoreFailed,
        /// Failed because etcd runs on the node: restoring over a live etcd is never done.
        RestoreRefused,
        ScheduleActive,
        SchedulePaused,
        InvalidSchedule,
        /// `Stale` True.
        NoRecentBackup,
        /// `Stale` False.
        RecentBackup,
        StorageReachable,
        StorageUnreachable,
        /// `ObjectsDropped` True.
        FewerObjects,
    }
}

pub const PROGRESSING: Type = Type::Progressing;
pub const READY: Type = Type::Ready;
pub const FAILED: Type = Type::Failed;
pub const VERIFIED: Type = Type::Verified;
pub const SNAPSHOT_LOCKED: Type = Type::SnapshotLocked;
pub const STALE: Type = Type::Stale;
pub const STORAGE_READY: Type = Type::StorageReady;
pub const OBJECTS_DROPPED: Type = Type::ObjectsDropped;

pub const BACKUP_IN_PROGRESS: Reason = Reason::BackupInProgress;
pub const BACKUP_COMPLETED: Reason = Reason::BackupCompleted;
pub const BACKUP_SUCCEEDED: Reason = Reason::BackupSucceeded;
pub const BACKUP_FAILED: Reason = Reason::BackupFailed;
pub const SNAPSHOT_VERIFIED: Reason = Reason::SnapshotVerified;
pub const VERIFICATION_FAILED: Reason = Reason::VerificationFailed;
pub const OBJECT_LOCK_ACTIVE: Reason = Reason::ObjectLockActive;
pub const RESTORE_IN_PROGRESS: Reason = Reason::RestoreInProgress;
pub const RESTORE_COMPLETED: Reason = Reason::RestoreCompleted;
pub const RESTORE_SUCCEEDED: Reason = Reason::RestoreSucceeded;
pub const RESTORE_FAILED: Reason = Reason::RestoreFailed;
pub const RESTORE_REFUSED: Reason = Reason::RestoreRefused;
pub const SCHEDULE_ACTIVE: Reason = Reason::ScheduleActive;
pub const SCHEDULE_PAUSED: Reason = Reason::SchedulePaused;
pub const INVALID_SCHEDULE: Reason = Reason::InvalidSchedule;
pub const NO_RECENT_BACKUP: Reason = Reason::NoRecentBackup;
pub const RECENT_BACKUP: Reason = Reason::RecentBackup;
pub const STORAGE_REACHABLE: Reason = Reason::StorageReachable;
pub const STORAGE_UNREACHABLE: Reason = Reason::StorageUnreachable;
pub const FEWER_OBJECTS: Reason = Reason::FewerObjects;

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
        }
    }
}

/// Where a backup or a restore stands. `Failed` carries its reason (a restore has two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    InProgress,
    Succeeded,
    Failed(Reason),
}

/// The reasons a kind of resource gives its phases' conditions.
pub struct PhaseReasons {
    pub in_progress: Reason,
    pub completed: Reason,
    pub completed_message: &'static str,
    pub succeeded: Reason,
}

pub const BACKUP_REASONS: PhaseReasons = PhaseReasons {
    in_progress: BACKUP_IN_PROGRESS,
    completed: BACKUP_COMPLETED,
    completed_message: "Backup finished",
    succeeded: BACKUP_SUCCEEDED,
};

pub const RESTORE_REASONS: PhaseReasons = PhaseReasons {
    in_progress: RESTORE_IN_PROGRESS,
    completed: RESTORE_COMPLETED,
    completed_message: "Restore finished",
    succeeded: RESTORE_SUCCEEDED,
};

/// A list of conditions, changed one type at a time: setting one never touches another, and a
/// condition whose status stays keeps its lastTransitionTime.
pub struct Conditions<'a> {
    list: &'a mut Vec<Condition>,
    observed_generation: Option<i64>,
    now: Time,
}

impl<'a> Conditions<'a> {
    pub fn new(list: &'a mut Vec<Condition>, observed_generation: Option<i64>, now: Time) -> Self {
        Conditions { list, observed_generation, now }
    }

    /// Sets the condition of `type_`, replacing one of that type if there is one.
    pub fn set(&mut self, type_: Type, status: Status, reason: Reason, message: &str) -> &mut Self {
        let condition = condition(type_, status, reason, message, self.list, self.observed_generation, &self.now);
        match self.list.iter_mut().find(|c| c.type_ == type_.as_str()) {
            Some(existing) => *existing = condition,
            None => self.list.push(condition),
        }
        self
    }

    pub fn remove(&mut self, type_: Type) -> &mut Self {
        self.list.retain(|c| c.type_ != type_.as_str());
        self
    }

    /// The specification's rows for `phase` (below); the one of Ready and Failed that would contradict
    /// it is removed, any other condition (Verified) is left as it is. `message` goes on the condition
    /// that says most about the phase.
    pub fn set_phase(&mut self, phase: Phase, reasons: &PhaseReasons, message: &str) -> &mut Self {
        match phase {
            Phase::InProgress => {
                self.set(PROGRESSING, Status::True, reasons.in_progress, message).remove(READY).remove(FAILED)
            }
            Phase::Succeeded => self
                .set(PROGRESSING, Status::False, reasons.completed, reasons.completed_message)
                .set(READY, Status::True, reasons.succeeded, message)
                .remove(FAILED),
            Phase::Failed(reason) => self
                .set(PROGRESSING, Status::False, reasons.completed, reasons.completed_message)
                .set(FAILED, Status::True, reason, message)
                .remove(READY),
        }
    }
}

/// One condition. Its lastTransitionTime is taken from `existing` when the status there is the same.
fn condition(
    type_: Type,
    status: Status,
    reason: Reason,
    message: &str,
    existing: &[Condition],
    observed_generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = status.as_str();
    let last_transition_time = existing
        .iter()
        .find(|c| c.type_ == type_.as_str() && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.as_str().to_owned(),
        status: status.to_owned(),
        reason: reason.as_str().to_owned(),
        message: message.to_owned(),
        observed_generation,
        last_transition_time,
    }
}

/// Whether the condition of `type_` is True.
pub fn is_true(conditions: &[Condition], type_: Type) -> bool {
    conditions.iter().any(|c| c.type_ == type_.as_str() && c.status == Status::True.as_str())
}

/// Whether the condition of `type_` is False.
pub fn is_false(conditions: &[Condition], type_: Type) -> bool {
    conditions.iter().any(|c| c.type_ == type_.as_str() && c.status == Status::False.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn rows(list: &[Condition]) -> Vec<(String, String, String)> {
        list.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect()
    }

    fn row(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.to_owned(), b.to_owned(), c.to_owned())
    }

    #[test]
    fn each_phase_yields_exactly_the_table_rows() {
        let phase = |p: Phase| {
            let mut list = Vec::new();
            Conditions::new(&mut list, Some(1), at(0)).set_phase(p, &BACKUP_REASONS, "m");
            rows(&list)
        };
        assert_eq!(phase(Phase::InProgress), vec![row("Progressing", "True", "BackupInProgress")]);
        assert_eq!(
            phase(Phase::Succeeded),
            vec![row("Progressing", "False", "BackupCompleted"), row("Ready", "True", "BackupSucceeded")]
        );
        assert_eq!(
            phase(Phase::Failed(BACKUP_FAILED)),
            vec![row("Progressing", "False", "BackupCompleted"), row("Failed", "True", "BackupFailed")]
        );
    }

    #[test]
    fn a_phase_leaves_other_conditions_and_drops_the_contradicting_one() {
        let mut list = Vec::new();
        Conditions::new(&mut list, Some(1), at(0)).set_phase(Phase::Succeeded, &BACKUP_REASONS, "ok").set(
            VERIFIED,
            Status::True,
            SNAPSHOT_VERIFIED,
            "read back",
        );
        Conditions::new(&mut list, Some(2), at(5)).set_phase(Phase::Failed(BACKUP_FAILED), &BACKUP_REASONS, "bad");
        assert_eq!(
            rows(&list),
            vec![
                row("Progressing", "False", "BackupCompleted"),
                row("Verified", "True", "SnapshotVerified"),
                row("Failed", "True", "BackupFailed"),
            ]
        );
        assert!(is_false(&list, PROGRESSING) && !is_true(&list, READY));
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut list = Vec::new();
        Conditions::new(&mut list, Some(1), at(10)).set_phase(Phase::InProgress, &BACKUP_REASONS, "attempt 1");
        Conditions::new(&mut list, Some(1), at(20)).set_phase(Phase::InProgress, &BACKUP_REASONS, "attempt 2");
        assert_eq!(list[0].last_transition_time, at(10));
        assert_eq!(list[0].message, "attempt 2");
        Conditions::new(&mut list, Some(1), at(30)).set_phase(Phase::Succeeded, &BACKUP_REASONS, "ok");
        assert_eq!(list[0].last_transition_time, at(30));
        assert!(is_true(&list, READY));
        assert!(!is_true(&list, FAILED));
        assert!(!is_true(&list, PROGRESSING));
    }
}
