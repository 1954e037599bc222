//! Scale on the real apiserver (the second half of docs/benchmarks.md):
//! 1. 50 TalosControlPlanes (all pointing at one Talos API emulator), each with a TalosEtcdBackup
//!    created at the same moment: time until all are Ready, the most backups seen Progressing at once
//!    (the operator's --concurrency must hold), and the operator's peak RSS;
//! 2. restart the operator with 1,000 finished backups present: none runs again; its RSS and the time
//!    until it has seen them all.
//!
//! The operator runs as its own process (the release binary), with the RBAC-limited identity.
//! `cargo run --release -p talos-etcd-backup --example scale` (bench/run.sh --scale runs it).

mod common;

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use teb_api::TalosEtcdBackup;
use teb_api::conditions::{PROGRESSING, READY, is_true};
use teb_testkit::emulator::{EmulatorOptions, TalosEmulator};
use teb_testkit::kube::{KubeEnv, apply_yaml, create_control_plane};
use teb_testkit::s3::S3Server;
use teb_testkit::{fixtures, spec};

use common::{memory, start_operator, stop, wait_ready};

const BACKUPS: usize = 50;
const FINISHED: usize = 1000;
const CONCURRENCY: usize = 4;
const HEALTH_PORT: u16 = 18088;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = std::env::var("TEB_BINARY").unwrap_or_else(|_| "target/release/talos-etcd-backup".into());
    let env = KubeEnv::start().await?;
    let admin = env.admin_client().await?;
    let s3 = S3Server::start().await?;
    s3.create_bucket_in("my-etcd-backups", teb_testkit::spec::SPEC_REGION)?;
    let emulator =
        TalosEmulator::start(EmulatorOptions { control_planes: 3, workers: 0, ..Default::default() }).await?;
    for i in 0..500 {
        emulator.etcd().put(format!("/scale/{i}").as_bytes(), &[b'x'; 4096]).await?;
    }
    let ns = "scale";
    apply_yaml(&admin, &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"), None).await?;
    apply_yaml(&admin, spec::SECRET_YAML, Some(ns)).await?;
    let endpoint = std::slice::from_ref(&emulator.endpoint);
    try_join_all((0..BACKUPS).map(|i| {
        let cp = fixtures::control_plane_with_bundle(&format!("cp-{i:02}"), ns, &emulator.ca, endpoint);
        let admin = admin.clone();
        async move { create_control_plane(&admin, &cp).await }
    }))
    .await?;

    // 1. Fifty backups at once.
    let mut operator = start_operator(&binary, &env, HEALTH_PORT, &["--concurrency", &CONCURRENCY.to_string()])?;
    let api: Api<TalosEtcdBackup> = Api::namespaced(admin.clone(), ns);
    let started = Instant::now();
    try_join_all((0..BACKUPS).map(|i| {
        let yaml = spec::backup_yaml(&format!("backup-{i:02}"), &spec::endpoint_field(&s3.endpoint))
            .replace("name: my-controlplane", &format!("name: cp-{i:02}"));
        let admin = admin.clone();
        async move { apply_yaml(&admin, &yaml, Some(ns)).await }
    }))
    .await?;
    let mut most_progressing = 0;
    let mut peak_rss = 0;
    loop {
        let list = api.list(&ListParams::default()).await?.items;
        let conds = |b: &TalosEtcdBackup| b.status.clone().unwrap_or_default().conditions;
        most_progressing = most_progressing.max(list.iter().filter(|b| is_true(&conds(b), PROGRESSING)).count());
        peak_rss = peak_rss.max(memory(operator.id(), "VmHWM:"));
        let ready = list.iter().filter(|b| is_true(&conds(b), READY)).count();
        if ready == BACKUPS {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {ready} of {BACKUPS} Ready after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_ready = started.elapsed();
    let objects = s3.objects("my-etcd-backups").await?.len();
    stop(&mut operator);

    // 2. A thousand finished backups, then a restart.
    let finished_status = api.get("backup-00").await?.status;
    try_join_all((0..FINISHED).map(|i| {
        let api = api.clone();
        let status = finished_status.clone();
        let yaml = spec::backup_yaml(&format!("done-{i:04}"), "");
        async move {
            let backup: TalosEtcdBackup = serde_yaml::from_str(&yaml)?;
            api.create(&PostParams::default(), &backup).await?;
            let patch = serde_json::json!({ "status": status });
            api.patch_status(&format!("done-{i:04}"), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            anyhow::Ok(())
        }
    }))
    .await?;
    let restarted = Instant::now();
    let mut operator = start_operator(&binary, &env, HEALTH_PORT, &["--concurrency", &CONCURRENCY.to_string()])?;
    let health = wait_ready(&mut operator, HEALTH_PORT).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let settle_rss = memory(operator.id(), "VmHWM:");
    let list = api.list(&ListParams::default()).await?.items;
    let reran = list.iter().filter(|b| b.status.as_ref().is_some_and(|s| s.attempts != 1)).count();
    let objects_after = s3.objects("my-etcd-backups").await?.len();
    stop(&mut operator);

    let figures = serde_json::json!({
        "backups": BACKUPS,
        "concurrency": CONCURRENCY,
        "seconds_until_all_ready": all_ready.as_secs_f64(),
        "most_progressing_at_once": most_progressing,
        "operator_peak_rss_bytes": peak_rss,
        "objects_stored": objects,
        "finished_backups_present": FINISHED + BACKUPS,
        "seconds_until_ready_after_restart": health.as_secs_f64(),
        "restart_wall_seconds_observed": restarted.elapsed().as_secs_f64(),
        "operator_peak_rss_after_restart_bytes": settle_rss,
        "backups_run_again": reran,
        "objects_after_restart": objects_after,
    });
    println!("{figures}");
    Ok(())
}
