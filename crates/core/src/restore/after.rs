//! After the recovery Bootstrap, as Talos shows it (v1.13.0 unless named):
//!
//! - The recovered member: its etcd service `Running` and healthy, EtcdStatus answering, its own
//!   member list holding it (`query_local`: only the node's etcd answers; without it machined dials
//!   every control-plane address, and a member of another cluster may answer; v1alpha1_server.go
//!   `EtcdMemberList`), its database at least the backup's, and no etcd alarm (`NOSPACE`: over its
//!   quota, the cluster takes no writes; `CORRUPT`). A service that shows `Failed` (its pre stage
//!   failed) or that etcd exits from (the restart runner's "going to restart": a crash loop after a
//!   good pre stage; runner/restart/restart.go) ends the wait at once.
//! - Every other control-plane node: a wiped node's etcd keeps trying to join for
//!   `constants.EtcdJoinTimeout` (30 minutes from when it started waiting), is added as a learner
//!   and promoted (services/etcd.go `buildInitialCluster`); past that its pre stage fails and the
//!   service stays `Failed` until the node reboots.

use std::time::{Duration, Instant};

use teb_talos::TalosClient;
use teb_talos::proto::machine::EtcdMember;

use super::{ETCD_PARTITION, Other, PROBE_TIMEOUT, RestorePlan, wipe_command};
use crate::Error;

/// How long the other nodes get to join once the recovered member is up, at most: Talos retries a
/// join every 3 s (with up to 1 s of jitter), and a learner is promoted once it caught up.
pub const JOIN_WAIT: Duration = Duration::from_secs(120);

/// How long to wait for the recovered member by default: five minutes, plus the database at 16 MiB/s.
/// The pre stage reads the file twice (`snapshot status` hashes it, `snapshot restore` checks and
/// copies it) and etcd reads it once more at start (`--experimental-initial-corrupt-check`): four
/// passes at a slow disk's 64 MiB/s.
pub fn recovery_wait(database: u64) -> Duration {
    Duration::from_secs(300) + Duration::from_secs(database / (16 << 20))
}

/// A control-plane node's etcd after the restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// A voting member of the restored cluster, its etcd service running.
    Joined { member_id: u64 },
    /// In the restored cluster's member list as a learner (or its service not running yet): joining.
    Joining { member_id: u64 },
    /// Its etcd still waits to join (Talos gives up after the join timeout).
    Waiting { event: String },
    /// Its etcd service failed, saying why: a reboot makes it try again.
    Failed { why: String },
    /// It did not answer.
    Unreachable { reason: String },
}

impl MemberState {
    /// One word for tables and status: `joined`, `joining`, `waiting`, `failed`, `unreachable`.
    pub fn label(&self) -> &'static str {
        match self {
            MemberState::Joined { .. } => "joined",
            MemberState::Joining { .. } => "joining",
            MemberState::Waiting { .. } => "waiting",
            MemberState::Failed { .. } => "failed",
            MemberState::Unreachable { .. } => "unreachable",
        }
    }

    /// Whether it will not change by itself soon: joined, failed, or gone.
    fn settled(&self) -> bool {
        matches!(self, MemberState::Joined { .. } | MemberState::Failed { .. } | MemberState::Unreachable { .. })
    }
}

/// Another control-plane node after the restore.
#[derive(Clone, Debug)]
pub struct NodeAfter {
    pub node: String,
    /// Its member of the backup's cluster, if it was one.
    pub member: Option<String>,
    pub state: MemberState,
    /// Named by the user as wiped or replaced.
    pub acknowledged: bool,
}

impl NodeAfter {
    /// What the user should know or do about this node, if anything.
    pub fn advice(&self) -> Option<String> {
        let node = &self.node;
        match &self.state {
            MemberState::Joined { .. } => None,
            MemberState::Joining { member_id } => Some(format!("member {member_id:x} is joining (being promoted)")),
            MemberState::Waiting { .. } => Some(format!(
                "its etcd waits to join; Talos gives up 30 minutes after it started waiting: if it has not joined \
                 by then, reboot it: talosctl reboot -n {node}"
            )),
            MemberState::Failed { why } if why.contains("failed to build initial etcd cluster") => Some(format!(
                "its etcd gave up waiting to join (Talos's 30-minute join timeout) and stays Failed until the node \
                 reboots: talosctl reboot -n {node}"
            )),
            MemberState::Failed { why } => {
                Some(format!("its etcd service failed ({why}); reboot it to join again: talosctl reboot -n {node}"))
            }
            MemberState::Unreachable { .. } if self.acknowledged => Some(format!(
                "acknowledged lost: wipe it before it comes back ({}){ETCD_PARTITION}",
                wipe_command(node)
            )),
            MemberState::Unreachable { reason } => Some(format!("did not answer ({reason})")),
        }
    }
}

/// Waits until `deadline` for the recovered member (see the module doc); its ID and database size.
/// `database`: the backup's database bytes (a restore only adds to the file: membership, consistent
/// index).
pub(super) async fn wait_for_recovered(
    client: &TalosClient,
    plan: &RestorePlan,
    database: u64,
    wait: Duration,
) -> Result<(u64, i64), Error> {
    let node = plan.node.as_deref();
    let deadline = Instant::now() + wait;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match recovered_member(client, node).await {
            Ok((_, db_size)) if (db_size.max(0) as u64) < database => {
                return Err(Error::Restore(format!(
                    "etcd came up on node {} with a database of {db_size} bytes, smaller than the backup's {database}: \
                     it does not hold the backup",
                    plan.node_label
                )));
            }
            Ok(member) => return Ok(member),
            Err(Recovery::Failed(why)) => {
                return Err(Error::Restore(format!(
                    "the recovery on node {} failed after Bootstrap: {why}. The upload stays on the node when \
                     the snapshot could not be read; after a failed restore its data directory may not be empty: \
                     wipe it ({}) before restoring again{ETCD_PARTITION}",
                    plan.node_label,
                    wipe_command(node.unwrap_or(&plan.node_label))
                )));
            }
            Err(Recovery::Alarm(alarm)) => {
                let at = node.unwrap_or(&plan.node_label);
                return Err(Error::Restore(format!(
                    "etcd came up on node {} with the backup, but raised its {alarm} alarm: {}",
                    plan.node_label,
                    alarm_advice(alarm, at)
                )));
            }
            Err(Recovery::NotYet(why)) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(Error::Restore(format!(
        "etcd did not come up on node {} within {wait:?} of the recovery bootstrap: {last}. Talos may still be \
         recovering a large database: watch `talosctl -n {} service etcd` before restoring again (a retry is refused \
         while the recovered etcd runs)",
        plan.node_label,
        node.unwrap_or(&plan.node_label)
    )))
}

fn alarm_advice(alarm: &str, node: &str) -> String {
    if alarm.starts_with("NOSPACE") {
        format!(
            "the database is over etcd's quota and the cluster takes no writes. Raise the quota (machine config \
             cluster.etcd.extraArgs quota-backend-bytes), then `talosctl -n {node} etcd defrag` and `talosctl -n \
             {node} etcd alarm disarm`"
        )
    } else {
        format!("etcd found a member's data corrupt: see `talosctl -n {node} logs etcd`")
    }
}

enum Recovery {
    /// Talos shows the recovery failed, saying why.
    Failed(String),
    /// The member runs with an alarm raised: `NOSPACE (member …)`.
    Alarm(&'static str),
    /// Not there yet, saying what was seen.
    NotYet(String),
}

/// The recovered member (ID, database size) once it runs and its own member list holds it.
async fn recovered_member(client: &TalosClient, node: Option<&str>) -> Result<(u64, i64), Recovery> {
    let service = client.etcd_service(node).await.map_err(|e| Recovery::NotYet(e.to_string()))?;
    if service.state == "Failed" {
        return Err(Recovery::Failed(service.last_event));
    }
    if service.last_event.contains("going to restart") {
        return Err(Recovery::Failed(format!(
            "etcd exits and Talos restarts it, a crash loop ({}); `talosctl -n {} logs etcd` says why",
            service.last_event,
            node.unwrap_or(client.endpoint())
        )));
    }
    if service.state != "Running" || !service.healthy {
        return Err(Recovery::NotYet(format!("the etcd service is {}: {}", service.state, service.last_event)));
    }
    let status = client.etcd_status_within(node, PROBE_TIMEOUT).await.map_err(|e| Recovery::NotYet(e.to_string()))?;
    let members = client.etcd_local_members(node).await.map_err(|e| Recovery::NotYet(e.to_string()))?;
    if !members.iter().any(|m| m.id == status.member_id) {
        return Err(Recovery::NotYet(format!("its member list does not hold member {:x} yet", status.member_id)));
    }
    let alarms = client.etcd_alarms(node).await.map_err(|e| Recovery::NotYet(e.to_string()))?;
    if let Some((_, alarm)) = alarms.first() {
        return Err(Recovery::Alarm(alarm));
    }
    Ok((status.member_id, status.db_size))
}

/// Every other control-plane node's etcd after the restore, waiting up to `wait` for those that are
/// still joining or waiting to.
pub(super) async fn others_after(client: &TalosClient, plan: &RestorePlan, wait: Duration) -> Vec<NodeAfter> {
    let deadline = Instant::now() + wait;
    loop {
        let members = client.etcd_local_members(plan.node.as_deref()).await.unwrap_or_default();
        let states = futures::future::join_all(plan.others.iter().map(|other| other_after(client, other, &members)));
        let nodes: Vec<NodeAfter> = states.await;
        if nodes.iter().all(|n| n.state.settled()) || Instant::now() >= deadline {
            return nodes;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn other_after(client: &TalosClient, other: &Other, members: &[EtcdMember]) -> NodeAfter {
    let node = other.node.as_str();
    let member = members.iter().find(|m| {
        m.peer_urls.iter().any(|url| teb_talos::url_host(url).as_deref() == Some(node))
            || other.member.as_deref().is_some_and(|name| !name.is_empty() && m.hostname == name)
    });
    let state = match client.etcd_service(Some(node)).await {
        Err(e) => MemberState::Unreachable { reason: e.to_string() },
        Ok(service) if service.state == "Failed" => MemberState::Failed { why: service.last_event },
        Ok(service) => match member {
            Some(m) if !m.is_learner && service.state == "Running" => MemberState::Joined { member_id: m.id },
            Some(m) => MemberState::Joining { member_id: m.id },
            None => MemberState::Waiting { event: service.last_event },
        },
    };
    NodeAfter { node: node.to_owned(), member: other.member.clone(), state, acknowledged: other.acknowledged }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(state: MemberState, acknowledged: bool) -> NodeAfter {
        NodeAfter { node: "10.0.0.2".into(), member: Some("cp-2".into()), state, acknowledged }
    }

    #[test]
    fn each_state_says_what_to_do() {
        assert_eq!(after(MemberState::Joined { member_id: 1 }, false).advice(), None);
        let timed_out = "Failed to run pre stage: failed to build initial etcd cluster: failed to build cluster \
                         arguments: 1 error(s) occurred:\n\ttimeout";
        let advice = after(MemberState::Failed { why: timed_out.into() }, false).advice().unwrap();
        assert!(advice.contains("30-minute join timeout") && advice.ends_with("talosctl reboot -n 10.0.0.2"));
        let waiting = after(MemberState::Waiting { event: "Running pre state".into() }, false).advice().unwrap();
        assert!(waiting.contains("talosctl reboot -n 10.0.0.2"), "{waiting}");
        let lost = after(MemberState::Unreachable { reason: "gone".into() }, true).advice().unwrap();
        assert!(lost.contains("talosctl -n 10.0.0.2 reset --system-labels-to-wipe EPHEMERAL"), "{lost}");
        assert!(!MemberState::Waiting { event: String::new() }.settled());
        assert!(!MemberState::Joining { member_id: 2 }.settled());
    }

    #[test]
    fn the_wait_grows_with_the_database() {
        assert_eq!(recovery_wait(0), Duration::from_secs(300));
        // 8 GiB, etcd's largest recommended quota: 512 s more.
        assert_eq!(recovery_wait(8 << 30), Duration::from_secs(812));
    }
}
