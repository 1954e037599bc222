//! Google Cloud Storage, through its XML API (the one with multipart uploads): the location's
//! settings, their checks, the client built from them and how the service names its failures.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::gcp::GoogleCloudStorageBuilder;

use super::check::{classify, describe_char, quote};
use super::{Failure, Storage, Uploads, client_options, retry};
use crate::Error;

/// The service, as messages name it.
pub const SERVICE: &str = "GCS";

/// A bucket and how to reach it.
#[derive(Clone, Debug)]
pub struct GcsLocation {
    pub bucket: String,
    /// The service's URL, when not `https://storage.googleapis.com` (a private endpoint, an emulator).
    pub endpoint: Option<String>,
    /// `None`: the process's own credentials (GKE workload identity, application default
    /// credentials).
    pub service_account_key: Option<ServiceAccountKey>,
}

/// A service account's JSON key, as `gcloud iam service-accounts keys create` writes it. Debug
/// output never shows it.
#[derive(Clone)]
pub struct ServiceAccountKey(pub String);

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceAccountKey(..)")
    }
}

impl GcsLocation {
    /// Every setting checked, the first problem returned; messages name the field as the spec does.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason| Error::Invalid { service: SERVICE, field, reason };
        bucket(&self.bucket).map_err(|r| invalid("bucket", r))?;
        if let Some(url) = &self.endpoint {
            super::check::url(url, None).map_err(|r| invalid("endpoint", r))?;
        }
        if let Some(key) = &self.service_account_key {
            service_account_key(&key.0).map_err(|r| invalid("serviceAccountKey", r))?;
        }
        Ok(())
    }
}

/// GCS bucket names: 3 to 63 characters (222 with dots, 63 between them); lowercase letters,
/// digits, hyphens, underscores and dots; beginning and ending with a letter or digit; not an IP
/// address, not beginning with `goog`.
pub fn bucket(name: &str) -> Result<(), String> {
    let bad = |rule: &str| Err(format!("{} is not a valid GCS bucket name: {rule}", quote(name)));
    let dotted = name.contains('.');
    if !(3..=if dotted { 222 } else { 63 }).contains(&name.len()) || name.split('.').any(|p| p.len() > 63) {
        return bad("it must be 3 to 63 characters long (222 with dots, 63 between two dots)");
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    if let Some(c) = name.chars().find(|c| !allowed(*c)) {
        return bad(&format!(
            "it holds {}; only lowercase letters, digits, hyphens, underscores and dots are allowed",
            describe_char(c)
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) {
        return bad("it must begin and end with a letter or digit");
    }
    if name.contains("..") || name.parse::<std::net::Ipv4Addr>().is_ok() || name.starts_with("goog") {
        return bad("it must not hold two adjacent dots, be an IP address or begin with goog");
    }
    Ok(())
}

/// A service account key: JSON with `type: service_account`, `client_email`, `private_key_id` and a
/// PEM `private_key`. Messages name what is missing, never a value.
pub fn service_account_key(json: &str) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        format!("it is not JSON (line {}, column {}); give the key file gcloud wrote, whole", e.line(), e.column())
    })?;
    let text = |name: &str| value.get(name).and_then(serde_json::Value::as_str).filter(|s| !s.trim().is_empty());
    if text("type").is_some_and(|t| t != "service_account") {
        return Err("its type is not service_account: give a service account's key (user credentials are not \
                    supported here; leave the Secret out to use workload identity)"
            .into());
    }
    for field in ["client_email", "private_key_id", "private_key"] {
        if text(field).is_none() {
            return Err(format!("it has no {field}: give the key file gcloud wrote, whole"));
        }
    }
    if !text("private_key").is_some_and(|k| k.trim_start().starts_with("-----BEGIN PRIVATE KEY-----")) {
        return Err("its private_key is not a PEM private key (-----BEGIN PRIVATE KEY-----)".into());
    }
    if value.get("gcs_base_url").is_some() || value.get("disable_oauth").is_some() {
        return Err("it holds gcs_base_url or disable_oauth, which no Google key has: set backupStorage.gcs.endpoint \
                    instead"
            .into());
    }
    Ok(())
}

/// The storage handle of `location`; checked first: nothing unchecked reaches the client.
pub(super) fn build(location: &GcsLocation, request_timeout: Duration) -> Result<Storage, Error> {
    location.validate()?;
    let mut options = client_options(request_timeout);
    let mut builder = match &location.service_account_key {
        Some(key) => GoogleCloudStorageBuilder::new().with_service_account_key(&key.0),
        None => GoogleCloudStorageBuilder::from_env(),
    };
    builder = builder.with_bucket_name(&location.bucket).with_retry(retry());
    if let Some(endpoint) = location.endpoint.as_deref() {
        let url = endpoint.trim_end_matches('/');
        options = options.with_allow_http(url.starts_with("http://"));
        builder = builder.with_base_url(url);
    }
    let base = format!("{}/{}", location.endpoint.as_deref().unwrap_or(GCS_URL).trim_end_matches('/'), location.bucket);
    // The builder's own errors may quote the key file: name the field instead.
    let store = builder.with_client_options(options.clone()).build().map_err(|e| match e {
        object_store::Error::Generic { source, .. } if source.to_string().contains("credential") => Error::Invalid {
            service: SERVICE,
            field: "serviceAccountKey",
            reason: "its private key cannot be read".into(),
        },
        e => Error::Config { service: SERVICE, message: e.to_string() },
    })?;
    let lister = super::listing::Lister::gcs(store.credentials().clone(), &options, base)
        .map_err(|e| Error::Config { service: SERVICE, message: e.to_string() })?;
    Ok(Storage {
        store: Arc::new(store),
        uploads: Uploads::Named,
        service: SERVICE,
        container: format!("bucket {:?}", location.bucket),
        failure: Arc::new(failure),
        locked_writer: None,
        lister: Some(Arc::new(lister)),
    })
}

/// GCS's XML API.
const GCS_URL: &str = "https://storage.googleapis.com";

/// GCS error codes another try cannot fix: credentials, the bucket, the request itself.
const PERMANENT_CODES: [&str; 6] = [
    "AccessDenied",
    "AuthenticationRequired",
    "InvalidBucketName",
    "NoSuchBucket",
    "UserProjectMissing",
    "InvalidArgument",
];

fn failure(e: object_store::Error) -> Failure {
    classify(e, &PERMANENT_CODES, |_, _| None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_gcs_rules() {
        for ok in ["my-etcd-backups", "etcd_backups", "a.b.c"] {
            assert!(bucket(ok).is_ok(), "{ok}");
        }
        for (name, why) in [("Etcd", "uppercase"), ("ab", "3 to 63"), ("google-x", "goog"), ("_ab", "begin")] {
            assert!(bucket(name).unwrap_err().contains(why), "{name}");
        }
    }

    #[test]
    fn key_errors_name_the_problem_never_the_key() {
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n";
        let key = |extra: &str| {
            format!(
                r#"{{"type":"service_account","client_email":"b@p.iam.gserviceaccount.com","private_key_id":"1","private_key":{secret:?}{extra}}}"#
            )
        };
        assert!(service_account_key(&key("")).is_ok());
        assert!(service_account_key(&key(r#","disable_oauth":true"#)).unwrap_err().contains("endpoint"));
        let err = service_account_key(&key("").replace("client_email", "email")).unwrap_err();
        assert!(err.contains("no client_email"), "{err}");
        let err = service_account_key(&key("")[..60]).unwrap_err();
        assert!(err.contains("not JSON") && !err.contains("c2VjcmV0"), "{err}");
        let err = service_account_key(r#"{"type":"authorized_user","refresh_token":"s3cr3t"}"#).unwrap_err();
        assert!(err.contains("service_account") && !err.contains("s3cr3t"), "{err}");
    }
}
