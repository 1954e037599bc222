//! `objects`: the keys and Kubernetes objects a stored backup holds, without a restore.

use std::sync::atomic::Ordering;

use clap::Args;
use teb_core::objects::{self, Filter, Keep, Listing};

use super::{Output, ProgressLine, ReportBudget, StoredBackupArgs};

#[derive(Args)]
pub(crate) struct ObjectsArgs {
    #[command(flatten)]
    pub(crate) stored: StoredBackupArgs,
    #[command(flatten)]
    pub(crate) keys: KeyFilter,
    /// `table` or `json` (one object per line).
    #[arg(long, default_value = "table")]
    pub(crate) output: Output,
    #[command(flatten)]
    pub(crate) report: ReportBudget,
}

/// Which keys to read: by resource, namespace, key prefix.
#[derive(Args)]
pub(crate) struct KeyFilter {
    /// Only objects of this resource: configmaps, secrets, or <resource>.<group> (widgets.example.com).
    #[arg(long)]
    pub(crate) resource: Option<String>,
    /// Only objects in this namespace ("" for cluster-scoped ones).
    #[arg(long)]
    pub(crate) namespace: Option<String>,
    /// Only keys that start with this (/registry/secrets/).
    #[arg(long)]
    pub(crate) prefix: Option<String>,
}

impl KeyFilter {
    pub(crate) fn filter(&self) -> Filter {
        let KeyFilter { resource, namespace, prefix } = self;
        Filter { resource: resource.clone(), namespace: namespace.clone(), prefix: prefix.clone(), name: None }
    }
}

pub(crate) async fn objects(args: ObjectsArgs) -> anyhow::Result<()> {
    let settings = args.report.settings();
    let (storage, identities, key) = args.stored.open(&settings, "list the objects of").await?;
    let listing = Listing::new(args.keys.filter(), Keep::Nothing, settings.report_budget);
    let progress = ProgressLine::start(args.stored.progress);
    let counter = progress.counter();
    let read = move |bytes| counter.store(bytes, Ordering::Relaxed);
    let keys = objects::list(&storage, &key, &identities, &settings, listing, &read).await;
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
