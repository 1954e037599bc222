//! End to end on the proving ground: a real kube-apiserver (RBAC on, the operator running with only
//! its own RBAC), the Talos API emulator backed by real etcd, and an S3 server checking signatures.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use sha2::Digest as _;
use talos_etcd_backup::controllers;
use talos_etcd_backup::metrics::Metrics;
use teb_api::conditions::{FAILED, PROGRESSING, READY};
use teb_api::{
    SCHEDULE_LABEL, SCHEDULE_UID_ANNOTATION, SCHEDULED_AT_ANNOTATION, TalosEtcdBackup, TalosEtcdBackupSchedule,
    TalosEtcdBackupScheduleStatus, TalosEtcdBackupStatus,
};
use teb_testkit::emulator::{EmulatorOptions, TalosEmulator, TalosVersion};
use teb_testkit::fixtures;
use teb_testkit::fixtures::CaKeyType;
use teb_testkit::kube::{KubeEnv, apply_yaml, create_control_plane};
use teb_testkit::s3::S3Server;
use teb_testkit::spec::{SECRET_YAML as SPEC_SECRET, backup_yaml, endpoint_field, schedule_yaml};

/// A namespace with its own controller (scoped to it, running as the RBAC-limited operator user),
/// an S3 server with the example bucket, and a Talos emulator.
struct Scenario {
    env: &'static KubeEnv,
    ns: String,
    admin: Client,
    s3: S3Server,
    emulator: TalosEmulator,
    metrics: Arc<Metrics>,
    controller: tokio::task::JoinHandle<()>,
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
        let ns = env.namespace(prefix).await.unwrap();
        let admin = env.admin_client().await.unwrap();
        let s3 = if tls { S3Server::start_tls().await } else { S3Server::start().await }.unwrap();
        s3.create_bucket_in("my-etcd-backups", teb_testkit::spec::SPEC_REGION).unwrap();
        let emulator = TalosEmulator::start(options).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let controller = spawn_controller(env, &ns, config, metrics.clone()).await;
        Scenario { env, ns, admin, s3, emulator, metrics, controller }
    }

    /// Puts `count` values of 512 KiB into etcd, so that a snapshot spans several parts.
    async fn fill_etcd(&self, count: usize) {
        let value = vec![b'x'; 512 * 1024];
        for i in 0..count {
            self.emulator.etcd().put(format!("/big/{i}").as_bytes(), &value).await.unwrap();
        }
    }

    async fn restart_controller(&mut self) {
        self.controller.abort();
        self.controller = spawn_controller(self.env, &self.ns, test_config(), self.metrics.clone()).await;
    }

    async fn create_secret(&self, secret: &Secret) {
        Api::<Secret>::namespaced(self.admin.clone(), &self.ns).create(&PostParams::default(), secret).await.unwrap();
    }

    async fn event_reasons(&self) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.admin.clone(), &self.ns);
        events.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|e| e.reason).collect()
    }

    /// Applies YAML into the scenario's namespace, as `kubectl apply -n` would.
    async fn apply(&self, yaml: &str) {
        apply_yaml(&self.admin, yaml, Some(&self.ns)).await.unwrap();
    }

    /// The emulator's control plane as the upstream operator records it, named `my-controlplane`.
    async fn control_plane_with_bundle(&self) {
        let cp = fixtures::control_plane_with_bundle(
            "my-controlplane",
            &self.ns,
            &self.emulator.ca,
            std::slice::from_ref(&self.emulator.endpoint),
        );
        create_control_plane(&self.admin, &cp).await.unwrap();
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

    async fn assert_bucket_clean(&self) {
        assert!(self.s3.objects("my-etcd-backups").await.unwrap().is_empty(), "no object may be left");
        assert!(
            self.s3.unfinished_uploads().is_empty(),
            "no unfinished upload may be left: {:?}",
            self.s3.unfinished_uploads()
        );
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

fn condition<'a>(
    status: &'a TalosEtcdBackupStatus,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specification_flow_backs_up_a_snapshot_that_restores() {
    let mut scenario = Scenario::start("e2e-spec", 3, false).await;
    for i in 0..100 {
        scenario.emulator.etcd().put(format!("/registry/pods/default/pod-{i}").as_bytes(), b"spec").await.unwrap();
    }
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;

    // Watch the conditions as they change.
    let api: Api<TalosEtcdBackup> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watcher = {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, watcher};
        let seen = seen.clone();
        let stream = watcher(api.clone(), watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(b)) = stream.next().await {
                for c in b.status.map(|s| s.conditions).unwrap_or_default() {
                    seen.lock().unwrap().push((c.type_, c.status, c.reason));
                }
            }
        })
    };
    scenario.apply(&backup_yaml("my-backup", &endpoint_field(&scenario.s3.endpoint))).await;
    let status = scenario.wait_finished("my-backup").await;
    watcher.abort();

    let ready = condition(&status, READY).expect("Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "BackupSucceeded"), "{status:?}");
    let progressing = condition(&status, PROGRESSING).unwrap();
    assert_eq!((progressing.status.as_str(), progressing.reason.as_str()), ("False", "BackupCompleted"));
    assert!(condition(&status, FAILED).is_none());
    assert!(seen.lock().unwrap().contains(&("Progressing".into(), "True".into(), "BackupInProgress".into())));
    assert!(ready.observed_generation.is_some() && ready.last_transition_time.0.as_second() > 0);

    // The object: at the specified key, complete, restorable.
    let key = status.filename.clone().unwrap();
    let prefix = "talos-operator-etcd-backups/my-controlplane/etcd-snapshot-";
    assert!(key.starts_with(prefix) && key.ends_with("Z.db"), "{key}");
    let stamp = &key[prefix.len()..key.len() - 3];
    assert!(jiff::civil::DateTime::strptime("%Y-%m-%dT%H-%M-%SZ", stamp).is_ok(), "timestamp {stamp}");
    assert_eq!(scenario.s3.objects("my-etcd-backups").await.unwrap(), vec![(key.clone(), status.size.unwrap() as u64)]);
    let (bytes, metadata) = scenario.s3.get("my-etcd-backups", &key).await.unwrap();
    let db = &bytes[..bytes.len() - 32];
    assert_eq!(status.sha256.as_deref(), Some(hex::encode(sha2::Sha256::digest(db)).as_str()));
    assert_eq!(metadata.get("cluster").map(String::as_str), Some("my-controlplane"));
    assert_eq!(metadata.get("node"), status.node.as_ref());
    assert_eq!(status.attempts, 1);
    assert!(status.start_time.is_some() && status.completion_time.is_some());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.db");
    std::fs::write(&file, &bytes).unwrap();
    let restored = teb_testkit::etcd::EtcdCluster::restore(&file).await.expect("etcdctl snapshot restore");
    assert_eq!(restored.get("/registry/pods/default/pod-77").unwrap().as_deref(), Some("spec"));

    // The snapshot came from a follower, not the leader.
    let node = status.node.clone().unwrap();
    let served = scenario.emulator.nodes().iter().find(|n| n.address == node).unwrap();
    let member = &scenario.emulator.etcd().members[served.etcd_member.unwrap()];
    let member_status = member.status().await.unwrap();
    assert_ne!(member_status.header.unwrap().member_id, member_status.leader, "a follower is preferred");

    // Events for start and success.
    let events: Api<Event> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let reasons: Vec<String> =
        events.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|e| e.reason).collect();
    assert!(reasons.contains(&"BackupStarted".into()) && reasons.contains(&"BackupSucceeded".into()), "{reasons:?}");

    // What Prometheus sees.
    let text = scrape(scenario.metrics.clone()).await;
    let ns = &scenario.ns;
    for line in [
        "teb_backups_total{result=\"succeeded\"} 1".to_owned(),
        format!("teb_backup_stored_bytes_total {}", status.size.unwrap()),
        "teb_backups_in_progress 0".to_owned(),
        "teb_backup_duration_seconds_count{result=\"succeeded\"} 1".to_owned(),
        "teb_reconciles_total{controller=\"backup\",result=\"ok\"} ".to_owned(),
        "teb_reconcile_duration_seconds_count{controller=\"backup\"} ".to_owned(),
        format!("teb_last_success_timestamp_seconds{{namespace=\"{ns}\",controlplane=\"my-controlplane\"}} "),
    ] {
        assert!(text.contains(&line), "{line:?} missing from\n{text}");
    }
    assert!(!text.contains("result=\"failed\""), "{text}");

    // Once Ready it never runs again, also after the operator restarts: the restarted controller
    // reconciles it (its own metrics then hold the backup's success time) and runs nothing.
    scenario.metrics = Arc::new(Metrics::default());
    scenario.restart_controller().await;
    let text = scenario
        .eventually(20, "the restarted controller to reconcile the backup", || async {
            let text = scrape(scenario.metrics.clone()).await;
            text.contains("teb_last_success_timestamp_seconds{").then_some(text)
        })
        .await;
    assert!(!text.contains("teb_backups_total{") && text.contains("teb_backups_in_progress 0"), "{text}");
    let again = api.get("my-backup").await.unwrap().status.unwrap();
    assert_eq!(again.attempts, 1);
    assert_eq!(again.filename.as_deref(), Some(key.as_str()));
    assert_eq!(scenario.s3.objects("my-etcd-backups").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talosconfig_secret_is_used_when_the_control_plane_has_no_bundle() {
    let scenario = Scenario::start("e2e-talosconfig", 1, false).await;
    create_control_plane(&scenario.admin, &fixtures::control_plane("my-controlplane", &scenario.ns)).await.unwrap();
    let talosconfig = scenario.emulator.talosconfig(&["os:etcd:backup"]).unwrap();
    let secret = fixtures::talosconfig_secret("my-controlplane", &scenario.ns, &talosconfig);
    Api::<Secret>::namespaced(scenario.admin.clone(), &scenario.ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    scenario.apply(SPEC_SECRET).await;
    scenario.apply(&backup_yaml("my-backup", &endpoint_field(&scenario.s3.endpoint))).await;
    let status = scenario.wait_finished("my-backup").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn troubleshooting_cases_fail_with_the_specified_messages() {
    let scenario = Scenario::start("e2e-trouble", 1, false).await;
    let extra = endpoint_field(&scenario.s3.endpoint);

    // No TalosControlPlane.
    scenario.apply(&backup_yaml("no-cp", &extra)).await;
    scenario.expect_failed("no-cp", "Failed to get TalosControlPlane", "not found").await;

    // A TalosControlPlane that is not ready (no bundle, no talosconfig Secret).
    create_control_plane(&scenario.admin, &fixtures::control_plane("my-controlplane", &scenario.ns)).await.unwrap();
    scenario.apply(&backup_yaml("cp-not-ready", &extra)).await;
    scenario.expect_failed("cp-not-ready", "Failed to get TalosControlPlane", "not ready").await;

    // Give the control plane its bundle; now the secret is missing.
    let cp = fixtures::control_plane_with_bundle(
        "my-controlplane",
        &scenario.ns,
        &scenario.emulator.ca,
        std::slice::from_ref(&scenario.emulator.endpoint),
    );
    let api: Api<teb_api::TalosControlPlane> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let patch = serde_json::json!({"status": cp.status});
    api.patch_status("my-controlplane", &Default::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    scenario.apply(&backup_yaml("no-secret", &extra)).await;
    scenario.expect_failed("no-secret", "Failed to get secret \"my-s3-credentials\"", "not found").await;

    // The secret lacks a key.
    scenario.apply(&SPEC_SECRET.replace("  secretAccessKey: \"YOUR_SECRET_ACCESS_KEY\"\n", "")).await;
    scenario.apply(&backup_yaml("missing-key", &extra)).await;
    scenario
        .expect_failed("missing-key", "Failed to get secret \"my-s3-credentials\"", "key \"secretAccessKey\" not found")
        .await;

    // Wrong credentials.
    scenario.apply(&SPEC_SECRET.replace("YOUR_SECRET_ACCESS_KEY", "wrong-secret")).await;
    scenario.apply(&backup_yaml("wrong-creds", &extra)).await;
    let status =
        scenario.expect_failed("wrong-creds", "Failed to upload snapshot to S3", "SignatureDoesNotMatch").await;
    assert_eq!(status.attempts, 1, "wrong credentials are not retried");

    // A bucket that does not exist.
    scenario.apply(SPEC_SECRET).await;
    scenario
        .apply(&backup_yaml("no-bucket", &extra).replace("bucket: my-etcd-backups", "bucket: no-such-bucket"))
        .await;
    scenario.expect_failed("no-bucket", "Failed to upload snapshot to S3", "NoSuchBucket").await;
    scenario.assert_bucket_clean().await;

    // Events say why.
    let events: Api<Event> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let failures = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("BackupFailed"))
        .count();
    assert!(failures >= 6, "{failures} BackupFailed events");
    let text = scrape(scenario.metrics.clone()).await;
    for line in [
        "teb_backups_total{result=\"failed\"} 6",
        "teb_errors_total{kind=\"controlplane\"} 2",
        "teb_errors_total{kind=\"secret\"} 2",
        "teb_errors_total{kind=\"s3\"} 2",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_s3_endpoint_needs_skip_verify_or_the_ca() {
    let scenario = Scenario::start("e2e-tls", 1, true).await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    let ca_secret = fixtures::secret("s3-ca", &scenario.ns, &[("ca.crt", scenario.s3.ca_pem.as_deref().unwrap())]);
    Api::<Secret>::namespaced(scenario.admin.clone(), &scenario.ns)
        .create(&PostParams::default(), &ca_secret)
        .await
        .unwrap();
    let endpoint = endpoint_field(&scenario.s3.endpoint);

    scenario
        .apply(&backup_yaml(
            "verify",
            &format!("{endpoint}      insecureSkipTLSVerify: false  # Set to true for self-signed certs\n"),
        ))
        .await;
    scenario.expect_failed("verify", "Failed to upload snapshot to S3", "certificate").await;

    scenario.apply(&backup_yaml("skip-verify", &format!("{endpoint}      insecureSkipTLSVerify: true\n"))).await;
    assert!(condition(&scenario.wait_finished("skip-verify").await, READY).is_some());

    scenario
        .apply(&backup_yaml(
            "with-ca",
            &format!("{endpoint}      caBundle:\n        name: s3-ca\n        key: ca.crt\n"),
        ))
        .await;
    assert!(condition(&scenario.wait_finished("with-ca").await, READY).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_snapshots_leave_nothing_in_the_bucket() {
    let scenario = Scenario::start("e2e-broken", 1, false).await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    // Enough data for several parts, so aborting really has parts to drop.
    scenario.fill_etcd(24).await;
    let extra = endpoint_field(&scenario.s3.endpoint);

    scenario.emulator.faults.truncate_after(7 << 20);
    scenario.apply(&backup_yaml("truncated", &extra)).await;
    let status = scenario.expect_failed("truncated", "Failed to stream etcd snapshot", "truncated").await;
    assert_eq!(status.attempts, 2, "a broken stream is retried");
    assert!(scenario.s3.parts_received() > 0, "parts were uploaded, then aborted");
    scenario.assert_bucket_clean().await;
    scenario.emulator.faults.clear();

    scenario.emulator.faults.corrupt_trailer(true);
    scenario.apply(&backup_yaml("corrupt", &extra)).await;
    scenario.expect_failed("corrupt", "Failed to stream etcd snapshot", "corrupt").await;
    scenario.assert_bucket_clean().await;
    scenario.emulator.faults.clear();

    scenario.emulator.faults.stall_after(3 << 20);
    scenario.apply(&backup_yaml("stalled", &extra)).await;
    scenario.expect_failed("stalled", "Failed to stream etcd snapshot", "sent no data").await;
    scenario.assert_bucket_clean().await;
    scenario.emulator.faults.clear();

    // A transient S3 failure of one part is absorbed; the backup succeeds.
    scenario.s3.faults.fail_upload_part(2, 1);
    scenario.apply(&backup_yaml("flaky-s3", &extra)).await;
    let status = scenario.wait_finished("flaky-s3").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    assert!(scenario.s3.unfinished_uploads().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specification_flow_on_talos_1_10_0_and_with_an_ecdsa_os_ca() {
    // Talos 1.10.0: os:etcd:backup may not read etcd health; the backup still succeeds, from the
    // endpoint node, and says that health was not checked.
    let old = EmulatorOptions { control_planes: 1, talos_version: TalosVersion::V1_10_0, ..Default::default() };
    // Talos 1.11 in FIPS mode: an ECDSA OS CA; the minted client key is ECDSA too.
    let fips = EmulatorOptions { control_planes: 1, ca_key: CaKeyType::EcdsaP256, ..Default::default() };
    for (prefix, options) in [("e2e-talos-1-10-0", old), ("e2e-ecdsa-ca", fips)] {
        let scenario = Scenario::start_with(prefix, options, false, test_config()).await;
        scenario.emulator.etcd().put(b"/registry/flow", prefix.as_bytes()).await.unwrap();
        scenario.control_plane_with_bundle().await;
        scenario.apply(SPEC_SECRET).await;
        scenario.apply(&backup_yaml("my-backup", &endpoint_field(&scenario.s3.endpoint))).await;
        let status = scenario.wait_finished("my-backup").await;
        assert!(condition(&status, READY).is_some(), "{prefix}: {status:?}");
        assert_eq!(status.attempts, 1, "{prefix}");
        let key = status.filename.clone().unwrap();
        let (bytes, _) = scenario.s3.get("my-etcd-backups", &key).await.unwrap();
        assert_eq!(bytes.len() % 512, 32, "{prefix}");
        let unchecked = scenario.event_reasons().await.contains(&"NodeHealthUnchecked".to_owned());
        assert_eq!(unchecked, prefix == "e2e-talos-1-10-0", "{prefix}: the NodeHealthUnchecked event");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_or_fails_clearly_and_never_stops_the_operator() {
    // A bug in one backup (simulated by a panic at the start of its attempt) must not stop the others.
    let mut config = test_config();
    config.attempt_hook = Some(Arc::new(|backup: &TalosEtcdBackup| {
        if kube::ResourceExt::name_any(backup) == "boom" {
            panic!("injected panic for the isolation test");
        }
    }));
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-bad-input", options, false, config).await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    let extra = endpoint_field(&scenario.s3.endpoint);
    let good = backup_yaml("placeholder", &extra);

    // What crashed the operator before: whitespace and control characters in bucket, region and endpoint,
    // and values that gave misleading S3 errors. The API server now refuses them, naming the field.
    let endpoint_line = format!("endpoint: {}", scenario.s3.endpoint);
    let refused: Vec<(&str, String, &str)> = vec![
        ("bucket: my-etcd-backups", "bucket: \"my-etcd-backups \"".into(), "spec.backupStorage.s3.bucket"),
        ("bucket: my-etcd-backups", "bucket: \"my etcd backups\"".into(), "spec.backupStorage.s3.bucket"),
        ("bucket: my-etcd-backups", "bucket: My_Backups".into(), "spec.backupStorage.s3.bucket"),
        ("region: us-west-2", "region: |\n        us-west-2".into(), "spec.backupStorage.s3.region"),
        (&endpoint_line, format!("endpoint: \"{}\\n\"", scenario.s3.endpoint), "spec.backupStorage.s3.endpoint"),
        (&endpoint_line, format!("{endpoint_line}/my-etcd-backups"), "spec.backupStorage.s3.endpoint"),
        ("name: my-controlplane", "name: \"my-controlplane\\n\"".into(), "spec.talosControlPlaneRef.name"),
        ("key: accessKeyID", "key: \"access key\"".into(), "spec.backupStorage.s3.accessKeyID.key"),
    ];
    for (i, (from, to, field)) in refused.iter().enumerate() {
        let yaml = good.replace("name: placeholder", &format!("name: refused-{i}")).replacen(from, to, 1);
        let err = apply_yaml(&scenario.admin, &yaml, Some(&scenario.ns)).await.expect_err(&yaml);
        let text = format!("{err:#}");
        assert!(text.contains(field) && text.contains("Invalid value"), "{field}: {text}");
    }

    // Values the schema cannot see (Secret data, the control plane's status) fail at once, naming the
    // cause, with no secret in the message.
    scenario
        .create_secret(&fixtures::secret(
            "pasted-keys",
            &scenario.ns,
            &[("accessKeyID", "YOUR_ACCESS\nKEY_ID"), ("secretAccessKey", "YOUR_SECRET_ACCESS_KEY")],
        ))
        .await;
    scenario
        .apply(
            &good.replace("name: placeholder", "name: pasted").replace("name: my-s3-credentials", "name: pasted-keys"),
        )
        .await;
    let status = scenario
        .expect_failed(
            "pasted",
            "Failed to get secret \"pasted-keys\"",
            "key \"accessKeyID\": it holds a space, a line break",
        )
        .await;
    assert_eq!(status.attempts, 1);
    assert!(!condition(&status, FAILED).unwrap().message.contains("YOUR_ACCESS"), "{status:?}");

    scenario.create_secret(&fixtures::secret("s3-ca", &scenario.ns, &[("ca.crt", "not a certificate")])).await;
    scenario
        .apply(&backup_yaml(
            "garbage-ca",
            &format!("{extra}      caBundle:\n        name: s3-ca\n        key: ca.crt\n"),
        ))
        .await;
    scenario.expect_failed("garbage-ca", "Failed to get secret \"s3-ca\"", "no PEM certificate").await;

    // A secrets bundle whose OS CA key belongs to another CA.
    let other = fixtures::OsCa::generate().unwrap();
    let mut cp = fixtures::control_plane_with_bundle(
        "mixed-bundle",
        &scenario.ns,
        &scenario.emulator.ca,
        std::slice::from_ref(&scenario.emulator.endpoint),
    );
    let status = cp.status.as_mut().unwrap();
    let bundle = status.secret_bundle.take().unwrap();
    let b64 = |s: &str| base64_encode(s);
    status.secret_bundle = Some(bundle.replace(&b64(&scenario.emulator.ca.key_pem), &b64(&other.key_pem)));
    create_control_plane(&scenario.admin, &cp).await.unwrap();
    scenario
        .apply(&good.replace("name: placeholder", "name: mixed").replace("name: my-controlplane", "name: mixed-bundle"))
        .await;
    let status = scenario
        .expect_failed("mixed", "Failed to get TalosControlPlane \"mixed-bundle\"", "does not match certs.os.crt")
        .await;
    assert_eq!(status.attempts, 1, "an inconsistent bundle is not retried");

    // A panic in one backup: that backup fails with the panic's message; the operator goes on.
    scenario.apply(&good.replace("name: placeholder", "name: boom")).await;
    scenario.expect_failed("boom", "Internal error", "injected panic").await;
    scenario.apply(&good.replace("name: placeholder", "name: after-all")).await;
    let status = scenario.wait_finished("after-all").await;
    assert!(condition(&status, READY).is_some(), "the operator still serves: {status:?}");
    assert!(scenario.s3.unfinished_uploads().is_empty());
    assert_eq!(scenario.s3.objects("my-etcd-backups").await.unwrap().len(), 1, "only the good backup stored");
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_status_was_never_written_is_recorded_not_repeated() {
    use teb_core::{BackupPlan, backup};
    let mut scenario = Scenario::start_with(
        "e2e-interrupted",
        EmulatorOptions { control_planes: 1, ..Default::default() },
        false,
        test_config(),
    )
    .await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;

    // An attempt that uploaded its snapshot, then lost the API server before it could write Ready:
    // the object is in the bucket and the status still says the attempt is running at that key.
    scenario.controller.abort();
    scenario.apply(&backup_yaml("my-backup", &endpoint_field(&scenario.s3.endpoint))).await;
    let api: Api<TalosEtcdBackup> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let uid = api.get("my-backup").await.unwrap().metadata.uid.unwrap();
    let key = backup::snapshot_key("my-controlplane", jiff::Timestamp::now(), Default::default());
    let plan = BackupPlan {
        controlplane: "my-controlplane".into(),
        encoding: Default::default(),
        owner: Some(uid),
        talos: teb_talos::Talosconfig::from_yaml(&scenario.emulator.talosconfig(&["os:etcd:backup"]).unwrap())
            .unwrap()
            .target(None)
            .unwrap(),
        storage: teb_pipeline::Storage::new(
            &teb_pipeline::StorageLocation::S3(teb_pipeline::S3Location {
                bucket: "my-etcd-backups".into(),
                region: "us-west-2".into(),
                endpoint: Some(scenario.s3.endpoint.clone()),
                insecure_skip_tls_verify: false,
                ca_pem: None,
                credentials: Some(teb_pipeline::S3Credentials {
                    access_key_id: teb_testkit::s3::ACCESS_KEY.into(),
                    secret_access_key: teb_testkit::s3::SECRET_KEY.into(),
                }),
            }),
            Duration::from_secs(20),
        )
        .unwrap(),
    };
    let stored = backup::run(&plan, &key, &teb_core::Settings::default(), &|_| {}).await.unwrap();
    // Written as the operator writes status (server-side apply, its field manager).
    let interrupted = serde_json::json!({"apiVersion": "talos.alperen.cloud/v1alpha1", "kind": "TalosEtcdBackup", "status": {
        "attempts": 1,
        "attemptKey": key,
        "conditions": [{"type": "Progressing", "status": "True", "reason": "BackupInProgress",
            "message": "Backup attempt 1 of 2 in progress", "lastTransitionTime": "2025-10-04T11:30:00Z"}],
    }});
    let params = kube::api::PatchParams::apply(controllers::MANAGER).force();
    api.patch_status("my-backup", &params, &kube::api::Patch::Apply(&interrupted)).await.unwrap();

    scenario.restart_controller().await;
    let status = scenario.wait_finished("my-backup").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    assert_eq!(status.filename.as_deref(), Some(key.as_str()));
    assert_eq!(status.sha256, stored.report.sha256);
    assert_eq!(status.size, stored.report.size.map(|size| size as i64));
    assert_eq!(status.node.as_deref(), Some(stored.node.as_str()));
    assert_eq!(status.attempts, 1, "no new attempt");
    assert_eq!(status.attempt_key, None);
    assert_eq!(scenario.s3.objects("my-etcd-backups").await.unwrap().len(), 1, "no second object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_s3_could_not_abort_is_aborted_once_s3_takes_it() {
    let mut config = test_config();
    config.abort_retry = Duration::from_secs(1);
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-abort-later", options, false, config).await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    scenario.fill_etcd(16).await;
    // Each attempt uploads a part, then the stream turns out truncated; S3 refuses the aborts.
    scenario.emulator.faults.truncate_after(6 << 20);
    scenario.s3.faults.fail_aborts(true);
    scenario.apply(&backup_yaml("my-backup", &endpoint_field(&scenario.s3.endpoint))).await;
    let status = scenario.expect_failed("my-backup", "Failed to stream etcd snapshot", "truncated").await;
    assert_eq!(status.attempts, 2);
    let recorded: Vec<String> = status.unfinished_uploads.iter().map(|u| u.upload_id.clone()).collect();
    let mut pending: Vec<String> = scenario.s3.unfinished_uploads().into_iter().map(|u| u.upload_id).collect();
    pending.sort();
    let mut sorted = recorded.clone();
    sorted.sort();
    assert_eq!(sorted, pending, "the status records exactly the uploads S3 still holds");
    assert_eq!(recorded.len(), 2);
    assert!(scenario.event_reasons().await.contains(&"UploadAbortFailed".to_owned()));

    // S3 takes aborts again: the operator aborts both and clears the record.
    scenario.s3.faults.fail_aborts(false);
    let api: Api<TalosEtcdBackup> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = api.get("my-backup").await.unwrap().status.unwrap();
        if status.unfinished_uploads.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "uploads still recorded: {:?}", status.unfinished_uploads);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    scenario.assert_bucket_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_policy_decides_whether_the_snapshot_goes_with_the_backup() {
    let mut config = test_config();
    config.abort_retry = Duration::from_secs(1);
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-deletion", options, false, config).await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    let api: Api<TalosEtcdBackup> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let yaml = |name: &str, policy: &str| {
        let yaml = backup_yaml(name, &endpoint_field(&scenario.s3.endpoint));
        if policy.is_empty() {
            yaml
        } else {
            yaml.replacen("spec:\n", &format!("spec:\n  deletionPolicy: {policy}\n"), 1)
        }
    };
    let wait_gone = |name: &'static str| {
        let api = api.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while api.get_opt(name).await.unwrap().is_some() {
                assert!(tokio::time::Instant::now() < deadline, "{name} was not deleted");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let finalizers = |name: &'static str| {
        let api = api.clone();
        async move { api.get(name).await.unwrap().metadata.finalizers.unwrap_or_default() }
    };

    // Retain (the default): the snapshot stays, and a finished backup holds no finalizer, so it can be
    // deleted with no operator running.
    scenario.apply(&yaml("kept", "")).await;
    let kept = scenario.wait_finished("kept").await.filename.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !finalizers("kept").await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the finalizer of a finished Retain backup stays");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    api.delete("kept", &Default::default()).await.unwrap();
    wait_gone("kept").await;
    assert!(scenario.s3.objects("my-etcd-backups").await.unwrap().iter().any(|(k, _)| *k == kept));

    // Delete: the snapshot goes first.
    scenario.apply(&yaml("deleted", "Delete")).await;
    let deleted = scenario.wait_finished("deleted").await.filename.unwrap();
    assert_eq!(finalizers("deleted").await, vec![talos_etcd_backup::finalizer::FINALIZER.to_owned()]);
    api.delete("deleted", &Default::default()).await.unwrap();
    wait_gone("deleted").await;
    assert!(!scenario.s3.objects("my-etcd-backups").await.unwrap().iter().any(|(k, _)| *k == deleted));

    // S3 unreachable at deletion: the backup waits, an event says why and how to let it go, and it
    // goes once S3 answers again.
    scenario.apply(&yaml("blocked", "Delete")).await;
    let blocked = scenario.wait_finished("blocked").await.filename.unwrap();
    scenario.s3.faults.refuse_credentials(true);
    api.delete("blocked", &Default::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let note = loop {
        let events: Api<Event> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
        let notes: Vec<String> = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("CleanupFailed"))
            .filter_map(|e| e.note)
            .collect();
        if let Some(note) = notes.into_iter().next() {
            break note;
        }
        assert!(tokio::time::Instant::now() < deadline, "no CleanupFailed event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(note.contains("AccessDenied") && note.contains("kubectl patch talosetcdbackup blocked"), "{note}");
    assert!(api.get_opt("blocked").await.unwrap().is_some(), "waits for S3");
    scenario.s3.faults.refuse_credentials(false);
    wait_gone("blocked").await;
    assert!(!scenario.s3.objects("my-etcd-backups").await.unwrap().iter().any(|(k, _)| *k == blocked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_of_one_control_plane_in_one_second_never_share_a_key() {
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-same-second", options, false, test_config()).await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    // Four backups at once: their attempts start within a second or two of each other.
    let names = ["first", "second", "third", "fourth"];
    for name in names {
        scenario.apply(&backup_yaml(name, &endpoint_field(&scenario.s3.endpoint))).await;
    }
    let mut keys = Vec::new();
    for name in names {
        let status = scenario.wait_finished(name).await;
        assert!(condition(&status, READY).is_some(), "{status:?}");
        keys.push(status.filename.unwrap());
    }
    let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), names.len(), "{keys:?}");
    let stamps: std::collections::BTreeSet<&str> = keys.iter().map(|k| &k[..k.find("Z").unwrap()]).collect();
    assert!(stamps.len() < names.len(), "no two started in one second, so nothing was shown: {keys:?}");
    for key in &keys {
        assert!(key.starts_with("talos-operator-etcd-backups/my-controlplane/etcd-snapshot-") && key.ends_with(".db"));
        let (bytes, _) = scenario.s3.get("my-etcd-backups", key).await.unwrap();
        assert_eq!(bytes.len() % 512, 32, "{key} holds a snapshot");
    }
    assert_eq!(scenario.s3.objects("my-etcd-backups").await.unwrap().len(), names.len());
}

// --- TalosEtcdBackupSchedule ---

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

fn schedule_condition(status: &TalosEtcdBackupScheduleStatus, type_: &str) -> (String, String) {
    let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_}: {status:?}"));
    (c.status.clone(), c.reason.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_runs_on_time_prunes_to_retention_caps_failures_and_pauses() {
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-schedule", options, false, test_config()).await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    scenario.apply(&scenario.schedule_yaml("every4s", "@every 4s", "")).await;
    // Keep 2; the upstream `retention` field.
    let patch = serde_json::json!({"spec": {"retention": 2}});
    scenario.schedules().patch("every4s", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    // Its template names a control plane that does not exist: every backup fails.
    let failing = scenario.schedule_yaml("failing", "@every 3s", "  failedBackupsHistoryLimit: 2\n");
    scenario.apply(&failing.replace("name: my-controlplane", "name: no-such-controlplane")).await;

    // Runs on time: each backup is created within 2 s of its scheduled time, 4 s apart.
    let mut seen: std::collections::BTreeMap<String, (jiff::Timestamp, jiff::Timestamp)> = Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let schedule_uid = scenario.schedules().get("every4s").await.unwrap().metadata.uid.unwrap();
    while seen.len() < 5 {
        for b in scenario.backups_of("every4s").await {
            let created = b.metadata.creation_timestamp.as_ref().unwrap().0;
            seen.entry(b.metadata.name.clone().unwrap()).or_insert((scheduled_at(&b), created));
            assert_eq!(
                b.spec.deletion_policy,
                Some(teb_api::DeletionPolicy::Delete),
                "schedules' backups go with their objects"
            );
            // Grouped by label and the schedule's UID, never owned: no cascade may reach them.
            assert!(b.metadata.owner_references.is_none(), "{:?}", b.metadata.owner_references);
            assert_eq!(b.metadata.annotations.as_ref().unwrap()[SCHEDULE_UID_ANNOTATION], schedule_uid);
        }
        assert!(tokio::time::Instant::now() < deadline, "only {} runs in 60 s: {seen:?}", seen.len());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let times: Vec<jiff::Timestamp> = seen.values().map(|(at, _)| *at).collect();
    for (name, (at, created)) in &seen {
        assert_eq!(name, &format!("every4s-{}", at.strftime("%Y%m%d%H%M%S")));
        let late = created.duration_since(*at).as_secs_f64();
        assert!((-1.0..=2.0).contains(&late), "{name} created {late} s after its time");
    }
    for pair in times.windows(2) {
        assert_eq!(pair[1].duration_since(pair[0]).as_secs(), 4, "{times:?}");
    }

    // Retention: 2 Ready backups stay (plus at most one running); the pruned ones' objects are gone,
    // the kept ones' are intact.
    let kept = scenario
        .eventually(30, "retention to prune to 2", || async {
            let list = scenario.backups_of("every4s").await;
            let ready: Vec<TalosEtcdBackup> = list.iter().filter(|b| is_ready(b)).cloned().collect();
            let others = list.len() - ready.len();
            (ready.len() == 2 && others <= 1 && seen.len() >= 5).then_some(ready)
        })
        .await;
    for b in &kept {
        let status = b.status.as_ref().unwrap();
        let key = status.filename.clone().unwrap();
        let (bytes, _) = scenario.s3.get("my-etcd-backups", &key).await.unwrap();
        assert_eq!(bytes.len() as i64, status.size.unwrap());
        let sha = hex::encode(sha2::Sha256::digest(&bytes[..bytes.len() - 32]));
        assert_eq!(Some(sha.as_str()), status.sha256.as_deref(), "kept snapshot {key} changed");
    }
    scenario
        .eventually(30, "the bucket to hold exactly the live backups' objects", || async {
            let keys = |list: Vec<TalosEtcdBackup>| -> Vec<String> {
                list.into_iter().filter_map(|b| b.status?.filename).collect()
            };
            let before = keys(scenario.backups_of("every4s").await);
            let mut objects: Vec<String> =
                scenario.s3.objects("my-etcd-backups").await.unwrap().into_iter().map(|(k, _)| k).collect();
            let after = keys(scenario.backups_of("every4s").await);
            objects.sort();
            let mut live = before.clone();
            live.sort();
            (before == after && objects == live).then_some(())
        })
        .await;
    let status = scenario.schedule_status("every4s").await;
    assert!(kept.iter().any(|b| b.metadata.name == status.last_successful_backup), "{status:?}");
    assert_eq!(schedule_condition(&status, READY), ("True".into(), "ScheduleActive".into()));
    assert_eq!(schedule_condition(&status, "Stale"), ("False".into(), "RecentBackup".into()));
    let (last, next) = (status.last_schedule_time.unwrap().0, status.next_schedule_time.unwrap().0);
    assert_eq!(next.duration_since(last).as_secs(), 4);

    // Failed backups are capped at failedBackupsHistoryLimit, and the schedule goes stale.
    let failing = scenario
        .eventually(30, "failed backups capped and the schedule stale", || async {
            let list = scenario.backups_of("failing").await;
            let status = scenario.schedule_status("failing").await;
            let stale = status.conditions.iter().any(|c| c.type_ == "Stale" && c.status == "True");
            let created = status.last_schedule_time.is_some();
            (stale && created && list.iter().filter(|b| is_failed(b)).count() == 2 && list.len() <= 3).then_some(status)
        })
        .await;
    assert_eq!(schedule_condition(&failing, "Stale"), ("True".into(), "NoRecentBackup".into()));

    // Paused: no new backups, no next time.
    let patch = serde_json::json!({"spec": {"paused": true}});
    scenario.schedules().patch("every4s", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let paused_at = jiff::Timestamp::now();
    let status = scenario
        .eventually(10, "the pause to show", || async {
            let status = scenario.schedule_status("every4s").await;
            (status.next_schedule_time.is_none()).then_some(status)
        })
        .await;
    assert_eq!(schedule_condition(&status, READY), ("True".into(), "SchedulePaused".into()));
    tokio::time::sleep(Duration::from_secs(9)).await;
    let after: Vec<TalosEtcdBackup> =
        scenario.backups_of("every4s").await.into_iter().filter(|b| scheduled_at(b) > paused_at).collect();
    assert!(after.is_empty(), "backups created while paused: {after:?}");

    let text = scrape(scenario.metrics.clone()).await;
    let count = |name: &str| -> u64 {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0)
    };
    assert!(count("teb_schedule_runs_total{outcome=\"created\"}") >= 9, "{text}");
    assert!(count("teb_backups_pruned_total") >= 5, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_runs_while_one_is_running_and_a_restart_takes_one_missed_run() {
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let mut scenario = Scenario::start_with("e2e-forbid", options, false, test_config()).await;
    for i in 0..64 {
        scenario
            .emulator
            .etcd()
            .put(format!("/registry/configmaps/big-{i}").as_bytes(), &[b'x'; 16 * 1024])
            .await
            .unwrap();
    }
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;

    // A backup takes about 8 s at 150 kB/s; the schedule fires every 2 s.
    scenario.emulator.faults.limit_bandwidth(150_000);
    scenario.apply(&scenario.schedule_yaml("slow", "@every 2s", "")).await;
    let done = scenario
        .eventually(60, "two slow backups to finish", || async {
            let list = scenario.backups_of("slow").await;
            let running = list.iter().filter(|b| !is_ready(b) && !is_failed(b)).count();
            assert!(running <= 1, "Forbid let {running} backups run at once");
            (list.iter().filter(|b| is_ready(b)).count() >= 2).then_some(list)
        })
        .await;
    // Their running windows do not overlap, and runs were skipped meanwhile.
    let windows: Vec<(jiff::Timestamp, jiff::Timestamp)> = done
        .iter()
        .filter(|b| is_ready(b))
        .map(|b| {
            let s = b.status.as_ref().unwrap();
            (s.start_time.as_ref().unwrap().0, s.completion_time.as_ref().unwrap().0)
        })
        .collect();
    assert!(windows[0].1 <= windows[1].0, "{windows:?}");
    assert!(windows[0].1.duration_since(windows[0].0).as_secs() >= 4, "the backup was not slow: {windows:?}");
    let reasons = scenario.event_reasons().await;
    assert!(reasons.contains(&"RunSkipped".to_owned()), "{reasons:?}");
    let patch = serde_json::json!({"spec": {"paused": true}});
    scenario.schedules().patch("slow", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    scenario.emulator.faults.clear();

    // The operator is down for several runs of two schedules: the one without a deadline takes the
    // latest missed run once, the one with a 1 s deadline skips it.
    scenario.apply(&scenario.schedule_yaml("catch-up", "@every 3s", "")).await;
    scenario.apply(&scenario.schedule_yaml("strict", "@every 6s", "  startingDeadlineSeconds: 1\n")).await;
    scenario
        .eventually(20, "both schedules to run once", || async {
            // Recorded in the status, not only created: the restart reads lastScheduleTime.
            let a = scenario.schedule_status("catch-up").await.last_schedule_time.is_some();
            let b = scenario.schedule_status("strict").await.last_schedule_time.is_some();
            (a && b).then_some(())
        })
        .await;
    scenario.controller.abort();
    let stopped = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Restart 2 s after one of strict's scheduled times, so that its latest missed run is 2 to 6 s
    // late when the restarted operator looks (it starts in well under 4 s).
    let strict_last = scenario.schedule_status("strict").await.last_schedule_time.unwrap().0;
    let since = jiff::Timestamp::now().duration_since(strict_last).as_secs_f64();
    let wait = 6.0 - (since - 2.0).rem_euclid(6.0);
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    let before: Vec<String> =
        scenario.backups_of("catch-up").await.into_iter().filter_map(|b| b.metadata.name).collect();
    let restarted = jiff::Timestamp::now();
    scenario.restart_controller().await;
    let taken = scenario
        .eventually(10, "the missed run", || async {
            let list = scenario.backups_of("catch-up").await;
            let new: Vec<TalosEtcdBackup> =
                list.into_iter().filter(|b| !before.contains(b.metadata.name.as_ref().unwrap())).collect();
            (!new.is_empty()).then_some(new)
        })
        .await;
    // Exactly one backup for the runs missed while down, for the latest of them (the restarted
    // operator may read the clock a scheduled time after `restarted`).
    let taken_created = taken[0].metadata.creation_timestamp.as_ref().unwrap().0;
    let missed: Vec<jiff::Timestamp> = scenario
        .backups_of("catch-up")
        .await
        .iter()
        .map(scheduled_at)
        .filter(|at| *at > stopped && *at <= taken_created)
        .collect();
    assert_eq!(missed, vec![scheduled_at(&taken[0])], "runs missed while down");
    assert!(taken_created.duration_since(missed[0]).as_secs_f64() < 3.0, "not the latest missed run: {missed:?}");
    let strict_missed = scenario
        .backups_of("strict")
        .await
        .iter()
        .map(scheduled_at)
        .filter(|at| *at > stopped && *at <= restarted)
        .count();
    assert_eq!(strict_missed, 0, "a run later than startingDeadlineSeconds was taken");
    scenario
        .eventually(10, "a MissedSchedule event", || async {
            scenario.event_reasons().await.contains(&"MissedSchedule".to_owned()).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_schedule_yaml_applies_unchanged_invalid_ones_say_why_and_deletion_keeps_backups() {
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-schedule-api", options, false, test_config()).await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;

    // The upstream operator's documented example, verbatim: the API server takes it (a dry run: with
    // no endpoint it would reach AWS), and with the S3 endpoint added it runs daily at 02:00 UTC.
    let verbatim: TalosEtcdBackupSchedule = serde_yaml::from_str(teb_testkit::spec::SCHEDULE_YAML).unwrap();
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    scenario.schedules().create(&dry_run, &verbatim).await.expect("the upstream example is valid");
    scenario.apply(&scenario.schedule_yaml("daily-backup", "0 2 * * *", "")).await;
    let status = scenario
        .eventually(20, "the upstream schedule's status", || async {
            let status = scenario.schedule_status("daily-backup").await;
            status.next_schedule_time.is_some().then_some(status)
        })
        .await;
    let next = status.next_schedule_time.as_ref().unwrap().0;
    let expected =
        teb_schedule::Schedule::parse("0 2 * * *", None).unwrap().next_after(jiff::Timestamp::now()).unwrap();
    assert_eq!(next, expected);
    assert_eq!(schedule_condition(&status, READY), ("True".into(), "ScheduleActive".into()));
    assert!(status.last_schedule_time.is_none() && status.active_backups.is_empty(), "{status:?}");

    // The bucket is checked before the first run: a test upload, aborted.
    let storage = |status: &TalosEtcdBackupScheduleStatus| {
        status.conditions.iter().find(|c| c.type_ == "StorageReady").cloned().expect("StorageReady")
    };
    assert_eq!((storage(&status).status.as_str(), storage(&status).reason.as_str()), ("True", "StorageReachable"));
    assert!(status.last_storage_check_time.is_some());
    let wrong = scenario.schedule_yaml("wrong-bucket", "0 2 * * *", "").replace("my-etcd-backups", "no-such-bucket");
    scenario.apply(&wrong).await;
    let status = scenario
        .eventually(20, "the wrong bucket's check", || async {
            let status = scenario.schedule_status("wrong-bucket").await;
            status.last_storage_check_time.is_some().then_some(status)
        })
        .await;
    let failed = storage(&status);
    assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("False", "StorageUnreachable"));
    assert!(failed.message.starts_with("Bucket \"no-such-bucket\" refused a test upload: "), "{}", failed.message);
    assert!(failed.message.contains("NoSuchBucket"), "{}", failed.message);
    assert!(!failed.message.contains("YOUR_SECRET_ACCESS_KEY"));
    assert!(scenario.event_reasons().await.contains(&"StorageCheckFailed".to_owned()));
    assert!(scenario.s3.unfinished_uploads().is_empty(), "the check left an upload");

    // A time zone moves the run.
    scenario.apply(&scenario.schedule_yaml("berlin", "CRON_TZ=Europe/Berlin 0 2 * * *", "")).await;
    let status = scenario
        .eventually(20, "the Berlin schedule's status", || async {
            let status = scenario.schedule_status("berlin").await;
            status.next_schedule_time.is_some().then_some(status)
        })
        .await;
    let local = status.next_schedule_time.unwrap().0.to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap());
    assert_eq!((local.hour(), local.minute()), (2, 0));

    // Invalid: a clear condition and event, nothing scheduled.
    for (name, schedule, spec_fields, says) in [
        ("four-fields", "0 2 * *", "", "it has 4 fields, not 5"),
        ("bad-zone", "0 2 * * *", "  timeZone: Mars/Olympus\n", "unknown time zone \"Mars/Olympus\""),
        ("bad-every", "@every 100ms", "", "shorter than 1s"),
    ] {
        scenario.apply(&scenario.schedule_yaml(name, schedule, spec_fields)).await;
        let status = scenario
            .eventually(20, "the invalid schedule's condition", || async {
                let status = scenario.schedule_status(name).await;
                (!status.conditions.is_empty()).then_some(status)
            })
            .await;
        assert_eq!(schedule_condition(&status, READY), ("False".into(), "InvalidSchedule".into()));
        assert_eq!(schedule_condition(&status, FAILED), ("True".into(), "InvalidSchedule".into()));
        let message = &status.conditions.iter().find(|c| c.type_ == FAILED).unwrap().message;
        assert!(message.starts_with("Invalid spec.schedule: ") && message.contains(says), "{message}");
        assert!(status.next_schedule_time.is_none());
    }
    assert!(scenario.event_reasons().await.contains(&"InvalidSchedule".to_owned()));
    // The CRD refuses what its schema can check.
    let refused = apply_yaml(
        &scenario.admin,
        &scenario.schedule_yaml("zero", "@every 1s", "  retention: 0\n"),
        Some(&scenario.ns),
    )
    .await;
    assert!(format!("{:#}", refused.unwrap_err()).contains("retention"));

    // Deleting a schedule keeps its backups and their snapshots, no longer owned.
    scenario.apply(&scenario.schedule_yaml("short-lived", "@every 2s", "")).await;
    let ready = scenario
        .eventually(30, "a backup of short-lived", || async {
            scenario.backups_of("short-lived").await.into_iter().find(is_ready)
        })
        .await;
    let key = ready.status.as_ref().unwrap().filename.clone().unwrap();
    scenario.schedules().delete("short-lived", &Default::default()).await.unwrap();
    scenario
        .eventually(20, "the schedule to be gone", || async {
            scenario.schedules().get_opt("short-lived").await.unwrap().is_none().then_some(())
        })
        .await;
    let kept = scenario.backups_of("short-lived").await;
    assert!(!kept.is_empty());
    for b in &kept {
        assert!(b.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()), "still owned: {b:?}");
    }
    assert!(scenario.s3.objects("my-etcd-backups").await.unwrap().iter().any(|(k, _)| *k == key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reads_the_stored_snapshot_back_and_catches_a_damaged_one() {
    use object_store::ObjectStoreExt as _;
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-verify", options, false, test_config()).await;
    for i in 0..50 {
        scenario.emulator.etcd().put(format!("/registry/pods/ns/p-{i}").as_bytes(), &[b'p'; 1024]).await.unwrap();
    }
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    let yaml = |name: &str, extra: &str| {
        backup_yaml(name, &endpoint_field(&scenario.s3.endpoint)).replacen("spec:\n", &format!("spec:\n{extra}"), 1)
    };
    let scenario = &scenario;
    let verified = |name: &'static str| async move {
        scenario
            .eventually(30, "the verification", || async {
                let status = scenario.backups().get(name).await.unwrap().status.unwrap_or_default();
                status.verified.is_some().then_some(status)
            })
            .await
    };

    // Verified after the upload: the trailer, the meta pages, the size and the page headers.
    scenario.apply(&yaml("checked", "  verify: true\n")).await;
    let status = verified("checked").await;
    assert_eq!(status.verified, Some(true), "{status:?}");
    assert!(status.verified_at.is_some());
    let c = condition(&status, "Verified").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "SnapshotVerified"));
    assert!(
        c.message.contains("the SHA-256 trailer matches") && c.message.contains("page headers are sound"),
        "{}",
        c.message
    );
    assert_eq!(condition(&status, READY).unwrap().status, "True");

    // Without verify, nothing is read back; setting it later verifies then, and a snapshot damaged in
    // the bucket (a meta page broken under a recomputed trailer) fails verification.
    scenario.apply(&yaml("damaged", "")).await;
    let status = scenario.wait_finished("damaged").await;
    assert_eq!(status.verified, None);
    let key = status.filename.clone().unwrap();
    let (bytes, _) = scenario.s3.get("my-etcd-backups", &key).await.unwrap();
    let mut db = bytes[..bytes.len() - 32].to_vec();
    db[16] ^= 0xFF;
    let trailer = sha2::Sha256::digest(&db);
    db.extend_from_slice(&trailer);
    let store = scenario.s3.client("my-etcd-backups").unwrap();
    store.put(&object_store::path::Path::from(key.as_str()), db.into()).await.unwrap();
    let patch = serde_json::json!({"spec": {"verify": true}});
    scenario.backups().patch("damaged", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let status = verified("damaged").await;
    assert_eq!(status.verified, Some(false));
    let c = condition(&status, "Verified").unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "VerificationFailed"));
    assert!(c.message.contains("not a sound etcd (bbolt) database: meta page 0 has magic"), "{}", c.message);
    assert!(scenario.event_reasons().await.contains(&"VerificationFailed".to_owned()));

    // A schedule with verify: its backups are verified, and only verified ones count as successes.
    scenario.apply(&scenario.schedule_yaml("verified", "@every 3s", "  verify: true\n")).await;
    let status = scenario
        .eventually(30, "a verified scheduled backup", || async {
            let status = scenario.schedule_status("verified").await;
            status.last_successful_backup.is_some().then_some(status)
        })
        .await;
    let newest = scenario.backups().get(status.last_successful_backup.as_ref().unwrap()).await.unwrap();
    assert!(newest.spec.verify);
    assert_eq!(newest.status.unwrap().verified, Some(true));

    let text = scrape(scenario.metrics.clone()).await;
    assert!(text.contains("teb_verifications_total{result=\"failed\"} 1"), "{text}");
    assert!(text.contains("teb_verifications_total{result=\"passed\"}"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_resource_recovers_a_wiped_etcd_and_refuses_a_live_one() {
    use teb_api::TalosEtcdRestore;
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-restore", options, false, test_config()).await;
    for i in 0..100 {
        scenario.emulator.etcd().put(format!("/registry/secrets/ns/before-{i}").as_bytes(), b"kept").await.unwrap();
    }
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    scenario.apply(&backup_yaml("source", &endpoint_field(&scenario.s3.endpoint))).await;
    let backup = scenario.wait_finished("source").await;
    assert!(condition(&backup, READY).is_some(), "{backup:?}");
    scenario.emulator.etcd().put(b"/registry/secrets/ns/after", b"lost").await.unwrap();

    let restores: Api<TalosEtcdRestore> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let restore_yaml = |name: &str, extra: &str| {
        format!(
            "apiVersion: talos.alperen.cloud/v1alpha1\nkind: TalosEtcdRestore\nmetadata:\n  name: {name}\nspec:\n  \
             talosControlPlaneRef:\n    name: my-controlplane\n  backupRef:\n    name: source\n{extra}"
        )
    };
    let finished = |name: &'static str| {
        let restores = restores.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            loop {
                let status = restores.get(name).await.unwrap().status.unwrap_or_default();
                let done = |t: &str| status.conditions.iter().any(|c| c.type_ == t && c.status == "True");
                if done(READY) || done(FAILED) {
                    return status;
                }
                assert!(tokio::time::Instant::now() < deadline, "restore {name} did not finish: {status:?}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    let failed = |status: &teb_api::TalosEtcdRestoreStatus| {
        status.conditions.iter().find(|c| c.type_ == FAILED).map(|c| (c.reason.clone(), c.message.clone()))
    };

    // etcd is live: refused, and nothing is uploaded to the node.
    scenario.apply(&restore_yaml("too-early", "")).await;
    let status = finished("too-early").await;
    let (reason, message) = failed(&status).expect("Failed");
    assert_eq!(reason, "RestoreRefused");
    assert!(message.contains("restoring over a live etcd is refused"), "{message}");
    assert!(!scenario.emulator.has_recovery_snapshot());

    // A spec naming two sources is refused with what to set.
    scenario.apply(&restore_yaml("two-sources", "  key: some/key.db\n")).await;
    let (reason, message) = failed(&finished("two-sources").await).expect("Failed");
    assert_eq!(reason, "RestoreFailed");
    assert!(
        message.contains("set spec.backupRef (a TalosEtcdBackup), or spec.backupStorage and spec.key"),
        "{message}"
    );

    // Wiped: the backup is restored with its keys, the later one is gone.
    scenario.emulator.wipe_etcd();
    scenario.apply(&restore_yaml("recover", "")).await;
    let status = finished("recover").await;
    let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap_or_else(|| panic!("{status:?}"));
    assert_eq!(ready.reason, "RestoreSucceeded");
    assert_eq!(status.sha256, backup.sha256);
    assert_eq!(status.key, backup.filename);
    assert!(status.member_id.is_some() && status.completion_time.is_some());
    let (kept, lost) = scenario
        .emulator
        .with_restored(|etcd| {
            let etcd = etcd.expect("restored");
            (etcd.get("/registry/secrets/ns/before-42").unwrap(), etcd.get("/registry/secrets/ns/after").unwrap())
        })
        .await;
    assert_eq!((kept.as_deref(), lost), (Some("kept"), None));
    let reasons = scenario.event_reasons().await;
    assert!(reasons.contains(&"RestoreSucceeded".to_owned()) && reasons.contains(&"RestoreRefused".to_owned()));

    // Only whoever RBAC allows creates restores: the operator itself may not.
    let operator = scenario.env.operator_client().await.unwrap();
    let as_operator: Api<TalosEtcdRestore> = Api::namespaced(operator, &scenario.ns);
    let mut copy = restores.get("recover").await.unwrap();
    copy.metadata = kube::api::ObjectMeta { name: Some("by-operator".into()), ..Default::default() };
    copy.status = None;
    let refused = as_operator.create(&PostParams::default(), &copy).await.unwrap_err();
    assert!(matches!(refused, kube::Error::Api(ref s) if s.code == 403), "{refused:?}");
}

/// Runs `script` with sh in `dir`; its standard output, trimmed.
fn shell(dir: &std::path::Path, script: &str) -> String {
    let output = std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap();
    assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_compressed_backups_verify_and_restore_through_resources() {
    use teb_api::TalosEtcdRestore;
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-sealed", options, false, test_config()).await;
    for i in 0..200 {
        let key = format!("/registry/secrets/ns/s-{i}");
        scenario.emulator.etcd().put(key.as_bytes(), format!("secret value {i} ").repeat(50).as_bytes()).await.unwrap();
    }
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    // Two key pairs from Debian's age-keygen: one recipient inline, the other in a Secret with its identity.
    let dir = tempfile::tempdir().unwrap();
    shell(dir.path(), "age-keygen -o one.txt 2>/dev/null && age-keygen -o two.txt 2>/dev/null");
    let inline = shell(dir.path(), "age-keygen -y one.txt");
    let listed = shell(dir.path(), "age-keygen -y two.txt");
    let identity = std::fs::read_to_string(dir.path().join("two.txt")).unwrap();
    let secret_key = identity.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap().to_owned();
    let keys = Secret {
        metadata: kube::api::ObjectMeta { name: Some("backup-age".into()), ..Default::default() },
        string_data: Some(
            [("recipients".to_owned(), format!("# ops team\n{listed}\n")), ("identity".to_owned(), identity.clone())]
                .into(),
        ),
        ..Default::default()
    };
    scenario.create_secret(&keys).await;
    let yaml = |name: &str, extra: &str| {
        backup_yaml(name, &endpoint_field(&scenario.s3.endpoint)).replacen("spec:\n", &format!("spec:\n{extra}"), 1)
    };
    let sealed = format!(
        "  verify: true\n  compression: zstd\n  compressionLevel: 6\n  encryption:\n    age:\n      recipients: \
         [{inline}]\n      recipientsSecretRef: {{name: backup-age, key: recipients}}\n      identitySecretRef: {{name: \
         backup-age, key: identity}}\n"
    );
    scenario.apply(&yaml("sealed", &sealed)).await;
    let scenario = &scenario;
    let status = scenario
        .eventually(60, "the verified encrypted backup", || async {
            let status = scenario.backups().get("sealed").await.unwrap().status.unwrap_or_default();
            status.verified.is_some().then_some(status)
        })
        .await;
    assert_eq!(status.verified, Some(true), "{status:?}");
    let key = status.filename.clone().unwrap();
    assert!(key.ends_with(".db.zst.age"), "{key}");
    assert_eq!(status.encoding.as_deref(), Some("zstd+age"));
    let (size, stored) = (status.size.unwrap(), status.stored_size.unwrap());
    assert!(stored * 3 < size, "compressed: {stored} of {size}");
    assert_eq!(status.recipient_fingerprints.len(), 2, "inline and Secret recipients: {status:?}");
    assert!(status.recipient_fingerprints.iter().all(|f| f.starts_with("sha256:")));
    let (bytes, metadata) = scenario.s3.get("my-etcd-backups", &key).await.unwrap();
    assert_eq!(bytes.len() as i64, stored);
    assert_eq!(metadata.get("encoding").map(String::as_str), Some("zstd+age"));
    // The standard tools open it with the identity from the Secret, into the snapshot the status names.
    std::fs::write(dir.path().join("sealed.db.zst.age"), &bytes).unwrap();
    let digest = shell(dir.path(), "age -d -i two.txt sealed.db.zst.age | zstd -d -q | head -c -32 | sha256sum");
    assert_eq!(digest.split_whitespace().next(), status.sha256.as_deref());
    // No identity in status or events.
    let events: Api<Event> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let shown = format!("{:?}{:?}", status, events.list(&ListParams::default()).await.unwrap().items);
    assert!(!shown.contains(&secret_key["AGE-SECRET-KEY-1".len()..]), "an identity leaked");

    // Bad input: a malformed recipient, no recipient at all, verify without an identity: each fails
    // before anything is stored, saying what to fix.
    let before = scenario.s3.objects("my-etcd-backups").await.unwrap();
    let bad = "  encryption:\n    age:\n      recipients: [age1notakey]\n";
    scenario.apply(&yaml("bad-recipient", bad)).await;
    scenario
        .expect_failed(
            "bad-recipient",
            "Invalid spec: spec.encryption.age.recipients",
            "is not an age X25519 recipient",
        )
        .await;
    scenario.apply(&yaml("no-recipient", "  encryption:\n    age: {}\n")).await;
    scenario
        .expect_failed("no-recipient", "Invalid spec: spec.encryption.age: no recipient", "recipientsSecretRef")
        .await;
    let blind = format!("  verify: true\n  encryption:\n    age:\n      recipients: [{inline}]\n");
    scenario.apply(&yaml("blind-verify", &blind)).await;
    scenario.expect_failed("blind-verify", "Invalid spec: spec.verify", "identitySecretRef").await;
    assert_eq!(scenario.s3.objects("my-etcd-backups").await.unwrap(), before);
    assert!(scenario.s3.unfinished_uploads().is_empty());

    // Restore: decrypted with the Secret's identity and decompressed on the way into EtcdRecover.
    scenario.emulator.wipe_etcd();
    let restores: Api<TalosEtcdRestore> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let restore = "apiVersion: talos.alperen.cloud/v1alpha1\nkind: TalosEtcdRestore\nmetadata:\n  name: unseal\nspec:\n  \
                   talosControlPlaneRef:\n    name: my-controlplane\n  backupRef:\n    name: sealed\n  decryption:\n    \
                   age:\n      identitySecretRef: {name: backup-age, key: identity}\n";
    scenario.apply(restore).await;
    let restored = scenario
        .eventually(90, "the restore", || async {
            let status = restores.get("unseal").await.unwrap().status.unwrap_or_default();
            let done = status.conditions.iter().any(|c| (c.type_ == READY || c.type_ == FAILED) && c.status == "True");
            done.then_some(status)
        })
        .await;
    let ready = restored.conditions.iter().find(|c| c.type_ == READY).unwrap_or_else(|| panic!("{restored:?}"));
    assert_eq!(ready.reason, "RestoreSucceeded");
    assert_eq!((restored.sha256.as_ref(), restored.size), (status.sha256.as_ref(), Some(size)));
    let value =
        scenario.emulator.with_restored(|etcd| etcd.expect("restored").get("/registry/secrets/ns/s-99").unwrap()).await;
    assert_eq!(value, Some("secret value 99 ".repeat(50)));
}

/// The snapshot keys recorded by `backups`.
fn stored_keys(backups: &[TalosEtcdBackup]) -> Vec<String> {
    backups.iter().filter_map(|b| b.status.as_ref()?.filename.clone()).collect()
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
        }
    }
}

/// Deleting a schedule with foreground, background or orphan propagation, with the operator running or
/// stopped, deletes no snapshot: backups carry no owner reference, and one that still has the owner
/// reference earlier versions wrote keeps its snapshot when the garbage collector deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_schedule_deletion_cascades_to_a_snapshot() {
    use kube::api::{DeleteParams, PropagationPolicy};
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let mut scenario = Scenario::start_with("e2e-cascade", options, false, test_config()).await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    let propagations = [
        ("fg", PropagationPolicy::Foreground),
        ("bg", PropagationPolicy::Background),
        ("orphan", PropagationPolicy::Orphan),
    ];
    for operator_running in [true, false] {
        let round = if operator_running { "up" } else { "down" };
        let names: Vec<String> = propagations.iter().map(|(p, _)| format!("{p}-{round}")).collect();
        scenario.schedules_with_backups(&names).await;
        for name in &names {
            let backups = scenario.backups_of(name).await;
            assert!(backups.iter().all(|b| b.metadata.owner_references.is_none()), "owned: {backups:?}");
            assert!(backups.iter().all(|b| b.spec.deletion_policy == Some(teb_api::DeletionPolicy::Delete)));
        }
        if !operator_running {
            scenario.controller.abort();
        }
        // The newest backup of each in the shape earlier versions wrote: owned by its schedule.
        let mut keys = Vec::new();
        for name in &names {
            let schedule = scenario.schedules().get(name).await.unwrap();
            let backups = scenario.backups_of(name).await;
            keys.extend(stored_keys(&backups));
            let owner = serde_json::json!({"metadata": {"ownerReferences": [{
                "apiVersion": "talos.alperen.cloud/v1alpha1", "kind": "TalosEtcdBackupSchedule", "name": name,
                "uid": schedule.metadata.uid, "controller": true, "blockOwnerDeletion": true,
            }]}});
            let newest = backups.last().unwrap().metadata.name.clone().unwrap();
            scenario.backups().patch(&newest, &PatchParams::default(), &Patch::Merge(&owner)).await.unwrap();
        }
        assert!(keys.len() >= 6, "{keys:?}");
        for ((_, propagation), name) in propagations.iter().zip(&names) {
            let params = DeleteParams { propagation_policy: Some(propagation.clone()), ..Default::default() };
            scenario.schedules().delete(name, &params).await.unwrap();
        }
        if !operator_running {
            // The garbage collector acts with no operator running: it deletes the owned backup of the
            // foreground and background deletions, and strips the owner reference for the orphan one.
            scenario
                .eventually(60, "the garbage collector's cascade", || async {
                    let mut done = true;
                    for name in &names {
                        let backups = scenario.backups_of(name).await;
                        let newest = backups.iter().max_by_key(|b| b.metadata.name.clone());
                        done &= if name.starts_with("orphan") {
                            backups.iter().all(|b| b.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty()))
                        } else {
                            newest.is_some_and(|b| b.metadata.deletion_timestamp.is_some())
                        };
                    }
                    done.then_some(())
                })
                .await;
            scenario.restart_controller().await;
        }
        scenario
            .eventually(60, "the schedules to go and no backup to be left deleting", || async {
                for name in &names {
                    if scenario.schedules().get_opt(name).await.unwrap().is_some()
                        || scenario.backups_of(name).await.iter().any(|b| b.metadata.deletion_timestamp.is_some())
                    {
                        return None;
                    }
                }
                Some(())
            })
            .await;
        scenario.assert_stored(&keys).await;
        if !operator_running {
            let reasons = scenario.event_reasons().await;
            assert!(reasons.contains(&"SnapshotKept".to_owned()), "{reasons:?}");
        }
    }
    assert!(scenario.s3.unfinished_uploads().is_empty());
}

/// Deleting the namespace of backups and schedules, with the operator running or stopped, keeps every
/// snapshot, and the namespace goes within a minute (with the operator stopped: of its start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_keeps_every_snapshot_and_never_hangs() {
    use k8s_openapi::api::core::v1::Namespace;
    for operator_running in [true, false] {
        let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
        let prefix = if operator_running { "e2e-ns-up" } else { "e2e-ns-down" };
        let mut scenario = Scenario::start_with(prefix, options, false, test_config()).await;
        scenario.control_plane_with_bundle().await;
        scenario.apply(SPEC_SECRET).await;
        let direct = backup_yaml("direct", &endpoint_field(&scenario.s3.endpoint)).replacen(
            "spec:\n",
            "spec:\n  deletionPolicy: Delete\n",
            1,
        );
        scenario.apply(&direct).await;
        scenario.apply(&scenario.schedule_yaml("nightly", "@every 2s", "")).await;
        scenario.wait_finished("direct").await;
        scenario
            .eventually(90, "two successful scheduled backups", || async {
                (scenario.backups_of("nightly").await.iter().filter(|b| is_ready(b)).count() >= 2).then_some(())
            })
            .await;
        if !operator_running {
            // Stopped between backups: one killed mid-upload would leave an upload that only the bucket's
            // lifecycle rule cleans once the credentials Secret is gone (documented).
            let paused = serde_json::json!({"spec": {"paused": true}});
            scenario.schedules().patch("nightly", &PatchParams::default(), &Patch::Merge(&paused)).await.unwrap();
            scenario
                .eventually(60, "no backup running", || async {
                    let all = scenario.backups().list(&ListParams::default()).await.unwrap().items;
                    all.iter().all(|b| is_ready(b) || is_failed(b)).then_some(())
                })
                .await;
            scenario.controller.abort();
        }
        let keys = stored_keys(&scenario.backups().list(&ListParams::default()).await.unwrap().items);
        assert!(keys.len() >= 3, "{keys:?}");
        let namespaces: Api<Namespace> = Api::all(scenario.admin.clone());
        namespaces.delete(&scenario.ns, &Default::default()).await.unwrap();
        if !operator_running {
            // The namespace controller deletes the Secret with the S3 keys; the backups wait for the
            // operator.
            let secrets: Api<Secret> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
            scenario
                .eventually(60, "the Secret to be deleted", || async {
                    secrets.get_opt("my-s3-credentials").await.unwrap().is_none().then_some(())
                })
                .await;
            scenario.restart_controller().await;
        }
        scenario
            .eventually(60, "the namespace to go", || async {
                namespaces.get_opt(&scenario.ns).await.unwrap().is_none().then_some(())
            })
            .await;
        scenario.assert_stored(&keys).await;
        assert!(scenario.s3.unfinished_uploads().is_empty(), "{:?}", scenario.s3.unfinished_uploads());
    }
}

/// Each fault that README promises to survive or to report, injected end to end, with proof that it
/// fired and of what it caused: attempts, conditions, and a bucket with no partial object and no
/// unfinished upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_fire_and_end_as_promised() {
    let mut config = test_config();
    config.settings.request_timeout = Duration::from_secs(3);
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-faults", options, false, config).await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    // About 12 MiB: three parts of 5 MiB.
    scenario.fill_etcd(24).await;
    let extra = endpoint_field(&scenario.s3.endpoint);
    let faults = &scenario.s3.faults;
    let succeeds = |name: &'static str| {
        let yaml = backup_yaml(name, &extra);
        let scenario = &scenario;
        async move {
            scenario.apply(&yaml).await;
            let status = scenario.wait_finished(name).await;
            assert!(condition(&status, READY).is_some(), "{name}: {status:?}");
            assert!(scenario.s3.unfinished_uploads().is_empty(), "{name}: {:?}", scenario.s3.unfinished_uploads());
            status
        }
    };
    let objects = || async { scenario.s3.objects("my-etcd-backups").await.unwrap().len() };

    // A 500 on one part: the S3 client's own retries absorb it, within the one attempt.
    faults.fail_upload_part(2, 1);
    assert_eq!(succeeds("part-500-once").await.attempts, 1);
    assert_eq!(faults.fired("part failed"), 1);
    // Past the S3 client's 3 retries: the attempt fails, its upload is aborted, and the operator's
    // second attempt stores the backup.
    faults.fail_upload_part(2, 4);
    assert_eq!(succeeds("part-500-past-retries").await.attempts, 2);
    assert_eq!(faults.fired("part failed"), 5);
    assert!(scenario.event_reasons().await.contains(&"BackupAttemptFailed".to_owned()));
    // The connection reset in the middle of a part.
    faults.reset_mid_part(1);
    let status = succeeds("reset-mid-part").await;
    assert_eq!(faults.fired("reset mid-part"), 1);
    assert!(status.attempts <= 2, "{status:?}");
    // S3 stops reading a part for longer than the request timeout (3 s).
    faults.stall_mid_part(Duration::from_secs(8), 1);
    let status = succeeds("stall-mid-part").await;
    assert_eq!(faults.fired("stalled mid-part"), 1);
    assert!(status.attempts <= 2, "{status:?}");
    assert_eq!(objects().await, 4);

    // A full disk: every attempt is refused; the backup fails, naming the refusal; nothing is left.
    faults.storage_full(true);
    scenario.apply(&backup_yaml("storage-full", &extra)).await;
    let status = scenario.expect_failed("storage-full", "Failed to upload snapshot to S3", "XMinioStorageFull").await;
    faults.storage_full(false);
    assert_eq!(status.attempts, 2, "a 5xx is retried: {status:?}");
    assert!(faults.fired("storage full") >= 2, "{}", faults.fired("storage full"));
    assert_eq!(objects().await, 4);
    assert!(scenario.s3.unfinished_uploads().is_empty(), "{:?}", scenario.s3.unfinished_uploads());

    // Talos answers Unavailable: retried, then failed, nothing stored.
    scenario.emulator.faults.unavailable(true);
    scenario.apply(&backup_yaml("talos-unavailable", &extra)).await;
    let status = scenario.expect_failed("talos-unavailable", "Failed to reach the Talos API", "Unavailable").await;
    assert!(status.conditions.iter().any(|c| c.message.contains("(injected fault)")), "{status:?}");
    scenario.emulator.faults.clear();
    assert_eq!(status.attempts, 2, "{status:?}");
    assert_eq!(objects().await, 4);

    // A client certificate Talos refuses (signed by another CA than the cluster's): not retried.
    let stranger = fixtures::OsCa::generate().unwrap();
    let endpoints = std::slice::from_ref(&scenario.emulator.endpoint);
    let talosconfig = scenario.emulator.ca.talosconfig_with_client_of(&stranger, endpoints).unwrap();
    create_control_plane(&scenario.admin, &fixtures::control_plane("stranger-cp", &scenario.ns)).await.unwrap();
    scenario.create_secret(&fixtures::talosconfig_secret("stranger-cp", &scenario.ns, &talosconfig)).await;
    let yaml = backup_yaml("refused-certificate", &extra).replace("name: my-controlplane", "name: stranger-cp");
    scenario.apply(&yaml).await;
    // apid sends a bad_certificate alert and closes the connection. The client reads the alert, and then
    // the error names the certificate and is not retried; or the close overtakes it (as with real Talos,
    // whose close resets the connection while the client's first request is unread), and then it is a
    // transport error, which may be retried. Either way the backup fails at the Talos API.
    let status = scenario.expect_failed("refused-certificate", "Failed to reach the Talos API: ", "").await;
    let message = &condition(&status, FAILED).unwrap().message;
    let named =
        message.contains("Talos refused the client certificate") && message.contains("TLS alert BadCertificate");
    assert!(named || message.contains("transport error"), "{message}");
    assert!((1..=2).contains(&status.attempts), "{status:?}");
    assert_eq!(objects().await, 4);
    assert!(scenario.s3.unfinished_uploads().is_empty());
}

/// kube-apiserver stopped while a backup streams, and started again only after its upload completed:
/// the status write of the result fails, and the operator records the stored object once the API
/// server is back: Ready, one attempt, exactly one object, no unfinished upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_survives_a_kube_apiserver_outage() {
    let env: &'static KubeEnv = Box::leak(Box::new(KubeEnv::start().await.unwrap()));
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_in(env, "e2e-apiserver-outage", options, false, test_config()).await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    // About 6 s of streaming at 1 MiB/s.
    scenario.fill_etcd(12).await;
    scenario.emulator.faults.limit_bandwidth(1 << 20);
    scenario.apply(&backup_yaml("through-outage", &endpoint_field(&scenario.s3.endpoint))).await;
    // Stopped once the upload is recorded in the status (stopping between CreateMultipartUpload and that
    // write makes the attempt abandon its upload instead).
    scenario
        .eventually(30, "the upload to be recorded", || async {
            let backup = scenario.backups().get("through-outage").await.unwrap();
            let recorded = backup.status.is_some_and(|s| !s.unfinished_uploads.is_empty());
            (recorded && !scenario.s3.unfinished_uploads().is_empty()).then_some(())
        })
        .await;
    env.stop_apiserver();
    // The upload completes while the API server is down, so its result cannot be written then.
    scenario
        .eventually(60, "the upload to complete", || async {
            let done = scenario.s3.unfinished_uploads().is_empty();
            (done && scenario.s3.objects("my-etcd-backups").await.unwrap().len() == 1).then_some(())
        })
        .await;
    env.start_apiserver().await.unwrap();
    let status = scenario.wait_finished("through-outage").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    assert_eq!(status.attempts, 1, "{status:?}");
    let objects = scenario.s3.objects("my-etcd-backups").await.unwrap();
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_eq!(Some(&objects[0].0), status.filename.as_ref());
    assert!(scenario.s3.unfinished_uploads().is_empty());
}
