//! S3 Object Lock as AWS enforces it, for the test server: buckets created with Object Lock enabled,
//! each locked object's mode and retain-until date, and the refusals that go with them.
//!
//! Where AWS differs, this is stricter: a lock-enabled bucket is versioned on AWS, so a DELETE
//! without a version ID there "succeeds" by hiding the locked version behind a delete marker; here it
//! is refused with AccessDenied, as AWS refuses deleting the locked version itself. A client that
//! deletes a locked object by mistake fails here instead of silently hiding a backup.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use s3s::dto::{ObjectLockMode, ObjectLockRetainUntilDate};
use s3s::{S3Result, s3_error};

/// An object's lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// `GOVERNANCE` or `COMPLIANCE`.
    pub mode: String,
    pub until: Timestamp,
}

#[derive(Default)]
pub(super) struct Locks {
    enabled: BTreeSet<String>,
    /// By (bucket, key).
    of: BTreeMap<(String, String), Retention>,
    /// Asked at CreateMultipartUpload, by upload ID; applied when the upload completes.
    pending: BTreeMap<String, (String, String, Retention)>,
}

impl Locks {
    pub(super) fn enable(&mut self, bucket: &str) {
        self.enabled.insert(bucket.to_owned());
    }

    pub(super) fn of(&self, bucket: &str, key: &str) -> Option<Retention> {
        self.of.get(&(bucket.to_owned(), key.to_owned())).cloned()
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

    pub(super) fn begin(&mut self, upload_id: &str, bucket: &str, key: &str, retention: Retention) {
        self.pending.insert(upload_id.to_owned(), (bucket.to_owned(), key.to_owned(), retention));
    }

    /// The retention an upload was started with.
    pub(super) fn of_upload(&self, upload_id: &str) -> Option<Retention> {
        self.pending.get(upload_id).map(|(_, _, retention)| retention.clone())
    }

    /// A completed or aborted upload: its retention applies to its object when it completed.
    pub(super) fn end(&mut self, upload_id: &str, completed: bool) {
        if let Some((bucket, key, retention)) = self.pending.remove(upload_id)
            && completed
        {
            self.set(&bucket, &key, retention);
        }
    }

    /// A new version of an object keeps the older version's lock: S3 keeps the locked version
    /// beside it (here only the later date is kept, which never lets a delete through sooner).
    pub(super) fn set(&mut self, bucket: &str, key: &str, retention: Retention) {
        let entry = self.of.entry((bucket.to_owned(), key.to_owned())).or_insert_with(|| retention.clone());
        if retention.until > entry.until {
            *entry = retention;
        }
    }

    /// Refuses deleting an object whose lock has not expired; a GOVERNANCE lock gives way to
    /// `x-amz-bypass-governance-retention: true` (the operator never sends it).
    pub(super) fn delete(&mut self, bucket: &str, key: &str, bypass_governance: bool) -> S3Result<()> {
        let id = (bucket.to_owned(), key.to_owned());
        if let Some(retention) = self.of.get(&id)
            && retention.until > Timestamp::now()
            && !(bypass_governance && retention.mode == ObjectLockMode::GOVERNANCE)
        {
            return Err(s3_error!(AccessDenied, "Access Denied because object protected by object lock."));
        }
        self.of.remove(&id);
        Ok(())
    }
}
