//! Restoring a control plane's etcd from a stored backup: the `restore` command and the
//! TalosEtcdRestore controller run it.
//!
//! Talos takes a recovery in two calls: EtcdRecover uploads the snapshot (a file; accepted whatever
//! etcd's state), then Bootstrap with `recover_etcd` starts etcd from it, which Talos refuses while
//! the node has etcd data ("etcd data directory is not empty"). So the plan checks first that etcd is
//! not running on the node, and the upload is checked on the way (SHA-256 trailer, bbolt structure):
//! a snapshot that fails is cancelled before its end, Talos discards it, and nothing is bootstrapped.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use teb_pipeline::{CheckedSnapshot, Format, Identity, SnapshotCheck, Storage};
use teb_talos::{RecoverPart, TalosClient, Target};

use crate::{Error, Settings};

/// What a restore would do, found without changing anything.
#[derive(Clone, Debug)]
pub struct RestorePlan {
    /// The node named with `node` metadata, or `None` for the endpoint node itself.
    pub node: Option<String>,
    /// How the node is shown: its name, or the endpoint.
    pub node_label: String,
    pub key: String,
    /// Bytes stored.
    pub size: u64,
    /// The SHA-256 the object's trailer carries, when it is stored plain (else known once decoded).
    pub sha256: Option<String>,
    /// Compressed, encrypted, both or neither.
    pub format: Format,
    pub etcd: EtcdState,
}

/// The node's etcd before the restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtcdState {
    /// It answers EtcdStatus: a live member, which a restore must not replace.
    Running { member_id: u64, db_size: i64 },
    /// It does not answer (waiting to be bootstrapped, or failed): recovery can go ahead.
    NotRunning { reason: String },
}

/// A restore that went through.
#[derive(Clone, Debug)]
pub struct Restored {
    pub checked: CheckedSnapshot,
    /// The restored member, as EtcdStatus reports it once etcd is up.
    pub member_id: u64,
    pub db_size: i64,
    pub seconds: f64,
}

/// Looks at the backup and the node: the object's size and trailer SHA-256, and whether etcd runs.
pub async fn plan(
    talos: &Target,
    storage: &Storage,
    key: &str,
    node: Option<&str>,
    settings: &Settings,
) -> Result<(TalosClient, RestorePlan), Error> {
    let stored = storage.stored(key).await.map_err(Error::Upload)?.ok_or_else(|| {
        Error::Restore(format!("no backup at {key:?} in {}: `list` shows what it holds", storage.container()))
    })?;
    let client = TalosClient::connect(talos, settings.connect_timeout).await.map_err(Error::Talos)?;
    let node = node.map(str::to_owned).or_else(|| talos.nodes.first().cloned());
    let node_label = node.clone().unwrap_or_else(|| client.endpoint().to_owned());
    let etcd = match client.etcd_status_on(node.as_deref()).await {
        Ok(status) => EtcdState::Running { member_id: status.member_id, db_size: status.db_size },
        Err(e) if e.is_permission_denied() => {
            return Err(Error::Restore(format!(
                "{e}; a restore needs a talosconfig with the os:admin role (EtcdRecover and Bootstrap are admin-only)"
            )));
        }
        Err(e) => EtcdState::NotRunning { reason: e.to_string() },
    };
    let plan = RestorePlan {
        node,
        node_label,
        key: key.to_owned(),
        size: stored.size,
        sha256: stored.sha256,
        format: stored.format,
        etcd,
    };
    Ok((client, plan))
}

/// Carries out `plan`: refuses a running etcd; streams the object from S3 into EtcdRecover
/// (decrypted with `identities` and decompressed on the way when it is stored so), checking it on the
/// way; bootstraps with `recover_etcd`; waits up to `wait` for etcd to answer.
pub async fn restore(
    client: &TalosClient,
    plan: &RestorePlan,
    storage: &Storage,
    identities: &[Identity],
    settings: &Settings,
    wait: Duration,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Restored, Error> {
    let started = Instant::now();
    let node = plan.node.as_deref();
    if let EtcdState::Running { member_id, .. } = plan.etcd {
        return Err(Error::RestoreRefused(format!(
            "etcd on node {} is running (member {member_id:x}): restoring over a live etcd is refused. A \
             recovery needs etcd waiting to be bootstrapped: wipe etcd on every control-plane node (talosctl \
             reset --system-labels-to-wipe EPHEMERAL --reboot --graceful=false), then restore to one of them",
            plan.node_label
        )));
    }
    let object = storage
        .read_snapshot(&plan.key, plan.format, identities, settings.limits.idle_timeout)
        .await
        .map_err(|cause| Error::Verify { key: plan.key.clone(), cause })?;
    let checked = stream_into_recover(client, plan, object, progress).await?;
    if let Some(planned) = plan.sha256.as_ref().filter(|sha| **sha != checked.sha256) {
        return Err(Error::Restore(format!(
            "the object at {} changed while it was read (SHA-256 {} instead of {planned}); nothing was bootstrapped",
            plan.key, checked.sha256
        )));
    }
    client.bootstrap_recover(node).await.map_err(Error::Talos)?;
    let (member_id, db_size) = wait_for_etcd(client, plan, wait).await?;
    Ok(Restored { checked, member_id, db_size, seconds: started.elapsed().as_secs_f64() })
}

/// Streams the object into EtcdRecover, checking it on the way; a failed check cancels the upload (Talos
/// then discards what it got).
async fn stream_into_recover(
    client: &TalosClient,
    plan: &RestorePlan,
    mut object: impl futures::Stream<Item = Result<bytes::Bytes, teb_pipeline::Error>> + Unpin,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<CheckedSnapshot, Error> {
    let node = plan.node.as_deref();
    let verify_failed = |cause| Error::Verify { key: plan.key.clone(), cause };
    // A small queue between S3 and Talos: memory stays a few chunks whatever the snapshot's size.
    let (tx, rx) = tokio::sync::mpsc::channel::<RecoverPart>(4);
    let upload = client.etcd_recover(node, tokio_stream::wrappers::ReceiverStream::new(rx));
    // Ok(None): the call ended before the whole snapshot was sent; its own error says why.
    let send = async {
        let mut check = SnapshotCheck::default();
        let mut sent = 0u64;
        while let Some(chunk) = object.next().await {
            let chunk = chunk.map_err(verify_failed)?;
            check.update(&chunk);
            sent += chunk.len() as u64;
            progress(sent);
            if tx.send(RecoverPart::Chunk(chunk)).await.is_err() {
                return Ok(None);
            }
        }
        check.finish().map(Some).map_err(verify_failed)
    };
    let mut upload = std::pin::pin!(upload);
    let upload_failed = |e: Option<teb_talos::Error>| {
        let reason = match e {
            Some(e) if e.is_permission_denied() => format!("{e}; EtcdRecover and Bootstrap need the os:admin role"),
            Some(e) => e.to_string(),
            None => "it ended before the whole snapshot was sent".to_owned(),
        };
        Error::Restore(format!("EtcdRecover on node {} failed: {reason}", plan.node_label))
    };
    let sent = tokio::select! {
        sent = send => sent,
        ended = &mut upload => return Err(upload_failed(ended.err())),
    };
    match sent {
        Ok(Some(checked)) => {
            drop(tx); // the end of the stream: Talos keeps the upload
            upload.await.map_err(|e| upload_failed(Some(e)))?;
            Ok(checked)
        }
        Ok(None) => Err(upload_failed(upload.await.err())),
        Err(error) => {
            // Cancel rather than end the stream, so that Talos discards what it got.
            let _ = tx.send(RecoverPart::Abort).await;
            drop(tx);
            let _ = upload.await;
            Err(error)
        }
    }
}

/// Waits up to `wait` for etcd on the node to answer after the recovery bootstrap: its member ID and
/// database size.
async fn wait_for_etcd(client: &TalosClient, plan: &RestorePlan, wait: Duration) -> Result<(u64, i64), Error> {
    let deadline = Instant::now() + wait;
    loop {
        match client.etcd_status_on(plan.node.as_deref()).await {
            Ok(status) => return Ok((status.member_id, status.db_size)),
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::Restore(format!(
                    "etcd did not come up on node {} within {wait:?} of the recovery bootstrap: {e}",
                    plan.node_label
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
