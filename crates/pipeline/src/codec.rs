//! Compression and encryption of the stored snapshot, on the stream: the plain snapshot (trailer
//! verified on it) → zstd → age → S3, and back. What is stored is a standard zstd frame inside a
//! standard age file, so `age -d -i key | zstd -d` gives back the exact snapshot.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::io::{AsyncBufRead, AsyncReadExt as _, BufReader};
use futures::{Stream, TryStreamExt as _};
use sha2::{Digest, Sha256};

use crate::Error;

/// How a snapshot is stored: compressed, encrypted, both or neither.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub zstd: bool,
    pub age: bool,
}

impl Format {
    /// The key's ending: `.db`, `.db.zst`, `.db.age` or `.db.zst.age`.
    pub fn suffix(self) -> &'static str {
        match (self.zstd, self.age) {
            (false, false) => ".db",
            (true, false) => ".db.zst",
            (false, true) => ".db.age",
            (true, true) => ".db.zst.age",
        }
    }

    /// The object's `encoding` metadata: `plain`, `zstd`, `age` or `zstd+age`.
    pub fn name(self) -> &'static str {
        match (self.zstd, self.age) {
            (false, false) => "plain",
            (true, false) => "zstd",
            (false, true) => "age",
            (true, true) => "zstd+age",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        [(false, false), (true, false), (false, true), (true, true)]
            .into_iter()
            .map(|(zstd, age)| Format { zstd, age })
            .find(|format| format.name() == name)
    }

    /// The format a key's ending names (objects stored without `encoding` metadata).
    pub fn of_key(key: &str) -> Format {
        Format { zstd: key.ends_with(".zst") || key.ends_with(".zst.age"), age: key.ends_with(".age") }
    }
}

/// What to do to the snapshot before it is stored.
#[derive(Clone, Debug, Default)]
pub struct Encoding {
    /// zstd level (1 to 19), when compressed.
    pub zstd_level: Option<i32>,
    /// age recipients, when encrypted; any one of their identities decrypts.
    pub recipients: Vec<Recipient>,
}

impl Encoding {
    pub fn format(&self) -> Format {
        Format { zstd: self.zstd_level.is_some(), age: !self.recipients.is_empty() }
    }

    /// The recipients' fingerprints, as status shows them.
    pub fn fingerprints(&self) -> Vec<String> {
        self.recipients.iter().map(|r| r.fingerprint.clone()).collect()
    }
}

/// Whom a snapshot is encrypted to: an age recipient behind age's own trait (X25519 public keys
/// today; SSH or plugin recipients fit the same slot), with the fingerprint a status shows.
#[derive(Clone)]
pub struct Recipient {
    key: Arc<dyn age::Recipient + Send + Sync>,
    fingerprint: String,
}

impl Recipient {
    /// `sha256:` and the first 16 hex digits of the SHA-256 of the recipient's `age1…` text: enough
    /// to tell recipients apart in a status, short enough to read.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl From<age::x25519::Recipient> for Recipient {
    fn from(key: age::x25519::Recipient) -> Self {
        let digest = Sha256::digest(key.to_string().as_bytes());
        Recipient { fingerprint: format!("sha256:{}", &hex::encode(digest)[..16]), key: Arc::new(key) }
    }
}

impl PartialEq for Recipient {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipient({})", self.fingerprint)
    }
}

/// What decrypts a snapshot: an age identity behind age's own trait. Debug output never shows it.
pub struct Identity(Box<dyn age::Identity + Send + Sync>);

impl From<age::x25519::Identity> for Identity {
    fn from(key: age::x25519::Identity) -> Self {
        Identity(Box::new(key))
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity(..)")
    }
}

/// The highest zstd level taken: above it (the "ultra" levels) zstd's window grows to 128 MiB and
/// memory would no longer be small.
pub const MAX_ZSTD_LEVEL: i32 = 19;

/// age X25519 recipients (`age1…`), one per entry; a recipients file's `#` comments and blank lines
/// are skipped. Recipients are public keys, so errors quote them.
pub fn parse_recipients<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Vec<Recipient>, String> {
    let mut recipients = Vec::new();
    for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty() && !e.starts_with('#')) {
        let recipient: age::x25519::Recipient = entry.parse().map_err(|reason| {
            let shown: String = entry.chars().take(80).collect();
            format!("{shown:?} is not an age X25519 recipient (a public key age1…, as age-keygen prints): {reason}")
        })?;
        recipients.push(recipient.into());
    }
    Ok(recipients)
}

/// age X25519 identities (`AGE-SECRET-KEY-1…`) from an identity file's text: one per line, `#`
/// comments and blank lines skipped. Errors name the line, never its content.
pub fn parse_identities(text: &str) -> Result<Vec<Identity>, String> {
    let mut identities = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let identity: age::x25519::Identity = line.parse().map_err(|_| {
            format!(
                "line {} of the identity is not an age X25519 secret key (AGE-SECRET-KEY-1…, as age-keygen writes it)",
                number + 1
            )
        })?;
        identities.push(identity.into());
    }
    if identities.is_empty() {
        return Err("the identity holds no age secret key (AGE-SECRET-KEY-1…)".to_owned());
    }
    Ok(identities)
}

/// The bytes the encoder has written so far and not yet handed on, in the part being filled.
#[derive(Clone)]
struct Output(Arc<Mutex<Filling>>);

struct Filling {
    buffer: Vec<u8>,
    buffers: PartBuffers,
}

impl Write for Output {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("encoder output lock").buffer.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Part buffers that have been uploaded, kept for the next parts. A backup then allocates its
/// `parts_in_flight + 1` buffers once and reuses them, instead of asking the allocator for a fresh
/// 8 MiB block per part: glibc serves those from its arenas once its mmap threshold has risen, and
/// freed blocks there fragment into a peak RSS that varied by 10 MiB from run to run.
#[derive(Clone)]
struct PartBuffers {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
    capacity: usize,
}

impl PartBuffers {
    fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().expect("part buffers lock").pop();
        reused.unwrap_or_else(|| Vec::with_capacity(self.capacity))
    }
}

/// A part's bytes on their way to the store; its buffer goes back to the pool when the upload
/// lets go of it.
struct PooledPart {
    buffer: Vec<u8>,
    buffers: PartBuffers,
}

impl AsRef<[u8]> for PooledPart {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for PooledPart {
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        self.buffers.free.lock().expect("part buffers lock").push(buffer);
    }
}

/// One step of the encoder, ended by writing what it still holds.
trait Stage: Write + Send {
    fn finish(self: Box<Self>) -> io::Result<()>;
}

impl Stage for Output {
    fn finish(self: Box<Self>) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Stage> Stage for zstd::stream::write::Encoder<'static, W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        Box::new((*self).finish()?).finish()
    }
}

impl<W: Stage> Stage for age::stream::StreamWriter<W> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        Box::new((*self).finish()?).finish()
    }
}

/// Turns the plain snapshot into what is stored, a write at a time, into parts of a given size.
/// Memory: zstd's window (8 MiB at most, for level 19) plus age's 64 KiB chunk plus one part being
/// filled, plus the parts handed out and not yet dropped (their buffers are reused afterwards).
pub struct Encoder {
    stage: Box<dyn Stage>,
    output: Output,
    stored: u64,
}

impl Encoder {
    pub fn new(encoding: &Encoding, part_size: usize) -> Result<Self, Error> {
        let buffers = PartBuffers { free: Arc::default(), capacity: part_size + SLACK };
        let output = Output(Arc::new(Mutex::new(Filling { buffer: buffers.take(), buffers })));
        let failed = |e: io::Error| Error::Encode(e.to_string());
        let encrypted = match encoding.recipients.as_slice() {
            [] => None,
            recipients => {
                let recipients = recipients.iter().map(|r| &*r.key as &dyn age::Recipient);
                let encryptor =
                    age::Encryptor::with_recipients(recipients).map_err(|e| Error::Encode(e.to_string()))?;
                Some(encryptor.wrap_output(output.clone()).map_err(failed)?)
            }
        };
        let zstd = |level: i32| level.clamp(1, MAX_ZSTD_LEVEL);
        let stage: Box<dyn Stage> = match (encoding.zstd_level, encrypted) {
            (None, None) => Box::new(output.clone()),
            (None, Some(age)) => Box::new(age),
            (Some(level), None) => Box::new(zstd_encoder(output.clone(), zstd(level)).map_err(failed)?),
            (Some(level), Some(age)) => Box::new(zstd_encoder(age, zstd(level)).map_err(failed)?),
        };
        Ok(Encoder { stage, output, stored: 0 })
    }

    pub fn write(&mut self, plain: &[u8]) -> Result<(), Error> {
        self.stage.write_all(plain).map_err(|e| Error::Encode(e.to_string()))
    }

    /// Whether `part_size` bytes are ready to store.
    pub fn has_part(&self, part_size: usize) -> bool {
        self.output.0.lock().expect("encoder output lock").buffer.len() >= part_size
    }

    /// The next `part_size` bytes to store, once there are that many. Filling goes on in a buffer
    /// from the pool (the part's own, once it has been dropped).
    pub fn take_part(&mut self, part_size: usize) -> Option<Bytes> {
        let mut output = self.output.0.lock().expect("encoder output lock");
        if output.buffer.len() < part_size {
            return None;
        }
        let mut next = output.buffers.take();
        next.extend_from_slice(&output.buffer[part_size..]);
        output.buffer.truncate(part_size);
        let buffer = std::mem::replace(&mut output.buffer, next);
        self.stored += buffer.len() as u64;
        Some(Bytes::from_owner(PooledPart { buffer, buffers: output.buffers.clone() }))
    }

    /// Ends the encoding: the bytes left to store, and the total stored.
    pub fn finish(self) -> Result<(Bytes, u64), Error> {
        self.stage.finish().map_err(|e| Error::Encode(e.to_string()))?;
        let rest = std::mem::take(&mut self.output.0.lock().expect("encoder output lock").buffer);
        let stored = self.stored + rest.len() as u64;
        Ok((Bytes::from(rest), stored))
    }
}

/// Room past a part's size for one write's output (an age chunk is 64 KiB, zstd flushes at most a
/// 128 KiB block), so that filling a part never reallocates its buffer.
const SLACK: usize = 256 * 1024;

/// A zstd frame with its content checksum, as the `zstd` tool writes it: `zstd -d` checks it.
fn zstd_encoder<W: Stage>(inner: W, level: i32) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(inner, level)?;
    encoder.include_checksum(true)?;
    Ok(encoder)
}

type Reader = Pin<Box<dyn AsyncBufRead + Send>>;

/// Chunks read from a decoded stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// A small document (a recovery kit) encrypted to `recipients` as one age file.
pub fn seal(plain: &[u8], recipients: &[Recipient]) -> Result<Vec<u8>, Error> {
    let recipients = recipients.iter().map(|r| &*r.key as &dyn age::Recipient);
    let encryptor = age::Encryptor::with_recipients(recipients).map_err(|e| Error::Encode(e.to_string()))?;
    let mut sealed = Vec::new();
    let mut writer = encryptor.wrap_output(&mut sealed).map_err(|e| Error::Encode(e.to_string()))?;
    writer.write_all(plain).and_then(|()| writer.finish().map(drop)).map_err(|e| Error::Encode(e.to_string()))?;
    Ok(sealed)
}

/// What [`seal`] sealed, opened with one of `identities`; a wrong identity or a damaged file is
/// [`Error::Decode`].
pub fn open(sealed: &[u8], identities: &[Identity]) -> Result<Vec<u8>, Error> {
    if identities.is_empty() {
        return Err(Error::Decode(
            "it is encrypted with age; give the identity (AGE-SECRET-KEY-1…) of one of its recipients".into(),
        ));
    }
    let decryptor = age::Decryptor::new(sealed).map_err(decrypt_error)?;
    let mut reader =
        decryptor.decrypt(identities.iter().map(|i| &*i.0 as &dyn age::Identity)).map_err(decrypt_error)?;
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut plain)
        .map_err(|e| Error::Decode(format!("cannot decrypt it (truncated or damaged?): {e}")))?;
    Ok(plain)
}

/// Turns a stored object back into the plain snapshot, as a stream: decrypted with `identities` (when
/// `format.age`), then decompressed (when `format.zstd`). Errors of `stored` come out unchanged;
/// a wrong identity, a truncated or damaged object are [`Error::Decode`].
pub async fn decode<S>(
    stored: S,
    format: Format,
    identities: &[Identity],
) -> Result<impl Stream<Item = Result<Bytes, Error>> + Send + 'static, Error>
where
    S: Stream<Item = Result<Bytes, Error>> + Send + 'static,
{
    let raw = Box::pin(stored.map_err(io::Error::other)).into_async_read();
    let mut reader: Reader = Box::pin(raw);
    if format.age {
        if identities.is_empty() {
            return Err(Error::Decode(
                "the backup is encrypted with age; give the identity (AGE-SECRET-KEY-1…) of one of its recipients"
                    .to_owned(),
            ));
        }
        let decryptor = age::Decryptor::new_async_buffered(reader).await.map_err(decrypt_error)?;
        let identities = identities.iter().map(|i| &*i.0 as &dyn age::Identity);
        let plain = decryptor.decrypt_async(identities).map_err(decrypt_error)?;
        reader = Box::pin(BufReader::with_capacity(READ_CHUNK, plain));
    }
    if format.zstd {
        let plain = async_compression::futures::bufread::ZstdDecoder::new(reader);
        reader = Box::pin(BufReader::with_capacity(READ_CHUNK, plain));
    }
    Ok(futures::stream::try_unfold((reader, vec![0u8; READ_CHUNK]), move |(mut reader, mut buffer)| async move {
        let read = reader.read(&mut buffer).await.map_err(|e| read_error(e, format))?;
        if read == 0 {
            return Ok(None);
        }
        Ok(Some((Bytes::copy_from_slice(&buffer[..read]), (reader, buffer))))
    }))
}

fn decrypt_error(e: age::DecryptError) -> Error {
    match e {
        age::DecryptError::NoMatchingKeys => Error::Decode(
            "none of the given age identities can decrypt the backup: it is encrypted to other recipients".to_owned(),
        ),
        age::DecryptError::Io(e) => read_error(e, Format { zstd: false, age: true }),
        e => Error::Decode(format!("the backup is not a sound age file: {e}")),
    }
}

/// An error of the object's own stream is handed back as it was; anything else is the decoding's.
fn read_error(e: io::Error, format: Format) -> Error {
    let message = e.to_string();
    match e.into_inner().map(|inner| inner.downcast::<Error>()) {
        Some(Ok(inner)) => *inner,
        _ => Error::Decode(format!("cannot decode the {} backup (truncated or damaged?): {message}", format.name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    /// An identity, its recipient, and the identity's secret text.
    fn keys() -> (Identity, Recipient, String) {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().into();
        let secret = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_owned();
        (identity.into(), recipient, secret)
    }

    fn encode(data: &[u8], encoding: &Encoding, part_size: usize) -> Vec<u8> {
        let mut encoder = Encoder::new(encoding, part_size).unwrap();
        let mut stored = Vec::new();
        for chunk in data.chunks(1024) {
            encoder.write(chunk).unwrap();
            while let Some(part) = encoder.take_part(part_size) {
                assert_eq!(part.len(), part_size);
                stored.extend_from_slice(&part);
            }
        }
        let (rest, total) = encoder.finish().unwrap();
        stored.extend_from_slice(&rest);
        assert_eq!(total, stored.len() as u64);
        stored
    }

    async fn decoded(stored: Vec<u8>, format: Format, identities: &[Identity]) -> Result<Vec<u8>, Error> {
        let chunks: Vec<Result<Bytes, Error>> = stored.chunks(7000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let stream = decode(futures::stream::iter(chunks), format, identities).await?;
        let parts: Vec<Bytes> = stream.try_collect().await?;
        Ok(parts.concat())
    }

    fn sample() -> Vec<u8> {
        (0..300_000u32).flat_map(|i| (i % 1000).to_le_bytes()).collect()
    }

    #[tokio::test]
    async fn every_format_round_trips() {
        let (identity, recipient, _) = keys();
        let data = sample();
        for (zstd_level, recipients) in
            [(None, vec![]), (Some(3), vec![]), (None, vec![recipient.clone()]), (Some(19), vec![recipient.clone()])]
        {
            let encoding = Encoding { zstd_level, recipients };
            let stored = encode(&data, &encoding, 5000);
            let format = encoding.format();
            assert_eq!(Format::of_key(&format!("k{}", format.suffix())), format);
            assert_eq!(Format::from_name(format.name()), Some(format));
            if format.zstd {
                assert!(stored.len() < data.len() / 4, "{} compressed to {}", data.len(), stored.len());
            }
            assert_eq!(decoded(stored, format, std::slice::from_ref(&identity)).await.unwrap(), data, "{format:?}");
        }
    }

    #[test]
    fn part_buffers_are_reused_once_their_upload_lets_go() {
        let mut encoder = Encoder::new(&Encoding::default(), 4096).unwrap();
        let mut held = Vec::new();
        for round in 0..6u8 {
            encoder.write(&[round; 4096]).unwrap();
            assert!(encoder.has_part(4096));
            let part = encoder.take_part(4096).unwrap();
            assert_eq!(&part[..], &[round; 4096][..]);
            held.push(part.as_ptr());
            // Dropping the part returns its buffer: the pool never holds more than two.
        }
        assert!(!encoder.has_part(1));
        let distinct: std::collections::HashSet<_> = held.iter().collect();
        assert!(distinct.len() <= 2, "{} buffers for 6 parts", distinct.len());
        let (rest, stored) = encoder.finish().unwrap();
        assert!(rest.is_empty());
        assert_eq!(stored, 6 * 4096);
    }

    #[tokio::test]
    async fn a_wrong_identity_or_a_truncated_object_is_a_clear_error() {
        let (_, recipient, _) = keys();
        let (other, _, _) = keys();
        let encoding = Encoding { zstd_level: Some(3), recipients: vec![recipient] };
        let stored = encode(&sample(), &encoding, 5000);
        let format = encoding.format();
        let err = decoded(stored.clone(), format, std::slice::from_ref(&other)).await.unwrap_err();
        assert!(err.to_string().contains("encrypted to other recipients"), "{err}");
        let err = decoded(stored.clone(), format, &[]).await.unwrap_err();
        assert!(err.to_string().contains("give the identity"), "{err}");
        let (identity, recipient, _) = keys();
        let encoding = Encoding { zstd_level: None, recipients: vec![recipient] };
        let stored = encode(&sample(), &encoding, 5000);
        let cut = stored[..stored.len() - 100].to_vec();
        let err = decoded(cut, encoding.format(), &[identity]).await.unwrap_err();
        assert!(matches!(err, Error::Decode(_)), "{err}");
        let compressed = encode(&sample(), &Encoding { zstd_level: Some(3), recipients: vec![] }, 5000);
        let cut = compressed[..compressed.len() / 2].to_vec();
        let err = decoded(cut, Format { zstd: true, age: false }, &[]).await.unwrap_err();
        assert!(matches!(err, Error::Decode(_)), "{err}");
    }

    #[tokio::test]
    async fn errors_of_the_stored_stream_come_out_unchanged() {
        let chunks = vec![Ok(Bytes::from_static(b"age-encryption.org/v1\n")), Err(Error::Truncated { bytes: 7 })];
        let (identity, _, _) = keys();
        let format = Format { zstd: false, age: true };
        let err = match decode(futures::stream::iter(chunks), format, &[identity]).await {
            Err(e) => e,
            Ok(stream) => std::pin::pin!(stream).next().await.unwrap().unwrap_err(),
        };
        assert!(matches!(err, Error::Truncated { bytes: 7 }), "{err}");
    }

    #[test]
    fn small_documents_seal_and_open_only_with_a_recipients_identity() {
        let (identity, recipient, _) = keys();
        let (other, _, _) = keys();
        let sealed = seal(b"cluster secrets", &[recipient]).unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1"));
        assert_eq!(open(&sealed, std::slice::from_ref(&identity)).unwrap(), b"cluster secrets");
        let err = open(&sealed, &[other]).unwrap_err();
        assert!(err.to_string().contains("encrypted to other recipients"), "{err}");
        assert!(matches!(open(&sealed[..sealed.len() - 5], &[identity]), Err(Error::Decode(_))));
    }

    #[test]
    fn recipients_and_identities_are_checked_and_identities_never_quoted() {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let text = format!("# backups\n{recipient}\n\n");
        assert_eq!(parse_recipients(text.lines()).unwrap(), vec![Recipient::from(recipient.clone())]);
        let err = parse_recipients(["age1notakey"]).unwrap_err();
        assert!(err.contains("\"age1notakey\" is not an age X25519 recipient"), "{err}");
        assert!(parse_recipients(["", "# none"]).unwrap().is_empty());
        let secret = identity.to_string();
        let secret = age::secrecy::ExposeSecret::expose_secret(&secret);
        assert_eq!(parse_identities(&format!("# key\n{secret}\n")).unwrap().len(), 1);
        let broken = format!("{}X", &secret[..secret.len() - 1]);
        let err = parse_identities(&format!("# key\n{broken}\n")).err().unwrap();
        assert!(err.contains("line 2") && !err.contains(&broken[15..]), "{err}");
        assert!(parse_identities("# nothing\n").err().unwrap().contains("holds no age secret key"));
        let fingerprint = Recipient::from(recipient).fingerprint().to_owned();
        assert!(fingerprint.starts_with("sha256:") && fingerprint.len() == 23, "{fingerprint}");
    }
}
