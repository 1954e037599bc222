//! The test S3 server checks signatures, does multipart uploads, and injects each fault it offers.

use std::time::Duration;

use object_store::path::Path;
use object_store::{ObjectStoreExt as _, PutPayload};
use teb_testkit::s3::{ACCESS_KEY, REGION, S3Server};

fn client_with_secret(server: &S3Server, bucket: &str, secret: &str) -> object_store::aws::AmazonS3 {
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_bucket_name(bucket)
        .with_region(REGION)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(secret)
        .with_allow_http(true)
        .with_retry(object_store::RetryConfig { max_retries: 0, ..Default::default() })
        .build()
        .unwrap()
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
    upload.abort().await.unwrap();

    // Connection reset: no answer at all.
    server.faults.reset_connections(1);
    let err = client.head(&Path::from("k")).await.expect_err("reset");
    assert!(!err.to_string().contains("404"), "{err}");

    // Refused credentials.
    server.faults.refuse_credentials(true);
    let err = client.put(&Path::from("k"), PutPayload::from_static(b"x")).await.expect_err("refused");
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    server.faults.refuse_credentials(false);

    // Stall: a request waits before it is served.
    server.faults.stall(Duration::from_millis(700));
    let started = std::time::Instant::now();
    client.put(&Path::from("k"), PutPayload::from_static(b"x")).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(700));
}
