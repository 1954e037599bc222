/// TLS alerts (as rustls names them) that refuse the client's certificate.
const CERTIFICATE_ALERTS: [&str; 5] =
    ["BadCertificate", "UnknownCA", "CertificateUnknown", "CertificateExpired", "UnsupportedCertificate"];

/// Everything that can go wrong talking to the Talos API. Messages name what to fix and never carry
/// key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid talosconfig: {0}")]
    Talosconfig(String),
    #[error("invalid secrets bundle: {0}")]
    SecretsBundle(String),
    #[error("cannot mint a Talos client certificate: {0}")]
    Mint(String),
    #[error("invalid Talos endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    /// `certificate`: every endpoint failed on the server's certificate (a wrong name or CA).
    #[error("cannot connect to the Talos API at {endpoints}: {reason}")]
    Connect { endpoints: String, reason: String, certificate: bool },
    #[error("Talos API call {call} on node {node} failed: {code:?}: {message}")]
    Call { call: &'static str, node: String, code: tonic::Code, message: String },
    /// The TLS alert apid answered the client certificate with (Go's crypto/tls: bad_certificate).
    #[error(
        "Talos refused the client certificate on {call} ({alert}): it must be signed by the cluster's OS CA, be \
         valid now and have exactly the ClientAuth usage; check the talosconfig's crt/key, or the secrets bundle \
         the certificate was minted from"
    )]
    CertificateRefused { call: &'static str, alert: String },
    /// apid of a worker node holds no client certificate for other nodes: it refuses every call
    /// targeted with `node`/`nodes` (apid's director.go, `singleDirector`, v1.13.0).
    #[error(
        "Talos API call {call} for node {node} was refused with \"no request forwarding\": the endpoint is a worker \
         node, which cannot forward calls to other nodes; use a control-plane node's address as the endpoint"
    )]
    NoForwarding { call: &'static str, node: String },
    #[error("{0}")]
    Unhealthy(String),
    /// `transient`: every reason may go away by itself (a node restarting, a leader election).
    #[error("no healthy etcd member found: {reason}")]
    NoHealthyMember { reason: String, transient: bool },
}

impl Error {
    pub(crate) fn call(call: &'static str, node: &str, status: &tonic::Status) -> Self {
        // tonic keeps the cause of a "transport error" (a TLS alert, a reset) in the status's sources.
        let mut message = status.message().to_owned();
        let mut source = std::error::Error::source(status);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message = format!("{message}: {text}");
            }
            source = cause.source();
        }
        if status.code() == tonic::Code::PermissionDenied && message.contains("no request forwarding") {
            return Error::NoForwarding { call, node: node.to_owned() };
        }
        match message.split_once("received fatal alert: ") {
            Some((_, alert)) if CERTIFICATE_ALERTS.iter().any(|a| alert.starts_with(a)) => {
                Error::CertificateRefused { call, alert: format!("TLS alert {alert}") }
            }
            _ => Error::Call { call, node: node.to_owned(), code: status.code(), message },
        }
    }

    /// A call refused for the client certificate's roles.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Error::Call { code: tonic::Code::PermissionDenied, .. })
    }

    /// A call the node refused because it is not ready for it yet (Talos's FailedPrecondition: a
    /// node still booting, its clock not synchronised yet).
    pub fn is_not_ready(&self) -> bool {
        matches!(self, Error::Call { code: tonic::Code::FailedPrecondition, .. })
    }

    /// Whether the node (or every endpoint) did not answer at all: gone, or unreachable.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Connect { certificate: false, .. } | Error::Call { code: tonic::Code::Unavailable, .. })
    }

    /// Whether trying again later may succeed (network trouble, an overloaded or restarting node).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { certificate, .. } => !certificate,
            Error::NoHealthyMember { transient, .. } => *transient,
            Error::Unhealthy(_) => true,
            Error::Call { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
                    | tonic::Code::Internal
                    | tonic::Code::Unknown
                    | tonic::Code::ResourceExhausted
            ),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_endpoint_is_named_not_a_missing_role() {
        let status = tonic::Status::permission_denied("no request forwarding");
        let error = Error::call("EtcdStatus", "10.0.0.2", &status);
        assert!(matches!(error, Error::NoForwarding { .. }), "{error}");
        assert!(!error.is_permission_denied() && !error.is_transient());
        assert!(error.to_string().contains("the endpoint is a worker node"), "{error}");
        let roles = Error::call("EtcdStatus", "10.0.0.2", &tonic::Status::permission_denied("not authorized"));
        assert!(roles.is_permission_denied(), "{roles}");
    }

    #[test]
    fn a_tls_alert_refusing_the_certificate_is_named_and_not_retried() {
        let status = tonic::Status::unknown("transport error: connection error: received fatal alert: BadCertificate");
        let error = Error::call("EtcdMemberList", "10.0.0.1", &status);
        assert!(matches!(error, Error::CertificateRefused { .. }), "{error}");
        assert!(
            error
                .to_string()
                .contains("Talos refused the client certificate on EtcdMemberList (TLS alert BadCertificate)")
        );
        assert!(!error.is_transient());
        // Any other transport error stays a call error, worth retrying.
        let reset =
            Error::call("EtcdMemberList", "10.0.0.1", &tonic::Status::unknown("transport error: connection reset"));
        assert!(matches!(reset, Error::Call { .. }) && reset.is_transient(), "{reset}");
    }
}
