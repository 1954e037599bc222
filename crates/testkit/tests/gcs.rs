//! The storage handle against the GCS test server: a streamed multipart upload with its metadata,
//! nothing left by a failed one, and each refusal GCS can give named.

use std::time::Duration;

use sha2::Digest as _;
use teb_pipeline::{Limits, ServiceAccountKey, Storage, StorageLocation};
use teb_testkit::gcs::GcsServer;

/// A snapshot of `pages` 4 KiB pages and its SHA-256 trailer.
fn snapshot(pages: usize) -> Vec<u8> {
    let db: Vec<u8> = (0..pages * 4096).map(|i| (i % 251) as u8).collect();
    [db.clone(), sha2::Sha256::digest(&db).to_vec()].concat()
}

async fn upload(storage: &Storage, key: &str, data: Vec<u8>) -> Result<teb_pipeline::Report, teb_pipeline::Error> {
    let limits = Limits { part_size: 5 << 20, ..Limits::default() };
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        data.chunks(1024).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    let upload = storage.create_upload(key, &[("cluster", "cp".to_owned())]).await?;
    teb_pipeline::run(futures::stream::iter(chunks), storage, &upload, &limits, &Default::default(), &|_| {}).await
}

#[tokio::test]
async fn multipart_uploads_keep_metadata_and_failed_ones_leave_nothing() {
    let gcs = GcsServer::start().await.unwrap();
    gcs.create_bucket("etcd-backups");
    let storage = gcs.storage("etcd-backups").unwrap();

    let data = snapshot(3 * 1024);
    upload(&storage, "a/etcd-snapshot.db", data.clone()).await.unwrap();
    let stored = storage.stored("a/etcd-snapshot.db").await.unwrap().expect("completed");
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(stored.metadata.get("cluster").map(String::as_str), Some("cp"));
    assert_eq!(stored.sha256.as_deref(), Some(hex::encode(&data[data.len() - 32..]).as_str()));
    assert_eq!(storage.get("a/etcd-snapshot.db").await.unwrap().unwrap().as_ref(), data.as_slice());
    assert_eq!(storage.list("a/").await.unwrap().len(), 1);

    let mut corrupt = snapshot(2 * 1024);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let err = upload(&storage, "a/corrupt.db", corrupt).await.unwrap_err();
    assert!(err.to_string().contains("snapshot is corrupt"), "{err}");
    assert!(gcs.unfinished_uploads().is_empty(), "aborted");

    // A part refused more often than the client retries: the upload fails and is aborted.
    gcs.faults.fail_upload_part(2, 10);
    let err = upload(&storage, "a/refused.db", snapshot(3 * 1024)).await.unwrap_err();
    assert!(err.to_string().contains("UploadPart") && err.is_transient(), "{err}");
    assert!(gcs.unfinished_uploads().is_empty());
    assert_eq!(gcs.objects("etcd-backups"), vec![("a/etcd-snapshot.db".to_owned(), data.len() as u64)]);

    storage.delete("a/etcd-snapshot.db").await.unwrap();
    storage.delete("a/etcd-snapshot.db").await.unwrap();
    assert!(gcs.objects("etcd-backups").is_empty());
}

#[tokio::test]
async fn refusals_name_what_gcs_said() {
    let gcs = GcsServer::start().await.unwrap();
    gcs.create_bucket("etcd-backups");
    let mut location = gcs.location("etcd-backups");
    location.service_account_key = Some(ServiceAccountKey(GcsServer::unknown_key().unwrap()));
    let foreign = Storage::new(&StorageLocation::Gcs(location), Duration::from_secs(10)).unwrap();
    let err = upload(&foreign, "k.db", snapshot(1)).await.unwrap_err();
    assert!(err.to_string().contains("GCS error AuthenticationRequired: Invalid Credentials"), "{err}");
    assert!(!err.is_transient());

    let missing = gcs.storage("no-such-bucket").unwrap();
    let err = upload(&missing, "k.db", snapshot(1)).await.unwrap_err();
    assert!(err.to_string().contains("GCS error NoSuchBucket"), "{err}");
    assert!(!err.is_transient());
}

/// An upload ID is known only at the object it was initiated for: named at another key, it is
/// `NoSuchUpload`, and the upload stays (a client that loses track of its key cannot abort another's).
#[tokio::test]
async fn an_upload_id_belongs_to_its_key() {
    let gcs = GcsServer::start().await.unwrap();
    gcs.create_bucket("etcd-backups");
    let storage = gcs.storage("etcd-backups").unwrap();
    let upload = storage.create_upload("a/one.db", &[]).await.unwrap();
    let elsewhere = teb_pipeline::UploadRef::recorded("a/other.db".into(), upload.upload_id.clone());
    storage.abort_upload(&elsewhere).await.expect("an unknown upload counts as aborted");
    assert_eq!(gcs.unfinished_uploads(), vec!["a/one.db".to_owned()], "not aborted through another key");
    storage.abort_upload(&upload).await.unwrap();
    assert!(gcs.unfinished_uploads().is_empty());
}
