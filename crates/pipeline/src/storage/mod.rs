//! The storage handle: one bucket (or container) of an object store, built once from a
//! [`StorageLocation`] and used for everything a backup does there: multipart uploads, reads, lists,
//! deletes. Each backend is one builder module (`aws`, `azure`, `gcp`) that turns its location into
//! a handle and says how its service names failures; nothing above this module knows which backend
//! it uses. Adding one is a module and a [`StorageLocation`] variant.

pub mod aws;
pub mod azure;
pub(crate) mod check;
pub mod gcp;
mod listing;
pub mod url;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{Attribute, Attributes, MultipartUpload, ObjectStore, PutMultipartOptions, PutPayload};

use crate::{CheckedSnapshot, Error, Format, Identity, SnapshotCheck};
use aws::S3Location;
use azure::AzureLocation;
use gcp::GcsLocation;

/// Where backups are stored, as the user configured it.
#[derive(Clone, Debug)]
pub enum StorageLocation {
    S3(S3Location),
    Azure(AzureLocation),
    Gcs(GcsLocation),
}

impl StorageLocation {
    /// The service, as messages name it: `S3`, `Azure Blob Storage`, `GCS`.
    pub fn service(&self) -> &'static str {
        match self {
            StorageLocation::S3(_) => aws::SERVICE,
            StorageLocation::Azure(_) => azure::SERVICE,
            StorageLocation::Gcs(_) => gcp::SERVICE,
        }
    }
}

/// How a backend takes a multipart upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Uploads {
    /// S3 and GCS: an upload the store names and lists, parts sent to it by number; aborting it
    /// drops them.
    Named,
    /// Azure: blocks staged against the blob and committed with its metadata in one block list.
    /// There is nothing to name: uncommitted blocks are invisible, and the service discards them at
    /// the next commit to the blob (which is how they are aborted) or after a week.
    Blocks,
}

/// The request to the store that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    CreateMultipartUpload,
    UploadPart,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    GetObject,
    PutObject,
    DeleteObject,
    ListObjects,
    ListMultipartUploads,
}

/// What a backend's client needs to be: an object store that takes multipart uploads.
pub(crate) trait Backend: ObjectStore + MultipartStore {}

impl<T: ObjectStore + MultipartStore> Backend for T {}

/// A failure as the backend's service names it.
pub(crate) struct Failure {
    pub code: Option<String>,
    pub message: String,
    /// Another try cannot help (credentials, a missing bucket, a bad certificate).
    pub permanent: bool,
}

/// A snapshot found in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// Bytes stored: database plus trailer, compressed and encrypted when `format` says so.
    pub size: u64,
    /// Hex SHA-256 of the database, from the trailer; `None` for a compressed or encrypted object,
    /// whose trailer is known only once decoded.
    pub sha256: Option<String>,
    /// As the `encoding` metadata says, else as the key's ending says.
    pub format: Format,
    /// The object's user metadata (`cluster`, `node`, `format`, `encoding`, `writer`).
    pub metadata: BTreeMap<String, String>,
}

/// One bucket (or container) of an object store. Cheap to clone: clones share one client.
#[derive(Clone)]
pub struct Storage {
    pub(crate) store: Arc<dyn Backend>,
    pub(crate) uploads: Uploads,
    /// The service, as error messages name it: `S3`.
    pub(crate) service: &'static str,
    /// The bucket, as messages name it: `bucket "my-etcd-backups"`.
    pub(crate) container: String,
    pub(crate) failure: Arc<dyn Fn(object_store::Error) -> Failure + Send + Sync>,
    /// S3 with Object Lock: the client of each write that creates an object.
    pub(crate) locked_writer: Option<LockedWriters>,
    /// S3 and GCS: lists unfinished uploads (Azure's staged blocks have no name to list).
    pub(crate) lister: Option<Arc<listing::Lister>>,
}

/// A client whose writes lock the objects they create until `until`.
pub(crate) struct LockedWriter {
    pub store: Arc<dyn Backend>,
    pub until: jiff::Timestamp,
}

pub(crate) type LockedWriters = Arc<dyn Fn() -> Result<LockedWriter, Error> + Send + Sync>;

/// The user metadata that records an object's lock, so that retention and deletion know it without
/// asking S3 (object_store does not read lock headers).
const LOCKED_UNTIL: &str = "locked-until";

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Storage({} {})", self.service, self.container)
    }
}

impl Storage {
    /// The handle of `location`; `request_timeout` bounds each request, a part upload included.
    /// The location is validated first: nothing unchecked reaches a client.
    pub fn new(location: &StorageLocation, request_timeout: Duration) -> Result<Self, Error> {
        match location {
            StorageLocation::S3(s3) => aws::build(s3, request_timeout),
            StorageLocation::Azure(azure) => azure::build(azure, request_timeout),
            StorageLocation::Gcs(gcs) => gcp::build(gcs, request_timeout),
        }
    }

    /// The bucket as messages name it: `bucket "my-etcd-backups"`.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The size of the object at `key`, or None when there is none.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, Error> {
        use object_store::ObjectStoreExt as _;
        match self.store.head(&Path::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(Operation::GetObject, e)),
        }
    }

    /// The snapshot stored at `key` by a completed upload, if there is one: its size, the SHA-256 its
    /// trailer carries (checked when it was uploaded; the upload completes only then) and its user
    /// metadata. A HEAD, then a GET of the last 32 bytes.
    pub async fn stored(&self, key: &str) -> Result<Option<StoredSnapshot>, Error> {
        use object_store::{GetOptions, GetRange};
        let Some(size) = self.size(key).await? else {
            return Ok(None);
        };
        if size < 32 {
            return Ok(None);
        }
        let options = GetOptions { range: Some(GetRange::Bounded(size - 32..size)), ..Default::default() };
        let result = match self.store.get_opts(&Path::from(key), options).await {
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(Operation::GetObject, e)),
            Ok(result) => result,
        };
        let metadata: BTreeMap<String, String> = result
            .attributes
            .iter()
            .filter_map(|(attribute, value)| match attribute {
                Attribute::Metadata(name) => Some((self.metadata_name(name), value.to_string())),
                _ => None,
            })
            .collect();
        let trailer = result.bytes().await.map_err(|e| self.error(Operation::GetObject, e))?;
        if trailer.len() != 32 {
            return Ok(None);
        }
        let format = match metadata.get("encoding") {
            Some(name) => Format::from_name(name).unwrap_or_else(|| Format::of_key(key)),
            None => Format::of_key(key),
        };
        let sha256 = (format == Format::default()).then(|| hex::encode(trailer));
        Ok(Some(StoredSnapshot { size, sha256, format, metadata }))
    }

    /// The object at `key` as a stream of chunks, as they come off the network (one in memory at a
    /// time); a read that stalls for `idle_timeout` ends with an error.
    pub async fn read(
        &self,
        key: &str,
        idle_timeout: Duration,
    ) -> Result<impl futures::Stream<Item = Result<bytes::Bytes, Error>> + Send + 'static, Error> {
        use futures::StreamExt as _;
        let path = Path::from(key);
        let result = self.store.get_opts(&path, Default::default()).await;
        let stream = result.map_err(|e| self.error(Operation::GetObject, e))?.into_stream();
        let storage = self.clone();
        let state = (stream, 0u64, false);
        Ok(futures::stream::unfold(state, move |(mut stream, bytes, done)| {
            let storage = storage.clone();
            async move {
                if done {
                    return None;
                }
                let item = match tokio::time::timeout(idle_timeout, stream.next()).await {
                    Err(_) => Err(Error::IdleTimeout { timeout: idle_timeout, bytes }),
                    Ok(None) => return None,
                    Ok(Some(Err(e))) => Err(storage.error(Operation::GetObject, e)),
                    Ok(Some(Ok(chunk))) => Ok(chunk),
                };
                let next = bytes + item.as_ref().map_or(0, |c| c.len() as u64);
                let failed = item.is_err();
                Some((item, (stream, next, failed)))
            }
        }))
    }

    /// The snapshot stored at `key` in `format`, decrypted with `identities` and decompressed on the
    /// fly: the plain snapshot as a stream.
    pub async fn read_snapshot(
        &self,
        key: &str,
        format: Format,
        identities: &[Identity],
        idle_timeout: Duration,
    ) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes, Error>>, Error> {
        use futures::StreamExt as _;
        let stored = self.read(key, idle_timeout).await?;
        if format == Format::default() {
            return Ok(stored.boxed());
        }
        Ok(crate::codec::decode(stored, format, identities).await?.boxed())
    }

    /// Reads the snapshot at `key` back in one streamed pass (decoded as [`Storage::read_snapshot`]
    /// does) and checks it ([`SnapshotCheck`]), handing the database's bytes to `db` on the way.
    /// `progress` gets the snapshot's bytes read so far.
    pub async fn verify(
        &self,
        key: &str,
        format: Format,
        identities: &[Identity],
        idle_timeout: Duration,
        progress: &(dyn Fn(u64) + Send + Sync),
        db: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<CheckedSnapshot, Error> {
        use futures::StreamExt as _;
        let mut stream = self.read_snapshot(key, format, identities, idle_timeout).await?;
        let mut check = SnapshotCheck::default();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            check.update_with(&chunk, db);
            bytes += chunk.len() as u64;
            progress(bytes);
        }
        check.finish()
    }

    /// The objects whose keys start with `prefix` (a folder: `a/b/`), as (key, size, last modified in
    /// Unix seconds).
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64, i64)>, Error> {
        use futures::TryStreamExt as _;
        let prefix = Path::from(prefix.trim_end_matches('/'));
        let objects: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&prefix)).try_collect().await.map_err(|e| self.error(Operation::ListObjects, e))?;
        Ok(objects.into_iter().map(|o| (o.location.to_string(), o.size, o.last_modified.timestamp())).collect())
    }

    /// Stores a small object (a recovery kit) at `key` in one request, with `metadata` as its user
    /// metadata. An object already there is replaced.
    pub async fn put(&self, key: &str, bytes: Vec<u8>, metadata: &[(&str, String)]) -> Result<(), Error> {
        use object_store::PutOptions;
        let mut metadata = owned(metadata);
        let store = self.creating_store(&mut metadata)?;
        let options = PutOptions { attributes: self.attributes(&metadata), ..Default::default() };
        store
            .put_opts(&Path::from(key), bytes.into(), options)
            .await
            .map(drop)
            .map_err(|e| self.error(Operation::PutObject, e))
    }

    /// A small object read whole, or None when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<bytes::Bytes>, Error> {
        match self.store.get_opts(&Path::from(key), Default::default()).await {
            Ok(result) => result.bytes().await.map(Some).map_err(|e| self.error(Operation::GetObject, e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(Operation::GetObject, e)),
        }
    }

    /// The bytes `range` of the object at `key` (a page of a plain snapshot, read in place).
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<bytes::Bytes, Error> {
        use object_store::{GetOptions, GetRange};
        let options = GetOptions { range: Some(GetRange::Bounded(range)), ..Default::default() };
        let result = self.store.get_opts(&Path::from(key), options).await;
        result
            .map_err(|e| self.error(Operation::GetObject, e))?
            .bytes()
            .await
            .map_err(|e| self.error(Operation::GetObject, e))
    }

    /// Deletes the object at `key`; a missing object counts as deleted.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        use object_store::ObjectStoreExt as _;
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(Operation::DeleteObject, e)),
        }
    }

    /// Starts a multipart upload at `key`. `metadata` becomes the object's user metadata
    /// (`x-amz-meta-*` on S3).
    pub async fn create_upload(&self, key: &str, metadata: &[(&str, String)]) -> Result<UploadRef, Error> {
        let mut metadata = owned(metadata);
        let store = self.creating_store(&mut metadata)?;
        let upload_id = match self.uploads {
            Uploads::Named => {
                let options = PutMultipartOptions { attributes: self.attributes(&metadata), ..Default::default() };
                let path = Path::from(key);
                let created = store.create_multipart_opts(&path, options).await;
                created.map_err(|e| self.error(Operation::CreateMultipartUpload, e))?
            }
            Uploads::Blocks => BLOCKS.to_owned(),
        };
        Ok(UploadRef { key: key.to_owned(), upload_id, metadata })
    }

    /// The client of a write that creates an object: with Object Lock, one that locks it, and
    /// `locked-until` added to the object's `metadata`.
    fn creating_store(&self, metadata: &mut Vec<(String, String)>) -> Result<Arc<dyn Backend>, Error> {
        let Some(locked_writer) = &self.locked_writer else {
            return Ok(self.store.clone());
        };
        let LockedWriter { store, until } = locked_writer()?;
        metadata.push((LOCKED_UNTIL.to_owned(), until.to_string()));
        Ok(store)
    }

    /// Until when the object at `key` is locked, when it was written with a lock (by this writer)
    /// that has not expired; None for an object that is not locked, or not there. Asked of S3 (a
    /// HEAD) only where locks are written: elsewhere deleting needs no read permission.
    pub async fn locked_until(&self, key: &str) -> Result<Option<jiff::Timestamp>, Error> {
        use object_store::GetOptions;
        if self.locked_writer.is_none() {
            return Ok(None);
        }
        let options = GetOptions { head: true, ..Default::default() };
        let result = match self.store.get_opts(&Path::from(key), options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(Operation::GetObject, e)),
        };
        let until = result.attributes.iter().find_map(|(attribute, value)| match attribute {
            Attribute::Metadata(name) if self.metadata_name(name) == LOCKED_UNTIL => {
                value.parse::<jiff::Timestamp>().ok()
            }
            _ => None,
        });
        Ok(until.filter(|until| *until > jiff::Timestamp::now()))
    }

    /// Shows that a backup can be stored at `key`, with the requests a backup makes, leaving nothing.
    /// S3 and GCS: a multipart upload is started and aborted. Azure creates nothing until a block is
    /// staged, so one block is staged and committed (PutBlock, PutBlockList) and the blob deleted
    /// (the SAS permissions a backup needs include delete).
    pub async fn probe(&self, key: &str) -> Result<(), Error> {
        if self.uploads == Uploads::Named {
            let upload = self.create_upload(key, &[]).await?;
            return self.abort_upload(&upload).await;
        }
        let path = Path::from(key);
        let blocks = self.store.put_multipart_opts(&path, PutMultipartOptions::default()).await;
        let mut blocks = blocks.map_err(|e| self.error(Operation::CreateMultipartUpload, e))?;
        let staged = blocks.put_part(PutPayload::from_static(b"\n")).await;
        staged.map_err(|e| self.error(Operation::UploadPart, e))?;
        blocks.complete().await.map_err(|e| self.error(Operation::CompleteMultipartUpload, e))?;
        self.delete(key).await
    }

    /// The unfinished multipart uploads whose key starts with `prefix`, as the store lists them
    /// (`s3:ListBucketMultipartUploads`; GCS `storage.multipartUploads.list`). None on Azure, whose
    /// staged blocks have no name to list: Azure drops uncommitted blocks after seven days.
    pub async fn unfinished_uploads(&self, prefix: &str) -> Result<Vec<UploadRef>, Error> {
        let Some(lister) = &self.lister else {
            return Ok(Vec::new());
        };
        let found = lister.list(prefix).await.map_err(|e| self.error(Operation::ListMultipartUploads, e))?;
        Ok(found.into_iter().map(|(key, id)| UploadRef::recorded(key, id)).collect())
    }

    /// Aborts `upload`, dropping its parts. An upload the store no longer knows (completed, or
    /// aborted already) counts as aborted.
    pub async fn abort_upload(&self, upload: &UploadRef) -> Result<(), Error> {
        if self.uploads == Uploads::Blocks {
            return self.discard_blocks(&upload.key).await;
        }
        match self.store.abort_multipart(&Path::from(upload.key.as_str()), &upload.upload_id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(Operation::AbortMultipartUpload, e)),
        }
    }

    /// Azure: staged blocks have no name to abort, but committing a block list deletes every block it
    /// does not name (Put Block List: "Any blocks not specified in the block list are permanently
    /// deleted"). Where no blob exists yet, an empty one is committed, then deleted; a blob already
    /// there (its upload completed) is left alone.
    async fn discard_blocks(&self, key: &str) -> Result<(), Error> {
        if self.size(key).await?.is_some() {
            return Ok(());
        }
        let path = Path::from(key);
        let blocks = self.store.put_multipart_opts(&path, PutMultipartOptions::default()).await;
        let mut blocks = blocks.map_err(|e| self.error(Operation::AbortMultipartUpload, e))?;
        blocks.complete().await.map_err(|e| self.error(Operation::AbortMultipartUpload, e))?;
        self.delete(key).await
    }

    /// The writer of `upload`'s parts.
    pub(crate) async fn writer(&self, upload: &UploadRef) -> Result<PartWriter, Error> {
        let path = Path::from(upload.key.as_str());
        Ok(match self.uploads {
            Uploads::Named => PartWriter::Named { store: self.store.clone(), path, id: upload.upload_id.clone() },
            Uploads::Blocks => {
                let options =
                    PutMultipartOptions { attributes: self.attributes(&upload.metadata), ..Default::default() };
                let blocks = self.store.put_multipart_opts(&path, options).await;
                PartWriter::Blocks(blocks.map_err(|e| self.error(Operation::CreateMultipartUpload, e))?)
            }
        })
    }

    /// User metadata as object_store takes it. Azure takes only C# identifiers as names, so its
    /// `age-recipients` is stored as `age_recipients`.
    fn attributes(&self, metadata: &[(String, String)]) -> Attributes {
        let mut attributes = Attributes::new();
        for (name, value) in metadata {
            let name = match self.uploads {
                Uploads::Named => name.clone(),
                Uploads::Blocks => name.replace('-', "_"),
            };
            attributes.insert(Attribute::Metadata(name.into()), value.clone().into());
        }
        attributes
    }

    /// A stored metadata name as the writer named it: the inverse of [`Storage::attributes`].
    fn metadata_name(&self, stored: &str) -> String {
        match self.uploads {
            Uploads::Named => stored.to_owned(),
            Uploads::Blocks => stored.replace('_', "-"),
        }
    }

    pub(crate) fn error(&self, operation: Operation, e: object_store::Error) -> Error {
        let Failure { code, message, permanent } = (self.failure)(e);
        Error::Storage { operation, service: self.service, container: self.container.clone(), code, message, permanent }
    }
}

fn owned(metadata: &[(&str, String)]) -> Vec<(String, String)> {
    metadata.iter().map(|(name, value)| (name.to_string(), value.clone())).collect()
}

/// Client options every backend starts from: `request_timeout` bounds each request, a part upload
/// included.
pub(crate) fn client_options(request_timeout: Duration) -> object_store::ClientOptions {
    object_store::ClientOptions::new().with_timeout(request_timeout).with_connect_timeout(Duration::from_secs(10))
}

/// A few quick retries for a lost part; the controller retries whole attempts beyond that.
pub(crate) fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig::default(),
        max_retries: 3,
        retry_timeout: Duration::from_secs(60),
    }
}

/// The upload id recorded for an Azure blob's staged blocks, which the service does not name.
const BLOCKS: &str = "uncommitted-blocks";

/// A multipart upload as the store names it: recorded before any part is sent, so that one left
/// unfinished (by a crash, or by an abort the store could not take) can be aborted later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRef {
    pub key: String,
    pub upload_id: String,
    /// The object's user metadata, for a backend that sets it when the upload completes (Azure);
    /// empty for an upload read back from a record, which is only ever aborted.
    metadata: Vec<(String, String)>,
}

impl UploadRef {
    /// An upload recorded earlier (in a status), to abort.
    pub fn recorded(key: String, upload_id: String) -> Self {
        UploadRef { key, upload_id, metadata: Vec::new() }
    }
}

/// Sends the parts of one upload and completes it.
pub(crate) enum PartWriter {
    Named { store: Arc<dyn Backend>, path: Path, id: String },
    Blocks(Box<dyn MultipartUpload>),
}

impl PartWriter {
    /// The request sending part `index` (0-based; parts are started in order).
    pub(crate) fn part(
        &mut self,
        index: usize,
        data: bytes::Bytes,
    ) -> BoxFuture<'static, Result<PartId, object_store::Error>> {
        use futures::FutureExt as _;
        match self {
            PartWriter::Named { store, path, id } => {
                let (store, path, id) = (store.clone(), path.clone(), id.clone());
                async move { store.put_part(&path, &id, index, PutPayload::from(data)).await }.boxed()
            }
            // The block's id is the upload's own, by the order of the calls.
            PartWriter::Blocks(blocks) => {
                let staged = blocks.put_part(PutPayload::from(data));
                async move { staged.await.map(|()| PartId { content_id: String::new() }) }.boxed()
            }
        }
    }

    pub(crate) async fn complete(&mut self, parts: Vec<PartId>) -> Result<(), object_store::Error> {
        match self {
            PartWriter::Named { store, path, id } => store.complete_multipart(path, id, parts).await.map(drop),
            PartWriter::Blocks(blocks) => blocks.complete().await.map(drop),
        }
    }
}
