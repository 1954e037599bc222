//! What is in the bucket: list, verify, find the latest, delete; and the checks and clean-ups of
//! uploads.

use teb_pipeline::{CheckedSnapshot, Format, Identity, Storage, UploadRef};

use crate::backup::{FORMAT, KEY_PREFIX, Record, fingerprints_of};
use crate::etcd_db::Scan;
use crate::kit;
use crate::manifest::{self, Manifest};
use crate::report::{self, ContentReport};
use crate::{Error, Settings};

/// A backup found in a bucket; cluster, node and encoding are known for objects this writer stored,
/// the SHA-256 for those stored plain.
#[derive(Clone, Debug)]
pub struct ListedBackup {
    pub key: String,
    /// Bytes stored.
    pub size: u64,
    pub last_modified: jiff::Timestamp,
    pub cluster: Option<String>,
    pub node: Option<String>,
    pub sha256: Option<String>,
    /// `plain`, `zstd`, `age` or `zstd+age`.
    pub encoding: Option<String>,
    /// Fingerprints of the age recipients.
    pub recipients: Vec<String>,
    /// The key of its recovery kit, when one is stored beside it.
    pub kit: Option<String>,
    /// The key of its content report, when one is stored beside it.
    pub report: Option<String>,
    /// The Kubernetes objects its report counts, when the report is stored plain.
    pub objects: Option<u64>,
    /// Its manifest, when stored plain.
    pub manifest: Option<Manifest>,
}

/// The backups under the specification's prefix (of `cluster` only, when given), oldest first. One
/// LIST, then per object a HEAD and a read of its last 32 bytes (the SHA-256 trailer), and a GET of its
/// content report and of its manifest when they are stored plain.
pub async fn list(storage: &Storage, cluster: Option<&str>) -> Result<Vec<ListedBackup>, Error> {
    let mut listed = Vec::new();
    let listing = |cause| Error::Bucket { action: "list the backups in", cause };
    let objects = storage.list(&prefix_of(cluster)).await.map_err(listing)?;
    // Recovery kits, reports and manifests are shown with their snapshot, not as entries of their own.
    let companion = |key: &str| is_kit(key) || is_report(key) || manifest::is_manifest(key);
    let companions: std::collections::BTreeSet<&str> =
        objects.iter().map(|(key, _, _)| key.as_str()).filter(|key| companion(key)).collect();
    let snapshots = objects.iter().filter(|(key, _, _)| !companion(key));
    for (key, size, modified) in snapshots.cloned() {
        let beside = |name: fn(&str, bool) -> String| {
            [true, false].map(|sealed| name(&key, sealed)).into_iter().find(|k| companions.contains(k.as_str()))
        };
        let (kit, report) = (beside(kit::kit_key), beside(report::report_key));
        let manifest = match beside(manifest::manifest_key) {
            Some(found) if !found.ends_with(".age") => manifest::read(storage, &key, &[]).await.ok().flatten(),
            _ => None,
        };
        let objects = match &report {
            Some(found) if !found.ends_with(".age") => {
                report::read(storage, found, &[]).await.ok().flatten().map(|r| r.objects)
            }
            _ => None,
        };
        let stored = storage.stored(&key).await.map_err(listing)?;
        let ours = stored.filter(|s| s.metadata.get("format").map(String::as_str) == Some(FORMAT));
        let meta = |name: &str| ours.as_ref().and_then(|s| s.metadata.get(name).cloned());
        listed.push(ListedBackup {
            cluster: meta("cluster"),
            node: meta("node"),
            sha256: ours.as_ref().and_then(|s| s.sha256.clone()),
            encoding: ours.as_ref().map(|s| s.format.name().to_owned()),
            recipients: ours.as_ref().map(|s| fingerprints_of(&s.metadata)).unwrap_or_default(),
            last_modified: jiff::Timestamp::from_second(modified).unwrap_or_default(),
            kit,
            report,
            objects,
            manifest,
            key,
            size,
        });
    }
    listed.sort_by(|a, b| (a.last_modified, &a.key).cmp(&(b.last_modified, &b.key)));
    Ok(listed)
}

/// A stored snapshot read back: sound, and what is inside it.
#[derive(Clone, Debug)]
pub struct Verified {
    pub snapshot: CheckedSnapshot,
    pub contents: ContentReport,
    /// The time the pass spent on the content report (the scan and the count).
    pub report_time: std::time::Duration,
    /// The bytes the count wrote to its scratch folder (none within its memory budget).
    pub scratch_bytes: u64,
    /// Its manifest, when it has one that could be read (plain, or with the identity), checked
    /// against the snapshot.
    pub manifest: Option<Manifest>,
}

/// Reads the snapshot at `key` back and checks it in one pass: its SHA-256 trailer, its bbolt
/// structure, and the trees of its `key`, `meta` and `members` buckets, which the same pass counts
/// ([`ContentReport`]). A compressed or encrypted one (as its metadata, else its key, says) is decoded
/// on the way, with `identities` when encrypted. Its manifest, when it has one, must record this
/// snapshot.
pub async fn verify(
    storage: &Storage,
    key: &str,
    identities: &[Identity],
    settings: &Settings,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Verified, Error> {
    let failed = |cause| Error::Verify { key: key.to_owned(), cause };
    let format = storage.stored(key).await.map_err(failed)?.map_or_else(|| Format::of_key(key), |s| s.format);
    let mut scan = Scan::new(settings.counter());
    let mut report_time = std::time::Duration::ZERO;
    let mut tap = |db: &[u8]| {
        let started = std::time::Instant::now();
        scan.update(db);
        report_time += started.elapsed();
    };
    let idle = settings.limits.idle_timeout;
    let snapshot = storage.verify(key, format, identities, idle, progress, &mut tap).await.map_err(failed)?;
    let unreadable = |reason| Error::Report { key: key.to_owned(), reason };
    let started = std::time::Instant::now();
    let (scanned, counter) = scan.finish().map_err(unreadable)?;
    let contents = ContentReport::of(&scanned, &counter).map_err(unreadable)?;
    let manifest = manifest::read(storage, key, identities).await?;
    if let Some(reason) =
        manifest.as_ref().and_then(|m| m.mismatch(&snapshot.sha256, snapshot.size, Some(contents.revision)))
    {
        let sealed = key.ends_with(".age");
        return Err(Error::Manifest { key: manifest::manifest_key(key, sealed), reason });
    }
    let scratch_bytes = counter.scratch_bytes();
    Ok(Verified { snapshot, contents, report_time: report_time + started.elapsed(), scratch_bytes, manifest })
}

/// A stored backup verified whole: the snapshot as [`verify`] checks it, then its recovery kit as
/// [`verify_kit`] does (the kit is part of the backup). The snapshot's check, and the kit's key when
/// it has one.
pub async fn verify_backup(
    storage: &Storage,
    key: &str,
    identities: &[Identity],
    settings: &Settings,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(Verified, Option<String>), Error> {
    let verified = verify(storage, key, identities, settings, progress).await?;
    Ok((verified, verify_kit(storage, key, identities).await?))
}

/// The snapshots under the specification's prefix (of `cluster` only, when given; kits, reports and
/// manifests left out), with their objects' last-modified times: one LIST.
pub async fn snapshot_keys(storage: &Storage, cluster: Option<&str>) -> Result<Vec<(String, jiff::Timestamp)>, Error> {
    let listed = storage.list(&prefix_of(cluster)).await;
    let listed = listed.map_err(|cause| Error::Bucket { action: "list the backups in", cause })?;
    let snapshots = listed
        .into_iter()
        .filter(|(key, _, _)| key.rsplit('/').next().is_some_and(|n| n.starts_with("etcd-snapshot-")));
    Ok(snapshots.map(|(key, _, modified)| (key, jiff::Timestamp::from_second(modified).unwrap_or_default())).collect())
}

/// The key of the newest object under the specification's prefix (of `cluster` only, when given).
pub async fn latest_key(storage: &Storage, cluster: Option<&str>) -> Result<Option<String>, Error> {
    let snapshots = snapshot_keys(storage, cluster).await?;
    Ok(snapshots.into_iter().max_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0))).map(|(key, _)| key))
}

/// A recovery kit's key: `…/state-<timestamp>.yaml` (`.age`).
fn is_kit(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.starts_with("state-") && (name.ends_with(".yaml") || name.ends_with(".yaml.age"))
}

/// A content report's key: `…/report-<timestamp>.json` (`.age`).
fn is_report(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.starts_with("report-") && (name.ends_with(".json") || name.ends_with(".json.age"))
}

fn prefix_of(cluster: Option<&str>) -> String {
    match cluster {
        Some(cluster) => format!("{KEY_PREFIX}/{cluster}/"),
        None => format!("{KEY_PREFIX}/"),
    }
}

/// What deleting a snapshot did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Deletion {
    /// Snapshot and recovery kit are gone (or were never there).
    Deleted,
    /// S3 Object Lock keeps the snapshot or its kit until then: nothing was deleted.
    Locked { until: jiff::Timestamp },
}

/// Deletes a stored snapshot (a missing one counts as deleted): retention and `deletionPolicy: Delete`.
/// Its recovery kit, content report and manifest go with it, sealed or plain: none is ever left
/// behind. While any is locked, none is deleted, so a backup is whole or gone.
pub async fn delete_snapshot(storage: &Storage, key: &str) -> Result<Deletion, Error> {
    let keys = [
        key.to_owned(),
        kit::kit_key(key, true),
        kit::kit_key(key, false),
        report::report_key(key, true),
        report::report_key(key, false),
        manifest::manifest_key(key, true),
        manifest::manifest_key(key, false),
    ];
    let deleting = |cause| Error::Bucket { action: "delete a backup from", cause };
    let mut locked = None;
    for key in &keys {
        locked = locked.max(storage.locked_until(key).await.map_err(deleting)?);
    }
    if let Some(until) = locked {
        return Ok(Deletion::Locked { until });
    }
    for key in &keys {
        storage.delete(key).await.map_err(deleting)?;
    }
    Ok(Deletion::Deleted)
}

/// What a deleted backup leaves in the bucket, removed: the uploads its `record` names, those at its
/// key no record names (listed; a listing refused is no reason to keep the backup: the bucket's
/// lifecycle rule takes them then), and with `snapshot` its snapshot and kit, unless Object Lock keeps
/// them ([`delete_snapshot`]).
pub async fn remove_leftovers(storage: &Storage, record: &Record, snapshot: Option<&str>) -> Result<Deletion, Error> {
    if let Some((upload, error)) = abort_uploads(storage, &record.uploads).await.into_iter().next() {
        tracing::warn!(key = %upload.key, %error, "cannot abort an unfinished upload");
        return Err(error);
    }
    if let Some(key) = &record.key
        && let Err(error) = abort_unrecorded(storage, key, &record.uploads).await
    {
        tracing::warn!(%key, %error, "cannot list the unfinished uploads of the last attempt");
    }
    match snapshot {
        Some(key) => delete_snapshot(storage, key).await,
        None => Ok(Deletion::Deleted),
    }
}

/// Opens the recovery kit stored beside the snapshot at `key` with `identities` and checks it: it
/// parses, holds a usable secrets bundle and belongs to the snapshot's cluster. Its key, or None
/// when the backup has no kit.
pub async fn verify_kit(storage: &Storage, key: &str, identities: &[Identity]) -> Result<Option<String>, Error> {
    Ok(read_kit(storage, key, identities).await?.map(|(key, _)| key))
}

/// The recovery kit stored beside the snapshot at `key`, opened with `identities` and checked as
/// [`verify_kit`] does: its key and what it holds.
pub async fn read_kit(
    storage: &Storage,
    key: &str,
    identities: &[Identity],
) -> Result<Option<(String, kit::RecoveryKit)>, Error> {
    let stored = storage.stored(key).await.map_err(|cause| Error::Bucket { action: "read a backup from", cause })?;
    let cluster = stored.as_ref().and_then(|s| s.metadata.get("cluster").cloned()).unwrap_or_else(|| {
        // Objects of other writers: the control plane from the key's folder.
        key.rsplit('/').nth(1).unwrap_or_default().to_owned()
    });
    kit::read(storage, key, &cluster, identities).await
}

/// A cheap check that backups of `controlplane` can be stored, with the permissions a backup uses
/// ([`Storage::probe`] under the backups' prefix: on S3 and GCS a multipart upload started and
/// aborted, on Azure one block staged, committed and deleted). It finds a missing bucket or
/// container, wrong credentials (a wrong key, an expired or read-only SAS), endpoint, region or CA,
/// and leaves nothing behind: a test upload an earlier check left (killed between its start and its
/// abort) is aborted first, found by listing, as only checks use their key.
pub async fn check_storage(storage: &Storage, controlplane: &str) -> Result<(), Error> {
    let key = format!("{KEY_PREFIX}/{controlplane}/.storage-check");
    // Listing needs a permission a check does not: without it, the lifecycle rule takes them.
    if let Err(error) = abort_unrecorded(storage, &key, &[]).await {
        tracing::debug!(%key, %error, "cannot abort earlier storage checks' test uploads");
    }
    storage.probe(&key).await.map_err(Error::Upload)
}

/// Aborts the unfinished uploads at `key` (an attempt key: at its stem, the key up to `.db`, whatever
/// the format) that `recorded` does not name: what an attempt or a storage check cut off between
/// starting its upload and recording or aborting it left, found by listing (S3, GCS; nothing on
/// Azure). Returns their keys.
pub async fn abort_unrecorded(storage: &Storage, key: &str, recorded: &[UploadRef]) -> Result<Vec<String>, Error> {
    let stem = crate::backup::stem(key);
    let mut aborted = Vec::new();
    let listed = storage.unfinished_uploads(stem).await;
    for upload in listed.map_err(|cause| Error::Bucket { action: "list the unfinished uploads in", cause })? {
        // `…-2.db` is another attempt's key: only this stem's own formats are this attempt's.
        let ours = upload.key.strip_prefix(stem).is_some_and(|rest| rest.is_empty() || rest.starts_with(".db"));
        if ours && !recorded.iter().any(|r| r.upload_id == upload.upload_id) {
            storage.abort_upload(&upload).await.map_err(Error::Upload)?;
            aborted.push(upload.key);
        }
    }
    Ok(aborted)
}

/// Aborts uploads recorded by earlier attempts; returns those the store could not abort, with why.
pub async fn abort_uploads(storage: &Storage, uploads: &[UploadRef]) -> Vec<(UploadRef, Error)> {
    let mut left = Vec::new();
    for upload in uploads {
        if let Err(cause) = storage.abort_upload(upload).await {
            left.push((upload.clone(), Error::Bucket { action: "abort an unfinished upload in", cause }));
        }
    }
    left
}
