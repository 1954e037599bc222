//! `verify`: whether a stored backup, snapshot and kit, is sound.

use std::sync::atomic::Ordering;
use std::time::Instant;

use teb_core::{Settings, catalog};

use super::{ProgressLine, StoredBackupArgs, peak_rss_bytes};

pub(crate) async fn verify(args: StoredBackupArgs) -> anyhow::Result<()> {
    let settings = Settings::default();
    let (storage, identities, key) = args.open(&settings, "verify").await?;
    let progress = ProgressLine::start(args.progress);
    let counter = progress.counter();
    let started = Instant::now();
    let result = async {
        let progress = move |bytes| counter.store(bytes, Ordering::Relaxed);
        let verified = catalog::verify_backup(&storage, &key, &identities, &settings, &progress).await?;
        // What is inside, once it is known sound: its database read offline.
        let report_started = Instant::now();
        let report = catalog::report(&storage, &key, &identities, &settings).await?;
        Ok::<_, teb_core::Error>((verified, report, report_started.elapsed().as_secs_f64()))
    }
    .await;
    progress.stop();
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(((checked, kit), report, report_seconds)) => {
            let seconds = seconds - report_seconds;
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
                "contents": contents_summary(&report),
                "report_seconds": report_seconds,
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
