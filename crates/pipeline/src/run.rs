use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::multipart::PartId;
use tokio::task::JoinSet;

use crate::codec::Encoder;
use crate::storage::PartWriter;
use crate::{Encoding, Error, Operation, Storage, TrailerVerifier, UploadRef};

/// Bounds on one backup's memory and time.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Size of each multipart part; memory is about `part_size × (parts_in_flight + 1)`.
    pub part_size: usize,
    /// Parts uploading at once.
    pub parts_in_flight: usize,
    /// Longest wait for the next bytes from the source.
    pub idle_timeout: Duration,
    /// Longest a whole backup may take.
    pub total_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // 6 MiB × (2 + 1) part buffers: a backup stays within 48 MiB, and two uploads at once keep
            // pace with any Talos source (bench: no slower than three, unthrottled at 100 MB/s).
            part_size: 6 << 20,
            parts_in_flight: 2,
            idle_timeout: Duration::from_secs(60),
            total_timeout: Duration::from_secs(3600),
        }
    }
}

/// What a finished backup stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub key: String,
    /// Bytes of the snapshot, the database plus its 32-byte trailer; `None` when not known (a
    /// compressed or encrypted object recognised after a crash: known only once decoded).
    pub size: Option<u64>,
    /// Bytes stored: the snapshot's unless compressed or encrypted.
    pub stored_size: u64,
    /// Hex SHA-256 of the database, verified against the trailer; `None` when not known, as `size`.
    pub sha256: Option<String>,
    pub duration: Duration,
}

/// Streams `source` into `upload`, verifying the snapshot trailer on the way and encoding it as
/// `encoding` says (zstd, then age), and completes the upload only when the trailer matched. On any
/// failure the upload is aborted (best effort: the
/// caller, which recorded it, can abort it again later). `progress` is told the byte count after
/// each chunk.
pub async fn run<S, E>(
    source: S,
    storage: &Storage,
    upload: &UploadRef,
    limits: &Limits,
    encoding: &Encoding,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Report, Error>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    run_with(source, storage, upload, limits, encoding, progress, &mut |_| {}).await
}

/// [`run`], handing each byte of the database (never of the trailer) to `db` too, once, in order, as
/// it passes: what a reader of the database sees of the backup's own stream.
pub async fn run_with<S, E>(
    source: S,
    storage: &Storage,
    upload: &UploadRef,
    limits: &Limits,
    encoding: &Encoding,
    progress: &(dyn Fn(u64) + Send + Sync),
    db: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<Report, Error>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let mut parts = Parts::new(storage, storage.writer(upload).await?);
    let mut verifier = TrailerVerifier::new();
    let how = How { limits, encoding, progress };
    let streamed = tokio::time::timeout(limits.total_timeout, stream_into(source, &mut parts, &mut verifier, &how, db))
        .await
        .unwrap_or_else(|_| Err(Error::TotalTimeout { timeout: limits.total_timeout, bytes: verifier.total() }));
    let size = verifier.total();
    let completed = match streamed.and_then(|stored| Ok((stored, verifier.finish()?))) {
        Ok((stored, digest)) => parts.complete().await.map(|()| (stored, digest)),
        Err(error) => Err(error),
    };
    match completed {
        Ok((stored, digest)) => Ok(Report {
            key: upload.key.clone(),
            size: Some(size),
            stored_size: stored,
            sha256: Some(hex::encode(digest)),
            duration: started.elapsed(),
        }),
        Err(error) => {
            // Abort so that no part lingers in the bucket (and no object appears at the key).
            parts.cancel();
            if let Err(abort) = storage.abort_upload(upload).await {
                tracing::warn!(key = %upload.key, error = %abort, "aborting the multipart upload failed");
            }
            Err(error)
        }
    }
}

/// The parts of one upload: at most `parts_in_flight` uploading at once, their ids kept in order.
struct Parts<'a> {
    storage: &'a Storage,
    writer: PartWriter,
    running: JoinSet<Result<(usize, PartId), object_store::Error>>,
    done: Vec<Option<PartId>>,
}

impl<'a> Parts<'a> {
    fn new(storage: &'a Storage, writer: PartWriter) -> Self {
        Parts { storage, writer, running: JoinSet::new(), done: Vec::new() }
    }

    /// Waits until fewer than `in_flight` parts are uploading (back-pressure: the source waits
    /// meanwhile, and no further part buffer is filled).
    async fn room(&mut self, in_flight: usize) -> Result<(), Error> {
        while self.running.len() >= in_flight.max(1) {
            self.join_one().await?;
        }
        Ok(())
    }

    /// Starts uploading `data` as the next part.
    fn start(&mut self, data: Bytes) {
        let index = self.done.len();
        self.done.push(None);
        let part = self.writer.part(index, data);
        self.running.spawn(async move { Ok((index, part.await?)) });
    }

    async fn join_one(&mut self) -> Result<(), Error> {
        let failed = |e| self.storage.error(Operation::UploadPart, e);
        match self.running.join_next().await {
            Some(Ok(Ok((index, part)))) => {
                self.done[index] = Some(part);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(failed(e)),
            Some(Err(join)) => Err(failed(object_store::Error::JoinError { source: join })),
            None => Ok(()),
        }
    }

    async fn complete(&mut self) -> Result<(), Error> {
        while !self.running.is_empty() {
            self.join_one().await?;
        }
        let parts: Vec<PartId> = std::mem::take(&mut self.done).into_iter().flatten().collect();
        let completed = self.writer.complete(parts).await;
        completed.map_err(|e| self.storage.error(Operation::CompleteMultipartUpload, e))
    }

    fn cancel(&mut self) {
        self.running.abort_all();
    }
}

/// How one run streams: its bounds, the encoding, whom to tell of progress.
struct How<'a> {
    limits: &'a Limits,
    encoding: &'a Encoding,
    progress: &'a (dyn Fn(u64) + Send + Sync),
}

/// Returns the bytes stored.
async fn stream_into<S, E>(
    source: S,
    parts: &mut Parts<'_>,
    verifier: &mut TrailerVerifier,
    how: &How<'_>,
    db: &mut (dyn FnMut(&[u8]) + Send),
) -> Result<u64, Error>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    let How { limits, encoding, progress } = how;
    let mut source = std::pin::pin!(source);
    // Talos sends 1 KiB messages. The encoder copies them (plain, or compressed and encrypted) into one
    // contiguous buffer per part: a memcpy, but each part is one allocation (memory is part_size per
    // buffer, and no part pins the gRPC decode buffers its slices came from) and one large write.
    let mut encoder = Encoder::new(encoding, limits.part_size)?;
    // One idle timer for the whole stream, looked at only when it fires (a timer per chunk was a
    // timer-wheel registration per KiB): the source's pace decides.
    let mut idle = std::pin::pin!(tokio::time::sleep(limits.idle_timeout));
    let mut last_bytes = tokio::time::Instant::now();
    loop {
        let next = tokio::select! {
            biased;
            next = source.next() => next,
            () = &mut idle => {
                let quiet_until = last_bytes + limits.idle_timeout;
                if quiet_until <= tokio::time::Instant::now() {
                    return Err(Error::IdleTimeout { timeout: limits.idle_timeout, bytes: verifier.total() });
                }
                idle.as_mut().reset(quiet_until);
                continue;
            }
        };
        last_bytes = tokio::time::Instant::now();
        match next {
            None => {
                let (rest, stored) = encoder.finish()?;
                if !rest.is_empty() {
                    parts.room(limits.parts_in_flight).await?;
                    parts.start(rest);
                }
                return Ok(stored);
            }
            Some(Err(e)) => return Err(Error::Source { bytes: verifier.total(), cause: Box::new(e) }),
            Some(Ok(chunk)) => {
                verifier.update_with(&chunk, db);
                encoder.write(&chunk)?;
                progress(verifier.total());
                // A slot first, then the part: at most `parts_in_flight + 1` part buffers exist.
                while encoder.has_part(limits.part_size) {
                    parts.room(limits.parts_in_flight).await?;
                    if let Some(part) = encoder.take_part(limits.part_size) {
                        parts.start(part);
                    }
                }
            }
        }
    }
}
