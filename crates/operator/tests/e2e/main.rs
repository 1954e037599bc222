//! End to end on the proving ground: a real kube-apiserver (RBAC on, the operator running with only
//! its own RBAC), the Talos API emulator backed by real etcd, and an S3 server checking signatures.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use sha2::Digest as _;
use talos_etcd_backup::controllers;
use talos_etcd_backup::metrics::Metrics;
use teb_api::conditions::{FAILED, PROGRESSING, READY};
use teb_api::{
    SCHEDULE_LABEL, SCHEDULE_UID_ANNOTATION, SCHEDULED_AT_ANNOTATION, TalosEtcdBackup, TalosEtcdBackupSchedule,
    TalosEtcdBackupScheduleStatus, TalosEtcdBackupStatus,
};
use teb_testkit::emulator::{EmulatorOptions, TalosVersion};
use teb_testkit::fixtures;
use teb_testkit::fixtures::CaKeyType;
use teb_testkit::ground::ProvingGround;
use teb_testkit::kube::{KubeEnv, apply_yaml, create_control_plane};
use teb_testkit::spec::{SECRET_YAML as SPEC_SECRET, backup_yaml, endpoint_field, schedule_yaml};

mod backends;
mod backup;
mod encryption;
mod hostile_input;
mod object_lock;
mod recovery_kit;
mod restore;
mod schedule;

/// The proving ground with the operator's controllers running in-process on it: scoped to the
/// ground's namespace, as the RBAC-limited operator user.
struct Scenario {
    ground: ProvingGround,
    metrics: Arc<Metrics>,
    controller: tokio::task::JoinHandle<()>,
}

impl std::ops::Deref for Scenario {
    type Target = ProvingGround;

    fn deref(&self) -> &ProvingGround {
        &self.ground
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.controller.abort();
    }
}

fn test_config() -> controllers::Config {
    let mut config =
        controllers::Config { max_attempts: 2, retry_backoff: Duration::from_millis(200), ..Default::default() };
    config.settings.limits.part_size = 5 << 20;
    config.settings.limits.idle_timeout = Duration::from_secs(2);
    config.settings.request_timeout = Duration::from_secs(20);
    config
}

impl Scenario {
    /// The common ground: one control plane (no workers) with its secrets bundle, and the
    /// specification's S3 Secret.
    async fn one_control_plane(prefix: &str) -> Scenario {
        let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
        let scenario = Scenario::start_with(prefix, options, false, test_config()).await;
        scenario.control_plane_with_bundle().await;
        scenario.apply(SPEC_SECRET).await;
        scenario
    }

    async fn start(prefix: &str, control_planes: usize, tls: bool) -> Scenario {
        let options = EmulatorOptions { control_planes, workers: 1, ..Default::default() };
        Scenario::start_with(prefix, options, tls, test_config()).await
    }

    async fn start_with(prefix: &str, options: EmulatorOptions, tls: bool, config: controllers::Config) -> Scenario {
        let env = KubeEnv::shared().expect("kube environment");
        Scenario::start_in(env, prefix, options, tls, config).await
    }

    async fn start_in(
        env: &'static KubeEnv,
        prefix: &str,
        options: EmulatorOptions,
        tls: bool,
        config: controllers::Config,
    ) -> Scenario {
        let ground = ProvingGround::start_in(env, prefix, options, tls).await;
        let metrics = Arc::new(Metrics::default());
        let controller = spawn_controller(env, &ground.ns, config, metrics.clone()).await;
        Scenario { ground, metrics, controller }
    }

    async fn restart_controller(&mut self) {
        self.controller.abort();
        self.controller = spawn_controller(self.env, &self.ground.ns, test_config(), self.metrics.clone()).await;
    }

    async fn wait_finished(&self, name: &str) -> TalosEtcdBackupStatus {
        let api: Api<TalosEtcdBackup> = Api::namespaced(self.admin.clone(), &self.ns);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let backup = api.get(name).await.unwrap();
            let status = backup.status.unwrap_or_default();
            let conds = &status.conditions;
            if teb_api::conditions::is_true(conds, READY) || teb_api::conditions::is_true(conds, FAILED) {
                return status;
            }
            assert!(tokio::time::Instant::now() < deadline, "backup {name} did not finish: {status:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn expect_failed(&self, name: &str, starts_with: &str, contains: &str) -> TalosEtcdBackupStatus {
        let status = self.wait_finished(name).await;
        let failed = condition(&status, FAILED).unwrap_or_else(|| panic!("not failed: {status:?}"));
        assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("True", "BackupFailed"));
        assert!(
            failed.message.starts_with(starts_with),
            "message {:?} should start with {starts_with:?}",
            failed.message
        );
        assert!(failed.message.contains(contains), "message {:?} should contain {contains:?}", failed.message);
        assert!(!failed.message.contains("YOUR_SECRET_ACCESS_KEY"), "a secret leaked: {}", failed.message);
        let progressing = condition(&status, PROGRESSING).unwrap();
        assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("False", "BackupCompleted"));
        assert!(condition(&status, READY).is_none(), "no Ready condition may contradict Failed");
        status
    }
}

async fn spawn_controller(
    env: &KubeEnv,
    ns: &str,
    config: controllers::Config,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    let client = env.operator_client().await.unwrap();
    let ns = ns.to_owned();
    tokio::spawn(async move {
        let ready = Arc::new(AtomicBool::new(false));
        controllers::run(client, config, Some(&ns), ready, metrics).await.expect("controller runs");
    })
}

/// GET /metrics from a health server serving `metrics`, as Prometheus would scrape it.
async fn scrape(metrics: Arc<Metrics>) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", teb_testkit::free_port()).parse().unwrap();
    let server = tokio::spawn(talos_etcd_backup::health::serve(addr, Arc::new(AtomicBool::new(true)), metrics));
    let mut connection = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(connection) => break connection,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    connection.write_all(b"GET /metrics HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    connection.read_to_string(&mut response).await.unwrap();
    server.abort();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("application/openmetrics-text"), "{response}");
    response
}

fn condition(
    status: &TalosEtcdBackupStatus,
    type_: teb_api::conditions::Type,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

impl Scenario {
    fn schedules(&self) -> Api<TalosEtcdBackupSchedule> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn backups(&self) -> Api<TalosEtcdBackup> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// The schedule's YAML with the scenario's S3 endpoint.
    fn schedule_yaml(&self, name: &str, schedule: &str, spec_fields: &str) -> String {
        let endpoint = format!("          endpoint: {}\n", self.s3.endpoint);
        schedule_yaml(name, schedule, spec_fields, &endpoint)
    }

    async fn schedule_status(&self, name: &str) -> TalosEtcdBackupScheduleStatus {
        self.schedules().get(name).await.unwrap().status.unwrap_or_default()
    }

    /// The backups of `schedule`, oldest first.
    async fn backups_of(&self, schedule: &str) -> Vec<TalosEtcdBackup> {
        let params = ListParams::default().labels(&format!("{SCHEDULE_LABEL}={schedule}"));
        let mut list = self.backups().list(&params).await.unwrap().items;
        list.sort_by_key(|b| b.metadata.name.clone());
        list
    }

    /// Polls `check` every 200 ms until it returns `Some`, for at most `seconds`.
    async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
        &self,
        seconds: u64,
        what: &str,
        check: impl Fn() -> F,
    ) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Restores the TalosEtcdBackup `backup` as the TalosEtcdRestore `name`, decrypting with the
    /// identity in the Secret `backup-age`: the restore's status once it succeeded.
    async fn restore_sealed(&self, name: &str, backup: &str) -> teb_api::TalosEtcdRestoreStatus {
        let restore = format!(
            "apiVersion: talos.alperen.cloud/v1alpha1\nkind: TalosEtcdRestore\nmetadata:\n  name: {name}\nspec:\n  \
             talosControlPlaneRef:\n    name: my-controlplane\n  backupRef:\n    name: {backup}\n  decryption:\n    \
             age:\n      identitySecretRef: {{name: backup-age, key: identity}}\n"
        );
        self.apply(&restore).await;
        let restored = self.restore_finished(name).await;
        let ready = restored.conditions.iter().find(|c| c.type_ == READY).unwrap_or_else(|| panic!("{restored:?}"));
        assert_eq!(ready.reason, "RestoreSucceeded");
        restored
    }

    /// The status of the TalosEtcdRestore `name` once it is Ready or Failed.
    async fn restore_finished(&self, name: &str) -> teb_api::TalosEtcdRestoreStatus {
        let restores: Api<teb_api::TalosEtcdRestore> = Api::namespaced(self.admin.clone(), &self.ns);
        self.eventually(90, &format!("restore {name} to finish"), || async {
            let status = restores.get(name).await.unwrap().status.unwrap_or_default();
            let done = status.conditions.iter().any(|c| (c.type_ == READY || c.type_ == FAILED) && c.status == "True");
            done.then_some(status)
        })
        .await
    }
}

fn scheduled_at(backup: &TalosEtcdBackup) -> jiff::Timestamp {
    backup.metadata.annotations.as_ref().unwrap()[SCHEDULED_AT_ANNOTATION].parse().unwrap()
}

fn is_ready(backup: &TalosEtcdBackup) -> bool {
    backup.status.as_ref().is_some_and(|s| teb_api::conditions::is_true(&s.conditions, READY))
}

fn is_failed(backup: &TalosEtcdBackup) -> bool {
    backup.status.as_ref().is_some_and(|s| teb_api::conditions::is_true(&s.conditions, FAILED))
}

fn schedule_condition(status: &TalosEtcdBackupScheduleStatus, type_: teb_api::conditions::Type) -> (String, String) {
    let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_}: {status:?}"));
    (c.status.clone(), c.reason.clone())
}

/// The snapshot keys recorded by `backups`.
/// Every object the backups' statuses name: snapshots, kits, content reports.
fn stored_keys(backups: &[TalosEtcdBackup]) -> Vec<String> {
    backups.iter().filter_map(|b| b.status.as_ref()).flat_map(teb_testkit::backup_objects).collect()
}

impl Scenario {
    /// Fails unless every key in `keys` is an object of the bucket.
    async fn assert_stored(&self, keys: &[String]) {
        let stored: Vec<String> =
            self.s3.objects("my-etcd-backups").await.unwrap().into_iter().map(|(key, _)| key).collect();
        let lost: Vec<&String> = keys.iter().filter(|k| !stored.contains(k)).collect();
        assert!(lost.is_empty(), "snapshots deleted: {lost:?} (bucket: {stored:?})");
    }

    /// Creates schedules running every 2 s and waits until each has two successful backups; then pauses
    /// them and waits until none of their backups runs.
    async fn schedules_with_backups(&self, names: &[String]) {
        for name in names {
            self.apply(&self.schedule_yaml(name, "@every 2s", "")).await;
        }
        for name in names {
            self.eventually(90, "two successful backups", || async {
                (self.backups_of(name).await.iter().filter(|b| is_ready(b)).count() >= 2).then_some(())
            })
            .await;
            let paused = serde_json::json!({"spec": {"paused": true}});
            self.schedules().patch(name, &PatchParams::default(), &Patch::Merge(&paused)).await.unwrap();
        }
        for name in names {
            self.eventually(60, "the schedule's backups to finish", || async {
                self.backups_of(name).await.iter().all(|b| is_ready(b) || is_failed(b)).then_some(())
            })
            .await;
            // Pausing changes the spec, and a changed spec is checked against the bucket again (a
            // probe upload): wait for that check, so that a test stopping the operator next stops it
            // at rest. (An operator killed mid-probe leaves the probe's upload: a known gap, issue 33.)
            self.eventually(60, "the paused schedule's storage check", || async {
                let schedule = self.schedules().get(name).await.unwrap();
                let conditions = schedule.status.map(|s| s.conditions).unwrap_or_default();
                let checked = conditions.iter().find(|c| c.type_ == teb_api::conditions::STORAGE_READY);
                checked.is_some_and(|c| c.observed_generation == schedule.metadata.generation).then_some(())
            })
            .await;
        }
    }
}
