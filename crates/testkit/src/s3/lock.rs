//! S3 Object Lock as AWS enforces it, for the test server: buckets created with Object Lock enabled,
//! which S3 makes versioned, each version's mode and retain-until date, and the refusals that go
//! with them.
//!
//! As on AWS, a write to a key keeps the version it replaces (bytes and lock) as a noncurrent
//! version, and a DELETE without a version ID removes nothing: it puts a delete marker in front
//! (`x-amz-delete-marker: true`) and succeeds even over a locked version, which then stays, hidden,
//! until its date. That is the harm a client can do without an error, so the server counts it
//! (`locked version hidden`); deleting a locked version by its ID is refused with AccessDenied
//! (`locked object kept`).

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use s3s::dto::{ObjectLockMode, ObjectLockRetainUntilDate};
use s3s::{S3Result, s3_error};

/// An object version's lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: String,
    pub until: Timestamp,
}

impl Retention {
    /// Whether it still holds against a delete (a GOVERNANCE lock gives way to
    /// `x-amz-bypass-governance-retention: true`, which the operator never sends).
    fn holds(&self, bypass_governance: bool) -> bool {
        self.until > Timestamp::now() && !(bypass_governance && self.mode == ObjectLockMode::GOVERNANCE)
    }
}

/// One version of a key in a lock-enabled bucket, oldest first; the current one last, unless a
/// delete marker is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub id: String,
    /// The object's bytes; None for a delete marker.
    pub data: Option<Vec<u8>>,
    pub retention: Option<Retention>,
}

/// What a DELETE without a version ID did in a versioned bucket.
pub(super) struct Marker {
    pub(super) id: String,
    /// The version it hid was locked.
    pub(super) hid_locked: bool,
}

type Object = (String, String);

#[derive(Default)]
pub(super) struct Locks {
    enabled: BTreeSet<String>,
    /// Every version but the current one's bytes (those are the server's file), by (bucket, key).
    versions: BTreeMap<Object, Vec<Version>>,
    /// Asked at CreateMultipartUpload, by upload ID; applied when the upload completes.
    pending: BTreeMap<String, Retention>,
    next_id: u64,
}

impl Locks {
    pub(super) fn enable(&mut self, bucket: &str) {
        self.enabled.insert(bucket.to_owned());
    }

    /// Whether `bucket` keeps versions (it has Object Lock).
    pub(super) fn versioned(&self, bucket: &str) -> bool {
        self.enabled.contains(bucket)
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("v{:016x}", self.next_id)
    }

    fn current(&self, bucket: &str, key: &str) -> Option<&Version> {
        let versions = self.versions.get(&(bucket.to_owned(), key.to_owned()))?;
        versions.last().filter(|v| v.data.is_some())
    }

    /// The current version's lock, if it was written with one (expired or not).
    pub(super) fn of(&self, bucket: &str, key: &str) -> Option<Retention> {
        self.current(bucket, key)?.retention.clone()
    }

    /// The versions of a key, oldest first, with `current` (the server's file) as the current one's bytes.
    pub(super) fn versions(&self, bucket: &str, key: &str, current: Option<Vec<u8>>) -> Vec<Version> {
        let mut versions = self.versions.get(&(bucket.to_owned(), key.to_owned())).cloned().unwrap_or_default();
        if let (Some(last), Some(data)) = (versions.last_mut(), current) {
            last.data = Some(data);
        }
        versions
    }

    /// The retention a PutObject or CreateMultipartUpload asks for, refused as S3 refuses it: both
    /// headers or neither, a known mode, a date in the future, a bucket with Object Lock enabled.
    pub(super) fn asked(
        &self,
        bucket: &str,
        mode: Option<&ObjectLockMode>,
        until: Option<&ObjectLockRetainUntilDate>,
    ) -> S3Result<Option<Retention>> {
        let (mode, until) = match (mode, until) {
            (None, None) => return Ok(None),
            (Some(mode), Some(until)) => (mode.as_str(), until),
            _ => {
                return Err(s3_error!(
                    InvalidArgument,
                    "x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must both be supplied"
                ));
            }
        };
        if !self.enabled.contains(bucket) {
            return Err(s3_error!(InvalidRequest, "Bucket is missing Object Lock Configuration"));
        }
        if mode != ObjectLockMode::GOVERNANCE && mode != ObjectLockMode::COMPLIANCE {
            return Err(s3_error!(InvalidArgument, "Unknown wormMode directive."));
        }
        let until = Timestamp::from_second(time::OffsetDateTime::from(until.clone()).unix_timestamp())
            .map_err(|_| s3_error!(InvalidArgument, "The retain until date is out of range"))?;
        if until <= Timestamp::now() {
            return Err(s3_error!(InvalidArgument, "The retain until date must be in the future!"));
        }
        Ok(Some(Retention { mode: mode.to_owned(), until }))
    }

    /// S3 takes a write that sets a retention only with a checksum it can check.
    pub(super) fn require_checksum(retention: Option<&Retention>, has_checksum: bool) -> S3Result<()> {
        if retention.is_some() && !has_checksum {
            return Err(s3_error!(
                InvalidRequest,
                "Content-MD5 OR x-amz-checksum- HTTP header is required for Put Object requests with Object Lock \
                 parameters"
            ));
        }
        Ok(())
    }

    pub(super) fn begin(&mut self, upload_id: &str, retention: Retention) {
        self.pending.insert(upload_id.to_owned(), retention);
    }

    /// The retention an upload was started with.
    pub(super) fn of_upload(&self, upload_id: &str) -> Option<Retention> {
        self.pending.get(upload_id).cloned()
    }

    /// A completed or aborted upload: the retention it was started with, for its new version.
    pub(super) fn end(&mut self, upload_id: &str) -> Option<Retention> {
        self.pending.remove(upload_id)
    }

    /// A new current version of a key in a versioned bucket; `replaced` are the bytes of the
    /// version it replaces, which stays, noncurrent, with its lock.
    pub(super) fn written(&mut self, bucket: &str, key: &str, retention: Option<Retention>, replaced: Option<Vec<u8>>) {
        let id = self.id();
        let versions = self.versions.entry((bucket.to_owned(), key.to_owned())).or_default();
        if let Some(last) = versions.last_mut().filter(|v| v.data.is_some()) {
            last.data = replaced;
        }
        versions.push(Version { id, data: Some(Vec::new()), retention });
    }

    /// A DELETE without a version ID in a versioned bucket: a delete marker in front of the
    /// current version (`hidden`: its bytes), which stays.
    pub(super) fn delete_marker(&mut self, bucket: &str, key: &str, hidden: Option<Vec<u8>>) -> Marker {
        let id = self.id();
        let versions = self.versions.entry((bucket.to_owned(), key.to_owned())).or_default();
        let mut hid_locked = false;
        if let Some(last) = versions.last_mut().filter(|v| v.data.is_some()) {
            hid_locked = last.retention.as_ref().is_some_and(|r| r.holds(false));
            last.data = hidden;
        }
        versions.push(Version { id: id.clone(), data: None, retention: None });
        Marker { id, hid_locked }
    }

    /// A DELETE of a version by its ID: refused while the version's lock holds. Deleting the current
    /// version (the server's file) by ID is not served.
    pub(super) fn delete_version(
        &mut self,
        bucket: &str,
        key: &str,
        id: &str,
        bypass_governance: bool,
    ) -> S3Result<()> {
        let versions = self.versions.entry((bucket.to_owned(), key.to_owned())).or_default();
        let Some(at) = versions.iter().position(|v| v.id == id) else {
            return Err(s3_error!(NoSuchVersion, "The specified version does not exist."));
        };
        if versions[at].retention.as_ref().is_some_and(|r| r.holds(bypass_governance)) {
            return Err(s3_error!(AccessDenied, "Access Denied because object protected by object lock."));
        }
        if at + 1 == versions.len() && versions[at].data.is_some() {
            return Err(s3_error!(NotImplemented, "the test server deletes the current version only without an ID"));
        }
        versions.remove(at);
        Ok(())
    }
}
