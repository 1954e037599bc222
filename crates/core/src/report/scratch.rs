//! Where a content report keeps what its memory budget cannot hold: a scratch folder of fixed-size
//! records, one per revision (its leaf's page, its key's 128-bit hash, what [`Counted`] keeps: no
//! key, no value), spread over partitions by the key's hash. Once the scan is over, each partition in
//! turn is read back, its records of leaves the `key` tree holds sorted by key and revision, and each
//! key's newest counted: memory is one partition, about the budget, whatever the database's size.
//! The folder is removed when the scratch is dropped, on every path out; one a killed process left
//! behind is removed by the next operator to start ([`remove_stale`]).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::{Counted, Totals};
use crate::etcd_db::PageSet;

/// The page of a record already known to be in the tree (counted in memory before the scratch).
pub(super) const PLACED: u64 = u64::MAX;
/// A record's bytes: leaf, key hash, revision, value size, resource, namespace, deleted.
const RECORD: usize = 8 + 16 + 8 + 4 + 4 + 4 + 1;
/// At most this many partitions (files open at once).
const MAX_PARTITIONS: u64 = 1024;
/// Each partition's write buffer.
const BUFFER: usize = 8 << 10;

#[derive(Debug)]
pub(super) struct Scratch {
    dir: tempfile::TempDir,
    partitions: Vec<BufWriter<File>>,
    placed: PageSet,
    /// Bytes written.
    pub(super) written: u64,
}

/// The prefix of every scratch folder's name.
const FOLDER_PREFIX: &str = "teb-report-";

/// Removes the scratch folders in `parent` that nothing has written to for `idle` (a count killed
/// with SIGKILL, or its container OOM-killed, leaves its folder; in a pod's emptyDir it outlives the
/// container). A running count writes to its files all along, so its folder is never idle that
/// long. The folders removed.
pub fn remove_stale(parent: &Path, idle: std::time::Duration) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(parent)? {
        let entry = entry?;
        let stale = entry.file_name().to_string_lossy().starts_with(FOLDER_PREFIX)
            && entry.file_type()?.is_dir()
            && last_written(&entry.path())?.elapsed().is_ok_and(|since| since >= idle);
        if stale {
            std::fs::remove_dir_all(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// When a folder or any file in it was last written.
fn last_written(folder: &Path) -> std::io::Result<std::time::SystemTime> {
    let mut newest = std::fs::metadata(folder)?.modified()?;
    for entry in std::fs::read_dir(folder)? {
        newest = newest.max(entry?.metadata()?.modified()?);
    }
    Ok(newest)
}

impl Scratch {
    /// A scratch in a new folder under `parent`, for a database of `db_size` bytes counted within
    /// `budget` bytes. A revision takes at least as many bytes in the database as its record does
    /// here, so partitions of `budget` bytes each hold one partition's records in the budget.
    pub(super) fn create(parent: &Path, db_size: u64, budget: usize) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix(FOLDER_PREFIX).tempdir_in(parent)?;
        let count = (db_size / budget.max(1) as u64 + 1).min(MAX_PARTITIONS);
        let partitions = (0..count)
            .map(|n| Ok(BufWriter::with_capacity(BUFFER, File::create(dir.path().join(format!("{n}")))?)))
            .collect::<std::io::Result<_>>()?;
        Ok(Scratch { dir, partitions, placed: PageSet::default(), written: 0 })
    }

    pub(super) fn folder(&self) -> &Path {
        self.dir.path()
    }

    /// One revision kept of the leaf at page `leaf` ([`PLACED`]: known to be in the tree).
    pub(super) fn write(&mut self, leaf: u64, key: [u64; 2], counted: &Counted) -> std::io::Result<()> {
        let mut record = [0u8; RECORD];
        record[..8].copy_from_slice(&leaf.to_le_bytes());
        record[8..16].copy_from_slice(&key[0].to_le_bytes());
        record[16..24].copy_from_slice(&key[1].to_le_bytes());
        record[24..32].copy_from_slice(&counted.revision.to_le_bytes());
        record[32..36].copy_from_slice(&counted.value_size.to_le_bytes());
        record[36..40].copy_from_slice(&counted.object.0.to_le_bytes());
        record[40..44].copy_from_slice(&counted.object.1.to_le_bytes());
        record[44] = counted.deleted as u8;
        let partition = (key[0] % self.partitions.len() as u64) as usize;
        self.partitions[partition].write_all(&record)?;
        self.written += RECORD as u64;
        Ok(())
    }

    /// The leaf at page `leaf` is in the `key` tree.
    pub(super) fn placed(&mut self, leaf: u64) {
        self.placed.insert(leaf);
    }

    /// Counts each key's newest revision of the leaves placed into `totals`, a partition at a time.
    /// The highest main revision among them.
    pub(super) fn settle(self, totals: &mut Totals) -> std::io::Result<i64> {
        let mut highest = 0;
        for (n, partition) in self.partitions.into_iter().enumerate() {
            // Flushed and closed before it is read back.
            partition.into_inner().map_err(|e| e.into_error())?;
            let path = self.dir.path().join(format!("{n}"));
            let len = std::fs::metadata(&path)?.len() as usize;
            let mut reader = BufReader::with_capacity(BUFFER, File::open(&path)?);
            let mut revisions: Vec<([u64; 2], Counted)> = Vec::with_capacity(len / RECORD);
            let mut record = [0u8; RECORD];
            for _ in 0..len / RECORD {
                reader.read_exact(&mut record)?;
                let word = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().unwrap_or_default());
                let half = |at: usize| u32::from_le_bytes(record[at..at + 4].try_into().unwrap_or_default());
                let leaf = word(0);
                if leaf != PLACED && !self.placed.contains(leaf) {
                    continue;
                }
                let counted = Counted {
                    revision: word(24) as i64,
                    value_size: half(32),
                    object: (half(36), half(40)),
                    deleted: record[44] != 0,
                };
                if leaf != PLACED {
                    highest = highest.max(counted.revision);
                }
                revisions.push(([word(8), word(16)], counted));
            }
            std::fs::remove_file(&path)?;
            // Each key's newest first.
            revisions.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.revision.cmp(&a.1.revision)));
            let mut previous = None;
            for (key, counted) in &revisions {
                if previous != Some(key) {
                    totals.add(counted);
                    previous = Some(key);
                }
            }
        }
        Ok(highest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_folders_left_idle_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let folder = |name: &str, written: Option<std::time::SystemTime>| {
            let path = parent.path().join(name);
            std::fs::create_dir(&path).unwrap();
            let file = File::create(path.join("0")).unwrap();
            if let Some(at) = written {
                file.set_modified(at).unwrap();
                File::open(&path).unwrap().set_modified(at).unwrap();
            }
            path
        };
        let left = folder("teb-report-killed", Some(hour_ago));
        let running = folder("teb-report-running", None);
        let other = folder("someone-else", Some(hour_ago));
        let idle = std::time::Duration::from_secs(600);
        assert_eq!(remove_stale(parent.path(), idle).unwrap(), 1);
        assert!(!left.exists() && running.exists() && other.exists());
    }
}
