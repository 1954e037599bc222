//! A real operator process killed with SIGKILL in the middle of an upload: after a restart the bucket
//! holds the snapshot and no unfinished multipart upload.

use std::time::Duration;

use kube::api::Api;
use teb_api::TalosEtcdBackup;
use teb_api::conditions::{self, READY};
use teb_testkit::azure::Azurite;
use teb_testkit::backup_objects;
use teb_testkit::emulator::EmulatorOptions;
use teb_testkit::gcs::GcsServer;
use teb_testkit::ground::{ProvingGround, wait_for};
use teb_testkit::process::ChildProcess;
use teb_testkit::spec::{SECRET_YAML, backup_yaml, endpoint_field};

fn operator(ground: &ProvingGround, log: &std::path::Path) -> ChildProcess {
    let mut command = ground.operator_command(env!("CARGO_BIN_EXE_talos-etcd-backup"), teb_testkit::free_port());
    // The restarted process is a new replica: it takes the Lease once the killed one's expires.
    command.args(["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "500ms"]);
    ChildProcess::spawn("operator", command, log).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_leaves_no_unfinished_upload_after_restart() {
    let ground =
        ProvingGround::start("crash", EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() }, false)
            .await;
    let (ns, admin, s3, emulator) = (&ground.ns, &ground.admin, &ground.s3, &ground.emulator);
    ground.fill_etcd(24).await;
    ground.control_plane_with_bundle().await;
    ground.apply(SECRET_YAML).await;
    // Slow enough that the process can be killed with a part uploaded and more to come.
    emulator.faults.limit_bandwidth(2 << 20);

    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("operator.log");
    let first = operator(&ground, &log);
    ground.apply(&backup_yaml("my-backup", &endpoint_field(&s3.endpoint))).await;
    let api: Api<TalosEtcdBackup> = Api::namespaced(admin.clone(), ns);
    wait_for("a part of the upload", async || s3.parts_received() >= 1).await;
    let recorded = api.get("my-backup").await.unwrap().status.unwrap().unfinished_uploads;
    drop(first); // SIGKILL
    let pending = s3.unfinished_uploads();
    assert_eq!(pending.len(), 1, "the killed process left its upload");
    assert_eq!(recorded.len(), 1, "and recorded it before sending parts");
    assert_eq!(recorded[0].upload_id, pending[0].upload_id);

    emulator.faults.clear();
    let _second = operator(&ground, &log);
    wait_for("Ready", async || {
        let status = api.get("my-backup").await.unwrap().status.unwrap_or_default();
        conditions::is_true(&status.conditions, READY)
    })
    .await;
    let status = api.get("my-backup").await.unwrap().status.unwrap();
    assert!(
        s3.unfinished_uploads().is_empty(),
        "{:?}\n{}",
        s3.unfinished_uploads(),
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(status.unfinished_uploads.is_empty());
    let objects = s3.objects("my-etcd-backups").await.unwrap();
    assert_eq!(objects.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>(), backup_objects(&status));
    assert!(objects.contains(&(status.filename.unwrap(), status.size.unwrap() as u64)));
    assert_eq!(status.attempts, 2, "the interrupted attempt counts");
}

/// A Secret `name` holding `key: value`.
fn secret(name: &str, key: &str, value: &str) -> k8s_openapi::api::core::v1::Secret {
    k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        string_data: Some([(key.to_owned(), value.to_owned())].into()),
        ..Default::default()
    }
}

/// The same on GCS, whose multipart upload is recorded and aborted after the restart, and on Azure,
/// whose staged blocks are discarded by committing an empty block list over them: the one blob is
/// the restarted attempt's, and nothing is left staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_to_gcs_or_azure_leaves_one_object_after_restart() {
    let (ground, gcs, azurite) = ground_with_backends("crash-backends", 24).await;
    let api: Api<TalosEtcdBackup> = Api::namespaced(ground.admin.clone(), &ground.ns);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("operator.log");
    for name in ["to-gcs", "to-azure"] {
        ground.emulator.faults.limit_bandwidth(2 << 20);
        let first = operator(&ground, &log);
        let store = if name == "to-gcs" { Store::Gcs(&gcs) } else { Store::Azure(&azurite) };
        ground.apply(&store.backup(name)).await;
        // A part received (an upload alone exists before the status write that records it).
        wait_for("a part on its way", async || match name {
            "to-gcs" => gcs.unfinished_parts() > 0,
            _ => !azurite.uncommitted_blobs("etcd-backups").await.unwrap().is_empty(),
        })
        .await;
        let recorded = api.get(name).await.unwrap().status.unwrap().unfinished_uploads;
        drop(first); // SIGKILL
        assert_eq!(recorded.len(), 1, "{name}: the upload was recorded before its first part");
        if name == "to-gcs" {
            assert_eq!(gcs.unfinished_uploads().len(), 1, "the killed process left its upload");
        }

        ground.emulator.faults.clear();
        let second = operator(&ground, &log);
        wait_for("Ready", async || {
            let status = api.get(name).await.unwrap().status.unwrap_or_default();
            conditions::is_true(&status.conditions, READY)
        })
        .await;
        drop(second);
        let status = api.get(name).await.unwrap().status.unwrap();
        assert!(status.unfinished_uploads.is_empty(), "{status:?}");
        assert_eq!(status.attempts, 2, "the interrupted attempt counts");
        let snapshot = (status.filename.clone().unwrap(), status.size.unwrap() as u64);
        let keys = |objects: &[(String, u64)]| objects.iter().map(|(key, _)| key.clone()).collect::<Vec<_>>();
        if name == "to-gcs" {
            assert!(gcs.unfinished_uploads().is_empty(), "{}", std::fs::read_to_string(&log).unwrap());
            let objects = gcs.objects("etcd-backups");
            assert_eq!(keys(&objects), backup_objects(&status));
            assert!(objects.contains(&snapshot));
        } else {
            let blobs = azurite.blobs("etcd-backups").await.unwrap();
            assert_eq!(keys(&blobs), backup_objects(&status));
            assert!(blobs.contains(&snapshot));
            // The killed attempt's staged blocks are discarded too (an empty block list committed
            // over them, then deleted): nothing staged is left.
            let staged = azurite.uncommitted_blobs("etcd-backups").await.unwrap();
            assert!(staged.is_empty(), "{staged:?}");
        }
    }
}

/// A proving ground with one control plane whose etcd holds `mib` MiB, and a GCS server and Azurite
/// with an `etcd-backups` bucket and container, their keys in Secrets.
async fn ground_with_backends(prefix: &str, mib: usize) -> (ProvingGround, GcsServer, Azurite) {
    let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
    let ground = ProvingGround::start(prefix, options, false).await;
    ground.fill_etcd(mib).await;
    ground.control_plane_with_bundle().await;
    let gcs = GcsServer::start().await.unwrap();
    gcs.create_bucket("etcd-backups");
    let azurite = Azurite::start().await.unwrap();
    azurite.create_container("etcd-backups").await.unwrap();
    ground.create_secret(&secret("gcs-key", "key.json", &gcs.service_account_key())).await;
    ground.create_secret(&secret("azure-key", "accountKey", teb_testkit::azure::ACCOUNT_KEY)).await;
    (ground, gcs, azurite)
}

/// Where a backend's servers say what is stored and what is left unfinished.
enum Store<'a> {
    S3(&'a teb_testkit::s3::S3Server),
    Gcs(&'a GcsServer),
    Azure(&'a Azurite),
}

impl Store<'_> {
    /// A TalosEtcdBackup `name` writing to this store (S3: the specification's example).
    fn backup(&self, name: &str) -> String {
        let storage = match self {
            Store::S3(s3) => return backup_yaml(name, &endpoint_field(&s3.endpoint)),
            Store::Gcs(gcs) => format!(
                "    gcs:\n      bucket: etcd-backups\n      endpoint: {}\n      serviceAccountKey: {{name: gcs-key, key: \
                 key.json}}\n",
                gcs.endpoint
            ),
            Store::Azure(azurite) => format!(
                "    azure:\n      account: {}\n      container: etcd-backups\n      endpoint: {}\n      accountKey: \
                 {{name: azure-key, key: accountKey}}\n",
                teb_testkit::azure::ACCOUNT,
                azurite.endpoint
            ),
        };
        format!(
            "apiVersion: talos.alperen.cloud/v1alpha1\nkind: TalosEtcdBackup\nmetadata:\n  name: {name}\nspec:\n  \
             talosControlPlaneRef:\n    name: my-controlplane\n  backupStorage:\n{storage}"
        )
    }

    async fn objects(&self) -> Vec<String> {
        let objects = match self {
            Store::S3(s3) => s3.objects("my-etcd-backups").await.unwrap(),
            Store::Gcs(gcs) => gcs.objects("etcd-backups"),
            Store::Azure(azurite) => azurite.blobs("etcd-backups").await.unwrap(),
        };
        let mut keys: Vec<String> = objects.into_iter().map(|(key, _)| key).collect();
        keys.sort();
        keys
    }

    /// Unfinished multipart uploads (S3, GCS) or blobs with staged blocks (Azure), as the server counts them.
    async fn unfinished(&self) -> Vec<String> {
        match self {
            Store::S3(s3) => s3.unfinished_uploads().into_iter().map(|u| u.key).collect(),
            Store::Gcs(gcs) => gcs.unfinished_uploads(),
            Store::Azure(azurite) => azurite.uncommitted_blobs("etcd-backups").await.unwrap(),
        }
    }
}

/// An operator killed at random moments while three backups run at once, on each backend: after each
/// restart every backup is Ready with exactly one object, and the servers count no unfinished upload
/// (nor, on Azure, staged blocks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_leaves_one_object_per_backup_and_nothing_unfinished() {
    const ROUNDS: usize = 3;
    const BACKUPS: usize = 3;
    let (ground, gcs, azurite) = ground_with_backends("crash-random", 16).await;
    ground.apply(SECRET_YAML).await;
    let api: Api<TalosEtcdBackup> = Api::namespaced(ground.admin.clone(), &ground.ns);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("operator.log");
    let mut kills = Vec::new();
    for (backend, store) in
        [("s3", Store::S3(&ground.s3)), ("gcs", Store::Gcs(&gcs)), ("azure", Store::Azure(&azurite))]
    {
        let mut names = Vec::new();
        for round in 0..ROUNDS {
            // About 4 s per backup: a kill lands before, during or after the uploads.
            ground.emulator.faults.limit_bandwidth(4 << 20);
            let first = operator(&ground, &log);
            for i in 0..BACKUPS {
                let name = format!("{backend}-{round}-{i}");
                ground.apply(&store.backup(&name)).await;
                names.push(name);
            }
            // A random moment in the 5 s after the first attempt started (the clock's nanoseconds: no
            // seed to keep): before an upload, between its steps, mid-stream, or after it.
            let round_names = &names[names.len() - BACKUPS..];
            wait_for("an attempt", async || {
                for name in round_names {
                    if api.get(name).await.unwrap().status.is_some_and(|s| s.attempts > 0) {
                        return true;
                    }
                }
                false
            })
            .await;
            let nanos = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().subsec_nanos();
            let moment = Duration::from_millis(u64::from(nanos) % 5000);
            tokio::time::sleep(moment).await;
            drop(first); // SIGKILL
            let left = store.unfinished().await.len();
            kills.push(format!(
                "{backend} round {round}: killed {moment:?} into the attempts, leaving {left} unfinished"
            ));

            ground.emulator.faults.clear();
            let second = operator(&ground, &log);
            for name in &names {
                wait_for("Ready", async || {
                    let status = api.get(name).await.unwrap().status.unwrap_or_default();
                    conditions::is_true(&status.conditions, READY)
                })
                .await;
            }
            drop(second);
            let log = std::fs::read_to_string(&log).unwrap();
            let mut recorded = Vec::new();
            for name in &names {
                let status = api.get(name).await.unwrap().status.unwrap();
                assert!(status.unfinished_uploads.is_empty(), "{name}: {status:?}\n{log}");
                recorded.extend(backup_objects(&status));
            }
            recorded.sort();
            assert_eq!(store.objects().await, recorded, "{backend} round {round}: the objects the backups name\n{log}");
            assert_eq!(store.unfinished().await, Vec::<String>::new(), "{backend} round {round}\n{log}");
        }
    }
    eprintln!("{}", kills.join("\n"));
}
