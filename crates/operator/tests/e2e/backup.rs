//! TalosEtcdBackup: the specification's flow, its troubleshooting messages, TLS, broken snapshots,
//! interrupted and refused uploads, deletion policies, verification and injected faults.

use super::*;

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
    let objects = scenario.s3.objects("my-etcd-backups").await.unwrap();
    assert_eq!(teb_testkit::snapshots(&objects), vec![(key.clone(), status.size.unwrap() as u64)]);
    assert_eq!(objects.into_iter().map(|(k, _)| k).collect::<Vec<_>>(), teb_testkit::backup_objects(&status));
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
    assert_eq!(teb_testkit::snapshots(&scenario.s3.objects("my-etcd-backups").await.unwrap()).len(), 1);
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

/// An attempt of the backup `name` (applied from `yaml`, with the controller stopped) that uploaded its
/// snapshot, then lost the API server before it could write Ready: the object is in the bucket and
/// the status still says the attempt is running at that key. The controller is started again.
async fn interrupted_attempt(scenario: &mut Scenario, name: &str, yaml: &str) -> (String, teb_core::Outcome) {
    use teb_core::{BackupPlan, backup};
    scenario.controller.abort();
    scenario.apply(yaml).await;
    let api: Api<TalosEtcdBackup> = Api::namespaced(scenario.admin.clone(), &scenario.ns);
    let uid = api.get(name).await.unwrap().metadata.uid.unwrap();
    // A key of a second no earlier attempt used: the run below writes its key as given.
    let key = loop {
        let key = backup::snapshot_key("my-controlplane", jiff::Timestamp::now(), Default::default());
        if !scenario.s3.objects("my-etcd-backups").await.unwrap().iter().any(|(k, _)| *k == key) {
            break key;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let plan = BackupPlan {
        kit: None,
        kit_policy: teb_core::kit::KitPolicy::Never,
        controlplane: "my-controlplane".into(),
        encoding: Default::default(),
        owner: Some(uid),
        talos: teb_talos::Talosconfig::from_yaml(&scenario.emulator.talosconfig(&["os:etcd:backup"]).unwrap())
            .unwrap()
            .target(None)
            .unwrap(),
        storage: teb_pipeline::Storage::new(
            &teb_pipeline::StorageLocation::S3(teb_testkit::s3::location(
                &scenario.s3.endpoint,
                "my-etcd-backups",
                "us-west-2",
            )),
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
    api.patch_status(name, &params, &kube::api::Patch::Apply(&interrupted)).await.unwrap();
    scenario.restart_controller().await;
    (key, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_status_was_never_written_is_recorded_not_repeated() {
    let mut scenario = Scenario::start_with(
        "e2e-interrupted",
        EmulatorOptions { control_planes: 1, ..Default::default() },
        false,
        test_config(),
    )
    .await;
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;

    let yaml = backup_yaml("my-backup", &endpoint_field(&scenario.s3.endpoint));
    let (key, stored) = interrupted_attempt(&mut scenario, "my-backup", &yaml).await;
    let status = scenario.wait_finished("my-backup").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    assert_eq!(status.filename.as_deref(), Some(key.as_str()));
    assert_eq!(status.sha256, stored.report.sha256);
    assert_eq!(status.size, stored.report.size.map(|size| size as i64));
    assert_eq!(status.node.as_deref(), Some(stored.node.as_str()));
    assert_eq!(status.attempts, 1, "no new attempt");
    assert_eq!(status.attempt_key, None);
    let objects: Vec<String> =
        scenario.s3.objects("my-etcd-backups").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(objects, teb_testkit::backup_objects(&status), "no second object");
    assert!(status.report_filename.is_some(), "the interrupted attempt's report is kept");

    // The same with a recovery kit to keep: the snapshot the interrupted attempt left gets its kit.
    let yaml = format!("{}  recoveryKit: Plaintext\n", backup_yaml("with-kit", &endpoint_field(&scenario.s3.endpoint)));
    let (key, _) = interrupted_attempt(&mut scenario, "with-kit", &yaml).await;
    let status = scenario.wait_finished("with-kit").await;
    assert_eq!((status.filename.as_deref(), status.attempts), (Some(key.as_str()), 1), "{status:?}");
    let kit = status.state_filename.expect("the kit of the recorded snapshot");
    assert_eq!(kit, teb_core::kit::kit_key(&key, false));
    let objects: Vec<String> =
        scenario.s3.objects("my-etcd-backups").await.unwrap().into_iter().map(|(k, _)| k).collect();
    let snapshots = objects.iter().filter(|k| k.contains("/etcd-snapshot-")).count();
    assert!(objects.contains(&kit) && snapshots == 2, "{objects:?}");
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
    scenario.expect_event(None, "UploadAbortFailed").await;

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
        let notes: Vec<String> = scenario
            .events()
            .await
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
    let scenario = Scenario::one_control_plane("e2e-same-second").await;
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
    assert_eq!(teb_testkit::snapshots(&scenario.s3.objects("my-etcd-backups").await.unwrap()).len(), names.len());
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
    let c = condition(&status, teb_api::conditions::VERIFIED).unwrap();
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
    let c = condition(&status, teb_api::conditions::VERIFIED).unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "VerificationFailed"));
    assert!(c.message.contains("not a sound etcd (bbolt) database: meta page 0 has magic"), "{}", c.message);
    scenario.expect_event(None, "VerificationFailed").await;

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
    let objects = || async { teb_testkit::snapshots(&scenario.s3.objects("my-etcd-backups").await.unwrap()).len() };

    // A 500 on one part: the S3 client's own retries absorb it, within the one attempt.
    faults.fail_upload_part(2, 1);
    assert_eq!(succeeds("part-500-once").await.attempts, 1);
    assert_eq!(faults.fired("part failed"), 1);
    // Past the S3 client's 3 retries: the attempt fails, its upload is aborted, and the operator's
    // second attempt stores the backup.
    faults.fail_upload_part(2, 4);
    assert_eq!(succeeds("part-500-past-retries").await.attempts, 2);
    assert_eq!(faults.fired("part failed"), 5);
    scenario.expect_event(None, "BackupAttemptFailed").await;
    // The connection reset in the middle of a part.
    faults.reset_mid_part(1);
    let status = succeeds("reset-mid-part").await;
    assert_eq!(faults.fired("reset mid-part"), 1);
    assert_eq!(status.attempts, 1, "the S3 client sends the part again: {status:?}");
    // S3 stops reading a part for longer than the request timeout (3 s).
    faults.stall_mid_part(Duration::from_secs(8), 1);
    let status = succeeds("stall-mid-part").await;
    assert_eq!(faults.fired("stalled mid-part"), 1);
    assert_eq!(status.attempts, 1, "the S3 client sends the part again: {status:?}");
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
            (done && teb_testkit::snapshots(&scenario.s3.objects("my-etcd-backups").await.unwrap()).len() == 1)
                .then_some(())
        })
        .await;
    env.start_apiserver().await.unwrap();
    let status = scenario.wait_finished("through-outage").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    assert_eq!(status.attempts, 1, "{status:?}");
    let objects = scenario.s3.objects("my-etcd-backups").await.unwrap();
    assert_eq!(objects.into_iter().map(|(k, _)| k).collect::<Vec<_>>(), teb_testkit::backup_objects(&status));
    assert!(scenario.s3.unfinished_uploads().is_empty());
}

/// A bucket whose policy refuses unencrypted writes: a backup without `serverSideEncryption` fails
/// saying which field to set; with it, every object of the backup (snapshot and recovery kit) is
/// written with the encryption asked for, and reads back through verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_encryption_reaches_every_object_of_a_backup() {
    let scenario = Scenario::one_control_plane("e2e-sse").await;
    scenario.s3.require_encryption("my-etcd-backups");
    let s3 = endpoint_field(&scenario.s3.endpoint);

    scenario.apply(&backup_yaml("unencrypted", &s3)).await;
    let status = scenario
        .expect_failed("unencrypted", "Failed to upload snapshot to S3: CreateMultipartUpload", "AccessDenied")
        .await;
    let message = &condition(&status, FAILED).unwrap().message;
    assert!(message.contains("set backupStorage.s3.serverSideEncryption"), "{message}");
    scenario.assert_bucket_clean().await;

    let identity = age::x25519::Identity::generate();
    let age = format!("  encryption:\n    age:\n      recipients: [\"{}\"]\n", identity.to_public());
    let sse = format!("{s3}      serverSideEncryption: aws:kms\n      kmsKeyID: alias/etcd-backups\n");
    scenario.apply(&format!("{}{age}", backup_yaml("kms", &sse))).await;
    let status = scenario.wait_finished("kms").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    let (snapshot, kit) = (status.filename.unwrap(), status.state_filename.expect("a kit"));
    for key in [&snapshot, &kit] {
        let sse = scenario.s3.encryption_of("my-etcd-backups", key);
        assert_eq!(sse.as_deref(), Some("aws:kms:alias/etcd-backups"), "{key}");
    }

    let aes = format!("{s3}      serverSideEncryption: AES256\n");
    scenario.apply(&format!("{}  verify: true\n", backup_yaml("aes", &aes))).await;
    let status = scenario.wait_finished("aes").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    let snapshot = status.filename.unwrap();
    assert_eq!(scenario.s3.encryption_of("my-etcd-backups", &snapshot).as_deref(), Some("AES256"));
    let verified = scenario
        .eventually(30, "the verification", || async {
            scenario.backups().get("aes").await.unwrap().status.unwrap_or_default().verified
        })
        .await;
    assert!(verified, "an encrypted object reads back");

    // A KMS key with the other algorithm is refused before any request, naming the field.
    let wrong = format!("{s3}      serverSideEncryption: AES256\n      kmsKeyID: alias/etcd-backups\n");
    scenario.apply(&backup_yaml("wrong", &wrong)).await;
    scenario
        .expect_failed("wrong", "Invalid spec: spec.backupStorage.s3.serverSideEncryption", "only with aws:kms")
        .await;
}

/// A store that refuses flexible-checksum headers: a backup with the default settings is Ready (no
/// such header on a custom endpoint, the body's SHA-256 signed); one that forces `checksum:
/// CRC64NVME` fails naming the store's answer and the setting, leaving nothing; `None` with Object
/// Lock is refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_flexible_checksums_takes_the_default_checksum() {
    let scenario = Scenario::one_control_plane("e2e-checksum").await;
    scenario.s3.faults.refuse_flexible_checksums(true);
    let s3 = endpoint_field(&scenario.s3.endpoint);
    scenario.apply(&backup_yaml("forced", &format!("{s3}      checksum: CRC64NVME\n"))).await;
    let status = scenario.expect_failed("forced", "Failed to upload snapshot to S3", "NotImplemented").await;
    let message = &condition(&status, FAILED).unwrap().message;
    assert!(message.contains("set backupStorage.s3.checksum: None"), "{message}");
    assert_eq!(status.attempts, 1, "a refused header is not retried");
    scenario.assert_bucket_clean().await;
    scenario.apply(&backup_yaml("default", &s3)).await;
    let status = scenario.wait_finished("default").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    let locked = format!("{s3}      checksum: None\n      objectLock: {{mode: GOVERNANCE, retention: 1d}}\n");
    scenario.apply(&backup_yaml("locked", &locked)).await;
    let status = scenario.expect_failed("locked", "Invalid spec", "checksum").await;
    let message = &condition(&status, FAILED).unwrap().message;
    assert!(message.contains("None cannot go with Object Lock"), "{message}");
    // object_store retries a 501 as any 5xx (three more tries); the backup attempt is not repeated.
    assert_eq!(scenario.s3.faults.fired("checksum refused"), 4, "one CreateMultipartUpload refused");
}

/// README's IAM policies are enough, held by the test server as AWS evaluates them: the write-only one
/// (`s3:PutObject`, `s3:AbortMultipartUpload`, `s3:ListMultipartUploadParts`) backs up; adding
/// `s3:DeleteObject` (without `s3:GetObject`) lets retention prune; the full one verifies too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readmes_minimal_iam_policies_are_enough() {
    let scenario = Scenario::one_control_plane("e2e-iam").await;
    let s3 = endpoint_field(&scenario.s3.endpoint);
    let write_only = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"];
    scenario.s3.allow_only(Some(&write_only));
    scenario.apply(&backup_yaml("write-only", &s3)).await;
    let status = scenario.wait_finished("write-only").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    scenario.assert_stored(&[status.filename.clone().unwrap()]).await;

    // Write and delete: a schedule's retention removes pruned snapshots without reading them.
    scenario.s3.allow_only(Some(&[&write_only[..], &["s3:DeleteObject"]].concat()));
    scenario.apply(&scenario.schedule_yaml("pruned", "@every 3s", "")).await;
    let patch = serde_json::json!({"spec": {"retention": 2}});
    scenario.schedules().patch("pruned", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    scenario
        .eventually(60, "four runs pruned to two, their snapshots deleted", || async {
            let backups = scenario.backups_of("pruned").await;
            let objects = scenario.s3.objects("my-etcd-backups").await.unwrap();
            let mut seen = seen.lock().unwrap();
            seen.extend(backups.iter().filter_map(|b| b.metadata.name.clone()));
            let live = stored_keys(&backups);
            let snapshots = teb_testkit::snapshots(&objects);
            let scheduled = snapshots.iter().filter(|(key, _)| live.contains(key)).count();
            let stored = backups.iter().filter(|b| b.status.as_ref().is_some_and(|s| s.filename.is_some())).count();
            (seen.len() >= 4 && backups.len() <= 3 && snapshots.len() == scheduled + 1 && stored == 2).then_some(())
        })
        .await;
    scenario.schedules().delete("pruned", &Default::default()).await.unwrap();

    // README's full policy: verifying reads the snapshot back.
    let readme =
        [&write_only[..], &["s3:GetObject", "s3:DeleteObject", "s3:ListBucket", "s3:ListBucketMultipartUploads"]]
            .concat();
    scenario.s3.allow_only(Some(&readme));
    scenario.apply(&format!("{}  verify: true\n", backup_yaml("verified", &s3))).await;
    let verified = scenario
        .eventually(60, "the verification", || async {
            scenario.backups().get("verified").await.unwrap().status.unwrap_or_default().verified
        })
        .await;
    assert!(verified);
    assert!(scenario.s3.unfinished_uploads().is_empty());
}

/// A client certificate Talos refuses (signed by another CA than the cluster's) fails the backup at the
/// Talos API. apid sends a bad_certificate alert and closes the connection: the client reads the alert
/// (the error names the certificate and is not retried), or the close overtakes it, as with real Talos,
/// whose close resets the connection while the client's first request is unread (a transport error,
/// retried like any). Which one happens is a race, on every attempt, so the number of attempts tells
/// nothing here; the classification is unit-tested (teb-talos `error.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_certificate_fails_at_the_talos_api() {
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-cert", options, false, test_config()).await;
    scenario.apply(SPEC_SECRET).await;
    let extra = endpoint_field(&scenario.s3.endpoint);
    let stranger = fixtures::OsCa::generate().unwrap();
    let endpoints = std::slice::from_ref(&scenario.emulator.endpoint);
    let talosconfig = scenario.emulator.ca.talosconfig_with_client_of(&stranger, endpoints).unwrap();
    create_control_plane(&scenario.admin, &fixtures::control_plane("stranger-cp", &scenario.ns)).await.unwrap();
    scenario.create_secret(&fixtures::talosconfig_secret("stranger-cp", &scenario.ns, &talosconfig)).await;
    let yaml = backup_yaml("refused-certificate", &extra).replace("name: my-controlplane", "name: stranger-cp");
    scenario.apply(&yaml).await;
    let status = scenario.expect_failed("refused-certificate", "Failed to reach the Talos API: ", "").await;
    let message = &condition(&status, FAILED).unwrap().message;
    let named =
        message.contains("Talos refused the client certificate") && message.contains("TLS alert BadCertificate");
    assert!(named || message.contains("transport error"), "{message}");
    scenario.assert_bucket_clean().await;
}

/// Snapshot and kit are one backup. A kit the store refuses for good (a bucket policy denying its key)
/// fails the backup with the store's reason and takes the snapshot with it; one refused for a while
/// (503 beyond the client's retries) fails the attempt, and the next stores snapshot and kit
/// together, never adopting the first attempt's snapshot without its kit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_never_ends_ready_without_its_kit() {
    let scenario = Scenario::one_control_plane("e2e-kit-refused").await;
    let with_kit =
        |name: &str| format!("{}  recoveryKit: Plaintext\n", backup_yaml(name, &endpoint_field(&scenario.s3.endpoint)));

    scenario.s3.faults.fail_put_object(u32::MAX, true);
    scenario.apply(&with_kit("denied")).await;
    let status =
        scenario.expect_failed("denied", "Failed to upload snapshot to S3: storing its recovery kit", "").await;
    let message = &condition(&status, FAILED).unwrap().message;
    assert!(message.contains("AccessDenied") && message.contains("/state-"), "{message}");
    assert_eq!((status.attempts, status.state_filename.as_deref()), (1, None), "a refusal is not retried");
    scenario.assert_bucket_clean().await;
    assert!(!scenario.event_reasons().await.contains(&"RecoveryKitNotStored".to_owned()), "no Ready without a kit");

    // object_store retries a 503 three times: four refusals fail the first attempt's kit.
    scenario.s3.faults.fail_put_object(4, false);
    scenario.apply(&with_kit("throttled")).await;
    let status = scenario.wait_finished("throttled").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    assert_eq!(status.attempts, 2, "the kit's failure failed the first attempt");
    let expected = teb_testkit::backup_objects(&status);
    let (key, kit) = (status.filename.unwrap(), status.state_filename.expect("a kit"));
    assert_eq!(kit, teb_core::kit::kit_key(&key, false));
    let mut objects: Vec<String> =
        scenario.s3.objects("my-etcd-backups").await.unwrap().into_iter().map(|(k, _)| k).collect();
    objects.sort();
    assert_eq!(objects.len(), 4, "snapshot, kit, report and manifest: {objects:?}");
    assert_eq!(objects, expected, "the first attempt's snapshot went with its kit");
    assert!(scenario.s3.unfinished_uploads().is_empty());
    assert_eq!(scenario.s3.faults.fired("put object refused"), 1 + 4, "once for the denied kit, four times now");
}

/// Intent before action: an attempt records its key before it starts an upload, so an upload started
/// at that key but never recorded (a process killed between the two) is found by listing the store
/// and aborted when the next attempt begins. Here the stray is made by hand while attempt 1 streams;
/// attempt 1 then fails at its part, and attempt 2 aborts the stray before it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_nobody_recorded_at_the_attempt_key_is_aborted_by_the_next_attempt() {
    use object_store::multipart::MultipartStore as _;
    let scenario = Scenario::one_control_plane("e2e-unrecorded").await;
    scenario.fill_etcd(2).await;
    scenario.emulator.faults.limit_bandwidth(512 * 1024);
    // object_store retries a failed part three times: four failures fail attempt 1.
    scenario.s3.faults.fail_upload_part(1, 4);
    scenario.apply(&backup_yaml("my-backup", &endpoint_field(&scenario.s3.endpoint))).await;
    let key = scenario
        .eventually(30, "attempt 1's upload recorded", || async {
            let status = scenario.backups().get("my-backup").await.unwrap().status.unwrap_or_default();
            (!status.unfinished_uploads.is_empty()).then_some(status.attempt_key?)
        })
        .await;
    // Started with the operator's own keys, as its killed predecessor would have.
    let client = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&scenario.s3.endpoint)
        .with_allow_http(true)
        .with_bucket_name("my-etcd-backups")
        .with_region(teb_testkit::spec::SPEC_REGION)
        .with_access_key_id(teb_testkit::s3::ACCESS_KEY)
        .with_secret_access_key(teb_testkit::s3::SECRET_KEY)
        .build()
        .unwrap();
    let stray = client.create_multipart(&object_store::path::Path::from(key.as_str())).await.unwrap();
    let status = scenario.wait_finished("my-backup").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    assert_eq!(status.attempts, 2, "attempt 1 failed at its part");
    let left: Vec<String> = scenario.s3.unfinished_uploads().into_iter().map(|u| u.upload_id).collect();
    assert!(!left.contains(&stray), "the stray upload at {key} was aborted: {left:?}");
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(scenario.s3.faults.fired("part failed"), 4);
}

/// A name as long as Kubernetes allows (253 characters) still gets its Events: kube's recorder would
/// name them past that limit, so they are created under a generated name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_with_the_longest_name_gets_its_events() {
    let scenario = Scenario::one_control_plane("e2e-long-name").await;
    let name = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");
    assert_eq!(name.len(), 253);
    scenario.apply(&backup_yaml(&name, &endpoint_field(&scenario.s3.endpoint))).await;
    let status = scenario.wait_finished(&name).await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    scenario.expect_event(Some(&name), "BackupStarted").await;
    scenario.expect_event(Some(&name), "BackupSucceeded").await;
}

/// A backup deleted while its upload runs: the deletion waits for the attempt, then its finalizer
/// takes what is left (with `deletionPolicy: Delete` the snapshot too). Nothing stays in the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_deleted_mid_upload_leaves_nothing() {
    let scenario = Scenario::one_control_plane("e2e-deleted-mid-upload").await;
    scenario.fill_etcd(12).await;
    scenario.emulator.faults.limit_bandwidth(2 << 20);
    let yaml = backup_yaml("my-backup", &endpoint_field(&scenario.s3.endpoint)).replacen(
        "spec:\n",
        "spec:\n  deletionPolicy: Delete\n",
        1,
    );
    scenario.apply(&yaml).await;
    scenario.eventually(30, "a part sent", || async { (scenario.s3.parts_received() > 0).then_some(()) }).await;
    assert_eq!(scenario.s3.unfinished_uploads().len(), 1);
    scenario.backups().delete("my-backup", &Default::default()).await.unwrap();
    scenario
        .eventually(60, "the backup gone", || async {
            scenario.backups().get_opt("my-backup").await.unwrap().is_none().then_some(())
        })
        .await;
    scenario.assert_bucket_clean().await;
}
