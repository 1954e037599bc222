//! `backupStorage.azure`: its fields checked, and the Azure location they name.

use teb_api::{AzureStorage, SecretKeyRef};
use teb_pipeline::{AzureCredentials, AzureLocation};

use super::{Error, Secrets, endpoint, field, references_valid};

/// The fields of `backupStorage.azure` found at `at`.
pub(super) fn validate(azure: &AzureStorage, at: &str) -> Result<(), Error> {
    field(at, "azure", "account", teb_pipeline::azure::account(&azure.account))?;
    field(at, "azure", "container", teb_pipeline::azure::container(&azure.container))?;
    if let Some(url) = endpoint(&azure.endpoint) {
        field(at, "azure", "endpoint", teb_pipeline::azure::endpoint(&url))?;
    }
    azure_credential_ref(azure, at)?;
    let references = [
        ("backupStorage.azure.accountKey", azure.account_key.as_ref()),
        ("backupStorage.azure.sasToken", azure.sas_token.as_ref()),
    ];
    references_valid(&references, at)
}

/// The Azure location `azure` names, its Secret read.
pub(super) async fn location(secrets: &mut Secrets, azure: &AzureStorage, at: &str) -> Result<AzureLocation, Error> {
    let credentials = match azure_credential_ref(azure, at)? {
        Some(AzureCredentialRef::AccountKey(key)) => {
            Some(AzureCredentials::AccountKey(secrets.checked_value(key, teb_pipeline::azure::account_key).await?))
        }
        Some(AzureCredentialRef::Sas(token)) => {
            Some(AzureCredentials::Sas(secrets.checked_value(token, teb_pipeline::azure::sas_token).await?))
        }
        None => None,
    };
    Ok(AzureLocation {
        account: azure.account.clone(),
        container: azure.container.clone(),
        endpoint: endpoint(&azure.endpoint),
        credentials,
    })
}

/// An Azure credential's Secret key.
enum AzureCredentialRef<'a> {
    AccountKey(&'a SecretKeyRef),
    Sas(&'a SecretKeyRef),
}

/// `accountKey` or `sasToken`, or neither (the operator's own identity); not both.
fn azure_credential_ref<'a>(azure: &'a AzureStorage, at: &str) -> Result<Option<AzureCredentialRef<'a>>, Error> {
    match (&azure.account_key, &azure.sas_token) {
        (Some(key), None) => Ok(Some(AzureCredentialRef::AccountKey(key))),
        (None, Some(token)) => Ok(Some(AzureCredentialRef::Sas(token))),
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(Error::Spec(format!(
            "{at}backupStorage.azure: set accountKey or sasToken, not both (or neither to use the operator's own \
             identity)"
        ))),
    }
}
