//! The Talos API emulator as a program: a real etcd cluster behind Talos's machine API, for trying the
//! operator or the `snapshot` command by hand.
//!
//! `talos-emulator --out /tmp/talos` writes `talosconfig` (os:admin), `talosconfig-etcd-backup`
//! (os:etcd:backup) and `secrets.yaml` (the cluster's secrets bundle) there, then serves until Ctrl-C.
//! SIGUSR1 wipes etcd on every control-plane node (it then waits to be bootstrapped, for a restore).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use teb_testkit::emulator::{EmulatorOptions, TalosEmulator, TalosVersion};
use teb_testkit::etcd::EtcdOptions;
use teb_testkit::fixtures::CaKeyType;

#[derive(Parser)]
#[command(version, about = "Talos machine API emulator backed by a real etcd cluster")]
struct Args {
    /// Listen address; loopback only.
    #[arg(long, default_value = "127.0.0.1:50000")]
    listen: SocketAddr,
    /// Control-plane nodes (one etcd member each).
    #[arg(long, default_value_t = 3)]
    control_planes: usize,
    /// Worker nodes (no etcd).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// etcd's --quota-backend-bytes, for large databases.
    #[arg(long)]
    quota_backend_bytes: Option<u64>,
    /// Talos release whose role table applies (1.10.0 has the old one: os:etcd:backup may only snapshot).
    #[arg(long, default_value = "1.11.0")]
    talos_version: TalosVersion,
    /// OS CA key type: ed25519 (Talos's default) or ecdsa-p256 (FIPS mode).
    #[arg(long, default_value = "ed25519")]
    ca_key: CaKeyType,
    /// Extra names and addresses in the apid certificate (machine.certSANs); repeatable.
    #[arg(long = "cert-san")]
    cert_sans: Vec<String>,
    /// Serve as the first worker's apid: calls for other nodes get "no request forwarding".
    #[arg(long)]
    endpoint_is_worker: bool,
    /// Cap each snapshot stream at this many bytes per second, as a real node's apid paces it
    /// (0: no cap).
    #[arg(long, default_value_t = 0)]
    bytes_per_second: u64,
    /// How long a wiped control-plane node's etcd tries to join before its service fails (Talos: 30m).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    join_timeout: Duration,
    /// Folder for the generated talosconfig files and secrets bundle.
    #[arg(long)]
    out: PathBuf,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration =
        text.parse().map_err(|e| format!("{text:?} is not a duration like 90s or 30m: {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("{text:?} must not be negative"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.listen.ip().is_loopback(), "--listen must be a loopback address, got {}", args.listen);
    let options = EmulatorOptions {
        control_planes: args.control_planes,
        workers: args.workers,
        etcd: EtcdOptions { quota_backend_bytes: args.quota_backend_bytes, ..Default::default() },
        listen: args.listen.to_string(),
        talos_version: args.talos_version,
        ca_key: args.ca_key,
        cert_sans: args.cert_sans.clone(),
        endpoint_is_worker: args.endpoint_is_worker,
        os_ca: None,
        join_timeout: args.join_timeout,
    };
    let emulator = TalosEmulator::start(options).await?;
    emulator.faults.limit_bandwidth(args.bytes_per_second);
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let write = |name: &str, text: String| -> anyhow::Result<PathBuf> {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let admin = write("talosconfig", emulator.talosconfig(&["os:admin"])?)?;
    let backup = write("talosconfig-etcd-backup", emulator.talosconfig(&["os:etcd:backup"])?)?;
    let bundle = write("secrets.yaml", emulator.ca.secrets_bundle_yaml())?;
    println!("Talos API emulator ({}) on {}", args.talos_version, emulator.endpoint);
    for node in emulator.nodes() {
        let role = if node.etcd_member.is_some() { "controlplane" } else { "worker" };
        println!("  node {} ({}, {role})", node.address, node.hostname);
    }
    println!("  etcd members: {}", emulator.etcd().client_urls().join(", "));
    println!("  talosconfig (os:admin):       {}", admin.display());
    println!("  talosconfig (os:etcd:backup): {}", backup.display());
    println!("  secrets bundle:               {}", bundle.display());
    use tokio::signal::unix::{SignalKind, signal};
    let mut wipe = signal(SignalKind::user_defined1())?;
    loop {
        tokio::select! {
            result = tokio::signal::ctrl_c() => return Ok(result?),
            _ = wipe.recv() => {
                emulator.wipe_etcd();
                println!("  etcd wiped: waiting to be bootstrapped");
            }
        }
    }
}
