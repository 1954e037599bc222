//! The backup path with no Kubernetes in it: a byte stream in, an object in S3 out.
//!
//! [`run`] streams a snapshot into an S3 multipart upload while [`TrailerVerifier`] checks the etcd
//! snapshot's SHA-256 trailer. The upload is completed only after the trailer matched; on any failure
//! it is aborted, so a failed backup leaves neither an object nor an unfinished upload. Memory is
//! bounded by `part_size × (parts_in_flight + 1)` whatever the snapshot's size.

mod bbolt;
pub mod codec;
mod error;
mod run;
mod sink;
pub mod validate;
mod verify;

pub use age::x25519::{Identity as AgeIdentity, Recipient as AgeRecipient};
pub use bbolt::DbSummary;
pub use codec::{Encoding, Format};
pub use error::{Error, S3Operation};
pub use run::{Limits, Report, UploadRef, run};
pub use sink::{S3Credentials, S3Location, S3Sink, StoredSnapshot};
pub use validate::S3Field;
pub use verify::{CheckedSnapshot, SnapshotCheck, TrailerVerifier};
