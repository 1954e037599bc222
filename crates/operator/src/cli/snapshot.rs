//! `snapshot`: one backup outside Kubernetes.

use std::sync::atomic::Ordering;

use anyhow::Context as _;
use clap::Args;
use teb_core::{BackupPlan, backup};

use super::bucket::{BucketArgs, object_key};
use super::{Progress, ProgressLine, RecipientArgs, TalosArgs, Tuning, peak_rss_bytes};

#[derive(Args)]
pub(crate) struct SnapshotArgs {
    #[command(flatten)]
    pub(crate) talos: TalosArgs,
    /// Control-plane name in the S3 key; the talosconfig context's name when unset.
    #[arg(long)]
    pub(crate) cluster: Option<String>,
    /// Full S3 key, instead of talos-operator-etcd-backups/<cluster>/etcd-snapshot-<timestamp>.db
    /// (.db.zst, .db.age, .db.zst.age when compressed or encrypted); refused when an object is there.
    #[arg(long)]
    pub(crate) key: Option<String>,
    /// Compress the snapshot with zstd before storing it (and before encrypting it).
    #[arg(long)]
    pub(crate) zstd: bool,
    /// zstd level, 1 (fastest) to 19 (smallest).
    #[arg(long, default_value_t = 1, requires = "zstd", value_parser = clap::value_parser!(i32).range(1..=19))]
    pub(crate) zstd_level: i32,
    /// Encrypt the snapshot with age to these recipients.
    #[command(flatten)]
    pub(crate) recipients: RecipientArgs,
    #[command(flatten)]
    pub(crate) bucket: BucketArgs,
    /// Progress on standard error: auto shows it on a terminal.
    #[arg(long, default_value = "auto")]
    pub(crate) progress: Progress,
    #[command(flatten)]
    pub(crate) tuning: Tuning,
}

pub(crate) async fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let talosconfig = args.talos.load()?;
    let talos = args.talos.target()?;
    let cluster =
        args.cluster.clone().unwrap_or_else(|| args.talos.context.clone().unwrap_or(talosconfig.context.clone()));
    let recipients = args.recipients.recipients()?;
    let encoding = teb_pipeline::Encoding { zstd_level: args.zstd.then_some(args.zstd_level), recipients };
    let format = encoding.format();
    let settings = args.tuning.settings();
    // Check the storage settings before touching Talos: they are cheaper to get wrong.
    let storage = args.bucket.storage(&settings, args.key.as_deref())?;
    // No secrets bundle on the command line: the command stores no recovery kit.
    let kit_policy = teb_core::kit::KitPolicy::Never;
    let plan =
        BackupPlan { owner: None, controlplane: cluster.clone(), talos, storage, encoding, kit: None, kit_policy };
    let given = args.key.as_deref().map(object_key);
    let key = given.clone().unwrap_or_else(|| backup::snapshot_key(&cluster, jiff::Timestamp::now(), format));
    let key = backup::unused_key(&plan.storage, &key, args.key.is_some()).await?;
    let progress = ProgressLine::start(args.progress);
    let counter = progress.counter();
    let interrupted = interrupted()?;
    let progress_of = move |bytes| counter.store(bytes, Ordering::Relaxed);
    let result = backup::run_interruptible(&plan, &key, &settings, &progress_of, interrupted).await;
    progress.stop();
    let outcome = result?;
    let seconds = outcome.report.duration.as_secs_f64();
    let size = outcome.report.size.unwrap_or_default();
    let summary = serde_json::json!({
        "bucket": args.bucket.name(args.key.as_deref()),
        "key": outcome.report.key,
        "size": size,
        "stored_size": outcome.report.stored_size,
        "encoding": outcome.format.name(),
        "recipients": outcome.fingerprints,
        "sha256": outcome.report.sha256,
        "node": outcome.node,
        "contents": match &outcome.contents {
            Ok(report) => super::contents_summary(report),
            Err(reason) => serde_json::json!({ "not_counted": reason }),
        },
        "report": outcome.report_key,
        "manifest": outcome.manifest_key,
        "seconds": seconds,
        "mb_per_s": size as f64 / 1e6 / seconds.max(1e-9),
        "peak_rss_bytes": peak_rss_bytes(),
    });
    println!("{summary}");
    Ok(())
}

/// SIGINT or SIGTERM, from now on: once these handlers are in place the signals no longer end the
/// process, so a backup cut short aborts its upload first ([`backup::run_interruptible`]).
pub(crate) fn interrupted() -> anyhow::Result<impl std::future::Future<Output = String>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT".to_owned(),
            _ = terminate.recv() => "SIGTERM".to_owned(),
        }
    })
}
