//! The keys a backup holds, one by one: each key's newest live revision, found by the same one-pass
//! scan as the content report ([`crate::etcd_db::Scan`]), kept only for the keys a [`Filter`] wants.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};

use teb_pipeline::{Format, Identity, Storage};

use crate::etcd_db::{Revision, Revisions, Scan, Scanned};
use crate::report::ObjectKey;
use crate::{Error, Settings};

/// Which keys to list: all of them, or those of a resource, a namespace, a key prefix.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `configmaps`, or `<resource>.<group>` (`widgets.example.com`).
    pub resource: Option<String>,
    /// A namespace; `""` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// The start of the key (`/registry/secrets/`).
    pub prefix: Option<String>,
    /// One object's name.
    pub name: Option<String>,
}

impl Filter {
    fn wants(&self, key: &[u8], object: Option<&ObjectKey>) -> bool {
        let prefix = self.prefix.as_ref().is_none_or(|p| key.starts_with(p.as_bytes()));
        let resource = self.resource.as_ref().is_none_or(|r| object.is_some_and(|o| o.resource == *r));
        let namespace = self.namespace.as_ref().is_none_or(|n| object.is_some_and(|o| o.namespace == *n));
        let name = self.name.as_ref().is_none_or(|n| object.is_some_and(|o| o.name == *n));
        prefix && resource && namespace && name
    }
}

/// One live key of a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub key: String,
    /// The object kube-apiserver keeps there, when it is one of its keys.
    pub object: Option<ObjectKey>,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// Bytes of its value.
    pub size: u64,
    /// What the [`Listing`] kept of the value.
    pub content: Content,
}

/// What a [`Listing`] keeps of each value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Nothing: keys, sizes and revisions only.
    Nothing,
    /// Its SHA-256, to tell a changed value from an unchanged one.
    Digest([u8; 32]),
    /// The value itself, as etcd holds it.
    Value(Vec<u8>),
}

/// Which [`Content`] a [`Listing`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    Nothing,
    Digests,
    Values,
}

/// Keeps the revisions of the keys a [`Filter`] wants, the newest per key, as a [`Scan`] hands them
/// over; past its budget it keeps nothing more and [`Listing::keys`] says so.
pub struct Listing {
    filter: Filter,
    keep: Keep,
    latest: HashMap<Vec<u8>, (i64, bool, StoredKey)>,
    room: usize,
    full: bool,
}

impl Listing {
    /// A listing of what `filter` wants, keeping `keep` of each value, within `budget` bytes.
    pub fn new(filter: Filter, keep: Keep, budget: usize) -> Self {
        Listing { filter, keep, latest: HashMap::new(), room: budget, full: false }
    }

    /// The live keys, in key order; or, past the budget, what to do.
    pub fn keys(self) -> Result<Vec<StoredKey>, String> {
        if self.full {
            return Err("the keys asked for take more than the memory budget: narrow them (a resource, a \
                 namespace, a prefix), or raise --report-memory-mib"
                .into());
        }
        let live = self.latest.into_values().filter(|(_, deleted, _)| !deleted);
        let mut keys: Vec<StoredKey> = live.map(|(_, _, stored)| stored).collect();
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(keys)
    }
}

impl Revisions for Listing {
    type Kept = (i64, bool, StoredKey);

    fn keep(&mut self, revision: &Revision<'_>) -> Option<Self::Kept> {
        let object = ObjectKey::parse(revision.key);
        if !self.filter.wants(revision.key, object.as_ref()) {
            return None;
        }
        // The key twice (here and as the map's key), the entry's own size, and what it keeps of the
        // value (every revision of a key until the newest is known: a key's history counts).
        let content = match self.keep {
            Keep::Nothing => 0,
            Keep::Digests => 32,
            Keep::Values => revision.value.len(),
        };
        let Some(room) = self.room.checked_sub(2 * revision.key.len() + 160 + content) else {
            self.full = true;
            return None;
        };
        self.room = room;
        let stored = StoredKey {
            key: String::from_utf8_lossy(revision.key).into_owned(),
            object,
            create_revision: revision.create_revision,
            mod_revision: revision.mod_revision,
            size: revision.value.len() as u64,
            content: match self.keep {
                Keep::Nothing => Content::Nothing,
                Keep::Digests => Content::Digest(Sha256::digest(revision.value).into()),
                Keep::Values => Content::Value(revision.value.to_vec()),
            },
        };
        Some((revision.main, revision.deleted, stored))
    }

    fn add(&mut self, kept: Self::Kept) {
        let newer = self.latest.get(kept.2.key.as_bytes()).is_none_or(|(known, _, _)| *known < kept.0);
        if newer {
            self.latest.insert(kept.2.key.clone().into_bytes(), kept);
        }
    }

    fn exhausted(&self) -> bool {
        self.full
    }
}

/// The live keys `listing` wants of the snapshot at `key`, in key order: the object read once,
/// decoded on the way when compressed or encrypted (with `identities`). `progress` gets the
/// snapshot's bytes read so far.
pub async fn list(
    storage: &Storage,
    key: &str,
    identities: &[Identity],
    settings: &Settings,
    listing: Listing,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Vec<StoredKey>, Error> {
    let (_, listing) = scan_stored(storage, key, identities, settings, listing, progress).await?;
    listing.keys().map_err(|reason| Error::Report { key: key.to_owned(), reason })
}

/// The snapshot at `key` read once into a [`Scan`] for `reader`: decoded on the way when compressed
/// or encrypted (as its metadata, else its key, says; with `identities`).
pub async fn scan_stored<R: Revisions>(
    storage: &Storage,
    key: &str,
    identities: &[Identity],
    settings: &Settings,
    reader: R,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(Scanned, R), Error> {
    use futures::StreamExt as _;
    let failed = |cause| Error::Verify { key: key.to_owned(), cause };
    let format = storage.stored(key).await.map_err(failed)?.map_or_else(|| Format::of_key(key), |s| s.format);
    let mut stream =
        storage.read_snapshot(key, format, identities, settings.limits.idle_timeout).await.map_err(failed)?;
    let mut scan = Scan::new(reader);
    let mut read = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(failed)?;
        scan.update(&chunk);
        read += chunk.len() as u64;
        progress(read);
    }
    scan.finish().map_err(|reason| Error::Report { key: key.to_owned(), reason })
}
