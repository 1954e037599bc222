//! The Talos API emulator behaves like Talos where a backup can tell: mTLS and roles, routing,
//! 1 KiB streaming of a real etcd snapshot, and each fault mode.

use std::time::Duration;

use futures::StreamExt;
use rcgen::ExtendedKeyUsagePurpose as Eku;
use teb_talos::{Credentials, TalosClient, Talosconfig, Target};
use teb_testkit::emulator::{EmulatorOptions, TalosEmulator};
use teb_testkit::fixtures::OsCa;

async fn emulator() -> TalosEmulator {
    TalosEmulator::start(EmulatorOptions::default()).await.expect("emulator starts")
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
            // tonic reports a TLS alert from the server as a transport error (Unknown or Unavailable).
            assert!(matches!(code(&e), Some(tonic::Code::Unavailable | tonic::Code::Unknown)), "{e}");
            assert!(e.to_string().contains("transport"), "{e}");
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
    let ok = response.messages[0].metadata.as_ref().unwrap();
    assert_eq!(ok.hostname, cp.hostname);
    assert!(ok.error.is_empty() && response.messages[0].member_status.is_some());
    let failed = response.messages[1].metadata.as_ref().unwrap();
    assert_eq!(failed.hostname, worker.hostname);
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
            assert_eq!(md.hostname, cp.hostname);
            from_cp += data.bytes.len();
        }
        last = Some(md);
    }
    assert_eq!(from_cp % 512, 32);
    let last = last.unwrap();
    assert_eq!(last.hostname, worker.hostname);
    assert!(!last.error.is_empty());
}

#[tokio::test]
async fn backup_role_is_denied_version() {
    let emulator = emulator().await;
    let err = raw_machine(&emulator, "os:etcd:backup").await.version(()).await.expect_err("denied");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    raw_machine(&emulator, "os:reader").await.version(()).await.expect("os:reader may call Version");
}

/// The generated client, for calls TalosClient does not make (Version, `nodes` routing, recovery).
async fn raw_machine(
    emulator: &TalosEmulator,
    role: &str,
) -> teb_talos::proto::machine::machine_service_client::MachineServiceClient<tonic::transport::Channel> {
    let creds = role_target(emulator, &[role]).credentials;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&creds.ca_pem))
        .identity(tonic::transport::Identity::from_pem(&creds.crt_pem, &creds.key_pem))
        .domain_name("127.0.0.1");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", emulator.endpoint))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    teb_talos::proto::machine::machine_service_client::MachineServiceClient::new(channel)
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

    // Corrupt trailer: same length, last byte differs.
    emulator.faults.corrupt_trailer(true);
    let (bytes, _) = drain(&client, &node).await.unwrap();
    assert_eq!(bytes.len(), whole.len());
    assert_ne!(bytes.last(), whole.last());
    assert_eq!(bytes[..bytes.len() - 1], whole[..whole.len() - 1]);
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

#[tokio::test]
async fn recover_and_bootstrap_restore_a_snapshot() {
    use teb_talos::proto::common::Data;
    use teb_talos::proto::machine::BootstrapRequest;
    let emulator = emulator().await;
    emulator.etcd().put(b"/restore/me", b"yes").await.unwrap();
    let client = client(&role_target(&emulator, &["os:etcd:backup"])).await.unwrap();
    let node = emulator.nodes()[0].address.clone();
    let (snapshot, _) = drain(&client, &node).await.unwrap();

    let mut machine = raw_machine(&emulator, "os:admin").await;
    // talosctl sends 4 KiB chunks.
    let chunks: Vec<Data> = snapshot.chunks(4096).map(|c| Data { metadata: None, bytes: c.to_vec().into() }).collect();
    let mut request = tonic::Request::new(futures::stream::iter(chunks));
    request.metadata_mut().insert("node", node.parse().unwrap());
    machine.etcd_recover(request).await.expect("EtcdRecover accepts the snapshot");
    machine
        .bootstrap(BootstrapRequest { recover_etcd: true, recover_skip_hash_check: false })
        .await
        .expect("Bootstrap recovers etcd");
    let value = emulator.with_restored(|etcd| etcd.unwrap().get("/restore/me").unwrap()).await;
    assert_eq!(value.as_deref(), Some("yes"));
}
