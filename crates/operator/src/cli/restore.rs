//! `restore`: a control plane's etcd from a stored backup.

use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Args;
use teb_core::Settings;

use super::kit::{kit_target, open_kit};
use super::{ProgressLine, StoredBackupArgs, TalosArgs, parse_duration, peak_rss_bytes};

#[derive(Args)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    pub(crate) talos: TalosArgs,
    /// Control-plane node to recover on; the talosconfig's first node, else the endpoint node.
    #[arg(long)]
    pub(crate) node: Option<String>,
    /// Every control-plane node, comma-separated: each is checked before anything changes (none may
    /// still run etcd); the talosconfig's nodes when unset.
    #[arg(long, value_delimiter = ',')]
    pub(crate) nodes: Vec<String>,
    /// Members of the backup's cluster that are gone for good or will be wiped before they come back
    /// (node address, member name or member ID in hex), comma-separated. A member that does not
    /// answer is refused otherwise.
    #[arg(long, value_delimiter = ',')]
    pub(crate) acknowledge_lost: Vec<String>,
    /// Take the Talos credentials from the backup's recovery kit (an os:admin certificate minted from
    /// its OS CA) instead of a talosconfig: all a restore needs is then the bucket and an age identity.
    #[arg(long)]
    pub(crate) kit: bool,
    /// Print the plan (node, backup, its size and SHA-256, etcd's state) and change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// How long to wait for etcd to answer after the recovery bootstrap; by default five minutes plus
    /// one second per 16 MiB of database.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) wait: Option<Duration>,
    #[command(flatten)]
    pub(crate) stored: StoredBackupArgs,
}

pub(crate) async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    use teb_core::restore;
    let settings = Settings::default();
    let (storage, identities, key) = args.stored.open(&settings, "restore").await?;
    // With --kit the credentials come from the bucket: an os:admin certificate for the next hour.
    let talos = if args.kit {
        let (_, kit) = open_kit(&storage, &key, &identities).await?;
        kit_target(&kit, &args.talos.endpoints, Duration::from_secs(3600))?
    } else {
        args.talos.target()?
    };
    let nodes = if args.nodes.is_empty() { talos.nodes.clone() } else { args.nodes.clone() };
    let target = args.node.as_deref().or(nodes.first().map(String::as_str));
    let checks = restore::Checks { nodes: &nodes, acknowledged_lost: &args.acknowledge_lost, identities: &identities };
    let (client, plan) = restore::plan(&talos, &storage, &key, target, &checks, &settings).await?;
    let bucket = args.stored.bucket.name(args.stored.backup.key.as_deref());
    let (mut summary, checked) = plan_summary(&plan, &bucket);
    anyhow::ensure!(
        !plan.format.age || !identities.is_empty() || args.dry_run,
        "{} is encrypted with age: pass --age-identity-file with the identity of one of its recipients",
        plan.key
    );
    if args.dry_run {
        summary["dry_run"] = true.into();
        summary["would"] = match plan.refusal() {
            Some(why) => format!("refuse: {why}").into(),
            None => "stream the backup into EtcdRecover (checked on the way), then Bootstrap with recover_etcd".into(),
        };
        for row in &checked {
            let data = row["data"].as_array().map_or("-".to_owned(), |d| format!("{} entries", d.len()));
            let (node, etcd) = (row["node"].as_str().unwrap_or("-"), row["etcd"].as_str().unwrap_or("-"));
            eprintln!("{node:<24} {etcd:<12} data directory: {data}");
        }
        println!("{summary}");
        return Ok(());
    }
    let progress = ProgressLine::start(args.stored.progress);
    let counter = progress.counter();
    let result = restore::restore(&client, &plan, &storage, &identities, &settings, args.wait, &move |bytes| {
        counter.store(bytes, Ordering::Relaxed)
    })
    .await;
    progress.stop();
    let restored = result?;
    summary["restored"] = true.into();
    summary["size"] = restored.checked.size.into();
    summary["sha256"] = restored.checked.sha256.clone().into();
    summary["member_id"] = format!("{:x}", restored.member_id).into();
    summary["db_size"] = restored.db_size.into();
    summary["pages"] = restored.checked.db.pages.into();
    summary["seconds"] = restored.seconds.into();
    summary["upload_seconds"] = restored.upload_seconds.into();
    summary["peak_rss_bytes"] = peak_rss_bytes().into();
    summary["nodes_after"] = nodes_after(&restored.others);
    println!("{summary}");
    Ok(())
}

/// What a restore would do, as its summary says it, and the rows of every control-plane node checked
/// (the target first): the table a dry run prints.
fn plan_summary(plan: &teb_core::restore::RestorePlan, bucket: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
    use teb_core::restore::EtcdState;
    let mut etcd = node_state(&plan.node_label, &plan.etcd, Some(&plan.data));
    etcd["running"] = matches!(plan.etcd, EtcdState::Running { .. }).into();
    let mut checked = vec![etcd.clone()];
    checked.extend(plan.others.iter().map(|other| {
        let mut row = node_state(&other.node, &other.etcd, (!other.data.is_empty()).then_some(&other.data[..]));
        row["member"] = other.member.clone().into();
        row["acknowledged_lost"] = other.acknowledged.into();
        row
    }));
    let summary = serde_json::json!({
        "node": plan.node_label, "bucket": bucket, "key": plan.key, "stored_size": plan.size,
        "size": plan.sha256.is_some().then_some(plan.size),
        "encoding": plan.format.name(), "sha256": plan.sha256, "etcd_before": etcd, "nodes": checked,
        "manifest": plan.manifest,
        "members": plan.members.as_ref().map_or_else(
            |why| serde_json::json!({ "error": why }),
            |members| members.iter().map(|m| serde_json::json!({
                "id": format!("{:x}", m.id), "name": m.name, "peer_urls": m.peer_urls,
            })).collect(),
        ),
    });
    (summary, checked)
}

/// Every other control-plane node after a restore: joined, or what to do about it (also printed).
fn nodes_after(others: &[teb_core::restore::NodeAfter]) -> serde_json::Value {
    others
        .iter()
        .map(|other| {
            let advice = other.advice();
            if let Some(advice) = &advice {
                eprintln!("{}: {advice}", other.node);
            }
            serde_json::json!({
                "node": other.node, "member": other.member, "etcd": other.state.label(), "advice": advice,
            })
        })
        .collect()
}

/// A control-plane node's etcd before a restore, as the summary shows it; `data`: the entries of its
/// data directory, when read (the target's).
pub(crate) fn node_state(
    node: &str,
    etcd: &teb_core::restore::EtcdState,
    data: Option<&[String]>,
) -> serde_json::Value {
    use teb_core::restore::EtcdState;
    let mut row = serde_json::json!({"node": node, "etcd": etcd.label()});
    match etcd {
        EtcdState::Running { member_id, db_size } => {
            row["member_id"] = format!("{member_id:x}").into();
            row["db_size"] = (*db_size).into();
        }
        EtcdState::NotRunning { reason } | EtcdState::Unreachable { reason } => row["reason"] = reason.clone().into(),
    }
    if let Some(data) = data {
        row["data"] = data.to_vec().into();
    }
    row
}
