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
    #[error("{0}")]
    Unhealthy(String),
    /// `transient`: every reason may go away by itself (a node restarting, a leader election).
    #[error("no healthy etcd member found: {reason}")]
    NoHealthyMember { reason: String, transient: bool },
}

impl Error {
    pub(crate) fn call(call: &'static str, node: &str, status: &tonic::Status) -> Self {
        Error::Call { call, node: node.to_owned(), code: status.code(), message: status.message().to_owned() }
    }

    /// A call refused for the client certificate's roles.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Error::Call { code: tonic::Code::PermissionDenied, .. })
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
