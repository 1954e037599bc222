use std::time::Duration;

use crate::Operation;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting of the storage location the backend would refuse (or choke on): `service` and
    /// `field` as the spec names them (`S3`, `bucket`).
    #[error("invalid {service} {field}: {reason}")]
    Invalid { service: &'static str, field: &'static str, reason: String },
    #[error("invalid {service} configuration: {message}")]
    Config { service: &'static str, message: String },
    // `cause` rather than `source`: its text is already in this message.
    #[error("snapshot source failed after {bytes} bytes: {cause}")]
    Source { bytes: u64, cause: Box<dyn std::error::Error + Send + Sync> },
    #[error(
        "snapshot stream sent no data for {timeout:?} (after {bytes} bytes); the Talos API applies no timeout of its own"
    )]
    IdleTimeout { timeout: Duration, bytes: u64 },
    #[error("backup did not finish within {timeout:?} (after {bytes} bytes)")]
    TotalTimeout { timeout: Duration, bytes: u64 },
    #[error(
        "snapshot is truncated: {bytes} bytes is not a whole etcd database plus its 32-byte SHA-256 trailer (the stream ended early)"
    )]
    Truncated { bytes: u64 },
    #[error("snapshot is corrupt: SHA-256 of the database is {actual} but its trailer says {expected}")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("snapshot is not a sound etcd (bbolt) database: {reason}")]
    Structure { reason: String },
    #[error("compressing or encrypting the snapshot failed: {0}")]
    Encode(String),
    #[error("{0}")]
    Decode(String),
    /// A request the store refused or could not take; `service` and `container` as messages name
    /// them (`S3`, `bucket "my-etcd-backups"`), `code` as the service says it.
    #[error("{operation:?} to {container} failed{}: {message}", code.as_ref().map(|c| format!(" with {service} error {c}")).unwrap_or_default())]
    Storage {
        operation: Operation,
        service: &'static str,
        container: String,
        code: Option<String>,
        message: String,
        permanent: bool,
    },
}

impl Error {
    /// The storage service the error comes from, if it comes from one.
    pub fn service(&self) -> Option<&'static str> {
        match self {
            Error::Invalid { service, .. } | Error::Config { service, .. } | Error::Storage { service, .. } => {
                Some(service)
            }
            _ => None,
        }
    }

    /// Whether a new attempt may succeed: network trouble, throttling, server errors, a stalled or
    /// broken stream. Wrong credentials, a missing bucket or bad configuration are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Invalid { .. } | Error::Config { .. } | Error::Encode(_) | Error::Decode(_) => false,
            Error::Storage { permanent, .. } => !permanent,
            Error::Source { .. }
            | Error::IdleTimeout { .. }
            | Error::TotalTimeout { .. }
            | Error::Truncated { .. }
            | Error::ChecksumMismatch { .. }
            | Error::Structure { .. } => true,
        }
    }
}
