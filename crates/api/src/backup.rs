use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One etcd backup of a Talos control plane into S3. It runs once; a finished backup never runs again.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "talos.alperen.cloud",
    version = "v1alpha1",
    kind = "TalosEtcdBackup",
    namespaced,
    status = "TalosEtcdBackupStatus",
    shortname = "teb",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Failed","type":"string","jsonPath":".status.conditions[?(@.type==\"Failed\")].status","priority":1}"#,
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".status.filename"}"#,
    printcolumn = r#"{"name":"Size","type":"integer","format":"int64","jsonPath":".status.size"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TalosEtcdBackupSpec {
    /// The TalosControlPlane (in the backup's namespace) whose etcd is backed up.
    pub talos_control_plane_ref: TalosControlPlaneRef,
    /// Where the snapshot is stored.
    pub backup_storage: BackupStorage,
    /// Optional Secret key (in the backup's namespace) holding a talosconfig to reach the Talos API.
    /// When unset, credentials come from the TalosControlPlane's status (secrets bundle), else from the
    /// Secret `<controlplane>-talosconfig`, key `<controlplane>.talosconfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talosconfig_secret_ref: Option<SecretKeyRef>,
    /// What happens to the stored snapshot when this TalosEtcdBackup is deleted: `Retain` keeps it in
    /// the bucket; `Delete` deletes it (and aborts any unfinished upload of it) first. Unset: `Retain`
    /// for a backup created by hand, `Delete` for one a TalosEtcdBackupSchedule creates (so that
    /// retention removes the object with the backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "deletion_policy_schema")]
    pub deletion_policy: Option<DeletionPolicy>,
    /// Read the stored snapshot back after the upload and check it (SHA-256 trailer, bbolt structure):
    /// `status.verified`, `status.verifiedAt` and the `Verified` condition record the result. Setting
    /// it on a finished backup verifies it then. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
    /// Compress the snapshot before it is stored (and before it is encrypted): `none` (default) or
    /// `zstd`. The key then ends in `.db.zst` (`.db.zst.age` when encrypted too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "compression_schema")]
    pub compression: Option<Compression>,
    /// zstd level, 1 (fastest) to 19 (smallest); default 1. Only with `compression: zstd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 19))]
    pub compression_level: Option<i32>,
    /// Encrypt the snapshot before it is stored. Unset: stored as Talos sends it (every Kubernetes
    /// Secret of the cluster in plain text in the bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// The recovery kit stored beside the snapshot: the TalosControlPlane's secrets bundle and bundle
    /// config, what new nodes need to come back as this cluster. `Encrypted` (default): sealed to the
    /// `encryption.age` recipients, and none without them; `Plaintext`: also stored unencrypted when
    /// the backup has no recipients, as the upstream operator stores its state backup; `Never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "recovery_kit_schema")]
    pub recovery_kit: Option<RecoveryKitPolicy>,
    /// Import the snapshot already stored at this key instead of taking one: the backup is checked
    /// (a plain one read back whole: trailer, bbolt, its contents counted) and becomes Ready with the
    /// object's true key, size, SHA-256 and time, its kit, report and manifest when they are beside
    /// it; nothing is written to the bucket. A schedule with `importExisting` creates such backups for
    /// the snapshots under its prefix that no TalosEtcdBackup represents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub import_key: Option<String>,
}

/// See [`TalosEtcdBackupSpec::compression`].
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Zstd,
}

fn compression_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["none", "zstd"]})
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Encryption {
    /// age (age-encryption.org/v1) to X25519 recipients: the stored object is a standard age file,
    /// which `age -d -i <identity file>` decrypts. The key then ends in `.age`.
    pub age: AgeEncryption,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgeEncryption {
    /// age X25519 recipients (public keys, `age1…`, as `age-keygen` prints them). Any one of their
    /// identities decrypts the backup. With `recipientsSecretRef`, both lists are used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub recipients: Vec<String>,
    /// Secret key holding recipients, one per line (an age recipients file: `#` comments allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients_secret_ref: Option<SecretKeyRef>,
    /// Secret key holding an age identity (`AGE-SECRET-KEY-1…`) of one of the recipients, used only to
    /// read the backup back when `verify` is set; a verified encrypted backup needs it. Leave it unset
    /// to keep every identity out of the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_secret_ref: Option<SecretKeyRef>,
}

impl TalosEtcdBackupSpec {
    /// The deletion policy of a backup created by hand.
    pub fn deletion_policy(&self) -> DeletionPolicy {
        self.deletion_policy.unwrap_or(DeletionPolicy::Retain)
    }
}

/// See [`TalosEtcdBackupSpec::recovery_kit`].
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RecoveryKitPolicy {
    #[default]
    Encrypted,
    Plaintext,
    Never,
}

fn recovery_kit_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["Encrypted", "Plaintext", "Never"]})
}

/// See [`TalosEtcdBackupSpec::deletion_policy`].
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    Retain,
    Delete,
}

/// A plain string enum: the nullable enum schemars writes for an `Option` is refused by older
/// API servers.
fn deletion_policy_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["Retain", "Delete"]})
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct TalosControlPlaneRef {
    /// Name of the TalosControlPlane.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
}

/// Where backups are stored: exactly one of `s3`, `azure` and `gcs`.
///
/// `oneOf` of `required` rather than a CEL rule: API servers before 1.23 refuse
/// `x-kubernetes-validations`, and `oneOf` says "exactly one" on every version.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[schemars(extend("oneOf" = [
    {"required": ["s3"]},
    {"required": ["azure"]},
    {"required": ["gcs"]}
]))]
pub struct BackupStorage {
    /// S3 or S3-compatible object storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Storage>,
    /// Azure Blob Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureStorage>,
    /// Google Cloud Storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsStorage>,
}

/// The backend a [`BackupStorage`] names.
#[derive(Clone, Copy, Debug)]
pub enum Backend<'a> {
    S3(&'a S3Storage),
    Azure(&'a AzureStorage),
    Gcs(&'a GcsStorage),
}

impl BackupStorage {
    /// The one backend set, or why not (none, or more than one).
    pub fn backend(&self) -> Result<Backend<'_>, String> {
        match (&self.s3, &self.azure, &self.gcs) {
            (Some(s3), None, None) => Ok(Backend::S3(s3)),
            (None, Some(azure), None) => Ok(Backend::Azure(azure)),
            (None, None, Some(gcs)) => Ok(Backend::Gcs(gcs)),
            (None, None, None) => Err("no storage: set one of s3, azure and gcs".into()),
            _ => Err("set exactly one of s3, azure and gcs".into()),
        }
    }

    /// The bucket or container, as messages name it: `bucket "my-etcd-backups"`.
    pub fn describe(&self) -> String {
        match self.backend() {
            Ok(Backend::S3(s3)) => format!("bucket {:?}", s3.bucket),
            Ok(Backend::Azure(azure)) => format!("container {:?} of account {:?}", azure.container, azure.account),
            Ok(Backend::Gcs(gcs)) => format!("GCS bucket {:?}", gcs.bucket),
            Err(_) => "no storage".into(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureStorage {
    /// Storage account name: 3 to 24 lowercase letters and digits.
    #[schemars(length(min = 3, max = 24), regex(pattern = r"^[a-z0-9]{3,24}$"))]
    pub account: String,
    /// Container name (3 to 63 lowercase letters, digits and single hyphens); the container must exist.
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9](-?[a-z0-9])+$"))]
    pub container: String,
    /// The blob service URL when not `https://<account>.blob.core.windows.net`: a sovereign cloud
    /// (`https://<account>.blob.core.usgovcloudapi.net`) or Azurite
    /// (`http://127.0.0.1:10000/devstoreaccount1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), regex(pattern = r"^https?://[^\s?#@]+$"))]
    pub endpoint: Option<String>,
    /// Secret key (in the resource's namespace) holding the storage account key. Or `sasToken`, or
    /// neither: then the operator's own identity is used (Azure workload identity or managed identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_key: Option<SecretKeyRef>,
    /// Secret key (in the resource's namespace) holding a SAS token (`sv=…&sig=…`) for the container,
    /// with read, add, create, write, delete and list permissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sas_token: Option<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcsStorage {
    /// Bucket name, following GCS's naming rules; the bucket must exist.
    #[schemars(length(min = 3, max = 222), regex(pattern = r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"))]
    pub bucket: String,
    /// The service URL when not `https://storage.googleapis.com` (a private endpoint or an emulator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), regex(pattern = r"^https?://[^\s/?#@]+/?$"))]
    pub endpoint: Option<String>,
    /// Secret key (in the resource's namespace) holding a service account's JSON key. Without it the
    /// operator's own credentials are used (GKE workload identity, application default credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_key: Option<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Storage {
    /// Bucket name, following S3's naming rules (3 to 63 lowercase letters, digits, dots and hyphens);
    /// the bucket must exist.
    #[schemars(length(min = 3, max = 63), regex(pattern = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"))]
    pub bucket: String,
    /// Region of the bucket, for example `us-west-2`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"))]
    pub region: String,
    /// Custom endpoint URL for S3-compatible storage (MinIO, Ceph, ...), for example
    /// `https://minio.example.com`: scheme, host and optional port, no path. Path-style requests are
    /// used when it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), regex(pattern = r"^https?://[^\s/?#@]+/?$"))]
    pub endpoint: Option<String>,
    /// Skip TLS certificate verification of the endpoint. Default false.
    #[serde(rename = "insecureSkipTLSVerify", default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_tls_verify: Option<bool>,
    /// Secret key (in the backup's namespace) holding the access key ID. With `secretAccessKey`, or
    /// neither: then the operator's own credentials are used (web identity / IRSA, container or
    /// instance credentials, `AWS_*` environment variables).
    #[serde(rename = "accessKeyID", default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<SecretKeyRef>,
    /// Secret key (in the backup's namespace) holding the secret access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<SecretKeyRef>,
    /// Optional Secret key (in the backup's namespace) holding PEM CA certificates to trust for the
    /// endpoint, in addition to the system roots; for endpoints with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<SecretKeyRef>,
    /// Server-side encryption of every object written: `AES256` (SSE-S3) or `aws:kms` (SSE-KMS, with
    /// `kmsKeyID` or the bucket's default key). Needed where a bucket policy refuses unencrypted writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "sse_schema")]
    pub server_side_encryption: Option<String>,
    /// The KMS key (ID, alias or ARN) for `serverSideEncryption: aws:kms`.
    #[serde(rename = "kmsKeyID", default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^[A-Za-z0-9:/_.+=,@-]+$"))]
    pub kms_key_id: Option<String>,
    /// S3 Object Lock on every object a backup writes (snapshot and recovery kit): nobody can delete
    /// or overwrite them until `retention` has passed. The bucket must have been created with Object
    /// Lock enabled. Retention and `deletionPolicy: Delete` leave a locked backup in place and delete
    /// it once its lock has expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,
    /// How each write's body is checked by the store. `CRC64NVME` or `SHA256`: a flexible-checksum
    /// header (`x-amz-checksum-…`); `MD5`: `Content-MD5`, which every S3 implementation checks and
    /// takes for Object Lock; `None`: no such header, the body's SHA-256 is signed instead (every
    /// S3-compatible store checks it; some refuse flexible-checksum headers). Unset: `CRC64NVME` on AWS
    /// and with `objectLock` (a locked write needs a checksum), `None` on any other `endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "checksum_schema")]
    pub checksum: Option<S3ChecksumAlgorithm>,
}

/// A plain string enum, as [`deletion_policy_schema`].
fn checksum_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["CRC64NVME", "SHA256", "MD5", "None"]})
}

/// See [`S3Storage::checksum`].
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum S3ChecksumAlgorithm {
    #[serde(rename = "CRC64NVME")]
    Crc64Nvme,
    #[serde(rename = "SHA256")]
    Sha256,
    #[serde(rename = "MD5")]
    Md5,
    None,
}

impl S3ChecksumAlgorithm {
    /// As the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            S3ChecksumAlgorithm::Crc64Nvme => "CRC64NVME",
            S3ChecksumAlgorithm::Sha256 => "SHA256",
            S3ChecksumAlgorithm::Md5 => "MD5",
            S3ChecksumAlgorithm::None => "None",
        }
    }
}

/// See [`S3Storage::object_lock`].
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectLock {
    /// `GOVERNANCE`: users with the `s3:BypassGovernanceRetention` permission can still delete a
    /// locked object (a way out of mistakes). `COMPLIANCE`: nobody can, the account's root user
    /// included, until the retention has passed.
    pub mode: ObjectLockMode,
    /// How long each object stays locked after it is written: a number and a unit, `d` (24 hours),
    /// `h`, `m` or `s`, such as `30d`, `36h` or `1d12h`; at most 100 years.
    #[schemars(length(min = 2, max = 64), regex(pattern = r"^([0-9]{1,12}[dhms])+$"))]
    pub retention: String,
}

/// See [`ObjectLock::mode`].
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ObjectLockMode {
    #[serde(rename = "GOVERNANCE")]
    Governance,
    #[serde(rename = "COMPLIANCE")]
    Compliance,
}

impl ObjectLockMode {
    /// As S3 names it.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectLockMode::Governance => "GOVERNANCE",
            ObjectLockMode::Compliance => "COMPLIANCE",
        }
    }
}

fn sse_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["AES256", "aws:kms"]})
}

/// A multipart upload, as S3 names it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadRecord {
    /// The object key the upload writes.
    pub key: String,
    /// S3's upload ID.
    pub upload_id: String,
}

/// A key of a Secret in the same namespace as the object that names it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub key: String,
}

/// Kubernetes object names (RFC 1123 subdomains), as the API server checks them.
pub const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Keys of a Secret's data, as the API server checks them.
pub const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TalosEtcdBackupStatus {
    /// `Progressing`, `Ready` and `Failed`, as the specification's table describes.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The S3 key of the snapshot:
    /// `talos-operator-etcd-backups/<controlplane>/etcd-snapshot-<timestamp>.db`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The key of the recovery kit stored beside the snapshot (`…/state-<timestamp>.yaml.age`, or
    /// `.yaml` when stored plain), as the upstream operator names its state backup; unset when none
    /// was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_filename: Option<String>,
    /// The key of the content report stored beside the snapshot (`…/report-<timestamp>.json`, `.age`
    /// added when the backup is encrypted); unset when none was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_filename: Option<String>,
    /// Key of the backup's manifest beside the snapshot (`…/manifest-<timestamp>.json`, `.age` when
    /// sealed): what the backup is, for a restore years later or another tool (docs/manifest.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_filename: Option<String>,
    /// What the snapshot holds, counted from its own stream while it was stored; unset when it was not
    /// counted (an Event says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<BackupContents>,
    /// The key the running attempt writes, recorded before its upload starts so that an attempt cut
    /// off after its upload completed (the status could not be written) is recognised instead of
    /// being uploaded again. Cleared when the backup finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_key: Option<String>,
    /// Multipart uploads started and neither completed nor aborted yet: the running attempt's (recorded
    /// before its first part is sent) and any whose abort could not reach S3. The operator aborts them
    /// when it next runs (after a crash, too) and keeps retrying until S3 takes the abort.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unfinished_uploads: Vec<UploadRecord>,
    /// Size of the snapshot in bytes (database plus its 32-byte SHA-256 trailer), before any
    /// compression or encryption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// Bytes of the object in the bucket: `size` unless compressed or encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_size: Option<i64>,
    /// How the object is stored: `plain`, `zstd`, `age` or `zstd+age` (also its `encoding` metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// Fingerprints of the age recipients the object is encrypted to: `sha256:` and the first 16 hex
    /// digits of the SHA-256 of the recipient's `age1…` text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipient_fingerprints: Vec<String>,
    /// Hex SHA-256 of the etcd database, as carried in the snapshot's trailer and verified while streaming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The Talos node whose etcd member served the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the backup finished, successfully or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Whether the stored snapshot read back sound (with `spec.verify`); unset until checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    /// When it was read back and checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Time>,
    /// Number of attempts made so far.
    #[serde(default)]
    pub attempts: i32,
    /// After an attempt failed for a passing reason: when the next one starts (the backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A summary of what a backup holds (the full count is the content report beside it).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupContents {
    /// The cluster's etcd revision when the snapshot was taken.
    pub revision: i64,
    /// Live keys in etcd.
    pub keys: i64,
    /// Bytes of their values.
    pub bytes: i64,
    /// Kubernetes objects (keys kube-apiserver writes: `/registry/<resource>/…`).
    pub objects: i64,
    /// The resources with the most objects, at most five, most first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub largest_resources: Vec<ResourceObjects>,
}

/// The objects of one resource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceObjects {
    /// `configmaps`, or `<resource>.<group>` (`widgets.example.com`).
    pub resource: String,
    pub objects: i64,
}
