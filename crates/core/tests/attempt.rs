//! The backup attempt of the core, in process, against the test S3 server (SigV4, multipart uploads,
//! ListMultipartUploads, Object Lock) and the Talos emulator over a real etcd, with a journal that
//! "crashes": the attempt killed at each of its steps, then recovered from what its journal saved as
//! a restarted operator would, leaves exactly one backup (snapshot and kit) and no unfinished upload,
//! counted by the server. And a kit that cannot be stored never leaves a backup without it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use teb_core::backup::{self, Attempt, Journal, Record};
use teb_core::kit::{self, KitPolicy};
use teb_core::{BackupPlan, Error, KitSource, Outcome, Settings};
use teb_testkit::emulator::{EmulatorOptions, TalosEmulator};
use teb_testkit::s3::S3Server;

/// A journal whose saves reach `durable` (the status a restarted operator reads back) until the
/// `crash_at`-th save: that one is written first or not (`written`), then the process "dies" there,
/// which `killed` tells the test.
struct CrashingJournal {
    durable: Arc<Mutex<Record>>,
    record: Record,
    saves: u32,
    crash_at: Option<(u32, bool)>,
    killed: Arc<tokio::sync::Notify>,
}

impl CrashingJournal {
    fn new(durable: &Arc<Mutex<Record>>, crash_at: Option<(u32, bool)>) -> Self {
        let record = durable.lock().unwrap().clone();
        CrashingJournal { durable: durable.clone(), record, saves: 0, crash_at, killed: Default::default() }
    }
}

impl Journal for CrashingJournal {
    fn record(&mut self) -> &mut Record {
        &mut self.record
    }

    async fn save(&mut self) -> Result<(), Error> {
        self.saves += 1;
        let crash = self.crash_at.filter(|(at, _)| *at == self.saves);
        if crash.is_none_or(|(_, written)| written) {
            *self.durable.lock().unwrap() = self.record.clone();
        }
        if crash.is_some() {
            self.killed.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// Where an attempt is killed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kill {
    /// Before its intent (the key) is saved.
    BeforeIntent,
    /// With the intent saved, before the upload is created.
    AfterIntent,
    /// With the upload created but not recorded.
    BeforeUploadRecorded,
    /// With the upload recorded, before its first part.
    AfterUploadRecorded,
    /// With parts of the snapshot sent.
    MidStream,
    /// With the snapshot complete and its kit not stored.
    BeforeKit,
    /// With snapshot and kit stored, before the caller saved the result.
    BeforeResult,
}

const KILLS: [Kill; 7] = [
    Kill::BeforeIntent,
    Kill::AfterIntent,
    Kill::BeforeUploadRecorded,
    Kill::AfterUploadRecorded,
    Kill::MidStream,
    Kill::BeforeKit,
    Kill::BeforeResult,
];

impl Kill {
    /// The journal's crash: the save it dies at, and whether that save was written.
    fn crash_at(self) -> Option<(u32, bool)> {
        match self {
            Kill::BeforeIntent => Some((1, false)),
            Kill::AfterIntent => Some((1, true)),
            Kill::BeforeUploadRecorded => Some((2, false)),
            Kill::AfterUploadRecorded => Some((2, true)),
            _ => None,
        }
    }
}

struct Bench {
    s3: S3Server,
    emulator: TalosEmulator,
    settings: Settings,
}

impl Bench {
    async fn start() -> Self {
        let emulator = TalosEmulator::start(EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() })
            .await
            .unwrap();
        // 16 MiB: three parts, so that an attempt can be killed between them.
        let value = vec![b'x'; 512 * 1024];
        for i in 0..32 {
            emulator.etcd().put(format!("/big/{i}").as_bytes(), &value).await.unwrap();
        }
        let s3 = S3Server::start().await.unwrap();
        let mut settings = Settings::default();
        settings.limits.part_size = 5 << 20;
        Bench { s3, emulator, settings }
    }

    /// A backup of the emulated cluster into `bucket`, by the TalosEtcdBackup `owner`, with a plain kit.
    fn plan(&self, bucket: &str, owner: &str, object_lock: Option<teb_pipeline::ObjectLock>) -> BackupPlan {
        let talosconfig = self.emulator.talosconfig(&["os:etcd:backup"]).unwrap();
        let location = teb_testkit::s3::location(&self.s3.endpoint, bucket, teb_testkit::s3::REGION);
        let location = teb_pipeline::S3Location { object_lock, ..location };
        let storage =
            teb_pipeline::Storage::new(&teb_pipeline::StorageLocation::S3(location), Duration::from_secs(20)).unwrap();
        let cp = teb_testkit::fixtures::control_plane_with_bundle("cp", "ns", &self.emulator.ca, &[]);
        let status = cp.status.unwrap();
        BackupPlan {
            controlplane: "cp".into(),
            talos: teb_talos::Talosconfig::from_yaml(&talosconfig).unwrap().target(None).unwrap(),
            storage,
            encoding: Default::default(),
            owner: Some(owner.to_owned()),
            kit: Some(KitSource {
                secrets_bundle: status.secret_bundle.unwrap(),
                bundle_config: status.bundle_config.unwrap(),
                namespace: Some("ns".into()),
                state: status.state,
                machine_config: status.config,
                observed_kube_version: status.observed_kube_version,
            }),
            kit_policy: KitPolicy::Plaintext,
        }
    }

    fn unfinished(&self, bucket: &str) -> usize {
        self.s3.unfinished_uploads().iter().filter(|u| u.bucket == bucket).count()
    }

    async fn keys(&self, bucket: &str) -> Vec<String> {
        self.s3.objects(bucket).await.unwrap().into_iter().map(|(key, _)| key).collect()
    }

    /// A restarted process: recovery from what `durable` holds, then one attempt, whose result the
    /// caller saves (its record's uploads are all finished).
    async fn next_attempt(&self, plan: &BackupPlan, durable: &Arc<Mutex<Record>>) -> Result<Outcome, Error> {
        let journal = &mut CrashingJournal::new(durable, None);
        let owner = plan.owner.as_deref();
        let recovered = backup::recover(&plan.storage, owner, journal).await?;
        let attempt = Attempt { plan, settings: &self.settings, claim: &|_| true, progress: &|_| {} };
        let outcome = attempt.run(&key_now(), recovered.interrupted, journal).await;
        assert!(journal.record.uploads.is_empty() || outcome.is_err(), "{:?}", journal.record);
        *durable.lock().unwrap() = journal.record.clone();
        outcome
    }
}

fn key_now() -> String {
    backup::snapshot_key("cp", jiff::Timestamp::now(), Default::default())
}

/// Until `condition` holds, polled every 5 ms.
async fn until(condition: impl AsyncFn() -> bool) {
    while !condition().await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_killed_at_any_step_is_recovered_into_one_backup_and_no_upload() {
    let bench = Bench::start().await;
    for (i, kill) in KILLS.into_iter().enumerate() {
        let bucket = format!("kill-{i}");
        bench.s3.create_bucket(&bucket).unwrap();
        let plan = bench.plan(&bucket, &format!("uid-{i}"), None);
        let durable = Arc::new(Mutex::new(Record::default()));
        let journal = &mut CrashingJournal::new(&durable, kill.crash_at());
        let killed = journal.killed.clone();
        let parts = bench.s3.parts_received();
        match kill {
            Kill::MidStream => bench.emulator.faults.limit_bandwidth(4 << 20),
            // The kit's PutObject is refused (503) while the process dies: object_store retries it.
            Kill::BeforeKit => bench.s3.faults.fail_put_object(1000, false),
            _ => {}
        }
        let settings = bench.settings.clone();
        let attempt = Attempt { plan: &plan, settings: &settings, claim: &|_| true, progress: &|_| {} };
        let key = key_now();
        let run = attempt.run(&key, None, journal);
        let kill_now = async {
            match kill {
                Kill::MidStream => until(async || bench.s3.parts_received() > parts).await,
                Kill::BeforeKit => until(async || !bench.keys(&bucket).await.is_empty()).await,
                Kill::BeforeResult => std::future::pending().await,
                _ => killed.notified().await,
            }
        };
        tokio::select! {
            outcome = run => assert!(kill == Kill::BeforeResult && outcome.unwrap().kit.is_some(), "{kill:?}"),
            () = kill_now => {}
        }
        bench.emulator.faults.clear();
        bench.s3.faults.fail_put_object(0, false);
        let left = (bench.unfinished(&bucket), bench.keys(&bucket).await);
        eprintln!("{kill:?}: killed leaving {} unfinished uploads and objects {:?}", left.0, left.1);

        let outcome = bench.next_attempt(&plan, &durable).await.unwrap();
        let kit = kit::kit_key(&outcome.report.key, false);
        assert_eq!(outcome.kit.as_deref(), Some(kit.as_str()), "{kill:?}");
        let mut expected = vec![outcome.report.key.clone(), kit];
        // The content report, counted from the snapshot's stream, beside it: a new backup's, or the one
        // the killed attempt stored before its result was saved (an adopted snapshot is not counted).
        assert_eq!(outcome.report_key.is_some(), kill != Kill::BeforeKit, "{kill:?}: {:?}", outcome.contents);
        expected.extend(outcome.report_key.clone());
        // Its manifest, stored last: the new backup's, or stored now for the adopted one.
        assert!(outcome.manifest_key.is_some(), "{kill:?}");
        expected.extend(outcome.manifest_key.clone());
        expected.sort();
        assert_eq!(bench.keys(&bucket).await, expected, "{kill:?}: one backup");
        assert_eq!(bench.unfinished(&bucket), 0, "{kill:?}: no unfinished upload");
        let adopted = outcome.report.duration.is_zero();
        eprintln!("{kill:?}: recovered into {} ({})", outcome.report.key, if adopted { "adopted" } else { "new" });
        assert_eq!(adopted, matches!(kill, Kill::BeforeKit | Kill::BeforeResult), "{kill:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_never_complete_without_its_kit() {
    let bench = &Bench::start().await;
    let attempt_with = async |plan| {
        let durable = Arc::new(Mutex::new(Record::default()));
        let outcome = bench.next_attempt(plan, &durable).await;
        (outcome, durable)
    };

    // Refused for good (a bucket policy denying the kit's key): the attempt fails, nothing is left.
    bench.s3.create_bucket("denied").unwrap();
    let plan = bench.plan("denied", "uid-denied", None);
    bench.s3.faults.fail_put_object(1, true);
    let (outcome, _) = attempt_with(&plan).await;
    let error = outcome.unwrap_err();
    assert!(matches!(error, Error::KitNotStored { .. }) && !error.is_transient(), "{error}");
    assert!(error.to_string().contains("AccessDenied"), "{error}");
    assert_eq!((bench.keys("denied").await, bench.unfinished("denied")), (vec![], 0));

    // Refused past the client's retries (503): the attempt fails for a passing reason, leaving
    // nothing; the next stores snapshot and kit together.
    bench.s3.create_bucket("throttled").unwrap();
    let plan = bench.plan("throttled", "uid-throttled", None);
    bench.s3.faults.fail_put_object(4, false);
    let (outcome, durable) = attempt_with(&plan).await;
    let error = outcome.unwrap_err();
    assert!(matches!(error, Error::KitNotStored { .. }) && error.is_transient(), "{error}");
    assert_eq!((bench.keys("throttled").await, bench.unfinished("throttled")), (vec![], 0));
    let outcome = bench.next_attempt(&plan, &durable).await.unwrap();
    assert_eq!(bench.keys("throttled").await.len(), 4, "snapshot, kit, content report and manifest");
    assert!(outcome.kit.is_some() && outcome.report_key.is_some() && outcome.manifest_key.is_some());

    // With Object Lock the snapshot whose kit failed cannot be deleted: the next attempt adopts it
    // only with its kit stored (here: once the kit's write goes through), never without.
    bench.s3.create_bucket_with_object_lock("locked", teb_testkit::s3::REGION).unwrap();
    let lock =
        teb_pipeline::ObjectLock { mode: teb_pipeline::LockMode::Governance, retention: Duration::from_secs(3600) };
    let plan = bench.plan("locked", "uid-locked", Some(lock));
    for refusals in [6, 8] {
        bench.s3.faults.fail_put_object(refusals, false);
        let (outcome, durable) = attempt_with(&plan).await;
        assert!(matches!(outcome, Err(Error::KitNotStored { .. })), "{outcome:?}");
        let locked = durable.lock().unwrap().key.clone().unwrap();
        assert!(bench.keys("locked").await.contains(&locked), "the locked snapshot stays");
        let outcome = bench.next_attempt(&plan, &durable).await.unwrap();
        let kit = outcome.kit.clone().expect("never without its kit");
        assert!(bench.keys("locked").await.contains(&kit));
        // 6: the kit's write goes through on adoption; 8: the adoption's kit fails too, and the
        // attempt stores a new backup whole (the locked snapshot stays, without a kit, until its date).
        assert_eq!(outcome.report.key == locked, refusals == 6, "{refusals}: {outcome:?}");
        assert_eq!(bench.unfinished("locked"), 0);
        tokio::time::sleep(Duration::from_secs(1)).await; // the next key
    }
}
