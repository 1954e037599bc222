/// Why a backup failed. Each message starts with the specification's troubleshooting phrase, then
/// says what to fix; none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Failed to get TalosControlPlane {name:?} in namespace {namespace:?}: {reason}")]
    ControlPlane { name: String, namespace: String, reason: String },
    #[error("Failed to get secret {name:?} in namespace {namespace:?}: {reason}")]
    Secret { name: String, namespace: String, reason: String },
    #[error("Failed to reach the Talos API: {0}")]
    Talos(#[source] teb_talos::Error),
    #[error("Failed to stream etcd snapshot from node {node}: {source}; the upload was aborted")]
    Snapshot { node: String, source: teb_pipeline::Error },
    #[error("Failed to upload snapshot to S3: {0}")]
    Upload(#[source] teb_pipeline::Error),
    #[error("Invalid spec: {0}")]
    Spec(String),
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// Whether another attempt may succeed without the user changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Talos(e) => e.is_transient(),
            Error::Snapshot { source, .. } | Error::Upload(source) => source.is_transient(),
            Error::Kube(_) => true,
            Error::ControlPlane { .. } | Error::Secret { .. } | Error::Spec(_) => false,
        }
    }

    /// Wraps a pipeline error: a bad stream is the snapshot's fault, everything else the upload's.
    pub fn from_pipeline(node: &str, e: teb_pipeline::Error) -> Self {
        use teb_pipeline::Error as P;
        match e {
            P::Source { .. } | P::IdleTimeout { .. } | P::Truncated { .. } | P::ChecksumMismatch { .. } => {
                Error::Snapshot { node: node.to_owned(), source: e }
            }
            P::TotalTimeout { .. } | P::S3 { .. } | P::Config(_) => Error::Upload(e),
        }
    }
}
