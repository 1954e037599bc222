//! What one streamed pass can check of a bbolt database, the file etcd keeps its data in (and its
//! snapshot is): both meta pages (magic, version, FNV-1a checksum, the same page size), the size
//! (the meta's page count times the page size, as bbolt's `Tx.WriteTo` writes it), the headers of the
//! root and freelist pages the meta names, and the header of every page that starts where the one
//! before it ends (its id, a known type, an overflow that fits). The B+tree itself needs random access
//! and is left to `etcdctl snapshot status` after a restore.

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
pub const PAGE_HEADER: usize = 16;
/// Page header plus the meta's 64 bytes.
const META_PAGE_PREFIX: usize = PAGE_HEADER + 64;
const NO_FREELIST: u64 = u64::MAX;
pub const BRANCH: u16 = 0x01;
pub const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;

/// What the pass found in a well-formed database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbSummary {
    pub page_size: u32,
    /// Pages in the database (the meta's high-water mark).
    pub pages: u64,
    /// Transaction ID of the newest meta page.
    pub txid: u64,
    /// Page headers checked (pages that start a node, besides the two meta pages).
    pub pages_checked: u64,
}

/// What a meta page says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    /// The root bucket's page.
    pub root: u64,
    pub freelist: u64,
    /// Pages in the database.
    pub pages: u64,
    pub txid: u64,
}

/// Meta page `i` (0 or 1) from its first bytes (at least the page header and 64 bytes of meta),
/// checked: id, flags, magic, version, checksum, page size, and root and freelist inside the file.
pub fn parse_meta(i: u64, bytes: &[u8]) -> Result<Meta, String> {
    if bytes.len() < META_PAGE_PREFIX {
        return Err(format!("meta page {i} is cut short ({} bytes)", bytes.len()));
    }
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    let (id, flags) = (u64_at(0), u16_at(8));
    if id != i || flags & META == 0 {
        return Err(format!("page {i} is not a meta page (id {id}, flags {flags:#x})"));
    }
    let m = &bytes[PAGE_HEADER..];
    let field = |at: usize| u32::from_le_bytes(m[at..at + 4].try_into().unwrap_or_default());
    let (magic, version, page_size) = (field(0), field(4), field(8));
    if magic != MAGIC {
        return Err(format!("meta page {i} has magic {magic:#x}, not bbolt's {MAGIC:#x}"));
    }
    if version != VERSION {
        return Err(format!("meta page {i} has version {version}, not {VERSION}"));
    }
    let long = |at: usize| u64::from_le_bytes(m[at..at + 8].try_into().unwrap_or_default());
    if fnv1a64(&m[..56]) != long(56) {
        return Err(format!("meta page {i}'s checksum does not match its contents"));
    }
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("meta page {i} has page size {page_size}"));
    }
    let meta = Meta { page_size, root: long(16), freelist: long(32), pages: long(40), txid: long(48) };
    if meta.pages < 3 || meta.root < 2 || meta.root >= meta.pages {
        return Err(format!("meta page {i} names root page {} of {} pages", meta.root, meta.pages));
    }
    if meta.freelist != NO_FREELIST && (meta.freelist < 2 || meta.freelist >= meta.pages) {
        return Err(format!("meta page {i} names freelist page {} of {} pages", meta.freelist, meta.pages));
    }
    Ok(meta)
}

/// Feeds on the database's bytes (without the trailer) in order; [`BboltCheck::finish`] says whether
/// they form a bbolt database.
#[derive(Debug, Default)]
pub struct BboltCheck {
    /// Bytes seen.
    offset: u64,
    /// The page whose first bytes are being collected.
    page: u64,
    collected: Vec<u8>,
    metas: Vec<Meta>,
    /// The first page not inside an overflow run that a checked header announced.
    next_start: u64,
    pages_checked: u64,
    error: Option<String>,
}

impl BboltCheck {
    pub fn update(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() && self.error.is_none() {
            let page_size = self.metas.first().map_or(u64::MAX, |m| m.page_size as u64);
            let wanted = if self.page < 2 { META_PAGE_PREFIX } else { PAGE_HEADER };
            let start = self.page.saturating_mul(page_size);
            if self.offset < start {
                // Skip to the next page's start.
                let skip = (start - self.offset).min(chunk.len() as u64) as usize;
                self.offset += skip as u64;
                chunk = &chunk[skip..];
                continue;
            }
            let take = (wanted - self.collected.len()).min(chunk.len());
            self.collected.extend_from_slice(&chunk[..take]);
            self.offset += take as u64;
            chunk = &chunk[take..];
            if self.collected.len() == wanted {
                let bytes = std::mem::take(&mut self.collected);
                if let Err(e) = self.page_seen(&bytes) {
                    self.error = Some(e);
                }
                self.page += 1;
            }
        }
    }

    fn page_seen(&mut self, bytes: &[u8]) -> Result<(), String> {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default());
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        let (id, flags, overflow) = (u64_at(0), u16_at(8), u32_at(12) as u64);
        let i = self.page;
        if i < 2 {
            let meta = parse_meta(i, bytes)?;
            if let Some(first) = self.metas.first()
                && first.page_size != meta.page_size
            {
                return Err(format!(
                    "the meta pages disagree on the page size ({} and {})",
                    first.page_size, meta.page_size
                ));
            }
            self.metas.push(meta);
            self.next_start = 2;
            return Ok(());
        }
        let newest = self.newest();
        let known = matches!(flags, BRANCH | LEAF | FREELIST);
        if i == newest.root && (id != i || !matches!(flags, BRANCH | LEAF)) {
            return Err(format!("the root page {i} has id {id} and flags {flags:#x}, not a branch or leaf"));
        }
        if i == newest.freelist && (id != i || flags != FREELIST) {
            return Err(format!("the freelist page {i} has id {id} and flags {flags:#x}"));
        }
        if i >= self.next_start {
            if id == i {
                if !known {
                    return Err(format!("page {i} has unknown flags {flags:#x}"));
                }
                if i + 1 + overflow > newest.pages {
                    return Err(format!("page {i} overflows {overflow} pages past the end ({} pages)", newest.pages));
                }
                self.pages_checked += 1;
                self.next_start = i + 1 + overflow;
            } else {
                // A page freed and partly reused keeps stale bytes: nothing to vouch for here.
                self.next_start = i + 1;
            }
        }
        Ok(())
    }

    fn newest(&self) -> Meta {
        self.metas.iter().copied().max_by_key(|m| m.txid).unwrap_or(Meta {
            page_size: 0,
            root: 0,
            freelist: NO_FREELIST,
            pages: 0,
            txid: 0,
        })
    }

    /// The summary, or what is wrong.
    pub fn finish(self) -> Result<DbSummary, String> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.metas.len() < 2 {
            return Err(format!("{} bytes hold no two meta pages", self.offset));
        }
        let newest = self.newest();
        let expected = newest.pages * newest.page_size as u64;
        if self.offset != expected {
            return Err(format!(
                "{} bytes, but the meta page says {} pages of {} bytes ({expected} bytes)",
                self.offset, newest.pages, newest.page_size
            ));
        }
        Ok(DbSummary {
            page_size: newest.page_size,
            pages: newest.pages,
            txid: newest.txid,
            pages_checked: self.pages_checked,
        })
    }
}

/// 64-bit FNV-1a, bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small well-formed database: meta pages 0 and 1, freelist page 2, root leaf 3, a branch at 4
    /// with one overflow page, a stale page at 6 (freed, id from elsewhere).
    pub(crate) fn database(page_size: usize) -> Vec<u8> {
        let pages = 7u64;
        let mut db = vec![0u8; page_size * pages as usize];
        let header = |db: &mut Vec<u8>, i: usize, id: u64, flags: u16, overflow: u32| {
            let at = i * page_size;
            db[at..at + 8].copy_from_slice(&id.to_le_bytes());
            db[at + 8..at + 10].copy_from_slice(&flags.to_le_bytes());
            db[at + 12..at + 16].copy_from_slice(&overflow.to_le_bytes());
        };
        for (i, txid) in [(0usize, 9u64), (1, 8)] {
            header(&mut db, i, i as u64, META, 0);
            let m = i * page_size + PAGE_HEADER;
            db[m..m + 4].copy_from_slice(&MAGIC.to_le_bytes());
            db[m + 4..m + 8].copy_from_slice(&VERSION.to_le_bytes());
            db[m + 8..m + 12].copy_from_slice(&(page_size as u32).to_le_bytes());
            db[m + 16..m + 24].copy_from_slice(&3u64.to_le_bytes());
            db[m + 32..m + 40].copy_from_slice(&2u64.to_le_bytes());
            db[m + 40..m + 48].copy_from_slice(&pages.to_le_bytes());
            db[m + 48..m + 56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&db[m..m + 56]);
            db[m + 56..m + 64].copy_from_slice(&sum.to_le_bytes());
        }
        header(&mut db, 2, 2, FREELIST, 0);
        header(&mut db, 3, 3, LEAF, 0);
        header(&mut db, 4, 4, BRANCH, 1);
        db[5 * page_size..5 * page_size + 16].fill(0xAB); // overflow content, no header
        header(&mut db, 6, 41, LEAF, 3);
        db
    }

    fn check(db: &[u8], chunk: usize) -> Result<DbSummary, String> {
        let mut c = BboltCheck::default();
        for piece in db.chunks(chunk) {
            c.update(piece);
        }
        c.finish()
    }

    #[test]
    fn a_well_formed_database_passes_in_any_chunking() {
        let db = database(4096);
        for chunk in [1, 7, 16, 80, 1024, 4096, 5000, db.len()] {
            assert_eq!(
                check(&db, chunk),
                Ok(DbSummary { page_size: 4096, pages: 7, txid: 9, pages_checked: 3 }),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn damage_is_named() {
        let db = database(4096);
        let broken = |at: usize, byte: u8| {
            let mut d = db.clone();
            d[at] ^= byte;
            check(&d, 1000).unwrap_err()
        };
        assert!(broken(16, 0xFF).contains("magic"), "{}", broken(16, 0xFF));
        assert!(broken(4096 + 16 + 20, 1).contains("checksum"));
        assert!(broken(3 * 4096 + 8, LEAF as u8 | 0x40).contains("root page 3"));
        assert!(broken(2 * 4096 + 8, 0x01).contains("freelist page 2"));
        assert!(broken(4 * 4096 + 12, 0x08).contains("overflows"));
        assert!(check(&db[..db.len() - 4096], 1000).unwrap_err().contains("meta page says 7 pages"));
        assert!(check(&db[..100], 10).unwrap_err().contains("no two meta pages"));
        assert!(check(&vec![0u8; 8192], 512).unwrap_err().contains("page 0"));
    }
}
