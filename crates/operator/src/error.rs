/// Why a backup failed. Each message starts with the specification's troubleshooting phrase, then
/// says what to fix; none carries a secret. Inner errors are part of the message, not `source()`s, so
/// nothing is printed twice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Failed to get TalosControlPlane {name:?} in namespace {namespace:?}: {reason}")]
    ControlPlane { name: String, namespace: String, reason: String },
    #[error("Failed to get secret {name:?} in namespace {namespace:?}: {reason}")]
    Secret { name: String, namespace: String, reason: String },
    #[error("Failed to reach the Talos API: {0}")]
    Talos(teb_talos::Error),
    #[error("Failed to stream etcd snapshot from node {node}: {cause}; the upload was aborted")]
    Snapshot { node: String, cause: teb_pipeline::Error },
    #[error("Failed to upload snapshot to S3: {0}")]
    Upload(teb_pipeline::Error),
    #[error("Failed to verify the stored snapshot {key}: {cause}")]
    Verify { key: String, cause: teb_pipeline::Error },
    #[error("Restore refused or failed: {0}")]
    Restore(String),
    /// Refused before anything was changed: etcd runs on the node.
    #[error("Restore refused or failed: {0}")]
    RestoreRefused(String),
    #[error("Invalid spec: {0}")]
    Spec(String),
    #[error("Kubernetes API error: {0}")]
    Kube(kube::Error),
    #[error("{0}")]
    Cleanup(String),
    /// A panic caught in one backup: a bug, reported on that backup instead of ending the process.
    #[error("Internal error (a bug in talos-etcd-backup; please report it): {0}")]
    Internal(String),
}

impl Error {
    /// Whether another attempt may succeed without the user changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Talos(e) => e.is_transient(),
            Error::Snapshot { cause, .. } | Error::Upload(cause) => cause.is_transient(),
            // Reading it again helps only when reading failed, not when what was read is damaged.
            Error::Verify { cause, .. } => {
                matches!(cause, teb_pipeline::Error::S3 { .. } | teb_pipeline::Error::IdleTimeout { .. })
                    && cause.is_transient()
            }
            Error::Kube(_) | Error::Cleanup(_) => true,
            Error::ControlPlane { .. }
            | Error::Secret { .. }
            | Error::Spec(_)
            | Error::Restore(_)
            | Error::RestoreRefused(_)
            | Error::Internal(_) => false,
        }
    }

    /// What failed, as the `kind` label of `teb_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::ControlPlane { .. } => "controlplane",
            Error::Secret { .. } => "secret",
            Error::Talos(_) => "talos",
            Error::Snapshot { .. } => "snapshot",
            Error::Upload(_) => "s3",
            Error::Verify { .. } => "verify",
            Error::Restore(_) | Error::RestoreRefused(_) => "restore",
            Error::Spec(_) => "spec",
            Error::Kube(_) => "kubernetes",
            Error::Cleanup(_) => "cleanup",
            Error::Internal(_) => "internal",
        }
    }

    /// Wraps a pipeline error: a bad stream is the snapshot's fault, everything else the upload's.
    pub fn from_pipeline(node: &str, e: teb_pipeline::Error) -> Self {
        use teb_pipeline::Error as P;
        match e {
            P::Source { .. }
            | P::IdleTimeout { .. }
            | P::Truncated { .. }
            | P::ChecksumMismatch { .. }
            | P::Structure { .. } => Error::Snapshot { node: node.to_owned(), cause: e },
            P::TotalTimeout { .. } | P::S3 { .. } | P::Invalid { .. } | P::Config(_) | P::Encode(_) | P::Decode(_) => {
                Error::Upload(e)
            }
        }
    }
}

/// Runs `future`, turning a panic inside it into [`Error::Internal`], so that one backup's bug never
/// takes down the process (and with it every other backup).
pub async fn isolate<T>(future: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    use futures::FutureExt as _;
    match std::panic::AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            Err(Error::Internal(message))
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error() {
        let err = isolate(async { if true { panic!("boom {}", 7) } else { Ok(()) } }).await.unwrap_err();
        assert!(matches!(&err, Error::Internal(m) if m == "boom 7"), "{err}");
        assert!(!err.is_transient());
        assert_eq!(isolate(async { Ok::<_, Error>(3) }).await.unwrap(), 3);
    }
}
