//! Two operator processes on the real apiserver: only the Lease holder runs backups; when it is killed
//! the other takes over within the lease duration, and every backup ends Ready with exactly one object.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use teb_api::TalosEtcdBackup;
use teb_api::conditions::{self, READY};
use teb_testkit::emulator::EmulatorOptions;
use teb_testkit::fixtures;
use teb_testkit::ground::ProvingGround;
use teb_testkit::kube::create_control_plane;
use teb_testkit::process::ChildProcess;
use teb_testkit::spec::{SECRET_YAML, backup_yaml, endpoint_field};

const LEASE_DURATION: Duration = Duration::from_secs(4);

/// An operator process and the port of its health server (`/metrics`).
fn replica(ground: &ProvingGround, identity: &str, log: &std::path::Path) -> (ChildProcess, u16) {
    let port = teb_testkit::free_port();
    let mut command = ground.operator_command(env!("CARGO_BIN_EXE_talos-etcd-backup"), port);
    command
        .args(["--leader-election-name", &format!("ha-{}", ground.ns), "--lease-duration", "4s"])
        .args(["--renew-deadline", "3s", "--retry-period", "500ms"])
        .env("POD_NAME", identity)
        .env("POD_NAMESPACE", "talos-etcd-backup");
    (ChildProcess::spawn(identity, command, log).unwrap(), port)
}

/// GET /metrics of the replica on `port`, as Prometheus would scrape it.
async fn metrics_of(port: u16) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut connection = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    connection.write_all(b"GET /metrics HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    connection.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get_opt(name).await.unwrap().and_then(|l| l.spec).and_then(|s| s.holder_identity).filter(|h| !h.is_empty())
}

async fn ready_count(api: &Api<TalosEtcdBackup>) -> usize {
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|b| b.status.as_ref().is_some_and(|s| conditions::is_true(&s.conditions, READY)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_dies_and_every_backup_runs_once() {
    let ground =
        ProvingGround::start("ha", EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() }, false)
            .await;
    let (ns, admin, s3, emulator) = (&ground.ns, &ground.admin, &ground.s3, &ground.emulator);
    emulator.etcd().put(b"/big/0", &vec![b'x'; 1 << 20]).await.unwrap();
    // About a second per backup, so that some are running when the leader dies.
    emulator.faults.limit_bandwidth(1 << 20);
    // One control plane per backup: keys have one-second resolution, so backups of one control plane
    // started in the same second would share a key.
    for i in 0..20 {
        let name = format!("cp-{i:02}");
        let cp = fixtures::control_plane_with_bundle(&name, ns, &emulator.ca, std::slice::from_ref(&emulator.endpoint));
        create_control_plane(admin, &cp).await.unwrap();
    }
    ground.apply(SECRET_YAML).await;

    let logs = tempfile::tempdir().unwrap();
    let log = |id: &str| logs.path().join(format!("{id}.log"));
    let (a, port_a) = replica(&ground, "replica-a", &log("replica-a"));
    let (b, port_b) = replica(&ground, "replica-b", &log("replica-b"));
    let mut replicas = [Some(a), Some(b)];
    let leases: Api<Lease> = Api::namespaced(admin.clone(), "talos-etcd-backup");
    let lease = format!("ha-{ns}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let leader = loop {
        if let Some(holder) = holder(&leases, &lease).await {
            break holder;
        }
        assert!(tokio::time::Instant::now() < deadline, "nobody took the Lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (leader_index, standby, standby_port) =
        if leader == "replica-a" { (0, "replica-b", port_b) } else { (1, "replica-a", port_a) };

    let api: Api<TalosEtcdBackup> = Api::namespaced(admin.clone(), ns);
    for i in 0..20 {
        let yaml = backup_yaml(&format!("backup-{i:02}"), &endpoint_field(&s3.endpoint))
            .replace("name: my-controlplane", &format!("name: cp-{i:02}"));
        ground.apply(&yaml).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ready_count(&api).await < 4 {
        assert!(tokio::time::Instant::now() < deadline, "the leader made no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The standby ran nothing: its own metrics count no attempt, running or finished.
    let standby_metrics = metrics_of(standby_port).await;
    assert!(standby_metrics.contains("teb_backups_in_progress 0"), "{standby_metrics}");
    for ran in ["teb_backups_total{", "teb_errors_total{", "teb_backup_duration_seconds_count{"] {
        assert!(!standby_metrics.contains(ran), "the standby ran a backup ({ran}):\n{standby_metrics}");
    }

    // SIGKILL the leader; the standby must lead within the lease duration (plus a retry period).
    replicas[leader_index].take();
    let killed = tokio::time::Instant::now();
    while holder(&leases, &lease).await.as_deref() != Some(standby) {
        assert!(killed.elapsed() < LEASE_DURATION + Duration::from_secs(4), "no takeover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let takeover = killed.elapsed();
    // The Lease expires a lease duration after the standby last saw it renewed; the last renewal may
    // precede the kill by a retry period, and the standby sees it up to a retry period late.
    assert!(takeover <= LEASE_DURATION + Duration::from_secs(2), "took over after {takeover:?}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while ready_count(&api).await < 20 {
        assert!(tokio::time::Instant::now() < deadline, "backups did not all finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Exactly one object per backup, each the one its status names; nothing unfinished.
    let mut keys: Vec<String> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|b| b.status.unwrap().filename.unwrap())
        .collect();
    keys.sort();
    let objects = teb_testkit::snapshots(&s3.objects("my-etcd-backups").await.unwrap());
    let stored: Vec<String> = objects.into_iter().map(|(k, _)| k).collect();
    assert_eq!(stored.len(), 20, "one snapshot per backup: {stored:?}");
    let mut stored_sorted = stored.clone();
    stored_sorted.sort();
    assert_eq!(keys, stored_sorted);
    // An upload whose ID was recorded is aborted by the new leader; one created in the milliseconds
    // between CreateMultipartUpload and the status write that records it is found by listing the
    // uploads at the attempt key recorded before it, and aborted too: nothing is left.
    let unfinished = s3.unfinished_uploads();
    assert!(unfinished.is_empty(), "{unfinished:?}");
    eprintln!("takeover after {takeover:?}; nothing unfinished");
}
