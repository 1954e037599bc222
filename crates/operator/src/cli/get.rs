//! `get`: Kubernetes objects out of a stored backup, as YAML for `kubectl apply`, without a restore.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use teb_core::catalog;
use teb_core::kube_object::{self, EncryptionKeys};
use teb_core::objects::{self, Content, Filter, Keep, Listing, StoredKey};
use teb_pipeline::{Identity, Storage};

use super::{ProgressLine, ReportBudget, StoredBackupArgs};

#[derive(Args)]
pub(crate) struct GetArgs {
    /// The resource, as `objects` names it: secrets, configmaps, <resource>.<group>
    /// (widgets.example.com). A name without a trailing s gets one (secret, configmap).
    pub(crate) resource: String,
    /// NAMESPACE/NAME, or NAME of a cluster-scoped object; every object of the resource (in
    /// --namespace, when given) when left out.
    pub(crate) object: Option<String>,
    /// With no object named: only the objects in this namespace.
    #[arg(long, conflicts_with = "object")]
    pub(crate) namespace: Option<String>,
    /// A Talos secrets bundle (`talosctl gen secrets`) whose keys open Secrets encrypted at rest;
    /// when unset, the backup's recovery kit is read for it (with the age identity when sealed).
    #[arg(long, value_name = "FILE")]
    pub(crate) secrets_bundle: Option<PathBuf>,
    /// `yaml` (documents for `kubectl apply -f -`) or `json` (one object per line).
    #[arg(long, default_value = "yaml")]
    pub(crate) output: ObjectFormat,
    #[command(flatten)]
    pub(crate) stored: StoredBackupArgs,
    #[command(flatten)]
    pub(crate) report: ReportBudget,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ObjectFormat {
    Yaml,
    Json,
}

pub(crate) async fn get(args: GetArgs) -> anyhow::Result<()> {
    let settings = args.report.settings();
    let (storage, identities, key) = args.stored.open(&settings, "read objects from").await?;
    let resource = match args.resource.as_str() {
        r if r.contains('.') || r.ends_with('s') => r.to_owned(),
        r => format!("{r}s"),
    };
    let (namespace, name) = match args.object.as_deref().map(|o| o.split_once('/').unwrap_or(("", o))) {
        Some((namespace, name)) => (Some(namespace.to_owned()), Some(name.to_owned())),
        None => (args.namespace.clone(), None),
    };
    let filter = Filter { resource: Some(resource.clone()), namespace, name, prefix: None };
    let progress = ProgressLine::start(args.stored.progress);
    let counter = progress.counter();
    let read = move |bytes| counter.store(bytes, Ordering::Relaxed);
    let listing = Listing::new(filter, Keep::Values, settings.report_budget);
    let found = objects::list(&storage, &key, &identities, &settings, listing, &read).await;
    progress.stop();
    let found = found?;
    if found.is_empty() {
        let what = args.object.as_deref().map_or_else(|| format!("{resource} objects"), |o| format!("{resource} {o}"));
        anyhow::bail!(
            "{key} holds no {what}: `objects --key {key} --resource {resource}` lists what it holds of that resource \
             (resources are named as in etcd's keys: plural, <resource>.<group> outside the core group)"
        );
    }
    let encrypted = found.iter().any(|k| matches!(&k.content, Content::Value(v) if v.starts_with(b"k8s:enc:")));
    let keys = if encrypted { encryption_keys(&args, &storage, &key, &identities).await? } else { Default::default() };
    let mut failed = 0;
    for stored in &found {
        let Content::Value(value) = &stored.content else { continue };
        match kube_object::decode(value, &keys) {
            Ok(decoded) => print(stored, &decoded, args.output)?,
            Err(reason) => {
                eprintln!("{}: {reason}", stored.key);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} objects could not be read (above)", found.len());
    }
    Ok(())
}

/// The keys for Secrets encrypted at rest: the given secrets bundle's, else the recovery kit's.
async fn encryption_keys(
    args: &GetArgs,
    storage: &Storage,
    key: &str,
    identities: &[Identity],
) -> anyhow::Result<EncryptionKeys> {
    let bundle = match &args.secrets_bundle {
        Some(file) => std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
        None => match catalog::read_kit(storage, key, identities).await? {
            Some((_, kit)) => kit.secrets_bundle,
            None => anyhow::bail!(
                "{key} holds Secrets encrypted at rest and has no recovery kit to take their keys from: pass the \
                 cluster's secrets bundle with --secrets-bundle"
            ),
        },
    };
    let keys = EncryptionKeys::from_secrets_bundle(&bundle).map_err(anyhow::Error::msg)?;
    Ok(keys)
}

/// One object: a YAML document (apiVersion, kind and metadata first, as kubectl prints them) or a
/// JSON line.
fn print(stored: &StoredKey, decoded: &kube_object::Decoded, format: ObjectFormat) -> anyhow::Result<()> {
    if format == ObjectFormat::Json {
        println!("{}", decoded.object);
        return Ok(());
    }
    let mut document = serde_yaml::Mapping::new();
    if let Some(fields) = decoded.object.as_object() {
        let first = ["apiVersion", "kind", "metadata"];
        let ordered = first.iter().filter_map(|f| fields.get_key_value(*f));
        for (field, value) in ordered.chain(fields.iter().filter(|(f, _)| !first.contains(&f.as_str()))) {
            document.insert(field.as_str().into(), serde_yaml::to_value(value)?);
        }
    }
    println!("---");
    if !decoded.complete {
        println!(
            "# {}: only the metadata of this kind is decoded, not the rest: not for kubectl apply as it is.",
            stored.key
        );
    }
    print!("{}", serde_yaml::to_string(&document)?);
    Ok(())
}
