//! `backupStorage.gcs`: its fields checked, and the GCS location they name.

use teb_api::GcsStorage;
use teb_pipeline::{GcsLocation, ServiceAccountKey};

use super::{Error, Secrets, endpoint, field, references_valid};

/// The fields of `backupStorage.gcs` found at `at`.
pub(super) fn validate(gcs: &GcsStorage, at: &str) -> Result<(), Error> {
    field(at, "gcs", "bucket", teb_pipeline::gcp::bucket(&gcs.bucket))?;
    if let Some(url) = endpoint(&gcs.endpoint) {
        field(at, "gcs", "endpoint", teb_pipeline::validate::endpoint(&url))?;
    }
    references_valid(&[("backupStorage.gcs.serviceAccountKey", gcs.service_account_key.as_ref())], at)
}

/// The GCS location `gcs` names, its Secret read.
pub(super) async fn location(secrets: &mut Secrets, gcs: &GcsStorage) -> Result<GcsLocation, Error> {
    let service_account_key = match &gcs.service_account_key {
        Some(key) => Some(ServiceAccountKey(secrets.checked_value(key, teb_pipeline::gcp::service_account_key).await?)),
        None => None,
    };
    Ok(GcsLocation { bucket: gcs.bucket.clone(), endpoint: endpoint(&gcs.endpoint), service_account_key })
}
