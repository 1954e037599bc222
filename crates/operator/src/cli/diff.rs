//! `diff`: what changed between two stored backups, object by object, without a restore.

use std::collections::BTreeMap;

use clap::Args;
use teb_core::objects::{self, Content, Keep, Listing, StoredKey};

use super::bucket::{BucketArgs, object_key};
use super::objects::KeyFilter;
use super::{DecryptArgs, Output, ReportBudget};

#[derive(Args)]
pub(crate) struct DiffArgs {
    /// Key of the older backup.
    pub(crate) from: String,
    /// Key of the newer backup.
    pub(crate) to: String,
    #[command(flatten)]
    pub(crate) keys: KeyFilter,
    /// `table` (each change, then a count by resource) or `json` (one change per line).
    #[arg(long, default_value = "table")]
    pub(crate) output: Output,
    #[command(flatten)]
    pub(crate) bucket: BucketArgs,
    #[command(flatten)]
    pub(crate) decrypt: DecryptArgs,
    #[command(flatten)]
    pub(crate) report: ReportBudget,
}

/// How a key differs from the older backup to the newer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    Added,
    Removed,
    Changed,
}

pub(crate) async fn diff(args: DiffArgs) -> anyhow::Result<()> {
    let settings = args.report.settings();
    let (from, to) = (object_key(&args.from), object_key(&args.to));
    let storage = args.bucket.storage(&settings, Some(&from))?;
    let identities = args.decrypt.identities()?;
    let filter = args.keys.filter();
    // Each backup's keys with their values' SHA-256: a changed value is a changed object.
    let keys = |key: String| {
        let listing = Listing::new(filter.clone(), Keep::Digests, settings.report_budget);
        let (storage, identities, settings) = (&storage, &identities, &settings);
        async move { objects::list(storage, &key, identities, settings, listing, &|_| {}).await }
    };
    let (older, newer) = (keys(from).await?, keys(to).await?);
    let changes = compare(older, newer);
    if args.output == Output::Json {
        for (change, stored) in &changes {
            let object = stored.object.as_ref();
            let line = serde_json::json!({
                "change": format!("{change:?}").to_lowercase(), "key": stored.key,
                "resource": object.map(|o| &o.resource), "namespace": object.map(|o| &o.namespace),
                "name": object.map(|o| &o.name),
            });
            println!("{line}");
        }
        return Ok(());
    }
    let mut by_resource: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    println!("{:<8} {:<40} {:<24} NAME", "CHANGE", "RESOURCE", "NAMESPACE");
    for (change, stored) in &changes {
        let (resource, namespace, name) = match &stored.object {
            Some(o) => (o.resource.as_str(), o.namespace.as_str(), o.name.as_str()),
            None => ("-", "-", stored.key.as_str()),
        };
        println!("{:<8} {resource:<40} {namespace:<24} {name}", format!("{change:?}").to_lowercase());
        by_resource.entry(resource).or_default()[*change as usize] += 1;
    }
    println!();
    println!("{:<40} {:>8} {:>8} {:>8}", "RESOURCE", "ADDED", "REMOVED", "CHANGED");
    for (resource, [added, removed, changed]) in &by_resource {
        println!("{resource:<40} {added:>8} {removed:>8} {changed:>8}");
    }
    if changes.is_empty() {
        println!("(no change)");
    }
    Ok(())
}

/// The keys added, removed and changed from `older` to `newer` (both in key order), in key order.
fn compare(older: Vec<StoredKey>, newer: Vec<StoredKey>) -> Vec<(Change, StoredKey)> {
    let mut older: BTreeMap<String, StoredKey> = older.into_iter().map(|k| (k.key.clone(), k)).collect();
    let mut changes = Vec::new();
    for stored in newer {
        match older.remove(&stored.key) {
            None => changes.push((Change::Added, stored)),
            Some(before) if digest(&before) != digest(&stored) => changes.push((Change::Changed, stored)),
            Some(_) => {}
        }
    }
    changes.extend(older.into_values().map(|k| (Change::Removed, k)));
    changes.sort_by(|a, b| a.1.key.cmp(&b.1.key));
    changes
}

fn digest(stored: &StoredKey) -> Option<&[u8; 32]> {
    match &stored.content {
        Content::Digest(d) => Some(d),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(key: &str, value: u8) -> StoredKey {
        StoredKey {
            key: key.into(),
            object: None,
            create_revision: 1,
            mod_revision: 1,
            size: 1,
            content: Content::Digest([value; 32]),
        }
    }

    #[test]
    fn added_removed_and_changed_keys_in_key_order() {
        let older = vec![key("/a", 1), key("/b", 1), key("/c", 1)];
        let newer = vec![key("/b", 2), key("/c", 1), key("/d", 1)];
        let changes: Vec<(Change, String)> = compare(older, newer).into_iter().map(|(c, k)| (c, k.key)).collect();
        let expected = [(Change::Removed, "/a"), (Change::Changed, "/b"), (Change::Added, "/d")];
        assert_eq!(changes, expected.map(|(c, k)| (c, k.to_owned())));
    }
}
