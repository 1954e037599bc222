//! The recovery kit: the cluster's secrets kept with every backup, sealed to its age recipients, so that
//! a cluster comes back with nothing but the bucket and an age identity when the management cluster
//! is gone.

use super::*;
use object_store::ObjectStoreExt as _;

/// The command line against the scenario's bucket: whether it succeeded, its JSON summary, stderr.
fn cli(scenario: &Scenario, args: &[&str]) -> (bool, serde_json::Value, String) {
    let output = cli_output(scenario, args);
    let summary = serde_json::from_slice(&output.stdout).unwrap_or_default();
    (output.status.success(), summary, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// [`cli`]'s run, as the process left it.
fn cli_output(scenario: &Scenario, args: &[&str]) -> std::process::Output {
    tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_talos-etcd-backup"))
            .args(args)
            .args(["--bucket", "my-etcd-backups", "--region", teb_testkit::spec::SPEC_REGION])
            .args(["--endpoint", &scenario.s3.endpoint])
            .env("AWS_ACCESS_KEY_ID", teb_testkit::s3::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", teb_testkit::s3::SECRET_KEY)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
}

/// The OS CA (certificate and key PEM) of a secrets bundle's YAML.
fn os_ca(bundle: &str) -> (String, String) {
    use base64::Engine as _;
    let bundle: serde_yaml::Value = serde_yaml::from_str(bundle).unwrap();
    let pem = |field: &str| {
        let encoded = bundle["certs"]["os"][field].as_str().unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap()
    };
    (pem("crt"), pem("key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_management_cluster_comes_back_from_the_bucket_and_an_age_identity() {
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-kit", options, false, test_config()).await;
    for i in 0..100 {
        scenario.emulator.etcd().put(format!("/registry/secrets/ns/before-{i}").as_bytes(), b"kept").await.unwrap();
    }
    scenario.control_plane_with_bundle().await;
    scenario.apply(SPEC_SECRET).await;
    let identity = age::x25519::Identity::generate();
    let keys = tempfile::tempdir().unwrap();
    let identity_file = keys.path().join("identity.txt");
    std::fs::write(&identity_file, age::secrecy::ExposeSecret::expose_secret(&identity.to_string())).unwrap();
    let other_file = keys.path().join("other.txt");
    let other = age::x25519::Identity::generate();
    std::fs::write(&other_file, age::secrecy::ExposeSecret::expose_secret(&other.to_string())).unwrap();
    let s3 = endpoint_field(&scenario.s3.endpoint);

    // Encrypted: the kit is sealed to the backup's recipient, beside the snapshot, named as upstream names it.
    let sealed = format!(
        "{}  encryption:\n    age:\n      recipients: [\"{}\"]\n",
        backup_yaml("sealed", &s3),
        identity.to_public()
    );
    scenario.apply(&sealed).await;
    let status = scenario.wait_finished("sealed").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    let snapshot = status.filename.clone().unwrap();
    let kit_key = status.state_filename.clone().expect("a kit");
    assert_eq!(kit_key, teb_core::kit::kit_key(&snapshot, true));
    assert!(kit_key.contains("/state-") && kit_key.ends_with(".yaml.age"), "{kit_key}");
    let (stored, _) = scenario.s3.get("my-etcd-backups", &kit_key).await.unwrap();
    assert!(stored.starts_with(b"age-encryption.org/v1"), "the kit is sealed");
    let bundle = scenario.emulator.ca.secrets_bundle_yaml();
    let (ca_cert, _) = os_ca(&bundle);
    let stored_text = String::from_utf8_lossy(&stored);
    assert!(!stored_text.contains("secretBundle") && !stored_text.contains(&ca_cert[30..60]), "no secret in the clear");

    // Decrypted with Debian's age and applied as upstream documents (`kubectl apply -f <cp>-state.yaml`),
    // it is upstream's state Secret key for key, and its state is one upstream never bootstraps from.
    let (stored_kit, _) = scenario.s3.get("my-etcd-backups", &kit_key).await.unwrap();
    std::fs::write(keys.path().join("kit.yaml.age"), &stored_kit).unwrap();
    let decrypted = std::process::Command::new("age")
        .args(["-d", "-i", identity_file.to_str().unwrap(), "kit.yaml.age"])
        .current_dir(keys.path())
        .output()
        .unwrap();
    assert!(decrypted.status.success(), "{}", String::from_utf8_lossy(&decrypted.stderr));
    scenario.apply(&String::from_utf8(decrypted.stdout).unwrap()).await;
    let applied = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(scenario.admin.clone(), &scenario.ns)
        .get("my-controlplane-state")
        .await
        .unwrap();
    let labels = applied.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(teb_core::kit::STATE_LABEL.0).map(String::as_str), Some(teb_core::kit::STATE_LABEL.1));
    let data = applied.data.clone().unwrap_or_default();
    let text = |key: &str| String::from_utf8(data[key].0.clone()).unwrap();
    // ensureStateSecret's keys in upstream v0.5.4 (internal/controller/taloscontrolplane_controller.go).
    for key in ["secretBundle", "bundleConfig", "state", "config", "observedKubeVersion"] {
        assert!(data.contains_key(key), "upstream's key {key}: {:?}", data.keys().collect::<Vec<_>>());
    }
    let controlplane = Api::<teb_api::TalosControlPlane>::namespaced(scenario.admin.clone(), &scenario.ns)
        .get("my-controlplane")
        .await
        .unwrap()
        .status
        .unwrap();
    assert_eq!(text("secretBundle"), controlplane.secret_bundle.unwrap());
    assert_eq!(text("bundleConfig"), controlplane.bundle_config.unwrap());
    assert_eq!(text("config"), controlplane.config.unwrap());
    assert_eq!(text("observedKubeVersion"), "v1.34.1");
    // Upstream's BootstrapCluster returns at once in Bootstrapped and Ready and bootstraps only from
    // Available: restoring its status from this Secret starts no empty etcd.
    assert!(matches!(text("state").as_str(), "Ready" | "Bootstrapped"), "{}", text("state"));

    // No recipients: no kit, and the backup says which field to set. Plaintext, asked for: stored as upstream does.
    scenario.apply(&backup_yaml("unsealed", &s3)).await;
    let status = scenario.wait_finished("unsealed").await;
    assert_eq!(status.state_filename, None);
    // The event follows the status write that says Ready.
    scenario
        .eventually(30, "the RecoveryKitNotStored event", || async {
            scenario.event_reasons().await.contains(&"RecoveryKitNotStored".to_owned()).then_some(())
        })
        .await;
    scenario.apply(&format!("{}  recoveryKit: Plaintext\n", backup_yaml("plaintext", &s3))).await;
    let status = scenario.wait_finished("plaintext").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    let plain_key = status.state_filename.expect("a plain kit");
    assert!(plain_key.ends_with(".yaml") && plain_key.contains("/state-"), "{plain_key}");
    let (plain, _) = scenario.s3.get("my-etcd-backups", &plain_key).await.unwrap();
    let secret: serde_yaml::Value = serde_yaml::from_slice(&plain).unwrap();
    assert_eq!(
        (secret["kind"].as_str(), secret["metadata"]["name"].as_str()),
        (Some("Secret"), Some("my-controlplane-state"))
    );
    assert!(secret["data"]["secretBundle"].is_string() && secret["data"]["bundleConfig"].is_string());

    // `list` shows which backups have a kit; `verify` opens it.
    let (ok, listed, stderr) = cli(&scenario, &["list", "--output", "json"]);
    assert!(ok, "{stderr}");
    let kit_of = |key: &str| listed.as_array().unwrap().iter().find(|b| b["key"] == key).map(|b| b["kit"].clone());
    assert_eq!(kit_of(&snapshot), Some(kit_key.as_str().into()), "{listed}");
    assert_eq!(listed.as_array().unwrap().len(), 3, "kits are no entries of their own: {listed}");
    assert_eq!(listed.as_array().unwrap().iter().filter(|b| b["kit"].is_null()).count(), 1, "{listed}");
    let id = identity_file.to_str().unwrap();
    let (ok, verified, stderr) = cli(&scenario, &["verify", "--key", &snapshot, "--age-identity-file", id]);
    assert!(ok && verified["kit"] == kit_key.as_str(), "{verified} {stderr}");

    // Snapshot and kit are one backup: deleting a `Delete` backup takes both.
    let doomed = sealed.replace("name: sealed", "name: doomed").replace("spec:\n", "spec:\n  deletionPolicy: Delete\n");
    scenario.apply(&doomed).await;
    let status = scenario.wait_finished("doomed").await;
    let (doomed_snapshot, doomed_kit) = (status.filename.unwrap(), status.state_filename.expect("a kit"));
    scenario.backups().delete("doomed", &Default::default()).await.unwrap();
    scenario
        .eventually(30, "the snapshot and its kit to go", || async {
            let keys: Vec<String> =
                scenario.s3.objects("my-etcd-backups").await.unwrap().into_iter().map(|(k, _)| k).collect();
            (!keys.contains(&doomed_snapshot) && !keys.contains(&doomed_kit)).then_some(())
        })
        .await;
    assert!(
        scenario.s3.objects("my-etcd-backups").await.unwrap().iter().any(|(k, _)| *k == kit_key),
        "other kits stay"
    );

    // The management cluster is gone: its TalosControlPlane, Secrets and namespace; and so are the nodes.
    scenario.emulator.etcd().put(b"/registry/secrets/ns/after", b"lost").await.unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(scenario.admin.clone());
    namespaces.delete(&scenario.ns, &Default::default()).await.unwrap();
    scenario
        .eventually(60, "the namespace to go", || async {
            namespaces.get_opt(&scenario.ns).await.unwrap().is_none().then_some(())
        })
        .await;

    // The kit, with only the bucket's keys and the age identity: the secrets bundle and a talosconfig.
    let out = keys.path().join("kit");
    let (ok, summary, stderr) =
        cli(&scenario, &["kit", "--key", &snapshot, "--age-identity-file", id, "--out", out.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert_eq!(summary["cluster"], "my-controlplane");
    let kit_bundle = std::fs::read_to_string(out.join("secrets.yaml")).unwrap();
    assert_eq!(kit_bundle, bundle, "the secrets bundle comes back as it was");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(out.join("secrets.yaml")).unwrap().permissions().mode() & 0o777, 0o600);
    teb_talos::Talosconfig::from_yaml(&std::fs::read_to_string(out.join("talosconfig")).unwrap()).unwrap();
    // secrets.yaml has every field `talosctl gen config --with-secrets` requires (Bundle.Validate);
    // the applied machine config, the upstream Secret and the cluster's settings come with it.
    assert_eq!(teb_talos::gen_config_problems(&kit_bundle), Vec::<String>::new());
    assert_eq!(summary["secrets_problems"], serde_json::json!([]));
    let machine_config = std::fs::read_to_string(out.join("controlplane.yaml")).unwrap();
    assert!(machine_config.contains("clusterName: my-controlplane"), "{machine_config}");
    let state = std::fs::read_to_string(out.join("state-secret.yaml")).unwrap();
    assert!(
        state.contains("talos.alperen.cloud/type: state") && state.contains(&format!("namespace: {}", scenario.ns))
    );
    let patch = std::fs::read_to_string(out.join("cluster-patch.yaml")).unwrap();
    assert!(patch.contains("10.96.0.0/12") && patch.contains("10.244.0.0/16"), "{patch}");
    let script = std::fs::read_to_string(out.join("gen-config.sh")).unwrap();
    assert!(
        script.contains("--kubernetes-version '1.34.1'") && script.contains("--with-secrets secrets.yaml"),
        "{script}"
    );

    // New nodes from the kit's secrets (its OS CA), waiting to be bootstrapped; restored through the kit.
    let rebuilt = teb_testkit::emulator::TalosEmulator::start(EmulatorOptions {
        control_planes: 1,
        workers: 0,
        os_ca: Some(os_ca(&kit_bundle)),
        ..Default::default()
    })
    .await
    .unwrap();
    rebuilt.wipe_etcd();
    let restore = |key: &str, identity: &str| {
        cli(
            &scenario,
            &[
                "restore",
                "--kit",
                "--endpoints",
                &rebuilt.endpoint,
                "--key",
                key,
                "--age-identity-file",
                identity,
                "--wait",
                "60s",
            ],
        )
    };

    // Bad input first: another identity, a kit of another cluster, a damaged kit: clear errors, nothing restored.
    let (ok, _, stderr) = restore(&snapshot, other_file.to_str().unwrap());
    assert!(!ok && stderr.contains("encrypted to other recipients"), "{stderr}");
    let store = scenario.s3.client("my-etcd-backups").unwrap();
    let foreign = "talos-operator-etcd-backups/other-cluster/etcd-snapshot-2025-10-04T11-30-00Z.db.age";
    let foreign_kit = teb_core::kit::kit_key(foreign, true);
    store.put(&object_store::path::Path::from(foreign_kit.as_str()), stored.clone().into()).await.unwrap();
    let (ok, _, stderr) =
        cli(&scenario, &["kit", "--key", foreign, "--age-identity-file", id, "--out", out.to_str().unwrap()]);
    assert!(
        !ok && stderr.contains("it is the kit of cluster \"my-controlplane\", not of \"other-cluster\""),
        "{stderr}"
    );
    let damaged = stored.slice(..stored.len() - 20);
    store.put(&object_store::path::Path::from(kit_key.as_str()), damaged.into()).await.unwrap();
    let (ok, _, stderr) = restore(&snapshot, id);
    assert!(!ok && stderr.contains("Failed to read the recovery kit"), "{stderr}");
    assert!(!rebuilt.has_recovery_snapshot() && rebuilt.with_restored(|etcd| etcd.is_none()).await, "nothing restored");

    // The kit as it was: the cluster comes back with the backup's data and nothing written after it.
    store.put(&object_store::path::Path::from(kit_key.as_str()), stored.into()).await.unwrap();
    let (ok, restored, stderr) = restore(&snapshot, id);
    assert!(ok, "{stderr}");
    assert_eq!(restored["restored"], true);
    let (kept, lost) = (
        rebuilt.restored_get("/registry/secrets/ns/before-42").await,
        rebuilt.restored_get("/registry/secrets/ns/after").await,
    );
    assert_eq!((kept.as_deref(), lost), (Some("kept"), None));
}

/// Upstream's container mode (v0.5.4, taloscontrolplane_controller.go `generateBundleConfig`): the
/// cluster is named after the TalosControlPlane, `clientEndpoint` is `null` (a nil `*[]string`) and so
/// are unset CIDRs; the Talos API is then the cluster name on port 50000. Here the control plane is
/// named `localhost`, the one name that reaches the emulator on loopback (its certificate names it, as
/// `machine.certSANs` would). It backs up, and its kit alone restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_mode_control_plane_backs_up_and_its_kit_restores() {
    let options = EmulatorOptions {
        control_planes: 1,
        workers: 0,
        listen: "127.0.0.1:50000".into(),
        cert_sans: vec!["localhost".into()],
        ..Default::default()
    };
    let scenario = Scenario::start_with("e2e-container", options, false, test_config()).await;
    scenario.emulator.etcd().put(b"/registry/secrets/ns/kept", b"kept").await.unwrap();
    let mut cp = fixtures::control_plane("localhost", &scenario.ns);
    cp.spec.mode = Some("container".into());
    cp.status = Some(teb_api::TalosControlPlaneStatus {
        bundle_config: Some(
            r#"{"clusterName":"localhost","endpoint":"https://localhost:6443","version":"v1.11.0","kubeVersion":"v1.34.1","sans":["localhost"],"podCIDR":null,"serviceCIDR":null,"clientEndpoint":null}"#.into(),
        ),
        secret_bundle: Some(scenario.emulator.ca.secrets_bundle_yaml()),
        state: Some("Ready".into()),
        config: Some("version: v1alpha1\nmachine:\n  type: controlplane\n".into()),
        observed_kube_version: Some("v1.34.1".into()),
    });
    create_control_plane(&scenario.admin, &cp).await.unwrap();
    scenario.apply(SPEC_SECRET).await;
    let identity = age::x25519::Identity::generate();
    let keys = tempfile::tempdir().unwrap();
    let identity_file = keys.path().join("identity.txt");
    std::fs::write(&identity_file, age::secrecy::ExposeSecret::expose_secret(&identity.to_string())).unwrap();
    let backup = format!(
        "{}  encryption:\n    age:\n      recipients: [\"{}\"]\n",
        backup_yaml("container", &endpoint_field(&scenario.s3.endpoint))
            .replace("name: my-controlplane", "name: localhost"),
        identity.to_public()
    );
    scenario.apply(&backup).await;
    let status = scenario.wait_finished("container").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    let snapshot = status.filename.clone().unwrap();
    assert!(snapshot.starts_with("talos-operator-etcd-backups/localhost/"), "{snapshot}");
    assert!(status.state_filename.is_some(), "a kit: {status:?}");

    // Etcd is lost; the kit's credentials and its endpoint (the cluster name, port 50000) restore it.
    scenario.emulator.etcd().put(b"/registry/secrets/ns/after", b"lost").await.unwrap();
    scenario.emulator.wipe_etcd();
    let id = identity_file.to_str().unwrap();
    let (ok, restored, stderr) = cli(&scenario, &["restore", "--kit", "--key", &snapshot, "--age-identity-file", id]);
    assert!(ok, "{stderr}");
    assert_eq!(restored["sha256"].as_str(), status.sha256.as_deref(), "{restored}");
    let (kept, lost) = (
        scenario.emulator.restored_get("/registry/secrets/ns/kept").await,
        scenario.emulator.restored_get("/registry/secrets/ns/after").await,
    );
    assert_eq!((kept.as_deref(), lost), (Some("kept"), None));
}

/// The state Secret upstream v0.5.4 stores beside each snapshot, byte for byte as it writes it:
/// sigs.k8s.io/yaml's rendering (keys sorted, `creationTimestamp: null`) of the `<controlplane>-state`
/// Secret sanitized to its name, namespace, labels, type and data (`uploadStateSecret` in
/// internal/controller/talosetcdbackup_controller.go; the data as `ensureStateSecret` in
/// taloscontrolplane_controller.go writes it).
fn upstream_state_yaml(namespace: &str, bundle: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = r#"{"clusterName":"my-controlplane","endpoint":"https://127.0.10.1:6443","version":"v1.11.0","kubeVersion":"v1.34.1"}"#;
    format!(
        "apiVersion: v1\ndata:\n  bundleConfig: {}\n  config: {}\n  observedKubeVersion: {}\n  secretBundle: {}\n  state: {}\n\
         kind: Secret\nmetadata:\n  creationTimestamp: null\n  labels:\n    talos.alperen.cloud/type: state\n  name: \
         my-controlplane-state\n  namespace: {namespace}\ntype: Opaque\n",
        b64(config),
        b64("version: v1alpha1\nmachine:\n  type: controlplane\n"),
        b64("v1.34.1"),
        b64(bundle),
        b64("Ready"),
    )
}

/// Taking over a bucket of the upstream operator (v0.5.4): `etcd-snapshot-<ts>.db` objects with no
/// metadata, each with its state Secret in plain text beside it, one snapshot corrupted. `import
/// --seal` checks every snapshot, seals each state file to an age recipient and deletes the
/// plaintext; upstream's schedule YAML with `importExisting` then makes the sound snapshots Ready
/// backups with their sealed kits and the corrupted one a Failed backup naming it; an imported
/// backup restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_bucket_is_taken_over_its_state_files_sealed_and_it_restores() {
    use kube::ResourceExt as _;
    let scenario = Scenario::one_control_plane("e2e-upstream").await;
    scenario.emulator.etcd().put(b"/registry/secrets/ns/kept", b"kept").await.unwrap();
    // A real snapshot, taken through a backup here and then laid out as upstream writes it.
    scenario.apply(&backup_yaml("seed", &endpoint_field(&scenario.s3.endpoint))).await;
    let seeded = scenario.wait_finished("seed").await.filename.unwrap();
    let (snapshot, _) = scenario.s3.get("my-etcd-backups", &seeded).await.unwrap();
    scenario.backups().delete("seed", &Default::default()).await.unwrap();
    let store = scenario.s3.client("my-etcd-backups").unwrap();
    for (key, _) in scenario.s3.objects("my-etcd-backups").await.unwrap() {
        store.delete(&object_store::path::Path::from(key.as_str())).await.unwrap();
    }
    let state = upstream_state_yaml(&scenario.ns, &scenario.emulator.ca.secrets_bundle_yaml());
    let prefix = "talos-operator-etcd-backups/my-controlplane";
    let stamps = ["2025-01-01T00-00-00Z", "2025-01-02T00-00-00Z", "2025-01-03T00-00-00Z"];
    for (i, stamp) in stamps.iter().enumerate() {
        let mut bytes = snapshot.to_vec();
        if i == 1 {
            // A meta page broken under a recomputed trailer.
            bytes.truncate(bytes.len() - 32);
            bytes[16] ^= 0xFF;
            let trailer = sha2::Sha256::digest(&bytes);
            bytes.extend_from_slice(&trailer);
        }
        let put = |key: String, bytes: Vec<u8>| {
            let store = store.clone();
            async move { store.put(&object_store::path::Path::from(key.as_str()), bytes.into()).await.unwrap() }
        };
        put(format!("{prefix}/etcd-snapshot-{stamp}.db"), bytes).await;
        put(format!("{prefix}/state-{stamp}.yaml"), state.clone().into_bytes()).await;
    }

    // The bucket side: every snapshot checked, every state file sealed, no plaintext left.
    let identity = age::x25519::Identity::generate();
    let keys = tempfile::tempdir().unwrap();
    let identity_file = keys.path().join("identity.txt");
    std::fs::write(&identity_file, age::secrecy::ExposeSecret::expose_secret(&identity.to_string())).unwrap();
    let recipient = identity.to_public().to_string();
    let id = identity_file.to_str().unwrap();
    let output = cli_output(&scenario, &["import", "--seal", "--age-recipient", &recipient, "--age-identity-file", id]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("1 of 3 snapshots are damaged"), "{stderr}");
    let lines: Vec<serde_json::Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let results: Vec<&str> = lines.iter().map(|l| l["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["verified", "damaged", "verified"], "{lines:?}");
    assert!(lines[1]["error"].as_str().unwrap().contains("not a sound etcd (bbolt) database"), "{lines:?}");
    let objects: Vec<String> =
        scenario.s3.objects("my-etcd-backups").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert!(!objects.iter().any(|k| k.ends_with(".yaml")), "no plaintext kit left: {objects:?}");
    for (line, stamp) in lines.iter().zip(stamps) {
        let sealed = line["sealed_kit"].as_str().unwrap();
        assert_eq!(sealed, format!("{prefix}/state-{stamp}.yaml.age"));
        let (bytes, _) = scenario.s3.get("my-etcd-backups", sealed).await.unwrap();
        let identities =
            teb_pipeline::codec::parse_identities(&std::fs::read_to_string(&identity_file).unwrap()).unwrap();
        let opened = teb_pipeline::codec::open(&bytes, &identities).unwrap();
        let kit = teb_core::kit::RecoveryKit::from_yaml(&String::from_utf8(opened).unwrap()).unwrap();
        assert_eq!(kit.backup_key, format!("{prefix}/etcd-snapshot-{stamp}.db"));
        assert_eq!(kit.secrets_bundle, scenario.emulator.ca.secrets_bundle_yaml());
    }

    // The Kubernetes side: upstream's schedule YAML, importing.
    scenario.apply(&scenario.schedule_yaml("taken-over", "0 2 * * *", "  importExisting: true\n")).await;
    let imported = scenario
        .eventually(60, "three imported backups", || async {
            let backups = scenario.backups_of("taken-over").await;
            (backups.len() == 3 && backups.iter().all(|b| is_ready(b) || is_failed(b))).then_some(backups)
        })
        .await;
    for (backup, stamp) in imported.iter().zip(stamps) {
        let status = backup.status.clone().unwrap();
        assert_eq!(backup.spec.import_key.as_deref(), Some(format!("{prefix}/etcd-snapshot-{stamp}.db").as_str()));
        if stamp == stamps[1] {
            let failed = condition(&status, FAILED).unwrap();
            assert!(failed.message.contains("not a sound etcd (bbolt) database") && failed.message.contains(stamp));
        } else {
            assert!(is_ready(backup), "{status:?}");
            assert_eq!(status.state_filename, Some(format!("{prefix}/state-{stamp}.yaml.age")));
            assert_eq!(status.sha256.as_deref(), Some(hex::encode(&snapshot[snapshot.len() - 32..]).as_str()));
        }
    }

    // An imported backup restores.
    scenario.emulator.etcd().put(b"/registry/secrets/ns/after", b"lost").await.unwrap();
    scenario.emulator.wipe_etcd();
    let restore = format!(
        "apiVersion: talos.alperen.cloud/v1alpha1\nkind: TalosEtcdRestore\nmetadata:\n  name: back\nspec:\n  \
         talosControlPlaneRef:\n    name: my-controlplane\n  backupRef:\n    name: {}\n",
        imported[2].name_any()
    );
    scenario.apply(&restore).await;
    let restored = scenario.restore_finished("back").await;
    assert!(restored.conditions.iter().any(|c| c.type_ == READY && c.reason == "RestoreSucceeded"), "{restored:?}");
    let (kept, lost) = (
        scenario.emulator.restored_get("/registry/secrets/ns/kept").await,
        scenario.emulator.restored_get("/registry/secrets/ns/after").await,
    );
    assert_eq!((kept.as_deref(), lost), (Some("kept"), None));
}
