//! A Talos machine API emulator: apid's wire protocol, mTLS and role rules, node routing and
//! snapshot streaming, backed by a real etcd cluster; etcd's recovery as [`recovery`] describes.

mod recovery;

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::etcd::{EtcdCluster, EtcdOptions};
use crate::etcd_proto::{
    AlarmRequest, AlarmType, MemberListRequest, SnapshotRequest, StatusRequest, alarm_request::AlarmAction,
    cluster_client::ClusterClient, maintenance_client::MaintenanceClient,
};
use crate::fixtures::{CaKeyType, OsCa};
use crate::ping_policy::PingPolicy;
use recovery::NodeEtcd;
use teb_talos::proto::common::{Data, Metadata};
use teb_talos::proto::google::rpc;
use teb_talos::proto::machine::machine_service_server::{MachineService, MachineServiceServer};
use teb_talos::proto::machine::*;

/// Talos streams snapshots one KiB a message.
pub const CHUNK: usize = 1024;

/// How long a call that needs a node's etcd waits while it does not run, standing in for "until the
/// caller gives up" (the Talos client's own deadline is as long).
const ETCD_CLIENT_WAIT: Duration = Duration::from_secs(30);

/// The Talos release whose behaviour the emulator follows where releases differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TalosVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl TalosVersion {
    pub const V1_10_0: TalosVersion = TalosVersion { major: 1, minor: 10, patch: 0 };
    pub const V1_11_0: TalosVersion = TalosVersion { major: 1, minor: 11, patch: 0 };
    pub const V1_13_0: TalosVersion = TalosVersion { major: 1, minor: 13, patch: 0 };

    /// apid's certificate names 127.0.0.1 from v1.13.4 on (api_cert_sans.go, absent at v1.13.3).
    fn names_loopback(self) -> bool {
        self >= TalosVersion { major: 1, minor: 13, patch: 4 }
    }

    /// "relax etcd APIs RBAC" (siderolabs/talos#10821) let os:etcd:backup (and os:reader) call
    /// EtcdStatus, EtcdMemberList and EtcdAlarmList from 1.9.6, 1.10.1 and 1.11.0 on.
    fn etcd_backup_reads_etcd(self) -> bool {
        match (self.major, self.minor) {
            (1, 9) => self.patch >= 6,
            (1, 10) => self.patch >= 1,
            (1, minor) => minor >= 11,
            (major, _) => major > 1,
        }
    }

    /// Roles allowed to call each RPC (Talos's authorization table, machined.go's `rules`).
    fn allowed_roles(self, rpc: &str) -> &'static [&'static str] {
        match rpc {
            "EtcdSnapshot" => &["os:admin", "os:operator", "os:etcd:backup"],
            "EtcdStatus" | "EtcdMemberList" | "EtcdAlarmList" if self.etcd_backup_reads_etcd() => {
                &["os:admin", "os:operator", "os:reader", "os:etcd:backup"]
            }
            "EtcdStatus" | "EtcdAlarmList" => &["os:admin", "os:operator"],
            "EtcdMemberList" => &["os:admin", "os:operator", "os:reader"],
            "Version" | "List" | "ServiceList" => &["os:admin", "os:operator", "os:reader"],
            _ => &["os:admin"],
        }
    }
}

impl std::fmt::Display for TalosVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl std::str::FromStr for TalosVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<u32> = s
            .trim_start_matches('v')
            .split('.')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{s:?} is not a Talos version like 1.10.0"))?;
        match parts[..] {
            [major, minor, patch] => Ok(TalosVersion { major, minor, patch }),
            _ => Err(format!("{s:?} is not a Talos version like 1.10.0")),
        }
    }
}

/// A node of the emulated cluster.
#[derive(Clone, Debug)]
pub struct Node {
    /// The node's address, as `node` metadata names it.
    pub address: String,
    pub hostname: String,
    /// Index into the etcd cluster's members; `None` on a worker.
    pub etcd_member: Option<usize>,
}

/// Faults applied to every snapshot until cleared.
#[derive(Default)]
pub struct TalosFaults {
    truncate_after: AtomicU64,
    stall_after: AtomicU64,
    corrupt_trailer: AtomicBool,
    unavailable: AtomicBool,
    bytes_per_second: AtomicU64,
    fail_recovery: AtomicBool,
    recover_empty: AtomicBool,
    crash_after_recovery: AtomicBool,
    nospace_after_recovery: AtomicBool,
}

const OFF: u64 = u64::MAX;

impl TalosFaults {
    fn new() -> Self {
        let faults = Self::default();
        faults.clear();
        faults
    }

    /// End the snapshot stream with status OK after `bytes` (a truncated snapshot).
    pub fn truncate_after(&self, bytes: u64) {
        self.truncate_after.store(bytes, Ordering::SeqCst);
    }

    /// Stop sending after `bytes`, keeping the stream open (a stall).
    pub fn stall_after(&self, bytes: u64) {
        self.stall_after.store(bytes, Ordering::SeqCst);
    }

    /// Flip a bit of the snapshot's SHA-256 trailer.
    pub fn corrupt_trailer(&self, on: bool) {
        self.corrupt_trailer.store(on, Ordering::SeqCst);
    }

    /// Refuse EtcdSnapshot with Unavailable.
    pub fn unavailable(&self, on: bool) {
        self.unavailable.store(on, Ordering::SeqCst);
    }

    /// Fail the next recoveries after their Bootstrap was accepted, as a full or broken disk would:
    /// the etcd service ends `Failed`, with what `snapshot restore` wrote left in the data directory.
    pub fn fail_recovery(&self, on: bool) {
        self.fail_recovery.store(on, Ordering::SeqCst);
    }

    /// Start the next recoveries empty, as a Bootstrap without `recover_etcd` would: etcd comes up
    /// healthy, without the backup's data.
    pub fn recover_empty(&self, on: bool) {
        self.recover_empty.store(on, Ordering::SeqCst);
    }

    /// Let the next recoveries succeed and etcd then exit, again and again: the restart runner's crash
    /// loop after a good pre stage.
    pub fn crash_after_recovery(&self, on: bool) {
        self.crash_after_recovery.store(on, Ordering::SeqCst);
    }

    /// Raise etcd's NOSPACE alarm on the next recovered members (through etcd's own Alarm API), as a
    /// database over its quota does: the cluster then takes no writes.
    pub fn nospace_after_recovery(&self, on: bool) {
        self.nospace_after_recovery.store(on, Ordering::SeqCst);
    }

    /// Cap snapshot streaming at `bytes_per_second` (0: no cap).
    pub fn limit_bandwidth(&self, bytes_per_second: u64) {
        self.bytes_per_second.store(bytes_per_second, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.truncate_after.store(OFF, Ordering::SeqCst);
        self.stall_after.store(OFF, Ordering::SeqCst);
        self.corrupt_trailer.store(false, Ordering::SeqCst);
        self.unavailable.store(false, Ordering::SeqCst);
        self.fail_recovery.store(false, Ordering::SeqCst);
        self.recover_empty.store(false, Ordering::SeqCst);
        self.crash_after_recovery.store(false, Ordering::SeqCst);
        self.nospace_after_recovery.store(false, Ordering::SeqCst);
        self.bytes_per_second.store(0, Ordering::SeqCst);
    }
}

/// What the emulated cluster looks like.
#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    pub control_planes: usize,
    pub workers: usize,
    pub etcd: EtcdOptions,
    /// Listen address; `127.0.0.1:0` picks a free port.
    pub listen: String,
    /// The release whose role table applies (default 1.11.0).
    pub talos_version: TalosVersion,
    /// The OS CA's key type (default Ed25519).
    pub ca_key: CaKeyType,
    /// `machine.certSANs`: extra names and addresses in the apid certificate.
    pub cert_sans: Vec<String>,
    /// The endpoint is the first worker's apid instead of the first control plane's: it serves calls
    /// without `node` metadata itself and refuses to forward any other.
    pub endpoint_is_worker: bool,
    /// The OS CA (certificate and key PEM) of an existing cluster, as new nodes built from its
    /// secrets bundle have it; a new CA when unset.
    pub os_ca: Option<(String, String)>,
    /// How long a wiped control-plane node's etcd tries to join a cluster before its service fails
    /// (Talos's `constants.EtcdJoinTimeout`, 30 minutes).
    pub join_timeout: Duration,
}

/// Where a node that has just booted still is (machined's boot sequence), each refusing calls as
/// Talos v1.13.0 does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootStage {
    /// The container runtime is not up and EPHEMERAL (`/var`) not mounted: Bootstrap answers
    /// FailedPrecondition "bootstrap is not available yet" (`IsBootstrapAllowed` waits for the cri
    /// service), EtcdRecover FailedPrecondition "etcd service is not ready for recovery yet" (no
    /// `/var/lib`); v1alpha1_server.go.
    ContainerRuntime,
    /// The clock is not synchronised yet: Bootstrap answers FailedPrecondition "time is not in sync
    /// yet" (it waits 5 s for `timeresource.NewSyncCondition`).
    TimeSync,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            control_planes: 3,
            workers: 1,
            etcd: EtcdOptions::default(),
            listen: "127.0.0.1:0".into(),
            talos_version: TalosVersion::V1_11_0,
            ca_key: CaKeyType::default(),
            cert_sans: Vec::new(),
            endpoint_is_worker: false,
            os_ca: None,
            join_timeout: Duration::from_secs(30 * 60),
        }
    }
}

struct State {
    version: TalosVersion,
    nodes: Vec<Node>,
    etcd: EtcdCluster,
    /// Indexed like `etcd.members`.
    node_etcd: Mutex<Vec<NodeEtcd>>,
    /// Indexed like `nodes`: machines that are gone (nothing answers at their address).
    down: Mutex<Vec<bool>>,
    /// Indexed like `nodes`: machines still booting, in that stage until then.
    booting: Mutex<Vec<Option<(BootStage, Instant)>>>,
    join_timeout: Mutex<Duration>,
    /// The node that serves calls without `node` metadata.
    endpoint_node: usize,
    faults: Arc<TalosFaults>,
    recovery_dir: tempfile::TempDir,
    /// The snapshot each node's EtcdRecover stored (`/var/lib/etcd.snapshot`), by etcd member.
    uploads: Mutex<HashMap<usize, PathBuf>>,
    /// The cluster a recovery started, once one did.
    restored: tokio::sync::Mutex<Option<EtcdCluster>>,
}

impl State {
    /// A wiped node's etcd from now: waiting to join for the join timeout.
    fn waiting(&self) -> NodeEtcd {
        NodeEtcd::Waiting { until: Instant::now() + *self.join_timeout.lock().expect("join timeout lock") }
    }
}

/// A running emulator; stopped (with its etcd cluster) when dropped.
pub struct TalosEmulator {
    /// `ADDRESS:PORT`: the apid endpoint, at the endpoint node's address (`127.0.10.1` for the first
    /// control plane), which every release's certificate names. The same port answers on the
    /// `listen` address (`127.0.0.1`) too, whose name is in the certificate from v1.13.4 only.
    pub endpoint: String,
    pub ca: OsCa,
    pub faults: Arc<TalosFaults>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TalosEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TalosEmulator {
    pub async fn start(options: EmulatorOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(options.control_planes > 0, "at least one control plane is needed");
        // Members as Talos names them: the node's hostname, peers at the node's address.
        let mut etcd_options = options.etcd.clone();
        etcd_options.members =
            (0..options.control_planes).map(|i| (format!("cp-{}", i + 1), format!("127.0.10.{}", i + 1))).collect();
        let etcd = EtcdCluster::start(options.control_planes, &etcd_options).await?;
        let ca = match &options.os_ca {
            Some((cert, key)) => OsCa::from_pem(cert, key)?,
            None => OsCa::generate_with(options.ca_key)?,
        };
        let mut nodes: Vec<Node> = (0..options.control_planes)
            .map(|i| Node {
                address: format!("127.0.10.{}", i + 1),
                hostname: format!("cp-{}", i + 1),
                etcd_member: Some(i),
            })
            .collect();
        nodes.extend((0..options.workers).map(|i| Node {
            address: format!("127.0.20.{}", i + 1),
            hostname: format!("worker-{}", i + 1),
            etcd_member: None,
        }));
        let endpoint_node = if options.endpoint_is_worker { options.control_planes } else { 0 };
        anyhow::ensure!(endpoint_node < nodes.len(), "a worker endpoint needs a worker");
        let served = &nodes[endpoint_node];
        let listeners = listen(&served.address, &options.listen).await?;
        let endpoint = listeners[0].local_addr()?.to_string();
        // apid's certificate as Talos issues it for the endpoint node (api_cert_sans.go):
        // machine.certSANs, the node's addresses and its hostname, and 127.0.0.1 only from v1.13.4 on;
        // no "localhost", no other node's names.
        let mut sans = options.cert_sans.clone();
        sans.extend([served.address.clone(), served.hostname.clone()]);
        if options.talos_version.names_loopback() {
            sans.push("127.0.0.1".to_owned());
        }
        let (cert_pem, key_pem) = ca.server(&sans.iter().map(String::as_str).collect::<Vec<_>>())?;
        let tls = server_tls_config(&ca.cert_pem, &cert_pem, &key_pem)?;
        let faults = Arc::new(TalosFaults::new());
        let state = Arc::new(State {
            version: options.talos_version,
            down: Mutex::new(vec![false; nodes.len()]),
            booting: Mutex::new(vec![None; nodes.len()]),
            join_timeout: Mutex::new(options.join_timeout),
            nodes,
            node_etcd: Mutex::new(vec![NodeEtcd::Member; options.control_planes]),
            endpoint_node,
            etcd,
            faults: faults.clone(),
            recovery_dir: tempfile::Builder::new().prefix("teb-talos-recover-").tempdir()?,
            uploads: Mutex::new(HashMap::new()),
            restored: tokio::sync::Mutex::new(None),
        });
        let task = tokio::spawn(serve(listeners, tls, Emulator { state: state.clone() }));
        Ok(TalosEmulator { endpoint, ca, faults, state, task })
    }

    pub fn nodes(&self) -> &[Node] {
        &self.state.nodes
    }

    pub fn etcd(&self) -> &EtcdCluster {
        &self.state.etcd
    }

    /// A talosconfig for a client holding `roles`, pointing at this emulator.
    pub fn talosconfig(&self, roles: &[&str]) -> anyhow::Result<String> {
        self.ca.talosconfig("emulator", std::slice::from_ref(&self.endpoint), &[], roles)
    }

    /// Wipes etcd on every control-plane node, as `talosctl reset --system-labels-to-wipe EPHEMERAL`
    /// does: the members stop, their data is gone, and each node's etcd waits to be bootstrapped.
    pub fn wipe_etcd(&self) {
        self.state.etcd.stop();
        if let Ok(mut restored) = self.state.restored.try_lock() {
            restored.take();
        }
        self.state.uploads.lock().expect("uploads lock").clear();
        let waiting = self.state.waiting();
        self.state.node_etcd.lock().expect("node etcd lock").fill(waiting);
    }

    /// Changes the join timeout for nodes wiped from now on.
    pub fn set_join_timeout(&self, timeout: Duration) {
        *self.state.join_timeout.lock().expect("join timeout lock") = timeout;
    }

    /// Node `index` has just booted and stays in `stage` for `lasting`.
    pub fn boot(&self, index: usize, stage: BootStage, lasting: Duration) {
        self.state.booting.lock().expect("booting lock")[index] = Some((stage, Instant::now() + lasting));
    }

    /// Wipes etcd on control-plane node `index` only (its member of the first cluster stops, its data
    /// and upload go), or reboots a node whose etcd gave up joining: the node then joins a recovered
    /// cluster if one runs, else waits (for the join timeout). A member of a recovered cluster is
    /// wiped only with all the others ([`TalosEmulator::wipe_etcd`]).
    pub async fn wipe_node(&self, index: usize) {
        let member = self.state.nodes[index].etcd_member.expect("a control-plane node");
        if self.state.node_etcd.lock().expect("node etcd lock")[member] == NodeEtcd::Member {
            self.state.etcd.stop_member(member);
        }
        self.state.uploads.lock().expect("uploads lock").remove(&member);
        self.state.node_etcd.lock().expect("node etcd lock")[member] = self.state.waiting();
        Emulator { state: self.state.clone() }.join_waiting().await;
    }

    /// etcd on control-plane node `index` crashes and keeps crashing: its member stops, its data stays.
    pub fn crash_etcd(&self, index: usize) {
        let member = self.state.nodes[index].etcd_member.expect("a control-plane node");
        self.state.etcd.stop_member(member);
        self.state.node_etcd.lock().expect("node etcd lock")[member] = NodeEtcd::Stopped;
    }

    /// Node `index` is gone (`false`: it is back): nothing answers at its address, and its etcd member,
    /// if any, is gone with it.
    pub fn set_down(&self, index: usize, down: bool) {
        if let Some(member) = self.state.nodes[index].etcd_member.filter(|_| down) {
            let mut states = self.state.node_etcd.lock().expect("node etcd lock");
            if states[member] == NodeEtcd::Member {
                self.state.etcd.stop_member(member);
                states[member] = NodeEtcd::Stopped;
            }
        }
        self.state.down.lock().expect("down lock")[index] = down;
    }

    /// Whether node `index`'s EtcdRecover upload is stored (and not yet used by a recovery).
    pub fn has_upload_on(&self, index: usize) -> bool {
        let member = self.state.nodes[index].etcd_member.expect("a control-plane node");
        self.state.uploads.lock().expect("uploads lock").contains_key(&member)
    }

    /// Whether any node holds an EtcdRecover upload.
    pub fn has_recovery_snapshot(&self) -> bool {
        !self.state.uploads.lock().expect("uploads lock").is_empty()
    }

    /// The etcd restored by `Bootstrap{recover_etcd: true}`, if any.
    pub async fn with_restored<T>(&self, f: impl FnOnce(Option<&EtcdCluster>) -> T) -> T {
        f(self.state.restored.lock().await.as_ref())
    }

    /// The value at `key` in the restored etcd, which must exist: what a test reads back.
    pub async fn restored_get(&self, key: &str) -> Option<String> {
        self.with_restored(|etcd| etcd.expect("a restored etcd").get(key).expect("etcd answers")).await
    }
}

fn server_tls_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject as _;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let webpki =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(TalosClientVerifier { inner: webpki }))
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert_pem.as_bytes())?],
            rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?,
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Talos accepts a client certificate only if it chains to the OS CA and its ExtKeyUsage is exactly
/// `[ClientAuth]`.
#[derive(Debug)]
struct TalosClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for TalosClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // apid requires and verifies client certificates (tls.Mutual, i.e. RequireAndVerifyClientCert:
        // internal/app/apid/pkg/provider/provider.go, v1.13.0), and Go's crypto/tls answers every failed
        // verification with a bad_certificate alert (handshake_server.go, processCertsFromClient). rustls
        // would send unknown_ca, decrypt_error or access_denied; BadEncoding makes it send bad_certificate.
        let refuse = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding);
        self.inner.verify_client_cert(end_entity, intermediates, now).map_err(|_| refuse())?;
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity).map_err(|_| refuse())?;
        match cert.extended_key_usage() {
            Ok(Some(eku))
                if eku.value.client_auth
                    && !eku.value.server_auth
                    && !eku.value.any
                    && !eku.value.code_signing
                    && !eku.value.email_protection
                    && !eku.value.time_stamping
                    && !eku.value.ocsp_signing
                    && eku.value.other.is_empty() =>
            {
                Ok(ClientCertVerified::assertion())
            }
            _ => Err(refuse()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Listeners on `address` and on the `listen` address, one port for both (the port `listen` names,
/// or a free one for both).
async fn listen(address: &str, listen: &str) -> anyhow::Result<Vec<TcpListener>> {
    let listen: std::net::SocketAddr = listen.parse()?;
    anyhow::ensure!(listen.ip().is_loopback(), "the emulator listens on loopback only, not {listen}");
    let address: std::net::IpAddr = address.parse()?;
    for _ in 0..20 {
        let primary = TcpListener::bind((address, listen.port())).await?;
        let port = primary.local_addr()?.port();
        match TcpListener::bind((listen.ip(), port)).await {
            Ok(loopback) => return Ok(vec![primary, loopback]),
            Err(e) if listen.port() != 0 => return Err(e.into()),
            Err(_) => continue,
        }
    }
    anyhow::bail!("no port free on both {address} and {}", listen.ip())
}

async fn serve(listeners: Vec<TcpListener>, tls: rustls::ServerConfig, emulator: Emulator) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    type Connection = PingPolicy<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;
    let (tx, rx) = mpsc::channel::<Result<Connection, std::io::Error>>(16);
    // Held to the end: dropping the server (the emulator is dropped) stops accepting.
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        accepting.spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else { continue };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                // Handshakes run apart so a refused or slow client does not hold up the others.
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(socket).await {
                        let _ = tx.send(Ok(PingPolicy::new(stream))).await;
                    }
                });
            }
        });
    }
    let _ = tonic::transport::Server::builder()
        .add_service(MachineServiceServer::new(emulator).max_decoding_message_size(32 << 20))
        .serve_with_incoming(ReceiverStream::new(rx))
        .await;
    drop(accepting);
}

#[derive(Clone)]
struct Emulator {
    state: Arc<State>,
}

/// Where a call goes, from its `node` / `nodes` metadata.
enum Route {
    /// `node`: proxied one-to-one; errors are the call's status.
    One(Node),
    /// `nodes`: one-to-many; every message names its node and errors travel in-band.
    Many(Vec<Node>),
}

impl Emulator {
    fn authorize<T>(&self, request: &Request<T>, rpc: &str) -> Result<(), Status> {
        let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("client certificate required"))?;
        let first = certs.first().ok_or_else(|| Status::unauthenticated("client certificate required"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(first)
            .map_err(|_| Status::unauthenticated("bad client certificate"))?;
        let roles: Vec<String> =
            cert.subject().iter_organization().filter_map(|o| o.as_str().ok().map(str::to_owned)).collect();
        if roles.iter().any(|r| self.state.version.allowed_roles(rpc).contains(&r.as_str())) {
            Ok(())
        } else {
            Err(Status::permission_denied("not authorized"))
        }
    }

    fn route<T>(&self, request: &Request<T>) -> Result<Route, Status> {
        // apid dials the node as named; on loopback no hostname resolves, so only addresses route.
        let down = self.state.down.lock().expect("down lock").clone();
        let find = |name: &str| {
            self.state
                .nodes
                .iter()
                .enumerate()
                .find(|(i, n)| n.address == name && !down[*i])
                .map(|(_, n)| n.clone())
                .ok_or_else(|| Status::unavailable(format!("connection error: desc = \"transport: error while dialing: dial tcp {name}:50000: connect: no route to host\"")))
        };
        let md = request.metadata();
        // A worker's apid has no client certificate for other nodes: every call it would forward is
        // refused, and one whose single target is the worker itself (an address or hostname of its own) is
        // served locally (internal/app/apid/pkg/director/director.go, `Director`, v1.13.0).
        let endpoint = &self.state.nodes[self.state.endpoint_node];
        if endpoint.etcd_member.is_none() {
            let local = |name: &str| name == endpoint.address || name == endpoint.hostname;
            let nodes: Vec<&str> = md.get_all("nodes").iter().filter_map(|v| v.to_str().ok()).collect();
            let node = md.get("node").and_then(|v| v.to_str().ok());
            let single = match (node, &nodes[..]) {
                (None, []) => return Ok(Route::One(endpoint.clone())),
                (Some(name), []) => Some(name),
                (None, [name]) => Some(*name),
                _ => None,
            };
            return match single.filter(|name| local(name)) {
                Some(_) => Ok(Route::One(endpoint.clone())),
                None => Err(Status::permission_denied("no request forwarding")),
            };
        }
        if let Some(node) = md.get("node") {
            return Ok(Route::One(find(node.to_str().unwrap_or_default())?));
        }
        let many: Vec<String> = md
            .get_all("nodes")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_owned()))
            .filter(|s| !s.is_empty())
            .collect();
        if many.is_empty() {
            // No targeting: the endpoint node serves the call itself.
            return Ok(Route::One(endpoint.clone()));
        }
        // An unreachable node in one-to-many mode is reported in-band, like any other node error.
        // apid's one-to-many proxy labels each answer with the target as the client named it.
        Ok(Route::Many(
            many.iter()
                .map(|name| {
                    let node =
                        find(name).unwrap_or(Node { address: name.clone(), hostname: name.clone(), etcd_member: None });
                    Node { hostname: name.clone(), ..node }
                })
                .collect(),
        ))
    }

    fn member(&self, node: &Node, api: &str) -> Result<usize, Status> {
        let down = self.state.down.lock().expect("down lock").clone();
        if !self.state.nodes.iter().enumerate().any(|(i, n)| n.address == node.address && !down[i]) {
            return Err(Status::unavailable(format!("connection error: node {} unreachable", node.address)));
        }
        node.etcd_member.ok_or_else(|| Status::unimplemented(format!("{api} is only available on control plane nodes")))
    }

    /// `member`'s node's etcd now (a wait past its join timeout is recorded as failed).
    fn node_etcd(&self, member: usize) -> NodeEtcd {
        let mut states = self.state.node_etcd.lock().expect("node etcd lock");
        states[member] = states[member].clone().now();
        states[member].clone()
    }

    /// The stage `node` is still booting in, if it is.
    fn boot_stage(&self, node: &Node) -> Option<BootStage> {
        let index = self.state.nodes.iter().position(|n| n.address == node.address)?;
        let booting = self.state.booting.lock().expect("booting lock")[index];
        booting.filter(|(_, until)| Instant::now() < *until).map(|(stage, _)| stage)
    }

    fn set_node_etcd(&self, member: usize, etcd: NodeEtcd) {
        self.state.node_etcd.lock().expect("node etcd lock")[member] = etcd;
    }

    /// A channel to the etcd serving `member`'s node. Where etcd does not run, machined's local etcd
    /// client (clientv3 with WaitForReady) waits for it until the caller gives up: there is no quick
    /// "not running" answer (EtcdStatus in v1alpha1_server.go; internal/pkg/etcd/etcd.go, v1.13.0).
    async fn etcd_channel(&self, member: usize) -> Result<tonic::transport::Channel, Status> {
        let channel = match self.node_etcd(member) {
            NodeEtcd::Member => self.state.etcd.members[member].channel().await,
            NodeEtcd::Restored(index) => match self.state.restored.lock().await.as_ref() {
                Some(cluster) => cluster.members[index].channel().await,
                None => Err(anyhow::anyhow!("no recovered cluster")),
            },
            _ => {
                tokio::time::sleep(ETCD_CLIENT_WAIT).await;
                return Err(Status::deadline_exceeded("failed to query etcd status: context deadline exceeded"));
            }
        };
        channel.map_err(|e| Status::unavailable(format!("etcd: {e}")))
    }

    /// Bootstrap on one node.
    async fn bootstrap_node(&self, node: Node, options: BootstrapRequest) -> Result<(), Status> {
        // On a worker: FailedPrecondition before v1.13, then machinehelper.CheckControlplane's
        // Unimplemented (v1alpha1_server.go `Bootstrap`, v1.12.0 and v1.13.0).
        if node.etcd_member.is_none() && self.state.version < TalosVersion::V1_13_0 {
            return Err(Status::failed_precondition("bootstrap can only be performed on a control plane node"));
        }
        match self.boot_stage(&node) {
            Some(BootStage::ContainerRuntime) => {
                return Err(Status::failed_precondition("bootstrap is not available yet"));
            }
            Some(BootStage::TimeSync) => return Err(Status::failed_precondition("time is not in sync yet")),
            None => {}
        }
        let member = self.member(&node, "bootstrap")?;
        if self.node_etcd(member).has_data() {
            return Err(Status::already_exists("etcd data directory is not empty"));
        }
        self.set_node_etcd(member, NodeEtcd::Starting);
        let emulator = self.clone();
        tokio::spawn(async move { emulator.recover(member, options).await });
        Ok(())
    }

    /// The etcd service's pre stage after a Bootstrap of `member`'s node: recovery from the node's
    /// upload (or an empty cluster), then the other wiped nodes join.
    async fn recover(&self, member: usize, options: BootstrapRequest) {
        let upload = self.state.uploads.lock().expect("uploads lock").get(&member).cloned();
        let work = tempfile::Builder::new().prefix("teb-etcd-restored-").tempdir();
        let result = match work {
            _ if self.state.faults.fail_recovery.load(Ordering::SeqCst) => {
                Err(("error recovering from the snapshot: write /var/lib/etcd/member/snap/db: no space left on device (injected fault)".to_owned(), true))
            }
            Ok(work) => {
                let empty = self.state.faults.recover_empty.load(Ordering::SeqCst);
                let (recover, skip) = (options.recover_etcd && !empty, options.recover_skip_hash_check);
                let node = self.state.nodes.iter().find(|n| n.etcd_member == Some(member)).expect("a control plane");
                recovery::run_bootstrap(node, upload.as_deref(), recover, skip, work).await
            }
            Err(e) => Err((e.to_string(), false)),
        };
        match result {
            Ok(cluster) => {
                // Used: machined removes the upload once the recovery succeeded.
                if let Some(path) = upload {
                    let _ = std::fs::remove_file(path);
                    self.state.uploads.lock().expect("uploads lock").remove(&member);
                }
                let faults = &self.state.faults;
                if faults.nospace_after_recovery.load(Ordering::SeqCst)
                    && let Err(e) = raise_nospace(&cluster).await
                {
                    tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
                }
                let crash = faults.crash_after_recovery.load(Ordering::SeqCst);
                if crash {
                    cluster.stop_member(0);
                }
                *self.state.restored.lock().await = Some(cluster);
                if crash {
                    // Nothing to join: the wiped nodes keep waiting.
                    self.set_node_etcd(member, NodeEtcd::Stopped);
                } else {
                    self.set_node_etcd(member, NodeEtcd::Restored(0));
                    self.join_waiting().await;
                }
            }
            Err((why, data)) => self.set_node_etcd(member, NodeEtcd::Failed { why, data }),
        }
    }

    /// Wiped control-plane nodes that are up join the recovered cluster, once one runs.
    async fn join_waiting(&self) {
        let mut restored = self.state.restored.lock().await;
        let Some(cluster) = restored.as_mut() else {
            return;
        };
        let down = self.state.down.lock().expect("down lock").clone();
        for node in self.state.nodes.iter().enumerate().filter(|(i, _)| !down[*i]).map(|(_, n)| n) {
            let Some(member) = node.etcd_member else {
                continue;
            };
            if !matches!(self.node_etcd(member), NodeEtcd::Waiting { .. }) {
                continue;
            }
            match cluster.add_member(&node.hostname, &node.address).await {
                Ok(()) => self.set_node_etcd(member, NodeEtcd::Restored(cluster.members.len() - 1)),
                Err(e) => {
                    tracing::warn!(node = %node.address, error = %e, "the node could not join the recovered cluster")
                }
            }
        }
    }

    async fn status_of(&self, node: &Node) -> Result<EtcdMemberStatus, Status> {
        let member = self.member(node, "etcd status")?;
        let s = MaintenanceClient::new(self.etcd_channel(member).await?).status(StatusRequest {}).await?.into_inner();
        Ok(EtcdMemberStatus {
            protocol_version: s.version,
            db_size: s.db_size,
            db_size_in_use: s.db_size_in_use,
            leader: s.leader,
            raft_index: s.raft_index,
            raft_term: s.raft_term,
            raft_applied_index: s.raft_applied_index,
            errors: s.errors,
            is_learner: s.is_learner,
            member_id: s.header.map(|h| h.member_id).unwrap_or_default(),
            storage_version: String::new(),
        })
    }

    /// EtcdMemberList on `node`: with `query_local` its own etcd member answers; without, machined's
    /// client dials every control-plane address it knows (`NewClientFromControlPlaneIPs`,
    /// v1alpha1_server.go v1.13.0), so any running member may answer, of whichever cluster it is.
    async fn members_of(&self, node: &Node, query_local: bool) -> Result<Vec<EtcdMember>, Status> {
        let own = self.member(node, "member list")?;
        let running = |m: usize| matches!(self.node_etcd(m), NodeEtcd::Member | NodeEtcd::Restored(_));
        let members = self.state.node_etcd.lock().expect("node etcd lock").len();
        let member = match query_local || running(own) {
            true => own,
            false => (0..members).find(|&m| running(m)).unwrap_or(own),
        };
        let list =
            ClusterClient::new(self.etcd_channel(member).await?).member_list(MemberListRequest {}).await?.into_inner();
        // Report members as Talos does: by their node's address and hostname.
        Ok(list
            .members
            .into_iter()
            .map(|m| {
                let node = self
                    .state
                    .etcd
                    .members
                    .iter()
                    .position(|em| em.name == m.name)
                    .and_then(|i| self.state.nodes.iter().find(|n| n.etcd_member == Some(i)));
                let (address, hostname) =
                    node.map_or((m.name.clone(), m.name.clone()), |n| (n.address.clone(), n.hostname.clone()));
                EtcdMember {
                    id: m.id,
                    hostname,
                    peer_urls: vec![format!("https://{address}:2380")],
                    client_urls: vec![format!("https://{address}:2379")],
                    is_learner: m.is_learner,
                }
            })
            .collect())
    }

    /// Streams one node's snapshot into `tx`, in Talos's 1 KiB messages, applying the faults.
    async fn stream_snapshot(
        &self,
        node: &Node,
        hostname: Option<&str>,
        tx: &mpsc::Sender<Result<Data, Status>>,
    ) -> Result<(), Status> {
        let member = self.member(node, "etcd snapshot")?;
        let faults = &self.state.faults;
        if faults.unavailable.load(Ordering::SeqCst) {
            return Err(Status::unavailable("etcd snapshot unavailable (injected fault)"));
        }
        let mut source = MaintenanceClient::new(self.etcd_channel(member).await?)
            .max_decoding_message_size(64 << 20)
            .snapshot(SnapshotRequest {})
            .await?
            .into_inner();
        let metadata = hostname.map(|h| Metadata { hostname: h.to_owned(), ..Default::default() });
        let started = tokio::time::Instant::now();
        let mut sent: u64 = 0;
        let mut pending = BytesMut::new();
        let mut finished = false;
        loop {
            // Hold back one chunk plus the trailer so the last bytes can still be corrupted at the end.
            while pending.len() > CHUNK + 32 || (finished && !pending.is_empty()) {
                let take = pending.len().min(CHUNK);
                let chunk = pending.split_to(take).freeze();
                if !self.send_chunk(chunk, &mut sent, started, metadata.clone(), tx).await {
                    return Ok(());
                }
            }
            if finished {
                return Ok(());
            }
            match source.message().await {
                Ok(Some(response)) => pending.extend_from_slice(&response.blob),
                Ok(None) => {
                    finished = true;
                    if faults.corrupt_trailer.load(Ordering::SeqCst)
                        && let Some(last) = pending.last_mut()
                    {
                        *last ^= 0x01;
                    }
                }
                // Talos logs a failed etcd read and ends the stream with status OK.
                Err(e) => {
                    tracing::warn!(error = %e, "etcd snapshot read failed; ending the stream");
                    return Ok(());
                }
            }
        }
    }

    /// Sends one chunk; false when the stream must end (truncated, stalled or the client left).
    async fn send_chunk(
        &self,
        chunk: Bytes,
        sent: &mut u64,
        started: tokio::time::Instant,
        metadata: Option<Metadata>,
        tx: &mpsc::Sender<Result<Data, Status>>,
    ) -> bool {
        let faults = &self.state.faults;
        let next = *sent + chunk.len() as u64;
        let truncate = faults.truncate_after.load(Ordering::SeqCst);
        if next > truncate {
            return false;
        }
        if next > faults.stall_after.load(Ordering::SeqCst) {
            tx.closed().await;
            return false;
        }
        let rate = faults.bytes_per_second.load(Ordering::SeqCst);
        if rate > 0 {
            let due = started + Duration::from_secs_f64(next as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
        *sent = next;
        tx.send(Ok(Data { metadata, bytes: chunk })).await.is_ok()
    }
}

/// Raises NOSPACE on the first member of `cluster` through etcd's Alarm API (what etcd does itself
/// when a write finds the database over its quota).
async fn raise_nospace(cluster: &EtcdCluster) -> anyhow::Result<()> {
    let channel = cluster.members[0].channel().await?;
    let status = MaintenanceClient::new(channel.clone()).status(StatusRequest {}).await?.into_inner();
    let member_id = status.header.map(|h| h.member_id).unwrap_or_default();
    let request = AlarmRequest { action: AlarmAction::Activate as i32, member_id, alarm: AlarmType::Nospace as i32 };
    MaintenanceClient::new(channel).alarm(request).await?;
    Ok(())
}

fn in_band_error(node: &Node, status: &Status) -> Metadata {
    Metadata {
        hostname: node.hostname.clone(),
        error: status.message().to_owned(),
        status: Some(rpc::Status { code: status.code() as i32, message: status.message().to_owned(), details: vec![] }),
    }
}

/// A node's answer: its metadata (one-to-many only) and value, or its in-band error.
type NodeAnswer<T> = Result<(Option<Metadata>, T), Metadata>;

/// Runs a unary per-node call along `route`, shaping the answer the way apid does.
async fn unary<T, F, Fut>(route: Route, call: F) -> Result<Vec<NodeAnswer<T>>, Status>
where
    F: Fn(Node) -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    match route {
        Route::One(node) => Ok(vec![Ok((None, call(node).await?))]),
        Route::Many(nodes) => {
            let mut out = Vec::new();
            for node in nodes {
                let metadata = Metadata { hostname: node.hostname.clone(), ..Default::default() };
                out.push(match call(node.clone()).await {
                    Ok(value) => Ok((Some(metadata), value)),
                    Err(status) => Err(in_band_error(&node, &status)),
                });
            }
            Ok(out)
        }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Data, Status>> + Send>>;

#[tonic::async_trait]
impl MachineService for Emulator {
    /// machined's Bootstrap, as [`recovery`] describes: refused while the node's etcd data directory
    /// has entries, running or not; otherwise accepted at once, the recovery running afterwards.
    /// Targeted with `node` or, as talosctl does, `nodes` (answers then carry the node, errors in band).
    async fn bootstrap(&self, request: Request<BootstrapRequest>) -> Result<Response<BootstrapResponse>, Status> {
        self.authorize(&request, "Bootstrap")?;
        let route = self.route(&request)?;
        let options = request.into_inner();
        let messages = unary(route, |node| self.bootstrap_node(node, options))
            .await?
            .into_iter()
            .map(|answer| match answer {
                Ok((metadata, ())) => Bootstrap { metadata },
                Err(metadata) => Bootstrap { metadata: Some(metadata) },
            })
            .collect();
        Ok(Response::new(BootstrapResponse { messages }))
    }

    async fn etcd_member_list(
        &self,
        request: Request<EtcdMemberListRequest>,
    ) -> Result<Response<EtcdMemberListResponse>, Status> {
        self.authorize(&request, "EtcdMemberList")?;
        let route = self.route(&request)?;
        let query_local = request.get_ref().query_local;
        let messages = unary(route, |node| async move { self.members_of(&node, query_local).await })
            .await?
            .into_iter()
            .map(|answer| match answer {
                Ok((metadata, members)) => EtcdMembers { metadata, legacy_members: vec![], members },
                Err(metadata) => EtcdMembers { metadata: Some(metadata), ..Default::default() },
            })
            .collect();
        Ok(Response::new(EtcdMemberListResponse { messages }))
    }

    async fn etcd_recover(&self, request: Request<Streaming<Data>>) -> Result<Response<EtcdRecoverResponse>, Status> {
        self.authorize(&request, "EtcdRecover")?;
        let route = self.route(&request)?;
        let Route::One(node) = route else {
            return Err(Status::invalid_argument("EtcdRecover needs one target node"));
        };
        // Accepted whatever etcd's state (machined only needs /var mounted): it is the node's own file
        // that only a Bootstrap with recover_etcd reads. A stream that ends in an error leaves no file.
        if self.boot_stage(&node) == Some(BootStage::ContainerRuntime) {
            return Err(Status::failed_precondition("etcd service is not ready for recovery yet"));
        }
        let member = self.member(&node, "etcd recover")?;
        let path = self.state.recovery_dir.path().join(format!("etcd-{member}.snapshot"));
        // machined truncates the file first (and removes it unless the upload completes).
        self.state.uploads.lock().expect("uploads lock").remove(&member);
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| Status::internal(e.to_string()))?;
        let mut stream = request.into_inner();
        while let Some(data) = stream.message().await? {
            tokio::io::AsyncWriteExt::write_all(&mut file, &data.bytes)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(|e| Status::internal(e.to_string()))?;
        self.state.uploads.lock().expect("uploads lock").insert(member, path);
        Ok(Response::new(EtcdRecoverResponse { messages: vec![EtcdRecover { metadata: None }] }))
    }

    type EtcdSnapshotStream = SnapshotStream;

    async fn etcd_snapshot(&self, request: Request<EtcdSnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        self.authorize(&request, "EtcdSnapshot")?;
        let route = self.route(&request)?;
        let (tx, rx) = mpsc::channel(16);
        match route {
            Route::One(node) => {
                // Refusals (worker node, Unavailable) are the call's status, before any data.
                self.member(&node, "etcd snapshot")?;
                if self.state.faults.unavailable.load(Ordering::SeqCst) {
                    return Err(Status::unavailable("etcd snapshot unavailable (injected fault)"));
                }
                let emulator = self.clone();
                tokio::spawn(async move {
                    if let Err(status) = emulator.stream_snapshot(&node, None, &tx).await {
                        let _ = tx.send(Err(status)).await;
                    }
                });
            }
            Route::Many(nodes) => {
                let emulator = self.clone();
                tokio::spawn(async move {
                    for node in nodes {
                        if let Err(status) = emulator.stream_snapshot(&node, Some(&node.hostname), &tx).await {
                            let data = Data { metadata: Some(in_band_error(&node, &status)), bytes: Bytes::new() };
                            let _ = tx.send(Ok(data)).await;
                        }
                    }
                });
            }
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn etcd_status(&self, request: Request<()>) -> Result<Response<EtcdStatusResponse>, Status> {
        self.authorize(&request, "EtcdStatus")?;
        let route = self.route(&request)?;
        let messages = unary(route, |node| async move { self.status_of(&node).await })
            .await?
            .into_iter()
            .map(|answer| match answer {
                Ok((metadata, status)) => EtcdStatus { metadata, member_status: Some(status) },
                Err(metadata) => EtcdStatus { metadata: Some(metadata), member_status: None },
            })
            .collect();
        Ok(Response::new(EtcdStatusResponse { messages }))
    }

    /// The alarms of the node's own etcd member (EtcdAlarmList asks the local etcd).
    async fn etcd_alarm_list(&self, request: Request<()>) -> Result<Response<EtcdAlarmListResponse>, Status> {
        self.authorize(&request, "EtcdAlarmList")?;
        let route = self.route(&request)?;
        let alarms = |node: Node| async move {
            let member = self.member(&node, "etcd alarm list")?;
            let request = AlarmRequest { action: AlarmAction::Get as i32, member_id: 0, alarm: AlarmType::None as i32 };
            let response = MaintenanceClient::new(self.etcd_channel(member).await?)
                .alarm(request)
                .await
                .map_err(|e| Status::unknown(format!("failed to list etcd alarms: {}", e.message())))?;
            Ok(response
                .into_inner()
                .alarms
                .into_iter()
                .map(|a| EtcdMemberAlarm { member_id: a.member_id, alarm: a.alarm })
                .collect::<Vec<_>>())
        };
        let messages = unary(route, alarms)
            .await?
            .into_iter()
            .map(|answer| match answer {
                Ok((metadata, member_alarms)) => EtcdAlarm { metadata, member_alarms },
                Err(metadata) => EtcdAlarm { metadata: Some(metadata), member_alarms: vec![] },
            })
            .collect();
        Ok(Response::new(EtcdAlarmListResponse { messages }))
    }

    /// The node's services as machined lists them; only etcd's state is modelled.
    async fn service_list(&self, request: Request<()>) -> Result<Response<ServiceListResponse>, Status> {
        self.authorize(&request, "ServiceList")?;
        let route = self.route(&request)?;
        let services = |node: Node| async move {
            let mut services = vec![service("apid", "Running", true, "Health check successful")];
            if let Some(member) = node.etcd_member {
                // A booting node's etcd waits for its conditions (service_runner.go `Run`).
                let (state, healthy, message) = match self.boot_stage(&node) {
                    Some(BootStage::ContainerRuntime) => {
                        ("Waiting", false, "Waiting for service \"cri\" to be \"up\"".to_owned())
                    }
                    Some(BootStage::TimeSync) => ("Waiting", false, "Waiting for time sync".to_owned()),
                    None => self.node_etcd(member).service(),
                };
                services.push(service("etcd", state, healthy, &message));
            }
            Ok(services)
        };
        let messages = unary(route, services)
            .await?
            .into_iter()
            .map(|answer| match answer {
                Ok((metadata, services)) => ServiceList { metadata, services },
                Err(metadata) => ServiceList { metadata: Some(metadata), services: vec![] },
            })
            .collect();
        Ok(Response::new(ServiceListResponse { messages }))
    }

    type ListStream = Pin<Box<dyn Stream<Item = Result<FileInfo, Status>> + Send>>;

    /// machined's List, for etcd's data directory only: the root (".") and `member` when it has data.
    async fn list(&self, request: Request<ListRequest>) -> Result<Response<Self::ListStream>, Status> {
        self.authorize(&request, "List")?;
        let Route::One(node) = self.route(&request)? else {
            return Err(Status::unimplemented("the emulator lists one node at a time"));
        };
        let root = request.into_inner().root;
        let root = format!("/{}", root.trim_matches('/'));
        if root != "/var/lib/etcd" {
            return Err(Status::unimplemented("the emulator lists only /var/lib/etcd"));
        }
        let has_data = node.etcd_member.is_some_and(|member| self.node_etcd(member).has_data());
        let entry = |relative: &str, name: String| FileInfo {
            name,
            is_dir: true,
            mode: 0o40700,
            relative_name: relative.to_owned(),
            ..Default::default()
        };
        let mut entries = vec![Ok(entry(".", root.clone()))];
        if has_data {
            entries.push(Ok(entry("member", format!("{root}/member"))));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(entries))))
    }

    async fn version(&self, request: Request<()>) -> Result<Response<VersionResponse>, Status> {
        self.authorize(&request, "Version")?;
        let route = self.route(&request)?;
        let version = |_node: Node| async move {
            Ok(VersionInfo {
                tag: self.state.version.to_string(),
                sha: "0000000".into(),
                built: String::new(),
                go_version: String::new(),
                os: "linux".into(),
                arch: std::env::consts::ARCH.into(),
            })
        };
        let messages = unary(route, version)
            .await?
            .into_iter()
            .map(|answer| match answer {
                Ok((metadata, version)) => Version { metadata, version: Some(version) },
                Err(metadata) => Version { metadata: Some(metadata), version: None },
            })
            .collect();
        Ok(Response::new(VersionResponse { messages }))
    }
}

fn service(id: &str, state: &str, healthy: bool, message: &str) -> ServiceInfo {
    ServiceInfo {
        id: id.to_owned(),
        state: state.to_owned(),
        events: Some(ServiceEvents {
            events: vec![ServiceEvent { msg: message.to_owned(), state: state.to_owned(), ts: None }],
        }),
        health: Some(ServiceHealth { unknown: false, healthy, last_message: message.to_owned(), last_change: None }),
    }
}
