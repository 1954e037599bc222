//! Many clusters on one operator (issue 22's fourth figure): 100 TalosControlPlanes whose etcd
//! databases are 64, 128, 192 or 256 MiB, every Talos source capped at 20 MB/s (Talos's own pace
//! through apid), each on an hourly schedule, all firing at the same minute, with the operator at its
//! defaults. Prints, as JSON: whether all 100 finished, the operator's peak RSS against its base plus
//! `concurrency × part_size × (parts_in_flight + 1)` (the defaults), and the time from the schedules' minute to the
//! last backup Ready against 1.1 × total bytes ÷ (concurrency × 20 MB/s).
//!
//! `bench/run.sh` builds and runs it (`target/release/examples/many_clusters`); it fills etcd with
//! `teb-bench fill` from `TEB_RELEASE_DIR` (default `target/release`).

mod common;

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use kube::Api;
use kube::api::ListParams;
use teb_api::TalosEtcdBackup;
use teb_api::conditions::{PROGRESSING, READY, is_true};
use teb_testkit::emulator::{EmulatorOptions, TalosEmulator};
use teb_testkit::kube::{KubeEnv, apply_yaml, create_control_plane};
use teb_testkit::s3::S3Server;
use teb_testkit::{fixtures, spec};

use common::{memory, start_operator, stop, wait_ready};

const CLUSTERS: usize = 100;
/// The emulated clusters' etcd database sizes, in MiB; control plane `i` uses size `i % 4`.
const DATABASE_MIB: [u64; 4] = [64, 128, 192, 256];
/// Talos's pace through apid (siderolabs/talos#14212: 187 MB in 9 to 12 s).
const SOURCE_BYTES_PER_SECOND: u64 = 20_000_000;
/// The operator's default `--concurrency`.
const CONCURRENCY: u64 = 4;
const HEALTH_PORT: u16 = 18089;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let release = std::env::var("TEB_RELEASE_DIR").unwrap_or_else(|_| "target/release".into());
    let binary = format!("{release}/talos-etcd-backup");
    let env = KubeEnv::start().await?;
    let admin = env.admin_client().await?;
    let s3 = S3Server::start().await?;
    s3.create_bucket_in("my-etcd-backups", spec::SPEC_REGION)?;
    let mut emulators = Vec::new();
    for mib in DATABASE_MIB {
        let emulator =
            TalosEmulator::start(EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() }).await?;
        let filled = std::process::Command::new(format!("{release}/teb-bench"))
            .args(["fill", "--etcd", &emulator.etcd().members[0].client_url, "--bytes", &(mib << 20).to_string()])
            .output()?;
        anyhow::ensure!(filled.status.success(), "teb-bench fill: {}", String::from_utf8_lossy(&filled.stderr));
        emulator.faults.limit_bandwidth(SOURCE_BYTES_PER_SECOND);
        emulators.push(emulator);
    }
    let ns = "many";
    apply_yaml(&admin, &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"), None).await?;
    apply_yaml(&admin, spec::SECRET_YAML, Some(ns)).await?;
    try_join_all((0..CLUSTERS).map(|i| {
        let emulator = &emulators[i % DATABASE_MIB.len()];
        let endpoints = std::slice::from_ref(&emulator.endpoint);
        let cp = fixtures::control_plane_with_bundle(&format!("cp-{i:03}"), ns, &emulator.ca, endpoints);
        let admin = admin.clone();
        async move { create_control_plane(&admin, &cp).await }
    }))
    .await?;

    let mut operator = start_operator(&binary, &env, HEALTH_PORT, &[])?;
    wait_ready(&mut operator, HEALTH_PORT).await?;
    // Every schedule fires at the next minute that leaves time to create them all.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let fire_at = (now + 30).div_ceil(60) * 60;
    let minute = fire_at / 60 % 60;
    let endpoint = format!("          endpoint: {}\n", s3.endpoint);
    try_join_all((0..CLUSTERS).map(|i| {
        let yaml = spec::schedule_yaml(&format!("hourly-{i:03}"), &format!("{minute} * * * *"), "", &endpoint)
            .replace("name: my-controlplane", &format!("name: cp-{i:03}"));
        let admin = admin.clone();
        async move { apply_yaml(&admin, &yaml, Some(ns)).await }
    }))
    .await?;
    let until_fire = Duration::from_secs(fire_at).saturating_sub(std::time::UNIX_EPOCH.elapsed()?);
    tokio::time::sleep(until_fire.saturating_sub(Duration::from_secs(1))).await;
    let base_rss = memory(operator.id(), "VmRSS:");
    let fired = Instant::now() + until_fire.min(Duration::from_secs(1));
    let (machine_before, operator_before) = (machine_cpu(), process_cpu_seconds(operator.id()));

    let api: Api<TalosEtcdBackup> = Api::namespaced(admin.clone(), ns);
    let mut most_progressing = 0;
    let mut peak_rss = 0;
    let last_ready = loop {
        let list = api.list(&ListParams::default()).await?.items;
        let conds = |b: &TalosEtcdBackup| b.status.clone().unwrap_or_default().conditions;
        most_progressing = most_progressing.max(list.iter().filter(|b| is_true(&conds(b), PROGRESSING)).count());
        peak_rss = peak_rss.max(memory(operator.id(), "VmHWM:"));
        let ready = list.iter().filter(|b| is_true(&conds(b), READY)).count();
        if ready == CLUSTERS {
            break Instant::now().saturating_duration_since(fired);
        }
        anyhow::ensure!(
            fired.elapsed() < Duration::from_secs(1800),
            "only {ready} of {CLUSTERS} Ready after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (machine_after, operator_after) = (machine_cpu(), process_cpu_seconds(operator.id()));
    stop(&mut operator);
    let objects = s3.objects("my-etcd-backups").await?;
    let backups = api.list(&ListParams::default()).await?.items;
    let total_bytes: u64 = backups.iter().filter_map(|b| u64::try_from(b.status.as_ref()?.size?).ok()).sum();
    // Where the time goes: inside backups (start to completion, whole seconds as Kubernetes keeps
    // them) against the sources' pace, and between them.
    let seconds = |b: &TalosEtcdBackup| {
        let status = b.status.as_ref()?;
        let (start, end) = (status.start_time.as_ref()?.0, status.completion_time.as_ref()?.0);
        Some(end.duration_since(start).as_secs_f64())
    };
    let backup_seconds: f64 = backups.iter().filter_map(seconds).sum();
    let bound = 1.1 * total_bytes as f64 / (CONCURRENCY * SOURCE_BYTES_PER_SECOND) as f64;
    // Each backup's part buffers at the defaults: part size × (parts in flight + 1).
    let limits = teb_pipeline::Limits::default();
    let per_backup = (limits.part_size * (limits.parts_in_flight + 1)) as u64;
    let budget = base_rss + CONCURRENCY * per_backup;
    let figures = serde_json::json!({
        "clusters": CLUSTERS,
        "database_mib": DATABASE_MIB,
        "source_bytes_per_second": SOURCE_BYTES_PER_SECOND,
        "concurrency": CONCURRENCY,
        "backups_ready": backups.len(),
        "objects_stored": objects.len(),
        "total_snapshot_bytes": total_bytes,
        "most_progressing_at_once": most_progressing,
        "seconds_from_schedule_to_last_ready": last_ready.as_secs_f64(),
        "seconds_bound": bound,
        "seconds_at_source_pace": total_bytes as f64 / (CONCURRENCY * SOURCE_BYTES_PER_SECOND) as f64,
        "backup_seconds_sum": backup_seconds,
        "source_pace_seconds_sum": total_bytes as f64 / SOURCE_BYTES_PER_SECOND as f64,
        "last_ready_over_bound": last_ready.as_secs_f64() / bound,
        // CPU while the backups ran: the operator's, and the whole machine's (the test servers, the
        // emulated clusters' etcd and the apiserver share its cores).
        "operator_cpu_seconds": operator_after - operator_before,
        "machine_cpu_seconds": machine_after.0 - machine_before.0,
        "machine_busy_fraction": (machine_after.0 - machine_before.0) / (machine_after.1 - machine_before.1),
        "operator_base_rss_bytes": base_rss,
        "operator_peak_rss_bytes": peak_rss,
        "per_backup_budget_bytes": per_backup,
        "operator_rss_budget_bytes": budget,
    });
    println!("{figures}");
    Ok(())
}

/// Busy and total CPU seconds of the machine since boot, from /proc/stat (busy: all but idle and
/// iowait).
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> =
        stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    let total: f64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    ((total - idle) / 100.0, total / 100.0)
}

/// User and system CPU seconds of process `pid`, from /proc/PID/stat.
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, from the state (field 3): utime is field 14, stime 15.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
