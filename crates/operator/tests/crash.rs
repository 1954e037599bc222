//! A real operator process killed with SIGKILL in the middle of an upload: after a restart the bucket
//! holds the snapshot and no unfinished multipart upload.

use kube::api::Api;
use teb_api::TalosEtcdBackup;
use teb_api::conditions::{self, READY};
use teb_testkit::emulator::EmulatorOptions;
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
    assert_eq!(
        s3.objects("my-etcd-backups").await.unwrap(),
        vec![(status.filename.unwrap(), status.size.unwrap() as u64)]
    );
    assert_eq!(status.attempts, 2, "the interrupted attempt counts");
}
