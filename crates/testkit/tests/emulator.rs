//! The Talos API emulator behaves like Talos where a backup can tell: mTLS and roles, routing,
//! 1 KiB streaming of a real etcd snapshot, and each fault mode.

use std::time::Duration;

use futures::StreamExt;
use rcgen::ExtendedKeyUsagePurpose as Eku;
use teb_talos::proto::machine::machine_service_client::MachineServiceClient;
use teb_talos::{Credentials, TalosClient, Talosconfig, Target};
use teb_testkit::emulator::{BootStage, EmulatorOptions, TalosEmulator, TalosVersion};
use teb_testkit::fixtures::CaKeyType;
use teb_testkit::fixtures::OsCa;

async fn emulator() -> TalosEmulator {
    TalosEmulator::start(EmulatorOptions::default()).await.expect("emulator starts")
}

async fn emulator_with(options: EmulatorOptions) -> TalosEmulator {
    TalosEmulator::start(options).await.expect("emulator starts")
}

fn target(emulator: &TalosEmulator, credentials: Credentials) -> Target {
    Target { endpoints: vec![emulator.endpoint.clone()], nodes: vec![], credentials }
}

fn role_target(emulator: &TalosEmulator, roles: &[&str]) -> Target {
    let yaml = emulator.talosconfig(roles).unwrap();
    Talosconfig::from_yaml(&yaml).unwrap().target(None).unwrap()
}

async fn client(target: &Target) -> Result<TalosClient, teb_talos::Error> {
    TalosClient::connect(target, Duration::from_secs(5)).await
}

/// Drains a snapshot; returns the bytes and the size of each message.
async fn drain(client: &TalosClient, node: &str) -> Result<(Vec<u8>, Vec<usize>), teb_talos::Error> {
    let mut stream = Box::pin(client.etcd_snapshot(node).await?);
    let (mut bytes, mut sizes) = (Vec::new(), Vec::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        sizes.push(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, sizes))
}

fn code(e: &teb_talos::Error) -> Option<tonic::Code> {
    match e {
        teb_talos::Error::Call { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test]
async fn etcd_backup_role_snapshot_restores_with_etcdctl() {
    let emulator = emulator().await;
    for i in 0..50 {
        emulator
            .etcd()
            .put(format!("/registry/test/key-{i}").as_bytes(), format!("value-{i}").as_bytes())
            .await
            .unwrap();
    }
    let client = client(&role_target(&emulator, &["os:etcd:backup"])).await.unwrap();
    let chosen = client.choose_node(&[]).await.unwrap();
    assert_eq!(chosen.role, teb_talos::MemberRole::Follower, "a follower is preferred: {chosen:?}");
    let (bytes, sizes) = drain(&client, &chosen.node).await.unwrap();
    assert!(sizes[..sizes.len() - 1].iter().all(|&s| s == 1024), "Talos streams 1 KiB messages");
    assert_eq!(bytes.len() % 512, 32, "a snapshot is a database plus its 32-byte SHA-256");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snapshot.db");
    std::fs::write(&file, &bytes).unwrap();
    let restored = teb_testkit::etcd::EtcdCluster::restore(&file).await.expect("etcdctl snapshot restore accepts it");
    assert_eq!(restored.get("/registry/test/key-42").unwrap().as_deref(), Some("value-42"));
}

#[tokio::test]
async fn refuses_foreign_ca_server_auth_and_reader_role() {
    let emulator = emulator().await;
    let node = emulator.nodes()[1].address.clone();

    // A certificate from another CA: the TLS handshake is refused.
    let other = OsCa::generate().unwrap();
    let mut foreign = other.client(&["os:admin"], &[Eku::ClientAuth]).unwrap();
    foreign.ca_pem = emulator.ca.cert_pem.clone();
    assert_refused_at_handshake(&target(&emulator, foreign), &node).await;

    // ExtKeyUsage ServerAuth+ClientAuth: refused like Talos does, at the handshake.
    let both = emulator.ca.client(&["os:admin"], &[Eku::ServerAuth, Eku::ClientAuth]).unwrap();
    assert_refused_at_handshake(&target(&emulator, both), &node).await;

    // os:reader may read etcd status but not snapshot.
    let reader = client(&role_target(&emulator, &["os:reader"])).await.unwrap();
    reader.etcd_status(&node).await.expect("reader may call EtcdStatus");
    let err = drain(&reader, &node).await.expect_err("reader may not snapshot");
    assert_eq!(code(&err), Some(tonic::Code::PermissionDenied), "{err}");
}

/// With TLS 1.3 the client may finish its side of the handshake before the server rejects its
/// certificate, so the refusal shows either on connect or as a transport error on the first call.
async fn assert_refused_at_handshake(target: &Target, node: &str) {
    match client(target).await {
        Err(e) => assert!(matches!(e, teb_talos::Error::Connect { .. }), "{e}"),
        Ok(c) => {
            let e = c.etcd_status(node).await.expect_err("refused");
            // Go's crypto/tls (apid) answers with a bad_certificate alert, which the client names, unless the
            // close that follows overtakes it: then tonic reports a transport error.
            let named = matches!(e, teb_talos::Error::CertificateRefused { .. })
                && e.to_string().contains("TLS alert BadCertificate");
            let transport =
                matches!(code(&e), Some(tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled))
                    && e.to_string().contains("transport");
            assert!(named || transport, "{e}");
        }
    }
}

#[tokio::test]
async fn routing_status_and_worker_nodes() {
    let emulator = emulator().await;
    let client = client(&role_target(&emulator, &["os:etcd:backup"])).await.unwrap();
    let cps: Vec<_> = emulator.nodes().iter().filter(|n| n.etcd_member.is_some()).cloned().collect();
    let worker = emulator.nodes().iter().find(|n| n.etcd_member.is_none()).unwrap().clone();

    // EtcdStatus reports each member's real view: one leader agreed by all, distinct member IDs.
    let mut leaders = std::collections::BTreeSet::new();
    let mut ids = std::collections::BTreeSet::new();
    for node in &cps {
        let status = client.etcd_status(&node.address).await.unwrap();
        assert!(status.raft_index > 0 && status.db_size > 0, "{status:?}");
        leaders.insert(status.leader);
        ids.insert(status.member_id);
    }
    assert_eq!(leaders.len(), 1);
    assert_eq!(ids.len(), cps.len());
    assert!(ids.contains(leaders.first().unwrap()));

    let members = client.etcd_members().await.unwrap();
    assert_eq!(members.len(), cps.len());
    assert!(members.iter().all(|m| m.peer_urls[0].starts_with("https://127.0.10.")), "{members:?}");

    // A worker has no etcd: Unimplemented, as Talos answers.
    let err = drain(&client, &worker.address).await.expect_err("worker cannot snapshot");
    assert_eq!(code(&err), Some(tonic::Code::Unimplemented), "{err}");
    assert!(err.to_string().contains("only available on control plane nodes"), "{err}");

    // An unknown node: Unavailable.
    let err = client.etcd_status("127.0.99.99").await.expect_err("unknown node");
    assert_eq!(code(&err), Some(tonic::Code::Unavailable), "{err}");
}

#[tokio::test]
async fn one_to_many_routing_reports_errors_in_band() {
    let emulator = emulator().await;
    let mut machine = raw_machine(&emulator, "os:etcd:backup").await;
    let cp = &emulator.nodes()[0];
    let worker = emulator.nodes().iter().find(|n| n.etcd_member.is_none()).unwrap();
    let mut request = tonic::Request::new(());
    request.metadata_mut().insert("nodes", format!("{},{}", cp.address, worker.address).parse().unwrap());
    let response = machine.etcd_status(request).await.expect("the call itself succeeds").into_inner();
    assert_eq!(response.messages.len(), 2);
    // apid labels each answer with the target as the client named it (the address it dialled).
    let ok = response.messages[0].metadata.as_ref().unwrap();
    assert_eq!(ok.hostname, cp.address);
    assert!(ok.error.is_empty() && response.messages[0].member_status.is_some());
    let failed = response.messages[1].metadata.as_ref().unwrap();
    assert_eq!(failed.hostname, worker.address);
    assert!(failed.error.contains("only available on control plane nodes"), "{failed:?}");
    assert_eq!(failed.status.as_ref().unwrap().code, tonic::Code::Unimplemented as i32);

    // Streaming one-to-many: every message names its node; the worker's error arrives in-band.
    let mut request = tonic::Request::new(teb_talos::proto::machine::EtcdSnapshotRequest {});
    request.metadata_mut().insert("nodes", format!("{},{}", cp.address, worker.address).parse().unwrap());
    let mut stream = machine.etcd_snapshot(request).await.unwrap().into_inner();
    let (mut from_cp, mut last) = (0usize, None);
    while let Some(data) = stream.message().await.expect("stream ends OK") {
        let md = data.metadata.clone().unwrap();
        if md.error.is_empty() {
            assert_eq!(md.hostname, cp.address);
            from_cp += data.bytes.len();
        }
        last = Some(md);
    }
    assert_eq!(from_cp % 512, 32);
    let last = last.unwrap();
    assert_eq!(last.hostname, worker.address);
    assert!(!last.error.is_empty());

    // A hostname does not route: apid dials what it is given, and no node's hostname resolves here.
    let client = client(&role_target(&emulator, &["os:etcd:backup"])).await.unwrap();
    let err = client.etcd_status(&cp.hostname).await.expect_err("hostnames do not resolve");
    assert_eq!(code(&err), Some(tonic::Code::Unavailable), "{err}");
}

#[tokio::test]
async fn backup_role_is_denied_version() {
    let emulator = emulator().await;
    let err = raw_machine(&emulator, "os:etcd:backup").await.version(()).await.expect_err("denied");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    raw_machine(&emulator, "os:reader").await.version(()).await.expect("os:reader may call Version");
}

/// The generated client, for calls TalosClient does not make (Version, `nodes` routing, recovery).
async fn raw_machine(emulator: &TalosEmulator, role: &str) -> MachineServiceClient<tonic::transport::Channel> {
    raw_machine_with(emulator, &[role], None).await.unwrap()
}

/// [`raw_machine`] for `roles`, with HTTP/2 keepalive pings every `ping_every` when given.
async fn raw_machine_with(
    emulator: &TalosEmulator,
    roles: &[&str],
    ping_every: Option<Duration>,
) -> Result<MachineServiceClient<tonic::transport::Channel>, tonic::transport::Error> {
    let creds = role_target(emulator, roles).credentials;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&creds.ca_pem))
        .identity(tonic::transport::Identity::from_pem(&creds.crt_pem, &creds.key_pem))
        .domain_name(emulator.endpoint.rsplit_once(':').unwrap().0);
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", emulator.endpoint))?
        .tls_config(tls)?
        .http2_keep_alive_interval(ping_every.unwrap_or(Duration::from_secs(3600)))
        .keep_alive_while_idle(ping_every.is_some())
        .connect()
        .await?;
    Ok(MachineServiceClient::new(channel))
}

#[tokio::test]
async fn fault_modes_do_what_they_say() {
    let emulator = emulator().await;
    let client = client(&role_target(&emulator, &["os:etcd:backup"])).await.unwrap();
    let node = emulator.nodes()[1].address.clone();
    let (whole, _) = drain(&client, &node).await.unwrap();

    // Truncated: the stream ends with status OK, short.
    emulator.faults.truncate_after(10 * 1024);
    let (bytes, _) = drain(&client, &node).await.expect("a truncated stream still ends OK");
    assert_eq!(bytes.len(), 10 * 1024);
    emulator.faults.clear();

    // Corrupt trailer: the database whole, the last byte of its SHA-256 flipped. (etcd 3.5 commits its
    // consistent index before every snapshot, so two snapshots differ in their meta page: the
    // trailer is checked against the snapshot's own database.)
    emulator.faults.corrupt_trailer(true);
    let (bytes, _) = drain(&client, &node).await.unwrap();
    assert_eq!((bytes.len() % 512, whole.len() % 512), (32, 32));
    let (db, trailer) = bytes.split_at(bytes.len() - 32);
    let sha = <sha2::Sha256 as sha2::Digest>::digest(db);
    assert_eq!(trailer[..31], sha[..31]);
    assert_ne!(trailer[31], sha[31]);
    emulator.faults.clear();

    // Stall: bytes stop, the stream stays open.
    emulator.faults.stall_after(4096);
    let mut stream = Box::pin(client.etcd_snapshot(&node).await.unwrap());
    let mut got = 0;
    let stalled = loop {
        match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
            Ok(Some(chunk)) => got += chunk.unwrap().len(),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    assert!(stalled && got == 4096, "stalled={stalled} got={got}");
    drop(stream);
    emulator.faults.clear();

    // Unavailable.
    emulator.faults.unavailable(true);
    let err = drain(&client, &node).await.expect_err("refused");
    assert_eq!(code(&err), Some(tonic::Code::Unavailable));
    emulator.faults.clear();

    // Bandwidth cap: 200 KiB/s on a snapshot of at least 20 KiB takes at least 0.1 s.
    emulator.faults.limit_bandwidth(200 * 1024);
    let started = std::time::Instant::now();
    let (bytes, _) = drain(&client, &node).await.unwrap();
    let expected = Duration::from_secs_f64(bytes.len() as f64 / (200.0 * 1024.0));
    assert!(started.elapsed() >= expected.mul_f64(0.9), "{:?} < {expected:?}", started.elapsed());
}

/// An EtcdRecover upload of `snapshot` to `node`, as talosctl sends it (4 KiB chunks).
async fn recover(machine: &MachineServiceClient<tonic::transport::Channel>, node: &str, snapshot: &[u8]) {
    use teb_talos::proto::common::Data;
    let chunks: Vec<Data> = snapshot.chunks(4096).map(|c| Data { metadata: None, bytes: c.to_vec().into() }).collect();
    let mut request = tonic::Request::new(futures::stream::iter(chunks));
    request.metadata_mut().insert("node", node.parse().unwrap());
    machine.clone().etcd_recover(request).await.expect("EtcdRecover takes any upload");
}

/// Bootstrap with recover_etcd on `node`.
async fn bootstrap(
    machine: &MachineServiceClient<tonic::transport::Channel>,
    node: &str,
    skip_hash_check: bool,
) -> Result<(), tonic::Status> {
    use teb_talos::proto::machine::BootstrapRequest;
    let message = BootstrapRequest { recover_etcd: true, recover_skip_hash_check: skip_hash_check };
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("node", node.parse().unwrap());
    machine.clone().bootstrap(request).await.map(drop)
}

/// Waits for the etcd service of `node` to leave `Preparing`: its state and last event.
async fn settled(client: &TalosClient, node: &str) -> teb_talos::ServiceState {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let service = client.etcd_service(Some(node)).await.unwrap();
        if service.state != "Preparing" {
            return service;
        }
        assert!(tokio::time::Instant::now() < deadline, "etcd on {node} is still preparing: {service:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn recover_and_bootstrap_restore_a_snapshot() {
    let emulator = emulator().await;
    emulator.etcd().put(b"/restore/me", b"yes").await.unwrap();
    let client = client(&role_target(&emulator, &["os:etcd:backup"])).await.unwrap();
    let admin = TalosClient::connect(&role_target(&emulator, &["os:admin"]), Duration::from_secs(5)).await.unwrap();
    let node = emulator.nodes()[0].address.clone();
    let (snapshot, _) = drain(&client, &node).await.unwrap();
    emulator.etcd().put(b"/after/the/backup", b"lost").await.unwrap();
    let machine = raw_machine(&emulator, "os:admin").await;

    // etcd runs: the upload is taken (a file), but Bootstrap refuses, as machined does.
    recover(&machine, &node, &snapshot).await;
    let refused = bootstrap(&machine, &node, false).await.unwrap_err();
    assert_eq!((refused.code(), refused.message()), (tonic::Code::AlreadyExists, "etcd data directory is not empty"));

    // Wiped: no quick "not running" answer (Talos's etcd client waits for etcd until the caller gives
    // up), the data directory is empty, and the recovery runs after Bootstrap answered.
    emulator.wipe_etcd();
    let down = admin.etcd_status_within(Some(&node), Duration::from_secs(2)).await.unwrap_err();
    assert_eq!(code(&down), Some(tonic::Code::DeadlineExceeded), "{down}");
    assert_eq!(admin.etcd_data_entries(Some(&node)).await.unwrap(), Vec::<String>::new());
    recover(&machine, &node, &snapshot).await;
    bootstrap(&machine, &node, false).await.expect("Bootstrap answers at once");
    assert_eq!(settled(&admin, &node).await.state, "Running");
    let (kept, lost) = (emulator.restored_get("/restore/me").await, emulator.restored_get("/after/the/backup").await);
    assert_eq!((kept.as_deref(), lost), (Some("yes"), None));
    // The node serves etcd again, its upload is used up, and a second bootstrap is refused.
    admin.etcd_status(&node).await.expect("etcd runs after recovery");
    assert!(!emulator.has_upload_on(0));
    assert_eq!(admin.etcd_data_entries(Some(&node)).await.unwrap(), vec!["member".to_owned()]);
    assert_eq!(bootstrap(&machine, &node, false).await.unwrap_err().code(), tonic::Code::AlreadyExists);
}

/// machined refuses Bootstrap on data whether or not etcd runs; a recovery fails after Bootstrap
/// answered, leaving the data directory as `snapshot restore` left it; uploads are per node.
#[tokio::test]
async fn recoveries_fail_after_bootstrap_as_talos_recoveries_do() {
    let emulator = emulator().await;
    emulator.etcd().put(b"/restore/me", b"yes").await.unwrap();
    let client = client(&role_target(&emulator, &["os:etcd:backup"])).await.unwrap();
    let admin = TalosClient::connect(&role_target(&emulator, &["os:admin"]), Duration::from_secs(5)).await.unwrap();
    let (first, second) = (emulator.nodes()[0].address.clone(), emulator.nodes()[1].address.clone());
    let (snapshot, _) = drain(&client, &first).await.unwrap();
    let machine = raw_machine(&emulator, "os:admin").await;

    // A crash-looping member: etcd is down, its data stays, and Bootstrap is refused all the same.
    emulator.crash_etcd(0);
    assert_eq!(admin.etcd_service(Some(&first)).await.unwrap().state, "Waiting");
    assert_eq!(admin.etcd_data_entries(Some(&first)).await.unwrap(), vec!["member".to_owned()]);
    recover(&machine, &first, &snapshot).await;
    assert_eq!(bootstrap(&machine, &first, false).await.unwrap_err().code(), tonic::Code::AlreadyExists);

    // A hash mismatch: Bootstrap is accepted, the service fails, the data directory is no longer empty.
    emulator.wipe_node(0).await;
    let mut corrupt = snapshot.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x01;
    recover(&machine, &first, &corrupt).await;
    bootstrap(&machine, &first, false).await.expect("Bootstrap answers before the recovery runs");
    let failed = settled(&admin, &first).await;
    assert_eq!(failed.state, "Failed");
    assert!(failed.last_event.starts_with("Failed to run pre stage: error recovering from the snapshot"), "{failed:?}");
    assert!(!admin.etcd_data_entries(Some(&first)).await.unwrap().is_empty());
    assert_eq!(bootstrap(&machine, &first, false).await.unwrap_err().code(), tonic::Code::AlreadyExists);

    // recover_skip_hash_check takes the same snapshot.
    emulator.wipe_node(0).await;
    recover(&machine, &first, &corrupt).await;
    bootstrap(&machine, &first, true).await.unwrap();
    assert_eq!(settled(&admin, &first).await.state, "Running");

    // Not a database: the service fails verifying it, the directory stays empty and the upload stays
    // for the next Bootstrap. An upload is the node's own: none on the second node.
    emulator.wipe_etcd();
    emulator.wipe_node(1).await;
    recover(&machine, &second, b"not an etcd snapshot, not even a bbolt file").await;
    bootstrap(&machine, &second, false).await.unwrap();
    let failed = settled(&admin, &second).await;
    assert!(failed.last_event.starts_with("Failed to run pre stage: error verifying snapshot"), "{failed:?}");
    assert!(admin.etcd_data_entries(Some(&second)).await.unwrap().is_empty());
    assert!(emulator.has_upload_on(1));
    bootstrap(&machine, &first, false).await.unwrap();
    let failed = settled(&admin, &first).await;
    assert!(failed.last_event.contains("/var/lib/etcd.snapshot: no such file or directory"), "{failed:?}");
}

/// Bootstrap takes `nodes` metadata as talosctl sends it: the answer names the node, a refusal travels
/// in band.
#[tokio::test]
async fn bootstrap_takes_nodes_metadata_like_node() {
    use teb_talos::proto::machine::BootstrapRequest;
    let emulator = emulator_with(EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() }).await;
    let admin = TalosClient::connect(&role_target(&emulator, &["os:admin"]), Duration::from_secs(5)).await.unwrap();
    let node = emulator.nodes()[0].address.clone();
    let machine = raw_machine(&emulator, "os:admin").await;
    let bootstrap_nodes = || {
        let mut request = tonic::Request::new(BootstrapRequest { recover_etcd: false, recover_skip_hash_check: false });
        request.metadata_mut().insert("nodes", node.parse().unwrap());
        let mut machine = machine.clone();
        async move { machine.bootstrap(request).await.unwrap().into_inner().messages }
    };
    // etcd runs: refused, in band.
    let answer = bootstrap_nodes().await;
    let metadata = answer[0].metadata.clone().unwrap();
    assert_eq!(metadata.hostname, node);
    assert!(metadata.error.contains("etcd data directory is not empty"), "{metadata:?}");
    // Wiped: accepted, and etcd comes up (empty: no recover_etcd).
    emulator.wipe_etcd();
    let answer = bootstrap_nodes().await;
    assert!(answer[0].metadata.as_ref().unwrap().error.is_empty(), "{answer:?}");
    assert_eq!(settled(&admin, &node).await.state, "Running");
}

/// A worker's apid cannot forward: every targeted call is refused (director.go, v1.13.0).
#[tokio::test]
async fn a_worker_endpoint_refuses_to_forward() {
    let emulator = emulator_with(EmulatorOptions { endpoint_is_worker: true, ..Default::default() }).await;
    let admin = TalosClient::connect(&role_target(&emulator, &["os:admin"]), Duration::from_secs(5)).await.unwrap();
    let node = emulator.nodes()[0].address.clone();
    let err = admin.etcd_status(&node).await.unwrap_err();
    assert!(matches!(err, teb_talos::Error::NoForwarding { .. }), "{err}");
    assert!(err.to_string().contains("the endpoint is a worker node"), "{err}");
    // Untargeted, or addressed to itself (address or hostname), the worker answers itself: it has no etcd.
    let worker = &emulator.nodes()[3];
    for node in [None, Some(worker.address.as_str()), Some(worker.hostname.as_str())] {
        let err = admin.etcd_status_on(node).await.unwrap_err();
        assert_eq!(code(&err), Some(tonic::Code::Unimplemented), "{node:?}: {err}");
        assert!(err.to_string().contains("etcd status is only available on control plane nodes"), "{err}");
    }
    let err = admin.etcd_local_members(Some(&worker.address)).await.unwrap_err();
    assert!(err.to_string().contains("member list is only available on control plane nodes"), "{err}");
}

/// A node that has just booted refuses a recovery as machined does (v1alpha1_server.go, v1.13.0):
/// EtcdRecover until `/var` is mounted, Bootstrap until the container runtime is up and the clock is
/// in sync; its etcd service waits for them meanwhile.
#[tokio::test]
async fn a_node_that_has_just_booted_refuses_a_recovery_as_talos_does() {
    let emulator = emulator_with(EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() }).await;
    let admin = TalosClient::connect(&role_target(&emulator, &["os:admin"]), Duration::from_secs(5)).await.unwrap();
    let node = emulator.nodes()[0].address.clone();
    let machine = raw_machine(&emulator, "os:admin").await;
    emulator.wipe_etcd();
    emulator.boot(0, BootStage::ContainerRuntime, Duration::from_secs(60));
    let service = admin.etcd_service(Some(&node)).await.unwrap();
    assert_eq!(
        (service.state.as_str(), service.last_event.as_str()),
        ("Waiting", "Waiting for service \"cri\" to be \"up\"")
    );
    let chunks = vec![teb_talos::proto::common::Data { metadata: None, bytes: vec![0u8; 16].into() }];
    let mut request = tonic::Request::new(futures::stream::iter(chunks));
    request.metadata_mut().insert("node", node.parse().unwrap());
    let refused = machine.clone().etcd_recover(request).await.unwrap_err();
    let expected = (tonic::Code::FailedPrecondition, "etcd service is not ready for recovery yet");
    assert_eq!((refused.code(), refused.message()), expected);
    let refused = bootstrap(&machine, &node, false).await.unwrap_err();
    assert_eq!(
        (refused.code(), refused.message()),
        (tonic::Code::FailedPrecondition, "bootstrap is not available yet")
    );
    emulator.boot(0, BootStage::TimeSync, Duration::from_secs(60));
    let refused = bootstrap(&machine, &node, false).await.unwrap_err();
    assert_eq!((refused.code(), refused.message()), (tonic::Code::FailedPrecondition, "time is not in sync yet"));
    // Up: the wiped node's etcd waits to join ("Running pre state", sic: service_runner.go).
    emulator.boot(0, BootStage::TimeSync, Duration::ZERO);
    let service = admin.etcd_service(Some(&node)).await.unwrap();
    assert_eq!((service.state.as_str(), service.last_event.as_str()), ("Preparing", "Running pre state"));
}

/// A wiped node's etcd gives up joining after the join timeout and stays Failed until a reboot; a
/// member list without `query_local` is answered by whichever member runs; alarms are etcd's own.
#[tokio::test]
async fn wiped_nodes_give_up_joining_after_the_join_timeout() {
    let join_timeout = Duration::from_secs(2);
    let emulator = emulator_with(EmulatorOptions { join_timeout, ..Default::default() }).await;
    let client = client(&role_target(&emulator, &["os:etcd:backup"])).await.unwrap();
    let admin = TalosClient::connect(&role_target(&emulator, &["os:admin"]), Duration::from_secs(5)).await.unwrap();
    let nodes: Vec<String> = emulator.nodes()[..3].iter().map(|n| n.address.clone()).collect();
    let (snapshot, _) = drain(&client, &nodes[0]).await.unwrap();
    assert_eq!(admin.etcd_alarms(Some(&nodes[0])).await.unwrap(), vec![]);
    let machine = raw_machine(&emulator, "os:admin").await;
    emulator.wipe_etcd();
    tokio::time::sleep(join_timeout + Duration::from_millis(500)).await;
    for node in &nodes {
        let service = admin.etcd_service(Some(node)).await.unwrap();
        assert_eq!(service.state, "Failed", "{node}");
        assert!(
            service.last_event.starts_with("Failed to run pre stage: failed to build initial etcd cluster"),
            "{service:?}"
        );
    }
    // The third node reboots (it waits again); a failed service with an empty data directory takes the
    // Bootstrap; etcd comes up with the NOSPACE alarm raised.
    emulator.set_join_timeout(Duration::from_secs(1800));
    emulator.wipe_node(2).await;
    emulator.faults.nospace_after_recovery(true);
    recover(&machine, &nodes[0], &snapshot).await;
    bootstrap(&machine, &nodes[0], false).await.unwrap();
    assert_eq!(settled(&admin, &nodes[0]).await.state, "Running");
    let member = admin.etcd_status(&nodes[0]).await.unwrap().member_id;
    assert_eq!(admin.etcd_alarms(Some(&nodes[0])).await.unwrap(), vec![(member, "NOSPACE")]);
    // The rebooted node joined; the other stays Failed, and its member list (cluster-wide) is the
    // recovered cluster's.
    assert_eq!(admin.etcd_service(Some(&nodes[2])).await.unwrap().state, "Running");
    assert_eq!(admin.etcd_service(Some(&nodes[1])).await.unwrap().state, "Failed");
    let listed = admin.etcd_members_of(Some(&nodes[1])).await.unwrap();
    let mut names: Vec<&str> = listed.iter().map(|m| m.hostname.as_str()).collect();
    names.sort();
    assert_eq!(names, ["cp-1", "cp-3"]);
}

/// Bootstrap on a worker: FailedPrecondition before v1.13, Unimplemented from v1.13 (v1alpha1_server.go).
#[tokio::test]
async fn bootstrap_on_a_worker_answers_as_each_release_does() {
    for (minor, expected, message) in [
        (12, tonic::Code::FailedPrecondition, "bootstrap can only be performed on a control plane node"),
        (13, tonic::Code::Unimplemented, "bootstrap is only available on control plane nodes"),
    ] {
        let talos_version = TalosVersion { major: 1, minor, patch: 0 };
        let emulator = emulator_with(EmulatorOptions { control_planes: 1, talos_version, ..Default::default() }).await;
        let machine = raw_machine(&emulator, "os:admin").await;
        let worker = emulator.nodes()[1].address.clone();
        let refused = bootstrap(&machine, &worker, false).await.unwrap_err();
        assert_eq!((refused.code(), refused.message()), (expected, message), "v1.{minor}");
    }
}

#[tokio::test]
async fn talos_1_10_0_refuses_etcd_reads_to_the_backup_role_and_the_client_falls_back() {
    let emulator = emulator_with(EmulatorOptions {
        talos_version: TalosVersion::V1_10_0,
        control_planes: 1,
        ..Default::default()
    })
    .await;
    let node = emulator.nodes()[0].address.clone();
    let backup = client(&role_target(&emulator, &["os:etcd:backup"])).await.unwrap();
    // Talos 1.10.0's table: os:etcd:backup may only snapshot; os:reader may list members, not read status.
    for err in [backup.etcd_status(&node).await.unwrap_err(), backup.etcd_members().await.unwrap_err()] {
        assert_eq!(code(&err), Some(tonic::Code::PermissionDenied), "{err}");
        assert!(!err.is_transient(), "a refused role is not retried: {err}");
    }
    let reader = client(&role_target(&emulator, &["os:reader"])).await.unwrap();
    reader.etcd_members().await.expect("os:reader may list members on 1.10.0");
    assert_eq!(code(&reader.etcd_status(&node).await.unwrap_err()), Some(tonic::Code::PermissionDenied));

    // The client snapshots the endpoint node itself, without `node` metadata, and says why.
    let chosen = backup.choose_node(&[]).await.expect("falls back instead of failing");
    assert_eq!(chosen.role, teb_talos::MemberRole::Unchecked);
    assert!(!chosen.targeted);
    assert_eq!(chosen.node, "127.0.10.1");
    assert!(chosen.unchecked_because.as_deref().unwrap().contains("PermissionDenied"), "{chosen:?}");
    let mut stream = Box::pin(backup.etcd_snapshot_of(&chosen).await.unwrap());
    let mut len = 0;
    while let Some(chunk) = stream.next().await {
        len += chunk.unwrap().len();
    }
    assert_eq!(len % 512, 32);

    // The talosconfig's nodes come first when there are some.
    let chosen = backup.choose_node(std::slice::from_ref(&node)).await.unwrap();
    assert!(chosen.targeted && chosen.node == node, "{chosen:?}");
    // The version answer names the release.
    let version = raw_machine(&emulator, "os:admin").await.version(()).await.unwrap().into_inner();
    assert_eq!(version.messages[0].version.as_ref().unwrap().tag, "v1.10.0");
}

#[tokio::test]
async fn every_role_of_a_certificate_counts() {
    let emulator = emulator_with(EmulatorOptions { control_planes: 1, ..Default::default() }).await;
    // os:reader alone may not snapshot; os:etcd:backup alone may not call Version. Both in one certificate
    // (two O values, as talosctl writes them) may do both.
    let mut machine = raw_machine_with(&emulator, &["os:reader", "os:etcd:backup"], None).await.unwrap();
    machine.version(()).await.expect("os:reader's Version");
    let client = client(&role_target(&emulator, &["os:reader", "os:etcd:backup"])).await.unwrap();
    let node = emulator.nodes()[0].address.clone();
    let (bytes, _) = drain(&client, &node).await.expect("os:etcd:backup's EtcdSnapshot");
    assert_eq!(bytes.len() % 512, 32);
}

#[tokio::test]
async fn an_ecdsa_os_ca_mints_ecdsa_clients_that_snapshot() {
    let emulator =
        emulator_with(EmulatorOptions { ca_key: CaKeyType::EcdsaP256, control_planes: 1, ..Default::default() }).await;
    let bundle = teb_talos::SecretsBundle::from_yaml(&emulator.ca.secrets_bundle_yaml()).unwrap();
    let credentials = bundle.mint_client(&["os:etcd:backup"], Duration::from_secs(600)).unwrap();
    assert!(credentials.key_pem.contains("PRIVATE KEY"));
    let key = rcgen::KeyPair::from_pem(&credentials.key_pem).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256, "the client key follows the CA's type");
    let client = client(&target(&emulator, credentials)).await.unwrap();
    let chosen = client.choose_node(&[]).await.unwrap();
    let (bytes, _) = drain(&client, &chosen.node).await.unwrap();
    assert_eq!(bytes.len() % 512, 32);
}

#[tokio::test]
async fn an_endpoint_name_missing_from_the_certificate_is_explained() {
    let port = |e: &TalosEmulator| e.endpoint.rsplit_once(':').unwrap().1.to_owned();
    let emulator = emulator_with(EmulatorOptions { control_planes: 1, ..Default::default() }).await;
    let mut by_name = role_target(&emulator, &["os:etcd:backup"]);
    by_name.endpoints = vec![format!("localhost:{}", port(&emulator))];
    let err = client(&by_name).await.expect_err("apid's certificate does not name localhost");
    let text = err.to_string();
    assert!(text.contains("does not name \"localhost\"") && text.contains("machine.certSANs"), "{text}");
    assert!(!err.is_transient(), "a certificate that does not fit is not retried");

    // With the name in machine.certSANs it connects.
    let emulator =
        emulator_with(EmulatorOptions { control_planes: 1, cert_sans: vec!["localhost".into()], ..Default::default() })
            .await;
    let mut by_name = role_target(&emulator, &["os:etcd:backup"]);
    by_name.endpoints = vec![format!("localhost:{}", port(&emulator))];
    client(&by_name).await.unwrap().choose_node(&[]).await.expect("connects by name");
}

/// apid's certificate names 127.0.0.1 from Talos v1.13.4 on, and never before (api_cert_sans.go); the
/// node's own address always.
#[tokio::test]
async fn apid_names_127_0_0_1_only_from_1_13_4() {
    for (patch, named) in [(3, false), (4, true)] {
        let talos_version = TalosVersion { major: 1, minor: 13, patch };
        let emulator = emulator_with(EmulatorOptions { control_planes: 1, talos_version, ..Default::default() }).await;
        let mut by_loopback = role_target(&emulator, &["os:etcd:backup"]);
        let port = emulator.endpoint.rsplit_once(':').unwrap().1.to_owned();
        by_loopback.endpoints = vec![format!("127.0.0.1:{port}")];
        match client(&by_loopback).await {
            Ok(_) => assert!(named, "v1.13.{patch} names 127.0.0.1"),
            Err(e) => assert!(!named && e.to_string().contains("does not name \"127.0.0.1\""), "v1.13.{patch}: {e}"),
        }
        let by_address = role_target(&emulator, &["os:etcd:backup"]);
        assert!(by_address.endpoints[0].starts_with("127.0.10.1:"), "{:?}", by_address.endpoints);
        client(&by_address).await.expect("the node's address is always named");
    }
}

/// Enough etcd data that a paused reader fills the HTTP/2 windows and Talos has to wait.
async fn fill(emulator: &TalosEmulator, mib: usize) {
    let value = vec![b'k'; 512 * 1024];
    for i in 0..mib * 2 {
        emulator.etcd().put(format!("/fill/{i}").as_bytes(), &value).await.unwrap();
    }
}

#[tokio::test]
async fn clients_that_ping_often_while_paused_are_cut_off_like_grpc_go_does() {
    let emulator = emulator_with(EmulatorOptions { control_planes: 1, ..Default::default() }).await;
    fill(&emulator, 8).await;
    let node = emulator.nodes()[0].address.clone();
    let mut machine = raw_machine_with(&emulator, &["os:etcd:backup"], Some(Duration::from_secs(1))).await.unwrap();
    let mut request = tonic::Request::new(teb_talos::proto::machine::EtcdSnapshotRequest {});
    request.metadata_mut().insert("node", node.parse().unwrap());
    let mut stream = machine.etcd_snapshot(request).await.unwrap().into_inner();
    stream.message().await.unwrap().expect("first chunk");
    // Paused: pings every second strike; the third strike ends the connection.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut result = Ok(());
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(status) => {
                result = Err(status);
                break;
            }
        }
    }
    assert!(result.is_err(), "the connection should have been closed for too many pings");
}

#[tokio::test]
async fn the_talos_client_survives_a_long_pause_in_reading() {
    let emulator = emulator_with(EmulatorOptions { control_planes: 1, ..Default::default() }).await;
    fill(&emulator, 8).await;
    let client = client(&role_target(&emulator, &["os:etcd:backup"])).await.unwrap();
    let node = emulator.nodes()[0].address.clone();
    let mut stream = Box::pin(client.etcd_snapshot(&node).await.unwrap());
    let mut bytes = stream.next().await.unwrap().unwrap().to_vec();
    // Longer than it took grpc-go to drop a client pinging every 30 s (the 4th ping, at 120 s).
    tokio::time::sleep(Duration::from_secs(130)).await;
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.expect("the stream survives the pause"));
    }
    let mut verifier = teb_pipeline::TrailerVerifier::new();
    verifier.update(&bytes);
    verifier.finish().expect("the whole snapshot arrived");
}
