//! `import`: the bucket side of taking over backups written elsewhere (the upstream talos-operator,
//! or this tool before the management cluster was rebuilt): every snapshot under the prefix read
//! back and checked, and with `--seal` every plaintext recovery kit (upstream's `state-*.yaml`)
//! sealed to age recipients, its plaintext deleted once the sealed copy is read back. The
//! TalosEtcdBackup objects come from a schedule with `importExisting` (or `spec.importKey`).

use clap::Args;
use teb_core::{catalog, kit};
use teb_pipeline::Format;

use super::bucket::BucketArgs;
use super::{DecryptArgs, RecipientArgs, ReportBudget};

#[derive(Args)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    pub(crate) bucket: BucketArgs,
    /// Only this control plane's snapshots (the key's folder); every control plane's when unset.
    #[arg(long)]
    pub(crate) cluster: Option<String>,
    /// Seal each plaintext recovery kit beside a snapshot to the --age-recipient(s), then delete the
    /// plaintext once the sealed copy reads back as written (and, with --age-identity-file, opens to
    /// the same kit).
    #[arg(long)]
    pub(crate) seal: bool,
    #[command(flatten)]
    pub(crate) recipients: RecipientArgs,
    #[command(flatten)]
    pub(crate) decrypt: DecryptArgs,
    #[command(flatten)]
    pub(crate) report: ReportBudget,
}

pub(crate) async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let settings = args.report.settings();
    let storage = args.bucket.storage(&settings, None)?;
    let identities = args.decrypt.identities()?;
    let recipients = args.recipients.recipients()?;
    anyhow::ensure!(!args.seal || !recipients.is_empty(), "--seal needs --age-recipient or --age-recipients-file");
    anyhow::ensure!(
        args.seal || recipients.is_empty(),
        "--age-recipient is for --seal: add it, or drop the recipients"
    );
    let snapshots = catalog::snapshot_keys(&storage, args.cluster.as_deref()).await?;
    let mut damaged = 0;
    for (key, _) in &snapshots {
        // Checked whole when it can be read: plain, or encrypted with the identity given (an
        // encrypted snapshot's key ends in `.age`, whoever wrote it).
        let readable = !Format::of_key(key).age || !identities.is_empty();
        let checked =
            if readable { Some(catalog::verify(&storage, key, &identities, &settings, &|_| {}).await) } else { None };
        let (result, sha256, error) = match &checked {
            Some(Ok(verified)) => ("verified", Some(verified.snapshot.sha256.clone()), None),
            Some(Err(e)) if e.is_transient() => anyhow::bail!("{e}"),
            Some(Err(e)) => {
                damaged += 1;
                ("damaged", None, Some(e.to_string()))
            }
            None => ("not read (encrypted: pass --age-identity-file to check it)", None, None),
        };
        let sealed = if args.seal {
            kit::seal_plaintext(&storage, key, sha256.as_deref(), &recipients, &identities).await?
        } else {
            None
        };
        let line = serde_json::json!({
            "key": key, "result": result, "sha256": sha256, "error": error, "sealed_kit": sealed,
        });
        println!("{line}");
    }
    anyhow::ensure!(
        damaged == 0,
        "{damaged} of {} snapshots are damaged (above): a schedule importing them makes each a Failed backup naming why",
        snapshots.len()
    );
    Ok(())
}
