//! Azure Blob Storage: the location's settings, their checks, the client built from them and how the
//! service names its failures. A backup's snapshot is a block blob: blocks staged as parts and
//! committed with the blob's metadata in one block list ([`Uploads::Blocks`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::azure::MicrosoftAzureBuilder;

use super::check::{classify, describe_char, quote};
use super::{Failure, Storage, Uploads, client_options, retry};
use crate::Error;

/// The service, as messages name it.
pub const SERVICE: &str = "Azure Blob Storage";

/// A container of a storage account, and how to reach it.
#[derive(Clone, Debug)]
pub struct AzureLocation {
    pub account: String,
    pub container: String,
    /// The blob service's URL, when not `https://<account>.blob.core.windows.net`: a sovereign cloud
    /// (`https://<account>.blob.core.usgovcloudapi.net`) or Azurite (`http://127.0.0.1:10000/<account>`).
    pub endpoint: Option<String>,
    /// `None`: the process's own identity (Azure workload identity, managed identity, `AZURE_*`
    /// environment variables).
    pub credentials: Option<AzureCredentials>,
}

/// A storage account key, or a shared access signature. Debug output never shows them.
#[derive(Clone)]
pub enum AzureCredentials {
    AccountKey(String),
    Sas(String),
}

impl fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureCredentials::AccountKey(_) => f.write_str("AzureCredentials::AccountKey(..)"),
            AzureCredentials::Sas(_) => f.write_str("AzureCredentials::Sas(..)"),
        }
    }
}

impl AzureLocation {
    /// Every setting checked, the first problem returned; messages name the field as the spec does.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field, reason| Error::Invalid { service: SERVICE, field, reason };
        account(&self.account).map_err(|r| invalid("account", r))?;
        container(&self.container).map_err(|r| invalid("container", r))?;
        if let Some(url) = &self.endpoint {
            endpoint(url).map_err(|r| invalid("endpoint", r))?;
        }
        match &self.credentials {
            Some(AzureCredentials::AccountKey(key)) => account_key(key).map_err(|r| invalid("accountKey", r)),
            Some(AzureCredentials::Sas(token)) => sas_token(token).map_err(|r| invalid("sasToken", r)),
            None => Ok(()),
        }
    }
}

/// Storage account names: 3 to 24 lowercase letters and digits.
pub fn account(name: &str) -> Result<(), String> {
    let ok = (3..=24).contains(&name.len()) && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        return Ok(());
    }
    Err(format!("{} is not a valid storage account name: use 3 to 24 lowercase letters and digits", quote(name)))
}

/// Container names: 3 to 63 lowercase letters, digits and hyphens; beginning with a letter or digit;
/// every hyphen between two letters or digits.
pub fn container(name: &str) -> Result<(), String> {
    let bad = |rule: &str| Err(format!("{} is not a valid container name: {rule}", quote(name)));
    if !(3..=63).contains(&name.len()) {
        return bad("it must be 3 to 63 characters long");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        return bad(&format!("it holds {}; only lowercase letters, digits and hyphens are allowed", describe_char(c)));
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return bad("every hyphen must stand between two letters or digits");
    }
    Ok(())
}

/// The blob service's URL; a path (Azurite's account segment) is allowed.
pub fn endpoint(url: &str) -> Result<(), String> {
    super::check::url(url, Some("the account, as Azurite's http://127.0.0.1:10000/devstoreaccount1"))
}

/// An account key is base64 (88 characters for Azure's 512-bit keys).
pub fn account_key(key: &str) -> Result<(), String> {
    use base64::Engine as _;
    if key.is_empty() || key.len() > 256 {
        return Err("it must be 1 to 256 characters long".into());
    }
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(_) => Ok(()),
        Err(_) => {
            Err("it is not base64, as the keys the Azure portal shows are (a pasted line break or space?)".into())
        }
    }
}

/// A SAS token: the query string the portal gives (`sv=…&sig=…`, a leading `?` allowed).
pub fn sas_token(token: &str) -> Result<(), String> {
    let token = token.strip_prefix('?').unwrap_or(token);
    if token.is_empty() || token.len() > 4096 {
        return Err("it must be 1 to 4096 characters long".into());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it holds a space, a line break, a control or a non-ASCII character".into());
    }
    if token.split('&').any(|pair| !pair.contains('=')) || !token.split('&').any(|pair| pair.starts_with("sig=")) {
        return Err("it is not a SAS token: give the query string with its sig= signature, such as sv=…&sig=…".into());
    }
    Ok(())
}

/// The storage handle of `location`; checked first: nothing unchecked reaches the client.
pub(super) fn build(location: &AzureLocation, request_timeout: Duration) -> Result<Storage, Error> {
    location.validate()?;
    let mut options = client_options(request_timeout);
    let builder = match &location.credentials {
        Some(AzureCredentials::AccountKey(key)) => MicrosoftAzureBuilder::new().with_access_key(key),
        Some(AzureCredentials::Sas(token)) => {
            let pairs = object_store::azure::split_sas(token).map_err(|_| Error::Invalid {
                service: SERVICE,
                field: "sasToken",
                reason: "it cannot be read".into(),
            })?;
            MicrosoftAzureBuilder::new().with_sas_authorization(pairs)
        }
        None => MicrosoftAzureBuilder::from_env(),
    };
    let mut builder =
        builder.with_account(&location.account).with_container_name(&location.container).with_retry(retry());
    if let Some(endpoint) = location.endpoint.as_deref() {
        let url = endpoint.trim_end_matches('/');
        options = options.with_allow_http(url.starts_with("http://"));
        builder = builder.with_endpoint(url.to_owned());
    }
    let store = builder
        .with_client_options(options)
        .build()
        .map_err(|e| Error::Config { service: SERVICE, message: e.to_string() })?;
    Ok(Storage {
        store: Arc::new(store),
        uploads: Uploads::Blocks,
        service: SERVICE,
        container: format!("container {:?} of account {:?}", location.container, location.account),
        failure: Arc::new(failure),
        locked_writer: None,
        lister: None,
    })
}

/// Azure error codes another try cannot fix: credentials, the container, the request itself.
const PERMANENT_CODES: [&str; 10] = [
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch",
    "InsufficientAccountPermissions",
    "AccountIsDisabled",
    "ContainerNotFound",
    "InvalidResourceName",
    "InvalidAuthenticationInfo",
    "NoAuthenticationInformation",
];

/// What failed, as Azure says it. Its messages carry `RequestId:` and `Time:` lines after the first.
fn failure(e: object_store::Error) -> Failure {
    classify(e, &PERMANENT_CODES, |code, _| {
        matches!(code, "AuthenticationFailed" | "AuthorizationFailure")
            .then(|| "check the account key or SAS token, and that the SAS has not expired".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_azures_rules() {
        assert!(account("mystorage01").is_ok());
        for bad in ["ab", "MyStorage", "my-storage", &"a".repeat(25)] {
            assert!(account(bad).unwrap_err().contains("3 to 24 lowercase"), "{bad}");
        }
        assert!(container("etcd-backups").is_ok());
        assert!(container("etcd--backups").unwrap_err().contains("hyphen"));
        assert!(container("-etcd").unwrap_err().contains("hyphen"));
        assert!(container("Etcd").unwrap_err().contains("uppercase"));
        assert!(container("ab").unwrap_err().contains("3 to 63"));
    }

    #[test]
    fn credential_errors_never_quote_the_credential() {
        let err = account_key("bm90 YSBrZXk=").unwrap_err();
        assert!(!err.contains("bm90") && err.contains("base64"), "{err}");
        assert!(account_key("c2VjcmV0").is_ok());
        let err = sas_token("sv=2024&sp=rw").unwrap_err();
        assert!(!err.contains("2024") && err.contains("sig="), "{err}");
        assert!(sas_token("?sv=2024&sig=abc%3D").is_ok());
        let shown = format!("{:?}", AzureCredentials::Sas("sv=1&sig=s3cr3t".into()));
        assert!(!shown.contains("s3cr3t"));
    }
}
