//! A backup: used by the controller and by the `snapshot` command. [`Attempt`] runs one attempt
//! whole; this module holds its steps and the keys it writes to.

mod attempt;

pub use attempt::{Attempt, Journal, MemoryJournal, Record, Recovered, recover};

use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use teb_pipeline::{Encoding, Format, Limits, Report, Storage, UploadRef};
use teb_talos::{ChosenNode, TalosClient, Target};

use crate::Error;
use crate::catalog::{self, Deletion};
use crate::etcd_db::Scan;
use crate::kit::{self, KitPolicy, RecoveryKit};
use crate::manifest::{self, Manifest, SnapshotFacts};
use crate::report::{self, ContentReport, Counter};

/// Everything a backup needs, as plain values and a storage handle.
#[derive(Clone, Debug)]
pub struct BackupPlan {
    /// The control plane's name; part of the key.
    pub controlplane: String,
    pub talos: Target,
    pub storage: Storage,
    /// Compression and encryption of the stored snapshot.
    pub encoding: Encoding,
    /// The TalosEtcdBackup's UID, recorded in the object's metadata (`backup`) so that only its own
    /// object is ever taken for an interrupted attempt's result. None outside Kubernetes.
    pub owner: Option<String>,
    /// What the recovery kit holds of the cluster, when it is known (a TalosControlPlane with its
    /// secrets bundle), and how it may be stored.
    pub kit: Option<KitSource>,
    pub kit_policy: KitPolicy,
}

/// The cluster's part of a recovery kit. Debug output never shows it.
#[derive(Clone)]
pub struct KitSource {
    pub secrets_bundle: String,
    pub bundle_config: String,
    /// The TalosControlPlane's namespace and the rest of its status that upstream's state Secret holds.
    pub namespace: Option<String>,
    pub state: Option<String>,
    pub machine_config: Option<String>,
    pub observed_kube_version: Option<String>,
}

impl std::fmt::Debug for KitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KitSource { .. }")
    }
}

/// Stores the recovery kit of the snapshot `outcome` reports, as the plan says: its key, or None when
/// none may be stored (no cluster secrets known, no recipients to seal it to, or `Never`).
async fn store_kit(plan: &BackupPlan, outcome: &Outcome) -> Result<Option<String>, Error> {
    let Some(source) = &plan.kit else {
        return Ok(None);
    };
    let kit = RecoveryKit {
        cluster: plan.controlplane.clone(),
        secrets_bundle: source.secrets_bundle.clone(),
        bundle_config: source.bundle_config.clone(),
        namespace: source.namespace.clone(),
        state: kit::upstream_state(source.state.as_deref()).to_owned(),
        machine_config: source.machine_config.clone(),
        observed_kube_version: source.observed_kube_version.clone(),
        backup_key: outcome.report.key.clone(),
        backup_sha256: outcome.report.sha256.clone(),
        backup_node: outcome.node.clone(),
        backup_time: jiff::Timestamp::now().to_string(),
    };
    kit::store(&plan.storage, &kit, &plan.encoding.recipients, plan.kit_policy).await
}

/// Stores the content report, then the manifest (which names the report), beside a complete backup
/// (snapshot and kit), sealed as the kit is. Both are accounts of the backup, not part of it: one
/// that cannot be stored is logged, and the backup stands.
async fn store_accounts(plan: &BackupPlan, mut outcome: Outcome) -> Outcome {
    let recipients = &plan.encoding.recipients;
    if let (Ok(contents), None) = (&outcome.contents, &outcome.report_key) {
        match report::store(&plan.storage, &outcome.report.key, contents, recipients).await {
            Ok(key) => outcome.report_key = Some(key),
            Err(error) => tracing::warn!(key = %outcome.report.key, %error, "cannot store the content report"),
        }
    }
    if outcome.manifest_key.is_none() {
        match manifest::store(&plan.storage, &manifest_of(plan, &outcome), recipients).await {
            Ok(key) => outcome.manifest_key = Some(key),
            Err(error) => tracing::warn!(key = %outcome.report.key, %error, "cannot store the manifest"),
        }
    }
    outcome
}

/// The manifest of the backup `outcome` reports: versions from the control plane's configuration
/// (its `bundleConfig`) and from EtcdStatus, the rest from the backup itself.
fn manifest_of(plan: &BackupPlan, outcome: &Outcome) -> Manifest {
    let source = plan.kit.as_ref();
    let config: serde_json::Value =
        source.and_then(|k| serde_json::from_str(&k.bundle_config).ok()).unwrap_or_default();
    let text = |field: &str| config.get(field).and_then(serde_json::Value::as_str).map(str::to_owned);
    let contents = outcome.contents.as_ref().ok();
    Manifest {
        format: manifest::FORMAT.to_owned(),
        format_version: manifest::FORMAT_VERSION,
        tool: format!("talos-etcd-backup {}", env!("CARGO_PKG_VERSION")),
        control_plane: plan.controlplane.clone(),
        cluster: text("clusterName"),
        talos_version: text("version"),
        kubernetes_version: source.and_then(|k| k.observed_kube_version.clone()).or_else(|| text("kubeVersion")),
        etcd_version: outcome.etcd_version.clone(),
        member_id: outcome.member_id.map(|id| format!("{id:x}")),
        node: outcome.node.clone(),
        revision: contents.map(|c| c.revision),
        db_size: contents.map(|c| c.db_size),
        snapshot: SnapshotFacts {
            key: outcome.report.key.clone(),
            sha256: outcome.report.sha256.clone(),
            size: outcome.report.size,
            stored_size: outcome.report.stored_size,
            compression: if outcome.format.zstd { "zstd" } else { "none" }.to_owned(),
            age_recipients: outcome.fingerprints.clone(),
        },
        kit: outcome.kit.clone(),
        report: outcome.report_key.clone(),
        time: jiff::Timestamp::now().to_string(),
    }
}

/// Gives the snapshot `outcome` reports the recovery kit the plan says it is to have: snapshot and
/// kit are one backup, so when a kit that is due cannot be stored the snapshot is deleted (unless S3
/// Object Lock keeps it) and the kit's error returned, for the attempt to fail or be retried whole.
async fn complete_with_kit(plan: &BackupPlan, mut outcome: Outcome) -> Result<Outcome, Error> {
    match store_kit(plan, &outcome).await {
        Ok(kit) => {
            outcome.kit = kit;
            Ok(outcome)
        }
        Err(error) => {
            let key = &outcome.report.key;
            match catalog::delete_snapshot(&plan.storage, key).await {
                Ok(Deletion::Deleted) => {}
                Ok(Deletion::Locked { until }) => tracing::warn!(%key, %until,
                    "the snapshot whose kit failed is locked by S3 Object Lock: it stays in the bucket"),
                Err(e) => tracing::warn!(%key, error = %e, "cannot delete the snapshot whose kit failed"),
            }
            Err(error)
        }
    }
}

/// Takes the snapshot an interrupted attempt stored ([`find_stored`]) as the backup, with the kit
/// beside it, or stored now: never without the kit it is to have ([`complete_with_kit`]).
async fn adopt_interrupted(plan: &BackupPlan, mut outcome: Outcome) -> Result<Outcome, Error> {
    // The manifest and the report, when the interrupted attempt got as far as storing them (the
    // report read here when plain).
    let (storage, key) = (&plan.storage, outcome.report.key.clone());
    outcome.manifest_key = stored_companion(storage, &key, manifest::manifest_key).await?;
    outcome.report_key = stored_companion(storage, &key, report::report_key).await?;
    if let Some(report) = outcome.report_key.as_deref().filter(|k| !k.ends_with(".age"))
        && let Ok(Some(contents)) = report::read(storage, report, &[]).await
    {
        outcome.contents = Ok(contents);
    }
    outcome.kit = stored_companion(storage, &key, kit::kit_key).await?;
    if outcome.kit.is_some() {
        return Ok(outcome);
    }
    complete_with_kit(plan, outcome).await
}

/// The specification's key prefix.
pub const KEY_PREFIX: &str = "talos-operator-etcd-backups";

/// Knobs shared by every backup.
#[derive(Clone, Debug)]
pub struct Settings {
    pub limits: Limits,
    /// Connecting to the Talos API (TCP + TLS).
    pub connect_timeout: Duration,
    /// Each storage request, a part upload included (given to [`Storage::new`]).
    pub request_timeout: Duration,
    /// The most memory a content report may take ([`crate::report::Counter`]).
    pub report_budget: usize,
    /// Where a content report past its budget makes its scratch folder; `None`: it gives up instead.
    pub report_scratch: Option<std::path::PathBuf>,
}

impl Settings {
    /// What counts a database's contents, as these settings allow.
    pub fn counter(&self) -> Counter {
        let counter = Counter::with_budget(self.report_budget);
        match &self.report_scratch {
            Some(folder) => counter.with_scratch(folder.clone()),
            None => counter,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            report_budget: crate::report::DEFAULT_BUDGET,
            report_scratch: Some(std::env::temp_dir()),
        }
    }
}

/// A stored snapshot: what the pipeline reported, and which node served it.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub report: Report,
    pub format: Format,
    /// Fingerprints of the age recipients, when encrypted (and known).
    pub fingerprints: Vec<String>,
    pub node: String,
    /// Why the node's etcd health was not checked before the snapshot, when it was not.
    pub unchecked_because: Option<String>,
    /// The key of the recovery kit stored with it, once stored.
    pub kit: Option<String>,
    /// What is inside, counted from the backup's own stream as it passed ([`crate::report`]), or why
    /// it was not.
    pub contents: Result<ContentReport, String>,
    /// The key of the content report stored beside it, once stored.
    pub report_key: Option<String>,
    /// The etcd member that served the snapshot and etcd's version, when EtcdStatus said.
    pub member_id: Option<u64>,
    pub etcd_version: Option<String>,
    /// The key of the manifest stored beside it, once stored.
    pub manifest_key: Option<String>,
    /// When the snapshot was taken, for one imported from the bucket (its key's time).
    pub taken_at: Option<jiff::Timestamp>,
}

/// Why an adopted snapshot's contents are unknown.
const NOT_COUNTED_ADOPTED: &str = "counted only while a snapshot streams, and the attempt that stored this one was \
    interrupted before its report was stored: `talos-etcd-backup verify` counts it";

/// `talos-operator-etcd-backups/<controlplane>/etcd-snapshot-2025-10-04T11-30-00Z.db`, ending in
/// `.db.zst`, `.db.age` or `.db.zst.age` when compressed or encrypted.
pub fn snapshot_key(controlplane: &str, at: jiff::Timestamp, format: Format) -> String {
    format!("{KEY_PREFIX}/{controlplane}/etcd-snapshot-{}{}", at.strftime("%Y-%m-%dT%H-%M-%SZ"), format.suffix())
}

/// The key of an object stored beside the snapshot at `snapshot_key`, named as the upstream operator
/// names its state backup: `…/etcd-snapshot-<timestamp>.db` → `…/<name><timestamp><extension>`, `.age`
/// added when sealed.
pub(crate) fn companion_key(snapshot_key: &str, name: &str, extension: &str, sealed: bool) -> String {
    let (dir, base) = snapshot_key.rsplit_once('/').unwrap_or(("", snapshot_key));
    let stamp = base.strip_prefix("etcd-snapshot-").unwrap_or(base);
    let stamp = stamp.split(".db").next().unwrap_or(stamp);
    let key = format!("{dir}/{name}{stamp}{extension}{}", if sealed { ".age" } else { "" });
    key.trim_start_matches('/').to_owned()
}

/// Stores an account of the snapshot at `snapshot_key` (its report or manifest, `json`) at the key
/// `name` gives it, sealed to `recipients` when there are any, its `format` in the object's metadata:
/// its key. `action` names the write in an error.
pub(crate) async fn store_account(
    storage: &Storage,
    snapshot_key: &str,
    name: fn(&str, bool) -> String,
    (json, format): (Vec<u8>, &str),
    recipients: &[teb_pipeline::Recipient],
    action: &'static str,
) -> Result<String, Error> {
    let sealed = !recipients.is_empty();
    let bytes = if sealed { teb_pipeline::codec::seal(&json, recipients).map_err(Error::Upload)? } else { json };
    let key = name(snapshot_key, sealed);
    let metadata = [("format", format.to_owned())];
    storage.put(&key, bytes, &metadata).await.map_err(|cause| Error::Bucket { action, cause })?;
    Ok(key)
}

/// The object format this writer records in the object's metadata.
pub(crate) const FORMAT: &str = "etcd-snapshot-sha256-trailer";

/// A snapshot an earlier, interrupted attempt of the backup `owner` stored at `key` (its upload
/// completed, but its status was never written), recognised by the metadata this writer records.
/// Finding it keeps a retry from storing a second copy.
async fn find_stored(storage: &Storage, key: &str, owner: &str) -> Result<Option<Outcome>, Error> {
    let Some(stored) = storage.stored(key).await.map_err(Error::Upload)? else {
        return Ok(None);
    };
    let ours = stored.metadata.get("format").map(String::as_str) == Some(FORMAT)
        && stored.metadata.get("backup").map(String::as_str) == Some(owner);
    Ok(ours.then(|| stored_outcome(key, stored)))
}

/// The outcome of a backup whose snapshot is already stored at `key`, as its object says.
fn stored_outcome(key: &str, stored: teb_pipeline::StoredSnapshot) -> Outcome {
    // The snapshot's own size and SHA-256 are known from its trailer only when it is stored plain.
    let size = stored.sha256.is_some().then_some(stored.size);
    let report =
        Report { key: key.to_owned(), size, stored_size: stored.size, sha256: stored.sha256, duration: Duration::ZERO };
    let fingerprints = fingerprints_of(&stored.metadata);
    let node = stored.metadata.get("node").cloned().unwrap_or_default();
    Outcome {
        report,
        format: stored.format,
        fingerprints,
        node,
        unchecked_because: None,
        kit: None,
        contents: Err(NOT_COUNTED_ADOPTED.into()),
        report_key: None,
        member_id: None,
        etcd_version: None,
        manifest_key: None,
        taken_at: None,
    }
}

/// The time in a snapshot key this tool or the upstream operator wrote:
/// `…/etcd-snapshot-2025-10-04T11-30-00Z.db…` is 2025-10-04T11:30:00Z.
pub fn time_of_key(key: &str) -> Option<jiff::Timestamp> {
    let name = key.rsplit('/').next()?.strip_prefix("etcd-snapshot-")?;
    let (date, time) = (name.get(..11)?, name.get(11..20)?);
    format!("{date}{}", time.replace('-', ":")).parse().ok()
}

/// The snapshot stored at `key`, imported as a backup without writing anything: a plain one read
/// back and checked whole (trailer, bbolt, its trees; its contents counted, its manifest checked);
/// a compressed or encrypted one taken as its object's metadata says (the operator holds no
/// identity: `verify` with one checks it). Its kit, report and manifest are those stored beside it.
pub async fn import_stored(storage: &Storage, key: &str, settings: &crate::Settings) -> Result<Outcome, Error> {
    let stored = storage.stored(key).await.map_err(Error::Upload)?;
    let missing = || Error::Import { key: key.to_owned(), reason: "there is no object at this key".into() };
    let mut outcome = stored_outcome(key, stored.ok_or_else(missing)?);
    outcome.taken_at = time_of_key(key);
    if outcome.format == Format::default() {
        let verified = catalog::verify(storage, key, &[], settings, &|_| {}).await?;
        outcome.report.size = Some(verified.snapshot.size);
        outcome.report.sha256 = Some(verified.snapshot.sha256);
        if let Some(manifest) = &verified.manifest {
            outcome.node.clone_from(&manifest.node);
            outcome.etcd_version.clone_from(&manifest.etcd_version);
            outcome.member_id = manifest.member_id.as_deref().and_then(|id| u64::from_str_radix(id, 16).ok());
        }
        outcome.contents = Ok(verified.contents);
    } else {
        outcome.contents = Err("imported compressed or encrypted, as its metadata describes it: not read back \
            (`talos-etcd-backup verify` with its identity checks and counts it)"
            .into());
    }
    outcome.kit = stored_companion(storage, key, kit::kit_key).await?;
    outcome.report_key = stored_companion(storage, key, report::report_key).await?;
    outcome.manifest_key = stored_companion(storage, key, manifest::manifest_key).await?;
    Ok(outcome)
}

/// The key of the object `name` places beside the snapshot at `snapshot_key` (a kit, report or
/// manifest), sealed or plain, when one is stored.
async fn stored_companion(
    storage: &Storage,
    snapshot_key: &str,
    name: fn(&str, bool) -> String,
) -> Result<Option<String>, Error> {
    first_stored(storage, [true, false].map(|sealed| name(snapshot_key, sealed))).await
}

/// The first of `keys` the bucket holds an object at.
async fn first_stored(storage: &Storage, keys: impl IntoIterator<Item = String>) -> Result<Option<String>, Error> {
    for key in keys {
        if storage.size(&key).await.map_err(Error::Upload)?.is_some() {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// Connects to Talos, picks a healthy etcd member and streams its snapshot into `key`, which the
/// caller chose free ([`unused_key`] on the command line); the recovery kit too, when the plan has one.
pub async fn run(
    plan: &BackupPlan,
    key: &str,
    settings: &Settings,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Outcome, Error> {
    run_interruptible(plan, key, settings, progress, std::future::pending()).await
}

/// [`run`], cut short when `interrupted` completes (a signal, naming itself): the upload is aborted
/// before it returns, so that nothing is left behind.
pub async fn run_interruptible(
    plan: &BackupPlan,
    key: &str,
    settings: &Settings,
    progress: &(dyn Fn(u64) + Send + Sync),
    interrupted: impl std::future::Future<Output = String>,
) -> Result<Outcome, Error> {
    let mut journal = MemoryJournal::default();
    let attempt = Attempt { plan, settings, claim: &|_| true, progress };
    let why = {
        let run = attempt.run(key, None, &mut journal);
        tokio::pin!(run);
        tokio::select! {
            outcome = &mut run => return outcome,
            why = interrupted => why,
        }
    };
    // The attempt is dropped: what its record names is all it started.
    let aborted = catalog::abort_uploads(&plan.storage, &journal.0.uploads).await;
    Err(Error::Interrupted { why, aborted: aborted.into_iter().next().map(|(_, e)| e.to_string()) })
}

/// The `age-recipients` metadata: the recipients' fingerprints, comma-separated.
pub(crate) fn fingerprints_of(metadata: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let listed = metadata.get("age-recipients").map(String::as_str).unwrap_or_default();
    listed.split(',').filter(|f| !f.is_empty()).map(str::to_owned).collect()
}

/// `key` itself for 0, else `key` numbered: `etcd-snapshot-<timestamp>-2.db` (or `-2.db.zst.age`)
/// for 2.
pub fn numbered_key(key: &str, n: u32) -> String {
    match (n, key.rfind(".db")) {
        (0, _) => key.to_owned(),
        (n, Some(at)) => format!("{}-{n}{}", &key[..at], &key[at..]),
        (n, None) => format!("{key}-{n}"),
    }
}

/// A backup ready to stream: the node chosen, its snapshot stream open, the upload created, which
/// [`Attempt::run`] records before streaming, so that a crash leaves it findable.
struct Prepared {
    upload: UploadRef,
    storage: Storage,
    snapshot: BoxStream<'static, Result<bytes::Bytes, teb_talos::Error>>,
    chosen: ChosenNode,
    limits: Limits,
    encoding: Encoding,
    /// Counts what the snapshot holds as it streams past.
    counter: Counter,
}

/// Everything before the first byte: Talos connection, node choice, snapshot stream, and
/// last (so that nothing before it leaves an upload behind) the multipart upload at `key`.
async fn prepare(plan: &BackupPlan, key: &str, settings: &Settings) -> Result<Prepared, Error> {
    let talos = TalosClient::connect(&plan.talos, settings.connect_timeout).await.map_err(Error::Talos)?;
    let chosen = talos.choose_node(&plan.talos.nodes).await.map_err(Error::Talos)?;
    if let Some(because) = &chosen.unchecked_because {
        tracing::warn!(node = %chosen.node, reason = %because, "etcd health not checked");
    }
    tracing::info!(node = %chosen.node, role = ?chosen.role, db_size = chosen.db_size, key, "streaming etcd snapshot");
    let snapshot = talos.etcd_snapshot_of(&chosen).await.map_err(Error::Talos)?.boxed();
    let mut metadata = vec![
        ("cluster", plan.controlplane.clone()),
        ("node", chosen.node.clone()),
        ("format", FORMAT.to_owned()),
        ("encoding", plan.encoding.format().name().to_owned()),
        ("writer", concat!("talos-etcd-backup/", env!("CARGO_PKG_VERSION")).to_owned()),
    ];
    metadata.extend(plan.owner.clone().map(|uid| ("backup", uid)));
    if !plan.encoding.recipients.is_empty() {
        metadata.push(("age-recipients", plan.encoding.fingerprints().join(",")));
    }
    let storage = plan.storage.clone();
    let upload = storage.create_upload(key, &metadata).await.map_err(Error::Upload)?;
    Ok(Prepared {
        upload,
        storage,
        snapshot,
        chosen,
        limits: settings.limits.clone(),
        encoding: plan.encoding.clone(),
        counter: settings.counter(),
    })
}

/// The command line never overwrites an object: `key` when the bucket holds nothing a backup there
/// would write or share a name with ([`stem_keys`]); else, for a key the user named (`explicit`), an
/// error naming what is there, and for a generated one the first free numbered key after it. (The
/// operator needs no S3 call for this: its key claims keep its own backups' stems apart.)
pub async fn unused_key(storage: &Storage, key: &str, explicit: bool) -> Result<String, Error> {
    for candidate in (0..100).filter(|&n| n != 1).map(|n| numbered_key(key, n)) {
        let Some(taken) = first_stored(storage, stem_keys(&candidate)).await? else { return Ok(candidate) };
        if explicit {
            let message = if taken == candidate {
                format!("an object is already stored at {key}, and a backup never overwrites one: name another --key")
            } else {
                format!(
                    "{taken} is stored beside {key} and a backup there would share it (kit, report and manifest \
                     are named from the key up to `.db`): name another --key"
                )
            };
            return Err(Error::Key(message));
        }
    }
    Err(Error::Key(format!("no free key after {key}: 100 objects share its second")))
}

/// Every key a backup at `key` writes, or shares its name with: the snapshot in each format (they
/// share a stem) and its kit, report and manifest, plain or sealed.
fn stem_keys(key: &str) -> Vec<String> {
    let stem = stem(key);
    let snapshots = [".db", ".db.zst", ".db.age", ".db.zst.age"].map(|format| format!("{stem}{format}"));
    let companions = [false, true].into_iter().flat_map(|sealed| {
        [
            crate::kit::kit_key(key, sealed),
            crate::report::report_key(key, sealed),
            crate::manifest::manifest_key(key, sealed),
        ]
    });
    // The key itself first: the common case, and the plainer message.
    std::iter::once(key.to_owned()).chain(snapshots.into_iter().filter(|k| k != key)).chain(companions).collect()
}

/// Keys have one-second resolution, so two backups of a control plane can meet on one: the first of
/// `key`, `key-2`, `key-3`, ... whose stem (the key up to `.db`) `claim` grants: two
/// backups of one second never share a stem whatever their formats, so neither do their recovery
/// kits (`state-<stem>.yaml`).
fn first_free_key(key: &str, claim: &(dyn Fn(&str) -> bool + Sync)) -> Option<String> {
    (0..100).filter(|&n| n != 1).map(|n| numbered_key(key, n)).find(|candidate| claim(stem(candidate)))
}

/// A key up to `.db`: what the formats of one backup's key share.
pub(crate) fn stem(key: &str) -> &str {
    key.rfind(".db").map_or(key, |at| &key[..at])
}

/// Keys handed to attempts in the last minute. A key names its second, so once that second is past
/// no new attempt asks for it: holding each for a minute keeps backups of one control plane started in
/// one second (at once or one after the other) on distinct keys, with no S3 call (a write-only bucket
/// policy cannot tell whether an object exists).
#[derive(Default)]
pub struct KeyClaims(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl KeyClaims {
    /// Takes `key` unless it was handed out in the last minute.
    pub fn claim(&self, key: &str) -> bool {
        let mut claims = self.0.lock().expect("key claims lock");
        claims.retain(|_, at| at.elapsed() < Duration::from_secs(60));
        match claims.entry(key.to_owned()) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(std::time::Instant::now());
                true
            }
        }
    }
}

impl Prepared {
    /// Gives the backup up before streaming: aborts the upload (best effort).
    async fn abandon(self) {
        if let Err(e) = self.storage.abort_upload(&self.upload).await {
            tracing::warn!(key = %self.upload.key, error = %e, "aborting the multipart upload failed");
        }
    }

    /// Streams the snapshot into the upload (compressed and encrypted as the plan says); completes
    /// it only when the trailer matched, aborts it otherwise.
    /// What is inside is counted on the way ([`Scan`]), within the settings' memory budget.
    async fn stream(self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<Outcome, Error> {
        let node = self.chosen.node;
        let mut scan = Scan::new(self.counter);
        let (storage, upload, limits, encoding) = (&self.storage, &self.upload, &self.limits, &self.encoding);
        let report = teb_pipeline::run_with(self.snapshot, storage, upload, limits, encoding, progress, &mut |db| {
            scan.update(db)
        })
        .await
        .map_err(|e| Error::from_pipeline(&node, e))?;
        let contents = scan.finish().and_then(|(scanned, counter)| {
            if counter.scratch_bytes() > 0 {
                let scratch_bytes = counter.scratch_bytes();
                tracing::info!(key = %report.key, scratch_bytes, "contents counted past the memory budget, in a scratch folder");
            }
            ContentReport::of(&scanned, &counter)
        });
        if let Err(reason) = &contents {
            tracing::warn!(key = %report.key, %reason, "the backup's contents were not counted");
        }
        Ok(Outcome {
            report,
            format: self.encoding.format(),
            fingerprints: self.encoding.fingerprints(),
            node,
            unchecked_because: self.chosen.unchecked_because,
            kit: None,
            contents,
            report_key: None,
            member_id: self.chosen.member_id,
            etcd_version: self.chosen.etcd_version,
            manifest_key: None,
            taken_at: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_key_tells_its_time() {
        let key = "talos-operator-etcd-backups/cp/etcd-snapshot-2025-10-04T11-30-00Z.db.zst.age";
        assert_eq!(time_of_key(key), Some("2025-10-04T11:30:00Z".parse().unwrap()));
        assert_eq!(
            time_of_key("talos-operator-etcd-backups/cp/etcd-snapshot-2025-10-04T11-30-00Z-2.db")
                .map(|t| t.to_string()),
            Some("2025-10-04T11:30:00Z".into())
        );
        assert_eq!(time_of_key("talos-operator-etcd-backups/cp/other.db"), None);
        assert_eq!(time_of_key("etcd-snapshot-2025-13-04T11-30-00Z.db"), None);
    }

    #[test]
    fn a_claimed_key_is_never_handed_out_twice() {
        let claims = KeyClaims::default();
        let claim = |k: &str| claims.claim(k);
        let key = "p/etcd-snapshot-2025-10-04T11-30-00Z.db";
        let keys: Vec<String> = (0..3).map(|_| first_free_key(key, &claim).unwrap()).collect();
        assert_eq!(
            keys,
            [key, "p/etcd-snapshot-2025-10-04T11-30-00Z-2.db", "p/etcd-snapshot-2025-10-04T11-30-00Z-3.db"]
        );
    }

    #[test]
    fn backups_of_one_second_in_two_formats_get_two_stems() {
        let claims = KeyClaims::default();
        let claim = |k: &str| claims.claim(k);
        let plain = first_free_key("p/etcd-snapshot-2025-10-04T11-30-00Z.db", &claim).unwrap();
        let sealed = first_free_key("p/etcd-snapshot-2025-10-04T11-30-00Z.db.age", &claim).unwrap();
        assert_eq!(sealed, "p/etcd-snapshot-2025-10-04T11-30-00Z-2.db.age");
        assert_ne!(crate::kit::kit_key(&plain, true), crate::kit::kit_key(&sealed, true));
    }

    #[test]
    fn numbered_keys_keep_the_pattern() {
        let key = "talos-operator-etcd-backups/cp/etcd-snapshot-2025-10-04T11-30-00Z.db";
        assert_eq!(numbered_key(key, 0), key);
        assert_eq!(numbered_key(key, 2), "talos-operator-etcd-backups/cp/etcd-snapshot-2025-10-04T11-30-00Z-2.db");
    }

    #[test]
    fn key_matches_the_specification() {
        let at: jiff::Timestamp = "2025-10-04T11:30:00Z".parse().unwrap();
        assert_eq!(
            snapshot_key("my-controlplane", at, Format::default()),
            "talos-operator-etcd-backups/my-controlplane/etcd-snapshot-2025-10-04T11-30-00Z.db"
        );
        let both = Format { zstd: true, age: true };
        let key = snapshot_key("cp", at, both);
        assert_eq!(key, "talos-operator-etcd-backups/cp/etcd-snapshot-2025-10-04T11-30-00Z.db.zst.age");
        assert_eq!(
            numbered_key(&key, 3),
            "talos-operator-etcd-backups/cp/etcd-snapshot-2025-10-04T11-30-00Z-3.db.zst.age"
        );
    }
}
