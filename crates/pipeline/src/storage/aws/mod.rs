//! Amazon S3 and S3-compatible stores (MinIO, Ceph, R2, ...): the location's settings, their checks,
//! the client built from them and how S3 names its failures. Everything S3-specific lives here; the
//! rest of the crate sees only [`Storage`].

pub mod validate;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::{BackoffConfig, Certificate, ClientOptions, RetryConfig};

pub use validate::S3Field;

use super::{Failure, Storage};
use crate::Error;

/// S3 access keys. Debug output never shows them.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("S3Credentials { .. }")
    }
}

/// A bucket and how to reach it.
#[derive(Clone, Debug)]
pub struct S3Location {
    pub bucket: String,
    pub region: String,
    /// Custom endpoint (S3-compatible stores); requests are then path-style.
    pub endpoint: Option<String>,
    pub insecure_skip_tls_verify: bool,
    /// Extra PEM CA certificates to trust for the endpoint.
    pub ca_pem: Option<String>,
    /// Access keys; `None` for the process's own credentials, found as the AWS SDKs find them
    /// (`AWS_*` environment variables, web identity, container credentials, instance metadata).
    pub credentials: Option<S3Credentials>,
}

/// The storage handle of `location`; `request_timeout` bounds each request, a part upload included.
/// The location is validated first: nothing unchecked reaches the S3 client.
pub(super) fn build(location: &S3Location, request_timeout: Duration) -> Result<Storage, Error> {
    location.validate()?;
    let mut options = ClientOptions::new()
        .with_timeout(request_timeout)
        .with_connect_timeout(Duration::from_secs(10))
        .with_allow_invalid_certificates(location.insecure_skip_tls_verify);
    let builder = match &location.credentials {
        Some(keys) => AmazonS3Builder::new()
            .with_access_key_id(&keys.access_key_id)
            .with_secret_access_key(&keys.secret_access_key),
        None => AmazonS3Builder::from_env(),
    };
    let mut builder = builder
        .with_bucket_name(&location.bucket)
        .with_region(&location.region)
        // A few quick retries for a lost part; the controller retries whole attempts beyond that.
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
        });
    if let Some(endpoint) = location.endpoint.as_deref() {
        let url = endpoint.trim_end_matches('/');
        options = options.with_allow_http(url.starts_with("http://"));
        builder = builder.with_endpoint(url).with_virtual_hosted_style_request(false);
    }
    if let Some(pem) = location.ca_pem.as_deref() {
        let certs = Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| Error::Invalid { field: S3Field::CaBundle, reason: e.to_string() })?;
        for cert in certs {
            options = options.with_root_certificate(cert);
        }
    }
    let store = builder.with_client_options(options).build().map_err(|e| Error::Config(e.to_string()))?;
    Ok(Storage { store: Arc::new(store), service: "S3", container: format!("bucket {:?}", location.bucket), failure })
}

/// S3 error codes that another try cannot fix: credentials, the bucket, the request itself.
const PERMANENT_CODES: [&str; 9] = [
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "InvalidBucketName",
    "AuthorizationHeaderMalformed",
    "PermanentRedirect",
    "InvalidArgument",
    "InvalidRequest",
];

/// What failed, as S3 says it. object_store repeats itself down its source chain; what matters is the
/// S3 error in the response body when there is one, else the root cause (refused connection, bad
/// certificate).
fn failure(e: object_store::Error) -> Failure {
    let e = anyhow::Error::new(e);
    let full = format!("{e:#}");
    let code = xml_tag(&full, "Code");
    let message = xml_tag(&full, "Message").unwrap_or_else(|| {
        let causes: Vec<String> = e.chain().map(ToString::to_string).collect();
        causes[causes.len().saturating_sub(2)..].join(": ")
    });
    let permanent = match code.as_deref() {
        Some(code) => PERMANENT_CODES.contains(&code),
        // Without a code, certificate problems are permanent; connection trouble is not.
        None => message.contains("certificate"),
    };
    Failure { code, message, permanent }
}

/// S3 errors carry an XML body such as `<Error><Code>NoSuchBucket</Code>...`.
fn xml_tag(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let len = text[start..].find(&format!("</{tag}>"))?;
    Some(text[start..start + len].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StorageLocation;

    #[test]
    fn s3_error_code_and_message_come_from_the_xml_body() {
        let text = "Client error with status 404: <?xml?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(xml_tag(text, "Code").as_deref(), Some("NoSuchBucket"));
        assert_eq!(xml_tag(text, "Message").as_deref(), Some("The specified bucket does not exist"));
        assert_eq!(xml_tag("no xml", "Code"), None);
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let creds = S3Credentials { access_key_id: "AKIAEXAMPLE".into(), secret_access_key: "s3cr3t".into() };
        let text = format!("{creds:?}");
        assert!(!text.contains("AKIAEXAMPLE") && !text.contains("s3cr3t"));
    }

    #[test]
    fn endpoints_must_be_urls() {
        let location = S3Location {
            bucket: "my-backups".into(),
            region: "us-east-1".into(),
            endpoint: Some("minio.example.com".into()),
            insecure_skip_tls_verify: false,
            ca_pem: None,
            credentials: Some(S3Credentials { access_key_id: "a".into(), secret_access_key: "s".into() }),
        };
        let err = Storage::new(&StorageLocation::S3(location), Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().starts_with("invalid S3 endpoint: \"minio.example.com\""), "{err}");
    }
}
