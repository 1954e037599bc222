//! The storage handle against Azurite: a streamed upload committed with its metadata, nothing
//! committed by a failed one, and each refusal Azure can give named.

use std::time::Duration;

use sha2::Digest as _;
use teb_pipeline::{AzureCredentials, Limits, Storage, StorageLocation};
use teb_testkit::azure::Azurite;

/// A snapshot of `pages` 4 KiB pages and its SHA-256 trailer.
fn snapshot(pages: usize) -> Vec<u8> {
    let db: Vec<u8> = (0..pages * 4096).map(|i| (i % 251) as u8).collect();
    [db.clone(), sha2::Sha256::digest(&db).to_vec()].concat()
}

async fn upload(storage: &Storage, key: &str, data: Vec<u8>) -> Result<teb_pipeline::Report, teb_pipeline::Error> {
    let limits = Limits { part_size: 5 << 20, ..Limits::default() };
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        data.chunks(1024).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    // `age-recipients`: a name Azure refuses as it is (names are C# identifiers).
    let metadata =
        [("cluster", "cp".to_owned()), ("format", "teb".to_owned()), ("age-recipients", "sha256:ab".to_owned())];
    let upload = storage.create_upload(key, &metadata).await?;
    teb_pipeline::run(futures::stream::iter(chunks), storage, &upload, &limits, &Default::default(), &|_| {}).await
}

#[tokio::test]
async fn blocks_are_committed_with_the_blobs_metadata_and_a_failed_upload_commits_nothing() {
    let azurite = Azurite::start().await.unwrap();
    azurite.create_container("etcd-backups").await.unwrap();
    let storage = azurite.storage("etcd-backups").unwrap();

    // 12 MiB in 5 MiB parts: three blocks, committed in order.
    let data = snapshot(3 * 1024);
    let report = upload(&storage, "a/etcd-snapshot.db", data.clone()).await.unwrap();
    assert_eq!(report.size, Some(data.len() as u64));
    let stored = storage.stored("a/etcd-snapshot.db").await.unwrap().expect("committed");
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(stored.metadata.get("cluster").map(String::as_str), Some("cp"));
    assert_eq!(stored.metadata.get("age-recipients").map(String::as_str), Some("sha256:ab"));
    assert_eq!(stored.sha256.as_deref(), Some(hex::encode(&data[data.len() - 32..]).as_str()));
    assert_eq!(storage.get("a/etcd-snapshot.db").await.unwrap().unwrap().as_ref(), data.as_slice());

    // A corrupt trailer: blocks were staged, none committed; the blob does not exist.
    let mut corrupt = snapshot(2 * 1024);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    let err = upload(&storage, "a/corrupt.db", corrupt).await.unwrap_err();
    assert!(err.to_string().contains("snapshot is corrupt"), "{err}");
    assert_eq!(storage.size("a/corrupt.db").await.unwrap(), None);
    assert_eq!(azurite.blobs("etcd-backups").await.unwrap().len(), 1);

    // What an upload cut off after its first block leaves: a staged block, in no listing, at no key.
    let client = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(teb_testkit::azure::ACCOUNT)
        .with_access_key(teb_testkit::azure::ACCOUNT_KEY)
        .with_container_name("etcd-backups")
        .with_endpoint(azurite.endpoint.clone())
        .with_allow_http(true)
        .build()
        .unwrap();
    let mut cut = object_store::ObjectStoreExt::put_multipart(&client, &"a/cut.db".into()).await.unwrap();
    cut.put_part(vec![1u8; 1 << 20].into()).await.unwrap();
    drop(cut);
    assert_eq!(azurite.uncommitted_blobs("etcd-backups").await.unwrap(), vec!["a/cut.db".to_owned()]);
    assert_eq!(storage.stored("a/cut.db").await.unwrap(), None);
    assert_eq!(storage.list("a/").await.unwrap().len(), 1);
    storage.delete("a/etcd-snapshot.db").await.unwrap();
    assert!(azurite.blobs("etcd-backups").await.unwrap().is_empty());
}

#[tokio::test]
async fn refusals_name_what_azure_said() {
    let azurite = Azurite::start().await.unwrap();
    azurite.create_container("etcd-backups").await.unwrap();
    let with = |container: &str, credentials| {
        let mut location = azurite.location(container);
        location.credentials = Some(credentials);
        Storage::new(&StorageLocation::Azure(location), Duration::from_secs(10)).unwrap()
    };
    let wrong_key = with("etcd-backups", AzureCredentials::AccountKey("bm90IHRoZSBrZXk=".into()));
    let err = upload(&wrong_key, "k.db", snapshot(1)).await.unwrap_err();
    // Azure answers AuthenticationFailed, Azurite AuthorizationFailure.
    assert!(err.to_string().contains("Azure Blob Storage error Authori"), "{err}");
    assert!(err.to_string().contains("check the account key or SAS token"), "{err}");
    assert!(!err.is_transient());

    let sas = azurite.container_sas("etcd-backups", jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1));
    let by_sas = with("etcd-backups", AzureCredentials::Sas(sas));
    upload(&by_sas, "sas.db", snapshot(1)).await.unwrap();
    assert_eq!(by_sas.list("").await.unwrap().len(), 1);

    let expired = azurite.container_sas("etcd-backups", jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1));
    let err = upload(&with("etcd-backups", AzureCredentials::Sas(expired)), "late.db", snapshot(1)).await.unwrap_err();
    assert!(err.to_string().contains("Azure Blob Storage error Authori"), "{err}");
    assert!(!err.is_transient(), "{err}");

    let missing = azurite.storage("no-such-container").unwrap();
    let err = upload(&missing, "k.db", snapshot(1)).await.unwrap_err();
    assert!(err.to_string().contains("ContainerNotFound"), "{err}");
    assert!(!err.is_transient());
}
