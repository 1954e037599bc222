//! `kit`: a backup's recovery kit written out as files.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use teb_core::{Settings, catalog};
use teb_pipeline::Storage;

use super::{StoredBackupArgs, parse_duration};

#[derive(Args)]
pub(crate) struct KitArgs {
    #[command(flatten)]
    pub(crate) stored: StoredBackupArgs,
    /// Folder to write into (created; files mode 0600): `secrets.yaml`, `talosconfig`,
    /// `state-secret.yaml` (upstream's state Secret), `controlplane.yaml` (the applied machine config,
    /// when the kit has it), `cluster-patch.yaml` and `gen-config.sh`.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Talos API endpoints for the talosconfig, comma-separated; the kit's bundle config when unset.
    #[arg(long, value_delimiter = ',')]
    pub(crate) endpoints: Vec<String>,
    /// How long the minted talosconfig is valid.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub(crate) validity: Duration,
}

/// The recovery kit of the chosen backup, opened: its key and what it holds.
pub(crate) async fn open_kit(
    storage: &Storage,
    key: &str,
    identities: &[teb_pipeline::Identity],
) -> anyhow::Result<(String, teb_core::kit::RecoveryKit)> {
    catalog::read_kit(storage, key, identities).await?.with_context(|| {
        format!("no recovery kit is stored beside {key} (state-<timestamp>.yaml.age): the backup was taken without one")
    })
}

/// A Talos target with an os:admin client certificate minted from `kit`'s OS CA, for `validity`, at
/// `endpoints` (the kit's bundle config when empty).
pub(crate) fn kit_target(
    kit: &teb_core::kit::RecoveryKit,
    endpoints: &[String],
    validity: Duration,
) -> anyhow::Result<teb_talos::Target> {
    let bundle = teb_talos::SecretsBundle::from_yaml(&kit.secrets_bundle)?;
    let credentials = bundle.mint_client(&[teb_talos::ROLE_ADMIN], validity)?;
    let endpoints = if endpoints.is_empty() {
        let config: teb_api::BundleConfig =
            serde_json::from_str(&kit.bundle_config).context("the kit's bundleConfig is not valid JSON")?;
        config.talos_endpoints()
    } else {
        endpoints.to_vec()
    };
    Ok(teb_talos::Target { endpoints, nodes: Vec::new(), credentials })
}

pub(crate) async fn kit(args: KitArgs) -> anyhow::Result<()> {
    let settings = Settings::default();
    let (storage, identities, key) = args.stored.open(&settings, "read the recovery kit of").await?;
    let (kit_key, kit) = open_kit(&storage, &key, &identities).await?;
    let target = kit_target(&kit, &args.endpoints, args.validity)?;
    let talosconfig =
        teb_talos::Talosconfig::single(&kit.cluster, target.endpoints.clone(), Vec::new(), &target.credentials);
    let files = talos_etcd_backup::kit_files::kit_files(&kit, talosconfig.to_yaml()).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut written = Vec::new();
    for file in files {
        let path = args.out.join(file.name);
        write_private(&path, &file.text)?;
        written.push(path);
    }
    // What `talosctl gen config --with-secrets` would refuse, said before a user needs it.
    let problems = teb_talos::gen_config_problems(&kit.secrets_bundle);
    for problem in &problems {
        eprintln!("warning: secrets.yaml: {problem}; talosctl gen config --with-secrets refuses it");
    }
    let summary = serde_json::json!({
        "kit": kit_key, "cluster": kit.cluster, "backup": key, "files": written, "state": kit.state,
        "namespace": kit.namespace, "endpoints": target.endpoints, "valid_for_seconds": args.validity.as_secs(),
        "secrets_problems": problems,
    });
    println!("{summary}");
    Ok(())
}

/// Writes `text` to `path`, readable by its owner only (it holds keys).
pub(crate) fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}
