//! The backup path with no Kubernetes in it: a byte stream in, an object in a store out.
//!
//! [`Storage`] is the handle on one bucket, built once from a [`StorageLocation`] (S3, Azure Blob Storage or GCS; one
//! builder module per backend). [`run`] streams a snapshot into a multipart upload while
//! [`TrailerVerifier`] checks the etcd snapshot's SHA-256 trailer. The upload is completed only after
//! the trailer matched; on any failure it is aborted, so a failed backup leaves neither an object nor
//! an unfinished upload. Memory is bounded by `part_size × (parts_in_flight + 1)` whatever the
//! snapshot's size.

pub mod bbolt;
pub mod codec;
mod error;
mod run;
mod storage;
mod verify;

pub use bbolt::DbSummary;
pub use codec::{Encoding, Format, Identity, Recipient};
pub use error::Error;
pub use run::{Limits, Report, run, run_with};
pub use storage::aws::{
    self, LockMode, ObjectLock, S3Checksum, S3Credentials, S3Field, S3Location, ServerSideEncryption, validate,
};
pub use storage::azure::{self, AzureCredentials, AzureLocation};
pub use storage::gcp::{self, GcsLocation, ServiceAccountKey};
pub use storage::url::{ObjectUrl, Scheme};
pub use storage::{Operation, Storage, StorageLocation, StoredSnapshot, UploadRef};
pub use verify::{CheckedSnapshot, SnapshotCheck, TrailerVerifier};
