//! The TalosEtcdBackup controller: thin. It reads the object, resolves what it names, runs the
//! backup job and writes conditions and events. A backup runs once: Ready is final, and so is Failed
//! unless the spec changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use teb_api::conditions::{self, FAILED, Phase, READY};
use teb_api::{TalosEtcdBackup, TalosEtcdBackupStatus};

use crate::job::{self, Settings};
use crate::{Error, resolve};

/// Field manager of the status this controller writes.
pub const MANAGER: &str = "talos-etcd-backup";

/// Called at the start of each backup attempt, before anything else; tests use it to inject faults.
pub type AttemptHook = Arc<dyn Fn(&TalosEtcdBackup) + Send + Sync>;

/// How the controller runs backups.
#[derive(Clone)]
pub struct Config {
    pub settings: Settings,
    /// Attempts per backup for transient failures (network, throttling, a broken stream).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one, capped at five minutes.
    pub retry_backoff: Duration,
    /// Backups running at once, across all namespaces.
    pub concurrency: u16,
    /// Lifetime of the Talos client certificates minted from a control plane's secrets bundle.
    pub cert_validity: Duration,
    pub attempt_hook: Option<AttemptHook>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            settings: Settings::default(),
            max_attempts: 3,
            retry_backoff: Duration::from_secs(10),
            concurrency: 4,
            cert_validity: Duration::from_secs(3600),
            attempt_hook: None,
        }
    }
}

struct Context {
    client: Client,
    recorder: Recorder,
    config: Config,
}

/// Runs the controller until SIGTERM/SIGINT, for every namespace or only `namespace`. `ready` turns
/// true once the CRD has answered.
pub async fn run(
    client: Client,
    config: Config,
    namespace: Option<&str>,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let backups = match namespace {
        Some(ns) => Api::<TalosEtcdBackup>::namespaced(client.clone(), ns),
        None => Api::<TalosEtcdBackup>::all(client.clone()),
    };
    backups.list(&ListParams::default().limit(1)).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot list TalosEtcdBackups ({e}); is the CRD installed (`talos-etcd-backup crds | kubectl apply -f -`) \
             and does the operator's RBAC (deploy/rbac.yaml) apply to it?"
        )
    })?;
    ready.store(true, Ordering::SeqCst);
    let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let context =
        Arc::new(Context { recorder: Recorder::new(client.clone(), reporter), client, config: config.clone() });
    tracing::info!(concurrency = config.concurrency, "controller started");
    Controller::new(backups, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(config.concurrency))
        .shutdown_on_signal()
        .run(|backup, ctx| crate::isolate(reconcile(backup, ctx)), error_policy, context)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    Ok(())
}

fn error_policy(_backup: Arc<TalosEtcdBackup>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "will retry");
    Action::requeue(Duration::from_secs(15))
}

async fn reconcile(cached: Arc<TalosEtcdBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let api = Api::<TalosEtcdBackup>::namespaced(ctx.client.clone(), &namespace);
    // Decide from a fresh read, not the cache: our own status patches re-trigger reconciles, and the
    // cache may not yet hold the Ready status a just-finished run wrote. Running again would store a
    // second snapshot.
    let Some(backup) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let previous = backup.status.clone().unwrap_or_default();
    let generation = backup.metadata.generation;
    let done = conditions::is_true(&previous.conditions, READY)
        || (conditions::is_true(&previous.conditions, FAILED) && previous.observed_generation == generation);
    if done {
        return Ok(Action::await_change());
    }
    // A failed backup whose spec changed starts over; an interrupted one resumes its attempt count.
    let mut status =
        if conditions::is_true(&previous.conditions, FAILED) { TalosEtcdBackupStatus::default() } else { previous };
    status.observed_generation = generation;
    status.start_time.get_or_insert_with(now);
    let max = ctx.config.max_attempts.max(1) as i32;
    if status.attempts == 0 {
        ctx.event(
            &backup,
            EventType::Normal,
            "BackupStarted",
            format!("Backing up etcd of TalosControlPlane {:?}", backup.spec.talos_control_plane_ref.name),
        )
        .await;
    }
    // An attempt cut off after its upload completed (its Ready status could not be written) left the
    // backup in the bucket: record it rather than store a second copy nobody would point at.
    if let Some(key) = status.attempt_key.clone() {
        match crate::isolate(find_stored(&backup, &ctx, &key)).await {
            Ok(Some(outcome)) => {
                tracing::info!(%namespace, %name, %key, "found the snapshot an interrupted attempt stored");
                return succeed(&api, &backup, &ctx, status, outcome).await;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%namespace, %name, %error, "cannot look for an earlier attempt's snapshot"),
        }
    }
    loop {
        status.attempts += 1;
        let attempt = status.attempts;
        let key = job::snapshot_key(&backup.spec.talos_control_plane_ref.name, jiff::Timestamp::now());
        status.attempt_key = Some(key.clone());
        set_phase(&mut status, Phase::InProgress, format!("Backup attempt {attempt} of {max} in progress"));
        patch_status(&api, &name, &status).await?;
        tracing::info!(%namespace, %name, attempt, %key, "backup attempt started");
        match crate::isolate(attempt_backup(&backup, &ctx, &key)).await {
            Ok(outcome) => return succeed(&api, &backup, &ctx, status, outcome).await,
            Err(error) if error.is_transient() && attempt < max => {
                let delay = backoff(ctx.config.retry_backoff, attempt);
                let message = format!("Attempt {attempt} of {max} failed: {error}; retrying in {}s", delay.as_secs());
                tracing::warn!(%namespace, %name, %error, attempt, "backup attempt failed; retrying");
                set_phase(&mut status, Phase::InProgress, message.clone());
                patch_status(&api, &name, &status).await?;
                ctx.event(&backup, EventType::Warning, "BackupAttemptFailed", message).await;
                tokio::time::sleep(delay).await;
            }
            Err(error) => {
                let message =
                    if attempt > 1 { format!("{error} (after {attempt} attempts)") } else { error.to_string() };
                tracing::warn!(%namespace, %name, %error, attempt, "backup failed");
                status.completion_time = Some(now());
                status.attempt_key = None;
                set_phase(&mut status, Phase::Failed, message.clone());
                patch_status(&api, &name, &status).await?;
                ctx.event(&backup, EventType::Warning, "BackupFailed", message).await;
                return Ok(Action::await_change());
            }
        }
    }
}

/// Records a stored snapshot: Ready, with its key, size, SHA-256 and node.
async fn succeed(
    api: &Api<TalosEtcdBackup>,
    backup: &TalosEtcdBackup,
    ctx: &Context,
    mut status: TalosEtcdBackupStatus,
    outcome: job::Outcome,
) -> Result<Action, Error> {
    let report = &outcome.report;
    status.filename = Some(report.key.clone());
    status.size = Some(report.size as i64);
    status.sha256 = Some(report.sha256.clone());
    status.node = Some(outcome.node.clone());
    status.completion_time = Some(now());
    status.attempt_key = None;
    let message = format!(
        "Snapshot of {} bytes from node {} stored in bucket {:?} at {} ({:.1} s)",
        report.size,
        outcome.node,
        backup.spec.backup_storage.s3.bucket,
        report.key,
        report.duration.as_secs_f64()
    );
    set_phase(&mut status, Phase::Succeeded, message.clone());
    patch_status(api, &backup.name_any(), &status).await?;
    tracing::info!(name = %backup.name_any(), key = %report.key, size = report.size, "backup succeeded");
    if let Some(because) = outcome.unchecked_because {
        ctx.event(backup, EventType::Warning, "NodeHealthUnchecked", because).await;
    }
    ctx.event(backup, EventType::Normal, "BackupSucceeded", message).await;
    Ok(Action::await_change())
}

async fn find_stored(backup: &TalosEtcdBackup, ctx: &Context, key: &str) -> Result<Option<job::Outcome>, Error> {
    let plan = resolve::resolve(&ctx.client, backup, ctx.config.cert_validity).await?;
    job::find_stored(&plan, key, &ctx.config.settings).await
}

async fn attempt_backup(backup: &TalosEtcdBackup, ctx: &Context, key: &str) -> Result<job::Outcome, Error> {
    if let Some(hook) = &ctx.config.attempt_hook {
        hook(backup);
    }
    let plan = resolve::resolve(&ctx.client, backup, ctx.config.cert_validity).await?;
    job::run(&plan, key, &ctx.config.settings, &|_| {}).await
}

fn set_phase(status: &mut TalosEtcdBackupStatus, phase: Phase, message: String) {
    status.conditions =
        conditions::conditions_for(&phase, &message, &status.conditions, status.observed_generation, &now());
}

async fn patch_status(api: &Api<TalosEtcdBackup>, name: &str, status: &TalosEtcdBackupStatus) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": TalosEtcdBackup::api_version(&()),
        "kind": TalosEtcdBackup::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

impl Context {
    /// Events are best effort: a refused event must not fail a backup.
    async fn event(&self, backup: &TalosEtcdBackup, type_: EventType, reason: &str, note: String) {
        let mut note = note;
        if note.len() > 1000 {
            let cut = (0..=1000).rev().find(|&i| note.is_char_boundary(i)).unwrap_or(0);
            note.truncate(cut);
        }
        let event = Event { type_, reason: reason.into(), note: Some(note), action: "Backup".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &backup.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot record event");
        }
    }
}

fn backoff(base: Duration, attempt: i32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1) as u32);
    base.saturating_mul(factor).min(Duration::from_secs(300))
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff(base, 1), Duration::from_secs(10));
        assert_eq!(backoff(base, 3), Duration::from_secs(40));
        assert_eq!(backoff(base, 30), Duration::from_secs(300));
    }
}
