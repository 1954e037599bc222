//! Azure Blob Storage (Azurite) and Google Cloud Storage (the testkit's XML-API server) through the
//! resources: a verified zstd+age backup with its recovery kit, restored and deleted; and each
//! refusal a backend gives ending as a clear condition with nothing left behind.

use teb_testkit::azure::{self, Azurite};
use teb_testkit::gcs::{GcsServer, Role};

use super::*;

/// The container or bucket the backups go to.
const PLACE: &str = "etcd-backups";

/// A TalosEtcdBackup of `my-controlplane` to `storage` (the lines under `backupStorage:`), with
/// `extra` spec lines.
pub(super) fn backup(name: &str, storage: &str, extra: &str) -> String {
    format!(
        "apiVersion: talos.alperen.cloud/v1alpha1\nkind: TalosEtcdBackup\nmetadata:\n  name: {name}\nspec:\n  \
         talosControlPlaneRef:\n    name: my-controlplane\n  backupStorage:\n{storage}{extra}"
    )
}

/// A Secret `name` holding `key: value`.
fn secret(name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        string_data: Some([(key.to_owned(), value.to_owned())].into()),
        ..Default::default()
    }
}

/// The server a scenario stores to, as the tests look into it.
enum Server<'a> {
    Azure(&'a Azurite),
    Gcs(&'a GcsServer),
}

impl Server<'_> {
    /// The keys stored in [`PLACE`].
    async fn keys(&self) -> Vec<String> {
        let objects = match self {
            Server::Azure(azurite) => azurite.blobs(PLACE).await.unwrap(),
            Server::Gcs(gcs) => gcs.objects(PLACE),
        };
        objects.into_iter().map(|(key, _)| key).collect()
    }

    /// What is half-written: staged blocks on Azure, open multipart uploads on GCS.
    async fn unfinished(&self) -> Vec<String> {
        match self {
            Server::Azure(azurite) => azurite.uncommitted_blobs(PLACE).await.unwrap(),
            Server::Gcs(gcs) => gcs.unfinished_uploads(),
        }
    }

    /// Asserts that nothing is half-written.
    async fn assert_nothing_unfinished(&self) {
        assert_eq!(self.unfinished().await, Vec::<String>::new());
    }
}

/// A scenario with 300 secrets in etcd, the control plane with its secrets bundle and an age key
/// pair in the Secret `backup-age` (`identity`); the recipient.
pub(super) async fn sealed_scenario(prefix: &str) -> (Scenario, String) {
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with(prefix, options, false, test_config()).await;
    for i in 0..300 {
        let value = format!("secret value {i} ").repeat(40);
        scenario.emulator.etcd().put(format!("/registry/secrets/ns/s-{i}").as_bytes(), value.as_bytes()).await.unwrap();
    }
    scenario.control_plane_with_bundle().await;
    let identity = age::x25519::Identity::generate();
    let secret_key = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_owned();
    scenario.create_secret(&secret("backup-age", "identity", &secret_key)).await;
    (scenario, identity.to_public().to_string())
}

/// The spec lines of a verified, zstd-compressed, age-encrypted backup that `Delete`s its objects.
pub(super) fn sealed(recipient: &str) -> String {
    format!(
        "  verify: true\n  compression: zstd\n  deletionPolicy: Delete\n  encryption:\n    age:\n      recipients: \
         [\"{recipient}\"]\n      identitySecretRef: {{name: backup-age, key: identity}}\n"
    )
}

/// Backs up to `storage` sealed, restores it through `source` (the restore spec's lines that say
/// where the backup is; `{key}` stands for its key) after etcd is wiped, then deletes it: snapshot
/// and kit leave the store with it.
async fn backup_verify_restore_delete(
    scenario: &Scenario,
    server: Server<'_>,
    storage: &str,
    recipient: &str,
    source: &str,
) {
    scenario.apply(&backup("sealed", storage, &sealed(recipient))).await;
    let status = scenario
        .eventually(90, "the verified backup", || async {
            let status = scenario.backups().get("sealed").await.unwrap().status.unwrap_or_default();
            (status.verified.is_some() || teb_api::conditions::is_true(&status.conditions, FAILED)).then_some(status)
        })
        .await;
    assert_eq!(status.verified, Some(true), "{status:?}");
    assert_eq!(status.encoding.as_deref(), Some("zstd+age"));
    let key = status.filename.clone().unwrap();
    assert!(key.starts_with("talos-operator-etcd-backups/my-controlplane/") && key.ends_with(".db.zst.age"), "{key}");
    assert!(status.state_filename.is_some(), "a recovery kit");
    let report = status.report_filename.clone().expect("a content report");
    assert!(report.ends_with(".json.age"), "sealed as the backup is: {report}");
    let mut stored = server.keys().await;
    stored.sort();
    assert_eq!(stored, teb_testkit::backup_objects(&status), "the snapshot, its kit and its report");
    server.assert_nothing_unfinished().await;

    // etcd is lost; the restore decrypts and decompresses on the way into EtcdRecover.
    scenario.emulator.wipe_etcd();
    let restore = format!(
        "apiVersion: talos.alperen.cloud/v1alpha1\nkind: TalosEtcdRestore\nmetadata:\n  name: back\nspec:\n  \
         talosControlPlaneRef:\n    name: my-controlplane\n{}  decryption:\n    age:\n      identitySecretRef: {{name: \
         backup-age, key: identity}}\n",
        source.replace("{key}", &key)
    );
    scenario.apply(&restore).await;
    let restored = scenario.restore_finished("back").await;
    let ready = restored.conditions.iter().find(|c| c.type_ == READY).unwrap_or_else(|| panic!("{restored:?}"));
    assert_eq!(ready.reason, "RestoreSucceeded");
    assert_eq!((restored.sha256.as_ref(), restored.size), (status.sha256.as_ref(), status.size));
    let value = scenario.emulator.restored_get("/registry/secrets/ns/s-299").await;
    assert_eq!(value, Some("secret value 299 ".repeat(40)));

    // Deleting the backup deletes both objects.
    scenario.backups().delete("sealed", &Default::default()).await.unwrap();
    scenario
        .eventually(30, "the snapshot and its kit to go", || async { server.keys().await.is_empty().then_some(()) })
        .await;
}

/// Applies a plain backup `name` to `storage` and expects it Failed with a message that starts
/// with `starts_with` and contains `contains`, quoting no `secret`, and the store as it was.
async fn expect_refused(
    scenario: &Scenario,
    server: &Server<'_>,
    (name, storage): (&str, &str),
    (starts_with, contains): (&str, &str),
    secret: &str,
) {
    let before = server.keys().await;
    scenario.apply(&backup(name, storage, "")).await;
    let status = scenario.expect_failed(name, starts_with, contains).await;
    let failed = condition(&status, FAILED).unwrap();
    assert!(!failed.message.contains(secret), "a secret leaked: {}", failed.message);
    assert_eq!(server.keys().await, before, "{name} stored nothing");
    server.assert_nothing_unfinished().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_blob_storage_backs_up_verifies_restores_and_refuses_clearly() {
    let (scenario, recipient) = sealed_scenario("e2e-azure").await;
    let azurite = Azurite::start().await.unwrap();
    azurite.create_container(PLACE).await.unwrap();
    let server = Server::Azure(&azurite);
    let storage = |container: &str, credential: &str| {
        format!(
            "    azure:\n      account: {}\n      container: {container}\n      endpoint: {}\n      {credential}\n",
            azure::ACCOUNT,
            azurite.endpoint
        )
    };
    scenario.create_secret(&secret("azure-key", "accountKey", azure::ACCOUNT_KEY)).await;
    let with_key = storage(PLACE, "accountKey: {name: azure-key, key: accountKey}");

    // Refusals first, while the container is empty.
    let wrong = "bm90IHRoZSBhY2NvdW50IGtleQ==";
    scenario.create_secret(&secret("azure-wrong-key", "accountKey", wrong)).await;
    let wrong_key = storage(PLACE, "accountKey: {name: azure-wrong-key, key: accountKey}");
    let upload_failed = "Failed to upload snapshot to Azure Blob Storage";
    let check_credentials = "check the account key or SAS token";
    expect_refused(&scenario, &server, ("wrong-key", &wrong_key), (upload_failed, check_credentials), wrong).await;
    let expired = azurite.container_sas(PLACE, jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1));
    scenario.create_secret(&secret("azure-expired", "sasToken", &expired)).await;
    let expired_sas = storage(PLACE, "sasToken: {name: azure-expired, key: sasToken}");
    let signature = expired.split("sig=").nth(1).unwrap();
    expect_refused(&scenario, &server, ("expired-sas", &expired_sas), (upload_failed, check_credentials), signature)
        .await;
    let missing = storage("no-such-container", "accountKey: {name: azure-key, key: accountKey}");
    let not_found = "container \"no-such-container\" of account \"tebbackups\" failed with Azure Blob Storage error \
                     ContainerNotFound";
    expect_refused(&scenario, &server, ("no-container", &missing), (upload_failed, not_found), azure::ACCOUNT_KEY)
        .await;

    // A valid SAS works as well as the account key.
    let sas = azurite.container_sas(PLACE, jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1));
    scenario.create_secret(&secret("azure-sas", "sasToken", &sas)).await;
    let by_sas = storage(PLACE, "sasToken: {name: azure-sas, key: sasToken}");
    scenario.apply(&backup("by-sas", &by_sas, "  deletionPolicy: Delete\n")).await;
    let status = scenario.wait_finished("by-sas").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    assert_eq!(server.keys().await, teb_testkit::backup_objects(&status));
    scenario.backups().delete("by-sas", &Default::default()).await.unwrap();
    scenario.eventually(30, "the by-sas backup to go", || async { server.keys().await.is_empty().then_some(()) }).await;

    // The restore names the container and key itself, as one of another cluster would.
    let source = format!("  backupStorage:\n{}  key: {{key}}\n", with_key);
    backup_verify_restore_delete(&scenario, server, &with_key, &recipient, &source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_cloud_storage_backs_up_verifies_restores_and_refuses_clearly() {
    let (scenario, recipient) = sealed_scenario("e2e-gcs").await;
    let gcs = GcsServer::start().await.unwrap();
    gcs.create_bucket(PLACE);
    let server = Server::Gcs(&gcs);
    let storage = |bucket: &str, secret: &str| {
        format!(
            "    gcs:\n      bucket: {bucket}\n      endpoint: {}\n      serviceAccountKey: {{name: {secret}, key: \
             key.json}}\n",
            gcs.endpoint
        )
    };
    scenario.create_secret(&secret("gcs-key", "key.json", &gcs.service_account_key())).await;
    let upload_failed = "Failed to upload snapshot to GCS";

    // A key the server does not know, a bucket that does not exist, a part the server keeps failing.
    let unknown = GcsServer::unknown_key().unwrap();
    scenario.create_secret(&secret("gcs-unknown", "key.json", &unknown)).await;
    let private_key = serde_json::from_str::<serde_json::Value>(&unknown).unwrap()["private_key"].as_str().unwrap()
        [40..100]
        .to_owned();
    expect_refused(
        &scenario,
        &server,
        ("unknown-key", &storage(PLACE, "gcs-unknown")),
        (upload_failed, "AuthenticationRequired"),
        &private_key,
    )
    .await;
    let server_key = serde_json::from_str::<serde_json::Value>(&gcs.service_account_key()).unwrap()["private_key"]
        .as_str()
        .unwrap()[40..100]
        .to_owned();
    expect_refused(
        &scenario,
        &server,
        ("no-bucket", &storage("no-such-bucket", "gcs-key")),
        (upload_failed, "NoSuchBucket"),
        &server_key,
    )
    .await;
    gcs.faults.fail_upload_part(1, 1000);
    expect_refused(
        &scenario,
        &server,
        ("part-fails", &storage(PLACE, "gcs-key")),
        (upload_failed, "UploadPart"),
        &server_key,
    )
    .await;
    let status = scenario.backups().get("part-fails").await.unwrap().status.unwrap();
    assert_eq!(status.attempts, 2, "a server error is retried");
    gcs.faults.fail_upload_part(0, 0);

    let source = "  backupRef:\n    name: sealed\n";
    backup_verify_restore_delete(&scenario, server, &storage(PLACE, "gcs-key"), &recipient, source).await;

    // README's least role for backups alone: roles/storage.objectCreator (nothing is read or deleted).
    let server = Server::Gcs(&gcs);
    let creator = gcs.service_account("creator@teb-test.iam.gserviceaccount.com", Role::ObjectCreator).unwrap();
    scenario.create_secret(&secret("gcs-creator", "key.json", &creator)).await;
    scenario.apply(&backup("write-only", &storage(PLACE, "gcs-creator"), "  recoveryKit: Plaintext\n")).await;
    let status = scenario.wait_finished("write-only").await;
    assert!(condition(&status, READY).is_some(), "{status:?}");
    let mut stored = server.keys().await;
    stored.sort();
    assert!(status.state_filename.is_some() && status.report_filename.is_some(), "{status:?}");
    assert_eq!(stored, teb_testkit::backup_objects(&status), "the snapshot, its kit and its report");
    server.assert_nothing_unfinished().await;
}

/// A TalosEtcdBackupSchedule `name` of `my-controlplane` every 3 s keeping 2, to `storage` (the lines
/// under a backup's `backupStorage:`, as [`backup`] takes them).
fn schedule(name: &str, storage: &str) -> String {
    let storage: String = storage.lines().map(|line| format!("    {line}\n")).collect();
    format!(
        "apiVersion: talos.alperen.cloud/v1alpha1\nkind: TalosEtcdBackupSchedule\nmetadata:\n  name: {name}\nspec:\n  \
         schedule: \"@every 3s\"\n  retention: 2\n  backupTemplate:\n    spec:\n      talosControlPlaneRef:\n        \
         name: my-controlplane\n      backupStorage:\n{storage}"
    )
}

/// Schedules to `server`: each of `refused` (name, storage, what the message names) has `StorageReady`
/// False naming the place and the service's refusal before any backup runs and stores nothing; one
/// to `good` is True (`accepted` is its message), and its runs pruned to retention leave the place
/// holding exactly the live backups' objects, with nothing unfinished.
async fn schedules_check_storage_and_prune(
    scenario: &Scenario,
    server: &Server<'_>,
    refused: &[(&'static str, String, &str)],
    good: &str,
    accepted: &str,
) {
    for (name, storage, _) in refused {
        scenario.apply(&schedule(name, storage)).await;
    }
    scenario.apply(&schedule("every3s", good)).await;
    let storage_ready = |name: &'static str| async move {
        let status = scenario.schedule_status(name).await;
        status.conditions.iter().find(|c| c.type_ == "StorageReady").map(|c| (c.status.clone(), c.message.clone()))
    };
    for (name, _, names) in refused {
        let (ready, message) = scenario.eventually(30, "the refused check", || storage_ready(name)).await;
        assert_eq!(ready, "False", "{name}: {message}");
        assert!(message.contains(" refused a test upload: ") && message.contains(names), "{name}: {message}");
        assert!(scenario.backups_of(name).await.iter().all(|b| !is_ready(b)), "{name} stored a backup");
    }
    let (ready, message) = scenario.eventually(30, "the good check", || storage_ready("every3s")).await;
    assert_eq!((ready.as_str(), message.as_str()), ("True", accepted));

    // Four runs, two kept: the place holds exactly the live backups' objects.
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    scenario
        .eventually(60, "four runs and retention to prune to 2", || async {
            let backups = scenario.backups_of("every3s").await;
            let mut seen = seen.lock().unwrap();
            seen.extend(backups.iter().filter_map(|b| b.metadata.name.clone()));
            let ready = backups.iter().filter(|b| is_ready(b)).count();
            (seen.len() >= 4 && ready == 2 && backups.len() <= 3).then_some(())
        })
        .await;
    scenario
        .eventually(30, "the place to hold exactly the live backups' objects", || async {
            let backups = scenario.backups_of("every3s").await;
            let mut live = stored_keys(&backups);
            live.sort();
            let mut objects = server.keys().await;
            objects.sort();
            (objects == live && backups.len() == 2).then_some(())
        })
        .await;
    // An abort the store did not take at once is retried until it does.
    scenario
        .eventually(30, "nothing unfinished", || async { server.unfinished().await.is_empty().then_some(()) })
        .await;
}

/// A schedule to GCS: its storage check names the bucket and GCS's refusal, and retention deletes the
/// pruned backups' objects from the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_to_gcs_checks_its_bucket_and_prunes_to_retention() {
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-gcs-schedule", options, false, test_config()).await;
    scenario.control_plane_with_bundle().await;
    let gcs = GcsServer::start().await.unwrap();
    gcs.create_bucket(PLACE);
    scenario.create_secret(&secret("gcs-key", "key.json", &gcs.service_account_key())).await;
    let viewer = gcs.service_account("viewer@teb-test.iam.gserviceaccount.com", Role::ObjectViewer).unwrap();
    scenario.create_secret(&secret("gcs-viewer", "key.json", &viewer)).await;
    let storage = |bucket: &str, secret: &str| {
        format!(
            "    gcs:\n      bucket: {bucket}\n      endpoint: {}\n      serviceAccountKey: {{name: {secret}, key: \
             key.json}}\n",
            gcs.endpoint
        )
    };
    // A check killed between its test upload's start and its abort left that upload: the next check
    // aborts it (the helper asserts that nothing unfinished is left).
    let check_key = "talos-operator-etcd-backups/my-controlplane/.storage-check";
    gcs.storage(PLACE).unwrap().create_upload(check_key, &[]).await.unwrap();
    let refused = [
        ("missing", storage("no-such-bucket", "gcs-key"), "NoSuchBucket"),
        ("viewer", storage(PLACE, "gcs-viewer"), "does not have storage.multipartUploads.create access"),
    ];
    let accepted = "GCS bucket \"etcd-backups\" accepted a test upload";
    let good = storage(PLACE, "gcs-key");
    schedules_check_storage_and_prune(&scenario, &Server::Gcs(&gcs), &refused, &good, accepted).await;
}

/// A schedule to Azure: the storage check talks to Azure (a block staged, committed and deleted), so
/// a wrong account key, an expired SAS, a read-only SAS and a missing container each show
/// `StorageReady` False naming Azure's refusal before any backup runs; retention prunes the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_to_azure_checks_its_container_and_prunes_to_retention() {
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let scenario = Scenario::start_with("e2e-azure-schedule", options, false, test_config()).await;
    scenario.control_plane_with_bundle().await;
    let azurite = Azurite::start().await.unwrap();
    azurite.create_container(PLACE).await.unwrap();
    let storage = |container: &str, secret: &str, key: &str| {
        format!(
            "    azure:\n      account: {}\n      container: {container}\n      endpoint: {}\n      {key}: {{name: {secret}, \
             key: {key}}}\n",
            azure::ACCOUNT,
            azurite.endpoint
        )
    };
    let hour = jiff::SignedDuration::from_hours(1);
    let secrets = [
        ("azure-key", "accountKey", azure::ACCOUNT_KEY.to_owned()),
        ("azure-wrong-key", "accountKey", "bm90IHRoZSBhY2NvdW50IGtleQ==".to_owned()),
        ("azure-expired", "sasToken", azurite.container_sas(PLACE, jiff::Timestamp::now() - hour)),
        ("azure-read-only", "sasToken", azurite.container_sas_with(PLACE, jiff::Timestamp::now() + hour, "rl")),
    ];
    for (name, key, value) in &secrets {
        scenario.create_secret(&secret(name, key, value)).await;
    }
    let refused = [
        ("wrong-key", storage(PLACE, "azure-wrong-key", "accountKey"), "AuthorizationFailure"),
        ("expired-sas", storage(PLACE, "azure-expired", "sasToken"), "AuthorizationFailure"),
        ("read-only-sas", storage(PLACE, "azure-read-only", "sasToken"), "AuthorizationPermissionMismatch"),
        ("no-container", storage("no-such-container", "azure-key", "accountKey"), "ContainerNotFound"),
    ];
    let accepted = format!("Container \"{PLACE}\" of account \"{}\" accepted a test upload", azure::ACCOUNT);
    let good = storage(PLACE, "azure-key", "accountKey");
    schedules_check_storage_and_prune(&scenario, &Server::Azure(&azurite), &refused, &good, &accepted).await;
}
