//! An offline reader of etcd's database, the bbolt file a snapshot is (without its 32-byte trailer).
//! What etcd keeps where (etcd v3.5 server/storage/schema and
//! server/etcdserver/api/membership/storev2.go / store.go): bucket `members` maps a member's ID in hex
//! to its JSON (`id`, `peerURLs`, `name`, `clientURLs`, `isLearner`); `members_removed` the IDs of
//! removed members; `meta` the consistent index and the last compaction; `key` every revision
//! compaction left (server/storage/mvcc: the bucket's key is the revision, 8 bytes of main revision
//! big-endian, `_`, 8 bytes of sub revision, and a `t` for a deletion; its value an `mvccpb.KeyValue`).
//!
//! Two ways in: [`EtcdDb`] walks one bucket's B+tree from the newest meta page with random access
//! (a few range reads of a plain stored snapshot find its members), and [`Scan`] reads the whole
//! database once, in file order, from any stream (the object's GET, its decoded stream, the backup's
//! own stream while it uploads) and keeps only the pages the trees reach.

use std::future::Future;

use teb_pipeline::Storage;
use teb_pipeline::bbolt::{BRANCH, LEAF, Meta, PAGE_HEADER, parse_meta};

pub mod scan;

pub use scan::{Revision, Revisions, Scan, Scanned};

/// A bucket value's flag in a leaf element (bbolt's `bucketLeafFlag`).
pub(crate) const BUCKET_LEAF: u32 = 0x01;
/// A page whose tree is deeper than this is damaged (bbolt's trees are a few levels deep).
const MAX_DEPTH: usize = 64;

/// Page ids, one bit each.
#[derive(Debug, Default)]
pub(crate) struct PageSet(Vec<u64>);

impl PageSet {
    pub(crate) fn insert(&mut self, id: u64) {
        let word = (id / 64) as usize;
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (id % 64);
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.0.get((id / 64) as usize).is_some_and(|word| word & (1 << (id % 64)) != 0)
    }
}

/// Where [`EtcdDb`] reads the database's bytes from: a plain snapshot in the bucket (range reads, no
/// download), or bytes in memory.
pub trait PageSource: Sync {
    /// `len` bytes at `offset`; fewer only at the end.
    fn read_at(&self, offset: u64, len: usize) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}

impl PageSource for [u8] {
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let start = (offset as usize).min(self.len());
        Ok(self[start..(start + len).min(self.len())].to_vec())
    }
}

/// A plain snapshot stored in a bucket, read in place with range requests of a whole chunk at a time
/// (bbolt writes a tree's pages mostly in order, so a walk reads on where it read last), the last
/// [`CACHED_CHUNKS`] chunks kept: memory stays bounded, and a walk costs a request per chunk, not per page.
pub struct StoredObject<'a> {
    storage: &'a Storage,
    key: &'a str,
    chunks: std::sync::Mutex<std::collections::VecDeque<(u64, bytes::Bytes)>>,
}

/// The size of a ranged read.
const CHUNK: u64 = 1 << 20;
/// Chunks kept, newest last: 16 MiB.
const CACHED_CHUNKS: usize = 16;

impl<'a> StoredObject<'a> {
    pub fn new(storage: &'a Storage, key: &'a str) -> Self {
        StoredObject { storage, key, chunks: Default::default() }
    }

    /// The chunk that starts at `start`, from the cache or the bucket.
    async fn chunk(&self, start: u64) -> Result<bytes::Bytes, String> {
        let cached = self.chunks.lock().expect("chunk cache lock").iter().find(|(at, _)| *at == start).cloned();
        if let Some((_, bytes)) = cached {
            return Ok(bytes);
        }
        // The last chunk comes shorter: a range may end past the object's end.
        let bytes = self.storage.get_range(self.key, start..start + CHUNK).await.map_err(|e| e.to_string())?;
        let mut chunks = self.chunks.lock().expect("chunk cache lock");
        if chunks.len() == CACHED_CHUNKS {
            chunks.pop_front();
        }
        chunks.push_back((start, bytes.clone()));
        Ok(bytes)
    }
}

impl PageSource for StoredObject<'_> {
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut read = Vec::with_capacity(len);
        let end = offset + len as u64;
        let mut at = offset;
        while at < end {
            let start = at - at % CHUNK;
            let chunk = self.chunk(start).await?;
            let from = (at - start) as usize;
            if from >= chunk.len() {
                break; // past the end of the object
            }
            let to = chunk.len().min((end - start) as usize);
            read.extend_from_slice(&chunk[from..to]);
            at = start + to as u64;
            if to < CHUNK as usize && to == chunk.len() {
                break;
            }
        }
        Ok(read)
    }
}

/// One member of the cluster as the database records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DbMember {
    #[serde(default)]
    pub id: u64,
    /// The member's name: the Talos node's hostname (empty until it published it).
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    #[serde(default, rename = "clientURLs")]
    pub client_urls: Vec<String>,
    #[serde(default)]
    pub is_learner: bool,
}

impl DbMember {
    /// The host of the member's first peer URL: the node's address, as Talos advertises peers
    /// (`https://<node address>:2380`).
    pub fn peer_host(&self) -> Option<String> {
        teb_talos::url_host(self.peer_urls.first()?)
    }
}

/// An open database.
pub struct EtcdDb<'a, S: PageSource + ?Sized> {
    source: &'a S,
    meta: Meta,
}

impl<'a, S: PageSource + ?Sized> EtcdDb<'a, S> {
    /// Reads both meta pages and keeps the newest valid one.
    pub async fn open(source: &'a S) -> Result<Self, String> {
        let first = source.read_at(0, PAGE_HEADER + 64).await?;
        let meta0 = parse_meta(0, &first);
        let page_size = match &meta0 {
            Ok(meta) => meta.page_size as u64,
            // A torn first meta: bbolt's page size is the OS page size, 4096 on Talos.
            Err(_) => 4096,
        };
        let second = source.read_at(page_size, PAGE_HEADER + 64).await?;
        let meta = match (meta0, parse_meta(1, &second)) {
            (Ok(a), Ok(b)) => {
                if a.txid >= b.txid {
                    a
                } else {
                    b
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(a), Err(_)) => return Err(format!("not an etcd database: {a}")),
        };
        Ok(EtcdDb { source, meta })
    }

    /// Every key and value of the top-level bucket `name`, in key order, to `each`; false when there
    /// is no such bucket. Nested buckets are skipped.
    pub async fn for_each(&self, name: &[u8], each: &mut (dyn FnMut(&[u8], &[u8]) + Send)) -> Result<bool, String> {
        let mut found = None;
        self.walk(Node::Page(self.meta.root), 0, &mut |key, value, flags| {
            if key == name && flags & BUCKET_LEAF != 0 {
                found = Some(value.to_vec());
            }
        })
        .await?;
        let Some(bucket) = found else {
            return Ok(false);
        };
        if bucket.len() < 16 {
            return Err(format!("bucket {:?} has a header of {} bytes", String::from_utf8_lossy(name), bucket.len()));
        }
        let root = u64::from_le_bytes(bucket[..8].try_into().unwrap_or_default());
        let node = if root == 0 { Node::Inline(bucket[16..].to_vec()) } else { Node::Page(root) };
        self.walk(node, 0, &mut |key, value, flags| {
            if flags & BUCKET_LEAF == 0 {
                each(key, value);
            }
        })
        .await?;
        Ok(true)
    }

    /// The members the database records, without those it records as removed.
    pub async fn members(&self) -> Result<Vec<DbMember>, String> {
        let mut members = Vec::new();
        let mut broken = None;
        let found = self
            .for_each(b"members", &mut |key, value| match serde_json::from_slice::<DbMember>(value) {
                Ok(mut member) => {
                    if member.id == 0 {
                        member.id = u64::from_str_radix(&String::from_utf8_lossy(key), 16).unwrap_or_default();
                    }
                    members.push(member);
                }
                Err(e) => broken = Some(format!("member {} is not JSON: {e}", String::from_utf8_lossy(key))),
            })
            .await?;
        if let Some(broken) = broken {
            return Err(broken);
        }
        if !found {
            return Err("the database has no members bucket".into());
        }
        let mut removed = Vec::new();
        self.for_each(b"members_removed", &mut |key, _| removed.push(key.to_vec())).await?;
        members.retain(|m| !removed.iter().any(|r| u64::from_str_radix(&String::from_utf8_lossy(r), 16) == Ok(m.id)));
        Ok(members)
    }

    /// Walks the subtree at `node`, handing every leaf element (key, value, flags) to `each`.
    fn walk<'s>(
        &'s self,
        node: Node,
        depth: usize,
        each: &'s mut LeafVisitor<'_>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + 's>> {
        Box::pin(async move {
            if depth > MAX_DEPTH {
                return Err("the tree is deeper than any bbolt tree: the database is damaged".into());
            }
            let page = match node {
                Node::Inline(bytes) => bytes,
                Node::Page(id) => self.page(id).await?,
            };
            match parse_node(&page)? {
                ParsedNode::Branch(children) => {
                    for child in children {
                        self.walk(Node::Page(child), depth + 1, each).await?;
                    }
                }
                ParsedNode::Leaf(elements) => {
                    for element in elements {
                        each(element.key, element.value, element.flags);
                    }
                }
            }
            Ok(())
        })
    }

    /// Page `id` with its overflow pages.
    async fn page(&self, id: u64) -> Result<Vec<u8>, String> {
        if id < 2 || id >= self.meta.pages {
            return Err(format!("a tree names page {id} of {} pages", self.meta.pages));
        }
        let size = self.meta.page_size as u64;
        // One read for the page; a second only for the overflow pages its header announces.
        let mut page = self.source.read_at(id * size, size as usize).await?;
        let overflow = page.get(12..16).map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default())) as u64;
        if page.len() < PAGE_HEADER || id + 1 + overflow > self.meta.pages {
            return Err(format!("page {id} runs past the end of the database"));
        }
        if overflow > 0 {
            page.extend(self.source.read_at((id + 1) * size, (overflow * size) as usize).await?);
        }
        Ok(page)
    }
}

/// A tree node's contents: its children's page ids, or its elements.
pub(crate) enum ParsedNode<'a> {
    Branch(Vec<u64>),
    Leaf(Vec<Element<'a>>),
}

/// One element of a leaf: a key and its value, or a nested bucket's header ([`BUCKET_LEAF`]).
pub(crate) struct Element<'a> {
    pub flags: u32,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// The node `page` holds (a page with its overflow, or an inline bucket), every offset checked
/// against its length.
pub(crate) fn parse_node(page: &[u8]) -> Result<ParsedNode<'_>, String> {
    let bytes = |at: usize, n: usize| page.get(at..at + n).ok_or_else(|| "a page is cut short".to_owned());
    let word =
        |at: usize| -> Result<u32, String> { Ok(u32::from_le_bytes(bytes(at, 4)?.try_into().unwrap_or_default())) };
    let flags = u16::from_le_bytes(bytes(8, 2)?.try_into().unwrap_or_default());
    let count = u16::from_le_bytes(bytes(10, 2)?.try_into().unwrap_or_default()) as usize;
    let at = |i: usize| PAGE_HEADER + i * 16;
    match flags {
        BRANCH => (0..count)
            .map(|i| Ok(u64::from_le_bytes(bytes(at(i) + 8, 8)?.try_into().unwrap_or_default())))
            .collect::<Result<_, String>>()
            .map(ParsedNode::Branch),
        LEAF => (0..count)
            .map(|i| {
                let (flags, pos, ksize, vsize) =
                    (word(at(i))?, word(at(i) + 4)? as usize, word(at(i) + 8)? as usize, word(at(i) + 12)? as usize);
                let key = bytes(at(i) + pos, ksize)?;
                let value = bytes(at(i) + pos + ksize, vsize)?;
                Ok(Element { flags, key, value })
            })
            .collect::<Result<_, String>>()
            .map(ParsedNode::Leaf),
        other => Err(format!("a tree page has flags {other:#x}, not a branch or leaf")),
    }
}

/// Gets every leaf element: key, value, flags.
type LeafVisitor<'a> = dyn FnMut(&[u8], &[u8], u32) + Send + 'a;

/// A tree node: a page of the file, or a small bucket stored inline in its parent's value.
enum Node {
    Page(u64),
    Inline(Vec<u8>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_url_names_its_host() {
        let member = |url: &str| DbMember {
            id: 1,
            name: String::new(),
            peer_urls: vec![url.into()],
            client_urls: vec![],
            is_learner: false,
        };
        assert_eq!(member("https://10.0.0.2:2380").peer_host().as_deref(), Some("10.0.0.2"));
        assert_eq!(member("https://[fd00::2]:2380").peer_host().as_deref(), Some("fd00::2"));
        assert_eq!(member("http://cp-1").peer_host().as_deref(), Some("cp-1"));
        assert_eq!(member("").peer_host(), None);
    }

    #[tokio::test]
    async fn garbage_is_refused_with_a_reason() {
        let garbage = vec![7u8; 16384];
        let error = EtcdDb::open(garbage.as_slice()).await.err().unwrap();
        assert!(error.contains("not an etcd database"), "{error}");
    }
}
