//! `objects`: the keys and Kubernetes objects a stored backup holds, without a restore.

use std::sync::atomic::Ordering;

use clap::Args;
use teb_core::Settings;
use teb_core::objects::{self, Filter};

use super::{Output, ProgressLine, ReportBudget, StoredBackupArgs};

#[derive(Args)]
pub(crate) struct ObjectsArgs {
    #[command(flatten)]
    pub(crate) stored: StoredBackupArgs,
    /// Only objects of this resource: configmaps, secrets, or <resource>.<group> (widgets.example.com).
    #[arg(long)]
    pub(crate) resource: Option<String>,
    /// Only objects in this namespace ("" for cluster-scoped ones).
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    /// Only keys that start with this (/registry/secrets/).
    #[arg(long)]
    pub(crate) prefix: Option<String>,
    /// `table` or `json` (one object per line).
    #[arg(long, default_value = "table")]
    pub(crate) output: Output,
    #[command(flatten)]
    pub(crate) report: ReportBudget,
}

pub(crate) async fn objects(args: ObjectsArgs) -> anyhow::Result<()> {
    let settings = Settings { report_budget: args.report.bytes(), ..Settings::default() };
    let (storage, identities, key) = args.stored.open(&settings, "list the objects of").await?;
    let filter = Filter { resource: args.resource, namespace: args.namespace, prefix: args.prefix };
    let progress = ProgressLine::start(args.stored.progress);
    let counter = progress.counter();
    let read = move |bytes| counter.store(bytes, Ordering::Relaxed);
    let keys = objects::list(&storage, &key, &identities, &settings, filter, &read).await;
    progress.stop();
    let keys = keys?;
    // Keys only: a value is the cluster's business, and a Secret's holds its secrets.
    if args.output == Output::Json {
        for stored in &keys {
            let object = stored.object.as_ref();
            let line = serde_json::json!({
                "key": stored.key, "resource": object.map(|o| &o.resource), "namespace": object.map(|o| &o.namespace),
                "name": object.map(|o| &o.name), "size": stored.size, "create_revision": stored.create_revision,
                "mod_revision": stored.mod_revision,
            });
            println!("{line}");
        }
        return Ok(());
    }
    println!("{:<40} {:<24} {:<40} {:>9} {:>10}", "RESOURCE", "NAMESPACE", "NAME", "SIZE", "REVISION");
    for stored in &keys {
        match &stored.object {
            Some(o) => println!(
                "{:<40} {:<24} {:<40} {:>9} {:>10}",
                o.resource, o.namespace, o.name, stored.size, stored.mod_revision
            ),
            None => {
                println!("{:<40} {:<24} {:<40} {:>9} {:>10}", "-", "-", stored.key, stored.size, stored.mod_revision)
            }
        }
    }
    Ok(())
}
