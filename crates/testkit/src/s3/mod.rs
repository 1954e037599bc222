//! An S3 server for tests: s3s over a folder, SigV4 checked, multipart uploads, plain HTTP or TLS,
//! and faults on demand.
//!
//! Where s3s or s3s-fs are kinder than AWS S3, this server checks what S3 checks, so that a client
//! that only works against a forgiving server fails here first:
//! - the region in a signature's credential scope must be the bucket's region
//!   (`AuthorizationHeaderMalformed`, 400, naming the expected region);
//! - temporary keys (from STS) need their session token in `x-amz-security-token` (`InvalidToken`);
//! - CompleteMultipartUpload checks each part's ETag and that every part but the last has at least
//!   5 MiB (`InvalidPart`, `InvalidPartOrder`, `EntityTooSmall`), and, as Cloudflare R2 does, that
//!   they all have the same size (`InvalidPart`);
//! - an unknown, completed or aborted upload ID answers 404 `NoSuchUpload`;
//! - a bucket can require server-side encryption, as a bucket policy denying unencrypted writes does
//!   (`AccessDenied` for a PutObject or CreateMultipartUpload without `x-amz-server-side-encryption`);
//! - a part's `Content-MD5`, `x-amz-checksum-sha256` or `x-amz-checksum-crc64nvme` is checked
//!   (`BadDigest`), as s3s-fs checks them only on PutObject;
//! - a bucket can have Object Lock ([`lock`]), and is then versioned as on AWS: writes that set a
//!   retention need a checksum, a replaced version stays with its lock, a DELETE puts a delete
//!   marker in front (counted when it hides a locked version), and a locked version cannot be
//!   deleted by its ID before its retain-until date;
//! - a part's flexible checksum must be of the algorithm its CreateMultipartUpload declared, and is
//!   required when one was declared (AWS: `InvalidRequest`, "Checksum Type mismatch occurred");
//! - on demand ([`S3Server::allow_only`]) the keys hold an IAM policy ([`policy`]): each operation
//!   needs its action, and a missing key answers 403 to who may not list the bucket;
//! - on demand ([`S3Faults::refuse_flexible_checksums`]) it refuses every flexible-checksum header
//!   with `NotImplemented`, as some S3-compatible stores do (OVH public-cloud-roadmap#781, storj
//!   gateway-st#92); a signed body (`x-amz-content-sha256`) is checked either way (s3s).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore as _, ObjectStoreExt as _};
use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use tokio::net::TcpListener;

mod lock;
mod policy;

use lock::Locks;
pub use lock::{Retention, Version};

/// The keys of the specification's example Secret, so its YAML works unchanged against this server.
pub const ACCESS_KEY: &str = "YOUR_ACCESS_KEY_ID";
pub const SECRET_KEY: &str = "YOUR_SECRET_ACCESS_KEY";
/// The region of buckets created without one, and of requests that name no bucket.
pub const REGION: &str = "us-east-1";
/// S3's smallest part but the last.
const MIN_PART_SIZE: i64 = 5 << 20;

/// `bucket` in `region` of the S3 server at `endpoint`, with [`ACCESS_KEY`] and the default
/// settings: what a spec naming them resolves to.
pub fn location(endpoint: &str, bucket: &str, region: &str) -> teb_pipeline::S3Location {
    teb_pipeline::S3Location {
        bucket: bucket.into(),
        region: region.into(),
        endpoint: Some(endpoint.to_owned()),
        insecure_skip_tls_verify: false,
        ca_pem: None,
        credentials: Some(teb_pipeline::S3Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
        }),
        sse: None,
        object_lock: None,
        checksum: teb_pipeline::S3Checksum::Auto,
    }
}

/// Web identity (IRSA): the token the server's STS accepts, the role it may assume, and the temporary
/// keys it hands out, which the S3 side then accepts (checking their signatures like any others).
pub const WEB_IDENTITY_TOKEN: &str = "eyJ-teb-test-service-account-token";
pub const WEB_IDENTITY_ROLE: &str = "arn:aws:iam::123456789012:role/talos-etcd-backup";
pub const TEMPORARY_ACCESS_KEY: &str = "ASIATEBWEBIDENTITY01";
pub const TEMPORARY_SECRET_KEY: &str = "temporary-secret-from-sts";
pub const SESSION_TOKEN: &str = "teb-session-token-from-sts";

/// Faults the server injects until told otherwise.
#[derive(Default)]
pub struct S3Faults {
    /// UploadPart with this part number answers 500 InternalError...
    fail_part_number: AtomicU32,
    /// ...this many more times.
    fail_part_times: AtomicU32,
    /// Every request waits this long (milliseconds) before it is served.
    stall_millis: AtomicU64,
    /// This many next requests have their connection dropped without an answer.
    reset_next: AtomicU32,
    /// This many next UploadParts have their connection dropped after 1 MiB of the part was read.
    reset_mid_part: AtomicU32,
    /// This many next UploadParts stop being read after 1 MiB, for `stall_mid_part_millis`, and are then
    /// dropped (a client's request timeout ends them first).
    stall_mid_part: AtomicU32,
    stall_mid_part_millis: AtomicU64,
    /// UploadPart and CompleteMultipartUpload answer 507 Insufficient Storage (a full disk, as
    /// S3-compatible servers such as MinIO report it).
    storage_full: AtomicBool,
    /// Every request is refused with AccessDenied (revoked credentials).
    refuse_credentials: AtomicBool,
    /// AbortMultipartUpload answers 503 (S3 unreachable at the moment an upload must be aborted).
    fail_aborts: AtomicBool,
    /// Any `x-amz-checksum-*` or `x-amz-checksum-algorithm` header is refused with NotImplemented.
    refuse_checksums: AtomicBool,
    /// This many next PutObjects (single-request writes: a recovery kit) are refused...
    fail_put_object: AtomicU32,
    /// ...with AccessDenied when true (a bucket policy that denies the key), else 503 SlowDown.
    fail_put_object_denied: AtomicBool,
    /// How often each fault fired, by name, so that a test can show its fault happened.
    fired: Mutex<BTreeMap<&'static str, u32>>,
}

impl S3Faults {
    pub fn fail_upload_part(&self, part_number: u32, times: u32) {
        self.fail_part_number.store(part_number, Ordering::SeqCst);
        self.fail_part_times.store(times, Ordering::SeqCst);
    }

    pub fn stall(&self, delay: Duration) {
        self.stall_millis.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn reset_connections(&self, count: u32) {
        self.reset_next.store(count, Ordering::SeqCst);
    }

    pub fn reset_mid_part(&self, count: u32) {
        self.reset_mid_part.store(count, Ordering::SeqCst);
    }

    pub fn stall_mid_part(&self, delay: Duration, count: u32) {
        self.stall_mid_part_millis.store(delay.as_millis() as u64, Ordering::SeqCst);
        self.stall_mid_part.store(count, Ordering::SeqCst);
    }

    pub fn storage_full(&self, full: bool) {
        self.storage_full.store(full, Ordering::SeqCst);
    }

    /// The next `times` PutObjects (a recovery kit's write; multipart uploads are not touched) are
    /// refused: with AccessDenied when `denied`, as a bucket policy denying the key would, else with
    /// 503 SlowDown.
    pub fn fail_put_object(&self, times: u32, denied: bool) {
        self.fail_put_object_denied.store(denied, Ordering::SeqCst);
        self.fail_put_object.store(times, Ordering::SeqCst);
    }

    pub fn refuse_credentials(&self, refuse: bool) {
        self.refuse_credentials.store(refuse, Ordering::SeqCst);
    }

    pub fn fail_aborts(&self, on: bool) {
        self.fail_aborts.store(on, Ordering::SeqCst);
    }

    /// Behave as a store that knows no flexible checksums: a request carrying one is refused.
    pub fn refuse_flexible_checksums(&self, on: bool) {
        self.refuse_checksums.store(on, Ordering::SeqCst);
    }

    /// How often the fault `name` fired: "part failed", "connection reset", "reset mid-part",
    /// "stalled", "stalled mid-part", "storage full", "credentials refused", "abort refused",
    /// "checksum refused".
    pub fn fired(&self, name: &str) -> u32 {
        self.fired.lock().expect("fired lock").get(name).copied().unwrap_or(0)
    }

    fn record(&self, name: &'static str) {
        *self.fired.lock().expect("fired lock").entry(name).or_default() += 1;
    }

    fn take(counter: &AtomicU32) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

/// An unfinished multipart upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingUpload {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
}

/// A running S3 server; stopped when dropped.
pub struct S3Server {
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub endpoint: String,
    /// PEM of the CA that signed the TLS certificate, when serving TLS.
    pub ca_pem: Option<String>,
    pub faults: Arc<S3Faults>,
    uploads: Arc<Mutex<BTreeMap<String, PendingUpload>>>,
    parts_received: Arc<AtomicU64>,
    regions: Regions,
    encryption: Arc<Mutex<Encryption>>,
    locks: Arc<Mutex<Locks>>,
    policy: policy::Allowed,
    _root: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3Server {
    /// Plain HTTP.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false).await
    }

    /// TLS with a certificate for 127.0.0.1 and localhost, signed by a CA generated for this server.
    /// It also answers STS `AssumeRoleWithWebIdentity` (clients insist on HTTPS for STS): for
    /// [`WEB_IDENTITY_TOKEN`] and [`WEB_IDENTITY_ROLE`] it returns temporary keys the S3 side accepts.
    pub async fn start_tls() -> anyhow::Result<Self> {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> anyhow::Result<Self> {
        let root = tempfile::Builder::new().prefix("teb-s3-").tempdir()?;
        let faults = Arc::new(S3Faults::default());
        let uploads = Arc::new(Mutex::new(BTreeMap::new()));
        let parts_received = Arc::new(AtomicU64::new(0));
        let regions = Regions { root: Arc::new(root.path().to_owned()), named: Arc::default() };
        let policy = policy::Allowed::default();
        let encryption = Arc::new(Mutex::new(Encryption::default()));
        let locks = Arc::new(Mutex::new(Locks::default()));
        let store = FaultyStore {
            encryption: encryption.clone(),
            locks: locks.clone(),
            inner: s3s_fs::FileSystem::new(root.path()).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?,
            root: root.path().to_owned(),
            faults: faults.clone(),
            uploads: uploads.clone(),
            parts: Mutex::default(),
            declared: Mutex::default(),
            parts_received: parts_received.clone(),
        };
        let service = {
            let mut builder = s3s::service::S3ServiceBuilder::new(store);
            let mut auth = s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY);
            auth.register(TEMPORARY_ACCESS_KEY.into(), TEMPORARY_SECRET_KEY.into());
            auth.register(policy::HELPER_ACCESS_KEY.into(), policy::HELPER_SECRET_KEY.into());
            builder.set_auth(auth);
            builder.set_access(policy::Policy { allowed: policy.clone(), root: root.path().to_owned() });
            builder.build()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (acceptor, ca_pem) = if tls {
            let (config, ca) = crate::fixtures::tls_server_config(&["127.0.0.1", "localhost"])?;
            (Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))), Some(ca))
        } else {
            (None, None)
        };
        let scheme = if tls { "https" } else { "http" };
        let task = tokio::spawn(serve(listener, service, acceptor, faults.clone(), regions.clone()));
        Ok(S3Server {
            endpoint: format!("{scheme}://127.0.0.1:{port}"),
            ca_pem,
            faults,
            uploads,
            parts_received,
            regions,
            encryption,
            locks,
            policy,
            _root: root,
            task,
        })
    }

    /// The keys ([`ACCESS_KEY`], and STS's temporary ones) may do only `actions` (IAM names such as
    /// `s3:PutObject`) from now on; `None`: everything. The server's own helpers are not bound.
    pub fn allow_only(&self, actions: Option<&[&str]>) {
        *self.policy.lock().expect("policy lock") = actions.map(|a| a.iter().map(|s| s.to_string()).collect());
    }

    /// A client of this server (trusting its CA), for setting up and checking buckets.
    pub fn client(&self, bucket: &str) -> anyhow::Result<AmazonS3> {
        let mut options = ClientOptions::new().with_allow_http(true);
        if let Some(ca) = &self.ca_pem {
            options = options.with_root_certificate(object_store::Certificate::from_pem(ca.as_bytes())?);
        }
        Ok(AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(bucket)
            .with_region(self.regions.of(bucket))
            .with_access_key_id(policy::HELPER_ACCESS_KEY)
            .with_secret_access_key(policy::HELPER_SECRET_KEY)
            .with_virtual_hosted_style_request(false)
            .with_client_options(options)
            .build()?)
    }

    /// Creates a bucket in [`REGION`] (s3s-fs keeps buckets as folders).
    pub fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        self.create_bucket_in(bucket, REGION)
    }

    /// Creates a bucket in `region`: requests for it must be signed for that region.
    pub fn create_bucket_in(&self, bucket: &str, region: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(self._root.path().join(bucket))?;
        self.regions.named.lock().expect("regions lock").insert(bucket.to_owned(), region.to_owned());
        Ok(())
    }

    /// From now on `bucket` refuses writes without server-side encryption, as a bucket policy can.
    pub fn require_encryption(&self, bucket: &str) {
        self.encryption.lock().expect("encryption lock").required.insert(bucket.to_owned());
    }

    /// Creates a bucket in `region` with Object Lock enabled (and no default retention): writes may
    /// set a retention, and locked objects cannot be deleted before it ends.
    pub fn create_bucket_with_object_lock(&self, bucket: &str, region: &str) -> anyhow::Result<()> {
        self.create_bucket_in(bucket, region)?;
        self.locks.lock().expect("locks lock").enable(bucket);
        Ok(())
    }

    /// The lock of an object's current version, if it was written with one (expired or not).
    pub fn lock_of(&self, bucket: &str, key: &str) -> Option<Retention> {
        self.locks.lock().expect("locks lock").of(bucket, key)
    }

    /// The versions of a key in a bucket with Object Lock, oldest first: noncurrent ones, delete
    /// markers and the current one.
    pub fn versions(&self, bucket: &str, key: &str) -> Vec<Version> {
        let current = std::fs::read(self._root.path().join(bucket).join(key)).ok();
        self.locks.lock().expect("locks lock").versions(bucket, key, current)
    }

    /// A request object_store does not make (a DELETE by version ID), to `bucket` over plain HTTP,
    /// signed with [`ACCESS_KEY`] for the bucket's region: its status and body.
    pub async fn signed(
        &self,
        method: http::Method,
        bucket: &str,
        path_and_query: &str,
    ) -> anyhow::Result<(u16, String)> {
        anyhow::ensure!(self.ca_pem.is_none(), "signed requests are sent over plain HTTP only");
        let credential =
            object_store::aws::AwsCredential { key_id: ACCESS_KEY.into(), secret_key: SECRET_KEY.into(), token: None };
        let region = self.regions.of(bucket);
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}/{bucket}{path_and_query}", self.endpoint))
            .body(object_store::client::HttpRequestBody::from(Vec::new()))?;
        object_store::aws::AwsAuthorizer::new(&credential, "s3", &region).try_authorize(&mut request, None)?;
        let (parts, _) = request.into_parts();
        let answer =
            reqwest::Client::new().request(parts.method, parts.uri.to_string()).headers(parts.headers).send().await?;
        Ok((answer.status().as_u16(), answer.text().await?))
    }

    /// The server-side encryption an object was written with: `AES256`, `aws:kms` or
    /// `aws:kms:<key>`.
    pub fn encryption_of(&self, bucket: &str, key: &str) -> Option<String> {
        self.encryption.lock().expect("encryption lock").of.get(&(bucket.to_owned(), key.to_owned())).cloned()
    }

    /// Keys and sizes of the objects in `bucket`, read over S3.
    pub async fn objects(&self, bucket: &str) -> anyhow::Result<Vec<(String, u64)>> {
        use futures::TryStreamExt as _;
        let client = self.client(bucket)?;
        let mut listed: Vec<_> = client.list(None).map_ok(|m| (m.location.to_string(), m.size)).try_collect().await?;
        listed.sort();
        Ok(listed)
    }

    /// An object's bytes and user metadata, read over S3.
    pub async fn get(&self, bucket: &str, key: &str) -> anyhow::Result<(Bytes, BTreeMap<String, String>)> {
        let result = self.client(bucket)?.get(&Path::from(key)).await?;
        let metadata = result
            .attributes
            .iter()
            .filter_map(|(k, v)| match k {
                object_store::Attribute::Metadata(name) => Some((name.to_string(), v.to_string())),
                _ => None,
            })
            .collect();
        Ok((result.bytes().await?, metadata))
    }

    /// Multipart uploads begun and neither completed nor aborted.
    pub fn unfinished_uploads(&self) -> Vec<PendingUpload> {
        self.uploads.lock().expect("uploads lock").values().cloned().collect()
    }

    /// UploadPart requests that reached the store.
    pub fn parts_received(&self) -> u64 {
        self.parts_received.load(Ordering::SeqCst)
    }
}

enum MidPart {
    Reset,
    Stall(Duration),
}

impl S3Faults {
    fn take_mid_part(&self) -> Option<MidPart> {
        if Self::take(&self.reset_mid_part) {
            return Some(MidPart::Reset);
        }
        let stall = Duration::from_millis(self.stall_mid_part_millis.load(Ordering::SeqCst));
        Self::take(&self.stall_mid_part).then_some(MidPart::Stall(stall))
    }
}

/// Reads the first MiB of a part, then (after a stall, for [`MidPart::Stall`]) drops the connection.
async fn break_mid_part(mut body: hyper::body::Incoming, fault: MidPart, faults: &S3Faults) -> s3s::HttpError {
    use http_body_util::BodyExt as _;
    let mut read = 0;
    while read < 1 << 20 {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
    match fault {
        MidPart::Reset => faults.record("reset mid-part"),
        MidPart::Stall(delay) => {
            faults.record("stalled mid-part");
            tokio::time::sleep(delay).await;
        }
    }
    s3s::HttpError::new(Box::new(std::io::Error::other("injected fault mid-part")))
}

/// The region of each bucket: the one given to [`S3Server::create_bucket_in`], else [`REGION`].
#[derive(Clone)]
struct Regions {
    root: Arc<std::path::PathBuf>,
    named: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Regions {
    fn of(&self, bucket: &str) -> String {
        self.named.lock().expect("regions lock").get(bucket).cloned().unwrap_or_else(|| REGION.to_owned())
    }

    /// The region a request for `bucket` must be signed for; none for a bucket that does not exist
    /// (S3 answers NoSuchBucket whatever the region).
    fn expected(&self, bucket: &str) -> Option<String> {
        (bucket.is_empty() || self.root.join(bucket).is_dir()).then(|| self.of(bucket))
    }
}

async fn serve(
    listener: TcpListener,
    service: s3s::service::S3Service,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    faults: Arc<S3Faults>,
    regions: Regions,
) {
    loop {
        let Ok((socket, _)) = listener.accept().await else { continue };
        let service = service.clone();
        let faults = faults.clone();
        let regions = regions.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |request| {
                let service = service.clone();
                let faults = faults.clone();
                let regions = regions.clone();
                async move {
                    if let Some(answer) = sts_answer(&request) {
                        return Ok(answer);
                    }
                    // An error from the service makes hyper drop the connection without an answer.
                    if S3Faults::take(&faults.reset_next) {
                        faults.record("connection reset");
                        return Err(s3s::HttpError::new(Box::new(std::io::Error::other("injected connection reset"))));
                    }
                    let stall = faults.stall_millis.load(Ordering::SeqCst);
                    if stall > 0 {
                        faults.record("stalled");
                        tokio::time::sleep(Duration::from_millis(stall)).await;
                    }
                    if let Some(refusal) = refuse_as_s3_would(&request, &regions) {
                        return Ok(refusal);
                    }
                    let is_part = request.method() == http::Method::PUT
                        && request.uri().query().is_some_and(|q| q.contains("partNumber="));
                    if is_part && let Some(fault) = faults.take_mid_part() {
                        return Err(break_mid_part(request.into_body(), fault, &faults).await);
                    }
                    // S3 finishes a request it has read even when the client goes away (a process
                    // killed mid-CompleteMultipartUpload): the call is not dropped with the connection.
                    let call = tokio::spawn(async move { hyper::service::Service::call(&service, request).await });
                    call.await.unwrap_or_else(|e| Err(s3s::HttpError::new(Box::new(std::io::Error::other(e)))))
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = match acceptor {
                Some(acceptor) => match acceptor.accept(socket).await {
                    Ok(tls) => builder.serve_connection(TokioIo::new(tls), handler).await,
                    Err(_) => return,
                },
                None => builder.serve_connection(TokioIo::new(socket), handler).await,
            };
        });
    }
}

/// Buckets that require server-side encryption, and what each object was written with.
#[derive(Default)]
struct Encryption {
    required: std::collections::BTreeSet<String>,
    of: BTreeMap<(String, String), String>,
}

impl Encryption {
    /// Refuses an unencrypted write to a bucket that requires encryption; records what it is.
    fn write(
        &mut self,
        bucket: &str,
        key: &str,
        sse: Option<&ServerSideEncryption>,
        kms: Option<&str>,
    ) -> S3Result<()> {
        let Some(sse) = sse else {
            if self.required.contains(bucket) {
                return Err(s3_error!(AccessDenied, "Access Denied"));
            }
            return Ok(());
        };
        let named = match kms {
            Some(kms) => format!("{}:{kms}", sse.as_str()),
            None => sse.as_str().to_owned(),
        };
        self.of.insert((bucket.to_owned(), key.to_owned()), named);
        Ok(())
    }
}

/// s3s-fs with faults and a record of unfinished multipart uploads.
struct FaultyStore {
    encryption: Arc<Mutex<Encryption>>,
    locks: Arc<Mutex<Locks>>,
    inner: s3s_fs::FileSystem,
    root: std::path::PathBuf,
    faults: Arc<S3Faults>,
    uploads: Arc<Mutex<BTreeMap<String, PendingUpload>>>,
    /// ETag and size of each part received, by upload ID and part number.
    parts: Mutex<BTreeMap<(String, i32), (String, i64)>>,
    /// The flexible-checksum algorithm each upload's CreateMultipartUpload declared (upper case).
    declared: Mutex<BTreeMap<String, Option<String>>>,
    parts_received: Arc<AtomicU64>,
}

impl FaultyStore {
    fn check(&self) -> S3Result<()> {
        if self.faults.refuse_credentials.load(Ordering::SeqCst) {
            self.faults.record("credentials refused");
            return Err(s3_error!(AccessDenied, "credentials refused (injected fault)"));
        }
        Ok(())
    }

    /// A request that carries a flexible checksum (`algorithm`, as S3 names it, when it does), refused
    /// when the server plays a store that knows none.
    fn check_flexible(&self, algorithm: Option<&str>) -> S3Result<()> {
        if algorithm.is_some() && self.faults.refuse_checksums.load(Ordering::SeqCst) {
            self.faults.record("checksum refused");
            return Err(s3_error!(
                NotImplemented,
                "A header you provided implies functionality that is not implemented"
            ));
        }
        Ok(())
    }

    fn check_space(&self) -> S3Result<()> {
        if self.faults.storage_full.load(Ordering::SeqCst) {
            self.faults.record("storage full");
            let code = s3s::S3ErrorCode::Custom("XMinioStorageFull".into());
            let mut error = s3s::S3Error::with_message(
                code,
                "Storage backend has reached its minimum free drive threshold. Please delete a few objects to proceed.",
            );
            error.set_status_code(http::StatusCode::INSUFFICIENT_STORAGE);
            return Err(error);
        }
        Ok(())
    }

    /// S3 answers 404 NoSuchUpload for an upload it does not know, or no longer (completed, aborted);
    /// s3s-fs answers 403.
    fn check_upload(&self, upload_id: &str) -> S3Result<()> {
        if !self.uploads.lock().expect("uploads lock").contains_key(upload_id) {
            return Err(s3_error!(
                NoSuchUpload,
                "The specified upload does not exist. The upload ID may be invalid, or the upload may have been \
                 aborted or completed."
            ));
        }
        Ok(())
    }

    /// What S3 checks of the parts a CompleteMultipartUpload names, and s3s-fs does not: each was
    /// uploaded with that ETag, in ascending order, and all but the last have at least 5 MiB and (R2's
    /// rule, stricter than AWS) one size.
    fn check_parts(&self, upload_id: &str, parts: &[CompletedPart]) -> S3Result<()> {
        let received = self.parts.lock().expect("parts lock");
        let mut previous = 0;
        let mut first_size = None;
        for (index, part) in parts.iter().enumerate() {
            let number = part.part_number.unwrap_or(0);
            if number <= previous {
                return Err(s3_error!(InvalidPartOrder, "The list of parts was not in ascending order."));
            }
            previous = number;
            let sent = part.e_tag.as_ref().map(|e| e.value().to_owned());
            match received.get(&(upload_id.to_owned(), number)) {
                Some((etag, _)) if sent.as_deref() == Some(etag.as_str()) => {}
                _ => {
                    return Err(s3_error!(
                        InvalidPart,
                        "One or more of the specified parts could not be found. The part may not have been \
                         uploaded, or the specified entity tag may not match the part's entity tag."
                    ));
                }
            }
            let (_, size) = received[&(upload_id.to_owned(), number)];
            if index + 1 < parts.len() && size < MIN_PART_SIZE {
                return Err(s3_error!(EntityTooSmall, "Your proposed upload is smaller than the minimum allowed size"));
            }
            if index + 1 < parts.len() && *first_size.get_or_insert(size) != size {
                return Err(s3_error!(InvalidPart, "All non-trailing parts must have the same length."));
            }
        }
        Ok(())
    }

    /// s3s-fs would create a missing bucket on a multipart upload; S3 answers NoSuchBucket.
    fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if !self.root.join(bucket).is_dir() {
            return Err(s3_error!(NoSuchBucket, "The specified bucket does not exist"));
        }
        Ok(())
    }

    /// In a versioned bucket, what a write to `key` replaces: Some(its current bytes, if any).
    fn replaced(&self, bucket: &str, key: &str) -> Option<Option<Vec<u8>>> {
        let versioned = self.locks.lock().expect("locks lock").versioned(bucket);
        versioned.then(|| std::fs::read(self.root.join(bucket).join(key)).ok())
    }

    /// A DELETE in a versioned bucket: without a version ID, a delete marker in front of the current
    /// version, which stays (counted as `locked version hidden` when its lock holds); with one, that
    /// version gone unless its lock holds (`locked object kept`).
    fn delete_in_versioned(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
        bypass: bool,
    ) -> S3Result<DeleteObjectOutput> {
        let mut locks = self.locks.lock().expect("locks lock");
        if let Some(id) = version_id {
            return match locks.delete_version(bucket, key, id, bypass) {
                Ok(()) => Ok(DeleteObjectOutput { version_id: Some(id.to_owned()), ..Default::default() }),
                Err(refused) => {
                    if *refused.code() == s3s::S3ErrorCode::AccessDenied {
                        self.faults.record("locked object kept");
                    }
                    Err(refused)
                }
            };
        }
        let path = self.root.join(bucket).join(key);
        let hidden = std::fs::read(&path).ok();
        if hidden.is_some() {
            std::fs::remove_file(&path).map_err(|e| s3_error!(InternalError, "{e}"))?;
        }
        let marker = locks.delete_marker(bucket, key, hidden);
        self.faults.record("delete marker");
        if marker.hid_locked {
            self.faults.record("locked version hidden");
        }
        Ok(DeleteObjectOutput { delete_marker: Some(true), version_id: Some(marker.id), ..Default::default() })
    }

    fn forget_upload(&self, upload_id: &str) {
        self.uploads.lock().expect("uploads lock").remove(upload_id);
        self.parts.lock().expect("parts lock").retain(|(id, _), _| id != upload_id);
    }
}

type BoxedS3<'a, T> = Pin<Box<dyn Future<Output = S3Result<S3Response<T>>> + Send + 'a>>;

/// Operations passed straight to s3s-fs after the credential check.
macro_rules! delegate {
    ($($op:ident: $input:ty => $output:ty;)*) => {$(
        fn $op<'life0, 'async_trait>(&'life0 self, req: S3Request<$input>) -> BoxedS3<'async_trait, $output>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move {
                self.check()?;
                self.inner.$op(req).await
            })
        }
    )*};
}

#[async_trait::async_trait]
impl S3 for FaultyStore {
    delegate! {
        create_bucket: CreateBucketInput => CreateBucketOutput;
        head_bucket: HeadBucketInput => HeadBucketOutput;
        list_buckets: ListBucketsInput => ListBucketsOutput;
        get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput;
        get_object: GetObjectInput => GetObjectOutput;
        head_object: HeadObjectInput => HeadObjectOutput;
        list_objects: ListObjectsInput => ListObjectsOutput;
        list_objects_v2: ListObjectsV2Input => ListObjectsV2Output;
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.check()?;
        self.check_upload(&req.input.upload_id)?;
        self.inner.list_parts(req).await
    }

    async fn put_object(&self, mut req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.check()?;
        if S3Faults::take(&self.faults.fail_put_object) {
            self.faults.record("put object refused");
            drain(req.input.body.take()).await;
            return Err(if self.faults.fail_put_object_denied.load(Ordering::SeqCst) {
                s3_error!(AccessDenied, "Access Denied (injected: a bucket policy denies this key)")
            } else {
                s3_error!(SlowDown, "Please reduce your request rate. (injected)")
            });
        }
        let input = &req.input;
        let (mode, until) = (input.object_lock_mode.as_ref(), input.object_lock_retain_until_date.as_ref());
        let retention = self.locks.lock().expect("locks lock").asked(&input.bucket, mode, until)?;
        let flexible = [
            (&input.checksum_sha256, "SHA256"),
            (&input.checksum_crc32, "CRC32"),
            (&input.checksum_crc32c, "CRC32C"),
            (&input.checksum_sha1, "SHA1"),
            (&input.checksum_crc64nvme, "CRC64NVME"),
        ]
        .into_iter()
        .find_map(|(value, name)| value.as_ref().map(|_| name))
        .or(input.checksum_algorithm.as_ref().map(|a| a.as_str()));
        self.check_flexible(flexible)?;
        Locks::require_checksum(retention.as_ref(), input.content_md5.is_some() || flexible.is_some())?;
        let (sse, kms) = (input.server_side_encryption.as_ref(), input.ssekms_key_id.as_deref());
        self.encryption.lock().expect("encryption lock").write(&input.bucket, &input.key, sse, kms)?;
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        let replaced = self.replaced(&bucket, &key);
        let response = self.inner.put_object(req).await?;
        if let Some(replaced) = replaced {
            self.locks.lock().expect("locks lock").written(&bucket, &key, retention, replaced);
        }
        Ok(response)
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.check()?;
        let input = &req.input;
        if !self.locks.lock().expect("locks lock").versioned(&input.bucket) {
            return self.inner.delete_object(req).await;
        }
        let bypass = input.bypass_governance_retention == Some(true);
        let output = self.delete_in_versioned(&input.bucket, &input.key, input.version_id.as_deref(), bypass)?;
        Ok(S3Response::new(output))
    }

    /// In a versioned bucket each key is answered on its own, as S3 does.
    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.check()?;
        let input = &req.input;
        if !self.locks.lock().expect("locks lock").versioned(&input.bucket) {
            return self.inner.delete_objects(req).await;
        }
        let bypass = input.bypass_governance_retention == Some(true);
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for object in &input.delete.objects {
            match self.delete_in_versioned(&input.bucket, &object.key, object.version_id.as_deref(), bypass) {
                Ok(done) => deleted.push(DeletedObject {
                    key: Some(object.key.clone()),
                    delete_marker: done.delete_marker,
                    delete_marker_version_id: done.delete_marker.and(done.version_id.clone()),
                    version_id: object.version_id.clone(),
                }),
                Err(refused) => errors.push(Error {
                    key: Some(object.key.clone()),
                    code: Some(refused.code().as_str().to_owned()),
                    message: refused.message().map(str::to_owned),
                    version_id: object.version_id.clone(),
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput { deleted: Some(deleted), errors: Some(errors), ..Default::default() }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.check()?;
        self.check_bucket(&req.input.bucket)?;
        let input = &req.input;
        let declared = input.checksum_algorithm.as_ref().map(|a| a.as_str().to_ascii_uppercase());
        self.check_flexible(declared.as_deref())?;
        let (mode, until) = (input.object_lock_mode.as_ref(), input.object_lock_retain_until_date.as_ref());
        let retention = self.locks.lock().expect("locks lock").asked(&input.bucket, mode, until)?;
        let (sse, kms) = (input.server_side_encryption.as_ref(), input.ssekms_key_id.as_deref());
        self.encryption.lock().expect("encryption lock").write(&input.bucket, &input.key, sse, kms)?;
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let response = self.inner.create_multipart_upload(req).await?;
        if let Some(upload_id) = response.output.upload_id.clone() {
            self.declared.lock().expect("declared lock").insert(upload_id.clone(), declared);
            if let Some(retention) = retention {
                self.locks.lock().expect("locks lock").begin(&upload_id, retention);
            }
            let pending = PendingUpload { bucket, key, upload_id: upload_id.clone() };
            self.uploads.lock().expect("uploads lock").insert(upload_id, pending);
        }
        Ok(response)
    }

    async fn upload_part(&self, mut req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.check()?;
        self.check_upload(&req.input.upload_id)?;
        if let Err(full) = self.check_space() {
            drain(req.input.body.take()).await;
            return Err(full);
        }
        self.parts_received.fetch_add(1, Ordering::SeqCst);
        let failing = self.faults.fail_part_number.load(Ordering::SeqCst);
        if failing != 0 && req.input.part_number == failing as i32 && S3Faults::take(&self.faults.fail_part_times) {
            self.faults.record("part failed");
            drain(req.input.body.take()).await;
            return Err(s3_error!(InternalError, "injected failure of part {failing}"));
        }
        let retention = self.locks.lock().expect("locks lock").of_upload(&req.input.upload_id);
        let sent = [
            (&req.input.checksum_sha256, "SHA256"),
            (&req.input.checksum_crc32, "CRC32"),
            (&req.input.checksum_crc32c, "CRC32C"),
            (&req.input.checksum_sha1, "SHA1"),
            (&req.input.checksum_crc64nvme, "CRC64NVME"),
        ]
        .into_iter()
        .find_map(|(value, name)| value.as_ref().map(|_| name));
        let declared = self.declared.lock().expect("declared lock").get(&req.input.upload_id).cloned().flatten();
        let has_checksum = req.input.content_md5.is_some() || sent.is_some();
        let checked = self
            .check_flexible(sent)
            .and_then(|()| part_checksum_matches(declared.as_deref(), sent))
            .and_then(|()| Locks::require_checksum(retention.as_ref(), has_checksum));
        if let Err(refused) = checked {
            drain(req.input.body.take()).await;
            return Err(refused);
        }
        let expected = Checksum {
            checksum_sha256: req.input.checksum_sha256.clone(),
            checksum_crc64nvme: req.input.checksum_crc64nvme.clone(),
            ..Default::default()
        };
        let md5 = req.input.content_md5.clone();
        if expected.checksum_sha256.is_some() || expected.checksum_crc64nvme.is_some() || md5.is_some() {
            req.input.body = Some(checked_part(req.input.body.take(), expected, md5).await?);
        }
        let (upload_id, number, size) =
            (req.input.upload_id.clone(), req.input.part_number, req.input.content_length.unwrap_or(0));
        let response = self.inner.upload_part(req).await?;
        if let Some(etag) = &response.output.e_tag {
            self.parts.lock().expect("parts lock").insert((upload_id, number), (etag.value().to_owned(), size));
        }
        Ok(response)
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.check()?;
        let upload_id = req.input.upload_id.clone();
        self.check_upload(&upload_id)?;
        self.check_space()?;
        let parts = req.input.multipart_upload.as_ref().and_then(|m| m.parts.as_deref()).unwrap_or_default();
        self.check_parts(&upload_id, parts)?;
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let replaced = self.replaced(&bucket, &key);
        let response = self.inner.complete_multipart_upload(req).await?;
        let mut locks = self.locks.lock().expect("locks lock");
        let retention = locks.end(&upload_id);
        if let Some(replaced) = replaced {
            locks.written(&bucket, &key, retention, replaced);
        }
        drop(locks);
        self.forget_upload(&upload_id);
        Ok(response)
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.check()?;
        if self.faults.fail_aborts.load(Ordering::SeqCst) {
            self.faults.record("abort refused");
            return Err(s3_error!(ServiceUnavailable, "abort refused (injected fault)"));
        }
        let upload_id = req.input.upload_id.clone();
        self.check_upload(&upload_id)?;
        let response = self.inner.abort_multipart_upload(req).await?;
        self.locks.lock().expect("locks lock").end(&upload_id);
        self.forget_upload(&upload_id);
        Ok(response)
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        self.check()?;
        let (bucket, prefix) = (req.input.bucket, req.input.prefix.unwrap_or_default());
        let uploads = self
            .uploads
            .lock()
            .expect("uploads lock")
            .values()
            .filter(|u| u.bucket == bucket && u.key.starts_with(&prefix))
            .map(|u| MultipartUpload {
                key: Some(u.key.clone()),
                upload_id: Some(u.upload_id.clone()),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(bucket),
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            uploads: Some(uploads),
            is_truncated: Some(false),
            ..Default::default()
        }))
    }
}

/// STS's answer to `POST /?Action=AssumeRoleWithWebIdentity&...`, or None for any other request.
fn sts_answer(request: &http::Request<hyper::body::Incoming>) -> Option<http::Response<s3s::Body>> {
    let query = request.uri().query()?;
    let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    if request.method() != http::Method::POST || params.get("Action")?.as_str() != "AssumeRoleWithWebIdentity" {
        return None;
    }
    let token_ok = params.get("WebIdentityToken").map(|t| t.trim()) == Some(WEB_IDENTITY_TOKEN);
    let role_ok = params.get("RoleArn").map(String::as_str) == Some(WEB_IDENTITY_ROLE);
    let (status, body) = if token_ok && role_ok {
        let expiration = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).strftime("%Y-%m-%dT%H:%M:%SZ");
        (
            http::StatusCode::OK,
            format!(
                "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                 <AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{TEMPORARY_ACCESS_KEY}</AccessKeyId>\
                 <SecretAccessKey>{TEMPORARY_SECRET_KEY}</SecretAccessKey><SessionToken>{SESSION_TOKEN}</SessionToken>\
                 <Expiration>{expiration}</Expiration></Credentials></AssumeRoleWithWebIdentityResult>\
                 </AssumeRoleWithWebIdentityResponse>"
            ),
        )
    } else {
        (
            http::StatusCode::FORBIDDEN,
            "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>\
             <Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error></ErrorResponse>"
                .to_owned(),
        )
    };
    let mut response = http::Response::new(s3s::Body::from(body));
    *response.status_mut() = status;
    Some(response)
}

/// Reads a refused part's body before the answer, as a server that checks the part does: answering
/// while the client still writes makes it see a broken pipe instead of the answer.
async fn drain(body: Option<StreamingBlob>) {
    use futures::StreamExt as _;
    if let Some(mut body) = body {
        while let Some(Ok(_)) = body.next().await {}
    }
}

/// A part's body read whole and checked against the base64 SHA-256 and CRC64-NVME its
/// A part's flexible checksum against its upload's declared algorithm: AWS refuses a part whose
/// checksum is of another type than declared, or missing when one was declared.
fn part_checksum_matches(declared: Option<&str>, sent: Option<&str>) -> S3Result<()> {
    if declared == sent {
        return Ok(());
    }
    let name = |a: Option<&str>| a.map_or("null".to_owned(), str::to_ascii_lowercase);
    Err(s3_error!(
        InvalidRequest,
        "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
        name(declared),
        name(sent)
    ))
}

/// `x-amz-checksum-*` headers name and the MD5 of its `Content-MD5` (`BadDigest` when one differs),
/// then handed on.
async fn checked_part(body: Option<StreamingBlob>, expected: Checksum, md5: Option<String>) -> S3Result<StreamingBlob> {
    use base64::Engine as _;
    use futures::StreamExt as _;
    use md5::Digest as _;
    let mut hasher = s3s::checksum::ChecksumHasher::default();
    if expected.checksum_sha256.is_some() {
        hasher.sha256 = Some(Default::default());
    }
    if expected.checksum_crc64nvme.is_some() {
        hasher.crc64nvme = Some(Default::default());
    }
    let mut whole = Vec::new();
    if let Some(mut body) = body {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "{e}"))?;
            hasher.update(&chunk);
            whole.extend_from_slice(&chunk);
        }
    }
    if md5.is_some_and(|md5| md5 != base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&whole))) {
        return Err(s3_error!(BadDigest, "The Content-MD5 you specified did not match what we received."));
    }
    let actual = hasher.finalize();
    if actual.checksum_sha256 != expected.checksum_sha256 {
        return Err(s3_error!(BadDigest, "The SHA256 you specified did not match the calculated checksum."));
    }
    if actual.checksum_crc64nvme != expected.checksum_crc64nvme {
        return Err(s3_error!(BadDigest, "The CRC64NVME you specified did not match the calculated checksum."));
    }
    Ok(StreamingBlob::from(s3s::Body::from(Bytes::from(whole))))
}

/// The refusals AWS S3 makes before it looks at a request's signature, and s3s does not: a credential
/// scope naming another region than the bucket's, and temporary keys without their session token.
fn refuse_as_s3_would(
    request: &http::Request<hyper::body::Incoming>,
    regions: &Regions,
) -> Option<http::Response<s3s::Body>> {
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes()).into_owned().collect();
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    // `Credential=AKID/20261201/us-east-1/s3/aws4_request` in the header, or X-Amz-Credential presigned.
    let credential = header("authorization")
        .and_then(|auth| auth.split("Credential=").nth(1))
        .map(|c| c.split([',', ' ']).next().unwrap_or_default().to_owned())
        .or_else(|| query.get("X-Amz-Credential").cloned())?;
    let mut scope = credential.split('/');
    let (access_key, region) = (scope.next()?, scope.nth(1)?);
    let bucket = request.uri().path().trim_start_matches('/').split('/').next().unwrap_or_default();
    if let Some(expected) = regions.expected(bucket)
        && region != expected
    {
        let message =
            format!("The authorization header is malformed; the region '{region}' is wrong; expecting '{expected}'");
        let extra = format!("<Region>{expected}</Region>");
        return Some(s3_error_response(
            http::StatusCode::BAD_REQUEST,
            "AuthorizationHeaderMalformed",
            &message,
            &extra,
        ));
    }
    let token = header("x-amz-security-token").or(query.get("X-Amz-Security-Token").map(String::as_str));
    match (access_key == TEMPORARY_ACCESS_KEY, token) {
        (true, Some(SESSION_TOKEN)) | (false, None) => None,
        (true, None) => Some(s3_error_response(
            http::StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
            "",
        )),
        (_, Some(_)) => Some(s3_error_response(
            http::StatusCode::BAD_REQUEST,
            "InvalidToken",
            "The provided token is malformed or otherwise invalid.",
            "",
        )),
    }
}

fn s3_error_response(status: http::StatusCode, code: &str, message: &str, extra: &str) -> http::Response<s3s::Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>{extra}</Error>"
    );
    let mut response = http::Response::new(s3s::Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/xml"));
    response
}
