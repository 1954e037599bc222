//! The controllers: one file per custom resource, each thin; what they share (configuration,
//! context, status writes, events) lives here.

mod backup;
mod restore;
mod schedule;

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use teb_api::{TalosEtcdBackup, TalosEtcdBackupSchedule, TalosEtcdRestore};

use crate::Error;
use crate::metrics::Metrics;
use teb_core::Settings;
use teb_core::backup::KeyClaims;

/// Field manager of the status the controllers write.
pub const MANAGER: &str = "talos-etcd-backup";

/// Called at the start of each backup attempt, before anything else; tests use it to inject faults.
pub type AttemptHook = Arc<dyn Fn(&TalosEtcdBackup) + Send + Sync>;

/// How the controllers run backups.
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
    /// Wait between tries to abort an upload S3 could not abort (while it was unreachable).
    pub abort_retry: Duration,
    /// A backup holding fewer Kubernetes objects than this percentage of the newest good backup of
    /// its control plane gets the `ObjectsDropped` condition (0: never).
    pub min_objects_percent: u32,
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
            abort_retry: Duration::from_secs(60),
            min_objects_percent: 50,
            attempt_hook: None,
        }
    }
}

/// The longest object name kube's recorder can name an Event after (253 − 17 for `.<16 hex digits>`).
const RECORDER_NAME_LIMIT: usize = 236;

struct Context {
    client: Client,
    recorder: Recorder,
    reporter: Reporter,
    config: Config,
    metrics: Arc<Metrics>,
    /// Keys recently handed to attempts, so that two never write one.
    keys_in_use: KeyClaims,
}

/// Runs the backup, schedule and restore controllers until SIGTERM/SIGINT, for every namespace or only
/// `namespace`. `ready` turns true once both CRDs have answered; `metrics` records what happens.
pub async fn run(
    client: Client,
    config: Config,
    namespace: Option<&str>,
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let backups: Api<TalosEtcdBackup> = scoped(&client, namespace);
    let schedules: Api<TalosEtcdBackupSchedule> = scoped(&client, namespace);
    check_listable(&backups, "TalosEtcdBackups").await?;
    let restores: Api<TalosEtcdRestore> = scoped(&client, namespace);
    check_listable(&schedules, "TalosEtcdBackupSchedules").await?;
    check_listable(&restores, "TalosEtcdRestores").await?;
    ready.store(true, Ordering::SeqCst);
    let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter.clone()),
        reporter,
        client,
        config: config.clone(),
        metrics,
        keys_in_use: KeyClaims::default(),
    });
    tracing::info!(concurrency = config.concurrency, "controllers started");
    let backup_controller = Controller::new(backups.clone(), watcher::Config::default())
        .with_config(controller::Config::default().concurrency(config.concurrency))
        .shutdown_on_signal()
        .run(
            |backup, ctx| measured("backup", ctx.clone(), backup::reconcile(backup, ctx)),
            error_policy,
            context.clone(),
        )
        .for_each(log_failure);
    let schedule_controller = Controller::new(schedules, watcher::Config::default())
        .watches(backups, watcher::Config::default(), |backup| schedule::schedule_of(&backup))
        .shutdown_on_signal()
        .run(
            |schedule, ctx| measured("schedule", ctx.clone(), schedule::reconcile(schedule, ctx)),
            error_policy,
            context.clone(),
        )
        .for_each(log_failure);
    let restore_controller = Controller::new(restores, watcher::Config::default())
        .shutdown_on_signal()
        .run(|restore, ctx| measured("restore", ctx.clone(), restore::reconcile(restore, ctx)), error_policy, context)
        .for_each(log_failure);
    futures::join!(backup_controller, schedule_controller, restore_controller);
    Ok(())
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn check_listable<K: Clone + DeserializeOwned + Debug>(api: &Api<K>, what: &str) -> anyhow::Result<()> {
    api.list(&ListParams::default().limit(1)).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot list {what} ({e}); are the CRDs installed (`talos-etcd-backup crds | kubectl apply -f -`) \
             and does the operator's RBAC (deploy/rbac.yaml) apply to them?"
        )
    })?;
    Ok(())
}

async fn log_failure<T, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "reconcile failed");
    }
}

/// One reconcile, isolated (a panic fails it, not the process), counted and timed.
async fn measured(
    controller: &'static str,
    ctx: Arc<Context>,
    reconcile: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = crate::isolate(reconcile).await;
    ctx.metrics.reconciled(controller, result.is_ok(), started.elapsed().as_secs_f64());
    result
}

fn error_policy<K>(_object: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "will retry");
    Action::requeue(Duration::from_secs(15))
}

/// Writes `status` by server-side apply, as this operator's field manager.
async fn patch_status<K>(api: &Api<K>, name: &str, status: &impl Serialize) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

impl Context {
    /// Events are best effort: a refused event must not fail the work it reports.
    async fn event<K: Resource<DynamicType = ()>>(&self, object: &K, type_: EventType, reason: &str, note: String) {
        let mut note = note;
        if note.len() > 1000 {
            let cut = (0..=1000).rev().find(|&i| note.is_char_boundary(i)).unwrap_or(0);
            note.truncate(cut);
        }
        let action = match K::kind(&()).as_ref() {
            "TalosEtcdBackup" => "Backup",
            "TalosEtcdRestore" => "Restore",
            _ => "Schedule",
        };
        let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        let regarding = object.object_ref(&());
        let published = if regarding.name.as_ref().is_some_and(|n| n.len() > RECORDER_NAME_LIMIT) {
            self.publish_generated(&event, regarding).await
        } else {
            self.recorder.publish(&event, &regarding).await
        };
        if let Err(e) = published {
            tracing::warn!(error = %e, reason, "cannot record event");
        }
    }

    /// kube's recorder names an Event `<object's name>.<16 hex digits>`, past the 253 characters a
    /// name may have when the object's own name is longer than [`RECORDER_NAME_LIMIT`]: such an
    /// object's Events are created here under a generated name (each its own Event, no series).
    async fn publish_generated(
        &self,
        event: &Event,
        regarding: k8s_openapi::api::core::v1::ObjectReference,
    ) -> Result<(), kube::Error> {
        use k8s_openapi::api::events::v1::Event as K8sEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let stem: String = regarding.name.as_deref().unwrap_or_default().chars().take(200).collect();
        let k8s_event = K8sEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            event_time: Some(MicroTime(jiff::Timestamp::now())),
            regarding: Some(regarding),
            metadata: kube::api::ObjectMeta {
                namespace: Some(namespace.clone()),
                // A dash, not a dot: the API server checks the prefix as a name, minding only a trailing dash.
                generate_name: Some(format!("{}-", stem.trim_end_matches(['.', '-']))),
                ..Default::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter.instance.clone().unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(if event.type_ == EventType::Warning { "Warning" } else { "Normal" }.into()),
            ..Default::default()
        };
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        events.create(&kube::api::PostParams::default(), &k8s_event).await.map(drop)
    }
}
