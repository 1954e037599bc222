//! Scenarios every test file shares: the components a test starts, wired together as the specification's
//! examples expect them (the bucket `my-etcd-backups` in its region, the control plane `my-controlplane`).
//!
//! - [`ProvingGround`]: a namespace on the shared kube-apiserver, an S3 server and a Talos emulator; the
//!   operator under test (in-process or a process) is started by the test on top of it.
//! - [`CliGround`]: an S3 server with the bucket `backups`, a Talos emulator and a directory with
//!   talosconfigs, for the command-line tests.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};

use crate::emulator::{EmulatorOptions, TalosEmulator};
use crate::kube::{KubeEnv, apply_yaml, create_control_plane};
use crate::s3::S3Server;
use crate::{fixtures, spec};

/// A namespace of its own on `env`, an S3 server holding the specification's bucket, and a Talos emulator.
pub struct ProvingGround {
    pub env: &'static KubeEnv,
    pub ns: String,
    pub admin: Client,
    pub s3: S3Server,
    pub emulator: TalosEmulator,
}

impl ProvingGround {
    /// On the shared kube environment, in a new namespace named after `prefix`; the S3 server over TLS
    /// when `tls`.
    pub async fn start(prefix: &str, options: EmulatorOptions, tls: bool) -> ProvingGround {
        ProvingGround::start_in(KubeEnv::shared().expect("kube environment"), prefix, options, tls).await
    }

    pub async fn start_in(env: &'static KubeEnv, prefix: &str, options: EmulatorOptions, tls: bool) -> ProvingGround {
        let ns = env.namespace(prefix).await.unwrap();
        let admin = env.admin_client().await.unwrap();
        let s3 = if tls { S3Server::start_tls().await } else { S3Server::start().await }.unwrap();
        s3.create_bucket_in("my-etcd-backups", spec::SPEC_REGION).unwrap();
        let emulator = TalosEmulator::start(options).await.unwrap();
        ProvingGround { env, ns, admin, s3, emulator }
    }

    /// Puts `count` values of 512 KiB into etcd, so that a snapshot spans several parts.
    pub async fn fill_etcd(&self, count: usize) {
        fill(&self.emulator, "/big", count, 512 * 1024).await;
    }

    pub async fn create_secret(&self, secret: &Secret) {
        Api::<Secret>::namespaced(self.admin.clone(), &self.ns).create(&PostParams::default(), secret).await.unwrap();
    }

    /// The reasons of the namespace's events.
    pub async fn event_reasons(&self) -> Vec<String> {
        self.events().await.into_iter().filter_map(|e| e.reason).collect()
    }

    /// Waits up to 30 s for an Event with `reason` about the object `name` (any object when `None`):
    /// the controllers record Events after the status they report, so a test that saw the status may
    /// still be ahead of them.
    pub async fn expect_event(&self, name: Option<&str>, reason: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.events().await;
            let about = |e: &Event| name.is_none() || e.regarding.as_ref().and_then(|r| r.name.as_deref()) == name;
            if events.iter().any(|e| about(e) && e.reason.as_deref() == Some(reason)) {
                return;
            }
            let seen: Vec<_> = events.iter().filter(|e| about(e)).filter_map(|e| e.reason.clone()).collect();
            assert!(tokio::time::Instant::now() < deadline, "no {reason} event about {name:?}; seen: {seen:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The namespace's Events.
    pub async fn events(&self) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.admin.clone(), &self.ns);
        events.list(&ListParams::default()).await.unwrap().items
    }

    /// Applies YAML into the namespace, as `kubectl apply -n` would.
    pub async fn apply(&self, yaml: &str) {
        apply_yaml(&self.admin, yaml, Some(&self.ns)).await.unwrap();
    }

    /// The emulator's control plane as the upstream operator records it, named `my-controlplane`.
    pub async fn control_plane_with_bundle(&self) {
        let cp = fixtures::control_plane_with_bundle(
            "my-controlplane",
            &self.ns,
            &self.emulator.ca,
            std::slice::from_ref(&self.emulator.endpoint),
        );
        create_control_plane(&self.admin, &cp).await.unwrap();
    }

    /// The command line of an operator process (the binary at `binary`) watching this namespace as the
    /// RBAC-limited operator user, with the e2e tests' small parts and quick retries, serving its
    /// health and metrics on `health_port`.
    pub fn operator_command(&self, binary: &str, health_port: u16) -> std::process::Command {
        let mut command = std::process::Command::new(binary);
        command
            .arg("operator")
            .arg("--kubeconfig")
            .arg(self.env.kubeconfig_path("operator"))
            .args(["--namespace", &self.ns, "--part-size-mib", "5", "--retry-backoff", "1s"])
            .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
            .env("RUST_LOG", "info");
        command
    }

    /// No object and no unfinished upload in the bucket.
    pub async fn assert_bucket_clean(&self) {
        assert!(self.s3.objects("my-etcd-backups").await.unwrap().is_empty(), "no object may be left");
        assert!(
            self.s3.unfinished_uploads().is_empty(),
            "no unfinished upload may be left: {:?}",
            self.s3.unfinished_uploads()
        );
    }
}

/// An S3 server with the bucket `backups`, a Talos emulator and a directory for talosconfigs and keys.
pub struct CliGround {
    pub emulator: TalosEmulator,
    pub s3: S3Server,
    pub dir: tempfile::TempDir,
}

impl CliGround {
    /// One control plane, no workers, S3 over plain HTTP.
    pub async fn start() -> CliGround {
        CliGround::start_with(EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() }, false).await
    }

    pub async fn start_with(options: EmulatorOptions, tls: bool) -> CliGround {
        let emulator = TalosEmulator::start(options).await.unwrap();
        let s3 = if tls { S3Server::start_tls().await } else { S3Server::start().await }.unwrap();
        s3.create_bucket("backups").unwrap();
        CliGround { emulator, s3, dir: tempfile::tempdir().unwrap() }
    }

    /// A talosconfig file for the emulator with `role`, written as `<file>` in the directory.
    pub fn talosconfig(&self, file: &str, role: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, self.emulator.talosconfig(&[role]).unwrap()).unwrap();
        path
    }

    /// Puts `count` values of `size` bytes into etcd under `prefix`.
    pub async fn fill(&self, prefix: &str, count: usize, size: usize) {
        fill(&self.emulator, prefix, count, size).await;
    }
}

async fn fill(emulator: &TalosEmulator, prefix: &str, count: usize, size: usize) {
    let value = vec![b'x'; size];
    for i in 0..count {
        emulator.etcd().put(format!("{prefix}/{i}").as_bytes(), &value).await.unwrap();
    }
}

/// Waits up to 90 s for `done`, polling every 100 ms; `what` names it in the failure.
pub async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
