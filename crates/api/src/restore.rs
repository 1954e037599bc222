use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{BackupStorage, DNS_SUBDOMAIN, SecretKeyRef, TalosControlPlaneRef};

/// Restores a control plane's etcd from a backup, once: the snapshot streams from S3 into Talos's
/// EtcdRecover on one control-plane node (checked on the way), then Bootstrap with `recover_etcd`.
/// Refused while etcd runs on the node. Only whoever RBAC lets create TalosEtcdRestores can start one.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "talos.alperen.cloud",
    version = "v1alpha1",
    kind = "TalosEtcdRestore",
    namespaced,
    status = "TalosEtcdRestoreStatus",
    shortname = "tebr",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Failed","type":"string","jsonPath":".status.conditions[?(@.type==\"Failed\")].reason"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node"}"#,
    printcolumn = r#"{"name":"Key","type":"string","jsonPath":".status.key","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TalosEtcdRestoreSpec {
    /// The TalosControlPlane (in this namespace) whose etcd is restored.
    pub talos_control_plane_ref: TalosControlPlaneRef,
    /// A Ready TalosEtcdBackup (in this namespace) to restore: its bucket, credentials and key. Set
    /// this, or `backupStorage` and `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_ref: Option<BackupRef>,
    /// Where the backup is, when not named by `backupRef` (for example one taken by another cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_storage: Option<BackupStorage>,
    /// The backup's object key, with `backupStorage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub key: Option<String>,
    /// The control-plane node to recover on (its address); the first Talos endpoint's node when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub node: Option<String>,
    /// Talos API endpoints to use instead of the control plane's (`host` or `host:port`, as
    /// talosctl's `--endpoints`). When etcd is lost a Talos VIP is down too (it is held through an
    /// etcd election): name control-plane node addresses here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 261)))]
    pub endpoints: Vec<String>,
    /// Members of the backup's cluster that are gone for good or will be wiped before they come back
    /// (node address, member name or member ID in hex). A member that does not answer is refused
    /// otherwise: if it returned with its data it would re-form the old cluster beside the restored one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub acknowledge_lost: Vec<String>,
    /// Optional Secret key holding a talosconfig with the os:admin role; when unset a client
    /// certificate with os:admin is minted from the control plane's secrets bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talosconfig_secret_ref: Option<SecretKeyRef>,
    /// How to decrypt an encrypted backup (its key ends in `.age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption: Option<Decryption>,
    /// How long to wait for the recovered etcd member after the recovery bootstrap: hours, minutes
    /// and seconds, such as `20m` or `1h30m`, at most 24h. By default five minutes plus one second per
    /// 16 MiB of database (Talos reads a large snapshot several times before etcd answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 32), regex(pattern = r"^([0-9]{1,6}[hms])+$"))]
    pub timeout: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Decryption {
    pub age: AgeDecryption,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgeDecryption {
    /// Secret key holding an age identity file: `AGE-SECRET-KEY-1…` lines (as `age-keygen` writes
    /// them) of which one belongs to a recipient of the backup.
    pub identity_secret_ref: SecretKeyRef,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct BackupRef {
    /// Name of the TalosEtcdBackup.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TalosEtcdRestoreStatus {
    /// `Progressing` (`RestoreInProgress`), then `Ready` (`RestoreSucceeded`) or `Failed`
    /// (`RestoreRefused`: etcd runs on the node; `RestoreFailed`: anything else).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The node recovered on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The backup's S3 key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Hex SHA-256 of the restored database, verified on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Bytes streamed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// The restored etcd member's ID (hex), once it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// Every other control-plane node's etcd once the restored member was up: whether it joined the
    /// restored cluster, and what to do when it did not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<RestoreMemberStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Another control-plane node's etcd after a restore.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreMemberStatus {
    /// The node's address.
    pub node: String,
    /// Its member name in the backup's cluster, if it was a member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// `joined`, `joining`, `waiting` (its etcd still waits to join), `failed` (its etcd service
    /// failed, for example after Talos's 30-minute join timeout: reboot the node) or `unreachable`.
    pub state: String,
    /// Its member ID (hex) in the restored cluster, once listed there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// What to know or do, with the command to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
