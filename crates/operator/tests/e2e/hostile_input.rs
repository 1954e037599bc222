//! Hostile and malformed input: refused by the schema or failed clearly, never stopping the operator.

use super::*;

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
    assert_eq!(
        teb_testkit::snapshots(&scenario.s3.objects("my-etcd-backups").await.unwrap()).len(),
        1,
        "only the good backup stored"
    );
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
