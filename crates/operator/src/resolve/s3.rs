//! `backupStorage.s3`: its fields checked, and the S3 location they name.

use teb_api::{S3Storage, SecretKeyRef};
use teb_pipeline::{S3Credentials, S3Location, ServerSideEncryption, validate};

use super::{Error, Secrets, endpoint, field, references_valid};

/// The fields of `backupStorage.s3` found at `at`.
pub(super) fn validate(s3: &S3Storage, at: &str) -> Result<(), Error> {
    field(at, "s3", "bucket", validate::bucket(&s3.bucket))?;
    field(at, "s3", "region", validate::region(&s3.region))?;
    if let Some(url) = endpoint(&s3.endpoint) {
        field(at, "s3", "endpoint", validate::endpoint(&url))?;
    }
    key_refs(s3, at)?;
    server_side_encryption(s3, at)?;
    object_lock(s3, at)?;
    checksum(s3, at)?;
    let references = [
        ("backupStorage.s3.accessKeyID", s3.access_key_id.as_ref()),
        ("backupStorage.s3.secretAccessKey", s3.secret_access_key.as_ref()),
        ("backupStorage.s3.caBundle", s3.ca_bundle.as_ref()),
    ];
    references_valid(&references, at)
}

/// The S3 location `s3` names, its Secrets read.
pub(super) async fn location(secrets: &mut Secrets, s3: &S3Storage, at: &str) -> Result<S3Location, Error> {
    let ca_pem = match &s3.ca_bundle {
        Some(reference) => Some(secrets.checked_value(reference, validate::ca_bundle).await?),
        None => None,
    };
    Ok(S3Location {
        bucket: s3.bucket.clone(),
        region: s3.region.clone(),
        endpoint: endpoint(&s3.endpoint),
        insecure_skip_tls_verify: s3.insecure_skip_tls_verify.unwrap_or(false),
        ca_pem,
        credentials: match key_refs(s3, at)? {
            Some((access, secret)) => Some(S3Credentials {
                access_key_id: secrets.checked_value(access, validate::access_key_id).await?,
                secret_access_key: secrets.checked_value(secret, validate::secret_access_key).await?,
            }),
            None => None,
        },
        sse: server_side_encryption(s3, at)?,
        object_lock: object_lock(s3, at)?,
        checksum: checksum(s3, at)?,
    })
}

fn object_lock(s3: &S3Storage, at: &str) -> Result<Option<teb_pipeline::ObjectLock>, Error> {
    let Some(lock) = &s3.object_lock else {
        return Ok(None);
    };
    teb_pipeline::ObjectLock::parse(lock.mode.as_str(), &lock.retention)
        .map(Some)
        .map_err(|reason| Error::Spec(format!("{at}backupStorage.s3.objectLock: {reason}")))
}

/// `checksum`, checked against `objectLock`.
fn checksum(s3: &S3Storage, at: &str) -> Result<teb_pipeline::S3Checksum, Error> {
    let chosen = match s3.checksum {
        Some(algorithm) => teb_pipeline::S3Checksum::parse(algorithm.as_str()),
        None => Ok(teb_pipeline::S3Checksum::Auto),
    };
    chosen
        .and_then(|checksum| checksum.with_lock(s3.object_lock.is_some()))
        .map_err(|reason| Error::Spec(format!("{at}backupStorage.s3.checksum: {reason}")))
}

/// `serverSideEncryption` and `kmsKeyID`, checked together.
fn server_side_encryption(s3: &S3Storage, at: &str) -> Result<Option<ServerSideEncryption>, Error> {
    let refused = |path: &str, reason: String| Error::Spec(format!("{at}backupStorage.s3.{path}: {reason}"));
    match (s3.server_side_encryption.as_deref(), s3.kms_key_id.as_deref()) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(refused("kmsKeyID", "set serverSideEncryption: aws:kms with it".into())),
        (Some(algorithm), key) => ServerSideEncryption::parse(algorithm, key)
            .map(Some)
            .map_err(|reason| refused("serverSideEncryption", reason)),
    }
}

/// The access key references: both, or neither (the operator's own credentials).
pub(super) fn key_refs<'a>(s3: &'a S3Storage, at: &str) -> Result<Option<(&'a SecretKeyRef, &'a SecretKeyRef)>, Error> {
    match (&s3.access_key_id, &s3.secret_access_key) {
        (Some(access), Some(secret)) => Ok(Some((access, secret))),
        (None, None) => Ok(None),
        _ => Err(Error::Spec(format!(
            "{at}backupStorage.s3: set both accessKeyID and secretAccessKey, or neither to use the operator's own \
             credentials (web identity, container or instance credentials)"
        ))),
    }
}
