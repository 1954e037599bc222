use sha2::{Digest, Sha256};

use crate::Error;

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
        self.total += chunk.len() as u64;
        if chunk.len() >= TRAILER {
            self.hasher.update(&self.held);
            let (body, tail) = chunk.split_at(chunk.len() - TRAILER);
            self.hasher.update(body);
            self.held.clear();
            self.held.extend_from_slice(tail);
        } else {
            self.held.extend_from_slice(chunk);
            if self.held.len() > TRAILER {
                let excess = self.held.len() - TRAILER;
                self.hasher.update(&self.held[..excess]);
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
}
