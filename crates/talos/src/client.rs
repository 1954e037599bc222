use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::common::{Data, Metadata};
use crate::proto::machine::machine_service_client::MachineServiceClient;
use crate::proto::machine::{
    BootstrapRequest, EtcdMember, EtcdMemberListRequest, EtcdMemberStatus, EtcdSnapshotRequest, ListRequest,
};
use crate::{DEFAULT_PORT, Error, Target, normalize_key_pem};

/// Talos applies no deadline of its own; a unary call (or a snapshot's first answer) gets this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// etcd's data directory on a Talos node (`constants.EtcdDataPath`).
pub const ETCD_DATA_PATH: &str = "/var/lib/etcd";

/// A node's etcd service, as `talosctl service etcd` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceState {
    /// `Running`, `Preparing`, `Waiting`, `Failed`, `Finished`, ...
    pub state: String,
    pub healthy: bool,
    /// The newest event's message (why it failed, when it did).
    pub last_event: String,
}

/// Talos caps gRPC messages at 32 MiB; so do we.
const MAX_MESSAGE_SIZE: usize = 32 << 20;

/// Messages of an EtcdRecover upload are at most this big (talosctl sends 4 KiB).
const RECOVER_PIECE: usize = 1 << 20;
/// The encoding limit of an EtcdRecover upload; only [`RecoverPart::Abort`] exceeds it.
const RECOVER_MESSAGE_LIMIT: usize = 2 * RECOVER_PIECE;

/// What an EtcdRecover upload is made of.
#[derive(Clone, Debug)]
pub enum RecoverPart {
    /// The snapshot's next bytes.
    Chunk(Bytes),
    /// Cancels the upload: Talos discards what it received.
    Abort,
}

/// A connection to one apid endpoint; calls are routed to nodes with `node` request metadata.
#[derive(Clone, Debug)]
pub struct TalosClient {
    machine: MachineServiceClient<Channel>,
    endpoint: String,
}

/// Whether the chosen member was following or leading when it was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRole {
    Follower,
    Leader,
    /// Its etcd health could not be checked (see [`ChosenNode::unchecked_because`]).
    Unchecked,
}

/// The node chosen to serve a snapshot, and what EtcdStatus said of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChosenNode {
    /// The node's address (or the endpoint's host when the endpoint node serves the snapshot).
    pub node: String,
    /// Whether calls name the node with `node` metadata; otherwise the endpoint node serves them.
    pub targeted: bool,
    pub role: MemberRole,
    pub db_size: i64,
    /// Its etcd member ID and etcd's version (EtcdStatus's `protocol_version`), when checked.
    pub member_id: Option<u64>,
    pub etcd_version: Option<String>,
    /// Why etcd health was not checked before choosing, when it was not.
    pub unchecked_because: Option<String>,
}

impl TalosClient {
    /// Connects to the first endpoint of `target` that accepts mTLS with its credentials.
    pub async fn connect(target: &Target, connect_timeout: Duration) -> Result<Self, Error> {
        let creds = &target.credentials;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&creds.ca_pem))
            .identity(Identity::from_pem(&creds.crt_pem, normalize_key_pem(&creds.key_pem)));
        let mut failures = Vec::new();
        for endpoint in &target.endpoints {
            let (uri, host) = endpoint_uri(endpoint)?;
            let channel = Endpoint::from_shared(uri)
                .and_then(|e| e.tls_config(tls.clone().domain_name(host.clone())))
                .map_err(|e| Error::Endpoint { endpoint: endpoint.clone(), reason: chain(e) })?
                .connect_timeout(connect_timeout)
                .tcp_nodelay(true)
                // Larger HTTP/2 windows let Talos keep streaming without waiting for window updates.
                .initial_stream_window_size(Some(2 << 20))
                .initial_connection_window_size(Some(4 << 20))
                // No HTTP/2 keepalive pings: apid (grpc-go with its default policy) allows one ping per
                // five minutes and drops the connection after three early ones, which is what happens
                // while back-pressure from S3 pauses reading. The idle timeout catches dead streams.
                .connect()
                .await;
            match channel {
                Ok(channel) => {
                    let machine = MachineServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_SIZE);
                    return Ok(TalosClient { machine, endpoint: endpoint.clone() });
                }
                Err(e) => failures.push(connect_failure(endpoint, &host, &chain(e))),
            }
        }
        let certificate = failures.iter().all(|(_, certificate)| *certificate);
        let reason = failures.into_iter().map(|(reason, _)| reason).collect::<Vec<_>>().join("; ");
        Err(Error::Connect { endpoints: target.endpoints.join(", "), reason, certificate })
    }

    /// The endpoint this client is connected to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The etcd members as the endpoint node sees them.
    pub async fn etcd_members(&self) -> Result<Vec<EtcdMember>, Error> {
        self.etcd_members_of(None).await
    }

    /// The etcd members as `node` (the endpoint node when `None`) sees them. Talos asks the cluster
    /// through every control-plane address it knows: the answer may come from any member.
    pub async fn etcd_members_of(&self, node: Option<&str>) -> Result<Vec<EtcdMember>, Error> {
        self.member_list(node, false).await
    }

    /// The etcd members as `node`'s own etcd member sees them (`query_local`: Talos asks only the
    /// local etcd, so the answer is that member's cluster and no other).
    pub async fn etcd_local_members(&self, node: Option<&str>) -> Result<Vec<EtcdMember>, Error> {
        self.member_list(node, true).await
    }

    async fn member_list(&self, node: Option<&str>, query_local: bool) -> Result<Vec<EtcdMember>, Error> {
        let request = for_node(EtcdMemberListRequest { query_local }, node)?;
        let node = node.unwrap_or(&self.endpoint);
        let response =
            self.deadline("EtcdMemberList", node, self.machine.clone().etcd_member_list(request)).await?.into_inner();
        let first = response.messages.into_iter().next().unwrap_or_default();
        check_in_band("EtcdMemberList", node, first.metadata.as_ref())?;
        Ok(first.members)
    }

    /// The alarms `node`'s etcd member holds (EtcdAlarmList asks the local etcd): `NOSPACE` (the
    /// database reached its quota: the cluster takes no writes) or `CORRUPT`, with the member raising it.
    pub async fn etcd_alarms(&self, node: Option<&str>) -> Result<Vec<(u64, &'static str)>, Error> {
        use crate::proto::machine::etcd_member_alarm::AlarmType;
        let request = for_node((), node)?;
        let node = node.unwrap_or(&self.endpoint);
        let response =
            self.deadline("EtcdAlarmList", node, self.machine.clone().etcd_alarm_list(request)).await?.into_inner();
        let first = response.messages.into_iter().next().unwrap_or_default();
        check_in_band("EtcdAlarmList", node, first.metadata.as_ref())?;
        Ok(first
            .member_alarms
            .into_iter()
            .filter_map(|a| match a.alarm() {
                AlarmType::None => None,
                AlarmType::Nospace => Some((a.member_id, "NOSPACE")),
                AlarmType::Corrupt => Some((a.member_id, "CORRUPT")),
            })
            .collect())
    }

    /// EtcdStatus of one node's etcd member.
    pub async fn etcd_status(&self, node: &str) -> Result<EtcdMemberStatus, Error> {
        self.etcd_status_on(Some(node)).await
    }

    /// EtcdStatus of `node`'s etcd member, or of the endpoint node's when `None`.
    pub async fn etcd_status_on(&self, node: Option<&str>) -> Result<EtcdMemberStatus, Error> {
        self.etcd_status_within(node, CALL_TIMEOUT).await
    }

    /// [`TalosClient::etcd_status_on`] with its own deadline: while etcd is down Talos's etcd client
    /// waits for it until the caller gives up, so a probe of a node that may be down wants a short one.
    pub async fn etcd_status_within(&self, node: Option<&str>, within: Duration) -> Result<EtcdMemberStatus, Error> {
        let request = for_node((), node)?;
        let node = node.unwrap_or(&self.endpoint);
        let mut machine = self.machine.clone();
        let response = self.deadline_of("EtcdStatus", node, within, machine.etcd_status(request)).await?.into_inner();
        let first = response.messages.into_iter().next().unwrap_or_default();
        check_in_band("EtcdStatus", node, first.metadata.as_ref())?;
        first.member_status.ok_or_else(|| Error::Call {
            call: "EtcdStatus",
            node: node.to_owned(),
            code: tonic::Code::Internal,
            message: "response carries no member status".into(),
        })
    }

    /// Picks the node to snapshot: a healthy follower if there is one (a snapshot puts load on the
    /// member, and the leader has the most to do), otherwise any healthy member. Candidates are the
    /// etcd members the endpoint reports (by the host of their peer URL), then `extra` nodes.
    ///
    /// Talos before 1.9.6 and 1.10.0 let `os:etcd:backup` call only EtcdSnapshot. When EtcdMemberList
    /// or EtcdStatus is refused with PermissionDenied, the first of `extra` is chosen (the
    /// talosconfig's nodes), else the endpoint node itself, unchecked; the reason is recorded.
    pub async fn choose_node(&self, extra: &[String]) -> Result<ChosenNode, Error> {
        let mut candidates: Vec<String> = Vec::new();
        let mut problems = Vec::new();
        match self.etcd_members().await {
            Ok(members) => {
                for member in members.iter().filter(|m| !m.is_learner) {
                    if let Some(host) = member.peer_urls.iter().find_map(|u| url_host(u)) {
                        candidates.push(host);
                    }
                }
            }
            Err(e) if e.is_permission_denied() => return Ok(self.unchecked(extra, &e)),
            // Every node's apid would refuse it too: say so rather than that no member is healthy.
            Err(e @ Error::CertificateRefused { .. }) => return Err(e),
            Err(e) => problems.push(e),
        }
        for node in extra {
            if !candidates.contains(node) {
                candidates.push(node.clone());
            }
        }
        let mut leader = None;
        let checked = |node: String, role, status: &EtcdMemberStatus| ChosenNode {
            node,
            targeted: true,
            role,
            db_size: status.db_size,
            member_id: Some(status.member_id),
            etcd_version: Some(status.protocol_version.clone()).filter(|v| !v.is_empty()),
            unchecked_because: None,
        };
        for node in candidates {
            match self.etcd_status(&node).await {
                Ok(status) if !status.errors.is_empty() => {
                    problems
                        .push(Error::Unhealthy(format!("{node}: etcd reports errors: {}", status.errors.join("; "))));
                }
                Ok(status) if status.is_learner => {
                    problems.push(Error::Unhealthy(format!("{node}: member is a learner")))
                }
                Ok(status) if status.member_id != status.leader => {
                    return Ok(checked(node, MemberRole::Follower, &status));
                }
                Ok(status) => {
                    leader.get_or_insert(checked(node, MemberRole::Leader, &status));
                }
                Err(e) if e.is_permission_denied() => return Ok(self.unchecked(extra, &e)),
                Err(e) => problems.push(e),
            }
        }
        leader.ok_or_else(|| {
            // Worth another attempt only if every problem may go away by itself.
            let transient = problems.iter().all(Error::is_transient);
            let reason = if problems.is_empty() {
                "the endpoint reports no etcd members and no nodes are configured".to_owned()
            } else {
                problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            };
            Error::NoHealthyMember { reason, transient }
        })
    }

    /// The node to snapshot when etcd health cannot be asked for.
    fn unchecked(&self, extra: &[String], refused: &Error) -> ChosenNode {
        let (node, targeted) = match extra.first() {
            Some(node) => (node.clone(), true),
            None => (endpoint_uri(&self.endpoint).map_or_else(|_| self.endpoint.clone(), |(_, host)| host), false),
        };
        let because = format!(
            "{refused}; the client certificate's role may not read etcd health (Talos before 1.9.6 and 1.10.0 allow \
             os:etcd:backup only EtcdSnapshot), so {} was chosen without checking it",
            if targeted { format!("node {node} of the talosconfig") } else { format!("the endpoint node {node}") }
        );
        let unchecked_because = Some(because);
        ChosenNode {
            node,
            targeted,
            role: MemberRole::Unchecked,
            db_size: 0,
            member_id: None,
            etcd_version: None,
            unchecked_because,
        }
    }

    /// Starts an etcd snapshot on `node`. The stream yields the snapshot's bytes as Talos sends them
    /// (1 KiB a message); errors Talos reports in-band end it with an error.
    pub async fn etcd_snapshot(
        &self,
        node: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, Error>> + Send + 'static, Error> {
        self.snapshot(with_node(EtcdSnapshotRequest {}, node)?, node).await
    }

    /// Starts an etcd snapshot on the node [`choose_node`](Self::choose_node) chose.
    pub async fn etcd_snapshot_of(
        &self,
        chosen: &ChosenNode,
    ) -> Result<impl Stream<Item = Result<Bytes, Error>> + Send + 'static, Error> {
        let request = if chosen.targeted {
            with_node(EtcdSnapshotRequest {}, &chosen.node)?
        } else {
            tonic::Request::new(EtcdSnapshotRequest {})
        };
        self.snapshot(request, &chosen.node).await
    }

    async fn snapshot(
        &self,
        request: tonic::Request<EtcdSnapshotRequest>,
        node: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, Error>> + Send + 'static, Error> {
        let stream =
            self.deadline("EtcdSnapshot", node, self.machine.clone().etcd_snapshot(request)).await?.into_inner();
        let node = node.to_owned();
        Ok(stream.map(move |item| match item {
            Ok(data) => check_in_band("EtcdSnapshot", &node, data.metadata.as_ref()).map(|()| data.bytes),
            Err(status) => Err(Error::call("EtcdSnapshot", &node, &status)),
        }))
    }
}

impl TalosClient {
    /// Uploads a snapshot to `node` (the endpoint node when `None`) for recovery (EtcdRecover, `os:admin`): Talos keeps it as a file
    /// that only a Bootstrap with `recover_etcd` reads. The upload counts only once `chunks` ends;
    /// dropping the returned future before that cancels the call, and Talos discards what it got.
    pub async fn etcd_recover(
        &self,
        node: Option<&str>,
        parts: impl Stream<Item = RecoverPart> + Send + 'static,
    ) -> Result<(), Error> {
        let messages = parts.flat_map(|part| {
            let pieces: Vec<Bytes> = match part {
                RecoverPart::Chunk(bytes) => (0..bytes.len())
                    .step_by(RECOVER_PIECE)
                    .map(|at| bytes.slice(at..(at + RECOVER_PIECE).min(bytes.len())))
                    .collect(),
                // tonic cannot cancel a client stream by itself: a message over the encoding limit
                // fails the request body, which resets the HTTP/2 stream, and Talos then discards
                // the upload (it keeps it only after a clean end of stream).
                RecoverPart::Abort => vec![Bytes::from(vec![0u8; RECOVER_MESSAGE_LIMIT + 1])],
            };
            futures::stream::iter(pieces.into_iter().map(|bytes| Data { metadata: None, bytes }))
        });
        let request = for_node(messages, node)?;
        let node = node.unwrap_or(&self.endpoint);
        let response = self
            .machine
            .clone()
            .max_encoding_message_size(RECOVER_MESSAGE_LIMIT)
            .etcd_recover(request)
            .await
            .map_err(|s| Error::call("EtcdRecover", node, &s))?;
        let first = response.into_inner().messages.into_iter().next().unwrap_or_default();
        check_in_band("EtcdRecover", node, first.metadata.as_ref())
    }

    /// Bootstrap with `recover_etcd` on `node` (the endpoint node when `None`; `os:admin`): etcd starts from the snapshot EtcdRecover
    /// uploaded. Talos answers at once; etcd comes up (or fails to) afterwards.
    pub async fn bootstrap_recover(&self, node: Option<&str>) -> Result<(), Error> {
        let request = for_node(BootstrapRequest { recover_etcd: true, recover_skip_hash_check: false }, node)?;
        let node = node.unwrap_or(&self.endpoint);
        let response = self.deadline("Bootstrap", node, self.machine.clone().bootstrap(request)).await?.into_inner();
        let first = response.messages.into_iter().next().unwrap_or_default();
        check_in_band("Bootstrap", node, first.metadata.as_ref())
    }

    /// The etcd service of `node` (the endpoint node when `None`) as Talos's service list shows it:
    /// its state (`Running`, `Preparing`, `Failed`, ...), health and newest event.
    pub async fn etcd_service(&self, node: Option<&str>) -> Result<ServiceState, Error> {
        let request = for_node((), node)?;
        let node = node.unwrap_or(&self.endpoint);
        let response =
            self.deadline("ServiceList", node, self.machine.clone().service_list(request)).await?.into_inner();
        let first = response.messages.into_iter().next().unwrap_or_default();
        check_in_band("ServiceList", node, first.metadata.as_ref())?;
        let etcd = first.services.into_iter().find(|s| s.id == "etcd").ok_or_else(|| Error::Call {
            call: "ServiceList",
            node: node.to_owned(),
            code: tonic::Code::NotFound,
            message: "the node runs no etcd service".into(),
        })?;
        let health = etcd.health.unwrap_or_default();
        let last_event = etcd.events.and_then(|e| e.events.into_iter().last()).map(|e| e.msg).unwrap_or_default();
        Ok(ServiceState { state: etcd.state, healthy: health.healthy, last_event })
    }

    /// The entries of etcd's data directory (`/var/lib/etcd`) on `node` (List, not recursive): empty
    /// once wiped, and what makes Talos refuse a Bootstrap otherwise.
    pub async fn etcd_data_entries(&self, node: Option<&str>) -> Result<Vec<String>, Error> {
        let request = for_node(ListRequest { root: ETCD_DATA_PATH.into(), recurse: false, recursion_depth: 0 }, node)?;
        let node = node.unwrap_or(&self.endpoint);
        let mut stream = self.deadline("List", node, self.machine.clone().list(request)).await?.into_inner();
        let mut entries = Vec::new();
        loop {
            let next = tokio::time::timeout(CALL_TIMEOUT, stream.message()).await.map_err(|_| Error::Call {
                call: "List",
                node: node.to_owned(),
                code: tonic::Code::DeadlineExceeded,
                message: format!("no answer within {CALL_TIMEOUT:?}"),
            })?;
            let Some(info) = next.map_err(|s| Error::call("List", node, &s))? else {
                return Ok(entries);
            };
            check_in_band("List", node, info.metadata.as_ref())?;
            // The walk names the root itself first (".").
            if !info.error.is_empty() && info.relative_name.is_empty() {
                return Err(Error::Call {
                    call: "List",
                    node: node.to_owned(),
                    code: tonic::Code::Unknown,
                    message: info.error,
                });
            }
            if info.name != ETCD_DATA_PATH && info.relative_name != "." {
                entries.push(info.relative_name);
            }
        }
    }

    async fn deadline<T>(
        &self,
        call: &'static str,
        node: &str,
        future: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<tonic::Response<T>, Error> {
        self.deadline_of(call, node, CALL_TIMEOUT, future).await
    }

    async fn deadline_of<T>(
        &self,
        call: &'static str,
        node: &str,
        within: Duration,
        future: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<tonic::Response<T>, Error> {
        match tokio::time::timeout(within, future).await {
            Ok(result) => result.map_err(|s| Error::call(call, node, &s)),
            Err(_) => Err(Error::Call {
                call,
                node: node.to_owned(),
                code: tonic::Code::DeadlineExceeded,
                message: format!("no answer within {within:?}"),
            }),
        }
    }
}

/// An error with its sources: tonic keeps the cause (a refused certificate, a refused connection)
/// in a source of its "transport error".
fn chain(e: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

/// A failed connection's reason, and whether it was the server's certificate (not worth retrying).
/// A name missing from apid's certificate gets a hint: apid's certificate names only the node's
/// addresses, its hostname and FQDN, `machine.certSANs` and, from Talos 1.13.4, 127.0.0.1.
fn connect_failure(endpoint: &str, host: &str, reason: &str) -> (String, bool) {
    if reason.contains("not valid for name") || reason.contains("NotValidForName") {
        let hint = format!(
            "{endpoint}: the Talos API certificate does not name {host:?} ({reason}); add {host:?} to machine.certSANs \
             in the machine configuration of the control-plane nodes, or use a node's IP address as the endpoint"
        );
        (hint, true)
    } else {
        let certificate = reason.contains("invalid peer certificate") || reason.contains("UnknownIssuer");
        (format!("{endpoint}: {reason}"), certificate)
    }
}

/// One-to-many proxying reports a node's failure inside a message rather than as the call's status.
fn check_in_band(call: &'static str, node: &str, metadata: Option<&Metadata>) -> Result<(), Error> {
    match metadata {
        Some(md) if !md.error.is_empty() => Err(Error::Call {
            call,
            node: if md.hostname.is_empty() { node.to_owned() } else { md.hostname.clone() },
            code: md.status.as_ref().map_or(tonic::Code::Unknown, |s| tonic::Code::from_i32(s.code)),
            message: md.error.clone(),
        }),
        _ => Ok(()),
    }
}

/// A request for `node`, or for the endpoint node itself (no `node` metadata).
fn for_node<T>(message: T, node: Option<&str>) -> Result<tonic::Request<T>, Error> {
    match node {
        Some(node) => with_node(message, node),
        None => Ok(tonic::Request::new(message)),
    }
}

fn with_node<T>(message: T, node: &str) -> Result<tonic::Request<T>, Error> {
    let mut request = tonic::Request::new(message);
    let value = node
        .parse()
        .map_err(|_| Error::Endpoint { endpoint: node.to_owned(), reason: "not a valid node name".into() })?;
    request.metadata_mut().insert("node", value);
    Ok(request)
}

/// `host`, `host:port`, `[v6]:port` or `https://host:port` to an https URI and the TLS server name.
fn endpoint_uri(endpoint: &str) -> Result<(String, String), Error> {
    let bare = endpoint.trim().trim_start_matches("https://").trim_end_matches('/');
    let invalid = |reason: &str| Error::Endpoint { endpoint: endpoint.to_owned(), reason: reason.to_owned() };
    if bare.is_empty() || bare.contains('/') || endpoint.starts_with("http://") {
        return Err(invalid("expected host, host:port or https://host:port"));
    }
    let (host, port) = split_host_port(bare);
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| invalid("port is not a number between 1 and 65535"))?,
        None => DEFAULT_PORT,
    };
    let uri_host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    Ok((format!("https://{uri_host}:{port}"), host.to_owned()))
}

/// The host an endpoint (`host`, `host:port` or `https://host:port`) names: the node's address, as
/// `node` metadata names it.
pub fn endpoint_host(endpoint: &str) -> Option<String> {
    endpoint_uri(endpoint).ok().map(|(_, host)| host)
}

/// The host of a URL such as `https://10.5.0.2:2380` (an etcd peer URL).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let (host, _) = split_host_port(authority);
    (!host.is_empty()).then(|| host.to_owned())
}

fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (host, after.strip_prefix(':'));
    }
    match authority.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address.
        Some((host, port)) if !host.contains(':') => (host, Some(port)),
        _ => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_the_talos_port_by_default() {
        assert_eq!(endpoint_uri("10.5.0.2").unwrap(), ("https://10.5.0.2:50000".into(), "10.5.0.2".into()));
        assert_eq!(endpoint_uri("cp.example:6443").unwrap(), ("https://cp.example:6443".into(), "cp.example".into()));
        assert_eq!(endpoint_uri("https://127.0.0.1:4000/").unwrap().0, "https://127.0.0.1:4000");
        assert_eq!(endpoint_uri("[::1]:4000").unwrap(), ("https://[::1]:4000".into(), "::1".into()));
        assert_eq!(endpoint_uri("fd00::1").unwrap(), ("https://[fd00::1]:50000".into(), "fd00::1".into()));
        assert!(endpoint_uri("http://10.0.0.1").is_err());
        assert!(endpoint_uri("10.0.0.1:notaport").is_err());
    }

    #[test]
    fn peer_url_hosts() {
        assert_eq!(url_host("https://10.5.0.3:2380").as_deref(), Some("10.5.0.3"));
        assert_eq!(url_host("https://[fd00::3]:2380").as_deref(), Some("fd00::3"));
        assert_eq!(url_host("cp-1").as_deref(), Some("cp-1"));
    }
}
