//! A real operator process killed with SIGKILL in the middle of an upload: after a restart the bucket
//! holds the snapshot and no unfinished multipart upload.

use std::process::Command;
use std::time::Duration;

use kube::api::Api;
use teb_api::TalosEtcdBackup;
use teb_api::conditions::{self, READY};
use teb_testkit::emulator::{EmulatorOptions, TalosEmulator};
use teb_testkit::fixtures;
use teb_testkit::kube::{KubeEnv, apply_yaml, create_control_plane};
use teb_testkit::process::ChildProcess;
use teb_testkit::s3::S3Server;
use teb_testkit::spec::{SECRET_YAML, backup_yaml, endpoint_field};

fn operator(env: &KubeEnv, ns: &str, log: &std::path::Path) -> ChildProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_talos-etcd-backup"));
    command
        .arg("operator")
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path("operator"))
        .args(["--namespace", ns, "--part-size-mib", "5", "--retry-backoff", "1s"])
        // The restarted process is a new replica: it takes the Lease once the killed one's expires.
        .args(["--lease-duration", "3s", "--renew-deadline", "2s", "--retry-period", "500ms"])
        .args(["--health-addr", &format!("127.0.0.1:{}", teb_testkit::free_port())])
        .env("RUST_LOG", "info");
    ChildProcess::spawn("operator", command, log).unwrap()
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_leaves_no_unfinished_upload_after_restart() {
    let env = KubeEnv::shared().unwrap();
    let ns = env.namespace("crash").await.unwrap();
    let admin = env.admin_client().await.unwrap();
    let s3 = S3Server::start().await.unwrap();
    s3.create_bucket_in("my-etcd-backups", teb_testkit::spec::SPEC_REGION).unwrap();
    let emulator =
        TalosEmulator::start(EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() }).await.unwrap();
    let value = vec![b'x'; 512 * 1024];
    for i in 0..24 {
        emulator.etcd().put(format!("/big/{i}").as_bytes(), &value).await.unwrap();
    }
    let cp = fixtures::control_plane_with_bundle(
        "my-controlplane",
        &ns,
        &emulator.ca,
        std::slice::from_ref(&emulator.endpoint),
    );
    create_control_plane(&admin, &cp).await.unwrap();
    apply_yaml(&admin, SECRET_YAML, Some(&ns)).await.unwrap();
    // Slow enough that the process can be killed with a part uploaded and more to come.
    emulator.faults.limit_bandwidth(2 << 20);

    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("operator.log");
    let first = operator(env, &ns, &log);
    apply_yaml(&admin, &backup_yaml("my-backup", &endpoint_field(&s3.endpoint)), Some(&ns)).await.unwrap();
    let api: Api<TalosEtcdBackup> = Api::namespaced(admin.clone(), &ns);
    wait_for("a part of the upload", async || s3.parts_received() >= 1).await;
    let recorded = api.get("my-backup").await.unwrap().status.unwrap().unfinished_uploads;
    drop(first); // SIGKILL
    let pending = s3.unfinished_uploads();
    assert_eq!(pending.len(), 1, "the killed process left its upload");
    assert_eq!(recorded.len(), 1, "and recorded it before sending parts");
    assert_eq!(recorded[0].upload_id, pending[0].upload_id);

    emulator.faults.clear();
    let _second = operator(env, &ns, &log);
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
