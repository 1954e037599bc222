//! Real etcd clusters on loopback ports.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::Channel;

use crate::assets::assets;
use crate::etcd_proto::{
    PutRequest, StatusRequest, StatusResponse, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use crate::process::ChildProcess;

/// One member of a cluster.
pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    /// Held so that dropping the member (or [`EtcdCluster::stop`]) stops the process.
    process: std::sync::Mutex<Option<ChildProcess>>,
}

impl EtcdMember {
    /// A gRPC channel to this member.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.client_url.clone())?.connect().await?)
    }

    pub async fn status(&self) -> anyhow::Result<StatusResponse> {
        let mut client = MaintenanceClient::new(self.channel().await?);
        Ok(client.status(StatusRequest {}).await?.into_inner())
    }
}

/// Options for a new cluster.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// `--quota-backend-bytes`; etcd's default (2 GiB) when unset.
    pub quota_backend_bytes: Option<u64>,
    /// Each member's name and the address its peer URL names, as Talos starts them (the node's
    /// hostname, `https://<node address>:2380`); `member-<i>` on 127.0.0.1 when empty.
    pub members: Vec<(String, String)>,
}

/// A cluster of real etcd processes, stopped and deleted when dropped.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until they agree on a leader. Ports are picked free, but
    /// another process may take one before etcd binds it: then it starts again on others.
    pub async fn start(size: usize, options: &EtcdOptions) -> anyhow::Result<Self> {
        let mut tries = 0;
        loop {
            match EtcdCluster::start_once(size, options).await {
                Err(e) if tries < 3 && format!("{e:#}").contains("address already in use") => tries += 1,
                result => return result,
            }
        }
    }

    async fn start_once(size: usize, options: &EtcdOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("teb-etcd-").tempdir()?;
        let named: Vec<(String, String)> = if options.members.is_empty() {
            (0..size).map(|i| (format!("member-{i}"), "127.0.0.1".to_owned())).collect()
        } else {
            anyhow::ensure!(options.members.len() == size, "{size} members need {size} names");
            options.members.clone()
        };
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (crate::free_port(), crate::free_port())).collect();
        let initial_cluster = named
            .iter()
            .zip(&ports)
            .map(|((n, host), (_, peer))| format!("{n}=http://{host}:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for ((name, host), (client, peer)) in named.iter().zip(&ports) {
            let data_dir = dir.path().join(name);
            let start = MemberStart {
                name,
                peer_host: host,
                client: *client,
                peer: *peer,
                data_dir: &data_dir,
                initial_cluster: &initial_cluster,
                state: "new",
            };
            members.push(start_member(start, options, dir.path())?);
        }
        let log_dir = dir.path().to_owned();
        let cluster = EtcdCluster { members, _dir: dir };
        if let Err(e) = cluster.wait_for_leader(Duration::from_secs(30)).await {
            let logs: Vec<String> = named
                .iter()
                .map(|(name, _)| {
                    let log = std::fs::read_to_string(log_dir.join(format!("{name}.log"))).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(5).collect();
                    format!("{name}: {}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
                })
                .collect();
            return Err(e.context(logs.join("\n")));
        }
        Ok(cluster)
    }

    /// A fresh one-member cluster whose data is restored from `snapshot` by `etcdctl snapshot restore`
    /// (which checks the snapshot's SHA-256 trailer).
    pub async fn restore(snapshot: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("teb-etcd-restored-").tempdir()?;
        let data_dir = dir.path().join("restored");
        let (name, peer) = restore_data(snapshot, &data_dir, false, "127.0.0.1")?;
        EtcdCluster::start_restored(dir, &name, "127.0.0.1", peer).await
    }

    /// A one-member cluster started on `data_dir` (in `dir`), which [`restore_data`] filled for
    /// `peer_host`.
    pub async fn start_restored(
        dir: tempfile::TempDir,
        name: &str,
        peer_host: &str,
        peer: u16,
    ) -> anyhow::Result<Self> {
        let data_dir = dir.path().join(name);
        let initial_cluster = format!("{name}=http://{peer_host}:{peer}");
        let start = MemberStart {
            name,
            peer_host,
            client: crate::free_port(),
            peer,
            data_dir: &data_dir,
            initial_cluster: &initial_cluster,
            state: "new",
        };
        let member = start_member(start, &EtcdOptions::default(), dir.path())?;
        let cluster = EtcdCluster { members: vec![member], _dir: dir };
        cluster.wait_for_leader(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// Adds a member named `name` (`etcdctl member add`, then the process with
    /// `--initial-cluster-state=existing`), as a control-plane node that was wiped joins a cluster.
    pub async fn add_member(&mut self, name: &str, peer_host: &str) -> anyhow::Result<()> {
        let (client, peer) = (crate::free_port(), crate::free_port());
        let peer_url = format!("http://{peer_host}:{peer}");
        // etcd refuses a new member until the last one has started and caught up ("unhealthy
        // cluster"), as Talos's join retries.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let output = loop {
            let output = Command::new(&assets()?.etcdctl)
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", self.client_urls().join(",")))
                .args(["member", "add", name, &format!("--peer-urls={peer_url}")])
                .output()?;
            if output.status.success() {
                break output;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "etcdctl member add: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        // `member add` prints the ETCD_INITIAL_CLUSTER the new member must start with.
        let text = String::from_utf8_lossy(&output.stdout);
        let initial_cluster = text
            .lines()
            .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
            .map(|l| l.trim_end_matches('"').to_owned())
            .context("etcdctl member add printed no ETCD_INITIAL_CLUSTER")?;
        let data_dir = self._dir.path().join(name);
        let log_dir = self._dir.path().to_owned();
        let options = EtcdOptions::default();
        let start = MemberStart {
            name,
            peer_host,
            client,
            peer,
            data_dir: &data_dir,
            initial_cluster: &initial_cluster,
            state: "existing",
        };
        let member = start_member(start, &options, &log_dir)?;
        self.members.push(member);
        self.wait_for_leader(Duration::from_secs(30)).await
    }

    /// Stops one member's process; its data stays (a crashed etcd).
    pub fn stop_member(&self, index: usize) {
        self.members[index].process.lock().expect("etcd process lock").take();
    }

    /// Stops every member's process (its data stays on disk until the cluster is dropped).
    pub fn stop(&self) {
        for member in &self.members {
            member.process.lock().expect("etcd process lock").take();
        }
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Writes a key through the first member.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let mut kv = KvClient::new(self.members[0].channel().await?);
        kv.put(PutRequest { key: key.to_vec(), value: value.to_vec() }).await?;
        Ok(())
    }

    /// Reads a key with etcdctl (an independent client).
    pub fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let text = self.etcdctl(&["get", "--print-value-only", key])?;
        Ok((!text.is_empty()).then(|| text.trim_end_matches('\n').to_owned()))
    }

    /// Compacts at the current revision (`etcdctl compact --physical`): history goes, each key's
    /// newest revision stays. Returns the revision.
    pub fn compact(&self) -> anyhow::Result<i64> {
        let status: serde_json::Value = serde_json::from_str(&self.etcdctl(&["endpoint", "status", "-w", "json"])?)?;
        let revision = status[0]["Status"]["header"]["revision"].as_i64().context("no revision in etcd's status")?;
        self.etcdctl(&["compact", &revision.to_string(), "--physical"])?;
        Ok(revision)
    }

    /// Deletes every key under `prefix` with etcdctl; returns how many.
    pub fn delete_prefix(&self, prefix: &str) -> anyhow::Result<u64> {
        Ok(self.etcdctl(&["del", "--prefix", prefix])?.trim().parse()?)
    }

    /// etcdctl's output for `args`, against the first member.
    fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&assets()?.etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.members[0].client_url))
            .args(args)
            .output()?;
        anyhow::ensure!(output.status.success(), "etcdctl {}: {}", args[0], String::from_utf8_lossy(&output.stderr));
        // Lossy: values may be binary (protobuf, encrypted at rest).
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    async fn wait_for_leader(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        for member in &self.members {
            loop {
                match member.status().await {
                    Ok(status) if status.leader != 0 => break,
                    result if tokio::time::Instant::now() > deadline => {
                        anyhow::bail!("etcd {} has no leader after {limit:?}: {:?}", member.name, result.err());
                    }
                    _ => {
                        // A member that exited (a port taken, say) never gets a leader.
                        if let Some(process) = member.process.lock().expect("member lock").as_mut() {
                            process.check_running()?;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                }
            }
        }
        Ok(())
    }
}

/// `etcdctl snapshot status` of `snapshot`: whether it is a bbolt database etcd can read (what
/// Talos's recovery checks first, "error verifying snapshot").
pub fn snapshot_status(snapshot: &Path) -> anyhow::Result<()> {
    let output = Command::new(&assets()?.etcdutl).args(["snapshot", "status"]).arg(snapshot).output()?;
    anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr).trim());
    Ok(())
}

/// `etcdctl snapshot restore` of `snapshot` into `data_dir` (member `restored`, a peer port chosen
/// here), checking its SHA-256 trailer unless `skip_hash_check`. Returns the member's name and peer
/// port. A failed hash check leaves what etcdctl wrote in `data_dir`.
pub fn restore_data(
    snapshot: &Path,
    data_dir: &Path,
    skip_hash_check: bool,
    peer_host: &str,
) -> anyhow::Result<(String, u16)> {
    let name = data_dir.file_name().and_then(|n| n.to_str()).unwrap_or("restored").to_owned();
    let peer = crate::free_port();
    let initial_cluster = format!("{name}=http://{peer_host}:{peer}");
    let mut command = Command::new(&assets()?.etcdutl);
    command
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--name", &name, "--initial-cluster", &initial_cluster])
        .arg(format!("--initial-advertise-peer-urls=http://{peer_host}:{peer}"));
    if skip_hash_check {
        command.arg("--skip-hash-check");
    }
    let output = command.output()?;
    anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr).trim());
    Ok((name, peer))
}

/// How one member starts: its name, ports, data, the cluster it starts in and whether that is `new`
/// or `existing`.
struct MemberStart<'a> {
    name: &'a str,
    /// The address the member's peer URL names.
    peer_host: &'a str,
    client: u16,
    peer: u16,
    data_dir: &'a Path,
    initial_cluster: &'a str,
    state: &'a str,
}

fn start_member(start: MemberStart<'_>, options: &EtcdOptions, log_dir: &Path) -> anyhow::Result<EtcdMember> {
    let MemberStart { name, peer_host, client, peer, data_dir, initial_cluster, state } = start;
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://{peer_host}:{peer}");
    let mut command = Command::new(&assets()?.etcd);
    command
        .arg(format!("--name={name}"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .arg(format!("--initial-cluster-state={state}"))
        .arg("--initial-cluster-token=teb-test")
        .args(["--logger=zap", "--log-level=warn"]);
    if let Some(quota) = options.quota_backend_bytes {
        command.arg(format!("--quota-backend-bytes={quota}"));
    }
    let log = log_dir.join(format!("{name}.log"));
    let process =
        ChildProcess::spawn(&format!("etcd {name}"), command, &log).with_context(|| format!("starting etcd {name}"))?;
    Ok(EtcdMember { name: name.to_owned(), client_url, process: std::sync::Mutex::new(Some(process)) })
}
