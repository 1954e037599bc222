//! `list`: the backups in a bucket.

use clap::Args;
use teb_core::{Settings, catalog};

use super::Output;
use super::bucket::BucketArgs;

#[derive(Args)]
pub(crate) struct ListArgs {
    /// Only this control plane's backups (talos-operator-etcd-backups/<cluster>/).
    #[arg(long)]
    pub(crate) cluster: Option<String>,
    #[command(flatten)]
    pub(crate) bucket: BucketArgs,
    /// `table` or `json`.
    #[arg(long, default_value = "table")]
    pub(crate) output: Output,
}

pub(crate) async fn list(args: ListArgs) -> anyhow::Result<()> {
    let listed = catalog::list(&args.bucket.storage(&Settings::default(), None)?, args.cluster.as_deref()).await?;
    if args.output == Output::Json {
        let entries: Vec<serde_json::Value> = listed
            .iter()
            .map(|b| {
                serde_json::json!({
                    "key": b.key, "size": b.size, "time": b.last_modified.to_string(),
                    "cluster": b.cluster, "node": b.node, "sha256": b.sha256,
                    "encoding": b.encoding, "recipients": b.recipients, "kit": b.kit,
                    "report": b.report, "objects": b.objects,
                    "manifest": b.manifest,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(entries));
        return Ok(());
    }
    let header = ("TIME", "SIZE", "NODE", "SHA256", "ENCODING", "KIT", "OBJECTS", "TALOS", "ETCD", "MEMBER");
    println!(
        "{:<24} {:>12}  {:<16} {:<14} {:<9} {:<4} {:>8}  {:<9} {:<8} {:<16} KEY",
        header.0, header.1, header.2, header.3, header.4, header.5, header.6, header.7, header.8, header.9
    );
    for b in &listed {
        let sha = b.sha256.as_deref().map_or("-", |s| &s[..12.min(s.len())]);
        let time = b.last_modified.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let (node, encoding) = (b.node.as_deref().unwrap_or("-"), b.encoding.as_deref().unwrap_or("-"));
        let kit = if b.kit.is_some() { "yes" } else { "-" };
        // Counted: a sealed report's count needs the identity (`verify` counts it).
        let objects = match (b.objects, &b.report) {
            (Some(n), _) => n.to_string(),
            (None, Some(_)) => "sealed".to_owned(),
            (None, None) => "-".to_owned(),
        };
        // From the manifest, when stored plain.
        let manifest = b.manifest.as_ref();
        let talos = manifest.and_then(|m| m.talos_version.as_deref()).unwrap_or("-");
        let etcd = manifest.and_then(|m| m.etcd_version.as_deref()).unwrap_or("-");
        let member = manifest.and_then(|m| m.member_id.as_deref()).unwrap_or("-");
        println!(
            "{time:<24} {:>12}  {node:<16} {sha:<14} {encoding:<9} {kit:<4} {objects:>8}  {talos:<9} {etcd:<8} {member:<16} {}",
            b.size, b.key
        );
    }
    Ok(())
}
