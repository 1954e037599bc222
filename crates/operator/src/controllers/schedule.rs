//! The TalosEtcdBackupSchedule controller: thin. What is due, what retention keeps and when the
//! schedule goes stale are teb-schedule's pure functions; this reads the schedule and its backups,
//! creates and deletes TalosEtcdBackups, and writes the status.
//!
//! A run creates the backup `<schedule>-<UTC yyyymmddhhmmss of the scheduled time>`: a name fixed by
//! the time, so that a run repeated after a crash (the backup created, the status not yet written)
//! finds its backup instead of creating a second one. Backups carry the schedule's name as a label and
//! its UID as an annotation, never an owner reference: no cascade deleting the schedule reaches them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use teb_api::conditions::{self, Conditions, FAILED, OBJECTS_DROPPED, READY, Reason, STALE, Status};
use teb_api::{
    ConcurrencyPolicy, DeletionPolicy, IMPORTED_LABEL, SCHEDULE_LABEL, SCHEDULE_UID_ANNOTATION,
    SCHEDULED_AT_ANNOTATION, TalosEtcdBackup, TalosEtcdBackupSchedule, TalosEtcdBackupScheduleStatus,
};
use teb_schedule::{Candidate, Due, Policy, Schedule, State};

use super::{Context, patch_status};
use crate::metrics::{RunLabels, RunOutcome};
use crate::resolve::{self, Resolver};
use crate::{Error, finalizer};
use teb_core::catalog;

/// Successful backups kept when `retention` is unset (as upstream).
const DEFAULT_RETENTION: i32 = 5;
/// Failed backups kept when `failedBackupsHistoryLimit` is unset.
const DEFAULT_FAILED_LIMIT: i32 = 3;
/// How often the bucket is checked while it works, and after it did not.
const STORAGE_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
const STORAGE_RECHECK_INTERVAL: Duration = Duration::from_secs(300);
/// Label values are at most 63 characters, and every backup carries the schedule's name in one.
const MAX_NAME: usize = 63;

/// What a reconcile of a schedule does, decided from the object and the time alone ([`decide`]).
#[derive(Debug)]
enum Step {
    /// Being deleted: nothing to do (its backups stay).
    Deleted,
    /// The spec cannot run: say why.
    Invalid(String),
    /// Paused: no run, whatever is due.
    Paused(Schedule),
    /// Act on what is due: nothing yet, a run, or a run missed past `startingDeadlineSeconds`.
    Active(Schedule, Due),
}

fn decide(schedule: &TalosEtcdBackupSchedule, now: Timestamp) -> Step {
    if schedule.metadata.deletion_timestamp.is_some() {
        return Step::Deleted;
    }
    let parsed = match check(schedule) {
        Ok(parsed) => parsed,
        Err(message) => return Step::Invalid(message),
    };
    if schedule.spec.paused {
        return Step::Paused(parsed);
    }
    let created = schedule.creation_timestamp().map_or(now, |t| t.0);
    let status = schedule.status.clone().unwrap_or_default();
    let since = status.last_schedule_time.as_ref().map_or(created, |t| t.0);
    let deadline = schedule.spec.starting_deadline_seconds.map(|s| Duration::from_secs(s.max(0) as u64));
    let due = parsed.due(since, now, deadline);
    Step::Active(parsed, due)
}

pub(super) async fn reconcile(cached: Arc<TalosEtcdBackupSchedule>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let api = Api::<TalosEtcdBackupSchedule>::namespaced(ctx.client.clone(), &namespace);
    let backups = Api::<TalosEtcdBackup>::namespaced(ctx.client.clone(), &namespace);
    // A fresh read: the cache may not hold the lastScheduleTime just written, and acting on an older
    // one would run a scheduled time twice.
    let Some(schedule) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let uid = schedule.uid().unwrap_or_default();
    let labelled = backups.list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}"))).await?.items;
    release_owned(&backups, &uid, &labelled).await?;
    // Schedules of earlier versions held a finalizer to release their backups on deletion; with no owner
    // reference left there is nothing to wait for, and deleting a schedule never touches its backups.
    finalizer::set(&api, &schedule, false).await?;
    let now = Timestamp::now();
    let created = schedule.creation_timestamp().map_or(now, |t| t.0);
    let previous = schedule.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    status.observed_generation = schedule.metadata.generation;
    let generation = status.observed_generation;
    let (parsed, due) = match decide(&schedule, now) {
        Step::Deleted => return Ok(Action::await_change()),
        Step::Invalid(message) => return report_invalid(&api, &schedule, &ctx, &previous, status, message).await,
        Step::Paused(parsed) => (parsed, None),
        Step::Active(parsed, due) => (parsed, Some(due)),
    };
    let owned: Vec<TalosEtcdBackup> = labelled
        .into_iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none() && schedule_uid(b) == Some(uid.as_str()))
        .collect();
    let mut active: Vec<String> =
        owned.iter().filter(|b| state_of(b) == State::Running).map(|b| b.name_any()).collect();
    record_success(&mut status, &owned, schedule.spec.verify);
    if schedule.spec.import_existing
        && let Err(error) = import_existing(&backups, &schedule, &ctx).await
    {
        tracing::warn!(schedule = %name, %error, "cannot import the snapshots already in the bucket now");
    }
    let ready = if let Some(due) = due {
        take_due_run(&backups, &schedule, &ctx, due, &owned, &mut active, &mut status).await?;
        let last = status.last_schedule_time.as_ref().map_or(created, |t| t.0);
        status.next_schedule_time = parsed.next_after(last).map(Time);
        let next = status.next_schedule_time.as_ref().map(|t| t.0);
        (conditions::SCHEDULE_ACTIVE, next.map_or("No further runs".to_owned(), |t| format!("Next backup at {t}")))
    } else {
        status.next_schedule_time = None;
        (conditions::SCHEDULE_PAUSED, "Paused: no backups are created until spec.paused is false".to_owned())
    };
    active.sort();
    status.active_backups = active;
    let last_success = status.last_successful_backup_time.as_ref().map(|t| t.0);
    let (stale, stale_at) = staleness(&parsed, last_success, created, now);
    let (storage, next_check) = storage_condition(&schedule, &ctx, &previous, &mut status, now).await;
    let mut conditions = Conditions::new(&mut status.conditions, generation, super::now());
    conditions.set(READY, Status::True, ready.0, &ready.1).set(STALE, stale.0, stale.1, &stale.2).remove(FAILED);
    if let Some((state, reason, message)) = storage {
        conditions.set(conditions::STORAGE_READY, state, reason, &message);
    }
    prune(&backups, &schedule, &ctx, &parsed, &owned).await;
    if status != previous {
        patch_status(&api, &name, &status).await?;
    }
    // Wake for the next run, the moment the schedule would go stale, and the next storage check.
    let stale_at = stale_at.filter(|_| !schedule.spec.paused);
    let wake_at =
        [status.next_schedule_time.as_ref().map(|t| t.0), stale_at, Some(next_check)].into_iter().flatten().min();
    Ok(match wake_at {
        Some(at) => Action::requeue(Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default()),
        None => Action::await_change(),
    })
}

/// An invalid schedule: Ready False and Failed True saying why, an event, nothing scheduled.
async fn report_invalid(
    api: &Api<TalosEtcdBackupSchedule>,
    schedule: &TalosEtcdBackupSchedule,
    ctx: &Context,
    previous: &TalosEtcdBackupScheduleStatus,
    mut status: TalosEtcdBackupScheduleStatus,
    message: String,
) -> Result<Action, Error> {
    status.next_schedule_time = None;
    Conditions::new(&mut status.conditions, status.observed_generation, super::now())
        .set(READY, Status::False, conditions::INVALID_SCHEDULE, &message)
        .set(FAILED, Status::True, conditions::INVALID_SCHEDULE, &message)
        .remove(STALE)
        .remove(conditions::STORAGE_READY);
    if status != *previous {
        tracing::warn!(schedule = %schedule.name_any(), %message, "invalid schedule");
        ctx.event(schedule, EventType::Warning, conditions::INVALID_SCHEDULE.as_str(), message).await;
        patch_status(api, &schedule.name_any(), &status).await?;
    }
    Ok(Action::await_change())
}

/// Acts on the run `due` (a backup created, or a run too late skipped), and records it in
/// `lastScheduleTime`.
async fn take_due_run(
    backups: &Api<TalosEtcdBackup>,
    schedule: &TalosEtcdBackupSchedule,
    ctx: &Context,
    due: Due,
    owned: &[TalosEtcdBackup],
    active: &mut Vec<String>,
    status: &mut TalosEtcdBackupScheduleStatus,
) -> Result<(), Error> {
    match due {
        Due::NotYet => {}
        Due::Run(at) => {
            run(backups, schedule, ctx, at, owned, active).await?;
            status.last_schedule_time = Some(Time(at));
        }
        Due::Missed(at) => {
            let message = format!(
                "Skipped the run scheduled at {at}: more than startingDeadlineSeconds ({}) late",
                schedule.spec.starting_deadline_seconds.unwrap_or_default()
            );
            ctx.metrics.schedule_runs.get_or_create(&RunLabels { outcome: RunOutcome::missed }).inc();
            ctx.event(schedule, EventType::Warning, "MissedSchedule", message).await;
            status.last_schedule_time = Some(Time(at));
        }
    }
    Ok(())
}

/// The `Stale` condition (status, reason, message) and, while it is False, when it would turn True.
fn staleness(
    parsed: &Schedule,
    last_success: Option<Timestamp>,
    created: Timestamp,
    now: Timestamp,
) -> ((Status, Reason, String), Option<Timestamp>) {
    match parsed.stale_at(last_success.unwrap_or(created)) {
        Some(at) if at <= now => {
            let since =
                last_success.map_or_else(|| "since the schedule was created".to_owned(), |t| format!("since {t}"));
            let message = format!("No backup succeeded {since}: two scheduled runs passed without a successful backup");
            ((Status::True, conditions::NO_RECENT_BACKUP, message), None)
        }
        stale_at => {
            let message = last_success.map_or("No scheduled run has passed yet".to_owned(), |t| {
                format!("Newest successful backup completed at {t}")
            });
            ((Status::False, conditions::RECENT_BACKUP, message), stale_at)
        }
    }
}

/// The schedule parsed, and everything its backups will need checked, before anything runs.
fn check(schedule: &TalosEtcdBackupSchedule) -> Result<Schedule, String> {
    let name = schedule.name_any();
    if name.len() > MAX_NAME {
        return Err(format!(
            "the name {name:?} is {} characters long; a schedule's name must be at most {MAX_NAME} (its \
             backups carry it in the label {SCHEDULE_LABEL})",
            name.len()
        ));
    }
    let spec = &schedule.spec;
    let parsed = Schedule::parse(&spec.schedule, spec.time_zone.as_deref())
        .map_err(|e| format!("Invalid spec.schedule: {e}"))?;
    // As its backups will have it: with the schedule's `verify`.
    let mut template = spec.backup_template.spec.clone();
    template.verify |= spec.verify;
    resolve::validate_spec_at(&template, "spec.backupTemplate.spec.").map_err(|e| e.to_string())?;
    Ok(parsed)
}

/// The `StorageReady` condition (status, reason, message): the bucket checked ([`catalog::check_storage`])
/// when the spec changed, an hour after it last worked or 5 minutes after it last failed; else none,
/// and the previous one stands. Returns it with the time of the next check.
async fn storage_condition(
    schedule: &TalosEtcdBackupSchedule,
    ctx: &Context,
    previous: &TalosEtcdBackupScheduleStatus,
    status: &mut TalosEtcdBackupScheduleStatus,
    now: Timestamp,
) -> (Option<(Status, Reason, String)>, Timestamp) {
    let interval = |ok: bool| if ok { STORAGE_CHECK_INTERVAL } else { STORAGE_RECHECK_INTERVAL };
    let after = |t: Timestamp, ok: bool| t.checked_add(interval(ok)).unwrap_or(t);
    let old = previous.conditions.iter().find(|c| c.type_ == conditions::STORAGE_READY.as_str());
    if let (Some(old), Some(checked)) = (old, &previous.last_storage_check_time) {
        let next = after(checked.0, old.status == Status::True.as_str());
        if old.observed_generation == status.observed_generation && next > now {
            return (None, next);
        }
    }
    let template = &schedule.spec.backup_template.spec;
    let result = crate::isolate(async {
        let namespace = schedule.namespace().unwrap_or_default();
        let at = "spec.backupTemplate.spec.";
        let mut resolver = Resolver::new(&ctx.client, &namespace, ctx.config.settings.request_timeout);
        let storage = resolver.storage(&template.backup_storage, at).await?;
        Ok(catalog::check_storage(&storage, &template.talos_control_plane_ref.name).await?)
    })
    .await;
    status.last_storage_check_time = Some(Time(now));
    // `Bucket "my-etcd-backups"`, `Container "etcd" of account "acme"`.
    let place = template.backup_storage.describe();
    let place = format!("{}{}", place[..1].to_uppercase(), &place[1..]);
    let (state, reason, message) = match &result {
        Ok(()) => (Status::True, conditions::STORAGE_REACHABLE, format!("{place} accepted a test upload")),
        Err(error) => {
            (Status::False, conditions::STORAGE_UNREACHABLE, format!("{place} refused a test upload: {error}"))
        }
    };
    if result.is_err() && !conditions::is_false(&previous.conditions, conditions::STORAGE_READY) {
        tracing::warn!(schedule = %schedule.name_any(), %message, "storage check failed");
        ctx.event(schedule, EventType::Warning, "StorageCheckFailed", message.clone()).await;
    }
    (Some((state, reason, message)), after(now, result.is_ok()))
}

/// Creates the backup of the run scheduled `at`, unless it exists already (a run repeated after a
/// crash) or, under `Forbid`, another backup of the schedule is still running.
async fn run(
    backups: &Api<TalosEtcdBackup>,
    schedule: &TalosEtcdBackupSchedule,
    ctx: &Context,
    at: Timestamp,
    owned: &[TalosEtcdBackup],
    active: &mut Vec<String>,
) -> Result<(), Error> {
    let name = backup_name(&schedule.name_any(), at);
    if owned.iter().any(|b| b.name_any() == name) {
        return Ok(());
    }
    if schedule.spec.concurrency_policy == ConcurrencyPolicy::Forbid && !active.is_empty() {
        let message = format!(
            "Skipped the run scheduled at {at}: backup {} is still running (concurrencyPolicy: Forbid)",
            active.join(", ")
        );
        tracing::info!(schedule = %schedule.name_any(), %message);
        ctx.metrics.schedule_runs.get_or_create(&RunLabels { outcome: RunOutcome::skipped }).inc();
        ctx.event(schedule, EventType::Normal, "RunSkipped", message).await;
        return Ok(());
    }
    match backups.create(&PostParams::default(), &scheduled_backup(schedule, at, None)).await {
        Ok(_) => {}
        // Created by an earlier reconcile whose status write was lost.
        Err(kube::Error::Api(status)) if status.code == 409 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(schedule = %schedule.name_any(), backup = %name, %at, "scheduled backup created");
    ctx.metrics.schedule_runs.get_or_create(&RunLabels { outcome: RunOutcome::created }).inc();
    ctx.event(schedule, EventType::Normal, "BackupCreated", format!("Created TalosEtcdBackup {name} for {at}")).await;
    active.push(name);
    Ok(())
}

/// `importExisting`: a TalosEtcdBackup importing each snapshot under the schedule's prefix that no
/// backup in the namespace represents (as its `status.filename`, `attemptKey` or `spec.importKey`), labelled
/// imported and owned as the schedule's own. Its name comes from the snapshot's time (as a run's
/// does), so a snapshot is never imported twice, and retention orders it by that time.
async fn import_existing(
    backups: &Api<TalosEtcdBackup>,
    schedule: &TalosEtcdBackupSchedule,
    ctx: &Context,
) -> Result<(), Error> {
    let template = &schedule.spec.backup_template.spec;
    let namespace = schedule.namespace().unwrap_or_default();
    let snapshots = crate::isolate(async {
        let mut resolver = Resolver::new(&ctx.client, &namespace, ctx.config.settings.request_timeout);
        let storage = resolver.storage(&template.backup_storage, "spec.backupTemplate.spec.").await?;
        Ok(catalog::snapshot_keys(&storage, Some(&template.talos_control_plane_ref.name)).await?)
    })
    .await?;
    let all = backups.list(&ListParams::default()).await?.items;
    // A running attempt records its key before its upload starts: its snapshot is no orphan.
    let represented: std::collections::BTreeSet<&str> = all
        .iter()
        .flat_map(|b| {
            let status = b.status.as_ref();
            let recorded = [status.and_then(|s| s.filename.as_deref()), status.and_then(|s| s.attempt_key.as_deref())];
            recorded.into_iter().chain([b.spec.import_key.as_deref()])
        })
        .flatten()
        .collect();
    let mut imported = Vec::new();
    for (key, modified) in snapshots.iter().filter(|(key, _)| !represented.contains(key.as_str())) {
        let at = teb_core::backup::time_of_key(key).unwrap_or(*modified);
        let name = backup_name(&schedule.name_any(), at);
        match backups.create(&PostParams::default(), &scheduled_backup(schedule, at, Some(key))).await {
            Ok(_) => imported.push(format!("{name} ({key})")),
            // A backup of that name exists already: a run of the same second, or an import a lost
            // write did not record.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !imported.is_empty() {
        tracing::info!(schedule = %schedule.name_any(), count = imported.len(), "snapshots in the bucket imported");
        let message = format!("Imported {} snapshots found in the bucket: {}", imported.len(), imported.join(", "));
        ctx.event(schedule, EventType::Normal, "BackupsImported", message).await;
    }
    Ok(())
}

/// The TalosEtcdBackup of `schedule` for the time `at` ([`backup_name`]): its template, `Delete` by
/// default; importing the snapshot at `import_key` when given, and labelled imported then.
fn scheduled_backup(schedule: &TalosEtcdBackupSchedule, at: Timestamp, import_key: Option<&str>) -> TalosEtcdBackup {
    let mut spec = schedule.spec.backup_template.spec.clone();
    spec.deletion_policy.get_or_insert(DeletionPolicy::Delete);
    spec.verify |= schedule.spec.verify;
    spec.import_key = import_key.map(str::to_owned);
    let mut labels = BTreeMap::from([(SCHEDULE_LABEL.to_owned(), schedule.name_any())]);
    if import_key.is_some() {
        labels.insert(IMPORTED_LABEL.to_owned(), "true".to_owned());
    }
    TalosEtcdBackup {
        metadata: ObjectMeta {
            name: Some(backup_name(&schedule.name_any(), at)),
            namespace: schedule.namespace(),
            labels: Some(labels),
            // No owner reference: a cascade must never reach backups (see SCHEDULE_UID_ANNOTATION).
            annotations: Some(BTreeMap::from([
                (SCHEDULED_AT_ANNOTATION.to_owned(), at.to_string()),
                (SCHEDULE_UID_ANNOTATION.to_owned(), schedule.uid().unwrap_or_default()),
            ])),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// `<schedule>-<yyyymmddhhmmss>`, the scheduled time in UTC.
fn backup_name(schedule: &str, at: Timestamp) -> String {
    format!("{schedule}-{}", at.strftime("%Y%m%d%H%M%S"))
}

/// Deletes the backups retention no longer keeps; with their `Delete` policy the backup controller
/// deletes their snapshots too. Failures are logged and retried on the next reconcile.
async fn prune(
    backups: &Api<TalosEtcdBackup>,
    schedule: &TalosEtcdBackupSchedule,
    ctx: &Context,
    parsed: &Schedule,
    owned: &[TalosEtcdBackup],
) {
    let spec = &schedule.spec;
    let count = |n: Option<i32>, default: i32| n.unwrap_or(default).max(0) as usize;
    let policy = Policy {
        keep_last: count(spec.retention, DEFAULT_RETENTION),
        keep_hourly: count(spec.keep_hourly, 0),
        keep_daily: count(spec.keep_daily, 0),
        keep_weekly: count(spec.keep_weekly, 0),
        keep_monthly: count(spec.keep_monthly, 0),
        keep_failed: count(spec.failed_backups_history_limit, DEFAULT_FAILED_LIMIT),
        time_zone: parsed.time_zone().clone(),
    };
    let names: Vec<String> = owned.iter().map(|b| b.name_any()).collect();
    let candidates: Vec<Candidate> = owned
        .iter()
        .zip(&names)
        .map(|(backup, name)| Candidate { name, time: scheduled_time(backup), state: state_of(backup) })
        .collect();
    let doomed = teb_schedule::to_prune(&candidates, &policy);
    for name in &doomed {
        match backups.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                ctx.metrics.pruned.inc();
                tracing::info!(schedule = %schedule.name_any(), backup = %name, "pruned by retention");
            }
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => tracing::warn!(schedule = %schedule.name_any(), backup = %name, %error, "cannot prune"),
        }
    }
    if !doomed.is_empty() {
        let message = format!("Deleted by retention: {}", doomed.join(", "));
        ctx.event(schedule, EventType::Normal, "BackupsPruned", message).await;
    }
}

/// Keeps the newest successful backup's name and completion time (also when it has since been
/// deleted by hand, so the time never goes back). With `verified_only`, a backup counts once it read
/// back sound.
fn record_success(status: &mut TalosEtcdBackupScheduleStatus, owned: &[TalosEtcdBackup], verified_only: bool) {
    let newest = owned
        .iter()
        .filter(|b| matches!(state_of(b), State::Succeeded | State::Suspect))
        .filter(|b| !verified_only || b.status.as_ref().and_then(|s| s.verified) == Some(true))
        .filter_map(|b| Some((b.status.as_ref()?.completion_time.clone()?, b.name_any())))
        .max_by_key(|(t, _)| t.0);
    if let Some((time, name)) = newest
        && status.last_successful_backup_time.as_ref().is_none_or(|known| known.0 < time.0)
    {
        status.last_successful_backup_time = Some(time);
        status.last_successful_backup = Some(name);
    }
}

fn state_of(backup: &TalosEtcdBackup) -> State {
    let conditions: &[Condition] = backup.status.as_ref().map_or(&[], |s| &s.conditions);
    if conditions::is_true(conditions, READY) && conditions::is_true(conditions, OBJECTS_DROPPED) {
        State::Suspect
    } else if conditions::is_true(conditions, READY) {
        State::Succeeded
    } else if conditions::is_true(conditions, FAILED) {
        State::Failed
    } else {
        State::Running
    }
}

fn scheduled_time(backup: &TalosEtcdBackup) -> Timestamp {
    backup
        .annotations()
        .get(SCHEDULED_AT_ANNOTATION)
        .and_then(|t| t.parse().ok())
        .or_else(|| backup.creation_timestamp().map(|t| t.0))
        .unwrap_or_default()
}

/// The UID of the schedule that created `backup`: its annotation, or the controller owner reference
/// that schedules of earlier versions set.
fn schedule_uid(backup: &TalosEtcdBackup) -> Option<&str> {
    backup
        .annotations()
        .get(SCHEDULE_UID_ANNOTATION)
        .map(String::as_str)
        .or_else(|| backup.owner_references().iter().find(|o| o.controller == Some(true)).map(|o| o.uid.as_str()))
}

/// Backups created by schedules of earlier versions carry the schedule's owner reference, through
/// which a cascade (foreground or background deletion of the schedule, an Argo CD prune) would delete
/// them and, with `deletionPolicy: Delete`, their snapshots. The reference is swapped for the UID
/// annotation that backups carry today.
async fn release_owned(backups: &Api<TalosEtcdBackup>, uid: &str, labelled: &[TalosEtcdBackup]) -> Result<(), Error> {
    let owned = labelled
        .iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none() && b.owner_references().iter().any(|o| o.uid == uid));
    for backup in owned {
        let owners: Vec<_> = backup.owner_references().iter().filter(|o| o.uid != uid).cloned().collect();
        let patch = serde_json::json!({
            "metadata": {
                "ownerReferences": owners,
                "annotations": {SCHEDULE_UID_ANNOTATION: uid},
                "resourceVersion": backup.resource_version(),
            },
        });
        backups.patch(&backup.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
        tracing::info!(backup = %backup.name_any(), "released from its schedule's owner reference");
    }
    Ok(())
}

/// The schedule a backup event concerns, by the backup's label.
pub(super) fn schedule_of(backup: &TalosEtcdBackup) -> Option<ObjectRef<TalosEtcdBackupSchedule>> {
    let name = backup.labels().get(SCHEDULE_LABEL)?;
    Some(ObjectRef::new(name).within(&backup.namespace()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_turns_true_two_runs_after_the_last_success() {
        let parsed = Schedule::parse("@every 10s", None).unwrap();
        let created: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        let at = |s: i64| created + jiff::SignedDuration::from_secs(s);
        let ((state, reason, message), stale_at) = staleness(&parsed, None, created, at(1));
        assert_eq!(
            (state, reason, message.as_str()),
            (Status::False, conditions::RECENT_BACKUP, "No scheduled run has passed yet")
        );
        let stale_at = stale_at.expect("a time it goes stale");
        assert!(stale_at > at(20), "{stale_at}");
        let ((state, reason, message), wake) = staleness(&parsed, None, created, stale_at);
        assert_eq!((state, reason), (Status::True, conditions::NO_RECENT_BACKUP));
        assert!(message.contains("since the schedule was created"), "{message}");
        assert_eq!(wake, None);
        let ((state, _, message), _) = staleness(&parsed, Some(at(15)), created, stale_at);
        assert_eq!(state, Status::False);
        assert!(message.starts_with("Newest successful backup completed at"), "{message}");
    }

    /// A schedule created at `created` (seconds) on `@every 10s`, last run at `last`.
    fn schedule(created: i64, last: Option<i64>, yaml: &str) -> TalosEtcdBackupSchedule {
        let spec = format!(
            "schedule: '@every 10s'\nbackupTemplate:\n  spec:\n    talosControlPlaneRef: {{name: cp}}\n    \
             backupStorage: {{s3: {{bucket: my-backups, region: us-east-1}}}}\n{yaml}"
        );
        let mut schedule = TalosEtcdBackupSchedule::new("nightly", serde_yaml::from_str(&spec).unwrap());
        let at = |s: i64| Time(Timestamp::from_second(s).unwrap());
        schedule.metadata.creation_timestamp = Some(at(created));
        let status = TalosEtcdBackupScheduleStatus { last_schedule_time: last.map(at), ..Default::default() };
        schedule.status = Some(status);
        schedule
    }

    #[test]
    fn decide_covers_every_state() {
        let now = |s: i64| Timestamp::from_second(s).unwrap();
        let at = now;
        let step = |schedule: &TalosEtcdBackupSchedule, s: i64| match decide(schedule, now(s)) {
            Step::Active(_, due) => format!("{due:?}"),
            Step::Invalid(message) => format!("Invalid: {message}"),
            other => format!("{other:?}").split('(').next().unwrap_or_default().to_owned(),
        };
        // Not yet due, then due (the latest run since the last), then missed past the deadline.
        let fresh = schedule(1_000, None, "");
        assert_eq!(step(&fresh, 1_005), format!("{:?}", Due::NotYet));
        assert_eq!(step(&schedule(1_000, Some(1_010), ""), 1_025), format!("{:?}", Due::Run(at(1_020))));
        let late = schedule(1_000, Some(1_010), "startingDeadlineSeconds: 3\n");
        assert_eq!(step(&late, 1_025), format!("{:?}", Due::Missed(at(1_020))));
        // Paused, invalid and deleted come before anything due.
        assert_eq!(step(&schedule(1_000, None, "paused: true\n"), 5_000), "Paused");
        let mut invalid = schedule(1_000, None, "");
        invalid.spec.schedule = "not a schedule".into();
        assert!(matches!(decide(&invalid, now(5_000)), Step::Invalid(m) if m.starts_with("Invalid spec.schedule")));
        let mut deleted = invalid.clone();
        deleted.metadata.deletion_timestamp = Some(Time(now(5_000)));
        assert_eq!(step(&deleted, 5_000), "Deleted");
    }

    #[test]
    fn backup_names_carry_the_scheduled_time_in_utc() {
        let at: Timestamp = "2026-11-24T17:05:09.9Z".parse().unwrap();
        assert_eq!(backup_name("nightly", at), "nightly-20261124170509");
    }
}
