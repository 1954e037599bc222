//! The command line's subcommands besides `operator`: each a module with its arguments and its run
//! function over the core's use cases; here what they share (Talos and stored-backup arguments,
//! tuning, progress).

pub(crate) mod bucket;
pub(crate) mod diff;
pub(crate) mod get;
pub(crate) mod import;
pub(crate) mod kit;
pub(crate) mod list;
pub(crate) mod objects;
pub(crate) mod restore;
pub(crate) mod snapshot;
pub(crate) mod verify;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use teb_core::{Settings, catalog};
use teb_pipeline::{Limits, Storage};

use bucket::{BucketArgs, object_key};

/// Memory and time bounds of a backup.
#[derive(Args)]
pub(crate) struct Tuning {
    /// S3 multipart part size in MiB (5 to 5120). Memory per backup is about part size × (parts in flight + 1).
    #[arg(long, env = "PART_SIZE_MIB", default_value_t = 6, value_parser = clap::value_parser!(u32).range(5..=5120))]
    pub(crate) part_size_mib: u32,
    /// Parts uploading at once.
    #[arg(long, env = "PARTS_IN_FLIGHT", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) parts_in_flight: u32,
    /// Give up when the snapshot stream sends nothing for this long.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub(crate) idle_timeout: Duration,
    /// Give up when one backup attempt takes longer than this.
    #[arg(long, env = "TOTAL_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub(crate) total_timeout: Duration,
    #[command(flatten)]
    pub(crate) report: ReportBudget,
}

/// The memory a content report may take, and where it keeps what memory cannot hold.
#[derive(Args)]
pub(crate) struct ReportBudget {
    /// The most memory counting a backup's contents keeps in memory, in MiB: 192 bytes per revision
    /// the database holds (32 MiB: about 175,000). Past it the count goes on in a scratch folder
    /// (--report-scratch-dir); 0: there from the first revision.
    #[arg(long, env = "REPORT_MEMORY_MIB", default_value_t = 32, value_parser = clap::value_parser!(u32).range(0..=65536))]
    pub(crate) report_memory_mib: u32,
    /// Where counting a database past --report-memory-mib makes its scratch folder (45 bytes per
    /// revision, no key and no value; removed when the count ends); the system's temporary folder
    /// (TMPDIR, else /tmp) unless given. When it cannot be written the backup is stored all the
    /// same, uncounted, and says why.
    #[arg(long, env = "REPORT_SCRATCH_DIR")]
    pub(crate) report_scratch_dir: Option<std::path::PathBuf>,
}

impl ReportBudget {
    pub(crate) fn bytes(&self) -> usize {
        self.report_memory_mib as usize * 1024 * 1024
    }

    /// The default settings, with this budget and scratch folder.
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            report_budget: self.bytes(),
            report_scratch: Some(self.report_scratch_dir.clone().unwrap_or_else(std::env::temp_dir)),
            ..Settings::default()
        }
    }
}

impl Tuning {
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            limits: Limits {
                part_size: self.part_size_mib as usize * 1024 * 1024,
                parts_in_flight: self.parts_in_flight as usize,
                idle_timeout: self.idle_timeout,
                total_timeout: self.total_timeout,
            },
            ..self.report.settings()
        }
    }
}

/// How to decrypt a backup stored encrypted with age.
#[derive(Args)]
pub(crate) struct DecryptArgs {
    /// age identity file (AGE-SECRET-KEY-1… lines, as age-keygen writes it) for encrypted backups.
    #[arg(long, env = "AGE_IDENTITY_FILE", value_name = "FILE")]
    pub(crate) age_identity_file: Option<PathBuf>,
}

impl DecryptArgs {
    pub(crate) fn identities(&self) -> anyhow::Result<Vec<teb_pipeline::Identity>> {
        let Some(file) = &self.age_identity_file else {
            return Ok(Vec::new());
        };
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading identity file {}", file.display()))?;
        teb_pipeline::codec::parse_identities(&text)
            .map_err(|reason| anyhow::anyhow!("identity file {}: {reason}", file.display()))
    }
}

/// age recipients to encrypt to.
#[derive(Args)]
pub(crate) struct RecipientArgs {
    /// age X25519 recipient (age1…) to encrypt to; repeatable.
    #[arg(long = "age-recipient", value_name = "RECIPIENT")]
    pub(crate) age_recipients: Vec<String>,
    /// A file of recipients (one per line, as age -R reads it); repeatable.
    #[arg(long = "age-recipients-file", value_name = "FILE")]
    pub(crate) age_recipients_files: Vec<PathBuf>,
}

impl RecipientArgs {
    pub(crate) fn recipients(&self) -> anyhow::Result<Vec<teb_pipeline::codec::Recipient>> {
        let mut entries: Vec<String> = self.age_recipients.clone();
        for file in &self.age_recipients_files {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("reading recipients file {}", file.display()))?;
            entries.extend(text.lines().map(str::to_owned));
        }
        let recipients = teb_pipeline::codec::parse_recipients(entries.iter().map(String::as_str))
            .map_err(|reason| anyhow::anyhow!("--age-recipient: {reason}"))?;
        anyhow::ensure!(
            !recipients.is_empty() || self.age_recipients_files.is_empty(),
            "--age-recipients-file: the files hold no recipient (age1…)"
        );
        Ok(recipients)
    }
}

/// Which stored backup a command reads: one key, or the newest.
#[derive(Args)]
pub(crate) struct BackupChoice {
    /// Key of the backup.
    #[arg(long, required_unless_present = "latest", conflicts_with = "latest")]
    pub(crate) key: Option<String>,
    /// The newest backup (of --cluster, when given) instead of --key.
    #[arg(long)]
    pub(crate) latest: bool,
    /// With --latest: only this control plane's backups.
    #[arg(long, requires = "latest")]
    pub(crate) cluster: Option<String>,
}

impl BackupChoice {
    /// The key named, or the newest backup's in the bucket (`what` says what it is for, in the error).
    pub(crate) async fn key(&self, storage: &Storage, what: &str) -> anyhow::Result<String> {
        match &self.key {
            Some(key) => Ok(object_key(key)),
            None => catalog::latest_key(storage, self.cluster.as_deref())
                .await?
                .with_context(|| format!("no backup in {} to {what}", storage.container())),
        }
    }
}

#[derive(Args)]
pub(crate) struct StoredBackupArgs {
    #[command(flatten)]
    pub(crate) backup: BackupChoice,
    #[command(flatten)]
    pub(crate) bucket: BucketArgs,
    #[command(flatten)]
    pub(crate) decrypt: DecryptArgs,
    /// Progress on standard error: auto shows it on a terminal.
    #[arg(long, default_value = "auto")]
    pub(crate) progress: Progress,
}

impl StoredBackupArgs {
    /// The storage handle, the age identities and the backup's key (`what` the backup is read for,
    /// in the error when there is none).
    pub(crate) async fn open(
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

/// The talosconfig to reach the Talos API with.
#[derive(Args)]
pub(crate) struct TalosArgs {
    /// talosconfig file; ~/.talos/config when unset.
    #[arg(long, env = "TALOSCONFIG")]
    pub(crate) talosconfig: Option<PathBuf>,
    /// talosconfig context; its current context when unset.
    #[arg(long)]
    pub(crate) context: Option<String>,
    /// Talos API endpoints instead of the talosconfig's (talosctl's `--endpoints`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) endpoints: Vec<String>,
}

impl TalosArgs {
    /// The Talos target: the talosconfig's context, with `--endpoints` when given.
    pub(crate) fn target(&self) -> anyhow::Result<teb_talos::Target> {
        let mut target = self.load()?.target(self.context.as_deref())?;
        if !self.endpoints.is_empty() {
            target.endpoints = self.endpoints.clone();
        }
        Ok(target)
    }

    pub(crate) fn load(&self) -> anyhow::Result<teb_talos::Talosconfig> {
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
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Progress {
    Auto,
    Always,
    Never,
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration =
        text.parse().map_err(|e| format!("{text:?} is not a duration like 90s, 5m or 1h: {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("{text:?} must not be negative"))
}

/// Bytes streamed and the rate, redrawn on standard error four times a second while it runs.
pub(crate) struct ProgressLine {
    pub(crate) streamed: Arc<AtomicU64>,
    pub(crate) ticker: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressLine {
    pub(crate) fn start(progress: Progress) -> Self {
        let show = match progress {
            Progress::Always => true,
            Progress::Never => false,
            Progress::Auto => std::io::stderr().is_terminal(),
        };
        let streamed = Arc::new(AtomicU64::new(0));
        let ticker = show.then(|| tokio::spawn(print_progress(streamed.clone(), Instant::now())));
        ProgressLine { streamed, ticker }
    }

    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        self.streamed.clone()
    }

    pub(crate) fn stop(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
            eprintln!();
        }
    }
}

pub(crate) async fn print_progress(streamed: Arc<AtomicU64>, started: Instant) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let bytes = streamed.load(Ordering::Relaxed);
        let rate = bytes as f64 / 1e6 / started.elapsed().as_secs_f64().max(1e-9);
        eprint!("\r{:>10.1} MiB streamed  {rate:>7.1} MB/s", bytes as f64 / (1024.0 * 1024.0));
    }
}

/// VmHWM of this process, for the summary (and the benchmark that reads it).
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What is inside a backup, as `snapshot` and `verify` print it: the revision, the keys, and the objects of the ten
/// resources with most objects.
pub(crate) fn contents_summary(report: &teb_core::report::ContentReport) -> serde_json::Value {
    let resources: serde_json::Map<String, serde_json::Value> =
        report.resources.iter().take(10).map(|r| (r.resource.clone(), r.objects.into())).collect();
    serde_json::json!({
        "revision": report.revision, "compacted_revision": report.compacted_revision, "keys": report.keys,
        "bytes": report.bytes, "db_size": report.db_size, "objects": report.objects, "resources": resources,
    })
}
