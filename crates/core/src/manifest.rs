//! The manifest: what a stored backup is, written beside its snapshot as
//! `…/manifest-<timestamp>.json` (sealed to the backup's age recipients as `….json.age` when the
//! backup is encrypted), so that a restore years later, or another tool, need not guess. Its format
//! is documented in docs/manifest.md; [`FORMAT_VERSION`] changes when a field changes meaning.

use serde::{Deserialize, Serialize};
use teb_pipeline::codec::{self, Identity, Recipient};
use teb_pipeline::{Format, Storage};

use crate::Error;

/// The manifest's `format`.
pub const FORMAT: &str = "talos-etcd-backup-manifest";
/// The manifest's `formatVersion`.
pub const FORMAT_VERSION: u32 = 1;

/// A backup's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// The writer: `talos-etcd-backup <version>`.
    pub tool: String,
    /// The control plane (the key's folder) and, when known, the Talos cluster's name.
    pub control_plane: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Talos and Kubernetes versions as the control plane's configuration records them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub talos_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// etcd's version and the member that served the snapshot, as Talos's EtcdStatus reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// The node that served the snapshot.
    pub node: String,
    /// The cluster's revision and the database's size, when the backup's contents were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_size: Option<u64>,
    pub snapshot: SnapshotFacts,
    /// The recovery kit's and the content report's keys, when stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// When the backup was completed (RFC 3339).
    pub time: String,
}

/// The stored snapshot: where, how big, how encoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotFacts {
    pub key: String,
    /// SHA-256 of the database (the snapshot less its trailer), hex; unknown for a snapshot adopted
    /// from an interrupted attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Bytes of the snapshot (database and trailer) and bytes stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub stored_size: u64,
    /// `none` or `zstd`.
    pub compression: String,
    /// The age recipients' fingerprints (SHA-256 of the recipient, never a key), when encrypted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub age_recipients: Vec<String>,
}

impl SnapshotFacts {
    /// The snapshot's format as the facts record it.
    pub fn format(&self) -> Format {
        Format { zstd: self.compression == "zstd", age: !self.age_recipients.is_empty() }
    }
}

/// The manifest's key beside the snapshot at `snapshot_key`: `…/manifest-<timestamp>.json`, `.age`
/// added when sealed.
pub fn manifest_key(snapshot_key: &str, sealed: bool) -> String {
    crate::backup::companion_key(snapshot_key, "manifest-", ".json", sealed)
}

/// Whether `key` names a manifest.
pub fn is_manifest(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.starts_with("manifest-") && (name.ends_with(".json") || name.ends_with(".json.age"))
}

/// Stores `manifest` beside its snapshot, sealed to `recipients` when there are any: its key.
pub async fn store(storage: &Storage, manifest: &Manifest, recipients: &[Recipient]) -> Result<String, Error> {
    let key = &manifest.snapshot.key;
    let json =
        serde_json::to_vec_pretty(manifest).map_err(|e| Error::Manifest { key: key.clone(), reason: e.to_string() })?;
    let action = "store a manifest in";
    crate::backup::store_account(storage, key, manifest_key, (json, FORMAT), recipients, action).await
}

/// The manifest beside the snapshot at `snapshot_key`, if any: plain, or sealed and opened with
/// `identities` (a sealed one with no identity given is `None`).
pub async fn read(storage: &Storage, snapshot_key: &str, identities: &[Identity]) -> Result<Option<Manifest>, Error> {
    // The snapshot's own kind first: `x.db` and `x.db.age` name the same manifest but for `.age`.
    let sealed_first = snapshot_key.ends_with(".age");
    for sealed in [sealed_first, !sealed_first] {
        if sealed && identities.is_empty() {
            continue;
        }
        let key = manifest_key(snapshot_key, sealed);
        let failed = |reason: String| Error::Manifest { key: key.clone(), reason };
        let read = storage.get(&key).await.map_err(|cause| Error::Bucket { action: "read a manifest from", cause });
        let Some(bytes) = read? else {
            continue;
        };
        let plain =
            if sealed { codec::open(&bytes, identities).map_err(|e| failed(e.to_string()))? } else { bytes.to_vec() };
        let manifest: Manifest = serde_json::from_slice(&plain).map_err(|e| failed(format!("not a manifest: {e}")))?;
        if manifest.format != FORMAT || manifest.format_version > FORMAT_VERSION {
            return Err(failed(format!(
                "format {} version {}: this tool reads {FORMAT} up to version {FORMAT_VERSION}",
                manifest.format, manifest.format_version
            )));
        }
        // Another format of the same name's (an older bucket, written before keys were kept apart
        // by their stem), found by name: not this snapshot's. Compared by file name, so a bucket
        // moved under another prefix still finds its own.
        let name = |key: &str| key.rsplit('/').next().unwrap_or(key).to_owned();
        if name(&manifest.snapshot.key) != name(snapshot_key) {
            continue;
        }
        return Ok(Some(manifest));
    }
    Ok(None)
}

impl Manifest {
    /// Why the snapshot read back is not the one this manifest records, if it is not: its SHA-256,
    /// size and (when counted) revision must be the recorded ones.
    pub fn mismatch(&self, sha256: &str, size: u64, revision: Option<i64>) -> Option<String> {
        let recorded = &self.snapshot;
        if let Some(recorded) = recorded.sha256.as_deref().filter(|r| *r != sha256) {
            return Some(format!("it records SHA-256 {recorded}, the snapshot has {sha256}"));
        }
        if let Some(recorded) = recorded.size.filter(|r| *r != size) {
            return Some(format!("it records {recorded} bytes, the snapshot has {size}"));
        }
        match (self.revision, revision) {
            (Some(recorded), Some(found)) if recorded != found => {
                Some(format!("it records revision {recorded}, the snapshot is at {found}"))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_key_sits_beside_the_snapshot() {
        let snapshot = "talos-operator-etcd-backups/cp/etcd-snapshot-2026-12-06T10-00-00Z.db.zst.age";
        assert_eq!(
            manifest_key(snapshot, true),
            "talos-operator-etcd-backups/cp/manifest-2026-12-06T10-00-00Z.json.age"
        );
        assert!(is_manifest(&manifest_key(snapshot, false)) && is_manifest(&manifest_key(snapshot, true)));
        assert!(!is_manifest(snapshot));
    }
}
