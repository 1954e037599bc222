//! A control-plane node's etcd through a disaster and its recovery, as Talos v1.13.0 runs it:
//!
//! - machined's `Bootstrap` (internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go) refuses
//!   with AlreadyExists "etcd data directory is not empty" whenever `/var/lib/etcd` has entries, whether
//!   etcd runs or not, and with FailedPrecondition "bootstrap is not available yet" while a bootstrap is
//!   under way; otherwise it starts the etcd service in bootstrap mode and returns at once.
//! - The etcd service recovers in its pre stage (internal/app/machined/pkg/system/services/etcd.go,
//!   `recoverFromSnapshot`): `snapshot status` of `/var/lib/etcd.snapshot` ("error verifying snapshot",
//!   the data directory stays empty), then `snapshot restore` with the hash check unless
//!   `recover_skip_hash_check` ("error recovering from the snapshot", what it wrote stays), and the
//!   uploaded file is removed only on success. A failed pre stage leaves the service `Failed`: the
//!   Bootstrap call itself succeeded.
//! - The uploaded file is the node's own (`constants.EtcdRecoverySnapshotPath`).
//! - Wiped control-plane nodes join the cluster that runs (etcd.go, `buildInitialCluster`: added as
//!   a learner, then promoted). They try for `constants.EtcdJoinTimeout` (30 minutes); then the pre
//!   stage fails and the service stays `Failed` until the node reboots.
//! - Service events as machined writes them: "Running pre state" (sic, service_runner.go), and a
//!   failed run's error capitalised (system.go `Start`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::Node;
use crate::etcd::{EtcdCluster, EtcdOptions, restore_data, snapshot_status};

/// A control-plane node's etcd, as Talos sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum NodeEtcd {
    /// A running member of the emulator's first cluster.
    Member,
    /// Its member stopped with its data kept: a crash-looping etcd.
    Stopped,
    /// Wiped: etcd waits to be bootstrapped or to join, until `until` (the join timeout after it
    /// started waiting); see [`NodeEtcd::now`].
    Waiting { until: Instant },
    /// Bootstrap accepted: the etcd service's pre stage runs the recovery (`snapshot restore` writes
    /// the data directory).
    Starting,
    /// A member of the recovered cluster (`State::restored`), at this index.
    Restored(usize),
    /// The etcd service failed, saying `why`; `data`: whether it left the data directory non-empty.
    Failed { why: String, data: bool },
}

impl NodeEtcd {
    /// Whether `/var/lib/etcd` has entries.
    pub(super) fn has_data(&self) -> bool {
        match self {
            NodeEtcd::Member | NodeEtcd::Stopped | NodeEtcd::Restored(_) | NodeEtcd::Starting => true,
            NodeEtcd::Waiting { .. } => false,
            NodeEtcd::Failed { data, .. } => *data,
        }
    }

    /// The etcd service as `talosctl service etcd` shows it: state, healthy, last event.
    pub(super) fn service(&self) -> (&'static str, bool, String) {
        match self {
            NodeEtcd::Member | NodeEtcd::Restored(_) => ("Running", true, "Health check successful".to_owned()),
            // A crash loop: the runner restarts etcd, which exits again.
            NodeEtcd::Stopped => (
                "Waiting",
                false,
                "Error running Containerd(etcd), going to restart forever: task \"etcd\" failed: exit code 1"
                    .to_owned(),
            ),
            NodeEtcd::Waiting { .. } | NodeEtcd::Starting => ("Preparing", false, "Running pre state".to_owned()),
            NodeEtcd::Failed { why, .. } => ("Failed", false, format!("Failed to run pre stage: {why}")),
        }
    }

    /// This state as it is now: a node that waited to join past its timeout has failed, for good.
    pub(super) fn now(self) -> NodeEtcd {
        match self {
            NodeEtcd::Waiting { until } if Instant::now() >= until => {
                NodeEtcd::Failed { why: JOIN_TIMED_OUT.to_owned(), data: false }
            }
            state => state,
        }
    }
}

/// The pre stage's error once `buildInitialCluster` gave up: go-retry's ErrorSet around its timeout
/// (etcd.go v1.13.0; siderolabs/go-retry v0.3.3 retry.go).
const JOIN_TIMED_OUT: &str =
    "failed to build initial etcd cluster: failed to build cluster arguments: 1 error(s) occurred:\n\ttimeout";

/// What the pre stage of a bootstrapped etcd service on `node` ends in: a one-member cluster (its
/// member named by the node's hostname, its peer URL at the node's address, as Talos's etcd spec has
/// them), or why not and whether the data directory was left with entries.
pub(super) async fn run_bootstrap(
    node: &Node,
    upload: Option<&Path>,
    recover: bool,
    skip_hash_check: bool,
    work: tempfile::TempDir,
) -> Result<EtcdCluster, (String, bool)> {
    if !recover {
        let options =
            EtcdOptions { members: vec![(node.hostname.clone(), node.address.clone())], ..Default::default() };
        return EtcdCluster::start(1, &options).await.map_err(|e| (format!("{e:#}"), false));
    }
    let Some(upload) = upload else {
        let why = "error verifying snapshot: open /var/lib/etcd.snapshot: no such file or directory";
        return Err((why.to_owned(), false));
    };
    snapshot_status(upload).map_err(|e| (format!("error verifying snapshot: {e:#}"), false))?;
    let data_dir: PathBuf = work.path().join(&node.hostname);
    let (name, peer) = restore_data(upload, &data_dir, skip_hash_check, &node.address)
        .map_err(|e| (format!("error recovering from the snapshot: {e:#}"), true))?;
    EtcdCluster::start_restored(work, &name, &node.address, peer).await.map_err(|e| (format!("{e:#}"), true))
}
