//! The test S3 server checks signatures, does multipart uploads, and injects each fault it offers.

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore as _, PartId};
use object_store::path::Path;
use object_store::{ObjectStoreExt as _, PutPayload};
use teb_testkit::s3::{ACCESS_KEY, REGION, S3Server, SECRET_KEY};

fn builder(server: &S3Server, bucket: &str) -> AmazonS3Builder {
    AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_bucket_name(bucket)
        .with_region(REGION)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_allow_http(true)
        .with_retry(object_store::RetryConfig { max_retries: 0, ..Default::default() })
}

fn client_with_secret(server: &S3Server, bucket: &str, secret: &str) -> AmazonS3 {
    builder(server, bucket).with_secret_access_key(secret).build().unwrap()
}

#[tokio::test]
async fn refuses_a_wrong_secret_key() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bucket").unwrap();
    let client = client_with_secret(&server, "bucket", "not-the-secret");
    let err = client.put(&Path::from("k"), PutPayload::from_static(b"x")).await.expect_err("refused");
    assert!(err.to_string().contains("SignatureDoesNotMatch"), "{err}");
    assert!(server.objects("bucket").await.unwrap().is_empty());
}

#[tokio::test]
async fn multipart_upload_over_tls_and_unfinished_uploads_are_listed() {
    let server = S3Server::start_tls().await.unwrap();
    assert!(server.endpoint.starts_with("https://"));
    server.create_bucket("bucket").unwrap();
    let client = server.client("bucket").unwrap();
    let part = vec![7u8; 5 << 20];

    let mut upload = client.put_multipart(&Path::from("done")).await.unwrap();
    upload.put_part(part.clone().into()).await.unwrap();
    upload.put_part(b"tail".to_vec().into()).await.unwrap();
    upload.complete().await.unwrap();
    assert_eq!(server.objects("bucket").await.unwrap(), vec![("done".to_owned(), (5 << 20) + 4)]);

    let mut pending = client.put_multipart(&Path::from("pending")).await.unwrap();
    pending.put_part(part.into()).await.unwrap();
    let unfinished = server.unfinished_uploads();
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].key, "pending");
    pending.abort().await.unwrap();
    assert!(server.unfinished_uploads().is_empty());
}

#[tokio::test]
async fn injected_faults() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bucket").unwrap();
    let client = client_with_secret(&server, "bucket", teb_testkit::s3::SECRET_KEY);

    // Part 2 fails with a 500.
    server.faults.fail_upload_part(2, 1);
    let mut upload = client.put_multipart(&Path::from("k")).await.unwrap();
    upload.put_part(vec![1u8; 5 << 20].into()).await.unwrap();
    let err = upload.put_part(vec![2u8; 5 << 20].into()).await.expect_err("part 2 fails");
    assert!(err.to_string().contains("500") || err.to_string().contains("InternalError"), "{err}");
    assert_eq!(server.faults.fired("part failed"), 1);
    upload.abort().await.unwrap();

    // Connection reset: no answer at all.
    server.faults.reset_connections(1);
    let err = client.head(&Path::from("k")).await.expect_err("reset");
    // (Not "404" in the text: the server's port may hold those digits.)
    assert!(!matches!(err, object_store::Error::NotFound { .. }), "{err}");
    assert_eq!(server.faults.fired("connection reset"), 1);

    // Refused credentials.
    server.faults.refuse_credentials(true);
    let err = client.put(&Path::from("k"), PutPayload::from_static(b"x")).await.expect_err("refused");
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    assert_eq!(server.faults.fired("credentials refused"), 1);
    server.faults.refuse_credentials(false);

    // Stall: a request waits before it is served.
    server.faults.stall(Duration::from_millis(700));
    let started = std::time::Instant::now();
    client.put(&Path::from("k"), PutPayload::from_static(b"x")).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(server.faults.fired("stalled"), 1);
}

#[tokio::test]
async fn refuses_a_signature_for_another_region_than_the_buckets() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket_in("west", "us-west-2").unwrap();
    let wrong = builder(&server, "west").build().unwrap();
    let err = wrong.put(&Path::from("k"), PutPayload::from_static(b"x")).await.expect_err("wrong region");
    let text = err.to_string();
    assert!(text.contains("AuthorizationHeaderMalformed"), "{text}");
    assert!(text.contains("the region 'us-east-1' is wrong; expecting 'us-west-2'"), "{text}");
    let right = builder(&server, "west").with_region("us-west-2").build().unwrap();
    right.put(&Path::from("k"), PutPayload::from_static(b"x")).await.unwrap();
    assert_eq!(server.objects("west").await.unwrap(), vec![("k".to_owned(), 1)]);
}

#[tokio::test]
async fn temporary_keys_need_their_session_token() {
    use teb_testkit::s3::{SESSION_TOKEN, TEMPORARY_ACCESS_KEY, TEMPORARY_SECRET_KEY};
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bucket").unwrap();
    let temporary = || {
        builder(&server, "bucket").with_access_key_id(TEMPORARY_ACCESS_KEY).with_secret_access_key(TEMPORARY_SECRET_KEY)
    };
    let put = |client: AmazonS3| async move { client.put(&Path::from("k"), PutPayload::from_static(b"x")).await };
    let err = put(temporary().build().unwrap()).await.expect_err("no token");
    assert!(err.to_string().contains("InvalidAccessKeyId"), "{err}");
    let err = put(temporary().with_token("forged").build().unwrap()).await.expect_err("wrong token");
    assert!(err.to_string().contains("InvalidToken"), "{err}");
    let err = put(builder(&server, "bucket").with_token(SESSION_TOKEN).build().unwrap())
        .await
        .expect_err("a token on long-term keys");
    assert!(err.to_string().contains("InvalidToken"), "{err}");
    assert!(server.objects("bucket").await.unwrap().is_empty());
    put(temporary().with_token(SESSION_TOKEN).build().unwrap()).await.unwrap();
}

#[tokio::test]
async fn completing_an_upload_checks_its_parts_as_s3_does() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bucket").unwrap();
    let client = server.client("bucket").unwrap();
    let path = Path::from("k");
    let big = || PutPayload::from(vec![1u8; 5 << 20]);
    let complete = |id: String, parts: Vec<PartId>| {
        let (client, path) = (client.clone(), path.clone());
        async move { client.complete_multipart(&path, &id, parts).await.map(|_| ()).map_err(|e| e.to_string()) }
    };

    // A part's ETag that is not the one S3 returned.
    let id = client.create_multipart(&path).await.unwrap();
    let first = client.put_part(&path, &id, 0, big()).await.unwrap();
    let last = client.put_part(&path, &id, 1, PutPayload::from_static(b"tail")).await.unwrap();
    let forged = PartId { content_id: "\"0123456789abcdef0123456789abcdef\"".into() };
    let err = complete(id.clone(), vec![first.clone(), forged]).await.expect_err("wrong ETag");
    assert!(err.contains("InvalidPart"), "{err}");
    // Parts out of order.
    let err = complete(id.clone(), vec![last.clone(), first.clone()]).await.expect_err("out of order");
    assert!(err.contains("InvalidPartOrder") || err.contains("InvalidPart"), "{err}");
    complete(id.clone(), vec![first, last]).await.unwrap();
    assert_eq!(server.objects("bucket").await.unwrap(), vec![("k".to_owned(), (5 << 20) + 4)]);
    // The completed upload is gone: 404 NoSuchUpload, which object_store reports as NotFound.
    let err = client.abort_multipart(&path, &id).await.expect_err("completed");
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    let err = complete(id, vec![]).await.expect_err("completed");
    assert!(err.contains("NoSuchUpload") || err.contains("not found"), "{err}");

    // A part but the last under 5 MiB.
    let id = client.create_multipart(&path).await.unwrap();
    let small = client.put_part(&path, &id, 0, PutPayload::from_static(b"small")).await.unwrap();
    let last = client.put_part(&path, &id, 1, PutPayload::from_static(b"tail")).await.unwrap();
    let err = complete(id.clone(), vec![small, last]).await.expect_err("too small");
    assert!(err.contains("EntityTooSmall"), "{err}");
    client.abort_multipart(&path, &id).await.unwrap();
    // Parts but the last of different sizes (R2 refuses them).
    let id = client.create_multipart(&path).await.unwrap();
    let first = client.put_part(&path, &id, 0, big()).await.unwrap();
    let second = client.put_part(&path, &id, 1, PutPayload::from(vec![1u8; (5 << 20) + 1])).await.unwrap();
    let last = client.put_part(&path, &id, 2, PutPayload::from_static(b"tail")).await.unwrap();
    let err = complete(id.clone(), vec![first, second, last]).await.expect_err("unequal parts");
    assert!(err.contains("All non-trailing parts must have the same length"), "{err}");
    client.abort_multipart(&path, &id).await.unwrap();
    // An unknown upload ID.
    let err = client.abort_multipart(&path, &"no-such-upload".to_owned()).await.expect_err("unknown");
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    assert!(server.unfinished_uploads().is_empty());
}

#[tokio::test]
async fn a_bucket_can_require_server_side_encryption() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("locked-down").unwrap();
    server.require_encryption("locked-down");
    let plain = server.client("locked-down").unwrap();
    let err = plain.put(&Path::from("plain"), PutPayload::from_static(b"x")).await.unwrap_err().to_string();
    assert!(err.contains("AccessDenied"), "{err}");
    let err = plain.create_multipart(&Path::from("plain")).await.unwrap_err().to_string();
    assert!(err.contains("AccessDenied"), "{err}");
    let encrypted = builder(&server, "locked-down")
        .with_config("aws_server_side_encryption".parse().unwrap(), "AES256")
        .build()
        .unwrap();
    encrypted.put(&Path::from("sealed"), PutPayload::from_static(b"x")).await.unwrap();
    assert_eq!(server.encryption_of("locked-down", "sealed").as_deref(), Some("AES256"));
    let kms = builder(&server, "locked-down").with_sse_kms_encryption("alias/backups").build().unwrap();
    let id = kms.create_multipart(&Path::from("kms")).await.unwrap();
    kms.abort_multipart(&Path::from("kms"), &id).await.unwrap();
    assert_eq!(server.encryption_of("locked-down", "kms").as_deref(), Some("aws:kms:alias/backups"));
}

/// A client whose writes carry Object Lock headers (retain until `until`), with or without
/// checksums.
fn locking(server: &S3Server, bucket: &str, mode: &str, until: jiff::Timestamp, checksum: bool) -> AmazonS3 {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-amz-object-lock-mode", mode.parse().unwrap());
    let date = until.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    headers.insert("x-amz-object-lock-retain-until-date", date.parse().unwrap());
    let options = object_store::ClientOptions::new().with_allow_http(true).with_default_headers(headers);
    let builder = builder(server, bucket).with_client_options(options);
    let builder = if checksum { builder.with_checksum_algorithm(object_store::aws::Checksum::SHA256) } else { builder };
    builder.build().unwrap()
}

#[tokio::test]
async fn object_lock_needs_a_lock_bucket_and_checksums_and_holds_until_its_date() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("plain").unwrap();
    server.create_bucket_with_object_lock("vault", REGION).unwrap();
    // Long enough to outlast the writes below on a busy machine; the test waits for it at the end.
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(10);

    // A bucket without Object Lock refuses a lock.
    let refusal = |bucket: &'static str, mode: &'static str, until: jiff::Timestamp, checksum: bool| {
        let client = locking(&server, bucket, mode, until, checksum);
        async move { client.put(&Path::from("k"), PutPayload::from_static(b"x")).await.unwrap_err().to_string() }
    };
    let err = refusal("plain", "GOVERNANCE", soon, true).await;
    assert!(err.contains("InvalidRequest") && err.contains("missing Object Lock Configuration"), "{err}");
    // A lock needs a checksum, on PutObject and on every part; a wrong one is refused.
    let unchecked = locking(&server, "vault", "GOVERNANCE", soon, false);
    let err = refusal("vault", "GOVERNANCE", soon, false).await;
    assert!(err.contains("x-amz-checksum- HTTP header is required"), "{err}");
    let id = unchecked.create_multipart(&Path::from("parts")).await.unwrap();
    let err = unchecked.put_part(&Path::from("parts"), &id, 0, vec![1u8; 1024].into()).await.unwrap_err();
    assert!(err.to_string().contains("x-amz-checksum- HTTP header is required"), "{err}");
    unchecked.abort_multipart(&Path::from("parts"), &id).await.unwrap();
    // A date in the past, an unknown mode.
    let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    assert!(refusal("vault", "GOVERNANCE", past, true).await.contains("must be in the future"));
    assert!(refusal("vault", "FOREVER", soon, true).await.contains("Unknown wormMode"));
    assert!(server.objects("vault").await.unwrap().is_empty());

    // Checked writes: a PutObject and a multipart upload whose parts carry their SHA-256.
    let locked = locking(&server, "vault", "COMPLIANCE", soon, true);
    locked.put(&Path::from("small"), PutPayload::from_static(b"x")).await.unwrap();
    let mut upload = locked.put_multipart(&Path::from("big")).await.unwrap();
    upload.put_part(vec![7u8; 5 << 20].into()).await.unwrap();
    upload.put_part(b"tail".to_vec().into()).await.unwrap();
    upload.complete().await.unwrap();
    for key in ["small", "big"] {
        let lock = server.lock_of("vault", key).unwrap();
        assert_eq!((lock.mode.as_str(), lock.until.as_second()), ("COMPLIANCE", soon.as_second()), "{key}");
    }
    // A part whose body does not match its checksum (SHA-256, CRC64-NVME or MD5) is refused.
    // (The upload declares the flexible checksum's type, as a part's must match it.)
    for (header, wrong, declared) in [
        ("x-amz-checksum-sha256", "bm90IHRoZSBzaGEyNTYgb2YgdGhpcyBib2R5IGF0IGFsbA==", Some("SHA256")),
        ("x-amz-checksum-crc64nvme", "AAAAAAAAAAA=", Some("CRC64NVME")),
        ("content-md5", "AAAAAAAAAAAAAAAAAAAAAA==", None),
    ] {
        let mut headers = http::HeaderMap::new();
        headers.insert(header, wrong.parse().unwrap());
        if let Some(algorithm) = declared {
            headers.insert("x-amz-checksum-algorithm", algorithm.parse().unwrap());
        }
        let options = object_store::ClientOptions::new().with_allow_http(true).with_default_headers(headers);
        let lying = builder(&server, "vault").with_client_options(options).build().unwrap();
        let id = lying.create_multipart(&Path::from("lie")).await.unwrap();
        let err = lying.put_part(&Path::from("lie"), &id, 0, vec![1u8; 1024].into()).await.unwrap_err().to_string();
        assert!(err.contains("BadDigest"), "{header}: {err}");
        lying.abort_multipart(&Path::from("lie"), &id).await.unwrap();
    }

    // The bucket is versioned, as S3 makes a lock bucket: a write keeps the version it replaces with
    // its lock, and a DELETE succeeds by putting a delete marker in front, hiding a locked version
    // without removing it (counted: the harm a client does without an error).
    let plain = server.client("vault").unwrap();
    plain.put(&Path::from("small"), PutPayload::from_static(b"y")).await.unwrap();
    assert_eq!(plain.get(&Path::from("small")).await.unwrap().bytes().await.unwrap().as_ref(), b"y");
    assert_eq!(server.lock_of("vault", "small"), None, "the current version is not locked");
    for key in ["small", "big"] {
        plain.delete(&Path::from(key)).await.unwrap();
    }
    assert_eq!(server.faults.fired("delete marker"), 2);
    assert_eq!(server.faults.fired("locked version hidden"), 1, "big's locked version; small's was not");
    assert!(server.objects("vault").await.unwrap().is_empty(), "both behind delete markers");
    let small = server.versions("vault", "small");
    assert_eq!(small.iter().map(|v| v.data.as_deref()).collect::<Vec<_>>(), [Some(&b"x"[..]), Some(b"y"), None]);
    let big = server.versions("vault", "big");
    assert_eq!((big.len(), big[0].data.as_ref().map(Vec::len)), (2, Some((5 << 20) + 4)));

    // A locked version cannot be deleted by its ID before its date; afterwards it goes.
    let locked = [("small", small[0].id.clone()), ("big", big[0].id.clone())];
    for (key, id) in &locked {
        let (status, body) =
            server.signed(http::Method::DELETE, "vault", &format!("/{key}?versionId={id}")).await.unwrap();
        assert_eq!(status, 403, "{key} {id}: {body}");
        assert!(body.contains("AccessDenied") && body.contains("object lock"), "{body}");
    }
    assert_eq!(server.faults.fired("locked object kept"), 2);
    while jiff::Timestamp::now() <= soon {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (key, id) in &locked {
        let (status, body) =
            server.signed(http::Method::DELETE, "vault", &format!("/{key}?versionId={id}")).await.unwrap();
        assert_eq!(status, 204, "{body}");
    }
    assert_eq!(server.versions("vault", "big").len(), 1, "only its delete marker");
    assert_eq!(server.versions("vault", "small").len(), 2, "the unlocked version and the marker");
}

/// A part's flexible checksum must be of the type its upload declared, and present when one was (AWS:
/// InvalidRequest "Checksum Type mismatch occurred"); a signed body is checked either way. On demand
/// the server refuses every flexible-checksum header as stores without them do (NotImplemented).
#[tokio::test]
async fn part_checksums_match_the_declared_type_and_can_be_refused() {
    use object_store::aws::Checksum;
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bucket").unwrap();
    let crc = builder(&server, "bucket").with_checksum_algorithm(Checksum::CRC64NVME).build().unwrap();
    let signed = builder(&server, "bucket").with_unsigned_payload(false).build().unwrap();
    let part = || PutPayload::from(vec![7u8; 1024]);
    let declared = crc.create_multipart(&Path::from("declared")).await.unwrap();
    let err = signed.put_part(&Path::from("declared"), &declared, 0, part()).await.unwrap_err();
    assert!(err.to_string().contains("expected checksum Type: crc64nvme, actual checksum Type: null"), "{err}");
    crc.put_part(&Path::from("declared"), &declared, 0, part()).await.expect("the declared type");
    let undeclared = signed.create_multipart(&Path::from("undeclared")).await.unwrap();
    let err = crc.put_part(&Path::from("undeclared"), &undeclared, 0, part()).await.unwrap_err();
    assert!(err.to_string().contains("expected checksum Type: null, actual checksum Type: crc64nvme"), "{err}");
    let id = signed.put_part(&Path::from("undeclared"), &undeclared, 0, part()).await.expect("no checksum, signed");
    signed.complete_multipart(&Path::from("undeclared"), &undeclared, vec![id]).await.unwrap();

    server.faults.refuse_flexible_checksums(true);
    let err = crc.create_multipart(&Path::from("refused")).await.unwrap_err();
    assert!(err.to_string().contains("NotImplemented"), "{err}");
    let err = crc.put(&Path::from("refused"), part()).await.unwrap_err();
    assert!(err.to_string().contains("NotImplemented"), "{err}");
    assert_eq!(server.faults.fired("checksum refused"), 2);
    signed.put(&Path::from("signed"), part()).await.expect("a signed body without checksum headers");
}

/// An IAM policy on the keys: each operation needs its action, a lock needs s3:PutObjectRetention,
/// and a missing key answers 403 to who may not list the bucket (404 to who may).
#[tokio::test]
async fn a_policy_allows_only_its_actions_as_iam_does() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("bucket").unwrap();
    let client = builder(&server, "bucket").build().unwrap();
    let body = || PutPayload::from_static(b"x");
    server.allow_only(Some(&["s3:PutObject", "s3:AbortMultipartUpload"]));
    client.put(&Path::from("written"), body()).await.expect("s3:PutObject");
    let id = client.create_multipart(&Path::from("aborted")).await.expect("s3:PutObject");
    client.abort_multipart(&Path::from("aborted"), &id).await.expect("s3:AbortMultipartUpload");
    for err in [
        client.get(&Path::from("written")).await.map(drop).unwrap_err(),
        client.delete(&Path::from("written")).await.unwrap_err(),
    ] {
        assert!(err.to_string().contains("AccessDenied") || err.to_string().contains("403"), "{err}");
    }
    let missing = |client: &AmazonS3| {
        let client = client.clone();
        async move { client.head(&Path::from("missing")).await.unwrap_err() }
    };
    server.allow_only(Some(&["s3:GetObject"]));
    assert!(client.head(&Path::from("written")).await.is_ok());
    let err = missing(&client).await;
    assert!(!matches!(err, object_store::Error::NotFound { .. }), "403 without s3:ListBucket: {err}");
    server.allow_only(Some(&["s3:GetObject", "s3:ListBucket"]));
    assert!(matches!(missing(&client).await, object_store::Error::NotFound { .. }));
    server.allow_only(None);
    client.delete(&Path::from("written")).await.expect("no policy: everything");
    // The server's own helpers are never bound.
    server.allow_only(Some(&[]));
    assert_eq!(server.objects("bucket").await.unwrap(), vec![]);
}

/// The storage handle lists the unfinished uploads under a prefix (a signed ListMultipartUploads,
/// which object_store does not offer), so recovery can find one nobody recorded.
#[tokio::test]
async fn the_storage_handle_lists_unfinished_uploads_by_prefix() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket_in("backups", "eu-west-1").unwrap();
    let storage = teb_pipeline::Storage::new(
        &teb_pipeline::StorageLocation::S3(teb_testkit::s3::location(&server.endpoint, "backups", "eu-west-1")),
        Duration::from_secs(10),
    )
    .unwrap();
    let one = storage.create_upload("a/etcd-snapshot-1.db", &[]).await.unwrap();
    let two = storage.create_upload("a/etcd-snapshot-1.db.zst", &[]).await.unwrap();
    storage.create_upload("b/etcd-snapshot-1.db", &[]).await.unwrap();
    let mut listed: Vec<(String, String)> = storage
        .unfinished_uploads("a/etcd-snapshot-1")
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.key, u.upload_id))
        .collect();
    listed.sort();
    assert_eq!(listed, [(one.key, one.upload_id), (two.key, two.upload_id)]);
    assert_eq!(storage.unfinished_uploads("c/").await.unwrap(), []);
}
