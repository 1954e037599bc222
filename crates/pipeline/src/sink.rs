use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{BackoffConfig, Certificate, ClientOptions, RetryConfig};

use crate::{CheckedSnapshot, Error, Format, S3Field, S3Operation, SnapshotCheck};

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

/// A snapshot found in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// Bytes stored: database plus trailer, compressed and encrypted when `format` says so.
    pub size: u64,
    /// Hex SHA-256 of the database, from the trailer; `None` for a compressed or encrypted object,
    /// whose trailer is known only once decoded.
    pub sha256: Option<String>,
    /// As the `encoding` metadata says, else as the key's ending says.
    pub format: Format,
    /// The object's user metadata (`cluster`, `node`, `format`, `encoding`, `writer`).
    pub metadata: BTreeMap<String, String>,
}

/// Where snapshots go: one bucket of an S3-compatible store.
#[derive(Clone, Debug)]
pub struct S3Sink {
    pub(crate) store: Arc<AmazonS3>,
    pub(crate) bucket: String,
}

impl S3Sink {
    /// `request_timeout` bounds each S3 request, a part upload included. The location is validated
    /// first: nothing unchecked reaches the S3 client.
    pub fn new(location: &S3Location, request_timeout: Duration) -> Result<Self, Error> {
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
        Ok(S3Sink { store: Arc::new(store), bucket: location.bucket.clone() })
    }

    /// The size of the object at `key`, or None when there is none.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, Error> {
        use object_store::ObjectStoreExt as _;
        match self.store.head(&object_store::path::Path::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(S3Operation::GetObject, e)),
        }
    }

    /// The snapshot stored at `key` by a completed upload, if there is one: its size, the SHA-256 its
    /// trailer carries (checked when it was uploaded; the upload completes only then) and its user
    /// metadata. A HEAD, then a GET of the last 32 bytes.
    pub async fn stored(&self, key: &str) -> Result<Option<StoredSnapshot>, Error> {
        use object_store::{Attribute, GetOptions, GetRange, ObjectStore as _};
        let Some(size) = self.size(key).await? else {
            return Ok(None);
        };
        if size < 32 {
            return Ok(None);
        }
        let options = GetOptions { range: Some(GetRange::Bounded(size - 32..size)), ..Default::default() };
        let result = match self.store.get_opts(&object_store::path::Path::from(key), options).await {
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(S3Operation::GetObject, e)),
            Ok(result) => result,
        };
        let metadata: BTreeMap<String, String> = result
            .attributes
            .iter()
            .filter_map(|(attribute, value)| match attribute {
                Attribute::Metadata(name) => Some((name.to_string(), value.to_string())),
                _ => None,
            })
            .collect();
        let trailer = result.bytes().await.map_err(|e| self.error(S3Operation::GetObject, e))?;
        if trailer.len() != 32 {
            return Ok(None);
        }
        let format = match metadata.get("encoding") {
            Some(name) => Format::from_name(name).unwrap_or_else(|| Format::of_key(key)),
            None => Format::of_key(key),
        };
        let sha256 = (format == Format::default()).then(|| hex::encode(trailer));
        Ok(Some(StoredSnapshot { size, sha256, format, metadata }))
    }

    /// The object at `key` as a stream of chunks, as they come off the network (one in memory at a
    /// time); a read that stalls for `idle_timeout` ends with an error.
    pub async fn read(
        &self,
        key: &str,
        idle_timeout: Duration,
    ) -> Result<impl futures::Stream<Item = Result<bytes::Bytes, Error>> + Send + 'static, Error> {
        use futures::StreamExt as _;
        use object_store::ObjectStore as _;
        let path = object_store::path::Path::from(key);
        let result = self.store.get_opts(&path, Default::default()).await;
        let stream = result.map_err(|e| self.error(S3Operation::GetObject, e))?.into_stream();
        let sink = self.clone();
        let state = (stream, 0u64, false);
        Ok(futures::stream::unfold(state, move |(mut stream, bytes, done)| {
            let sink = sink.clone();
            async move {
                if done {
                    return None;
                }
                let item = match tokio::time::timeout(idle_timeout, stream.next()).await {
                    Err(_) => Err(Error::IdleTimeout { timeout: idle_timeout, bytes }),
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => Err(sink.error(S3Operation::GetObject, e)),
                    Ok(Some(Ok(chunk))) => Ok(chunk),
                };
                let next = bytes + item.as_ref().map_or(0, |c| c.len() as u64);
                let failed = item.is_err();
                Some((item, (stream, next, failed)))
            }
        }))
    }

    /// The snapshot stored at `key` in `format`, decrypted with `identities` and decompressed on the
    /// fly: the plain snapshot as a stream.
    pub async fn read_snapshot(
        &self,
        key: &str,
        format: Format,
        identities: &[age::x25519::Identity],
        idle_timeout: Duration,
    ) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes, Error>>, Error> {
        use futures::StreamExt as _;
        let stored = self.read(key, idle_timeout).await?;
        if format == Format::default() {
            return Ok(stored.boxed());
        }
        Ok(crate::codec::decode(stored, format, identities).await?.boxed())
    }

    /// Reads the snapshot at `key` back in one streamed pass (decoded as [`S3Sink::read_snapshot`]
    /// does) and checks it ([`SnapshotCheck`]). `progress` gets the snapshot's bytes read so far.
    pub async fn verify(
        &self,
        key: &str,
        format: Format,
        identities: &[age::x25519::Identity],
        idle_timeout: Duration,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<CheckedSnapshot, Error> {
        use futures::StreamExt as _;
        let mut stream = self.read_snapshot(key, format, identities, idle_timeout).await?;
        let mut check = SnapshotCheck::default();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            check.update(&chunk);
            bytes += chunk.len() as u64;
            progress(bytes);
        }
        check.finish()
    }

    /// The objects whose keys start with `prefix` (a folder: `a/b/`), as (key, size, last modified in
    /// Unix seconds).
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64, i64)>, Error> {
        use futures::TryStreamExt as _;
        use object_store::ObjectStore as _;
        let prefix = object_store::path::Path::from(prefix.trim_end_matches('/'));
        let objects: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&prefix)).try_collect().await.map_err(|e| self.error(S3Operation::ListObjects, e))?;
        Ok(objects.into_iter().map(|o| (o.location.to_string(), o.size, o.last_modified.timestamp())).collect())
    }

    /// Deletes the object at `key`; a missing object counts as deleted.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        use object_store::ObjectStoreExt as _;
        match self.store.delete(&object_store::path::Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(S3Operation::DeleteObject, e)),
        }
    }

    pub(crate) fn error(&self, operation: S3Operation, e: object_store::Error) -> Error {
        // object_store repeats itself down its source chain; what matters is the S3 error in the
        // response body when there is one, else the root cause (refused connection, bad certificate).
        let e = anyhow::Error::new(e);
        let full = format!("{e:#}");
        let code = xml_tag(&full, "Code");
        let message = xml_tag(&full, "Message").unwrap_or_else(|| {
            let causes: Vec<String> = e.chain().map(ToString::to_string).collect();
            causes[causes.len().saturating_sub(2)..].join(": ")
        });
        Error::S3 { operation, bucket: self.bucket.clone(), code, message }
    }
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
        let err = S3Sink::new(&location, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().starts_with("invalid S3 endpoint: \"minio.example.com\""), "{err}");
    }
}
