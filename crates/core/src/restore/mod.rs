//! Restoring a control plane's etcd from a stored backup: the `restore` command and the
//! TalosEtcdRestore controller run it.
//!
//! Talos takes a recovery in two calls: EtcdRecover uploads the snapshot (the node's own file;
//! accepted whatever etcd's state), then Bootstrap with `recover_etcd` starts the etcd service, whose
//! pre stage recovers from the file. Talos refuses the Bootstrap while the node's etcd data directory
//! has entries, running or not ("etcd data directory is not empty"), and answers it at once: a
//! recovery that fails shows only as the etcd service `Failed`. So the plan first reads the backup's
//! member list and every control-plane node (etcd running? data left? answering at all?), the upload is checked on the way (SHA-256 trailer,
//! bbolt structure; a snapshot that fails is cancelled before its end and Talos discards it), and
//! success is declared only as [`after`] describes: the recovered member up, holding the backup,
//! alarm-free, and every other node's etcd reported.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use teb_pipeline::{CheckedSnapshot, Format, Identity, SnapshotCheck, Storage};
use teb_talos::{RecoverPart, TalosClient, Target};

use crate::etcd_db::{DbMember, EtcdDb, StoredObject};
use crate::{Error, Settings};

mod after;

pub use after::{JOIN_WAIT, MemberState, NodeAfter, recovery_wait};

/// How long a node that has just booted may take to accept the recovery: its etcd service waits for
/// the container runtime, `/var` and time sync, and Talos refuses EtcdRecover and Bootstrap until then.
const BOOT_WAIT: Duration = Duration::from_secs(120);

/// How long an EtcdStatus probe may take: while etcd is down Talos's etcd client waits for it until
/// the caller gives up, so a node that does not answer within this is taken as not running.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The target node's etcd.
    pub etcd: EtcdState,
    /// The entries of the target's etcd data directory (empty once wiped).
    pub data: Vec<String>,
    /// The other control-plane nodes checked, with their etcd: every former member the backup's
    /// database names (by the address of its peer URL) and every node the caller named.
    pub others: Vec<Other>,
    /// The backup's members, or why they could not be read.
    pub members: Result<Vec<DbMember>, String>,
    /// The backup's manifest, when it has one that could be read (plain, or with the identity).
    pub manifest: Option<crate::manifest::Manifest>,
}

/// Another control-plane node, as the plan found it.
#[derive(Clone, Debug)]
pub struct Other {
    pub node: String,
    pub etcd: EtcdState,
    /// The entries of its etcd data directory, when etcd is not running there and it answers.
    pub data: Vec<String>,
    /// Named by the user as wiped or replaced (`--acknowledge-lost`, `spec.acknowledgeLost`).
    pub acknowledged: bool,
    /// The backup's member at this node, if any (its name: the node's hostname).
    pub member: Option<String>,
}

/// A node's etcd before the restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtcdState {
    /// It answers EtcdStatus: a live member, which a restore must not replace or run beside.
    Running { member_id: u64, db_size: i64 },
    /// It does not answer (waiting to be bootstrapped, crashed, or failed).
    NotRunning { reason: String },
    /// The node does not answer at all (gone, or not reachable from the endpoint).
    Unreachable { reason: String },
}

impl EtcdState {
    /// One word for tables: `running`, `not running`, `unreachable`.
    pub fn label(&self) -> &'static str {
        match self {
            EtcdState::Running { .. } => "running",
            EtcdState::NotRunning { .. } => "not running",
            EtcdState::Unreachable { .. } => "unreachable",
        }
    }
}

impl RestorePlan {
    /// Why the restore must not go ahead, if it must not: etcd runs on the target, or on another
    /// control-plane node (recovering beside it makes two clusters), or the target's data directory
    /// has entries (Talos would refuse the Bootstrap after the upload).
    pub fn refusal(&self) -> Option<String> {
        let reason = self.refusal_reason()?;
        Some(if reason.contains("--system-labels-to-wipe") { reason + ETCD_PARTITION } else { reason })
    }

    fn refusal_reason(&self) -> Option<String> {
        if let EtcdState::Running { member_id, .. } = self.etcd {
            return Some(format!(
                "etcd on node {} is running (member {member_id:x}): restoring over a live etcd is refused. A \
                 recovery needs etcd waiting to be bootstrapped: wipe etcd on every control-plane node ({}), then \
                 restore to one of them",
                self.node_label,
                wipe_command("<node>")
            ));
        }
        let running: Vec<String> = self
            .others
            .iter()
            .filter_map(|other| match other.etcd {
                EtcdState::Running { member_id, .. } => Some(format!("{} (member {member_id:x})", other.node)),
                _ => None,
            })
            .collect();
        if !running.is_empty() {
            return Some(format!(
                "etcd still runs on {}: a member of the old cluster is alive, and recovering next to it makes two \
                 clusters. Wipe etcd on every control-plane node first ({}), or recover that member instead",
                running.join(", "),
                wipe_command("<node>")
            ));
        }
        if !self.data.is_empty() {
            return Some(format!(
                "etcd's data directory on node {} is not empty ({}) although etcd is not running there (a crashed \
                 member): Talos refuses to bootstrap over it. Wipe it first: {}",
                self.node_label,
                self.data.join(", "),
                wipe_command(self.node.as_deref().unwrap_or(&self.node_label))
            ));
        }
        if let Err(why) = &self.members {
            return Some(format!(
                "the backup's member list could not be read ({why}): without it, no check can tell that no member \
                 of the old cluster still runs. Nothing was changed"
            ));
        }
        let with_data: Vec<&Other> = self.others.iter().filter(|o| !o.data.is_empty()).collect();
        if !with_data.is_empty() {
            let nodes: Vec<String> = with_data.iter().map(|o| o.node.clone()).collect();
            let commands: Vec<String> = with_data.iter().map(|o| wipe_command(&o.node)).collect();
            return Some(format!(
                "etcd's data directory is not empty on {} although etcd is not running there: once it starts again it \
                 rejoins the old cluster beside the restored one. Wipe it first: {}",
                nodes.join(", "),
                commands.join("; ")
            ));
        }
        let lost: Vec<&Other> =
            self.others.iter().filter(|o| matches!(o.etcd, EtcdState::Unreachable { .. }) && !o.acknowledged).collect();
        if !lost.is_empty() {
            let nodes: Vec<String> = lost.iter().map(|o| o.label()).collect();
            let commands: Vec<String> = lost.iter().map(|o| wipe_command(&o.node)).collect();
            return Some(format!(
                "{} did not answer: a member of the backup's cluster that comes back with its data re-forms the old \
                 cluster beside the restored one. If it is gone for good or will be wiped before it returns ({} as \
                 soon as it is back), say so: --acknowledge-lost {} (spec.acknowledgeLost of a TalosEtcdRestore)",
                nodes.join(", "),
                commands.join("; "),
                lost.iter().map(|o| o.node.as_str()).collect::<Vec<_>>().join(",")
            ));
        }
        None
    }
}

/// The command that wipes etcd on `node` (`-n` takes an address, never a port). From Talos v1.14 etcd
/// may have its own partition (volume `ETCD`, constants.EtcdDataVolumeID): wiping EPHEMERAL then
/// leaves its data, so the refusal says how to tell (internal/integration/api/etcd.go, v1.14.0-rc.1).
pub fn wipe_command(node: &str) -> String {
    let host = teb_talos::endpoint_host(node).unwrap_or_else(|| node.to_owned());
    format!("talosctl -n {host} reset --system-labels-to-wipe EPHEMERAL --reboot --graceful=false")
}

/// Said once after wipe commands.
const ETCD_PARTITION: &str = " (Talos 1.14+ with etcd on its own partition: `talosctl -n <node> get volumestatus ETCD` \
     shows type partition; wipe it with --system-labels-to-wipe ETCD instead)";

impl Other {
    /// `127.0.10.2 (member cp-2)`, or the address alone.
    fn label(&self) -> String {
        match self.member.as_deref().filter(|m| !m.is_empty()) {
            Some(member) => format!("{} (member {member})", self.node),
            None => self.node.clone(),
        }
    }
}

/// A restore that went through.
#[derive(Clone, Debug)]
pub struct Restored {
    pub checked: CheckedSnapshot,
    /// The restored member, as EtcdStatus reports it once etcd is up.
    pub member_id: u64,
    pub db_size: i64,
    pub seconds: f64,
    /// From the start until EtcdRecover took the whole snapshot: reading, decoding, checking and
    /// uploading, without the Bootstrap and the wait for etcd.
    pub upload_seconds: f64,
    /// Every other control-plane node's etcd once the recovered member was up (joined, waiting,
    /// failed, ...), after up to [`JOIN_WAIT`] for those still joining.
    pub others: Vec<NodeAfter>,
}

/// What a plan checks besides the target: the nodes the caller names, and those acknowledged lost.
#[derive(Clone, Debug)]
pub struct Checks<'a> {
    /// Every control-plane node the caller knows of (talosconfig, control plane, `--nodes`).
    pub nodes: &'a [String],
    /// Nodes (address, member name or member ID in hex) the user says are wiped or replaced.
    pub acknowledged_lost: &'a [String],
    /// Opens the backup to read its member list when it is encrypted.
    pub identities: &'a [Identity],
}

/// Looks at the backup and the control plane, changing nothing: the object's size and trailer
/// SHA-256, and the members its database names; on the target node (`node`, else the target's first
/// node, else the endpoint node) whether etcd runs and what its data directory holds; and etcd on
/// every other node: each former member (by its peer URL's address) and each of `checks.nodes`.
pub async fn plan(
    talos: &Target,
    storage: &Storage,
    key: &str,
    node: Option<&str>,
    checks: &Checks<'_>,
    settings: &Settings,
) -> Result<(TalosClient, RestorePlan), Error> {
    let stored = storage.stored(key).await.map_err(Error::Upload)?.ok_or_else(|| {
        Error::Restore(format!("no backup at {key:?} in {}: `list` shows what it holds", storage.container()))
    })?;
    // A manifest that records another snapshot than the one stored: the object was replaced. One that
    // cannot be read is only an account lost: it never stands between a cluster and its restore.
    let manifest = crate::manifest::read(storage, key, checks.identities).await.unwrap_or_else(|error| {
        tracing::warn!(%key, %error, "cannot read the backup's manifest; restoring without it");
        None
    });
    if let (Some(manifest), Some(sha256)) = (&manifest, &stored.sha256)
        && let Some(reason) = manifest.mismatch(sha256, stored.size, None)
    {
        return Err(Error::Restore(format!("{key} is not the backup its manifest describes: {reason}")));
    }
    let members = backup_members(storage, key, stored.format, checks.identities, settings).await;
    let client = TalosClient::connect(talos, settings.connect_timeout).await.map_err(|e| connect_failed(talos, e))?;
    let node = node.map(str::to_owned).or_else(|| talos.nodes.first().cloned());
    let node_label = node.clone().unwrap_or_else(|| client.endpoint().to_owned());
    let etcd = etcd_state(&client, node.as_deref()).await?;
    let data = match &etcd {
        EtcdState::Running { .. } => vec![],
        _ => client.etcd_data_entries(node.as_deref()).await.map_err(|e| refused_call(e, "List"))?,
    };
    let target_host = node.clone().or_else(|| teb_talos::endpoint_host(client.endpoint()));
    let others = other_nodes(checks, members.as_deref().unwrap_or_default(), target_host.as_deref());
    let checked = probe_others(&client, others, checks.acknowledged_lost).await?;
    let plan = RestorePlan {
        node,
        node_label,
        key: key.to_owned(),
        size: stored.size,
        sha256: stored.sha256,
        format: stored.format,
        etcd,
        data,
        others: checked,
        members,
        manifest,
    };
    Ok((client, plan))
}

/// The nodes to check besides the target: each former member's peer address, then each node the
/// caller named, once each, with the member's name where there is one.
fn other_nodes(checks: &Checks<'_>, members: &[DbMember], target: Option<&str>) -> Vec<(String, Option<DbMember>)> {
    let mut others: Vec<(String, Option<DbMember>)> = Vec::new();
    for member in members {
        // A member without a peer URL is checked by its name (the node's hostname).
        let address = member.peer_host().unwrap_or_else(|| member.name.clone());
        others.push((address, Some(member.clone())));
    }
    for node in checks.nodes {
        let host = teb_talos::endpoint_host(node).unwrap_or_else(|| node.clone());
        if !others.iter().any(|(address, _)| *address == host) {
            others.push((host, None));
        }
    }
    others.retain(|(address, _)| !address.is_empty() && Some(address.as_str()) != target);
    // In address order, not the members bucket's (member IDs): messages and tables read the same each time.
    others.sort_by(|a, b| a.0.cmp(&b.0));
    others
}

/// Probes every other node at once (a node whose etcd is down answers only when the probe gives up),
/// and lists the data directory of each that answers without a running etcd.
async fn probe_others(
    client: &TalosClient,
    others: Vec<(String, Option<DbMember>)>,
    acknowledged_lost: &[String],
) -> Result<Vec<Other>, Error> {
    let probes = others.into_iter().map(|(address, member)| async move {
        let etcd = etcd_state(client, Some(&address)).await?;
        let data = match etcd {
            // A directory that cannot be listed is no empty one: the plan fails, as for the target.
            EtcdState::NotRunning { .. } => {
                client.etcd_data_entries(Some(&address)).await.map_err(|e| refused_call(e, "List"))?
            }
            _ => Vec::new(),
        };
        let named = |name: &str| {
            name == address
                || member
                    .as_ref()
                    .is_some_and(|m| (!m.name.is_empty() && m.name == name) || format!("{:x}", m.id) == name)
        };
        let acknowledged = acknowledged_lost.iter().any(|n| named(n.trim()));
        Ok::<_, Error>(Other { node: address.clone(), etcd, data, acknowledged, member: member.map(|m| m.name) })
    });
    futures::future::join_all(probes).await.into_iter().collect()
}

/// The members the backup's database names, read before anything changes: with a few range reads
/// when it is stored plain, else from its decoded stream ([`Scan`]).
async fn backup_members(
    storage: &Storage,
    key: &str,
    format: Format,
    identities: &[Identity],
    settings: &Settings,
) -> Result<Vec<DbMember>, String> {
    let members = if format == Format::default() {
        EtcdDb::open(&StoredObject::new(storage, key)).await?.members().await?
    } else {
        if format.age && identities.is_empty() {
            return Err("it is encrypted, and no age identity was given".into());
        }
        let scanned = crate::objects::scan_stored(storage, key, identities, settings, (), &|_| {}).await;
        scanned.map_err(|e| e.to_string())?.0.members
    };
    if members.is_empty() {
        return Err("its members bucket is empty".into());
    }
    Ok(members)
}

/// A node's etcd, by a short EtcdStatus probe.
async fn etcd_state(client: &TalosClient, node: Option<&str>) -> Result<EtcdState, Error> {
    match client.etcd_status_within(node, PROBE_TIMEOUT).await {
        Ok(status) => Ok(EtcdState::Running { member_id: status.member_id, db_size: status.db_size }),
        Err(e) if e.is_permission_denied() || matches!(e, teb_talos::Error::NoForwarding { .. }) => {
            Err(refused_call(e, "EtcdStatus"))
        }
        Err(e) if e.is_unreachable() => Ok(EtcdState::Unreachable { reason: e.to_string() }),
        Err(e) => Ok(EtcdState::NotRunning { reason: e.to_string() }),
    }
}

/// A refused call: a missing role, or a worker endpoint that cannot forward.
fn refused_call(e: teb_talos::Error, call: &str) -> Error {
    if e.is_permission_denied() {
        return Error::Restore(format!(
            "{e}; a restore needs a talosconfig with the os:admin role ({call}, EtcdRecover and Bootstrap)"
        ));
    }
    Error::Talos(e)
}

/// A connection that failed during a restore: when etcd is lost, a Talos VIP (held through an etcd
/// election) is down too, so say how to name a node instead.
fn connect_failed(talos: &Target, e: teb_talos::Error) -> Error {
    if matches!(e, teb_talos::Error::Connect { certificate: false, .. }) {
        return Error::Restore(format!(
            "{e}. If {} is a Talos VIP, it is down while etcd is (the VIP is held through an etcd election): name a \
             control-plane node's address instead (--endpoints, or spec.endpoints of the TalosEtcdRestore)",
            talos.endpoints.join(", ")
        ));
    }
    Error::Talos(e)
}

/// Carries out `plan`: refuses what [`RestorePlan::refusal`] names; waits while the node is still
/// booting; streams the object from the bucket into EtcdRecover (decrypted with `identities` and
/// decompressed on the way when it is stored so), checking it on the way; bootstraps with
/// `recover_etcd`; waits up to `wait` ([`recovery_wait`] of the database when `None`) for the
/// recovered member, failing as soon as Talos shows the recovery failed; then reports the others.
pub async fn restore(
    client: &TalosClient,
    plan: &RestorePlan,
    storage: &Storage,
    identities: &[Identity],
    settings: &Settings,
    wait: Option<Duration>,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Restored, Error> {
    let started = Instant::now();
    if let Some(refusal) = plan.refusal() {
        return Err(Error::RestoreRefused(refusal));
    }
    until_booted(client, plan).await?;
    let object = storage
        .read_snapshot(&plan.key, plan.format, identities, settings.limits.idle_timeout)
        .await
        .map_err(|cause| Error::Verify { key: plan.key.clone(), cause })?;
    let checked = stream_into_recover(client, plan, object, progress).await?;
    let upload_seconds = started.elapsed().as_secs_f64();
    if let Some(planned) = plan.sha256.as_ref().filter(|sha| **sha != checked.sha256) {
        return Err(Error::Restore(format!(
            "the object at {} changed while it was read (SHA-256 {} instead of {planned}); nothing was bootstrapped",
            plan.key, checked.sha256
        )));
    }
    bootstrap(client, plan).await?;
    let database = checked.size.saturating_sub(32);
    let wait = wait.unwrap_or_else(|| recovery_wait(database));
    let (member_id, db_size) = after::wait_for_recovered(client, plan, database, wait).await?;
    let others = after::others_after(client, plan, JOIN_WAIT).await;
    Ok(Restored { checked, member_id, db_size, seconds: started.elapsed().as_secs_f64(), upload_seconds, others })
}

/// Waits up to [`BOOT_WAIT`] while the target's etcd service waits for its conditions (a node that
/// has just booted: container runtime, `/var`, time sync), which EtcdRecover needs mounted.
async fn until_booted(client: &TalosClient, plan: &RestorePlan) -> Result<(), Error> {
    let deadline = Instant::now() + BOOT_WAIT;
    loop {
        let service = client.etcd_service(plan.node.as_deref()).await.map_err(Error::Talos)?;
        let booting = service.state == "Waiting" && service.last_event.starts_with("Waiting for");
        if !booting {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Restore(format!(
                "node {} is still booting after {BOOT_WAIT:?} (its etcd service is {}: {}); nothing was uploaded. \
                 Restore once `talosctl -n {} service etcd` shows it Preparing or Failed",
                plan.node_label,
                service.state,
                service.last_event,
                plan.node.as_deref().unwrap_or(&plan.node_label)
            )));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Bootstrap with `recover_etcd`, again every 2 s for up to [`BOOT_WAIT`] while Talos answers that the
/// node is not ready (FailedPrecondition: "bootstrap is not available yet" until the container
/// runtime is up, "time is not in sync yet"): the upload stays on the node meanwhile.
async fn bootstrap(client: &TalosClient, plan: &RestorePlan) -> Result<(), Error> {
    let deadline = Instant::now() + BOOT_WAIT;
    loop {
        match client.bootstrap_recover(plan.node.as_deref()).await {
            Err(e) if e.is_not_ready() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) if e.is_not_ready() => {
                return Err(Error::Restore(format!(
                    "{e}, for {BOOT_WAIT:?} after the snapshot was uploaded to node {}: restore again once the node \
                     is ready",
                    plan.node_label
                )));
            }
            result => return result.map_err(Error::Talos),
        }
    }
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
            Some(e) if e.is_not_ready() => format!("{e}: the node is still booting (its /var is not mounted yet)"),
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
            // Cancel rather than end the stream, so that Talos discards what it got. The call is
            // driven meanwhile: with the queue full, the cancel waits for it to take a chunk.
            let cancel = async move {
                let _ = tx.send(RecoverPart::Abort).await;
            };
            let _ = tokio::join!(cancel, upload);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other(node: &str, etcd: EtcdState, data: &[&str], acknowledged: bool) -> Other {
        let data = data.iter().map(|d| d.to_string()).collect();
        Other { node: node.into(), etcd, data, acknowledged, member: Some(format!("cp-{}", &node[node.len() - 1..])) }
    }

    fn plan(others: Vec<Other>, members: Result<Vec<DbMember>, String>) -> RestorePlan {
        RestorePlan {
            node: Some("10.0.0.1".into()),
            node_label: "10.0.0.1".into(),
            key: "k".into(),
            size: 1,
            sha256: None,
            format: Format::default(),
            etcd: EtcdState::NotRunning { reason: "waiting".into() },
            data: vec![],
            others,
            members,
            manifest: None,
        }
    }

    #[test]
    fn every_former_member_must_be_down_wiped_or_acknowledged() {
        let down = || EtcdState::NotRunning { reason: "waiting".into() };
        let gone = || EtcdState::Unreachable { reason: "no route".into() };
        let running = EtcdState::Running { member_id: 0xab, db_size: 1 };
        assert_eq!(plan(vec![other("10.0.0.2", down(), &[], false)], Ok(vec![])).refusal(), None);
        let refusal = plan(vec![other("10.0.0.2", running, &[], true)], Ok(vec![])).refusal().unwrap();
        assert!(refusal.contains("etcd still runs on 10.0.0.2 (member ab)"), "acknowledged but alive: {refusal}");
        let refusal = plan(vec![other("10.0.0.2", gone(), &[], false)], Ok(vec![])).refusal().unwrap();
        assert!(
            refusal.contains("10.0.0.2 (member cp-2) did not answer")
                && refusal.contains("talosctl -n 10.0.0.2 reset")
                && refusal.contains("--acknowledge-lost 10.0.0.2")
                && refusal.contains("--system-labels-to-wipe ETCD"),
            "{refusal}"
        );
        assert_eq!(plan(vec![other("10.0.0.2", gone(), &[], true)], Ok(vec![])).refusal(), None);
        let refusal = plan(vec![other("10.0.0.3", down(), &["member"], true)], Ok(vec![])).refusal().unwrap();
        assert!(
            refusal.contains("not empty on 10.0.0.3") && refusal.contains("talosctl -n 10.0.0.3 reset"),
            "{refusal}"
        );
        let refusal = plan(vec![], Err("it is encrypted, and no age identity was given".into())).refusal().unwrap();
        assert!(refusal.contains("member list could not be read (it is encrypted"), "{refusal}");
    }

    #[test]
    fn the_wipe_command_names_a_node_without_its_port() {
        assert_eq!(
            wipe_command("127.0.10.1:27602"),
            "talosctl -n 127.0.10.1 reset --system-labels-to-wipe EPHEMERAL --reboot --graceful=false"
        );
        assert!(wipe_command("10.0.0.2").starts_with("talosctl -n 10.0.0.2 reset"));
    }
}
