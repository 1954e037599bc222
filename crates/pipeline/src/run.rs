use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore as _, PutMultipartOptions, WriteMultipart};

use crate::{Error, S3Operation, S3Sink, TrailerVerifier};

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
            part_size: 8 << 20,
            parts_in_flight: 3,
            idle_timeout: Duration::from_secs(60),
            total_timeout: Duration::from_secs(3600),
        }
    }
}

/// What a finished backup stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub key: String,
    /// Bytes stored: the database plus its 32-byte trailer.
    pub size: u64,
    /// Hex SHA-256 of the database, verified against the trailer.
    pub sha256: String,
    pub duration: Duration,
}

/// Streams `source` into `key` of the sink's bucket, verifying the snapshot trailer on the way.
/// `metadata` becomes the object's user metadata (`x-amz-meta-*`). `progress` is told the byte count
/// after each chunk.
pub async fn run<S, E>(
    source: S,
    sink: &S3Sink,
    key: &str,
    metadata: &[(&str, String)],
    limits: &Limits,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Report, Error>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let mut attributes = Attributes::new();
    for (name, value) in metadata {
        attributes.insert(Attribute::Metadata(name.to_string().into()), value.clone().into());
    }
    let options = PutMultipartOptions { attributes, ..Default::default() };
    let upload = sink
        .store
        .put_multipart_opts(&Path::from(key), options)
        .await
        .map_err(|e| sink.error(S3Operation::CreateMultipartUpload, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, limits.part_size);
    let mut verifier = TrailerVerifier::new();

    let streamed = tokio::time::timeout(
        limits.total_timeout,
        stream_into(source, &mut writer, &mut verifier, sink, limits, progress),
    )
    .await
    .unwrap_or_else(|_| Err(Error::TotalTimeout { timeout: limits.total_timeout, bytes: verifier.total() }));
    let size = verifier.total();
    let verified = streamed.and_then(|()| verifier.finish());

    match verified {
        Ok(digest) => {
            writer.finish().await.map_err(|e| sink.error(S3Operation::CompleteMultipartUpload, e))?;
            Ok(Report { key: key.to_owned(), size, sha256: hex::encode(digest), duration: started.elapsed() })
        }
        Err(error) => {
            // Abort so that no part lingers in the bucket (and no object appears at the key).
            if let Err(abort) = writer.abort().await {
                tracing::warn!(key, error = %abort, "aborting the multipart upload failed; a bucket lifecycle rule for incomplete uploads will clean it up");
            }
            Err(error)
        }
    }
}

async fn stream_into<S, E>(
    source: S,
    writer: &mut WriteMultipart,
    verifier: &mut TrailerVerifier,
    sink: &S3Sink,
    limits: &Limits,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), Error>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut source = std::pin::pin!(source);
    // Talos sends 1 KiB messages. Copying them into one contiguous buffer per part costs a memcpy but
    // makes each part one allocation (memory is exactly part_size per buffer, and no part pins the
    // gRPC decode buffers its slices came from) and one large write on upload.
    let mut part = BytesMut::with_capacity(limits.part_size);
    loop {
        let next = tokio::time::timeout(limits.idle_timeout, source.next())
            .await
            .map_err(|_| Error::IdleTimeout { timeout: limits.idle_timeout, bytes: verifier.total() })?;
        match next {
            None => {
                if !part.is_empty() {
                    writer.put(part.freeze());
                }
                return Ok(());
            }
            Some(Err(e)) => return Err(Error::Source { bytes: verifier.total(), cause: Box::new(e) }),
            Some(Ok(chunk)) => {
                verifier.update(&chunk);
                part.extend_from_slice(&chunk);
                progress(verifier.total());
                if part.len() >= limits.part_size {
                    // Back-pressure: the source waits while the permitted parts are uploading.
                    writer
                        .wait_for_capacity(limits.parts_in_flight)
                        .await
                        .map_err(|e| sink.error(S3Operation::UploadPart, e))?;
                    writer.put(part.split().freeze());
                    part.reserve(limits.part_size);
                }
            }
        }
    }
}
