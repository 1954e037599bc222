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

/// A GET of `path` (bucket and query) with `token`: its status and body.
async fn get_with(gcs: &GcsServer, path: &str, token: &str) -> (u16, String) {
    let answer =
        reqwest::Client::new().get(format!("{}/{path}", gcs.endpoint)).bearer_auth(token).send().await.unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

/// The claims object_store sends: its account as issuer and subject, the cloud-platform scope, an hour.
fn claims(now: i64) -> serde_json::Value {
    serde_json::json!({
        "iss": teb_testkit::gcs::CLIENT_EMAIL,
        "sub": teb_testkit::gcs::CLIENT_EMAIL,
        "scope": "https://www.googleapis.com/auth/cloud-platform",
        "iat": now,
        "exp": now + 3600,
    })
}

/// Each rule of a self-signed JWT (google.aip.dev/auth/4111) is checked: a token that breaks one,
/// signed with the account's own key, is 401; a read-only scope leaves only reads.
#[tokio::test]
async fn tokens_are_checked_as_google_checks_them() {
    let gcs = GcsServer::start().await.unwrap();
    gcs.create_bucket("etcd-backups");
    let now = jiff::Timestamp::now().as_second();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": gcs.key_id()});
    let good = gcs.sign_token(&header, &claims(now));
    assert_eq!(get_with(&gcs, "etcd-backups", &good).await.0, 200);
    let mut by_audience = claims(now);
    by_audience.as_object_mut().unwrap().remove("scope");
    by_audience["aud"] = "https://storage.googleapis.com/".into();
    assert_eq!(get_with(&gcs, "etcd-backups", &gcs.sign_token(&header, &by_audience)).await.0, 200);

    let other_kid = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "0123456789abcdef"});
    let no_kid = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    let mut refused = vec![
        ("unknown kid", gcs.sign_token(&other_kid, &claims(now))),
        ("no kid", gcs.sign_token(&no_kid, &claims(now))),
        ("not RS256", gcs.sign_token(&serde_json::json!({"alg": "RS384", "kid": gcs.key_id()}), &claims(now))),
    ];
    let broken: [(&str, &str, serde_json::Value); 7] = [
        ("another subject", "sub", "someone@teb-test.iam.gserviceaccount.com".into()),
        ("another issuer", "iss", "someone@teb-test.iam.gserviceaccount.com".into()),
        ("no storage scope", "scope", "https://www.googleapis.com/auth/bigquery".into()),
        ("no scope", "scope", serde_json::Value::Null),
        ("longer than an hour", "exp", (now + 3601).into()),
        ("issued in the future", "iat", (now + 3000).into()),
        ("expired", "exp", (now - 1).into()),
    ];
    for (why, claim, value) in broken {
        let mut claims = claims(now);
        claims[claim] = value;
        refused.push((why, gcs.sign_token(&header, &claims)));
    }
    for (why, token) in refused {
        let (status, body) = get_with(&gcs, "etcd-backups", &token).await;
        assert_eq!(status, 401, "{why}: {body}");
        assert!(body.contains("<Code>AuthenticationRequired</Code>"), "{why}: {body}");
    }

    let mut read_only = claims(now);
    read_only["scope"] = "https://www.googleapis.com/auth/devstorage.read_only".into();
    let read_only = gcs.sign_token(&header, &read_only);
    assert_eq!(get_with(&gcs, "etcd-backups", &read_only).await.0, 200);
    let answer = reqwest::Client::new()
        .put(format!("{}/etcd-backups/k.db", gcs.endpoint))
        .bearer_auth(&read_only)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 403);
    assert!(answer.text().await.unwrap().contains("does not have storage.objects.create access"));
}

/// An account may do what its role on the bucket allows, and a refusal names the permission it lacks
/// and is not retried.
#[tokio::test]
async fn roles_limit_what_an_account_may_do() {
    use teb_testkit::gcs::Role;
    let gcs = GcsServer::start().await.unwrap();
    gcs.create_bucket("etcd-backups");
    let as_role = |role: Role| {
        let mut location = gcs.location("etcd-backups");
        let key = gcs.service_account(&format!("{role:?}@teb-test.iam.gserviceaccount.com").to_lowercase(), role);
        location.service_account_key = Some(ServiceAccountKey(key.unwrap()));
        Storage::new(&StorageLocation::Gcs(location), Duration::from_secs(10)).unwrap()
    };
    let denied = |err: teb_pipeline::Error, permission: &str| {
        let text = err.to_string();
        assert!(
            text.contains("AccessDenied") && text.contains(&format!("does not have {permission} access")),
            "{text}"
        );
        assert!(!err.is_transient(), "{text}");
    };

    let creator = as_role(Role::ObjectCreator);
    let data = snapshot(2 * 1024);
    upload(&creator, "a/etcd-snapshot.db", data.clone()).await.expect("objectCreator writes");
    creator.probe("a/probe").await.expect("and starts and aborts uploads");
    denied(creator.get("a/etcd-snapshot.db").await.unwrap_err(), "storage.objects.get");
    denied(creator.list("a/").await.unwrap_err(), "storage.objects.list");
    denied(creator.delete("a/etcd-snapshot.db").await.unwrap_err(), "storage.objects.delete");
    denied(creator.put("a/etcd-snapshot.db", vec![1], &[]).await.unwrap_err(), "storage.objects.delete");

    let viewer = as_role(Role::ObjectViewer);
    assert_eq!(viewer.get("a/etcd-snapshot.db").await.unwrap().unwrap().as_ref(), data.as_slice());
    assert_eq!(viewer.list("a/").await.unwrap().len(), 1);
    denied(viewer.probe("a/probe").await.unwrap_err(), "storage.multipartUploads.create");
    denied(viewer.put("a/other.db", vec![1], &[]).await.unwrap_err(), "storage.objects.create");

    let admin = as_role(Role::ObjectAdmin);
    admin.put("a/etcd-snapshot.db", vec![1], &[]).await.expect("objectAdmin replaces");
    admin.delete("a/etcd-snapshot.db").await.unwrap();
    assert!(gcs.objects("etcd-backups").is_empty());
    assert!(gcs.unfinished_uploads().is_empty());
}

/// `GET ?uploads` lists the unfinished uploads under a prefix, not objects.
#[tokio::test]
async fn unfinished_uploads_are_listed_by_prefix() {
    let gcs = GcsServer::start().await.unwrap();
    gcs.create_bucket("etcd-backups");
    let storage = gcs.storage("etcd-backups").unwrap();
    storage.put("a/object.db", vec![1], &[]).await.unwrap();
    let a = storage.create_upload("a/one.db", &[]).await.unwrap();
    let b = storage.create_upload("b/two.db", &[]).await.unwrap();
    let now = jiff::Timestamp::now().as_second();
    let token = gcs.sign_token(&serde_json::json!({"alg": "RS256", "kid": gcs.key_id()}), &claims(now));
    let (status, body) = get_with(&gcs, "etcd-backups?uploads&prefix=a/", &token).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<ListMultipartUploadsResult>"), "{body}");
    assert!(body.contains(&format!("<Key>a/one.db</Key><UploadId>{}</UploadId>", a.upload_id)), "{body}");
    assert!(!body.contains("b/two.db") && !body.contains("a/object.db"), "{body}");
    let (_, all) = get_with(&gcs, "etcd-backups?uploads", &token).await;
    assert!(all.contains(&b.upload_id) && all.contains(&a.upload_id), "{all}");
    // The storage handle lists them the same way (object_store does not).
    let listed = storage.unfinished_uploads("a/").await.unwrap();
    assert_eq!(listed.iter().map(|u| (&u.key, &u.upload_id)).collect::<Vec<_>>(), [(&a.key, &a.upload_id)]);
}

/// As the metadata server it answers only with `Metadata-Flavor: Google`, and its access tokens
/// carry the instance account's role; an unknown token is refused.
#[tokio::test]
async fn the_metadata_server_hands_out_tokens_of_its_account() {
    let gcs = GcsServer::start().await.unwrap();
    gcs.create_bucket("etcd-backups");
    let token_url = format!("{}/computeMetadata/v1/instance/service-accounts/default/token", gcs.endpoint);
    let client = reqwest::Client::new();
    let unflavoured = client.get(&token_url).send().await.unwrap();
    assert_eq!(unflavoured.status().as_u16(), 403);
    let ask = || client.get(&token_url).header("Metadata-Flavor", "Google").send();
    assert_eq!(ask().await.unwrap().status().as_u16(), 404, "no account until one is served");
    gcs.serve_metadata("node@teb-test.iam.gserviceaccount.com", teb_testkit::gcs::Role::ObjectViewer);
    let answer: serde_json::Value = serde_json::from_str(&ask().await.unwrap().text().await.unwrap()).unwrap();
    let token = answer["access_token"].as_str().unwrap();
    assert!(answer["expires_in"].as_i64().unwrap() <= 3600, "{answer}");
    assert_eq!(get_with(&gcs, "etcd-backups", token).await.0, 200);
    let put = client.put(format!("{}/etcd-backups/k.db", gcs.endpoint)).bearer_auth(token).body("x");
    let answer = put.send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 403);
    assert!(answer.text().await.unwrap().contains("node@teb-test.iam.gserviceaccount.com does not have"));
    assert_eq!(get_with(&gcs, "etcd-backups", "ya29.made-up").await.0, 401);
}
