//! `verify`: whether a stored backup, snapshot and kit, is sound, and what is inside it.

use std::sync::atomic::Ordering;
use std::time::Instant;

use clap::Args;
use teb_core::catalog;

use super::{ProgressLine, StoredBackupArgs, contents_summary, peak_rss_bytes};

#[derive(Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) stored: StoredBackupArgs,
    #[command(flatten)]
    pub(crate) report: super::ReportBudget,
}

pub(crate) async fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let settings = args.report.settings();
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
                "manifest": verified.manifest,
                "report_seconds": verified.report_time.as_secs_f64(),
                "report_scratch_bytes": verified.scratch_bytes,
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
