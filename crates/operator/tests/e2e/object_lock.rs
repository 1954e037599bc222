//! S3 Object Lock: every object of a backup written locked, on a bucket that refuses unchecked
//! writes and early deletes; retention and `deletionPolicy: Delete` wait for a lock to expire.

use kube::ResourceExt as _;
use kube::api::DeleteParams;
use teb_api::conditions::{OBJECT_LOCK_ACTIVE, SNAPSHOT_LOCKED};
use teb_testkit::spec::SPEC_REGION;

use super::backends::{backup, sealed, sealed_scenario};
use super::*;

/// The `backupStorage` lines of a backup in `bucket` of the scenario's S3 server, with `extra` S3
/// fields.
fn s3_storage(scenario: &Scenario, bucket: &str, extra: &str) -> String {
    format!(
        "    s3:\n      bucket: {bucket}\n      region: {SPEC_REGION}\n      endpoint: {}\n      accessKeyID:\n        \
         name: my-s3-credentials\n        key: accessKeyID\n      secretAccessKey:\n        name: \
         my-s3-credentials\n        key: secretAccessKey\n{extra}",
        scenario.s3.endpoint
    )
}

fn lock(mode: &str, retention: &str, indent: &str) -> String {
    format!("{indent}objectLock:\n{indent}  mode: {mode}\n{indent}  retention: {retention}\n")
}

/// A locked, KMS-encrypted, age-encrypted backup: snapshot and recovery kit are written locked (the
/// bucket takes a lock only with a checksum it checks, parts included), verify and restore; deleting
/// the backup waits for the lock, saying so, and then takes both. On a bucket without Object Lock the
/// backup fails naming the setting, leaving nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_backup_restores_and_goes_only_when_its_lock_expires() {
    let (scenario, recipient) = sealed_scenario("e2e-lock").await;
    scenario.apply(SPEC_SECRET).await;
    scenario.s3.create_bucket_with_object_lock("locked-backups", SPEC_REGION).unwrap();

    // A bucket created without Object Lock: refused, naming the setting; nothing left behind.
    let storage = s3_storage(&scenario, "my-etcd-backups", &lock("COMPLIANCE", "1d", "      "));
    scenario.apply(&backup("unlockable", &storage, "")).await;
    let status = scenario
        .expect_failed("unlockable", "Failed to upload snapshot to S3: CreateMultipartUpload", "InvalidRequest")
        .await;
    let message = &condition(&status, FAILED).unwrap().message;
    assert!(message.contains("Bucket is missing Object Lock Configuration"), "{message}");
    assert!(message.contains("Object Lock needs a bucket created with Object Lock enabled"), "{message}");
    scenario.assert_bucket_clean().await;

    let kms = "      serverSideEncryption: aws:kms\n      kmsKeyID: alias/etcd-backups\n";
    let storage = s3_storage(&scenario, "locked-backups", &format!("{kms}{}", lock("GOVERNANCE", "25s", "      ")));
    let started = jiff::Timestamp::now();
    scenario.apply(&backup("locked", &storage, &sealed(&recipient))).await;
    let status = scenario
        .eventually(90, "the verified locked backup", || async {
            let status = scenario.backups().get("locked").await.unwrap().status.unwrap_or_default();
            (status.verified.is_some() || teb_api::conditions::is_true(&status.conditions, FAILED)).then_some(status)
        })
        .await;
    assert_eq!(status.verified, Some(true), "{status:?}");
    let (key, kit) = (status.filename.clone().unwrap(), status.state_filename.clone().expect("a recovery kit"));
    let mut until = started;
    // The content report and the manifest are locked too, written last: the deletion waits for the
    // latest lock.
    let report = status.report_filename.clone().expect("a content report");
    let manifest = teb_core::manifest::manifest_key(&key, true);
    for object in [&key, &kit, &report, &manifest] {
        let lock = scenario.s3.lock_of("locked-backups", object).unwrap_or_else(|| panic!("{object} is not locked"));
        assert_eq!(lock.mode, "GOVERNANCE");
        let seconds = lock.until.duration_since(started).as_secs();
        assert!((25..=40).contains(&seconds), "{object} locked for {seconds} s");
        until = until.max(lock.until);
        let sse = scenario.s3.encryption_of("locked-backups", object);
        assert_eq!(sse.as_deref(), Some("aws:kms:alias/etcd-backups"), "{object}");
    }

    // etcd is lost: the locked, KMS- and age-encrypted backup restores.
    scenario.emulator.wipe_etcd();
    let restored = scenario.restore_sealed("back", "locked").await;
    assert_eq!(restored.sha256, status.sha256);

    // Deleted while locked: the backup stays, saying until when, and nothing is deleted early.
    scenario.backups().delete("locked", &DeleteParams::default()).await.unwrap();
    let waiting = scenario
        .eventually(30, "the SnapshotLocked condition", || async {
            let status = scenario.backups().get("locked").await.unwrap().status.unwrap_or_default();
            condition(&status, SNAPSHOT_LOCKED).cloned()
        })
        .await;
    assert_eq!((waiting.status.as_str(), waiting.reason.as_str()), ("True", OBJECT_LOCK_ACTIVE.as_str()));
    assert!(waiting.message.contains(&key) && waiting.message.contains(&until.to_string()), "{}", waiting.message);
    assert!(waiting.message.contains("set spec.deletionPolicy: Retain"), "{}", waiting.message);
    scenario.expect_event(None, "SnapshotLocked").await;
    assert_eq!(scenario.s3.objects("locked-backups").await.unwrap().len(), 4, "snapshot, kit, report, manifest");
    // Once the lock has expired, the backup goes with its snapshot and kit.
    scenario
        .eventually(60, "the backup and its objects to go", || async {
            let gone = scenario.backups().get_opt("locked").await.unwrap().is_none();
            (gone && scenario.s3.objects("locked-backups").await.unwrap().is_empty()).then_some(())
        })
        .await;
    assert!(jiff::Timestamp::now() >= until);
    assert_eq!(scenario.s3.faults.fired("locked object kept"), 0, "a delete of a locked version was tried");
    assert_eq!(scenario.s3.faults.fired("locked version hidden"), 0, "a locked version was hidden");
    // As README says: the bucket is versioned, so each delete left a delete marker before the version.
    for object in [&key, &kit, &report, &manifest] {
        let versions = scenario.s3.versions("locked-backups", object);
        let markers: Vec<bool> = versions.iter().map(|v| v.data.is_none()).collect();
        assert_eq!(markers, [false, true], "{object}: the version kept behind its delete marker");
    }
}

/// Retention with a lock shorter than the time a schedule keeps a backup, about equal to it, and
/// longer. Three schedules run every 4 s keeping 2 backups (so each is pruned some 8 to 12 s after
/// it ran), locked for 2 s, 8 s and 30 s. Shorter: pruned backups go at once. Longer: they stay,
/// deleting, with `SnapshotLocked`, until their lock expires, then go. Equal: either, whichever
/// comes last. No delete of a locked object is ever tried, and in the end each bucket holds exactly
/// the live backups' snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_waits_for_locks_shorter_equal_and_longer_than_it() {
    let scenario = Scenario::one_control_plane("e2e-lock-retention").await;
    let schedules = [("shorter", "2s"), ("equal", "8s"), ("longer", "30s")];
    for (name, retention) in schedules {
        let bucket = format!("{name}-locks");
        scenario.s3.create_bucket_with_object_lock(&bucket, SPEC_REGION).unwrap();
        let yaml = scenario
            .schedule_yaml(name, "@every 4s", "")
            .replace("  retention: 7\n", "  retention: 2\n")
            .replace("bucket: my-etcd-backups", &format!("bucket: {bucket}"))
            .replace(
                "          region: us-west-2\n",
                &format!("          region: us-west-2\n{}", lock("COMPLIANCE", retention, "          ")),
            );
        scenario.apply(&yaml).await;
    }

    // The storage check of a schedule whose bucket has no Object Lock says so.
    let unlockable = scenario.schedule_yaml("unlockable", "0 2 * * *", "").replace(
        "          region: us-west-2\n",
        &format!("          region: us-west-2\n{}", lock("GOVERNANCE", "1d", "          ")),
    );
    scenario.apply(&unlockable).await;

    // Watch 24 s of runs: which pruned backups waited for their lock.
    let mut waited: std::collections::BTreeMap<&str, std::collections::BTreeSet<String>> = Default::default();
    let mut runs: std::collections::BTreeMap<&str, std::collections::BTreeSet<String>> = Default::default();
    let watch_until = tokio::time::Instant::now() + Duration::from_secs(24);
    while tokio::time::Instant::now() < watch_until {
        for (name, _) in schedules {
            for b in scenario.backups_of(name).await {
                runs.entry(name).or_default().insert(b.name_any());
                let status = b.status.clone().unwrap_or_default();
                if b.metadata.deletion_timestamp.is_some() && condition(&status, SNAPSHOT_LOCKED).is_some() {
                    waited.entry(name).or_default().insert(b.name_any());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (name, _) in schedules {
        let patch = serde_json::json!({"spec": {"paused": true}});
        scenario.schedules().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        assert!(runs[name].len() >= 5, "{name}: only {:?}", runs[name]);
    }
    assert!(!waited.contains_key("shorter"), "a lock shorter than retention held a deletion: {waited:?}");
    assert!(waited.get("longer").is_some_and(|w| !w.is_empty()), "no pruned backup waited for its 30 s lock");

    // Every pruned backup goes once its lock has expired; each bucket holds the live backups' snapshots.
    for (name, _) in schedules {
        let bucket = format!("{name}-locks");
        scenario
            .eventually(60, &format!("{name}: pruned backups to go"), || async {
                let backups = scenario.backups_of(name).await;
                if backups.iter().any(|b| b.metadata.deletion_timestamp.is_some()) {
                    return None;
                }
                let mut live = stored_keys(&backups);
                live.sort();
                let stored: Vec<String> =
                    scenario.s3.objects(&bucket).await.unwrap().into_iter().map(|(key, _)| key).collect();
                (stored == live && live.len() >= 2).then_some(())
            })
            .await;
        for key in stored_keys(&scenario.backups_of(name).await) {
            let lock = scenario.s3.lock_of(&bucket, &key).unwrap_or_else(|| panic!("{key} is not locked"));
            assert_eq!(lock.mode, "COMPLIANCE");
        }
    }
    assert_eq!(scenario.s3.faults.fired("locked object kept"), 0, "a delete of a locked version was tried");
    assert_eq!(scenario.s3.faults.fired("locked version hidden"), 0, "a locked version was hidden");
    let status = scenario.schedule_status("unlockable").await;
    let storage = status.conditions.iter().find(|c| c.type_ == "StorageReady").expect("StorageReady");
    assert_eq!((storage.status.as_str(), storage.reason.as_str()), ("False", "StorageUnreachable"));
    assert!(storage.message.contains("Bucket is missing Object Lock Configuration"), "{}", storage.message);
}
