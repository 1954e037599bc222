use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use cli::diff::{DiffArgs, diff};
use cli::get::{GetArgs, get};
use cli::import::{ImportArgs, import};
use cli::kit::{KitArgs, kit};
use cli::list::{ListArgs, list};
use cli::objects::{ObjectsArgs, objects};
use cli::restore::{RestoreArgs, restore};
use cli::snapshot::{SnapshotArgs, snapshot};
use cli::verify::verify;
use cli::{Tuning, parse_duration};
use talos_etcd_backup::controllers;

mod cli;

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
    /// Read a stored backup back and check it (SHA-256 trailer, bbolt structure, the trees of its key,
    /// meta and members buckets) and count what is inside it, in one pass. Exit code 0 when sound, 1
    /// when not.
    Verify(cli::verify::VerifyArgs),
    /// List the keys and Kubernetes objects a stored backup holds (each key's newest live revision;
    /// keys, sizes and revisions, never values), by resource, namespace or key prefix: no restore.
    Objects(ObjectsArgs),
    /// Print Kubernetes objects of a stored backup as YAML for `kubectl apply`: one (RESOURCE
    /// NAMESPACE/NAME) or all of a resource. Secrets encrypted at rest are opened with the keys of
    /// the backup's recovery kit (or --secrets-bundle); metadata the cluster assigned is left out.
    Get(GetArgs),
    /// What changed between two stored backups: the objects and keys added, removed and changed
    /// (their stored value differs), each and counted by resource.
    Diff(DiffArgs),
    /// Take over the backups in a bucket (the upstream talos-operator's, or from before the management
    /// cluster was rebuilt): read back and check every snapshot, and with --seal seal each plaintext
    /// recovery kit (upstream's state-*.yaml) to age recipients, deleting the plaintext once the
    /// sealed copy is read back. A schedule with importExisting then creates their TalosEtcdBackups.
    Import(ImportArgs),
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
    /// A backup holding fewer Kubernetes objects than this percentage of the newest good backup of
    /// its control plane is flagged (condition ObjectsDropped, a Warning event) and never pushes that
    /// good backup out of a schedule's retention; 0 turns the check off.
    #[arg(long, env = "MIN_OBJECTS_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100))]
    min_objects_percent: u32,
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
        Command::Objects(args) => runtime.block_on(objects(args)),
        Command::Get(args) => runtime.block_on(get(args)),
        Command::Diff(args) => runtime.block_on(diff(args)),
        Command::Import(args) => runtime.block_on(import(args)),
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
    let settings = args.tuning.settings();
    if let Some(folder) = &settings.report_scratch {
        // Counts a killed container left in its emptyDir, idle far longer than a running one ever is.
        match teb_core::report::remove_stale_scratch(folder, std::time::Duration::from_secs(600)) {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(folder = %folder.display(), removed, "removed scratch folders of counts that were killed")
            }
            Err(error) => {
                tracing::warn!(folder = %folder.display(), %error, "cannot look for scratch folders left behind")
            }
        }
    }
    let config = controllers::Config {
        settings,
        max_attempts: args.max_attempts,
        retry_backoff: args.retry_backoff,
        concurrency: args.concurrency,
        min_objects_percent: args.min_objects_percent,
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
