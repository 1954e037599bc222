//! The storage handle: one bucket (or container) of an object store, built once from a
//! [`StorageLocation`] and used for everything a backup does there: multipart uploads, reads, lists,
//! deletes. Each backend is one builder module (`aws` today) that turns its location into a handle
//! and says how its service names failures; nothing above this module knows which backend it uses.
//! Adding one (Azure, GCS) is a module and a [`StorageLocation`] variant.

pub mod aws;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{Attribute, Attributes, ObjectStore, PutMultipartOptions};

use crate::{CheckedSnapshot, Error, Format, Identity, SnapshotCheck};
use aws::S3Location;

/// Where backups are stored, as the user configured it.
#[derive(Clone, Debug)]
pub enum StorageLocation {
    S3(S3Location),
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
    /// The service, as error messages name it: `S3`.
    pub(crate) service: &'static str,
    /// The bucket, as messages name it: `bucket "my-etcd-backups"`.
    pub(crate) container: String,
    pub(crate) failure: Arc<dyn Fn(object_store::Error) -> Failure + Send + Sync>,
}

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
                Attribute::Metadata(name) => Some((name.to_string(), value.to_string())),
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
    /// does) and checks it ([`SnapshotCheck`]). `progress` gets the snapshot's bytes read so far.
    pub async fn verify(
        &self,
        key: &str,
        format: Format,
        identities: &[Identity],
        idle_timeout: Duration,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<CheckedSnapshot, Error> {
        use futures::StreamExt as _;
        let mut stream = self.read_snapshot(key, format, identities, idle_timeout).await?;
        let mut check = SnapshotCheck::default();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            check.update(&chunk);
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
        let mut attributes = Attributes::new();
        for (name, value) in metadata {
            attributes.insert(Attribute::Metadata(name.to_string().into()), value.clone().into());
        }
        let options = PutOptions { attributes, ..Default::default() };
        self.store
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
        let mut attributes = Attributes::new();
        for (name, value) in metadata {
            attributes.insert(Attribute::Metadata(name.to_string().into()), value.clone().into());
        }
        let options = PutMultipartOptions { attributes, ..Default::default() };
        let upload_id = self
            .store
            .create_multipart_opts(&Path::from(key), options)
            .await
            .map_err(|e| self.error(Operation::CreateMultipartUpload, e))?;
        Ok(UploadRef { key: key.to_owned(), upload_id })
    }

    /// Aborts `upload`, dropping its parts. An upload the store no longer knows (completed, or
    /// aborted already) counts as aborted.
    pub async fn abort_upload(&self, upload: &UploadRef) -> Result<(), Error> {
        match self.store.abort_multipart(&Path::from(upload.key.as_str()), &upload.upload_id).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(Operation::AbortMultipartUpload, e)),
        }
    }

    pub(crate) fn error(&self, operation: Operation, e: object_store::Error) -> Error {
        let Failure { code, message, permanent } = (self.failure)(e);
        Error::Storage { operation, service: self.service, container: self.container.clone(), code, message, permanent }
    }
}

/// A multipart upload as the store names it: recorded before any part is sent, so that one left
/// unfinished (by a crash, or by an abort the store could not take) can be aborted later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadRef {
    pub key: String,
    pub upload_id: String,
}
