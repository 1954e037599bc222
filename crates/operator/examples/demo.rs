//! The quickstart: brings up a real kube-apiserver + etcd, an S3 server and the Talos API emulator on
//! loopback, runs the operator with only its RBAC, applies the specification's example YAML (pointed
//! at the local S3 endpoint), waits for Ready, and shows the status and the object in the bucket.
//!
//! `cargo run -p talos-etcd-backup --example demo [-- --keep]`; `scripts/demo.sh` also sets up the
//! binaries it needs.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kube::Api;
use talos_etcd_backup::controllers;
use teb_api::TalosEtcdBackup;
use teb_api::conditions::{FAILED, READY, is_true};
use teb_testkit::emulator::{EmulatorOptions, TalosEmulator};
use teb_testkit::kube::{KubeEnv, apply_yaml, create_control_plane};
use teb_testkit::s3::S3Server;
use teb_testkit::{fixtures, spec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    step(
        "Starting etcd + kube-apiserver (RBAC on) + kube-controller-manager (garbage collector, namespaces), an S3 \
         server and the Talos API emulator (3 control planes, 1 worker)",
    );
    let env = KubeEnv::start().await?;
    let s3 = S3Server::start().await?;
    s3.create_bucket_in("my-etcd-backups", teb_testkit::spec::SPEC_REGION)?;
    let emulator = TalosEmulator::start(EmulatorOptions::default()).await?;
    for i in 0..200 {
        emulator.etcd().put(format!("/registry/demo/key-{i:03}").as_bytes(), format!("value-{i}").as_bytes()).await?;
    }
    println!("  kube-apiserver  {} (with kube-controller-manager)", env.server);
    println!("  S3 endpoint     {}", s3.endpoint);
    println!("  Talos API       {} (nodes: {})", emulator.endpoint, node_list(&emulator));

    let admin = env.admin_client().await?;
    step("Creating TalosControlPlane my-controlplane as the upstream operator leaves it (bundleConfig + secretBundle)");
    let cp = fixtures::control_plane_with_bundle(
        "my-controlplane",
        "default",
        &emulator.ca,
        std::slice::from_ref(&emulator.endpoint),
    );
    create_control_plane(&admin, &cp).await?;

    step("Starting the operator with the permissions of deploy/rbac.yaml only");
    let operator = env.operator_client().await?;
    let controller = tokio::spawn(async move {
        let ready = Arc::new(AtomicBool::new(false));
        if let Err(e) =
            controllers::run(operator, controllers::Config::default(), None, ready, Default::default()).await
        {
            eprintln!("operator stopped: {e:#}");
        }
    });

    step("Applying the specification's Secret, unchanged");
    print!("{}", indent(spec::SECRET_YAML));
    apply_yaml(&admin, spec::SECRET_YAML, None).await?;
    let backup_yaml = spec::backup_yaml("my-backup", &spec::endpoint_field(&s3.endpoint));
    step("Applying the specification's TalosEtcdBackup, with the endpoint field of its S3-compatible section");
    print!("{}", indent(&backup_yaml));
    apply_yaml(&admin, &backup_yaml, None).await?;

    step("Waiting for Ready");
    let api: Api<TalosEtcdBackup> = Api::namespaced(admin.clone(), "default");
    let mut last = String::new();
    let status = loop {
        let status = api.get("my-backup").await?.status.unwrap_or_default();
        let now: Vec<String> = status
            .conditions
            .iter()
            .map(|c| format!("{}={} ({}): {}", c.type_, c.status, c.reason, c.message))
            .collect();
        let now = now.join("\n  ");
        if now != last && !now.is_empty() {
            println!("  {now}");
            last = now;
        }
        if is_true(&status.conditions, READY) || is_true(&status.conditions, FAILED) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    step("kubectl get talosetcdbackup my-backup -o yaml");
    let kubeconfig = env.kubeconfig_path("admin");
    match std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "talosetcdbackup", "my-backup", "-o", "yaml"])
        .output()
    {
        Ok(out) if out.status.success() => print!("{}", indent(&String::from_utf8_lossy(&out.stdout))),
        _ => print!("{}", indent(&serde_yaml::to_string(&api.get("my-backup").await?)?)),
    }
    anyhow::ensure!(is_true(&status.conditions, READY), "the backup failed");

    step("The bucket my-etcd-backups");
    for (key, size) in s3.objects("my-etcd-backups").await? {
        println!("  {size:>10}  {key}");
    }
    let key = status.filename.clone().unwrap_or_default();
    let (bytes, metadata) = s3.get("my-etcd-backups", &key).await?;
    println!("  metadata: {metadata:?}");

    step("Restoring the object with `etcdctl snapshot restore` (it checks the SHA-256 trailer)");
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("snapshot.db");
    std::fs::write(&file, &bytes)?;
    let restored = teb_testkit::etcd::EtcdCluster::restore(&file).await?;
    println!("  /registry/demo/key-123 = {:?}", restored.get("/registry/demo/key-123")?.unwrap_or_default());

    if keep {
        step("Still running (Ctrl-C to stop)");
        println!("  kubectl --kubeconfig {} get teb -A", kubeconfig.display());
        tokio::signal::ctrl_c().await?;
    }
    controller.abort();
    println!("\nDemo finished: backup Ready, object restorable.");
    Ok(())
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn node_list(emulator: &TalosEmulator) -> String {
    emulator.nodes().iter().map(|n| format!("{} {}", n.hostname, n.address)).collect::<Vec<_>>().join(", ")
}
