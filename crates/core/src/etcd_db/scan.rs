//! The database read once, in file order, as it streams past: every page that starts where its id
//! says is parsed as it completes, and the trees are put together from the pages as they come.
//!
//! A snapshot's pages are not in tree order, and etcd keeps no freelist on disk (its backend opens
//! bbolt with `NoFreelistSync` on Linux: the meta names no freelist page), so a freed page, with stale
//! revisions in it, looks like any other until the tree is known. The scan therefore knows a page
//! only by its place in a tree: a node whose place is known when it passes is used at once; one whose
//! parent has not passed yet is kept in summary (a branch: its children; a leaf: what the
//! [`Revisions`] chose to keep of it) until its parent names it, and dropped at the end if none does.
//! Memory is those summaries plus one node; the bytes of the values are never kept. A reader whose
//! budget is spent may take the leaves' share over ([`Revisions::set_aside`]): the scan then keeps a
//! bit per `key` leaf and the branches, whatever the database's size.

use std::collections::HashMap;

use teb_pipeline::bbolt::{BRANCH, LEAF, Meta, PAGE_HEADER, parse_meta};

use super::{BUCKET_LEAF, DbMember, Element, PageSet, ParsedNode, parse_node};

/// The largest node (a page and its overflow) the scan collects. etcd refuses a request over
/// `--max-request-bytes` (1.5 MiB unless raised), so a node of its buckets stays far below; a stale
/// header that claims more is skipped, and named only if the tree needs it.
const MAX_NODE: u64 = 64 << 20;
/// Where the meta's page size is found: the page header and the meta's first 12 bytes.
const META_PREFIX: usize = PAGE_HEADER + 64;

/// One revision of a key, as the `key` bucket holds it.
#[derive(Clone, Copy, Debug)]
pub struct Revision<'a> {
    pub main: i64,
    pub sub: i64,
    /// A deletion (a tombstone): the key has no value from this revision on.
    pub deleted: bool,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// What a reader wants of the `key` bucket. The scan hands it each revision as its page passes
/// ([`Revisions::keep`], before it is known whether the page is in the tree) and, once the page is
/// known to be in the tree, what it kept of it ([`Revisions::add`]); pages never named are dropped.
/// Revisions come in no particular order.
pub trait Revisions {
    type Kept: Send;
    fn keep(&mut self, revision: &Revision<'_>) -> Option<Self::Kept>;
    fn add(&mut self, kept: Self::Kept);
    /// The reader wants no more (its memory budget is spent): unless it sets aside what it keeps
    /// ([`Revisions::set_aside`]), the scan drops what it holds and only counts the rest of the bytes.
    fn exhausted(&self) -> bool {
        false
    }
    /// Once exhausted, a reader may keep what it keeps elsewhere (a scratch file) rather than give
    /// up: `true` if it now does. The scan then hands it what it kept of every leaf whose place is not
    /// known, with the leaf's page ([`Revisions::aside`]), holds no revisions itself, names the pages
    /// it finds in the `key` tree ([`Revisions::placed`]) and, at the end, lets it count
    /// ([`Revisions::settle`]).
    fn set_aside(&mut self, _db_size: u64) -> bool {
        false
    }
    fn aside(&mut self, _leaf: u64, _kept: Self::Kept) {}
    fn placed(&mut self, _leaf: u64) {}
    /// The scan is over: what was set aside is counted. The highest main revision among the leaves
    /// set aside and placed.
    fn settle(&mut self) -> Result<i64, String> {
        Ok(0)
    }
}

/// A reader that wants no revisions: the members and the meta only.
impl Revisions for () {
    type Kept = ();
    fn keep(&mut self, _: &Revision<'_>) -> Option<()> {
        None
    }
    fn add(&mut self, (): ()) {}
}

/// What the scan found besides the revisions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// The highest main revision in the `key` bucket: the cluster's revision at the snapshot.
    pub revision: i64,
    /// The revision of the last compaction, when there was one.
    pub compacted: Option<i64>,
    pub consistent_index: Option<u64>,
    /// Pages × page size: the database file's size.
    pub db_size: u64,
    /// The members, without those recorded as removed.
    pub members: Vec<DbMember>,
}

/// Which tree a page belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The root bucket, whose elements are the buckets.
    Root,
    Key,
    Meta,
    Members,
    MembersRemoved,
}

impl Role {
    fn of_bucket(name: &[u8]) -> Option<Role> {
        match name {
            b"key" => Some(Role::Key),
            b"meta" => Some(Role::Meta),
            b"members" => Some(Role::Members),
            b"members_removed" => Some(Role::MembersRemoved),
            _ => None,
        }
    }
}

/// A node kept until its place is known.
enum Node {
    Branch(Vec<u64>),
    Leaf(Leaf),
    /// Bytes that looked like a node's start but do not parse (stale, or damage if a tree names them).
    Unreadable(String),
}

/// What a leaf may matter for: the revisions kept of it when it looks like a `key` bucket leaf (in
/// the scan's arena: a leaf often holds one or two revisions, so no allocation of its own), and, rarely,
/// more.
struct Leaf {
    kept: std::ops::Range<u32>,
    /// Its highest main revision.
    revision: i64,
    other: Option<Box<OtherLeaf>>,
}

/// What few leaves have: the elements any other wanted bucket could use (bucket headers, meta keys,
/// member IDs), and why a leaf cannot be a `key` leaf (an error only when it is named as one).
#[derive(Default)]
struct OtherLeaf {
    not_key: Option<String>,
    elements: Vec<(u32, Vec<u8>, Vec<u8>)>,
}

/// The scan of one database ([module docs](self)): fed its bytes in order by [`Scan::update`], any
/// chunking; [`Scan::finish`] gives what it found, or what is wrong.
pub struct Scan<R: Revisions> {
    revisions: R,
    /// Bytes seen.
    offset: u64,
    /// The bytes of the page being collected.
    page: Vec<u8>,
    page_size: u64,
    metas: Vec<Meta>,
    /// The newest meta, chosen once both have passed.
    meta: Option<Meta>,
    /// Pages from the first one an unfinished node covers.
    window: Vec<u8>,
    window_start: u64,
    /// Nodes being collected: (first page, end page).
    open: Vec<(u64, u64)>,
    /// Nodes larger than [`MAX_NODE`], skipped.
    too_large: Vec<u64>,
    /// Pages a tree names that have not passed yet.
    awaited: HashMap<u64, Role>,
    /// Nodes that passed before a tree named them.
    unplaced: HashMap<u64, Node>,
    /// The revisions kept of leaves ([`Leaf::kept`]), taken once placed.
    arena: Vec<Option<R::Kept>>,
    /// Once the reader sets aside what it keeps: the `key` leaves whose revisions it holds.
    aside: Option<PageSet>,
    found: Scanned,
    key_bucket: bool,
    removed: Vec<u64>,
    error: Option<String>,
}

impl<R: Revisions> Scan<R> {
    pub fn new(revisions: R) -> Self {
        Scan {
            revisions,
            offset: 0,
            page: Vec::new(),
            page_size: 0,
            metas: Vec::new(),
            meta: None,
            window: Vec::new(),
            window_start: 0,
            open: Vec::new(),
            too_large: Vec::new(),
            awaited: HashMap::new(),
            unplaced: HashMap::new(),
            arena: Vec::new(),
            aside: None,
            found: Scanned::default(),
            key_bucket: false,
            removed: Vec::new(),
            error: None,
        }
    }

    /// The database's next bytes. Bytes past its last page (a trailer) are ignored.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.error.is_none() {
            if self.page_size == 0 {
                let take = (META_PREFIX - self.page.len()).min(bytes.len());
                self.page.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.page.len() == META_PREFIX {
                    // A torn first meta: bbolt's page size is the OS page size, 4096 on Talos.
                    self.page_size = parse_meta(0, &self.page).map_or(4096, |m| m.page_size as u64);
                }
                continue;
            }
            let take = (self.page_size as usize - self.page.len()).min(bytes.len());
            self.page.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.page.len() == self.page_size as usize {
                let page = std::mem::take(&mut self.page);
                let id = self.offset / self.page_size;
                self.offset += self.page_size;
                if let Err(e) = self.page_passed(id, page) {
                    self.error = Some(e);
                }
            }
        }
    }

    fn page_passed(&mut self, id: u64, page: Vec<u8>) -> Result<(), String> {
        if id < 2 {
            if let Ok(meta) = parse_meta(id, &page) {
                self.metas.push(meta);
            }
            if id == 1 {
                let meta = self.metas.iter().copied().max_by_key(|m| m.txid);
                let meta = meta.ok_or("not an etcd database: neither meta page is valid")?;
                if meta.page_size as u64 != self.page_size {
                    return Err(format!("the meta pages disagree on the page size ({})", meta.page_size));
                }
                self.meta = Some(meta);
                self.found.db_size = meta.pages * meta.page_size as u64;
                self.awaited.insert(meta.root, Role::Root);
            }
            return Ok(());
        }
        let Some(meta) = self.meta else { return Ok(()) };
        if id >= meta.pages || self.given_up() {
            return Ok(());
        }
        let word = |at: usize| page.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        let (header_id, flags) = (word(0), u16::from_le_bytes([page[8], page[9]]));
        let overflow = u32::from_le_bytes(page[12..16].try_into().unwrap_or_default()) as u64;
        // A node starts where its header's id is its place; anything else is inside an overflow run
        // or stale.
        if header_id == id && matches!(flags, BRANCH | LEAF) && id + 1 + overflow <= meta.pages {
            if (1 + overflow) * self.page_size > MAX_NODE {
                self.too_large.push(id);
            } else {
                if self.open.is_empty() {
                    self.window_start = id;
                }
                self.open.push((id, id + 1 + overflow));
            }
        }
        match self.open.as_slice() {
            [] => Ok(()),
            // The common case: a node of one page, read where it lies.
            [(start, end)] if *start == id && *end == id + 1 => {
                self.open.clear();
                self.node_passed(id, &page)
            }
            _ => self.collect(id, &page),
        }
    }

    /// Page `id` passes while a node of several pages, or overlapping nodes (a stale header inside a
    /// run), are being collected.
    fn collect(&mut self, id: u64, page: &[u8]) -> Result<(), String> {
        self.window.extend_from_slice(page);
        let (finished, open): (Vec<_>, Vec<_>) = self.open.iter().partition(|(_, end)| *end == id + 1);
        self.open = open;
        let window = std::mem::take(&mut self.window);
        for (start, _) in finished {
            let from = ((start - self.window_start) * self.page_size) as usize;
            if let Err(e) = self.node_passed(start, &window[from..]) {
                self.window = window;
                return Err(e);
            }
        }
        self.window = window;
        // Keep the window from the first node still being collected.
        match self.open.iter().map(|(start, _)| *start).min() {
            None => self.window.clear(),
            Some(first) => {
                self.window.drain(..((first - self.window_start) * self.page_size) as usize);
                self.window_start = first;
            }
        }
        Ok(())
    }

    /// Whether the reader is exhausted and cannot set aside what it keeps; the first time, what the
    /// scan holds is dropped.
    fn given_up(&mut self) -> bool {
        if !self.revisions.exhausted() {
            return false;
        }
        if self.aside.is_none() && self.revisions.set_aside(self.found.db_size) {
            self.hand_aside();
            return false;
        }
        if !self.unplaced.is_empty() || !self.arena.is_empty() || !self.window.is_empty() {
            (self.unplaced, self.arena, self.window, self.open) = Default::default();
        }
        true
    }

    /// The reader now sets aside what it keeps: it gets what the arena holds for leaves not yet
    /// placed, and the arena goes.
    fn hand_aside(&mut self) {
        let mut aside = PageSet::default();
        let mut arena = std::mem::take(&mut self.arena);
        self.unplaced.retain(|id, node| {
            let Node::Leaf(leaf) = node else { return true };
            if leaf.kept.is_empty() {
                return true;
            }
            for at in std::mem::replace(&mut leaf.kept, 0..0) {
                if let Some(kept) = arena.get_mut(at as usize).and_then(Option::take) {
                    self.revisions.aside(*id, kept);
                }
            }
            // A leaf with nothing else to it is now a bit; one that cannot be a `key` leaf stays,
            // to be named if a tree needs it.
            let keep = leaf.other.is_some();
            if !keep {
                aside.insert(*id);
            }
            keep
        });
        self.unplaced.shrink_to_fit();
        self.aside = Some(aside);
    }

    /// A node has passed whole: used now if a tree named it, else kept in summary.
    fn node_passed(&mut self, id: u64, bytes: &[u8]) -> Result<(), String> {
        let node = self.summary(Some(id), bytes);
        match node {
            // Its revisions are with the reader.
            Node::Leaf(Leaf { other: None, .. }) if self.aside.is_some() => {
                self.aside.get_or_insert_default().insert(id);
            }
            node => {
                self.unplaced.insert(id, node);
            }
        }
        if let Some(role) = self.awaited.remove(&id) {
            self.place(id, role)?;
        }
        Ok(())
    }

    /// What matters of the node at page `id` (`None`: a bucket stored inline).
    fn summary(&mut self, id: Option<u64>, bytes: &[u8]) -> Node {
        match parse_node(bytes) {
            Ok(ParsedNode::Branch(children)) => Node::Branch(children),
            Ok(ParsedNode::Leaf(elements)) => Node::Leaf(self.leaf(id, &elements)),
            Err(reason) => Node::Unreadable(reason),
        }
    }

    fn leaf(&mut self, id: Option<u64>, elements: &[Element<'_>]) -> Leaf {
        // Once the reader sets aside, a leaf's revisions go to it at once.
        let aside = id.filter(|_| self.aside.is_some());
        let start = self.arena.len() as u32;
        let mut revision = 0;
        let mut other = OtherLeaf::default();
        let key_shaped = elements.iter().all(|e| e.flags == 0 && matches!(e.key.len(), 17 | 18) && e.key[8] == b'_');
        for element in elements {
            if key_shaped && other.not_key.is_none() {
                match revision_of(element) {
                    Ok(kept) => {
                        revision = revision.max(kept.main);
                        match (self.revisions.keep(&kept), aside) {
                            (Some(kept), Some(id)) => self.revisions.aside(id, kept),
                            (Some(kept), None) => self.arena.push(Some(kept)),
                            (None, _) => {}
                        }
                    }
                    Err(reason) => other.not_key = Some(reason),
                }
            } else if matters_outside_key(element) {
                other.elements.push((element.flags, element.key.to_vec(), element.value.to_vec()));
            }
        }
        if !key_shaped && !elements.is_empty() {
            other.not_key = Some("a leaf of the key bucket holds keys that are not revisions".into());
        }
        let other = (other.not_key.is_some() || !other.elements.is_empty()).then(|| Box::new(other));
        Leaf { kept: start..self.arena.len() as u32, revision, other }
    }

    /// Node `id` belongs to the tree of `role`: it and all below it that have passed are used; the
    /// rest is awaited.
    fn place(&mut self, id: u64, role: Role) -> Result<(), String> {
        let mut work = vec![(id, role)];
        while let Some((id, role)) = work.pop() {
            if self.aside.as_ref().is_some_and(|aside| aside.contains(id)) {
                if role == Role::Key {
                    self.revisions.placed(id);
                }
                continue;
            }
            match self.unplaced.remove(&id) {
                None => {
                    if self.too_large.contains(&id) {
                        return Err(format!("page {id} holds a node larger than {} MiB", MAX_NODE >> 20));
                    }
                    if self.awaited.insert(id, role).is_some() {
                        return Err(format!("page {id} is named twice in the database's trees"));
                    }
                }
                Some(Node::Branch(children)) => work.extend(children.into_iter().map(|child| (child, role))),
                Some(Node::Leaf(leaf)) => self.use_leaf(role, leaf, &mut work)?,
                Some(Node::Unreadable(reason)) => return Err(format!("page {id}: {reason}")),
            }
        }
        Ok(())
    }

    fn use_leaf(&mut self, role: Role, leaf: Leaf, work: &mut Vec<(u64, Role)>) -> Result<(), String> {
        let other = leaf.other.map(|other| *other).unwrap_or_default();
        if role == Role::Key {
            if let Some(not_key) = other.not_key {
                return Err(not_key);
            }
            self.found.revision = self.found.revision.max(leaf.revision);
            for at in leaf.kept {
                if let Some(kept) = self.arena.get_mut(at as usize).and_then(Option::take) {
                    self.revisions.add(kept);
                }
            }
            return Ok(());
        }
        for (flags, key, value) in other.elements {
            match role {
                Role::Root => {
                    let Some(bucket) = Role::of_bucket(&key).filter(|_| flags & BUCKET_LEAF != 0) else { continue };
                    self.key_bucket |= bucket == Role::Key;
                    let root = value.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
                    match root {
                        None => return Err(format!("bucket {} has a header of {} bytes", show(&key), value.len())),
                        // A small bucket is stored inline, after its header.
                        Some(0) => match self.summary(None, value.get(16..).unwrap_or_default()) {
                            Node::Leaf(inline) => self.use_leaf(bucket, inline, work)?,
                            Node::Branch(_) => return Err(format!("inline bucket {} is a branch", show(&key))),
                            Node::Unreadable(reason) => return Err(format!("inline bucket {}: {reason}", show(&key))),
                        },
                        Some(root) => work.push((root, bucket)),
                    }
                }
                Role::Meta => match key.as_slice() {
                    // A revision: 8 bytes of main revision, `_`, 8 of sub revision.
                    b"finishedCompactRev" if value.len() >= 8 => {
                        self.found.compacted = Some(i64::from_be_bytes(value[..8].try_into().unwrap_or_default()))
                    }
                    b"consistent_index" if value.len() == 8 => {
                        self.found.consistent_index =
                            Some(u64::from_be_bytes(value[..8].try_into().unwrap_or_default()))
                    }
                    _ => {}
                },
                Role::Members => {
                    let mut member: DbMember = serde_json::from_slice(&value)
                        .map_err(|e| format!("member {} is not JSON: {e}", show(&key)))?;
                    if member.id == 0 {
                        member.id = hex_id(&key).unwrap_or_default();
                    }
                    self.found.members.push(member);
                }
                Role::MembersRemoved => self.removed.extend(hex_id(&key)),
                Role::Key => {}
            }
        }
        Ok(())
    }

    /// What the database holds, and the reader of its revisions; or what is wrong.
    pub fn finish(mut self) -> Result<(Scanned, R), String> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let Some(meta) = self.meta else {
            return Err(format!("not an etcd database: {} bytes hold no two meta pages", self.offset));
        };
        if self.offset < self.found.db_size {
            return Err(format!(
                "the database is cut short: {} of the {} bytes its meta page names",
                self.offset, self.found.db_size
            ));
        }
        if self.given_up() {
            // The reader says why it has no result; the trees were not followed to their ends.
            return Ok((self.found, self.revisions));
        }
        if let Some(page) = self.awaited.keys().min() {
            return Err(format!("the database's tree names page {page}, where no node of {} pages starts", meta.pages));
        }
        if !self.key_bucket {
            return Err("the database has no key bucket".into());
        }
        let highest_aside = self.revisions.settle()?;
        self.found.revision = self.found.revision.max(highest_aside);
        let removed = std::mem::take(&mut self.removed);
        self.found.members.retain(|m| !removed.contains(&m.id));
        Ok((self.found, self.revisions))
    }
}

/// The revision a `key` bucket element holds.
fn revision_of<'a>(element: &Element<'a>) -> Result<Revision<'a>, String> {
    let number = |at: usize| i64::from_be_bytes(element.key[at..at + 8].try_into().unwrap_or_default());
    let (main, sub) = (number(0), number(9));
    let deleted = element.key.get(17) == Some(&b't');
    let kv =
        KeyValueRef::parse(element.value).map_err(|e| format!("revision {main} is not an mvccpb.KeyValue: {e}"))?;
    Ok(Revision {
        main,
        sub,
        deleted,
        key: kv.key,
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
    })
}

/// Whether an element of a leaf that is not a `key` leaf could matter: a wanted bucket's header, a
/// meta value the scan reads, a member's ID.
fn matters_outside_key(element: &Element<'_>) -> bool {
    let key = element.key;
    (element.flags & BUCKET_LEAF != 0 && Role::of_bucket(key).is_some())
        || key == b"finishedCompactRev"
        || key == b"consistent_index"
        || (element.value.len() <= 4096 && hex_id(key).is_some())
}

/// A member ID as etcd writes it in a key: lower-case hex, without leading zeros.
fn hex_id(key: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(key).ok()?;
    let hex = !text.is_empty() && text.len() <= 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    hex.then(|| u64::from_str_radix(text, 16).ok()).flatten()
}

fn show(key: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(key))
}

/// etcd's `mvccpb.KeyValue` (api/mvccpb/kv.proto) read in place: the key and the value are slices of
/// the page, never copied.
struct KeyValueRef<'a> {
    key: &'a [u8],
    create_revision: i64,
    mod_revision: i64,
    value: &'a [u8],
}

impl<'a> KeyValueRef<'a> {
    fn parse(mut buf: &'a [u8]) -> Result<Self, String> {
        use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
        let mut kv = KeyValueRef { key: &[], create_revision: 0, mod_revision: 0, value: &[] };
        while !buf.is_empty() {
            let (tag, wire) = decode_key(&mut buf).map_err(|e| e.to_string())?;
            let varint = |buf: &mut &'a [u8]| decode_varint(buf).map_err(|e| e.to_string());
            match (tag, wire) {
                (1 | 5, WireType::LengthDelimited) => {
                    let len = varint(&mut buf)? as usize;
                    if len > buf.len() {
                        return Err(format!("field {tag} runs past the value"));
                    }
                    let (field, rest) = buf.split_at(len);
                    if tag == 1 {
                        kv.key = field;
                    } else {
                        kv.value = field;
                    }
                    buf = rest;
                }
                (2, WireType::Varint) => kv.create_revision = varint(&mut buf)? as i64,
                (3, WireType::Varint) => kv.mod_revision = varint(&mut buf)? as i64,
                _ => skip_field(wire, tag, &mut buf, DecodeContext::default()).map_err(|e| e.to_string())?,
            }
        }
        Ok(kv)
    }
}
