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
}

/// A cluster of real etcd processes, stopped and deleted when dropped.
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until they agree on a leader.
    pub async fn start(size: usize, options: &EtcdOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("teb-etcd-").tempdir()?;
        let names: Vec<String> = (0..size).map(|i| format!("member-{i}")).collect();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (crate::free_port(), crate::free_port())).collect();
        let initial_cluster = names
            .iter()
            .zip(&ports)
            .map(|(n, (_, peer))| format!("{n}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (name, (client, peer)) in names.iter().zip(&ports) {
            let data_dir = dir.path().join(name);
            members.push(start_member(name, *client, *peer, &data_dir, &initial_cluster, options, dir.path())?);
        }
        let cluster = EtcdCluster { members, _dir: dir };
        cluster.wait_for_leader(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// A fresh one-member cluster whose data is restored from `snapshot` by `etcdctl snapshot restore`
    /// (which checks the snapshot's SHA-256 trailer).
    pub async fn restore(snapshot: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("teb-etcd-restored-").tempdir()?;
        let (client, peer) = (crate::free_port(), crate::free_port());
        let name = "restored";
        let initial_cluster = format!("{name}=http://127.0.0.1:{peer}");
        let data_dir = dir.path().join(name);
        let output = Command::new(&assets()?.etcdctl)
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(snapshot)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--name", name, "--initial-cluster", &initial_cluster])
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"))
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "etcdctl snapshot restore failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let member =
            start_member(name, client, peer, &data_dir, &initial_cluster, &EtcdOptions::default(), dir.path())?;
        let cluster = EtcdCluster { members: vec![member], _dir: dir };
        cluster.wait_for_leader(Duration::from_secs(30)).await?;
        Ok(cluster)
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
        let output = Command::new(&assets()?.etcdctl)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.members[0].client_url))
            .args(["get", "--print-value-only", key])
            .output()?;
        anyhow::ensure!(output.status.success(), "etcdctl get: {}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8(output.stdout)?;
        Ok((!text.is_empty()).then(|| text.trim_end_matches('\n').to_owned()))
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
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        Ok(())
    }
}

fn start_member(
    name: &str,
    client: u16,
    peer: u16,
    data_dir: &Path,
    initial_cluster: &str,
    options: &EtcdOptions,
    log_dir: &Path,
) -> anyhow::Result<EtcdMember> {
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
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
        .arg("--initial-cluster-state=new")
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
