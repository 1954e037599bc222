use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use talos_etcd_backup::controllers;
use teb_core::{BackupPlan, Settings, backup, catalog};
use teb_pipeline::{
    AzureCredentials, AzureLocation, GcsLocation, Limits, S3Credentials, S3Location, ServiceAccountKey, Storage,
    StorageLocation,
};

/// Backs up the etcd of Talos Linux control planes into S3: streamed, verified, no local disk.
#[derive(Parser)]
#[command(name = "talos-etcd-backup", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, env = "LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller against the cluster of the kubeconfig (or the in-cluster config).
    Operator(OperatorArgs),
    /// Print the CRDs as YAML.
    Crds,
    /// Take one backup outside Kubernetes: a talosconfig in, an S3 object out.
    Snapshot(SnapshotArgs),
    /// List the backups in a bucket: key, size, time, node and SHA-256.
    List(ListArgs),
    /// Read a stored backup back and check it: SHA-256 trailer and bbolt structure. Exit code 0 when
    /// sound, 1 when not.
    Verify(StoredBackupArgs),
    /// Write a backup's recovery kit out: its secrets bundle (for `talosctl gen config --with-secrets`)
    /// and an os:admin talosconfig minted from its OS CA, valid for --validity.
    Kit(KitArgs),
    /// Restore a control plane's etcd from a stored backup (Talos EtcdRecover, then Bootstrap with
    /// recover_etcd), streamed from S3 and checked on the way. Refused while etcd runs on the node.
    Restore(RestoreArgs),
}

#[derive(Args)]
struct OperatorArgs {
    /// Kubeconfig file; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HEALTH_ADDR", default_value = "0.0.0.0:8080")]
    health_addr: SocketAddr,
    /// Backups running at once, across all namespaces.
    #[arg(long, env = "CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// Attempts per backup when failures are transient.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: u32,
    /// Wait before the second attempt (doubled for each further one).
    #[arg(long, env = "RETRY_BACKOFF", default_value = "10s", value_parser = parse_duration)]
    retry_backoff: Duration,
    #[command(flatten)]
    tuning: Tuning,
    #[command(flatten)]
    election: Election,
}

/// Leader election: with several replicas only the holder of a Lease runs backups.
#[derive(Args)]
struct Election {
    /// Run backups only while holding the Lease (needed with more than one replica).
    #[arg(long, env = "LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "talos-etcd-backup")]
    leader_election_namespace: String,
    /// Name of the Lease.
    #[arg(long, env = "LEADER_ELECTION_NAME", default_value = "talos-etcd-backup")]
    leader_election_name: String,
    /// A Lease not renewed for this long is taken over by a standby.
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// The leader stops when it could not renew for this long (less than the lease duration).
    #[arg(long, env = "RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    renew_deadline: Duration,
    /// Wait between tries to take or renew the Lease.
    #[arg(long, env = "RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    retry_period: Duration,
}

/// Memory and time bounds of a backup.
#[derive(Args)]
struct Tuning {
    /// S3 multipart part size in MiB (5 to 5120). Memory per backup is about part size × (parts in flight + 1).
    #[arg(long, env = "PART_SIZE_MIB", default_value_t = 6, value_parser = clap::value_parser!(u32).range(5..=5120))]
    part_size_mib: u32,
    /// Parts uploading at once.
    #[arg(long, env = "PARTS_IN_FLIGHT", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    parts_in_flight: u32,
    /// Give up when the snapshot stream sends nothing for this long.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Give up when one backup attempt takes longer than this.
    #[arg(long, env = "TOTAL_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    total_timeout: Duration,
}

impl Tuning {
    fn settings(&self) -> Settings {
        Settings {
            limits: Limits {
                part_size: self.part_size_mib as usize * 1024 * 1024,
                parts_in_flight: self.parts_in_flight as usize,
                idle_timeout: self.idle_timeout,
                total_timeout: self.total_timeout,
            },
            ..Settings::default()
        }
    }
}

#[derive(Args)]
struct SnapshotArgs {
    #[command(flatten)]
    talos: TalosArgs,
    /// Control-plane name in the S3 key; the talosconfig context's name when unset.
    #[arg(long)]
    cluster: Option<String>,
    /// Full S3 key, instead of talos-operator-etcd-backups/<cluster>/etcd-snapshot-<timestamp>.db
    /// (.db.zst, .db.age, .db.zst.age when compressed or encrypted); refused when an object is there.
    #[arg(long)]
    key: Option<String>,
    /// Compress the snapshot with zstd before storing it (and before encrypting it).
    #[arg(long)]
    zstd: bool,
    /// zstd level, 1 (fastest) to 19 (smallest).
    #[arg(long, default_value_t = 1, requires = "zstd", value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: i32,
    /// Encrypt the snapshot with age to this X25519 recipient (age1…); repeatable.
    #[arg(long = "age-recipient", value_name = "RECIPIENT")]
    age_recipients: Vec<String>,
    /// Encrypt to the recipients in this file (one per line, as age -R reads it); repeatable.
    #[arg(long = "age-recipients-file", value_name = "FILE")]
    age_recipients_files: Vec<PathBuf>,
    #[command(flatten)]
    bucket: BucketArgs,
    /// Progress on standard error: auto shows it on a terminal.
    #[arg(long, default_value = "auto")]
    progress: Progress,
    #[command(flatten)]
    tuning: Tuning,
}

/// Where the backups are, and how to reach the bucket or container.
#[derive(Args)]
struct BucketArgs {
    /// S3 bucket, or a bucket or container as a URL: s3://bucket, az://container, gs://bucket.
    /// Needed unless --key is an object URL.
    #[arg(long, env = "S3_BUCKET")]
    bucket: Option<String>,
    /// S3 region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    /// Custom endpoint URL: an S3-compatible store (path-style requests), the Azure blob service
    /// (Azurite: http://127.0.0.1:10000/devstoreaccount1) or a GCS endpoint.
    #[arg(long, env = "S3_ENDPOINT")]
    endpoint: Option<String>,
    /// Skip TLS verification of the S3 endpoint.
    #[arg(long)]
    insecure_skip_tls_verify: bool,
    /// PEM file of CA certificates to trust for the S3 endpoint.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// With --secret-access-key, or neither: then the AWS SDKs' chain applies (web identity, container
    /// or instance credentials).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true, requires = "secret_access_key")]
    access_key_id: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true, requires = "access_key_id")]
    secret_access_key: Option<String>,
    /// Server-side encryption of the objects written: AES256 or aws:kms.
    #[arg(long)]
    sse: Option<String>,
    /// KMS key (ID, alias or ARN) for --sse aws:kms.
    #[arg(long, requires = "sse")]
    sse_kms_key_id: Option<String>,
    /// S3 Object Lock mode of the objects written: GOVERNANCE or COMPLIANCE.
    #[arg(long, requires = "object_lock_retention")]
    object_lock_mode: Option<String>,
    /// How long the objects written stay locked: 30d, 36h, 1d12h, 90s.
    #[arg(long, requires = "object_lock_mode")]
    object_lock_retention: Option<String>,
    /// How the store checks each write: crc64nvme or sha256 (a flexible-checksum header), md5
    /// (Content-MD5), none (the body's SHA-256 signed instead; for stores that refuse those
    /// headers), auto (crc64nvme on AWS and with Object Lock, none on another --endpoint).
    #[arg(long, default_value = "auto", value_parser = teb_pipeline::S3Checksum::parse)]
    checksum: teb_pipeline::S3Checksum,
    /// Azure storage account of an az:// container.
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT_NAME")]
    azure_account: Option<String>,
    /// Azure storage account key; or --azure-sas-token; neither: workload or managed identity.
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT_KEY", hide_env_values = true, conflicts_with = "azure_sas_token")]
    azure_account_key: Option<String>,
    /// Azure SAS token (sv=…&sig=…) for the container.
    #[arg(long, env = "AZURE_STORAGE_SAS_TOKEN", hide_env_values = true)]
    azure_sas_token: Option<String>,
    /// GCS service account JSON key file of a gs:// bucket; application default credentials when unset.
    #[arg(long, value_name = "FILE")]
    gcs_service_account_key: Option<PathBuf>,
}

/// A bucket or container as a URL in object_store's conventions, and the key after it, if any.
struct ObjectUrl<'a> {
    scheme: &'a str,
    container: &'a str,
    key: Option<&'a str>,
}

impl<'a> ObjectUrl<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let (scheme, rest) = text.split_once("://")?;
        let (container, key) = match rest.split_once('/') {
            Some((container, key)) => (container, Some(key).filter(|k| !k.is_empty())),
            None => (rest, None),
        };
        Some(ObjectUrl { scheme, container, key })
    }
}

impl BucketArgs {
    /// The storage handle: built once, used for every request of the command. `key`: the key a
    /// command was given, which may be an object URL (then it names the bucket or container).
    fn storage(&self, settings: &Settings, key: Option<&str>) -> anyhow::Result<Storage> {
        let location = self.location(key)?;
        Ok(Storage::new(&location, settings.request_timeout).map_err(teb_core::Error::Upload)?)
    }

    /// The bucket or container as given (a name or a URL), for summaries.
    fn name(&self, key: Option<&str>) -> String {
        match key.and_then(ObjectUrl::parse) {
            Some(url) => format!("{}://{}", url.scheme, url.container),
            None => self.bucket.clone().unwrap_or_default(),
        }
    }

    fn location(&self, key: Option<&str>) -> anyhow::Result<StorageLocation> {
        let from_key = key.and_then(ObjectUrl::parse);
        let from_bucket = self
            .bucket
            .as_deref()
            .map(|b| ObjectUrl::parse(b).unwrap_or(ObjectUrl { scheme: "s3", container: b, key: None }));
        anyhow::ensure!(
            from_bucket.as_ref().is_none_or(|bucket| bucket.key.is_none()),
            "--bucket: give the bucket or container only (az://container), the key with --key"
        );
        let url = match (from_key, from_bucket) {
            (Some(key), Some(bucket)) if (key.scheme, key.container) != (bucket.scheme, bucket.container) => {
                anyhow::bail!("--key names {}://{} but --bucket names {}", key.scheme, key.container, self.name(None))
            }
            (Some(url), _) | (None, Some(url)) => url,
            (None, None) => anyhow::bail!(
                "--bucket is required, or --key as an object URL (s3://bucket/key, az://container/key, gs://bucket/key)"
            ),
        };
        let container = url.container.to_owned();
        let endpoint = self.endpoint.clone();
        Ok(match url.scheme {
            "s3" => StorageLocation::S3(self.s3_location(container)?),
            "az" | "azure" => StorageLocation::Azure(AzureLocation {
                account: self.azure_account.clone().context("--azure-account is required for an az:// container")?,
                container,
                endpoint,
                credentials: match (&self.azure_account_key, &self.azure_sas_token) {
                    (Some(key), _) => Some(AzureCredentials::AccountKey(key.clone())),
                    (None, Some(token)) => Some(AzureCredentials::Sas(token.clone())),
                    (None, None) => None,
                },
            }),
            "gs" => StorageLocation::Gcs(GcsLocation {
                bucket: container,
                endpoint,
                service_account_key: match &self.gcs_service_account_key {
                    Some(file) => Some(ServiceAccountKey(
                        std::fs::read_to_string(file)
                            .with_context(|| format!("reading key file {}", file.display()))?,
                    )),
                    None => None,
                },
            }),
            other => anyhow::bail!("{other}:// is not a store this tool knows: use s3://, az:// or gs://"),
        })
    }

    fn s3_location(&self, bucket: String) -> anyhow::Result<S3Location> {
        let ca_pem = match &self.ca_file {
            Some(file) => {
                Some(std::fs::read_to_string(file).with_context(|| format!("reading CA file {}", file.display()))?)
            }
            None => None,
        };
        Ok(S3Location {
            bucket,
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            insecure_skip_tls_verify: self.insecure_skip_tls_verify,
            ca_pem,
            credentials: self
                .access_key_id
                .clone()
                .zip(self.secret_access_key.clone())
                .map(|(access_key_id, secret_access_key)| S3Credentials { access_key_id, secret_access_key }),
            sse: match &self.sse {
                Some(algorithm) => Some(
                    teb_pipeline::ServerSideEncryption::parse(algorithm, self.sse_kms_key_id.as_deref())
                        .map_err(|reason| anyhow::anyhow!("--sse: {reason}"))?,
                ),
                None => None,
            },
            object_lock: match (&self.object_lock_mode, &self.object_lock_retention) {
                (Some(mode), Some(retention)) => Some(
                    teb_pipeline::ObjectLock::parse(mode, retention)
                        .map_err(|reason| anyhow::anyhow!("--object-lock-mode/--object-lock-retention: {reason}"))?,
                ),
                _ => None,
            },
            checksum: self.checksum,
        })
    }
}

/// The key of `text`: itself, or the part after the bucket or container of an object URL.
fn object_key(text: &str) -> String {
    ObjectUrl::parse(text).and_then(|url| url.key).unwrap_or(text).to_owned()
}

#[derive(Args)]
struct ListArgs {
    /// Only this control plane's backups (talos-operator-etcd-backups/<cluster>/).
    #[arg(long)]
    cluster: Option<String>,
    #[command(flatten)]
    bucket: BucketArgs,
    /// `table` or `json`.
    #[arg(long, default_value = "table")]
    output: Output,
}

/// How to decrypt a backup stored encrypted with age.
#[derive(Args)]
struct DecryptArgs {
    /// age identity file (AGE-SECRET-KEY-1… lines, as age-keygen writes it) for encrypted backups.
    #[arg(long, env = "AGE_IDENTITY_FILE", value_name = "FILE")]
    age_identity_file: Option<PathBuf>,
}

impl DecryptArgs {
    fn identities(&self) -> anyhow::Result<Vec<teb_pipeline::Identity>> {
        let Some(file) = &self.age_identity_file else {
            return Ok(Vec::new());
        };
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading identity file {}", file.display()))?;
        teb_pipeline::codec::parse_identities(&text)
            .map_err(|reason| anyhow::anyhow!("identity file {}: {reason}", file.display()))
    }
}

/// Which stored backup a command reads: one key, or the newest.
#[derive(Args)]
struct BackupChoice {
    /// Key of the backup.
    #[arg(long, required_unless_present = "latest", conflicts_with = "latest")]
    key: Option<String>,
    /// The newest backup (of --cluster, when given) instead of --key.
    #[arg(long)]
    latest: bool,
    /// With --latest: only this control plane's backups.
    #[arg(long, requires = "latest")]
    cluster: Option<String>,
}

impl BackupChoice {
    /// The key named, or the newest backup's in the bucket (`what` says what it is for, in the error).
    async fn key(&self, storage: &Storage, what: &str) -> anyhow::Result<String> {
        match &self.key {
            Some(key) => Ok(object_key(key)),
            None => catalog::latest_key(storage, self.cluster.as_deref())
                .await?
                .with_context(|| format!("no backup in {} to {what}", storage.container())),
        }
    }
}

#[derive(Args)]
struct StoredBackupArgs {
    #[command(flatten)]
    backup: BackupChoice,
    #[command(flatten)]
    bucket: BucketArgs,
    #[command(flatten)]
    decrypt: DecryptArgs,
    /// Progress on standard error: auto shows it on a terminal.
    #[arg(long, default_value = "auto")]
    progress: Progress,
}

impl StoredBackupArgs {
    /// The storage handle, the age identities and the backup's key (`what` the backup is read for,
    /// in the error when there is none).
    async fn open(
        &self,
        settings: &Settings,
        what: &str,
    ) -> anyhow::Result<(Storage, Vec<teb_pipeline::Identity>, String)> {
        let storage = self.bucket.storage(settings, self.backup.key.as_deref())?;
        let identities = self.decrypt.identities()?;
        let key = self.backup.key(&storage, what).await?;
        Ok((storage, identities, key))
    }
}

#[derive(Args)]
struct KitArgs {
    #[command(flatten)]
    stored: StoredBackupArgs,
    /// Folder to write into (created; files mode 0600): `secrets.yaml`, `talosconfig`,
    /// `state-secret.yaml` (upstream's state Secret), `controlplane.yaml` (the applied machine config,
    /// when the kit has it), `cluster-patch.yaml` and `gen-config.sh`.
    #[arg(long)]
    out: PathBuf,
    /// Talos API endpoints for the talosconfig, comma-separated; the kit's bundle config when unset.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// How long the minted talosconfig is valid.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    validity: Duration,
}

/// The recovery kit of the chosen backup, opened: its key and what it holds.
async fn open_kit(
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
fn kit_target(
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

async fn kit(args: KitArgs) -> anyhow::Result<()> {
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
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
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

#[derive(Args)]
struct RestoreArgs {
    #[command(flatten)]
    talos: TalosArgs,
    /// Control-plane node to recover on; the talosconfig's first node, else the endpoint node.
    #[arg(long)]
    node: Option<String>,
    /// Every control-plane node, comma-separated: each is checked before anything changes (none may
    /// still run etcd); the talosconfig's nodes when unset.
    #[arg(long, value_delimiter = ',')]
    nodes: Vec<String>,
    /// Members of the backup's cluster that are gone for good or will be wiped before they come back
    /// (node address, member name or member ID in hex), comma-separated. A member that does not
    /// answer is refused otherwise.
    #[arg(long, value_delimiter = ',')]
    acknowledge_lost: Vec<String>,
    /// Take the Talos credentials from the backup's recovery kit (an os:admin certificate minted from
    /// its OS CA) instead of a talosconfig: all a restore needs is then the bucket and an age identity.
    #[arg(long)]
    kit: bool,
    /// Print the plan (node, backup, its size and SHA-256, etcd's state) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// How long to wait for etcd to answer after the recovery bootstrap; by default five minutes plus
    /// one second per 16 MiB of database.
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
    #[command(flatten)]
    stored: StoredBackupArgs,
}

/// The talosconfig to reach the Talos API with.
#[derive(Args)]
struct TalosArgs {
    /// talosconfig file; ~/.talos/config when unset.
    #[arg(long, env = "TALOSCONFIG")]
    talosconfig: Option<PathBuf>,
    /// talosconfig context; its current context when unset.
    #[arg(long)]
    context: Option<String>,
    /// Talos API endpoints instead of the talosconfig's (talosctl's `--endpoints`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
}

impl TalosArgs {
    /// The Talos target: the talosconfig's context, with `--endpoints` when given.
    fn target(&self) -> anyhow::Result<teb_talos::Target> {
        let mut target = self.load()?.target(self.context.as_deref())?;
        if !self.endpoints.is_empty() {
            target.endpoints = self.endpoints.clone();
        }
        Ok(target)
    }

    fn load(&self) -> anyhow::Result<teb_talos::Talosconfig> {
        let path = match self.talosconfig.clone() {
            Some(path) => path,
            None => PathBuf::from(std::env::var_os("HOME").context("HOME is unset; pass --talosconfig")?)
                .join(".talos/config"),
        };
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading talosconfig {}", path.display()))?;
        teb_talos::Talosconfig::from_yaml(&text).with_context(|| format!("talosconfig {}", path.display()))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Progress {
    Auto,
    Always,
    Never,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration =
        text.parse().map_err(|e| format!("{text:?} is not a duration like 90s, 5m or 1h: {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("{text:?} must not be negative"))
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Operator(_)) { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Crds => {
            print!("{}", teb_api::crds_yaml());
            Ok(())
        }
        Command::Operator(args) => runtime.block_on(operator(args)),
        Command::Snapshot(args) => runtime.block_on(snapshot(args)),
        Command::List(args) => runtime.block_on(list(args)),
        Command::Verify(args) => runtime.block_on(verify(args)),
        Command::Restore(args) => runtime.block_on(restore(args)),
        Command::Kit(args) => runtime.block_on(kit(args)),
    }
}

async fn operator(args: OperatorArgs) -> anyhow::Result<()> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer().await.context("no kubeconfig given and no in-cluster configuration found")?,
    };
    let client = kube::Client::try_from(config)?;
    let ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(talos_etcd_backup::metrics::Metrics::default());
    let health = tokio::spawn(talos_etcd_backup::health::serve(args.health_addr, ready.clone(), metrics.clone()));
    let config = controllers::Config {
        settings: args.tuning.settings(),
        max_attempts: args.max_attempts,
        retry_backoff: args.retry_backoff,
        concurrency: args.concurrency,
        ..controllers::Config::default()
    };
    let election = &args.election;
    anyhow::ensure!(
        election.renew_deadline < election.lease_duration && election.retry_period < election.renew_deadline,
        "leader election needs --retry-period < --renew-deadline < --lease-duration"
    );
    let controller = controllers::run(client.clone(), config, args.namespace.as_deref(), ready.clone(), metrics);
    let work = async {
        if !election.leader_elect {
            return controller.await;
        }
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let settings = talos_etcd_backup::leader::LeaseSettings {
            namespace: election.leader_election_namespace.clone(),
            name: election.leader_election_name.clone(),
            identity,
            lease_duration: election.lease_duration,
            renew_deadline: election.renew_deadline,
            retry_period: election.retry_period,
        };
        talos_etcd_backup::leader::run_while_leading(client, settings, ready, controller).await
    };
    tokio::select! {
        result = work => result,
        result = health => result?.context("health endpoints"),
    }
}

async fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let talosconfig = args.talos.load()?;
    let talos = args.talos.target()?;
    let cluster =
        args.cluster.clone().unwrap_or_else(|| args.talos.context.clone().unwrap_or(talosconfig.context.clone()));
    let mut recipient_entries: Vec<String> = args.age_recipients.clone();
    for file in &args.age_recipients_files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading recipients file {}", file.display()))?;
        recipient_entries.extend(text.lines().map(str::to_owned));
    }
    let recipients = teb_pipeline::codec::parse_recipients(recipient_entries.iter().map(String::as_str))
        .map_err(|reason| anyhow::anyhow!("--age-recipient: {reason}"))?;
    anyhow::ensure!(
        !recipients.is_empty() || args.age_recipients_files.is_empty(),
        "--age-recipients-file: the files hold no recipient (age1…)"
    );
    let encoding = teb_pipeline::Encoding { zstd_level: args.zstd.then_some(args.zstd_level), recipients };
    let format = encoding.format();
    let settings = args.tuning.settings();
    // Check the storage settings before touching Talos: they are cheaper to get wrong.
    let storage = args.bucket.storage(&settings, args.key.as_deref())?;
    // No secrets bundle on the command line: the command stores no recovery kit.
    let kit_policy = teb_core::kit::KitPolicy::Never;
    let plan =
        BackupPlan { owner: None, controlplane: cluster.clone(), talos, storage, encoding, kit: None, kit_policy };
    let given = args.key.as_deref().map(object_key);
    let key = given.clone().unwrap_or_else(|| backup::snapshot_key(&cluster, jiff::Timestamp::now(), format));
    let key = backup::unused_key(&plan.storage, &key, args.key.is_some()).await?;
    let progress = ProgressLine::start(args.progress);
    let counter = progress.counter();
    let interrupted = interrupted()?;
    let progress_of = move |bytes| counter.store(bytes, Ordering::Relaxed);
    let result = backup::run_interruptible(&plan, &key, &settings, &progress_of, interrupted).await;
    progress.stop();
    let outcome = result?;
    let seconds = outcome.report.duration.as_secs_f64();
    let size = outcome.report.size.unwrap_or_default();
    let summary = serde_json::json!({
        "bucket": args.bucket.name(args.key.as_deref()),
        "key": outcome.report.key,
        "size": size,
        "stored_size": outcome.report.stored_size,
        "encoding": outcome.format.name(),
        "recipients": outcome.fingerprints,
        "sha256": outcome.report.sha256,
        "node": outcome.node,
        "seconds": seconds,
        "mb_per_s": size as f64 / 1e6 / seconds.max(1e-9),
        "peak_rss_bytes": peak_rss_bytes(),
    });
    println!("{summary}");
    Ok(())
}

/// SIGINT or SIGTERM, from now on: once these handlers are in place the signals no longer end the
/// process, so a backup cut short aborts its upload first ([`backup::run_interruptible`]).
fn interrupted() -> anyhow::Result<impl std::future::Future<Output = String>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => "SIGINT".to_owned(),
            _ = terminate.recv() => "SIGTERM".to_owned(),
        }
    })
}

async fn list(args: ListArgs) -> anyhow::Result<()> {
    let listed = catalog::list(&args.bucket.storage(&Settings::default(), None)?, args.cluster.as_deref()).await?;
    if args.output == Output::Json {
        let entries: Vec<serde_json::Value> = listed
            .iter()
            .map(|b| {
                serde_json::json!({
                    "key": b.key, "size": b.size, "time": b.last_modified.to_string(),
                    "cluster": b.cluster, "node": b.node, "sha256": b.sha256,
                    "encoding": b.encoding, "recipients": b.recipients, "kit": b.kit,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(entries));
        return Ok(());
    }
    println!("{:<24} {:>12}  {:<16} {:<14} {:<9} {:<4} KEY", "TIME", "SIZE", "NODE", "SHA256", "ENCODING", "KIT");
    for b in &listed {
        let sha = b.sha256.as_deref().map_or("-", |s| &s[..12.min(s.len())]);
        let time = b.last_modified.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let (node, encoding) = (b.node.as_deref().unwrap_or("-"), b.encoding.as_deref().unwrap_or("-"));
        let kit = if b.kit.is_some() { "yes" } else { "-" };
        println!("{time:<24} {:>12}  {node:<16} {sha:<14} {encoding:<9} {kit:<4} {}", b.size, b.key);
    }
    Ok(())
}

async fn verify(args: StoredBackupArgs) -> anyhow::Result<()> {
    let settings = Settings::default();
    let (storage, identities, key) = args.open(&settings, "verify").await?;
    let progress = ProgressLine::start(args.progress);
    let counter = progress.counter();
    let started = Instant::now();
    let result = async {
        let progress = move |bytes| counter.store(bytes, Ordering::Relaxed);
        catalog::verify_backup(&storage, &key, &identities, &settings, &progress).await
    }
    .await;
    progress.stop();
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok((checked, kit)) => {
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

async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    use teb_core::restore::{self, EtcdState};
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
    let mut etcd = node_state(&plan.node_label, &plan.etcd, Some(&plan.data));
    etcd["running"] = matches!(plan.etcd, EtcdState::Running { .. }).into();
    // Every control-plane node checked, the target first: the table a dry run prints.
    let mut checked = vec![etcd.clone()];
    checked.extend(plan.others.iter().map(|other| {
        let mut row = node_state(&other.node, &other.etcd, (!other.data.is_empty()).then_some(&other.data[..]));
        row["member"] = other.member.clone().into();
        row["acknowledged_lost"] = other.acknowledged.into();
        row
    }));
    let mut summary = serde_json::json!({
        "node": plan.node_label, "bucket": args.stored.bucket.name(args.stored.backup.key.as_deref()), "key": plan.key, "stored_size": plan.size,
        "size": plan.sha256.is_some().then_some(plan.size),
        "encoding": plan.format.name(), "sha256": plan.sha256, "etcd_before": etcd, "nodes": checked,
        "members": plan.members.as_ref().map_or_else(
            |why| serde_json::json!({ "error": why }),
            |members| members.iter().map(|m| serde_json::json!({
                "id": format!("{:x}", m.id), "name": m.name, "peer_urls": m.peer_urls,
            })).collect(),
        ),
    });
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
    // Every other control-plane node: joined, or what to do about it.
    summary["nodes_after"] = restored
        .others
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
        .collect();
    println!("{summary}");
    Ok(())
}

/// A control-plane node's etcd before a restore, as the summary shows it; `data`: the entries of its
/// data directory, when read (the target's).
fn node_state(node: &str, etcd: &teb_core::restore::EtcdState, data: Option<&[String]>) -> serde_json::Value {
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

/// Bytes streamed and the rate, redrawn on standard error four times a second while it runs.
struct ProgressLine {
    streamed: Arc<AtomicU64>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressLine {
    fn start(progress: Progress) -> Self {
        let show = match progress {
            Progress::Always => true,
            Progress::Never => false,
            Progress::Auto => std::io::stderr().is_terminal(),
        };
        let streamed = Arc::new(AtomicU64::new(0));
        let ticker = show.then(|| tokio::spawn(print_progress(streamed.clone(), Instant::now())));
        ProgressLine { streamed, ticker }
    }

    fn counter(&self) -> Arc<AtomicU64> {
        self.streamed.clone()
    }

    fn stop(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
            eprintln!();
        }
    }
}

async fn print_progress(streamed: Arc<AtomicU64>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let bytes = streamed.load(Ordering::Relaxed);
        let rate = bytes as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-9);
        eprint!("\r{:>10.1} MiB streamed  {rate:>7.1} MB/s", bytes as f64 / (1024.0 * 1024.0));
    }
}

/// VmHWM of this process, for the summary (and the benchmark that reads it).
/// glibc's malloc raises its mmap threshold to the size of the first large block freed, so after the
/// first backup the part buffers (6 MiB each) come from its arenas, where the freed ones fragment:
/// an operator running 100 backups 4 at a time grew 22 MiB past its budget. A fixed threshold keeps
/// blocks of 1 MiB and more in their own mappings, returned to the system when freed; a higher trim
/// threshold stops the arenas giving back and faulting in the same pages again between parts.
#[cfg(target_env = "gnu")]
fn tune_allocator() {
    // SAFETY: mallopt only sets glibc's allocation parameters; it runs before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
    }
}

#[cfg(not(target_env = "gnu"))]
fn tune_allocator() {}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// The README documents every flag and environment variable of every command.
    #[test]
    fn every_flag_and_environment_variable_is_in_the_readme() {
        let readme = include_str!("../../../README.md");
        let cli = Cli::command();
        let mut missing = Vec::new();
        for command in std::iter::once(&cli).chain(cli.get_subcommands()) {
            for arg in command.get_arguments() {
                let long = arg.get_long().map(|long| format!("`--{long}"));
                let env = arg.get_env().map(|env| format!("`{}`", env.to_string_lossy()));
                for needle in long.into_iter().chain(env) {
                    if !readme.contains(&needle) {
                        missing.push(format!("{} {needle}", command.get_name()));
                    }
                }
            }
        }
        missing.dedup();
        assert!(missing.is_empty(), "undocumented in README.md: {missing:?}");
    }
}
