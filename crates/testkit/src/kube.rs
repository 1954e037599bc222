//! A real Kubernetes control plane on loopback ports: kube-apiserver + etcd (RBAC on) and
//! kube-controller-manager with the garbage collector and namespace controller, so that owner-reference
//! cascades and namespace deletion happen in tests as they do in a cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Client, Config};

use crate::assets::assets;
use crate::etcd::{EtcdCluster, EtcdOptions};
use crate::process::ChildProcess;

/// The user the operator's RBAC manifests bind: the ServiceAccount of `deploy/rbac.yaml`.
pub const OPERATOR_USER: &str = "system:serviceaccount:talos-etcd-backup:talos-etcd-backup";

/// A namespaced custom resource that keeps any fields (`widgets.example.com`, kind Widget), for
/// tests that fill a cluster with objects of a group of its own.
pub const WIDGET_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;

/// The API resource of [`WIDGET_CRD`]'s objects.
pub fn widget_resource() -> kube::discovery::ApiResource {
    kube::discovery::ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    }
}

/// The operator's RBAC manifests, applied to every environment.
pub const RBAC_YAML: &str = include_str!("../../../deploy/rbac.yaml");

/// etcd + kube-apiserver + kube-controller-manager. Stopped when dropped (or when the process exits).
pub struct KubeEnv {
    pub server: String,
    dir: tempfile::TempDir,
    _controller_manager: ChildProcess,
    apiserver: Mutex<Option<ChildProcess>>,
    etcd_servers: String,
    port: u16,
    /// Its own etcd, unless it was started on another's.
    _etcd: Option<EtcdCluster>,
}

/// How [`KubeEnv::start_with`] starts kube-apiserver.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// The client URLs of an etcd to store in (comma-separated), instead of a new one: a Talos
    /// emulator's, say, whose snapshots then hold what kube-apiserver wrote.
    pub etcd_servers: Option<String>,
    /// An EncryptionConfiguration (YAML) for `--encryption-provider-config`.
    pub encryption: Option<String>,
}

impl KubeEnv {
    /// One environment per test process, started on first use, with the CRDs and RBAC applied. Tests
    /// share it and keep apart by namespace.
    pub fn shared() -> anyhow::Result<&'static KubeEnv> {
        static ENV: OnceLock<Result<KubeEnv, String>> = OnceLock::new();
        ENV.get_or_init(|| {
            // Children die with the thread that spawned them (PR_SET_PDEATHSIG), so spawn them from a
            // thread that lives as long as the process.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                let env = runtime
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(KubeEnv::start()))
                    .map_err(|e| format!("{e:#}"));
                let _ = tx.send(env);
                loop {
                    std::thread::park();
                }
            });
            rx.recv().unwrap_or_else(|_| Err("kube environment thread died".into()))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Starts a new environment and applies the CRDs and the operator's RBAC.
    pub async fn start() -> anyhow::Result<Self> {
        KubeEnv::start_with(KubeOptions::default()).await
    }

    /// [`KubeEnv::start`], as `options` say.
    pub async fn start_with(options: KubeOptions) -> anyhow::Result<Self> {
        let (etcd, etcd_servers) = match options.etcd_servers {
            Some(servers) => (None, servers),
            None => {
                let etcd =
                    EtcdCluster::start(1, &EtcdOptions::default()).await.context("starting etcd for kube-apiserver")?;
                let servers = etcd.client_urls().join(",");
                (Some(etcd), servers)
            }
        };
        let dir = tempfile::Builder::new().prefix("teb-kube-").tempdir()?;
        let port = crate::free_port();
        write_tokens(dir.path())?;
        write_service_account_keys(dir.path())?;
        let d = |f: &str| dir.path().join(f);
        if let Some(encryption) = &options.encryption {
            std::fs::write(d(ENCRYPTION_CONFIG), encryption)?;
        }
        let command = apiserver_command(dir.path(), &etcd_servers, port)?;
        let mut apiserver = ChildProcess::spawn("kube-apiserver", command, &d("kube-apiserver.log"))?;
        let server = format!("https://127.0.0.1:{port}");
        wait_ready(&server, dir.path(), &mut apiserver).await?;
        let admin = client_of(dir.path(), "admin").await?;
        apply_yaml(&admin, &teb_api::crds_yaml(), None).await.context("applying the CRDs")?;
        apply_yaml(&admin, RBAC_YAML, None).await.context("applying deploy/rbac.yaml")?;
        wait_for_crds(&admin).await?;
        // After the CRDs: the garbage collector then watches them from its first sync.
        let controller_manager = start_controller_manager(dir.path())?;
        wait_for_controllers(&admin).await.with_context(|| log_tail(&d("kube-controller-manager.log")))?;
        let apiserver = Mutex::new(Some(apiserver));
        Ok(KubeEnv { server, dir, _controller_manager: controller_manager, apiserver, etcd_servers, port, _etcd: etcd })
    }

    /// Replaces the encryption configuration kube-apiserver reads at its next start.
    pub fn set_encryption(&self, config: &str) -> anyhow::Result<()> {
        Ok(std::fs::write(self.dir.path().join(ENCRYPTION_CONFIG), config)?)
    }

    /// Stops kube-apiserver (as an upgrade or a crash of the control plane would).
    pub fn stop_apiserver(&self) {
        drop(self.apiserver.lock().expect("apiserver lock").take());
    }

    /// Starts kube-apiserver again on the same port and storage, and waits until it is ready.
    pub async fn start_apiserver(&self) -> anyhow::Result<()> {
        let command = apiserver_command(self.dir.path(), &self.etcd_servers, self.port)?;
        let mut apiserver =
            ChildProcess::spawn("kube-apiserver", command, &self.dir.path().join("kube-apiserver.log"))?;
        wait_ready(&self.server, self.dir.path(), &mut apiserver).await?;
        *self.apiserver.lock().expect("apiserver lock") = Some(apiserver);
        Ok(())
    }

    /// The client URLs of kube-apiserver's etcd, comma-separated.
    pub fn etcd_endpoints(&self) -> &str {
        &self.etcd_servers
    }

    /// A kubeconfig file for `admin` (system:masters) or `operator` (bound only by deploy/rbac.yaml).
    pub fn kubeconfig_path(&self, user: &str) -> PathBuf {
        kubeconfig_path(self.dir.path(), user)
    }

    /// A client with every permission.
    pub async fn admin_client(&self) -> anyhow::Result<Client> {
        self.client("admin").await
    }

    /// A client holding only what the operator's RBAC manifests grant.
    pub async fn operator_client(&self) -> anyhow::Result<Client> {
        self.client("operator").await
    }

    async fn client(&self, user: &str) -> anyhow::Result<Client> {
        client_of(self.dir.path(), user).await
    }

    /// Creates a namespace with a unique name starting with `prefix`.
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(self.admin_client().await?).create(&PostParams::default(), &ns).await?;
        Ok(name)
    }
}

fn apiserver_command(dir: &Path, etcd_servers: &str, port: u16) -> anyhow::Result<Command> {
    let d = |f: &str| dir.join(f);
    let mut command = Command::new(&assets()?.kube_apiserver);
    command
        .arg(format!("--etcd-servers={etcd_servers}"))
        .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
        .arg(format!("--secure-port={port}"))
        .args(["--endpoint-reconciler-type=none", "--insecure-port=0"])
        .arg(format!("--cert-dir={}", d("certs").display()))
        .arg("--authorization-mode=RBAC")
        .arg(format!("--token-auth-file={}", d("tokens.csv").display()))
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg(format!("--service-account-key-file={}", d("sa.pub").display()))
        .arg(format!("--service-account-signing-key-file={}", d("sa.key").display()))
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg("--v=0");
    if d(ENCRYPTION_CONFIG).exists() {
        command.arg(format!("--encryption-provider-config={}", d(ENCRYPTION_CONFIG).display()));
    }
    Ok(command)
}

/// kube-apiserver's encryption configuration, in its directory, when it has one.
const ENCRYPTION_CONFIG: &str = "encryption.yaml";

fn kubeconfig_path(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("{user}.kubeconfig"))
}

async fn client_of(dir: &Path, user: &str) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path(dir, user))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn wait_ready(server: &str, dir: &Path, apiserver: &mut ChildProcess) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    let log = dir.join("kube-apiserver.log");
    while tokio::time::Instant::now() < deadline {
        if let Err(e) = apiserver.check_running() {
            anyhow::bail!("{e}\n{}", log_tail(&log));
        }
        if dir.join("certs/apiserver.crt").exists() {
            write_kubeconfigs(server, dir)?;
            match client_of(dir, "admin").await {
                Ok(client) => match client.request_text(http::Request::get("/readyz").body(Vec::new())?).await {
                    Ok(text) if text.trim() == "ok" => return Ok(()),
                    Ok(text) => last = text,
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("kube-apiserver not ready after 90s: {last}\n{}", log_tail(&log))
}

async fn wait_for_crds(admin: &Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds = Api::<CustomResourceDefinition>::all(admin.clone());
    for name in ["talosetcdbackups.talos.alperen.cloud", "taloscontrolplanes.talos.alperen.cloud"] {
        let cond = kube::runtime::conditions::is_crd_established();
        tokio::time::timeout(Duration::from_secs(30), kube::runtime::wait::await_condition(crds.clone(), name, cond))
            .await
            .with_context(|| format!("CRD {name} not established"))??;
    }
    Ok(())
}

/// kube-controller-manager with the two controllers whose absence would make the proving ground kinder
/// than a cluster: the garbage collector (owner-reference cascades) and the namespace controller.
fn start_controller_manager(dir: &Path) -> anyhow::Result<ChildProcess> {
    let admin = kubeconfig_path(dir, "admin");
    let mut command = Command::new(&assets()?.kube_controller_manager);
    command
        .arg(format!("--kubeconfig={}", admin.display()))
        .arg(format!("--authentication-kubeconfig={}", admin.display()))
        .arg(format!("--authorization-kubeconfig={}", admin.display()))
        .arg("--controllers=garbagecollector,namespace")
        .args(["--leader-elect=false", "--use-service-account-credentials=false"])
        .args(["--bind-address=127.0.0.1", "--port=0"])
        .arg(format!("--secure-port={}", crate::free_port()))
        .arg(format!("--cert-dir={}", dir.join("kcm-certs").display()))
        .arg("--v=0");
    ChildProcess::spawn("kube-controller-manager", command, &dir.join("kube-controller-manager.log"))
}

/// Waits until both controllers act: a ConfigMap owned by a deleted one is collected, and a deleted
/// namespace goes.
async fn wait_for_controllers(admin: &Client) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::ConfigMap;
    let probe = format!("teb-controllers-probe-{}", std::process::id());
    let namespaces = Api::<Namespace>::all(admin.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": probe}}))?;
    namespaces.create(&PostParams::default(), &ns).await?;
    let maps = Api::<ConfigMap>::namespaced(admin.clone(), &probe);
    let owner = maps
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": "owner"}}))?)
        .await?;
    let dependent = serde_json::json!({"metadata": {"name": "dependent", "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid,
    }]}});
    maps.create(&PostParams::default(), &serde_json::from_value(dependent)?).await?;
    maps.delete("owner", &Default::default()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while maps.get_opt("dependent").await?.is_some() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the garbage collector did not collect within 120s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    namespaces.delete(&probe, &Default::default()).await?;
    while namespaces.get_opt(&probe).await?.is_some() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the namespace controller did not delete within 120s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

fn write_kubeconfigs(server: &str, dir: &Path) -> anyhow::Result<()> {
    let ca = std::fs::read(dir.join("certs/apiserver.crt"))?;
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    for (user, token) in [("admin", ADMIN_TOKEN), ("operator", OPERATOR_TOKEN)] {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: teb\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
             users:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: {user}\n  context:\n    cluster: teb\n    user: {user}\n    namespace: default\n\
             current-context: {user}\n"
        );
        std::fs::write(kubeconfig_path(dir, user), yaml)?;
    }
    Ok(())
}

fn log_tail(log: &Path) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

const ADMIN_TOKEN: &str = "teb-admin-token";
const OPERATOR_TOKEN: &str = "teb-operator-token";

fn write_tokens(dir: &Path) -> anyhow::Result<()> {
    let csv = format!(
        "{ADMIN_TOKEN},admin,admin,system:masters\n\
         {OPERATOR_TOKEN},{OPERATOR_USER},operator,\"system:serviceaccounts,system:serviceaccounts:talos-etcd-backup\"\n"
    );
    Ok(std::fs::write(dir.join("tokens.csv"), csv)?)
}

fn write_service_account_keys(dir: &Path) -> anyhow::Result<()> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    std::fs::write(dir.join("sa.key"), key.serialize_pem())?;
    std::fs::write(dir.join("sa.pub"), key.public_key_pem())?;
    Ok(())
}

/// Server-side applies every document of a multi-document YAML stream, as `kubectl apply
/// --server-side` would. Namespaced objects go to `namespace` when given, else to their own
/// namespace, else to `default`.
pub async fn apply_yaml(client: &Client, yaml: &str, namespace: Option<&str>) -> anyhow::Result<Vec<DynamicObject>> {
    use serde::Deserialize as _;
    let mut applied = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        let mut object: DynamicObject = serde_yaml::from_value(value)?;
        let types = object.types.clone().context("a document has no apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await?;
        let name = object.metadata.name.clone().context("a document has no metadata.name")?;
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Namespaced => {
                let ns = namespace
                    .map(str::to_owned)
                    .or(object.metadata.namespace.clone())
                    .unwrap_or_else(|| "default".into());
                object.metadata.namespace = Some(ns.clone());
                Api::namespaced_with(client.clone(), &ns, &resource)
            }
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let params = PatchParams::apply("teb-testkit").force();
        applied.push(
            api.patch(&name, &params, &Patch::Apply(&object))
                .await
                .with_context(|| format!("applying {} {name}", gvk.kind))?,
        );
    }
    Ok(applied)
}

/// Creates a TalosControlPlane and then writes its status, as the upstream operator does (the status
/// subresource ignores a status sent on create).
pub async fn create_control_plane(client: &Client, cp: &teb_api::TalosControlPlane) -> anyhow::Result<()> {
    let namespace = cp.metadata.namespace.clone().context("control plane has no namespace")?;
    let name = cp.metadata.name.clone().context("control plane has no name")?;
    let api: Api<teb_api::TalosControlPlane> = Api::namespaced(client.clone(), &namespace);
    api.create(&PostParams::default(), cp).await?;
    if let Some(status) = &cp.status {
        let patch = serde_json::json!({ "status": status });
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    Ok(())
}
