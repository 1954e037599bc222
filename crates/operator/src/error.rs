/// Why a reconcile or a command failed: what the core says ([`teb_core::Error`]), or what the
/// Kubernetes side found. Each message starts with the specification's troubleshooting phrase, then
/// says what to fix; none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Failed to get TalosControlPlane {name:?} in namespace {namespace:?}: {reason}")]
    ControlPlane { name: String, namespace: String, reason: String },
    #[error("Failed to get secret {name:?} in namespace {namespace:?}: {reason}")]
    Secret { name: String, namespace: String, reason: String },
    /// Boxed: the core's error is large, and every reconcile returns this one.
    #[error(transparent)]
    Core(Box<teb_core::Error>),
    #[error("Invalid spec: {0}")]
    Spec(String),
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// A panic caught in one backup: a bug, reported on that backup instead of ending the process.
    #[error("Internal error (a bug in talos-etcd-backup; please report it): {0}")]
    Internal(String),
}

impl Error {
    /// Whether another attempt may succeed without the user changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Core(e) => e.is_transient(),
            Error::Kube(_) => true,
            Error::ControlPlane { .. } | Error::Secret { .. } | Error::Spec(_) | Error::Internal(_) => false,
        }
    }

    /// What failed, as the `kind` label of `teb_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::ControlPlane { .. } => "controlplane",
            Error::Secret { .. } => "secret",
            Error::Core(e) => e.kind(),
            Error::Spec(_) => "spec",
            Error::Kube(_) => "kubernetes",
            Error::Internal(_) => "internal",
        }
    }

    /// A storage handle that could not be built (an invalid location, a bad CA bundle).
    pub fn storage(e: teb_pipeline::Error) -> Self {
        teb_core::Error::Upload(e).into()
    }

    /// The core's reason when it refused a restore before changing anything.
    pub fn restore_refused(&self) -> Option<&str> {
        match self {
            Error::Core(e) => match &**e {
                teb_core::Error::RestoreRefused(message) => Some(message),
                _ => None,
            },
            _ => None,
        }
    }
}

impl From<teb_core::Error> for Error {
    fn from(e: teb_core::Error) -> Self {
        Error::Core(Box::new(e))
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
