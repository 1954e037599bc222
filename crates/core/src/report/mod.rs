//! What is inside a backup: its database scanned ([`crate::etcd_db::Scan`]) and counted as Kubernetes
//! sees it. kube-apiserver stores an object at `/registry/<resource>/<namespace>/<name>` (cluster
//! scoped: `/registry/<resource>/<name>`), a resource of another group at
//! `/registry/<group>/<resource>/…` (k8s.io/apiserver storage: `ResourcePrefix`); a few core
//! resources keep older prefixes (`services/specs`, `services/endpoints`, `minions`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use teb_pipeline::{Identity, Recipient, Storage, codec};

use crate::Error;
use crate::etcd_db::{Revision, Revisions, Scanned};

mod scratch;

pub use scratch::remove_stale as remove_stale_scratch;

use scratch::{PLACED, Scratch};

/// The format name a stored report carries.
const REPORT_FORMAT: &str = "talos-etcd-backup-content-report/v1";

/// A report as stored beside its snapshot: its format's name, then the report.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredReport {
    format: String,
    #[serde(flatten)]
    report: ContentReport,
}

/// The report's key beside the snapshot at `snapshot_key`: `…/report-<timestamp>.json`, `.age`
/// added when sealed.
pub fn report_key(snapshot_key: &str, sealed: bool) -> String {
    crate::backup::companion_key(snapshot_key, "report-", ".json", sealed)
}

/// Stores `report` beside the snapshot at `snapshot_key`, sealed to `recipients` when there are any
/// (resource and namespace names are the cluster's business, as the snapshot is). Returns its key.
pub async fn store(
    storage: &Storage,
    snapshot_key: &str,
    report: &ContentReport,
    recipients: &[Recipient],
) -> Result<String, Error> {
    let stored = StoredReport { format: REPORT_FORMAT.to_owned(), report: report.clone() };
    let json = serde_json::to_vec_pretty(&stored)
        .map_err(|e| Error::Report { key: snapshot_key.into(), reason: e.to_string() })?;
    let action = "store a content report in";
    crate::backup::store_account(storage, snapshot_key, report_key, (json, REPORT_FORMAT), recipients, action).await
}

/// The report stored at `key` ([`report_key`]), if any, opened with `identities` when sealed.
pub async fn read(storage: &Storage, key: &str, identities: &[Identity]) -> Result<Option<ContentReport>, Error> {
    let failed = |reason: String| Error::Report { key: key.to_owned(), reason };
    let read = storage.get(key).await.map_err(|cause| Error::Bucket { action: "read a content report from", cause });
    let Some(bytes) = read? else {
        return Ok(None);
    };
    let plain = if key.ends_with(".age") {
        codec::open(&bytes, identities).map_err(|e| failed(e.to_string()))?
    } else {
        bytes.to_vec()
    };
    let stored: StoredReport = serde_json::from_slice(&plain).map_err(|e| failed(e.to_string()))?;
    if stored.format != REPORT_FORMAT {
        return Err(failed(format!("its format is {:?}, not {REPORT_FORMAT:?}", stored.format)));
    }
    Ok(Some(stored.report))
}

/// A backup's contents, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentReport {
    /// The cluster's revision when the snapshot was taken.
    pub revision: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted_revision: Option<i64>,
    /// Live keys, and the bytes of their values.
    pub keys: u64,
    pub bytes: u64,
    /// The database file's size (live data plus free pages and history).
    pub db_size: u64,
    /// Kubernetes objects, of every resource.
    pub objects: u64,
    /// By resource (`configmaps`, `widgets.example.com`), most objects first.
    pub resources: Vec<ResourceCount>,
}

/// The objects of one resource.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceCount {
    pub resource: String,
    pub objects: u64,
    pub bytes: u64,
    /// Objects by namespace; cluster-scoped ones under "".
    pub namespaces: BTreeMap<String, u64>,
}

/// Where kube-apiserver keeps one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    /// `configmaps`, or `<resource>.<group>` for another group than the core and the legacy ones.
    pub resource: String,
    /// Empty for a cluster-scoped object.
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// The object `key` names, when it is a key kube-apiserver writes for one.
    pub fn parse(key: &[u8]) -> Option<Self> {
        let key = std::str::from_utf8(key).ok()?.strip_prefix("/registry/")?;
        let segments: Vec<&str> = key.split('/').collect();
        let (resource, rest) = match segments.as_slice() {
            ["services", "specs", rest @ ..] => ("services".to_owned(), rest),
            ["services", "endpoints", rest @ ..] => ("endpoints".to_owned(), rest),
            ["minions", rest @ ..] => ("nodes".to_owned(), rest),
            [group, resource, rest @ ..] if group.contains('.') => (format!("{resource}.{group}"), rest),
            [resource, rest @ ..] => ((*resource).to_owned(), rest),
            [] => return None,
        };
        let (namespace, name) = match rest {
            [name] => (String::new(), (*name).to_owned()),
            [namespace, name] => ((*namespace).to_owned(), (*name).to_owned()),
            _ => return None,
        };
        (!name.is_empty()).then_some(ObjectKey { resource, namespace, name })
    }
}

/// Counts what the `key` bucket holds as the scan hands over its revisions, in any order: a key's
/// highest revision is what etcd serves, a deletion removes it. It keeps 40 bytes per revision (its
/// key hashed to 128 bits, its resource and namespace numbered), not the keys nor the values, and
/// charges [`REVISION_COST`] against its budget. Past it, given a scratch folder, it writes what it
/// keeps there and counts it at the end a part at a time ([`scratch`]); without one, or when the
/// folder cannot be written, it keeps nothing more and the report says why ([`ContentReport::of`]).
#[derive(Debug)]
pub struct Counter {
    latest: HashMap<[u64; 2], Counted>,
    resources: Names,
    namespaces: Names,
    /// Revisions it may still keep.
    room: usize,
    /// Whether a revision came past the budget.
    full: bool,
    budget: usize,
    scratch_in: Option<PathBuf>,
    scratch: Option<Scratch>,
    /// Why the scratch failed.
    scratch_failed: Option<String>,
    scratch_bytes: u64,
    /// What it counted, once its scan has finished.
    settled: Option<Totals>,
}

/// The default budget: 32 MiB.
pub const DEFAULT_BUDGET: usize = 32 << 20;

/// The memory one revision costs while a database is scanned and counted, all of it: its entry in
/// the scan's arena, its share of the leaf that held it, its key's entry here (measured with
/// `bench/report.py --values small`, where a leaf holds one revision or two, the worst case).
pub const REVISION_COST: usize = 192;

impl Default for Counter {
    fn default() -> Self {
        Counter::with_budget(DEFAULT_BUDGET)
    }
}

impl Counter {
    /// A counter that keeps at most `bytes` of revisions in memory.
    pub fn with_budget(bytes: usize) -> Self {
        let room = bytes / REVISION_COST;
        Counter {
            latest: HashMap::new(),
            resources: Names::default(),
            namespaces: Names::default(),
            room,
            full: false,
            budget: bytes,
            scratch_in: None,
            scratch: None,
            scratch_failed: None,
            scratch_bytes: 0,
            settled: None,
        }
    }

    /// Past its budget, the counter goes on with a scratch folder made in `folder`.
    pub fn with_scratch(self, folder: PathBuf) -> Self {
        Counter { scratch_in: Some(folder), ..self }
    }

    /// The bytes it wrote to a scratch folder (none when the budget sufficed).
    pub fn scratch_bytes(&self) -> u64 {
        self.scratch_bytes
    }

    /// The revision's key and what is kept of it.
    fn counted(&mut self, revision: &Revision<'_>) -> ([u64; 2], Counted) {
        let object = match ObjectKey::parse(revision.key) {
            Some(o) if !revision.deleted => (self.resources.number(o.resource), self.namespaces.number(o.namespace)),
            _ => (NOT_AN_OBJECT, NOT_AN_OBJECT),
        };
        let value_size = revision.value.len().min(u32::MAX as usize) as u32;
        (key_hash(revision.key), Counted { revision: revision.main, value_size, object, deleted: revision.deleted })
    }

    /// Writes a record to the scratch; the first failure ends it.
    fn write(&mut self, leaf: u64, (key, counted): ([u64; 2], Counted)) {
        let Some(scratch) = self.scratch.as_mut() else { return };
        if let Err(e) = scratch.write(leaf, key, &counted) {
            self.scratch_failed = Some(format!("writing to {}: {e}", scratch.folder().display()));
            self.scratch = None;
        }
    }
}

/// One revision of a key, as the counter keeps it.
#[derive(Clone, Copy, Debug)]
pub struct Counted {
    revision: i64,
    value_size: u32,
    /// Resource and namespace, numbered; [`NOT_AN_OBJECT`] for a key kube-apiserver did not write.
    object: (u32, u32),
    deleted: bool,
}

const NOT_AN_OBJECT: u32 = u32::MAX;

/// Names numbered in the order they come.
#[derive(Debug, Default)]
struct Names {
    numbers: HashMap<String, u32>,
    names: Vec<String>,
}

impl Names {
    fn number(&mut self, name: String) -> u32 {
        let next = self.names.len() as u32;
        *self.numbers.entry(name).or_insert_with_key(|name| {
            self.names.push(name.clone());
            next
        })
    }
}

/// A key's identity: 128 bits of two SipHash runs (a collision among a billion keys has odds of
/// about 1 in 10^20).
fn key_hash(key: &[u8]) -> [u64; 2] {
    use std::hash::Hasher as _;
    let mut first = std::hash::DefaultHasher::new();
    first.write(key);
    let mut second = std::hash::DefaultHasher::new();
    second.write_u8(0x5a);
    second.write(key);
    [first.finish(), second.finish()]
}

impl Revisions for Counter {
    type Kept = ([u64; 2], Counted);

    fn keep(&mut self, revision: &Revision<'_>) -> Option<Self::Kept> {
        // Every revision seen counts, kept whole or not: the budget bounds the memory, whatever
        // is later dropped or replaced.
        if self.scratch.is_none() {
            match self.room.checked_sub(1) {
                Some(room) => self.room = room,
                None => {
                    self.full = true;
                    // With a scratch to come, the rest of this leaf is kept (the scan hands it over
                    // at the next page).
                    if self.scratch_in.is_none() || self.scratch_failed.is_some() {
                        return None;
                    }
                }
            }
        }
        Some(self.counted(revision))
    }

    fn exhausted(&self) -> bool {
        self.full && self.scratch.is_none()
    }

    fn add(&mut self, kept: Self::Kept) {
        if self.scratch.is_some() {
            return self.write(PLACED, kept);
        }
        let (key, counted) = kept;
        let newer = self.latest.get(&key).is_none_or(|known| known.revision < counted.revision);
        if newer {
            self.latest.insert(key, counted);
        }
    }

    fn set_aside(&mut self, db_size: u64) -> bool {
        let Some(folder) = self.scratch_in.as_ref().filter(|_| self.scratch_failed.is_none()) else {
            return false;
        };
        match Scratch::create(folder, db_size, self.budget) {
            Ok(scratch) => self.scratch = Some(scratch),
            Err(e) => {
                self.scratch_failed = Some(format!("making a folder in {}: {e}", folder.display()));
                return false;
            }
        }
        for kept in std::mem::take(&mut self.latest) {
            self.write(PLACED, kept);
        }
        self.scratch.is_some()
    }

    fn aside(&mut self, leaf: u64, kept: Self::Kept) {
        self.write(leaf, kept);
    }

    fn placed(&mut self, leaf: u64) {
        if let Some(scratch) = self.scratch.as_mut() {
            scratch.placed(leaf);
        }
    }

    fn settle(&mut self) -> Result<i64, String> {
        let mut totals = Totals::default();
        let Some(scratch) = self.scratch.take() else {
            if self.scratch_failed.is_none() {
                std::mem::take(&mut self.latest).values().for_each(|counted| totals.add(counted));
                self.settled = Some(totals);
            }
            return Ok(0);
        };
        let folder = scratch.folder().to_owned();
        self.scratch_bytes = scratch.written;
        match scratch.settle(&mut totals) {
            Ok(highest) => {
                self.settled = Some(totals);
                Ok(highest)
            }
            // The database is read; only its count failed.
            Err(e) => {
                self.scratch_failed = Some(format!("reading back {}: {e}", folder.display()));
                Ok(0)
            }
        }
    }
}

/// Live keys counted: in all, and by resource and namespace (numbered).
#[derive(Debug, Default)]
struct Totals {
    keys: u64,
    bytes: u64,
    objects: u64,
    resources: BTreeMap<u32, (ResourceCount, BTreeMap<u32, u64>)>,
}

impl Totals {
    /// A key's newest revision.
    fn add(&mut self, counted: &Counted) {
        if counted.deleted {
            return;
        }
        self.keys += 1;
        self.bytes += counted.value_size as u64;
        let (resource, namespace) = counted.object;
        if resource == NOT_AN_OBJECT {
            return;
        }
        self.objects += 1;
        let (count, namespaces) = self.resources.entry(resource).or_default();
        count.objects += 1;
        count.bytes += counted.value_size as u64;
        *namespaces.entry(namespace).or_default() += 1;
    }
}

impl ContentReport {
    /// The report of what a finished scan found and its counter counted, or why there is none.
    pub fn of(scanned: &Scanned, counter: &Counter) -> Result<Self, String> {
        if let Some(reason) = &counter.scratch_failed {
            return Err(format!(
                "the database holds more revisions than a report of {} MiB counts in memory, and its \
                 scratch folder failed ({reason}); give it room with --report-scratch-dir",
                counter.budget >> 20
            ));
        }
        // Not settled: its scan gave up, past the budget with no scratch folder.
        let totals = counter.settled.as_ref().ok_or_else(|| {
            format!(
                "the database holds more revisions than a report of {} MiB counts ({}) and no scratch \
                 folder was given; count it with `talos-etcd-backup verify --report-memory-mib` and a \
                 larger budget, or --report-scratch-dir",
                counter.budget >> 20,
                counter.budget / REVISION_COST
            )
        })?;
        let name = |names: &Names, number: &u32| names.names[*number as usize].clone();
        let mut resources: Vec<ResourceCount> = totals
            .resources
            .iter()
            .map(|(resource, (count, namespaces))| ResourceCount {
                resource: name(&counter.resources, resource),
                namespaces: namespaces.iter().map(|(n, objects)| (name(&counter.namespaces, n), *objects)).collect(),
                ..count.clone()
            })
            .collect();
        resources.sort_by(|a, b| b.objects.cmp(&a.objects).then_with(|| a.resource.cmp(&b.resource)));
        Ok(ContentReport {
            revision: scanned.revision,
            compacted_revision: scanned.compacted,
            keys: totals.keys,
            bytes: totals.bytes,
            db_size: scanned.db_size,
            objects: totals.objects,
            resources,
        })
    }

    /// The objects of `resource` (in `namespace`, when given).
    pub fn count(&self, resource: &str, namespace: Option<&str>) -> u64 {
        let Some(count) = self.resources.iter().find(|r| r.resource == resource) else {
            return 0;
        };
        match namespace {
            Some(namespace) => count.namespaces.get(namespace).copied().unwrap_or(0),
            None => count.objects,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(key: &str) -> Option<(String, String, String)> {
        ObjectKey::parse(key.as_bytes()).map(|o| (o.resource, o.namespace, o.name))
    }

    fn object(resource: &str, namespace: &str, name: &str) -> Option<(String, String, String)> {
        Some((resource.to_owned(), namespace.to_owned(), name.to_owned()))
    }

    #[test]
    fn keys_name_their_resource_namespace_and_object() {
        assert_eq!(parsed("/registry/configmaps/default/cm-1"), object("configmaps", "default", "cm-1"));
        assert_eq!(parsed("/registry/namespaces/kube-system"), object("namespaces", "", "kube-system"));
        assert_eq!(parsed("/registry/services/specs/default/kubernetes"), object("services", "default", "kubernetes"));
        assert_eq!(
            parsed("/registry/services/endpoints/default/kubernetes"),
            object("endpoints", "default", "kubernetes")
        );
        assert_eq!(parsed("/registry/minions/cp-1"), object("nodes", "", "cp-1"));
        assert_eq!(parsed("/registry/example.com/widgets/team-a/w-1"), object("widgets.example.com", "team-a", "w-1"));
        assert_eq!(
            parsed("/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com"),
            object("customresourcedefinitions.apiextensions.k8s.io", "", "widgets.example.com")
        );
        for other in ["compact_rev_key", "/registry/", "/registry/masterleases/a/b/c", "/other/x"] {
            assert_eq!(parsed(other), None, "{other}");
        }
    }
}
