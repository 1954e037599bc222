//! `verify`: whether a stored backup, snapshot and kit, is sound, and what is inside it.

use std::sync::atomic::Ordering;
use std::time::Instant;

use clap::Args;
use teb_core::{Settings, catalog};

use super::{ProgressLine, StoredBackupArgs, peak_rss_bytes};

#[derive(Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) stored: StoredBackupArgs,
    /// The most memory the content report may take, in MiB (40 bytes per revision in the database;
    /// the check itself needs none of it).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub(crate) report_memory_mib: u32,
}

pub(crate) async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let settings = Settings { report_budget: args.report_memory_mib as usize * 1024 * 1024, ..Settings::default() };
    let args = args.stored;
    let (storage, identities, key) = args.open(&settings, "verify").await?;
    let progress = ProgressLine::start(args.progress);
    let counter = progress.counter();
    let started = Instant::now();
    let result = {
        let progress = move |bytes| counter.store(bytes, Ordering::Relaxed);
        catalog::verify_backup(&storage, &key, &identities, &settings, &progress).await
    };
    progress.stop();
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok((verified, kit)) => {
            let checked = &verified.snapshot;
            let summary = serde_json::json!({
                "result": "pass",
                "bucket": args.bucket.name(args.backup.key.as_deref()),
                "key": key,
                "kit": kit,
                "size": checked.size,
                "sha256": checked.sha256,
                "page_size": checked.db.page_size,
                "pages": checked.db.pages,
                "pages_checked": checked.db.pages_checked,
                "txid": checked.db.txid,
                "contents": contents_summary(&verified.contents),
                "report_seconds": verified.report_time.as_secs_f64(),
                "seconds": seconds,
                "mb_per_s": checked.size as f64 / 1e6 / seconds.max(1e-9),
                "peak_rss_bytes": peak_rss_bytes(),
            });
            println!("{summary}");
            Ok(())
        }
        Err(error) => {
            let summary = serde_json::json!({
                "result": "fail", "bucket": args.bucket.name(args.backup.key.as_deref()), "key": key, "error": error.to_string(),
            });
            println!("{summary}");
            Err(error.into())
        }
    }
}

/// What is inside a backup, as `verify` prints it: the revision, the keys, and the objects of the ten
/// resources with most objects.
fn contents_summary(report: &teb_core::report::ContentReport) -> serde_json::Value {
    let resources: serde_json::Map<String, serde_json::Value> =
        report.resources.iter().take(10).map(|r| (r.resource.clone(), r.objects.into())).collect();
    serde_json::json!({
        "revision": report.revision, "compacted_revision": report.compacted_revision, "keys": report.keys,
        "bytes": report.bytes, "db_size": report.db_size, "objects": report.objects, "resources": resources,
    })
}
