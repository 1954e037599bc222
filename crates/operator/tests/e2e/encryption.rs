//! Compressed and age-encrypted backups through the resources, opened with the standard tools.

use super::*;

/// Runs `script` with sh in `dir`; its standard output, trimmed.
fn shell(dir: &std::path::Path, script: &str) -> String {
    let output = std::process::Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap();
    assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_compressed_backups_verify_and_restore_through_resources() {
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
    let restored = scenario.restore_sealed("unseal", "sealed").await;
    assert_eq!((restored.sha256.as_ref(), restored.size), (status.sha256.as_ref(), Some(size)));
    let value = scenario.emulator.restored_get("/registry/secrets/ns/s-99").await;
    assert_eq!(value, Some("secret value 99 ".repeat(50)));
}
