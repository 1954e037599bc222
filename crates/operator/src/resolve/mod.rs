//! Turns a spec and the objects it names into plain values: a Talos target, a storage handle, an
//! encoding. A [`Resolver`] serves one reconcile: it reads each Secret once and builds the storage
//! handle once. Every "Failed to get ..." message is born here.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use teb_api::{
    Backend, BackupStorage, BundleConfig, Compression, RecoveryKitPolicy, SecretKeyRef, TalosControlPlane,
    TalosEtcdBackupSpec,
};
use teb_core::kit::KitPolicy;
use teb_core::{BackupPlan, KitSource};
use teb_pipeline::codec::{self, MAX_ZSTD_LEVEL};
use teb_pipeline::{Encoding, Format, Identity, Storage, StorageLocation};
use teb_talos::{SecretsBundle, Talosconfig, Target};

use crate::Error;

mod azure;
mod gcs;
mod s3;

/// What one reconcile reads of a namespace, each thing once: its Secrets, the TalosControlPlane,
/// and the storage handle built from them.
pub struct Resolver {
    secrets: Secrets,
    request_timeout: Duration,
    storage: Option<Storage>,
    /// The TalosControlPlane, once read (None inside: there is none).
    controlplane: Option<Option<TalosControlPlane>>,
}

impl Resolver {
    /// `request_timeout` bounds each storage request of the handle [`Resolver::storage`] builds.
    pub fn new(client: &Client, namespace: &str, request_timeout: Duration) -> Self {
        Resolver { secrets: Secrets::new(client, namespace), request_timeout, storage: None, controlplane: None }
    }

    /// The storage handle of `storage` (found at `at`: `spec.`, or a schedule's
    /// `spec.backupTemplate.spec.`), built on the first call; later calls return it again. It needs
    /// no TalosControlPlane, so it works when that is gone (deleted with the namespace, say).
    pub async fn storage(&mut self, storage: &BackupStorage, at: &str) -> Result<Storage, Error> {
        if let Some(built) = &self.storage {
            return Ok(built.clone());
        }
        validate_storage(storage, at)?;
        let location = match storage.backend().map_err(|reason| Error::Spec(format!("{at}backupStorage: {reason}")))? {
            Backend::S3(s3) => StorageLocation::S3(s3::location(&mut self.secrets, s3, at).await?),
            Backend::Azure(azure) => StorageLocation::Azure(azure::location(&mut self.secrets, azure, at).await?),
            Backend::Gcs(gcs) => StorageLocation::Gcs(gcs::location(&mut self.secrets, gcs).await?),
        };
        let built = Storage::new(&location, self.request_timeout).map_err(Error::storage)?;
        self.storage = Some(built.clone());
        Ok(built)
    }

    /// Everything a backup with `spec` needs. Talos credentials as [`Resolver::talos`] finds them,
    /// with only the `os:etcd:backup` role. `owner` is the backup's UID.
    pub async fn backup_plan(
        &mut self,
        spec: &TalosEtcdBackupSpec,
        owner: Option<String>,
        cert_validity: Duration,
    ) -> Result<BackupPlan, Error> {
        validate_spec(spec)?;
        let controlplane = spec.talos_control_plane_ref.name.clone();
        let reference = spec.talosconfig_secret_ref.as_ref();
        let talos = self.talos(&controlplane, reference, cert_validity, teb_talos::ROLE_ETCD_BACKUP).await?;
        let storage = self.storage(&spec.backup_storage, "spec.").await?;
        let encoding = encoding(&mut self.secrets, spec).await?;
        let kit = self.kit_source(&controlplane).await;
        let kit_policy = match spec.recovery_kit.unwrap_or_default() {
            RecoveryKitPolicy::Encrypted => KitPolicy::Encrypted,
            RecoveryKitPolicy::Plaintext => KitPolicy::Plaintext,
            RecoveryKitPolicy::Never => KitPolicy::Never,
        };
        Ok(BackupPlan { controlplane, talos, storage, encoding, owner, kit, kit_policy })
    }

    /// The recovery kit's part of `controlplane`: its secrets bundle and bundle config, when the
    /// TalosControlPlane has them (a backup through a talosconfig Secret may have none).
    async fn kit_source(&mut self, controlplane: &str) -> Option<KitSource> {
        let status = self.controlplane(controlplane).await.ok().flatten()?.status?;
        let nonempty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        Some(KitSource {
            secrets_bundle: nonempty(status.secret_bundle)?,
            bundle_config: nonempty(status.bundle_config)?,
            namespace: Some(self.secrets.namespace.clone()),
            state: nonempty(status.state),
            machine_config: nonempty(status.config),
            observed_kube_version: nonempty(status.observed_kube_version),
        })
    }

    /// The Talos API target of `controlplane`: from the talosconfig Secret key `talosconfig` when
    /// given, else from the control plane's secrets bundle (minting a client certificate with only
    /// `role`, valid for `cert_validity`), else from the `<controlplane>-talosconfig` Secret.
    pub async fn talos(
        &mut self,
        controlplane: &str,
        talosconfig: Option<&SecretKeyRef>,
        cert_validity: Duration,
        role: &str,
    ) -> Result<Target, Error> {
        let field =
            |path: &str, result: Result<(), String>| result.map_err(|r| Error::Spec(format!("spec.{path}: {r}")));
        field("talosControlPlaneRef.name", teb_api::validate::object_name(controlplane))?;
        if let Some(reference) = talosconfig {
            field("talosconfigSecretRef.name", teb_api::validate::object_name(&reference.name))?;
            field("talosconfigSecretRef.key", teb_api::validate::secret_key(&reference.key))?;
        }
        let secrets = &mut self.secrets;
        let namespace = secrets.namespace.clone();
        if let Some(reference) = talosconfig {
            return talosconfig_target(&secrets.value(reference).await?, reference, &namespace);
        }
        let found = self
            .controlplane(controlplane)
            .await
            .map_err(|e| cp_error(controlplane, &namespace, kube_reason(&e)))?
            .ok_or_else(|| {
                let reason = "not found; it must exist in the same namespace as the TalosEtcdBackup".into();
                cp_error(controlplane, &namespace, reason)
            })?;
        talos_from_controlplane(&found, &mut self.secrets, cert_validity, role).await
    }

    /// The TalosControlPlane `name`, read on the first call only: the Talos target and the recovery
    /// kit both come from it.
    async fn controlplane(&mut self, name: &str) -> Result<Option<TalosControlPlane>, kube::Error> {
        if let Some(read) = &self.controlplane {
            return Ok(read.clone());
        }
        let api = Api::<TalosControlPlane>::namespaced(self.secrets.client.clone(), &self.secrets.namespace);
        let read = api.get_opt(name).await?;
        self.controlplane = Some(read.clone());
        Ok(read)
    }

    /// The age identities in the Secret key `reference`: what decrypts a backup for verification or
    /// restore. Errors never quote the Secret's content.
    pub async fn identities(&mut self, reference: &SecretKeyRef) -> Result<Vec<Identity>, Error> {
        let text = self.secrets.value(reference).await?;
        codec::parse_identities(&text)
            .map_err(|reason| self.secrets.error(&reference.name, format!("key {:?}: {reason}", reference.key)))
    }
}

/// The zstd level a spec asks for when it asks for compression.
/// Level 1: 2% more bytes stored than level 3 on Kubernetes-shaped data, for a third less CPU
/// (docs/benchmarks.md).
const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// How the spec says to store the snapshot: the stored key's ending follows from it.
pub fn format_of(spec: &TalosEtcdBackupSpec) -> Format {
    Format { zstd: spec.compression == Some(Compression::Zstd), age: spec.encryption.is_some() }
}

/// The compression level and the age recipients: inline ones, then those of `recipientsSecretRef`.
async fn encoding(secrets: &mut Secrets, spec: &TalosEtcdBackupSpec) -> Result<Encoding, Error> {
    let zstd_level = format_of(spec).zstd.then(|| spec.compression_level.unwrap_or(DEFAULT_ZSTD_LEVEL));
    let Some(encryption) = &spec.encryption else {
        return Ok(Encoding { zstd_level, recipients: Vec::new() });
    };
    let age = &encryption.age;
    let mut recipients = codec::parse_recipients(age.recipients.iter().map(String::as_str))
        .map_err(|reason| Error::Spec(format!("spec.encryption.age.recipients: {reason}")))?;
    if let Some(reference) = &age.recipients_secret_ref {
        let text = secrets.value(reference).await?;
        let listed = codec::parse_recipients(text.lines())
            .map_err(|reason| secrets.error(&reference.name, format!("key {:?}: {reason}", reference.key)))?;
        recipients.extend(listed);
    }
    if recipients.is_empty() {
        return Err(Error::Spec(
            "spec.encryption.age: no recipient; list age1… public keys in recipients or in the recipientsSecretRef Secret"
                .into(),
        ));
    }
    recipients.dedup();
    Ok(Encoding { zstd_level, recipients })
}

/// Every field of `spec` checked before any I/O, each error naming the field. The CRD schema rejects
/// most of this at apply time; objects created against an older CRD get here.
pub fn validate_spec(spec: &TalosEtcdBackupSpec) -> Result<(), Error> {
    validate_spec_at(spec, "spec.")
}

/// [`validate_spec`] for a spec found at `at` (`spec.`, or a schedule's `spec.backupTemplate.spec.`),
/// so that every message names the field where the user wrote it.
pub fn validate_spec_at(spec: &TalosEtcdBackupSpec, at: &str) -> Result<(), Error> {
    let field =
        |path: &str, result: Result<(), String>| result.map_err(|reason| Error::Spec(format!("{at}{path}: {reason}")));
    field("talosControlPlaneRef.name", teb_api::validate::object_name(&spec.talos_control_plane_ref.name))?;
    validate_storage(&spec.backup_storage, at)?;
    validate_encoding(spec, at)?;
    if let Some(key) = &spec.import_key {
        field("importKey", import_key(key))?;
    }
    let age = spec.encryption.as_ref().map(|e| &e.age);
    let references = [
        ("talosconfigSecretRef", spec.talosconfig_secret_ref.as_ref()),
        ("encryption.age.recipientsSecretRef", age.and_then(|a| a.recipients_secret_ref.as_ref())),
        ("encryption.age.identitySecretRef", age.and_then(|a| a.identity_secret_ref.as_ref())),
    ];
    references_valid(&references, at)
}

/// An object key to import: S3's limit (1,024 bytes), no control characters, no empty segment.
fn import_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 1024 {
        return Err(format!("{} bytes: an object key has 1 to 1024", key.len()));
    }
    if key.chars().any(char::is_control) || key.starts_with('/') || key.split('/').any(str::is_empty) {
        return Err(format!(
            "{} is not an object key (no leading slash, empty segment or control character)",
            teb_api::validate::quote(key)
        ));
    }
    Ok(())
}

/// The fields of a spec's `backupStorage` found at `at`: exactly one backend, and its fields.
fn validate_storage(storage: &BackupStorage, at: &str) -> Result<(), Error> {
    match storage.backend().map_err(|reason| Error::Spec(format!("{at}backupStorage: {reason}")))? {
        Backend::S3(s3) => s3::validate(s3, at),
        Backend::Azure(azure) => azure::validate(azure, at),
        Backend::Gcs(gcs) => gcs::validate(gcs, at),
    }
}

/// A field of `backupStorage.<backend>` found at `at`, checked.
fn field(at: &str, backend: &str, path: &str, result: Result<(), String>) -> Result<(), Error> {
    result.map_err(|reason| Error::Spec(format!("{at}backupStorage.{backend}.{path}: {reason}")))
}

/// An endpoint set to something.
fn endpoint(endpoint: &Option<String>) -> Option<String> {
    endpoint.clone().filter(|e| !e.is_empty())
}

/// Secret key references (path below `at`, reference): names and keys the API server would take.
fn references_valid(references: &[(&str, Option<&SecretKeyRef>)], at: &str) -> Result<(), Error> {
    let field =
        |path: &str, result: Result<(), String>| result.map_err(|reason| Error::Spec(format!("{at}{path}: {reason}")));
    for (path, reference) in references {
        if let Some(reference) = reference {
            field(&format!("{path}.name"), teb_api::validate::object_name(&reference.name))?;
            field(&format!("{path}.key"), teb_api::validate::secret_key(&reference.key))?;
        }
    }
    Ok(())
}

/// Compression level and age recipients, as far as they can be checked without reading a Secret.
fn validate_encoding(spec: &TalosEtcdBackupSpec, at: &str) -> Result<(), Error> {
    if let Some(level) = spec.compression_level {
        if spec.compression != Some(Compression::Zstd) {
            return Err(Error::Spec(format!("{at}compressionLevel is set but {at}compression is not zstd")));
        }
        if !(1..=MAX_ZSTD_LEVEL).contains(&level) {
            return Err(Error::Spec(format!(
                "{at}compressionLevel: {level} is out of range; use 1 (fastest) to {MAX_ZSTD_LEVEL} (smallest)"
            )));
        }
    }
    let Some(encryption) = &spec.encryption else {
        return Ok(());
    };
    let age = &encryption.age;
    codec::parse_recipients(age.recipients.iter().map(String::as_str))
        .map_err(|reason| Error::Spec(format!("{at}encryption.age.recipients: {reason}")))?;
    if age.recipients.iter().all(|r| r.trim().is_empty()) && age.recipients_secret_ref.is_none() {
        return Err(Error::Spec(format!(
            "{at}encryption.age: no recipient; list age1… public keys in recipients, or name a Secret holding them \
             in recipientsSecretRef"
        )));
    }
    if spec.verify && age.identity_secret_ref.is_none() {
        return Err(Error::Spec(format!(
            "{at}verify reads an encrypted backup back, which needs an identity: set \
             {at}encryption.age.identitySecretRef to a Secret key holding the AGE-SECRET-KEY-1… of one recipient, \
             or turn verify off"
        )));
    }
    Ok(())
}

async fn talos_from_controlplane(
    controlplane: &TalosControlPlane,
    secrets: &mut Secrets,
    cert_validity: Duration,
    role: &str,
) -> Result<Target, Error> {
    let name = controlplane.name_any();
    let namespace = secrets.namespace.clone();
    let status = controlplane.status.clone().unwrap_or_default();
    let nonempty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
    if let (Some(config), Some(bundle)) = (nonempty(status.bundle_config), nonempty(status.secret_bundle)) {
        let config: BundleConfig = serde_json::from_str(&config)
            .map_err(|e| cp_error(&name, &namespace, format!("status.bundleConfig is not valid JSON: {e}")))?;
        let bundle = SecretsBundle::from_yaml(&bundle)
            .map_err(|e| cp_error(&name, &namespace, format!("status.secretBundle: {e}")))?;
        let credentials =
            bundle.mint_client(&[role], cert_validity).map_err(|e| cp_error(&name, &namespace, e.to_string()))?;
        return Ok(Target { endpoints: config.talos_endpoints(), nodes: Vec::new(), credentials });
    }
    // The upstream operator also writes a talosconfig Secret beside the control plane.
    let reference = SecretKeyRef { name: format!("{name}-talosconfig"), key: format!("{name}.talosconfig") };
    match secrets.get(&reference.name).await? {
        Some(_) => talosconfig_target(&secrets.value(&reference).await?, &reference, &namespace),
        None => Err(cp_error(
            &name,
            &namespace,
            format!(
                "it is not ready: status.bundleConfig and status.secretBundle are empty and Secret {:?} does not exist; \
                 wait until the control plane is ready with a valid bundle config, or set spec.talosconfigSecretRef",
                reference.name
            ),
        )),
    }
}

fn talosconfig_target(text: &str, reference: &SecretKeyRef, namespace: &str) -> Result<Target, Error> {
    Talosconfig::from_yaml(text).and_then(|c| c.target(None)).map_err(|e| Error::Secret {
        name: reference.name.clone(),
        namespace: namespace.to_owned(),
        reason: format!("key {:?}: {e}", reference.key),
    })
}

fn cp_error(name: &str, namespace: &str, reason: String) -> Error {
    Error::ControlPlane { name: name.to_owned(), namespace: namespace.to_owned(), reason }
}

fn kube_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.code == 403 => {
            format!("forbidden ({}); check the operator's RBAC (deploy/rbac.yaml)", status.message)
        }
        other => other.to_string(),
    }
}

/// Secrets of one namespace, each read once per reconcile (and the client that reads the rest).
struct Secrets {
    client: Client,
    api: Api<Secret>,
    namespace: String,
    cache: BTreeMap<String, Option<Secret>>,
}

impl Secrets {
    fn new(client: &Client, namespace: &str) -> Self {
        Secrets {
            client: client.clone(),
            api: Api::namespaced(client.clone(), namespace),
            namespace: namespace.to_owned(),
            cache: BTreeMap::new(),
        }
    }

    async fn get(&mut self, name: &str) -> Result<Option<Secret>, Error> {
        if let Some(secret) = self.cache.get(name) {
            return Ok(secret.clone());
        }
        let secret = self.api.get_opt(name).await.map_err(|e| self.error(name, kube_reason(&e)))?;
        self.cache.insert(name.to_owned(), secret.clone());
        Ok(secret)
    }

    /// The value at `reference`, as text with surrounding whitespace (a stray newline) removed.
    async fn value(&mut self, reference: &SecretKeyRef) -> Result<String, Error> {
        let secret = self.get(&reference.name).await?.ok_or_else(|| {
            self.error(&reference.name, "not found; it must exist in the same namespace as the TalosEtcdBackup".into())
        })?;
        let data = secret.data.unwrap_or_default();
        let Some(bytes) = data.get(&reference.key) else {
            let keys: Vec<&str> = data.keys().map(String::as_str).collect();
            let present =
                if keys.is_empty() { "it has no keys".to_owned() } else { format!("it has {}", keys.join(", ")) };
            return Err(self.error(&reference.name, format!("key {:?} not found ({present})", reference.key)));
        };
        let text = String::from_utf8(bytes.0.clone())
            .map_err(|_| self.error(&reference.name, format!("key {:?} is not UTF-8 text", reference.key)))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(self.error(&reference.name, format!("key {:?} is empty", reference.key)));
        }
        Ok(text.to_owned())
    }

    /// The value at `reference`, checked by `check` (whose message never quotes the value).
    async fn checked_value(
        &mut self,
        reference: &SecretKeyRef,
        check: fn(&str) -> Result<(), String>,
    ) -> Result<String, Error> {
        let value = self.value(reference).await?;
        check(&value).map_err(|reason| self.error(&reference.name, format!("key {:?}: {reason}", reference.key)))?;
        Ok(value)
    }

    fn error(&self, name: &str, reason: String) -> Error {
        Error::Secret { name: name.to_owned(), namespace: self.namespace.clone(), reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s3_keys: &str) -> TalosEtcdBackupSpec {
        let yaml = format!(
            "talosControlPlaneRef: {{name: cp}}\nbackupStorage:\n  s3:\n    bucket: my-backups\n    region: us-west-2\n{s3_keys}"
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    #[test]
    fn a_schedules_template_is_checked_with_its_own_paths() {
        let mut template = spec("");
        template.compression_level = Some(5);
        let err = validate_spec_at(&template, "spec.backupTemplate.spec.").unwrap_err().to_string();
        assert_eq!(
            err,
            "Invalid spec: spec.backupTemplate.spec.compressionLevel is set but \
             spec.backupTemplate.spec.compression is not zstd"
        );
        template.compression_level = None;
        template.backup_storage.s3.as_mut().unwrap().region = "us west".into();
        let err = validate_spec_at(&template, "spec.backupTemplate.spec.").unwrap_err().to_string();
        assert!(err.starts_with("Invalid spec: spec.backupTemplate.spec.backupStorage.s3.region: "), "{err}");
    }

    #[test]
    fn access_keys_come_in_pairs_or_not_at_all() {
        let both = "    accessKeyID: {name: s, key: a}\n    secretAccessKey: {name: s, key: b}\n";
        assert!(s3::key_refs(spec(both).backup_storage.s3.as_ref().unwrap(), "spec.").unwrap().is_some());
        assert!(
            s3::key_refs(spec("").backup_storage.s3.as_ref().unwrap(), "spec.").unwrap().is_none(),
            "neither: the operator's own credentials"
        );
        let one = spec("    accessKeyID: {name: s, key: a}\n");
        let err = validate_spec(&one).unwrap_err().to_string();
        assert!(err.contains("set both accessKeyID and secretAccessKey, or neither"), "{err}");
    }

    #[test]
    fn exactly_one_backend_each_checked_by_its_own_rules() {
        let yaml = |storage: &str| format!("talosControlPlaneRef: {{name: cp}}\nbackupStorage:\n{storage}");
        let spec = |storage: &str| serde_yaml::from_str::<TalosEtcdBackupSpec>(&yaml(storage)).unwrap();
        let err = |storage: &str| validate_spec(&spec(storage)).unwrap_err().to_string();
        assert!(err("  {}\n").contains("spec.backupStorage: no storage: set one of s3, azure and gcs"));
        let both = "  s3: {bucket: my-backups, region: us-east-1}\n  gcs: {bucket: my-backups}\n";
        assert!(err(both).contains("spec.backupStorage: set exactly one of s3, azure and gcs"));
        let azure = "  azure: {account: Acme, container: etcd}\n";
        assert!(err(azure).contains("spec.backupStorage.azure.account: \"Acme\" is not a valid storage account"));
        let azure = "  azure:\n    account: acme\n    container: etcd\n    accountKey: {name: s, key: k}\n    sasToken: {name: s, key: t}\n";
        assert!(err(azure).contains("set accountKey or sasToken, not both"));
        assert!(validate_spec(&spec("  azure: {account: acme, container: etcd-backups}\n")).is_ok());
        let gcs = "  gcs: {bucket: goog-backups}\n";
        assert!(err(gcs).contains("spec.backupStorage.gcs.bucket: \"goog-backups\" is not a valid GCS bucket name"));
        let gcs = "  gcs: {bucket: my-backups, endpoint: \"http://127.0.0.1:4443/x\"}\n";
        assert!(err(gcs).contains("spec.backupStorage.gcs.endpoint: "));
    }
}
