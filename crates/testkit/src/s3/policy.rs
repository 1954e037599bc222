//! An IAM policy on the test server's keys, as AWS evaluates one for a request (the actions of
//! https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3.html): each S3
//! operation needs its action, a write that sets an Object Lock also `s3:PutObjectRetention`, and a
//! GetObject or HeadObject of a key that does not exist answers 403 AccessDenied instead of 404
//! unless `s3:ListBucket` is allowed too (AWS hides which keys exist from who may not list them).
//! Unset, everything is allowed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use s3s::access::{S3Access, S3AccessContext};
use s3s::path::S3Path;
use s3s::{S3Result, s3_error};

/// The server's own helpers' keys, never bound by the policy.
pub(super) const HELPER_ACCESS_KEY: &str = "TEBTESTSERVERHELPER1";
pub(super) const HELPER_SECRET_KEY: &str = "the-test-server-looks-at-its-buckets";

/// The actions allowed, or `None` for all; shared with [`crate::s3::S3Server::allow_only`].
pub(super) type Allowed = Arc<Mutex<Option<Vec<String>>>>;

pub(super) struct Policy {
    pub(super) allowed: Allowed,
    /// s3s-fs's folder: `<root>/<bucket>/<key>`.
    pub(super) root: PathBuf,
}

/// The IAM action an S3 operation needs.
fn action(operation: &str) -> &'static str {
    match operation {
        "PutObject" | "CreateMultipartUpload" | "UploadPart" | "CompleteMultipartUpload" => "s3:PutObject",
        "AbortMultipartUpload" => "s3:AbortMultipartUpload",
        "ListParts" => "s3:ListMultipartUploadParts",
        "GetObject" | "HeadObject" => "s3:GetObject",
        "DeleteObject" | "DeleteObjects" => "s3:DeleteObject",
        "ListObjects" | "ListObjectsV2" => "s3:ListBucket",
        "ListMultipartUploads" => "s3:ListBucketMultipartUploads",
        "HeadBucket" => "s3:ListBucket",
        _ => "s3:*",
    }
}

#[async_trait::async_trait]
impl S3Access for Policy {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(credentials) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "Signature required"));
        };
        if credentials.access_key == HELPER_ACCESS_KEY {
            return Ok(());
        }
        let Some(allowed) = self.allowed.lock().expect("policy lock").clone() else {
            return Ok(());
        };
        let may = |action: &str| allowed.iter().any(|a| a == action || a == "s3:*");
        let operation = cx.s3_op().name();
        let mut needed = vec![action(operation)];
        if cx.headers().contains_key("x-amz-object-lock-mode") {
            needed.push("s3:PutObjectRetention");
        }
        if let Some(denied) = needed.into_iter().find(|action| !may(action)) {
            return Err(s3_error!(AccessDenied, "User is not authorized to perform: {denied}"));
        }
        if let (S3Path::Object { bucket, key }, "GetObject" | "HeadObject") = (cx.s3_path(), operation)
            && !may("s3:ListBucket")
            && !self.root.join(&**bucket).join(&**key).exists()
        {
            return Err(s3_error!(AccessDenied, "Access Denied"));
        }
        Ok(())
    }
}
