//! Where the backups are: a bucket or container, by name or URL, and how to reach it.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use teb_core::Settings;
use teb_pipeline::{
    AzureCredentials, AzureLocation, GcsLocation, ObjectUrl, S3Credentials, S3Location, Scheme, ServiceAccountKey,
    Storage, StorageLocation,
};

/// Where the backups are, and how to reach the bucket or container.
#[derive(Args)]
pub(crate) struct BucketArgs {
    /// S3 bucket, or a bucket or container as a URL: s3://bucket, az://container, gs://bucket.
    /// Needed unless --key is an object URL.
    #[arg(long, env = "S3_BUCKET")]
    pub(crate) bucket: Option<String>,
    /// S3 region.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub(crate) region: String,
    /// Custom endpoint URL: an S3-compatible store (path-style requests), the Azure blob service
    /// (Azurite: http://127.0.0.1:10000/devstoreaccount1) or a GCS endpoint.
    #[arg(long, env = "S3_ENDPOINT")]
    pub(crate) endpoint: Option<String>,
    /// Skip TLS verification of the S3 endpoint.
    #[arg(long)]
    pub(crate) insecure_skip_tls_verify: bool,
    /// PEM file of CA certificates to trust for the S3 endpoint.
    #[arg(long)]
    pub(crate) ca_file: Option<PathBuf>,
    /// With --secret-access-key, or neither: then the AWS SDKs' chain applies (web identity, container
    /// or instance credentials).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true, requires = "secret_access_key")]
    pub(crate) access_key_id: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true, requires = "access_key_id")]
    pub(crate) secret_access_key: Option<String>,
    /// Server-side encryption of the objects written: AES256 or aws:kms.
    #[arg(long)]
    pub(crate) sse: Option<String>,
    /// KMS key (ID, alias or ARN) for --sse aws:kms.
    #[arg(long, requires = "sse")]
    pub(crate) sse_kms_key_id: Option<String>,
    /// S3 Object Lock mode of the objects written: GOVERNANCE or COMPLIANCE.
    #[arg(long, requires = "object_lock_retention")]
    pub(crate) object_lock_mode: Option<String>,
    /// How long the objects written stay locked: 30d, 36h, 1d12h, 90s.
    #[arg(long, requires = "object_lock_mode")]
    pub(crate) object_lock_retention: Option<String>,
    /// How the store checks each write: crc64nvme or sha256 (a flexible-checksum header), md5
    /// (Content-MD5), none (the body's SHA-256 signed instead; for stores that refuse those
    /// headers), auto (crc64nvme on AWS and with Object Lock, none on another --endpoint).
    #[arg(long, default_value = "auto", value_parser = teb_pipeline::S3Checksum::parse)]
    pub(crate) checksum: teb_pipeline::S3Checksum,
    /// Azure storage account of an az:// container.
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT_NAME")]
    pub(crate) azure_account: Option<String>,
    /// Azure storage account key; or --azure-sas-token; neither: workload or managed identity.
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT_KEY", hide_env_values = true, conflicts_with = "azure_sas_token")]
    pub(crate) azure_account_key: Option<String>,
    /// Azure SAS token (sv=…&sig=…) for the container.
    #[arg(long, env = "AZURE_STORAGE_SAS_TOKEN", hide_env_values = true)]
    pub(crate) azure_sas_token: Option<String>,
    /// GCS service account JSON key file of a gs:// bucket; application default credentials when unset.
    #[arg(long, value_name = "FILE")]
    pub(crate) gcs_service_account_key: Option<PathBuf>,
}

impl BucketArgs {
    /// The storage handle: built once, used for every request of the command. `key`: the key a
    /// command was given, which may be an object URL (then it names the bucket or container).
    pub(crate) fn storage(&self, settings: &Settings, key: Option<&str>) -> anyhow::Result<Storage> {
        let location = self.location(key)?;
        Ok(Storage::new(&location, settings.request_timeout).map_err(teb_core::Error::Upload)?)
    }

    /// The bucket or container as given (a name or a URL), for summaries.
    pub(crate) fn name(&self, key: Option<&str>) -> String {
        match key.and_then(|key| ObjectUrl::parse(key).ok().flatten()) {
            Some(url) => url.container_url(),
            None => self.bucket.clone().unwrap_or_default(),
        }
    }

    /// Which store and container the arguments name: `--bucket` (a name is an S3 bucket), or the
    /// object URL given as the key, which must agree with it.
    pub(crate) fn location(&self, key: Option<&str>) -> anyhow::Result<StorageLocation> {
        let from_key = key.map(ObjectUrl::parse).transpose().map_err(|e| anyhow::anyhow!("--key: {e}"))?.flatten();
        let from_bucket = match self.bucket.as_deref() {
            Some(bucket) => {
                Some(ObjectUrl::parse(bucket).map_err(|e| anyhow::anyhow!("--bucket: {e}"))?.unwrap_or(ObjectUrl {
                    scheme: Scheme::S3,
                    written: "s3".into(),
                    container: bucket.to_owned(),
                    key: None,
                }))
            }
            None => None,
        };
        anyhow::ensure!(
            from_bucket.as_ref().is_none_or(|bucket| bucket.key.is_none()),
            "--bucket: give the bucket or container only (az://container), the key with --key"
        );
        let url = match (from_key, from_bucket) {
            (Some(key), Some(bucket)) if (key.scheme, &key.container) != (bucket.scheme, &bucket.container) => {
                anyhow::bail!("--key names {} but --bucket names {}", key.container_url(), self.name(None))
            }
            (Some(url), _) | (None, Some(url)) => url,
            (None, None) => anyhow::bail!(
                "--bucket is required, or --key as an object URL (s3://bucket/key, az://container/key, gs://bucket/key)"
            ),
        };
        let container = url.container;
        let endpoint = self.endpoint.clone();
        Ok(match url.scheme {
            Scheme::S3 => StorageLocation::S3(self.s3_location(container)?),
            Scheme::Azure => StorageLocation::Azure(AzureLocation {
                account: self.azure_account.clone().context("--azure-account is required for an az:// container")?,
                container,
                endpoint,
                credentials: match (&self.azure_account_key, &self.azure_sas_token) {
                    (Some(key), _) => Some(AzureCredentials::AccountKey(key.clone())),
                    (None, Some(token)) => Some(AzureCredentials::Sas(token.clone())),
                    (None, None) => None,
                },
            }),
            Scheme::Gcs => StorageLocation::Gcs(GcsLocation {
                bucket: container,
                endpoint,
                service_account_key: match &self.gcs_service_account_key {
                    Some(file) => Some(ServiceAccountKey(
                        std::fs::read_to_string(file)
                            .with_context(|| format!("reading key file {}", file.display()))?,
                    )),
                    None => None,
                },
            }),
        })
    }

    pub(crate) fn s3_location(&self, bucket: String) -> anyhow::Result<S3Location> {
        let ca_pem = match &self.ca_file {
            Some(file) => {
                Some(std::fs::read_to_string(file).with_context(|| format!("reading CA file {}", file.display()))?)
            }
            None => None,
        };
        Ok(S3Location {
            bucket,
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            insecure_skip_tls_verify: self.insecure_skip_tls_verify,
            ca_pem,
            credentials: self
                .access_key_id
                .clone()
                .zip(self.secret_access_key.clone())
                .map(|(access_key_id, secret_access_key)| S3Credentials { access_key_id, secret_access_key }),
            sse: match &self.sse {
                Some(algorithm) => Some(
                    teb_pipeline::ServerSideEncryption::parse(algorithm, self.sse_kms_key_id.as_deref())
                        .map_err(|reason| anyhow::anyhow!("--sse: {reason}"))?,
                ),
                None => None,
            },
            object_lock: match (&self.object_lock_mode, &self.object_lock_retention) {
                (Some(mode), Some(retention)) => Some(
                    teb_pipeline::ObjectLock::parse(mode, retention)
                        .map_err(|reason| anyhow::anyhow!("--object-lock-mode/--object-lock-retention: {reason}"))?,
                ),
                _ => None,
            },
            checksum: self.checksum,
        })
    }
}

/// The key of `text`: itself, or the part after the bucket or container of an object URL.
pub(crate) fn object_key(text: &str) -> String {
    match ObjectUrl::parse(text) {
        Ok(Some(ObjectUrl { key: Some(key), .. })) => key,
        _ => text.to_owned(),
    }
}
