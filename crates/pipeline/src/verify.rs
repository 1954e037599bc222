use sha2::{Digest, Sha256};

use crate::Error;
use crate::bbolt::{BboltCheck, DbSummary};

const TRAILER: usize = 32;

/// Checks an etcd snapshot's integrity while it streams past. A complete snapshot is
/// `db || sha256(db)`; the last 32 bytes seen so far are held back, everything before them is hashed.
#[derive(Default)]
pub struct TrailerVerifier {
    hasher: Sha256,
    held: Vec<u8>,
    total: u64,
}

impl TrailerVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.update_with(chunk, &mut |_| {});
    }

    /// [`TrailerVerifier::update`], handing each byte of the database (never of the trailer) to `db`
    /// once, in order.
    pub fn update_with(&mut self, chunk: &[u8], db: &mut dyn FnMut(&[u8])) {
        self.total += chunk.len() as u64;
        if chunk.len() >= TRAILER {
            self.hasher.update(&self.held);
            db(&self.held);
            let (body, tail) = chunk.split_at(chunk.len() - TRAILER);
            self.hasher.update(body);
            db(body);
            self.held.clear();
            self.held.extend_from_slice(tail);
        } else {
            self.held.extend_from_slice(chunk);
            if self.held.len() > TRAILER {
                let excess = self.held.len() - TRAILER;
                self.hasher.update(&self.held[..excess]);
                db(&self.held[..excess]);
                self.held.drain(..excess);
            }
        }
    }

    /// Bytes seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Ends the stream: the database's SHA-256 when the trailer matches it.
    pub fn finish(self) -> Result<[u8; 32], Error> {
        let db_len = self.total.saturating_sub(TRAILER as u64);
        // bbolt databases are whole pages; a stream cut short almost never lands on one.
        if self.total <= TRAILER as u64 || !db_len.is_multiple_of(512) {
            return Err(Error::Truncated { bytes: self.total });
        }
        let actual: [u8; 32] = self.hasher.finalize().into();
        if actual[..] != self.held[..] {
            return Err(Error::ChecksumMismatch { expected: hex::encode(&self.held), actual: hex::encode(actual) });
        }
        Ok(actual)
    }
}

/// A stored snapshot checked in one pass: its trailer against its database, and the database's bbolt
/// structure as far as one pass allows ([`BboltCheck`]).
#[derive(Default)]
pub struct SnapshotCheck {
    trailer: TrailerVerifier,
    db: BboltCheck,
}

/// What [`SnapshotCheck`] found in a sound snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedSnapshot {
    /// Bytes: database plus trailer.
    pub size: u64,
    /// Hex SHA-256 of the database, matching the trailer.
    pub sha256: String,
    pub db: DbSummary,
}

impl SnapshotCheck {
    pub fn update(&mut self, chunk: &[u8]) {
        self.update_with(chunk, &mut |_| {});
    }

    /// [`SnapshotCheck::update`], handing each byte of the database (never of the trailer) to `db`
    /// too, once, in order.
    pub fn update_with(&mut self, chunk: &[u8], db: &mut dyn FnMut(&[u8])) {
        let check = &mut self.db;
        self.trailer.update_with(chunk, &mut |bytes| {
            check.update(bytes);
            db(bytes);
        });
    }

    pub fn finish(self) -> Result<CheckedSnapshot, Error> {
        let size = self.trailer.total();
        let sha256 = hex::encode(self.trailer.finish()?);
        let db = self.db.finish().map_err(|reason| Error::Structure { reason })?;
        Ok(CheckedSnapshot { size, sha256, db })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(db_len: usize) -> Vec<u8> {
        let db: Vec<u8> = (0..db_len).map(|i| (i * 31 % 251) as u8).collect();
        let mut out = db.clone();
        out.extend_from_slice(&Sha256::digest(&db));
        out
    }

    fn verify_in_chunks(data: &[u8], chunk: usize) -> Result<[u8; 32], Error> {
        let mut v = TrailerVerifier::new();
        data.chunks(chunk).for_each(|c| v.update(c));
        v.finish()
    }

    #[test]
    fn accepts_a_whole_snapshot_whatever_the_chunking() {
        let data = snapshot(8192);
        let expected: [u8; 32] = Sha256::digest(&data[..8192]).into();
        for chunk in [1, 7, 31, 32, 33, 1024, 5000, 100_000] {
            assert_eq!(verify_in_chunks(&data, chunk).unwrap(), expected, "chunk {chunk}");
        }
    }

    #[test]
    fn rejects_a_truncated_snapshot() {
        let data = snapshot(8192);
        assert!(matches!(verify_in_chunks(&data[..5000], 1024), Err(Error::Truncated { bytes: 5000 })));
        assert!(matches!(verify_in_chunks(&[], 1024), Err(Error::Truncated { bytes: 0 })));
        // Cut on a page boundary: the "trailer" is then database bytes and cannot match.
        assert!(matches!(verify_in_chunks(&data[..4096 + 32], 1024), Err(Error::ChecksumMismatch { .. })));
    }

    #[test]
    fn rejects_a_corrupt_trailer_or_body() {
        let mut data = snapshot(4096);
        let last = data.len() - 1;
        data[last] ^= 1;
        assert!(matches!(verify_in_chunks(&data, 1024), Err(Error::ChecksumMismatch { .. })));
        let mut data = snapshot(4096);
        data[10] ^= 1;
        assert!(matches!(verify_in_chunks(&data, 1024), Err(Error::ChecksumMismatch { .. })));
    }

    #[test]
    fn a_snapshot_check_sees_the_trailer_and_the_structure() {
        let db = crate::bbolt::tests::database(4096);
        let mut data = db.clone();
        data.extend_from_slice(&Sha256::digest(&db));
        let run = |data: &[u8]| {
            let mut check = SnapshotCheck::default();
            data.chunks(333).for_each(|c| check.update(c));
            check.finish()
        };
        let checked = run(&data).unwrap();
        assert_eq!((checked.size, checked.db.pages), (data.len() as u64, 7));
        assert_eq!(checked.sha256, hex::encode(Sha256::digest(&db)));
        // Damage under a recomputed trailer: only the structure check sees it.
        let mut bad = db.clone();
        bad[16] ^= 0xFF;
        bad.extend_from_slice(&Sha256::digest(&bad));
        assert!(matches!(run(&bad), Err(Error::Structure { reason }) if reason.contains("magic")));
        data[100] ^= 1;
        assert!(matches!(run(&data), Err(Error::ChecksumMismatch { .. })));
    }
}
