/// Why a use case failed. Each message starts with the specification's troubleshooting phrase, then
/// says what to fix; none carries a secret. Inner errors are part of the message, not `source()`s,
/// so nothing is printed twice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Failed to reach the Talos API: {0}")]
    Talos(teb_talos::Error),
    #[error("Failed to stream etcd snapshot from node {node}: {cause}; the upload was aborted")]
    Snapshot { node: String, cause: teb_pipeline::Error },
    /// Named after the service that refused (`S3`, `Azure Blob Storage`, `GCS`); S3 when the
    /// failure was no service's (compression, encryption).
    #[error("Failed to upload snapshot to {service}: {0}", service = .0.service().unwrap_or("S3"))]
    Upload(teb_pipeline::Error),
    /// A request about what is stored (listing, deleting) that the store refused, naming what was
    /// asked: `Failed to list the backups in Azure Blob Storage: …`.
    #[error("Failed to {action} {service}: {cause}", service = .cause.service().unwrap_or("S3"))]
    Bucket { action: &'static str, cause: teb_pipeline::Error },
    #[error("Failed to verify the stored snapshot {key}: {cause}")]
    Verify { key: String, cause: teb_pipeline::Error },
    /// A key the command line may not use (taken, or none free).
    #[error("Failed to upload snapshot to S3: {0}")]
    Key(String),
    /// The store refused a recovery kit: the backup fails (or is retried) whole.
    #[error("Failed to upload snapshot to {service}: storing its recovery kit {key} failed: {cause}", service = .cause.service().unwrap_or("S3"))]
    KitNotStored { key: String, cause: teb_pipeline::Error },
    /// The command line was interrupted mid-backup; its upload was aborted, unless S3 refused.
    #[error("Failed to upload snapshot: interrupted by {why}; {}", match aborted {
        None => "the multipart upload was aborted, nothing was stored".to_owned(),
        Some(e) => format!("aborting the multipart upload failed ({e}): the bucket's lifecycle rule removes it"),
    })]
    Interrupted { why: String, aborted: Option<String> },
    /// The caller's journal could not record the attempt ([`crate::backup::Journal`]); the attempt
    /// stopped before going on unrecorded.
    #[error("Failed to record the backup attempt: {0}")]
    Journal(String),
    /// A stored snapshot whose database could not be read offline (its content report).
    #[error("Failed to read what is inside {key}: {reason}")]
    Report { key: String, reason: String },
    /// A stored snapshot that cannot be imported as a backup.
    #[error("Cannot import {key}: {reason}")]
    Import { key: String, reason: String },
    /// A manifest that cannot be read, or that records another snapshot than the one stored.
    #[error("The manifest {key} does not hold: {reason}")]
    Manifest { key: String, reason: String },
    /// A recovery kit that cannot be opened or does not belong to its snapshot.
    #[error("Failed to read the recovery kit {key}: {reason}")]
    Kit { key: String, reason: String },
    #[error("Restore refused or failed: {0}")]
    Restore(String),
    /// Refused before anything was changed: etcd runs on the node.
    #[error("Restore refused or failed: {0}")]
    RestoreRefused(String),
}

impl Error {
    /// Whether another attempt may succeed without the user changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Talos(e) => e.is_transient(),
            // The next attempt recovers what this one recorded.
            Error::Journal(_) => true,
            Error::Snapshot { cause, .. }
            | Error::Upload(cause)
            | Error::KitNotStored { cause, .. }
            | Error::Bucket { cause, .. } => cause.is_transient(),
            // Reading it again helps only when reading failed, not when what was read is damaged.
            Error::Verify { cause, .. } => {
                matches!(cause, teb_pipeline::Error::Storage { .. } | teb_pipeline::Error::IdleTimeout { .. })
                    && cause.is_transient()
            }
            Error::Key(_)
            | Error::Report { .. }
            | Error::Manifest { .. }
            | Error::Import { .. }
            | Error::Kit { .. }
            | Error::Interrupted { .. }
            | Error::Restore(_)
            | Error::RestoreRefused(_) => false,
        }
    }

    /// What failed, as the `kind` label of `teb_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Talos(_) => "talos",
            Error::Snapshot { .. } => "snapshot",
            Error::Upload(_) | Error::Key(_) | Error::Interrupted { .. } | Error::Bucket { .. } => "s3",
            Error::Journal(_) => "journal",
            Error::Verify { .. } | Error::Report { .. } | Error::Manifest { .. } | Error::Import { .. } => "verify",
            Error::Kit { .. } | Error::KitNotStored { .. } => "kit",
            Error::Restore(_) | Error::RestoreRefused(_) => "restore",
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
            P::TotalTimeout { .. }
            | P::Storage { .. }
            | P::Invalid { .. }
            | P::Config { .. }
            | P::Encode(_)
            | P::Decode(_) => Error::Upload(e),
        }
    }
}
