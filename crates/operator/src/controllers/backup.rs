//! The TalosEtcdBackup controller: thin. It reads the object, decides the next step from it alone
//! ([`decide`]), resolves what the step needs once ([`Resolver`]), runs the core's use case and
//! writes conditions and events. A backup runs once: Ready is final, and so is Failed
//! unless the spec changes.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use teb_api::conditions::{
    self, BACKUP_REASONS, Conditions, FAILED, FEWER_OBJECTS, OBJECTS_DROPPED, Phase, READY, Status,
};
use teb_api::{
    BackupContents, DeletionPolicy, RecoveryKitPolicy, ResourceObjects, TalosEtcdBackup, TalosEtcdBackupStatus,
    UploadRecord,
};
use teb_core::backup::{Attempt, Journal, Record, Recovered};
use teb_core::catalog::{self, Deletion};
use teb_core::{Outcome, backup as core_backup};
use teb_pipeline::{Format, UploadRef};

use super::{Context, now, patch_status};
use crate::Error;
use crate::finalizer;
use crate::metrics;
use crate::resolve::{self, Resolver};

/// What a reconcile of a backup does next, decided from the object alone ([`decide`]).
#[derive(Debug, PartialEq)]
enum Step {
    /// Being deleted: clean up what it leaves in the bucket, then let it go.
    CleanUp,
    /// Ready, or Failed for this generation: only what is left (the finalizer, aborts S3 refused, a
    /// verification asked for).
    Finished,
    /// An attempt failed for a passing reason; the next starts then.
    WaitUntil(Timestamp),
    /// Run the next attempt; `fresh` when a failed backup's spec changed, so it starts over.
    Attempt { fresh: bool },
}

fn decide(backup: &TalosEtcdBackup, now: Timestamp) -> Step {
    if backup.metadata.deletion_timestamp.is_some() {
        return Step::CleanUp;
    }
    let status = backup.status.clone().unwrap_or_default();
    let failed = conditions::is_true(&status.conditions, FAILED);
    let this_generation = status.observed_generation == backup.metadata.generation;
    if conditions::is_true(&status.conditions, READY) || (failed && this_generation) {
        return Step::Finished;
    }
    match status.next_attempt_time {
        Some(at) if !failed && at.0 > now => Step::WaitUntil(at.0),
        _ => Step::Attempt { fresh: failed },
    }
}

pub(super) async fn reconcile(cached: Arc<TalosEtcdBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api = Api::<TalosEtcdBackup>::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    // Decide from a fresh read, not the cache: our own status patches re-trigger reconciles, and the
    // cache may not yet hold the Ready status a just-finished run wrote. Running again would store a
    // second snapshot.
    let Some(backup) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    // What the step needs is resolved once, on first use: each Secret read once, one storage handle.
    let resolver =
        &mut Resolver::new(&ctx.client, &backup.namespace().unwrap_or_default(), ctx.config.settings.request_timeout);
    match decide(&backup, Timestamp::now()) {
        Step::CleanUp => clean_up(&api, &backup, &ctx, resolver).await,
        Step::Finished => finish(&api, &backup, &ctx, resolver).await,
        Step::WaitUntil(at) => {
            Ok(Action::requeue(Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default()))
        }
        Step::Attempt { .. } if let Some(key) = &backup.spec.import_key => {
            import(&api, &backup, &ctx, resolver, key).await
        }
        Step::Attempt { fresh } => attempt(&api, &backup, &ctx, resolver, fresh).await,
    }
}

/// A backup of a snapshot already in the bucket (`spec.importKey`, [`core_backup::import_stored`]):
/// Ready with what the object holds and the time it was taken, or Failed naming what is wrong with
/// it. Nothing is uploaded; deleting it takes the snapshot as `deletionPolicy` says.
async fn import(
    api: &Api<TalosEtcdBackup>,
    backup: &TalosEtcdBackup,
    ctx: &Context,
    resolver: &mut Resolver,
    key: &str,
) -> Result<Action, Error> {
    finalizer::set(api, backup, true).await?;
    let mut status = backup.status.clone().unwrap_or_default();
    status.observed_generation = backup.metadata.generation;
    status.next_attempt_time = None;
    status.start_time.get_or_insert_with(now);
    status.attempts += 1;
    let result = crate::isolate(async {
        resolve::validate_spec(&backup.spec)?;
        let storage = resolver.storage(&backup.spec.backup_storage, "spec.").await?;
        Ok(core_backup::import_stored(&storage, key, &ctx.config.settings).await?)
    })
    .await;
    match result {
        Ok(outcome) => succeed(api, backup, ctx, status, outcome).await,
        Err(error) => retry_or_fail(api, backup, ctx, status, error).await,
    }
}

/// A finished backup: an abort S3 could not take then is retried until it does, and `spec.verify`
/// set after the fact verifies it now.
async fn finish(
    api: &Api<TalosEtcdBackup>,
    backup: &TalosEtcdBackup,
    ctx: &Context,
    resolver: &mut Resolver,
) -> Result<Action, Error> {
    // The finalizer first: aborting may write the status, which changes the resourceVersion the
    // finalizer patch names. The status write re-triggers a reconcile that drops a finalizer no
    // longer needed.
    let mut status = backup.status.clone().unwrap_or_default();
    if conditions::is_true(&status.conditions, READY) {
        ctx.record_success_time(backup, &status);
    }
    finalizer::set(api, backup, needs_finalizer(backup, &status)).await?;
    abort_unfinished(api, backup, ctx, resolver, &mut status).await;
    if backup.spec.verify && status.verified.is_none() && conditions::is_true(&status.conditions, READY) {
        return verify_stored(api, backup, ctx, resolver, status).await;
    }
    Ok(ctx.after_finish(&status))
}

/// One attempt, run by the core ([`Attempt::run`]) with its record kept in the status
/// ([`StatusJournal`]), after recovering what an interrupted one left (its snapshot is adopted: then
/// the backup is Ready). A failure that may pass schedules the next attempt after a backoff
/// (`nextAttemptTime`, a requeue: no reconcile sleeps); the last, or one that will not pass, fails
/// the backup.
async fn attempt(
    api: &Api<TalosEtcdBackup>,
    backup: &TalosEtcdBackup,
    ctx: &Context,
    resolver: &mut Resolver,
    fresh: bool,
) -> Result<Action, Error> {
    // From here on an upload may start: deleting the backup must then abort it first.
    finalizer::set(api, backup, true).await?;
    let previous = backup.status.clone().unwrap_or_default();
    let mut status = if fresh {
        TalosEtcdBackupStatus { unfinished_uploads: previous.unfinished_uploads, ..Default::default() }
    } else {
        previous
    };
    status.observed_generation = backup.metadata.generation;
    status.next_attempt_time = None;
    status.start_time.get_or_insert_with(now);
    if status.attempts == 0 {
        let message = format!("Backing up etcd of TalosControlPlane {:?}", backup.spec.talos_control_plane_ref.name);
        ctx.event(backup, EventType::Normal, "BackupStarted", message).await;
    }
    let journal = &mut StatusJournal::new(api, backup, ctx.config.max_attempts, status);
    let recovered = crate::isolate(async {
        let storage = resolver.storage(&backup.spec.backup_storage, "spec.").await?;
        Ok(core_backup::recover(&storage, backup.uid().as_deref(), journal).await?)
    })
    .await;
    let recovered = recovered.unwrap_or_else(|error| {
        tracing::warn!(name = %backup.name_any(), %error, "cannot recover what the last attempt left now");
        Recovered::default()
    });
    report_not_aborted(backup, ctx, &recovered.not_aborted).await;
    let key = core_backup::snapshot_key(
        &backup.spec.talos_control_plane_ref.name,
        Timestamp::now(),
        resolve::format_of(&backup.spec),
    );
    let running = metrics::Running::start(&ctx.metrics.in_progress);
    let result = crate::isolate(async {
        if let Some(hook) = &ctx.config.attempt_hook {
            hook(backup);
        }
        let plan = match resolver.backup_plan(&backup.spec, backup.uid(), ctx.config.cert_validity).await {
            Ok(plan) => plan,
            Err(error) => {
                journal.begin();
                return Err(error);
            }
        };
        let claim = |k: &str| ctx.keys_in_use.claim(k);
        let attempt = Attempt { plan: &plan, settings: &ctx.config.settings, claim: &claim, progress: &|_| {} };
        Ok(attempt.run(&key, recovered.interrupted, journal).await?)
    })
    .await;
    drop(running);
    let status = journal.status();
    match result {
        Ok(outcome) => succeed(api, backup, ctx, status, outcome).await,
        Err(error) => retry_or_fail(api, backup, ctx, status, error).await,
    }
}

/// After a failed attempt: the next one after a backoff when the failure may pass and attempts are
/// left, else the backup fails.
async fn retry_or_fail(
    api: &Api<TalosEtcdBackup>,
    backup: &TalosEtcdBackup,
    ctx: &Context,
    mut status: TalosEtcdBackupStatus,
    error: Error,
) -> Result<Action, Error> {
    let (namespace, name) = (backup.namespace().unwrap_or_default(), backup.name_any());
    ctx.metrics.errors.get_or_create(&metrics::ErrorLabels { kind: error.kind() }).inc();
    let (attempt, max) = (status.attempts, ctx.config.max_attempts.max(1) as i32);
    if error.is_transient() && attempt < max {
        let delay = backoff(ctx.config.retry_backoff, attempt);
        let message = format!("Attempt {attempt} of {max} failed: {error}; retrying in {}s", delay.as_secs());
        tracing::warn!(%namespace, %name, %error, attempt, "backup attempt failed; retrying");
        status.next_attempt_time = Some(Time(Timestamp::now() + delay));
        set_phase(&mut status, Phase::InProgress, message.clone());
        patch_status(api, &name, &status).await?;
        ctx.event(backup, EventType::Warning, "BackupAttemptFailed", message).await;
        return Ok(Action::requeue(delay));
    }
    let message = if attempt > 1 { format!("{error} (after {attempt} attempts)") } else { error.to_string() };
    tracing::warn!(%namespace, %name, %error, attempt, "backup failed");
    status.completion_time = Some(now());
    status.attempt_key = None;
    set_phase(&mut status, Phase::Failed(conditions::BACKUP_FAILED), message.clone());
    patch_status(api, &name, &status).await?;
    ctx.metrics.finished(metrics::BackupResult::failed, elapsed_seconds(&status));
    ctx.event(backup, EventType::Warning, "BackupFailed", message).await;
    Ok(ctx.after_finish(&status))
}

/// An attempt's [`Record`] kept in the backup's status (`attemptKey`, `unfinishedUploads`) and
/// written with the rest of it: what a crashed attempt's successor reads back.
struct StatusJournal<'a> {
    api: &'a Api<TalosEtcdBackup>,
    backup: &'a TalosEtcdBackup,
    max_attempts: u32,
    status: TalosEtcdBackupStatus,
    record: Record,
}

impl<'a> StatusJournal<'a> {
    fn new(
        api: &'a Api<TalosEtcdBackup>,
        backup: &'a TalosEtcdBackup,
        max_attempts: u32,
        status: TalosEtcdBackupStatus,
    ) -> Self {
        let record = Record { key: status.attempt_key.clone(), uploads: upload_refs(&status) };
        StatusJournal { api, backup, max_attempts, status, record }
    }

    /// The status with the record as it stands.
    fn status(&self) -> TalosEtcdBackupStatus {
        let mut status = self.status.clone();
        status.attempt_key = self.record.key.clone();
        status.unfinished_uploads = self
            .record
            .uploads
            .iter()
            .map(|u| UploadRecord { key: u.key.clone(), upload_id: u.upload_id.clone() })
            .collect();
        status
    }
}

impl Journal for StatusJournal<'_> {
    fn record(&mut self) -> &mut Record {
        &mut self.record
    }

    fn begin(&mut self) {
        self.status.attempts += 1;
        let (attempt, max) = (self.status.attempts, self.max_attempts.max(1));
        set_phase(&mut self.status, Phase::InProgress, format!("Backup attempt {attempt} of {max} in progress"));
        tracing::info!(name = %self.backup.name_any(), attempt, "backup attempt started");
    }

    async fn save(&mut self) -> Result<(), teb_core::Error> {
        let status = self.status();
        let written = patch_status(self.api, &self.backup.name_any(), &status).await;
        written.map_err(|e| teb_core::Error::Journal(e.to_string()))
    }
}

/// Removes what a backup leaves in the bucket when it is deleted (its unfinished uploads; its
/// snapshot too with `deletionPolicy: Delete`, unless [`kept_because`] says why not), then lets the
/// deletion finish. When S3 cannot be reached it retries, and an event says how to let the deletion
/// finish without it; in a namespace being deleted it lets go at once, so the namespace never hangs.
async fn clean_up(
    api: &Api<TalosEtcdBackup>,
    backup: &TalosEtcdBackup,
    ctx: &Context,
    resolver: &mut Resolver,
) -> Result<Action, Error> {
    if !finalizer::held(backup) {
        return Ok(Action::await_change());
    }
    let status = backup.status.clone().unwrap_or_default();
    let namespace_deleting = namespace_deleting(&ctx.client, &backup.namespace().unwrap_or_default()).await?;
    let snapshot = status.filename.as_deref().filter(|_| backup.spec.deletion_policy() == DeletionPolicy::Delete);
    let kept = snapshot.and_then(|key| Some((key, kept_because(backup, namespace_deleting)?)));
    let delete = snapshot.filter(|_| kept.is_none());
    let record = Record { key: status.attempt_key.clone(), uploads: upload_refs(&status) };
    let cleaned = crate::isolate(async {
        if record == Record::default() && delete.is_none() {
            return Ok(Deletion::Deleted);
        }
        let storage = resolver.storage(&backup.spec.backup_storage, "spec.").await?;
        Ok(catalog::remove_leftovers(&storage, &record, delete).await?)
    })
    .await;
    match cleaned {
        Ok(Deletion::Locked { until }) => wait_for_lock(api, backup, ctx, delete.unwrap_or_default(), until).await,
        Ok(Deletion::Deleted) => {
            if let Some(key) = delete {
                tracing::info!(name = %backup.name_any(), %key, "deleted the snapshot with its TalosEtcdBackup");
            }
            if let Some((key, because)) = kept {
                let message = format!(
                    "Kept the snapshot {key} in {} although deletionPolicy is Delete: {because}. Only \
                     deleting the TalosEtcdBackup itself (or retention) deletes a snapshot; delete it in the bucket \
                     if it is no longer wanted",
                    backup.spec.backup_storage.describe()
                );
                tracing::info!(name = %backup.name_any(), %key, %because, "kept the snapshot of a deleted TalosEtcdBackup");
                ctx.event(backup, EventType::Normal, "SnapshotKept", message).await;
            }
            finalizer::set(api, backup, false).await?;
            Ok(Action::await_change())
        }
        Err(error) if namespace_deleting => {
            // Its Secrets may be gone already: waiting for them would keep the namespace forever.
            tracing::warn!(name = %backup.name_any(), %error,
                "cannot clean up, and the namespace is being deleted: unfinished uploads are left to the bucket's lifecycle rule");
            finalizer::set(api, backup, false).await?;
            Ok(Action::await_change())
        }
        Err(error) => {
            let retry = ctx.config.abort_retry;
            let message = format!(
                "Cannot clean up before deletion: {error}; retrying every {}s. To delete this TalosEtcdBackup \
                 without it, remove the finalizer: kubectl patch talosetcdbackup {} -n {} --type=json \
                 -p '[{{\"op\":\"remove\",\"path\":\"/metadata/finalizers\"}}]'",
                retry.as_secs(),
                backup.name_any(),
                backup.namespace().unwrap_or_default()
            );
            tracing::warn!(name = %backup.name_any(), %error, "clean-up before deletion failed");
            ctx.event(backup, EventType::Warning, "CleanupFailed", message).await;
            Ok(Action::requeue(retry))
        }
    }
}

/// A snapshot to delete that S3 Object Lock keeps: the TalosEtcdBackup stays (its finalizer held)
/// until the lock expires, then goes with its snapshot. A `SnapshotLocked` condition and an event
/// say until when, and how to let it go sooner.
async fn wait_for_lock(
    api: &Api<TalosEtcdBackup>,
    backup: &TalosEtcdBackup,
    ctx: &Context,
    key: &str,
    until: Timestamp,
) -> Result<Action, Error> {
    let message = format!(
        "The snapshot {key} and its recovery kit in {} are locked by S3 Object Lock until {until}: they are deleted \
         then, and this TalosEtcdBackup with them. To let the TalosEtcdBackup go now and keep the snapshot, set \
         spec.deletionPolicy: Retain",
        backup.spec.backup_storage.describe()
    );
    let previous = backup.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    let generation = status.observed_generation;
    Conditions::new(&mut status.conditions, generation, now()).set(
        conditions::SNAPSHOT_LOCKED,
        Status::True,
        conditions::OBJECT_LOCK_ACTIVE,
        &message,
    );
    if status != previous {
        patch_status(api, &backup.name_any(), &status).await?;
        tracing::info!(name = %backup.name_any(), %key, %until, "the snapshot of a deleted TalosEtcdBackup is locked");
        ctx.event(backup, EventType::Normal, "SnapshotLocked", message).await;
    }
    // Checked again when the lock ends, and at least hourly (a spec change also wakes it).
    let left = Duration::try_from(until.duration_since(Timestamp::now())).unwrap_or_default();
    Ok(Action::requeue(left.min(Duration::from_secs(3600)) + Duration::from_secs(1)))
}

/// Why no recovery kit was stored with the backup, when one should have been: it holds the cluster's
/// secrets, so it is stored only sealed unless the spec says otherwise.
fn kit_missing_because(backup: &TalosEtcdBackup, outcome: &Outcome) -> Option<String> {
    let policy = backup.spec.recovery_kit.unwrap_or_default();
    if outcome.kit.is_some() || policy == RecoveryKitPolicy::Never {
        return None;
    }
    if backup.spec.encryption.is_none() && policy == RecoveryKitPolicy::Encrypted {
        return Some(
            "No recovery kit stored with this backup: it would hold the cluster's secrets, and the backup has no age \
             recipients to seal it to. Set spec.encryption.age.recipients to store it encrypted, or spec.recoveryKit: \
             Plaintext to store it unencrypted (as the upstream operator does), or spec.recoveryKit: Never"
                .to_owned(),
        );
    }
    Some(format!(
        "No recovery kit stored with this backup: TalosControlPlane {:?} has no status.secretBundle and \
         status.bundleConfig to keep",
        backup.spec.talos_control_plane_ref.name
    ))
}

/// Why the snapshot of a deleted `deletionPolicy: Delete` backup stays: a snapshot goes only when the
/// deletion was asked of the backup itself, by a user or by retention, never in a cascade. A backup
/// with an owner may be deleted by the garbage collector because its owner went; one in a namespace
/// being deleted goes with everything else there.
fn kept_because(backup: &TalosEtcdBackup, namespace_deleting: bool) -> Option<String> {
    if namespace_deleting {
        return Some(format!("its namespace {:?} is being deleted", backup.namespace().unwrap_or_default()));
    }
    let owner = backup.owner_references().first()?;
    Some(format!("it has an owner ({} {}), and deleting an owner never deletes snapshots", owner.kind, owner.name))
}

/// Whether `namespace` is being deleted (or is gone): read afresh, since the namespace controller
/// deletes its contents only after marking it.
async fn namespace_deleting(client: &kube::Client, namespace: &str) -> Result<bool, Error> {
    let namespaces = Api::<Namespace>::all(client.clone());
    Ok(namespaces.get_opt(namespace).await?.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some()))
}

/// Whether deleting a finished `backup` must wait for the operator: while an upload is unfinished, or
/// when the snapshot is to be deleted with it. A finished `Retain` backup needs nothing, so it can be
/// deleted with no operator running.
fn needs_finalizer(backup: &TalosEtcdBackup, status: &TalosEtcdBackupStatus) -> bool {
    !status.unfinished_uploads.is_empty() || backup.spec.deletion_policy() == DeletionPolicy::Delete
}

fn upload_refs(status: &TalosEtcdBackupStatus) -> Vec<UploadRef> {
    status.unfinished_uploads.iter().map(|u| UploadRef::recorded(u.key.clone(), u.upload_id.clone())).collect()
}

/// Aborts the uploads `status` records as unfinished (the core's [`recover`](core_backup::recover)
/// of a finished backup) and writes the status when that changed it. Those S3 could not abort stay
/// recorded (and get an event) for the next try.
async fn abort_unfinished(
    api: &Api<TalosEtcdBackup>,
    backup: &TalosEtcdBackup,
    ctx: &Context,
    resolver: &mut Resolver,
    status: &mut TalosEtcdBackupStatus,
) {
    if status.unfinished_uploads.is_empty() {
        return;
    }
    let journal = &mut StatusJournal::new(api, backup, ctx.config.max_attempts, status.clone());
    let recovered = crate::isolate(async {
        let storage = resolver.storage(&backup.spec.backup_storage, "spec.").await?;
        Ok(core_backup::recover(&storage, None, journal).await?)
    })
    .await;
    match recovered {
        Ok(recovered) => report_not_aborted(backup, ctx, &recovered.not_aborted).await,
        Err(error) => tracing::warn!(name = %backup.name_any(), %error, "cannot abort unfinished uploads now"),
    }
    *status = journal.status();
}

/// An event for each recorded upload the store would not abort.
async fn report_not_aborted(backup: &TalosEtcdBackup, ctx: &Context, left: &[(UploadRef, teb_core::Error)]) {
    for (upload, error) in left {
        let message = format!(
            "Cannot abort the unfinished multipart upload of {} ({error}); retrying every {}s",
            upload.key,
            ctx.config.abort_retry.as_secs()
        );
        tracing::warn!(name = %backup.name_any(), key = %upload.key, %error, "abort failed");
        ctx.event(backup, EventType::Warning, "UploadAbortFailed", message).await;
    }
}

/// Records a stored snapshot: Ready, with its key, size, SHA-256 and node.
async fn succeed(
    api: &Api<TalosEtcdBackup>,
    backup: &TalosEtcdBackup,
    ctx: &Context,
    mut status: TalosEtcdBackupStatus,
    outcome: Outcome,
) -> Result<Action, Error> {
    let report = &outcome.report;
    status.filename = Some(report.key.clone());
    status.state_filename = outcome.kit.clone();
    status.report_filename = outcome.report_key.clone();
    status.manifest_filename = outcome.manifest_key.clone();
    status.contents = outcome.contents.as_ref().ok().map(contents_summary);
    status.size = report.size.map(|size| size as i64);
    status.stored_size = Some(report.stored_size as i64);
    status.sha256 = report.sha256.clone();
    status.encoding = Some(outcome.format.name().to_owned());
    status.recipient_fingerprints = outcome.fingerprints.clone();
    status.node = Some(outcome.node.clone());
    // An imported snapshot keeps the time it was taken.
    status.completion_time = Some(outcome.taken_at.map_or_else(now, Time));
    status.attempt_key = None;
    let size = match report.size {
        Some(size) if outcome.format != Format::default() => {
            format!("{size} bytes ({} stored, {})", report.stored_size, outcome.format.name())
        }
        Some(size) => format!("{size} bytes"),
        None if backup.spec.import_key.is_some() => format!("{} bytes ({})", report.stored_size, outcome.format.name()),
        None => format!("{} bytes ({}; stored by an earlier attempt)", report.stored_size, outcome.format.name()),
    };
    let holding = match &outcome.contents {
        Ok(c) => format!(", holding {} Kubernetes objects in {} keys at revision {}", c.objects, c.keys, c.revision),
        Err(_) => String::new(),
    };
    let message = match &outcome.taken_at {
        Some(taken) => format!(
            "Imported the snapshot of {size} taken at {taken} from node {} in {} at {}{holding}",
            outcome.node,
            backup.spec.backup_storage.describe(),
            report.key,
        ),
        None => format!(
            "Snapshot of {size} from node {} stored in {} at {} ({:.1} s){holding}",
            outcome.node,
            backup.spec.backup_storage.describe(),
            report.key,
            report.duration.as_secs_f64()
        ),
    };
    set_phase(&mut status, Phase::Succeeded, message.clone());
    let dropped = match &status.contents {
        Some(contents) => objects_dropped(api, backup, ctx, contents).await,
        None => None,
    };
    if let Some(dropped) = &dropped {
        let generation = status.observed_generation;
        let conditions = &mut status.conditions;
        Conditions::new(conditions, generation, now()).set(OBJECTS_DROPPED, Status::True, FEWER_OBJECTS, dropped);
    }
    patch_status(api, &backup.name_any(), &status).await?;
    ctx.metrics.finished(metrics::BackupResult::succeeded, elapsed_seconds(&status));
    ctx.metrics.stored_bytes.inc_by(report.stored_size);
    ctx.record_success_time(backup, &status);
    if let Some(contents) = &status.contents {
        let namespace = backup.namespace().unwrap_or_default();
        ctx.metrics.contents(&namespace, &backup.spec.talos_control_plane_ref.name, contents.objects, contents.keys);
    }
    tracing::info!(name = %backup.name_any(), key = %report.key, stored = report.stored_size, "backup succeeded");
    if let Err(because) = &outcome.contents {
        let message = format!("The backup is stored, but what it holds was not counted: {because}");
        ctx.event(backup, EventType::Warning, "ContentsNotCounted", message).await;
    }
    if let Some(dropped) = dropped {
        let namespace = backup.namespace().unwrap_or_default();
        ctx.metrics.objects_dropped(&namespace, &backup.spec.talos_control_plane_ref.name);
        ctx.event(backup, EventType::Warning, "ObjectsDropped", dropped).await;
    }
    if let Some(because) = kit_missing_because(backup, &outcome) {
        ctx.event(backup, EventType::Warning, "RecoveryKitNotStored", because).await;
    }
    if let Some(because) = outcome.unchecked_because {
        ctx.event(backup, EventType::Warning, "NodeHealthUnchecked", because).await;
    }
    ctx.event(backup, EventType::Normal, "BackupSucceeded", message).await;
    Ok(Action::await_change())
}

/// Why this backup looks emptied, when it holds fewer objects than `--min-objects-percent` of the
/// newest good backup of its control plane (Ready, counted, not itself flagged). A list that fails
/// only loses the check, never the backup.
async fn objects_dropped(
    api: &Api<TalosEtcdBackup>,
    backup: &TalosEtcdBackup,
    ctx: &Context,
    contents: &BackupContents,
) -> Option<String> {
    let percent = i64::from(ctx.config.min_objects_percent);
    if percent == 0 {
        return None;
    }
    let listed = api.list(&kube::api::ListParams::default()).await;
    let listed = listed.inspect_err(|e| tracing::warn!(error = %e, "cannot compare the backup's contents")).ok()?;
    let controlplane = &backup.spec.talos_control_plane_ref.name;
    let (_, objects, good) = listed
        .items
        .iter()
        .filter(|b| b.spec.talos_control_plane_ref.name == *controlplane && b.name_any() != backup.name_any())
        .filter_map(|b| {
            let status = b.status.as_ref()?;
            let good = conditions::is_true(&status.conditions, READY)
                && !conditions::is_true(&status.conditions, OBJECTS_DROPPED);
            good.then_some((status.completion_time.clone()?.0, status.contents.as_ref()?.objects, b.name_any()))
        })
        .max_by_key(|(time, _, _)| *time)?;
    (contents.objects * 100 < objects * percent).then(|| {
        format!(
            "This backup holds {} Kubernetes objects, fewer than {percent}% of the {objects} in {good}, the newest good \
             backup of {controlplane}: was etcd wiped or were objects deleted? A schedule's retention keeps {good}",
            contents.objects
        )
    })
}

/// The status's summary of a content report: the counts and the five largest resources.
fn contents_summary(report: &teb_core::report::ContentReport) -> BackupContents {
    let largest = report.resources.iter().take(5);
    BackupContents {
        revision: report.revision,
        keys: report.keys as i64,
        bytes: report.bytes as i64,
        objects: report.objects as i64,
        largest_resources: largest
            .map(|r| ResourceObjects { resource: r.resource.clone(), objects: r.objects as i64 })
            .collect(),
    }
}

/// Reads the stored snapshot back and checks it (`spec.verify`): `Verified` True, or False with what
/// is wrong. A read that failed for a passing reason (S3 unreachable) is tried again later.
async fn verify_stored(
    api: &Api<TalosEtcdBackup>,
    backup: &TalosEtcdBackup,
    ctx: &Context,
    resolver: &mut Resolver,
    mut status: TalosEtcdBackupStatus,
) -> Result<Action, Error> {
    let Some(key) = status.filename.clone() else {
        return Ok(Action::await_change());
    };
    let result = crate::isolate(async {
        let storage = resolver.storage(&backup.spec.backup_storage, "spec.").await?;
        let age = backup.spec.encryption.as_ref().and_then(|e| e.age.identity_secret_ref.as_ref());
        let identities = match age {
            Some(reference) => resolver.identities(reference).await?,
            None => Vec::new(),
        };
        Ok(catalog::verify_backup(&storage, &key, &identities, &ctx.config.settings, &|_| {}).await?)
    })
    .await;
    let outcome = match result {
        Ok((verified, _)) if status.sha256.as_ref().is_some_and(|sha| *sha != verified.snapshot.sha256) => {
            Err(format!(
                "the object at {key} has SHA-256 {}, not the {} recorded when it was stored: it was replaced",
                verified.snapshot.sha256,
                status.sha256.as_deref().unwrap_or("-")
            ))
        }
        Ok((verified, kit)) => {
            let (checked, contents) = (&verified.snapshot, &verified.contents);
            // Known now if a crash left them unknown (an encoded object recorded after a restart).
            status.sha256.get_or_insert_with(|| checked.sha256.clone());
            status.size.get_or_insert(checked.size as i64);
            let kit = kit.map(|k| format!("; its recovery kit {k} opens and belongs to the same cluster"));
            Ok(format!(
                "Read back {} bytes of {key}: the SHA-256 trailer matches, the bbolt meta pages, size ({} pages of {} \
                 bytes) and {} page headers are sound, its key bucket's tree holds {} keys ({} Kubernetes objects) at \
                 revision {}{}",
                checked.size,
                checked.db.pages,
                checked.db.page_size,
                checked.db.pages_checked,
                contents.keys,
                contents.objects,
                contents.revision,
                kit.unwrap_or_default()
            ))
        }
        Err(error) if error.is_transient() => {
            tracing::warn!(name = %backup.name_any(), %error, "cannot read the snapshot back now; will retry");
            return Ok(Action::requeue(ctx.config.retry_backoff));
        }
        Err(error) => Err(error.to_string()),
    };
    let (state, reason, message) = match &outcome {
        Ok(message) => (Status::True, conditions::SNAPSHOT_VERIFIED, message.clone()),
        Err(message) => (Status::False, conditions::VERIFICATION_FAILED, message.clone()),
    };
    status.verified = Some(outcome.is_ok());
    status.verified_at = Some(now());
    let generation = status.observed_generation;
    Conditions::new(&mut status.conditions, generation, now()).set(conditions::VERIFIED, state, reason, &message);
    patch_status(api, &backup.name_any(), &status).await?;
    let result = if outcome.is_ok() { metrics::VerifyResult::passed } else { metrics::VerifyResult::failed };
    ctx.metrics.verifications.get_or_create(&metrics::VerifyLabels { result }).inc();
    match outcome {
        Ok(_) => ctx.event(backup, EventType::Normal, "BackupVerified", message).await,
        Err(_) => {
            tracing::warn!(name = %backup.name_any(), %message, "the stored snapshot failed verification");
            ctx.event(backup, EventType::Warning, conditions::VERIFICATION_FAILED.as_str(), message).await;
        }
    }
    Ok(ctx.after_finish(&status))
}

fn set_phase(status: &mut TalosEtcdBackupStatus, phase: Phase, message: String) {
    let generation = status.observed_generation;
    Conditions::new(&mut status.conditions, generation, now()).set_phase(phase, &BACKUP_REASONS, &message);
}

/// From the first attempt's start to the completion.
fn elapsed_seconds(status: &TalosEtcdBackupStatus) -> f64 {
    match (&status.start_time, &status.completion_time) {
        (Some(start), Some(end)) => end.0.duration_since(start.0).as_secs_f64().max(0.0),
        _ => 0.0,
    }
}

impl Context {
    fn record_success_time(&self, backup: &TalosEtcdBackup, status: &TalosEtcdBackupStatus) {
        if let Some(done) = &status.completion_time {
            let namespace = backup.namespace().unwrap_or_default();
            let seconds = done.0.as_millisecond() as f64 / 1000.0;
            self.metrics.succeeded_at(&namespace, &backup.spec.talos_control_plane_ref.name, seconds);
        }
    }

    /// What a finished backup waits for: nothing, or the next try at aborting what S3 could not abort.
    fn after_finish(&self, status: &TalosEtcdBackupStatus) -> Action {
        if status.unfinished_uploads.is_empty() {
            Action::await_change()
        } else {
            Action::requeue(self.config.abort_retry)
        }
    }
}

fn backoff(base: Duration, attempt: i32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1) as u32);
    base.saturating_mul(factor).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(owners: &[(&str, &str)]) -> TalosEtcdBackup {
        let spec = serde_json::json!({
            "talosControlPlaneRef": {"name": "cp"},
            "backupStorage": {"s3": {"bucket": "b", "region": "us-east-1"}},
            "deletionPolicy": "Delete",
        });
        let mut backup = TalosEtcdBackup::new("b", serde_json::from_value(spec).unwrap());
        backup.metadata.namespace = Some("ns".into());
        let owners = owners.iter().map(|(kind, name)| {
            serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": kind, "name": name, "uid": "u"}))
                .unwrap()
        });
        backup.metadata.owner_references = Some(owners.collect());
        backup
    }

    /// A backup of generation `generation` whose status describes `observed`, in `phase`.
    fn in_phase(phase: Option<Phase>, generation: i64, observed: i64, next_attempt: Option<i64>) -> TalosEtcdBackup {
        let mut backup = backup(&[]);
        backup.metadata.generation = Some(generation);
        let mut status = TalosEtcdBackupStatus { observed_generation: Some(observed), ..Default::default() };
        status.next_attempt_time = next_attempt.map(|s| Time(Timestamp::from_second(s).unwrap()));
        if let Some(phase) = phase {
            Conditions::new(&mut status.conditions, Some(observed), Time(Timestamp::UNIX_EPOCH)).set_phase(
                phase,
                &BACKUP_REASONS,
                "m",
            );
        }
        backup.status = Some(status);
        backup
    }

    #[test]
    fn decide_covers_every_state() {
        let now = Timestamp::from_second(1_000).unwrap();
        let decide = |b: &TalosEtcdBackup| decide(b, now);
        let failed = Some(Phase::Failed(conditions::BACKUP_FAILED));
        let attempt = Step::Attempt { fresh: false };
        // New, and cut off mid-attempt (a crash): an attempt, which first looks for what the last stored.
        assert_eq!(decide(&in_phase(None, 1, 1, None)), attempt);
        assert_eq!(decide(&in_phase(Some(Phase::InProgress), 1, 1, None)), attempt);
        // A transient failure: wait out the backoff, then the next attempt.
        let waiting = in_phase(Some(Phase::InProgress), 1, 1, Some(1_010));
        assert_eq!(decide(&waiting), Step::WaitUntil(Timestamp::from_second(1_010).unwrap()));
        assert_eq!(decide(&in_phase(Some(Phase::InProgress), 1, 1, Some(1_000))), attempt);
        // Ready is final whatever the generation; Failed only for the generation it describes.
        assert_eq!(decide(&in_phase(Some(Phase::Succeeded), 2, 1, None)), Step::Finished);
        assert_eq!(decide(&in_phase(failed, 1, 1, None)), Step::Finished);
        assert_eq!(decide(&in_phase(failed, 2, 1, None)), Step::Attempt { fresh: true });
        assert_eq!(decide(&in_phase(failed, 2, 1, Some(2_000))), Step::Attempt { fresh: true });
        // Deletion comes first, in any state.
        for mut backup in [in_phase(None, 1, 1, None), in_phase(Some(Phase::Succeeded), 1, 1, None), waiting] {
            backup.metadata.deletion_timestamp = Some(Time(now));
            assert_eq!(decide(&backup), Step::CleanUp);
        }
    }

    #[test]
    fn only_a_deletion_asked_of_the_backup_itself_takes_its_snapshot() {
        assert_eq!(kept_because(&backup(&[]), false), None);
        let because = kept_because(&backup(&[]), true).unwrap();
        assert_eq!(because, "its namespace \"ns\" is being deleted");
        let because = kept_because(&backup(&[("TalosEtcdBackupSchedule", "nightly")]), false).unwrap();
        assert!(because.starts_with("it has an owner (TalosEtcdBackupSchedule nightly)"), "{because}");
        assert!(kept_because(&backup(&[("ConfigMap", "x")]), true).unwrap().contains("namespace"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff(base, 1), Duration::from_secs(10));
        assert_eq!(backoff(base, 3), Duration::from_secs(40));
        assert_eq!(backoff(base, 30), Duration::from_secs(300));
    }
}
