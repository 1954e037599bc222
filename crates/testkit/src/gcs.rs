//! A Google Cloud Storage server for tests: the XML API that object_store's GCS client speaks (object
//! PUT/GET/HEAD/DELETE, `list-type=2` listing, XML multipart uploads), in memory, plain HTTP on loopback.
//!
//! No published emulator implements GCS's XML multipart uploads (fake-gcs-server#852 is open, and
//! gcp-storage-emulator has only the JSON API), so the project keeps its own, as strict as GCS where
//! a client could tell:
//! - every request carries a bearer token, a service account's self-signed JWT checked as Google
//!   checks one (google.aip.dev/auth/4111): RS256, `kid` naming one of the account's keys, the
//!   signature verified with that key, `iss` and `sub` its email, a storage `scope` (or the storage
//!   `aud`), `iat` not in the future, `exp` not passed and at most an hour after `iat`
//!   (401 `AuthenticationRequired` otherwise);
//! - each account holds a role on every bucket ([`Role`]), and each request needs the IAM permission
//!   GCS checks for it (an overwrite also `storage.objects.delete`; a read-only scope leaves only
//!   reads): 403 `AccessDenied` naming the permission otherwise;
//! - a missing bucket is 404 `NoSuchBucket`, a missing object 404 `NoSuchKey`, an unknown (completed,
//!   aborted) upload 404 `NoSuchUpload`, and so is an upload ID named at another bucket or key than it
//!   was initiated for;
//! - completing an upload checks each part's ETag and order and that every part but the last holds at
//!   least 5 MiB (`InvalidPart`, `InvalidPartOrder`, `EntityTooSmall`);
//! - `x-goog-meta-*` metadata is kept and returned, ranges are served as 206 with `Content-Range`;
//! - `GET /<bucket>?uploads` lists the unfinished multipart uploads (`prefix` honoured), as GCS's
//!   XML API does;
//! - on demand ([`GcsServer::serve_metadata`]) it is also the GCE/GKE metadata server
//!   (`/computeMetadata/v1/…`, `Metadata-Flavor: Google` required, as on GCE), handing out an
//!   hour's access tokens of an instance account, which the storage side then accepts.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use teb_pipeline::{GcsLocation, ServiceAccountKey, Storage, StorageLocation};
use tokio::net::TcpListener;

/// GCS's smallest part but the last.
const MIN_PART_SIZE: usize = 5 << 20;
/// The service account the server trusts.
pub const CLIENT_EMAIL: &str = "talos-etcd-backup@teb-test.iam.gserviceaccount.com";
/// The scopes that reach Cloud Storage, and the audience a token may name instead of one.
const SCOPES: [&str; 3] = [
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/devstorage.full_control",
    "https://www.googleapis.com/auth/devstorage.read_write",
];
const READ_ONLY_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_only";
const AUDIENCE: &str = "https://storage.googleapis.com/";
/// Longest lifetime Google gives a self-signed JWT, and the clock skew it allows on `iat`.
const MAX_LIFETIME: i64 = 3600;
const SKEW: i64 = 300;

/// A predefined Cloud Storage role, held on every bucket of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `roles/storage.objectAdmin`: everything on objects and multipart uploads.
    ObjectAdmin,
    /// `roles/storage.objectCreator`: create objects and multipart uploads, abort them, list parts.
    ObjectCreator,
    /// `roles/storage.objectViewer`: read and list objects.
    ObjectViewer,
}

impl Role {
    /// The IAM permissions of the role that the XML API checks.
    fn permissions(self) -> &'static [&'static str] {
        match self {
            Role::ObjectAdmin => &[
                "storage.objects.create",
                "storage.objects.delete",
                "storage.objects.get",
                "storage.objects.list",
                "storage.multipartUploads.create",
                "storage.multipartUploads.abort",
                "storage.multipartUploads.list",
                "storage.multipartUploads.listParts",
            ],
            Role::ObjectCreator => &[
                "storage.objects.create",
                "storage.multipartUploads.create",
                "storage.multipartUploads.abort",
                "storage.multipartUploads.listParts",
            ],
            Role::ObjectViewer => &["storage.objects.get", "storage.objects.list"],
        }
    }
}

/// A service account's key the server knows.
struct Account {
    email: String,
    role: Role,
    public_key: Vec<u8>,
}

#[derive(Clone)]
struct Object {
    data: Bytes,
    metadata: BTreeMap<String, String>,
    etag: String,
    generation: u64,
    updated: jiff::Timestamp,
}

struct Upload {
    bucket: String,
    key: String,
    initiated: jiff::Timestamp,
    metadata: BTreeMap<String, String>,
    parts: BTreeMap<u32, (String, Bytes)>,
}

#[derive(Default)]
struct State {
    buckets: BTreeMap<String, BTreeMap<String, Object>>,
    uploads: HashMap<String, Upload>,
    next_id: u64,
}

/// Faults the server injects until told otherwise.
#[derive(Default)]
pub struct GcsFaults {
    /// Part uploads with this part number answer 503...
    fail_part_number: AtomicU32,
    /// ...this many more times.
    fail_part_times: AtomicU32,
}

impl GcsFaults {
    pub fn fail_upload_part(&self, part_number: u32, times: u32) {
        self.fail_part_number.store(part_number, Ordering::SeqCst);
        self.fail_part_times.store(times, Ordering::SeqCst);
    }

    fn part_fails(&self, part_number: u32) -> bool {
        part_number == self.fail_part_number.load(Ordering::SeqCst)
            && self.fail_part_times.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

pub struct GcsServer {
    /// `http://127.0.0.1:<port>`, the client's base URL.
    pub endpoint: String,
    pub faults: Arc<GcsFaults>,
    state: Arc<Mutex<State>>,
    /// By key ID.
    accounts: Arc<Mutex<HashMap<String, Account>>>,
    metadata: Arc<Mutex<Metadata>>,
    /// The trusted service account's key, as gcloud writes it, and its private half.
    key_json: String,
    key: aws_lc_rs::rsa::KeyPair,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A service account's new RSA key: the pair, its key ID (as gcloud names keys: 40 hex digits) and
/// its key file.
struct NewKey {
    pair: aws_lc_rs::rsa::KeyPair,
    id: String,
    json: String,
}

impl NewKey {
    fn generate(email: &str) -> anyhow::Result<Self> {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::signature::KeyPair as _;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)?;
        let der = pair.as_der()?;
        let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
        let id = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(pair.public_key().as_ref())[..20]);
        let json = serde_json::json!({
            "type": "service_account",
            "project_id": "teb-test",
            "private_key_id": id,
            "private_key": pem,
            "client_email": email,
            "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token",
        })
        .to_string();
        Ok(NewKey { pair, id, json })
    }

    fn account(&self, email: &str, role: Role) -> Account {
        use aws_lc_rs::signature::KeyPair as _;
        Account { email: email.to_owned(), role, public_key: self.pair.public_key().as_ref().to_vec() }
    }
}

impl GcsServer {
    /// A server that trusts one key of [`CLIENT_EMAIL`], which holds `roles/storage.objectAdmin`.
    pub async fn start() -> anyhow::Result<Self> {
        let key = NewKey::generate(CLIENT_EMAIL)?;
        let accounts =
            Arc::new(Mutex::new(HashMap::from([(key.id.clone(), key.account(CLIENT_EMAIL, Role::ObjectAdmin))])));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::default()));
        let faults = Arc::new(GcsFaults::default());
        let metadata = Arc::new(Mutex::new(Metadata::default()));
        let service = Arc::new(Service {
            state: state.clone(),
            faults: faults.clone(),
            accounts: accounts.clone(),
            metadata: metadata.clone(),
        });
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    let serve = hyper::service::service_fn(move |request| {
                        let service = service.clone();
                        // A request read is finished even when the client goes away, as GCS does.
                        async move {
                            let answer = tokio::spawn(async move { service.handle(request).await }).await;
                            Ok::<_, std::convert::Infallible>(
                                answer.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
                            )
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(stream), serve).await;
                });
            }
        });
        Ok(GcsServer { endpoint, faults, state, accounts, metadata, key_json: key.json, key: key.pair, task })
    }

    /// From now on the server also answers as the metadata server of an instance (or a GKE pod with
    /// workload identity) running as `email` with `role`: set `GCE_METADATA_HOST` and
    /// `GCE_METADATA_IP` to [`GcsServer::metadata_host`] (both, or a client falls back to
    /// 169.254.169.254).
    pub fn serve_metadata(&self, email: &str, role: Role) {
        self.metadata.lock().unwrap().instance = Some((email.to_owned(), role));
    }

    /// `127.0.0.1:<port>`, as `GCE_METADATA_HOST` takes it.
    pub fn metadata_host(&self) -> String {
        self.endpoint.trim_start_matches("http://").to_owned()
    }

    /// A new key of a new service account `email` holding `role` on every bucket: its key file.
    pub fn service_account(&self, email: &str, role: Role) -> anyhow::Result<String> {
        let key = NewKey::generate(email)?;
        self.accounts.lock().unwrap().insert(key.id.clone(), key.account(email, role));
        Ok(key.json)
    }

    /// A bearer token of `header` and `claims` signed with the trusted account's key, to try the
    /// server's checks with tokens no client would send.
    pub fn sign_token(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let message = format!("{}.{}", b64.encode(header.to_string()), b64.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                message.as_bytes(),
                &mut signature,
            )
            .expect("RSA signing");
        format!("{message}.{}", b64.encode(signature))
    }

    /// The trusted key's ID.
    pub fn key_id(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.key_json).expect("key file")["private_key_id"]
            .as_str()
            .expect("key ID")
            .to_owned()
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.state.lock().unwrap().buckets.entry(bucket.to_owned()).or_default();
    }

    /// The trusted service account's JSON key.
    pub fn service_account_key(&self) -> String {
        self.key_json.clone()
    }

    /// A key of the same account name that the server never saw (a revoked or foreign key).
    pub fn unknown_key() -> anyhow::Result<String> {
        Ok(NewKey::generate(CLIENT_EMAIL)?.json)
    }

    pub fn location(&self, bucket: &str) -> GcsLocation {
        GcsLocation {
            bucket: bucket.into(),
            endpoint: Some(self.endpoint.clone()),
            service_account_key: Some(ServiceAccountKey(self.key_json.clone())),
        }
    }

    /// A storage handle on `bucket`, to look at what a test stored.
    pub fn storage(&self, bucket: &str) -> anyhow::Result<Storage> {
        Ok(Storage::new(&StorageLocation::Gcs(self.location(bucket)), Duration::from_secs(30))?)
    }

    /// The objects of `bucket`, with their sizes.
    pub fn objects(&self, bucket: &str) -> Vec<(String, u64)> {
        let state = self.state.lock().unwrap();
        let objects = state.buckets.get(bucket).into_iter().flatten();
        objects.map(|(key, o)| (key.clone(), o.data.len() as u64)).collect()
    }

    /// Multipart uploads neither completed nor aborted, by key.
    pub fn unfinished_uploads(&self) -> Vec<String> {
        self.state.lock().unwrap().uploads.values().map(|u| u.key.clone()).collect()
    }

    /// Parts received by the unfinished uploads.
    pub fn unfinished_parts(&self) -> usize {
        self.state.lock().unwrap().uploads.values().map(|u| u.parts.len()).sum()
    }
}

struct Service {
    state: Arc<Mutex<State>>,
    faults: Arc<GcsFaults>,
    accounts: Arc<Mutex<HashMap<String, Account>>>,
    metadata: Arc<Mutex<Metadata>>,
}

/// The metadata server's side: the instance's account, and the access tokens it handed out.
#[derive(Default)]
struct Metadata {
    instance: Option<(String, Role)>,
    /// By token: the account, its role, and until when the token holds.
    issued: HashMap<String, (String, Role, i64)>,
}

type Answer = Response<Full<Bytes>>;

fn error(status: StatusCode, code: &str, message: &str) -> Answer {
    let body =
        format!("<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>");
    Response::builder().status(status).header("content-type", "application/xml").body(Full::new(body.into())).unwrap()
}

fn xml(body: String) -> Answer {
    Response::builder().header("content-type", "application/xml").body(Full::new(body.into())).unwrap()
}

fn percent_decode(text: &str) -> String {
    let bytes: Vec<u8> = form_urlencoded::parse(format!("k={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned().into_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What a request asks, as GCS's XML API routes it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Operation {
    List,
    ListUploads,
    Initiate,
    PutPart,
    Complete,
    Abort,
    Put,
    Get,
    Delete,
}

impl Operation {
    fn of(method: &Method, query: &HashMap<String, String>, has_key: bool) -> Option<Self> {
        let upload = query.contains_key("uploadId");
        Some(match (method, has_key) {
            (&Method::GET, false) if query.contains_key("uploads") => Operation::ListUploads,
            (&Method::GET, false) => Operation::List,
            (&Method::POST, true) if query.contains_key("uploads") => Operation::Initiate,
            (&Method::PUT, true) if upload => Operation::PutPart,
            (&Method::POST, true) if upload => Operation::Complete,
            (&Method::DELETE, true) if upload => Operation::Abort,
            (&Method::PUT, true) => Operation::Put,
            (&Method::GET | &Method::HEAD, true) => Operation::Get,
            (&Method::DELETE, true) => Operation::Delete,
            _ => return None,
        })
    }

    /// The IAM permission GCS checks for it, and whether it is checked on the bucket or the object.
    fn permission(self) -> (&'static str, &'static str) {
        match self {
            Operation::List => ("storage.objects.list", "bucket"),
            Operation::ListUploads => ("storage.multipartUploads.list", "bucket"),
            Operation::Initiate | Operation::PutPart => ("storage.multipartUploads.create", "object"),
            Operation::Complete | Operation::Put => ("storage.objects.create", "object"),
            Operation::Abort => ("storage.multipartUploads.abort", "object"),
            Operation::Get => ("storage.objects.get", "object"),
            Operation::Delete => ("storage.objects.delete", "object"),
        }
    }
}

/// Who a token proved the caller to be, and the permissions its role and scope leave it.
struct Caller {
    email: String,
    permissions: Vec<&'static str>,
}

impl Caller {
    /// 403 as GCS answers it, its `Details` naming the permission, unless the caller has it.
    fn denied(&self, permission: &str, resource: &str) -> Option<Answer> {
        if self.permissions.contains(&permission) {
            return None;
        }
        let body = format!(
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code><Message>Access denied.</Message>\
             <Details>{} does not have {permission} access to the Google Cloud Storage {resource}. Permission \
             &apos;{permission}&apos; denied on resource (or it may not exist).</Details></Error>",
            escape(&self.email)
        );
        Some(
            Response::builder()
                .status(StatusCode::FORBIDDEN)
                .header("content-type", "application/xml")
                .body(Full::new(body.into()))
                .unwrap(),
        )
    }
}

impl Service {
    async fn handle(&self, request: Request<hyper::body::Incoming>) -> Answer {
        if let Some(path) = request.uri().path().strip_prefix("/computeMetadata/v1/") {
            return self.metadata(path, request.headers());
        }
        let caller = match self.authenticate(request.headers()) {
            Ok(caller) => caller,
            Err(message) => return error(StatusCode::UNAUTHORIZED, "AuthenticationRequired", message),
        };
        let (parts, body) = request.into_parts();
        let query: HashMap<String, String> =
            form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
        let path = parts.uri.path().trim_start_matches('/');
        let (bucket, key) = match path.split_once('/') {
            Some((bucket, key)) => (percent_decode(bucket), percent_decode(key)),
            None => (percent_decode(path), String::new()),
        };
        if !self.state.lock().unwrap().buckets.contains_key(&bucket) {
            return error(StatusCode::NOT_FOUND, "NoSuchBucket", "The specified bucket does not exist.");
        }
        let Some(operation) = Operation::of(&parts.method, &query, !key.is_empty()) else {
            return error(StatusCode::NOT_IMPLEMENTED, "NotImplemented", "not served by the test server");
        };
        let (permission, resource) = operation.permission();
        // Replacing an object deletes the old one: GCS asks for both permissions.
        let replaces = matches!(operation, Operation::Put | Operation::Complete) && self.exists(&bucket, &key);
        let denied = caller.denied(permission, resource);
        if let Some(denied) = denied.or_else(|| replaces.then(|| caller.denied("storage.objects.delete", resource))?) {
            return denied;
        }
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return error(StatusCode::BAD_REQUEST, "IncompleteBody", &e.to_string()),
        };
        let metadata: BTreeMap<String, String> = parts
            .headers
            .iter()
            .filter_map(|(name, value)| {
                let name = name.as_str().strip_prefix("x-goog-meta-")?;
                Some((name.to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        if !self.upload_at(&query, &bucket, &key) {
            return no_such_upload();
        }
        match operation {
            Operation::List => self.list(&bucket, &query),
            Operation::ListUploads => self.list_uploads(&bucket, &query),
            Operation::Initiate => self.initiate(&bucket, &key, metadata),
            Operation::PutPart => self.put_part(&query, body),
            Operation::Complete => self.complete(&query, &body),
            Operation::Abort => self.abort(&query),
            Operation::Put => self.put(&bucket, &key, body, metadata),
            Operation::Get => self.get(&bucket, &key, &parts),
            Operation::Delete => self.delete(&bucket, &key),
        }
    }

    /// The metadata server: the instance account's email and access tokens, only to a request
    /// that says `Metadata-Flavor: Google`.
    fn metadata(&self, path: &str, headers: &http::HeaderMap) -> Answer {
        let text =
            |status: StatusCode, body: String| Response::builder().status(status).body(Full::new(body.into())).unwrap();
        if headers.get("metadata-flavor").and_then(|v| v.to_str().ok()) != Some("Google") {
            return text(StatusCode::FORBIDDEN, "Missing required header: Metadata-Flavor".into());
        }
        let mut metadata = self.metadata.lock().unwrap();
        let Some((email, role)) = metadata.instance.clone() else {
            return text(StatusCode::NOT_FOUND, "no service account on this instance".into());
        };
        match path {
            "instance/service-accounts/default/email" => text(StatusCode::OK, email),
            "instance/service-accounts/default/token" => {
                let token = format!("ya29.teb-{:032x}", rand_u128());
                let until = jiff::Timestamp::now().as_second() + MAX_LIFETIME;
                metadata.issued.insert(token.clone(), (email, role, until));
                let body =
                    serde_json::json!({"access_token": token, "expires_in": MAX_LIFETIME - 1, "token_type": "Bearer"});
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(body.to_string().into()))
                    .unwrap()
            }
            _ => text(StatusCode::NOT_FOUND, format!("not served by the test server: {path}")),
        }
    }

    fn exists(&self, bucket: &str, key: &str) -> bool {
        self.state.lock().unwrap().buckets.get(bucket).is_some_and(|objects| objects.contains_key(key))
    }

    /// The bearer token: a self-signed JWT as Google takes one (google.aip.dev/auth/4111), signed
    /// with a key the server knows, for that key's account, with a storage scope, within its hour.
    fn authenticate(&self, headers: &http::HeaderMap) -> Result<Caller, &'static str> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| !t.is_empty())
            .ok_or("Anonymous caller does not have storage.objects access.")?;
        let invalid = "Invalid Credentials";
        // An access token the metadata server handed out (a self-signed JWT has two dots).
        if !token.contains('.') || token.starts_with("ya29.") {
            let metadata = self.metadata.lock().unwrap();
            let (email, role, until) = metadata.issued.get(token).ok_or(invalid)?;
            if *until < jiff::Timestamp::now().as_second() {
                return Err(invalid);
            }
            return Ok(Caller { email: email.clone(), permissions: role.permissions().to_vec() });
        }
        let decode = |part: &str| -> Result<serde_json::Value, &'static str> {
            serde_json::from_slice(&b64.decode(part).map_err(|_| invalid)?).map_err(|_| invalid)
        };
        let (message, signature) = token.rsplit_once('.').ok_or(invalid)?;
        let (header, claims) = message.split_once('.').ok_or(invalid)?;
        let (header, claims) = (decode(header)?, decode(claims)?);
        let accounts = self.accounts.lock().unwrap();
        let account = header["kid"].as_str().and_then(|kid| accounts.get(kid)).ok_or(invalid)?;
        if header["alg"] != "RS256" {
            return Err(invalid);
        }
        let key = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            &account.public_key,
        );
        key.verify(message.as_bytes(), &b64.decode(signature).map_err(|_| invalid)?).map_err(|_| invalid)?;
        if claims["iss"] != account.email.as_str() || claims["sub"] != account.email.as_str() {
            return Err(invalid);
        }
        let now = jiff::Timestamp::now().as_second();
        let (iat, exp) = (claims["iat"].as_i64().ok_or(invalid)?, claims["exp"].as_i64().ok_or(invalid)?);
        if iat > now + SKEW || exp < now || exp - iat > MAX_LIFETIME {
            return Err(invalid);
        }
        let scopes: Vec<&str> = claims["scope"].as_str().unwrap_or_default().split(' ').collect();
        let permissions = account.role.permissions().iter().copied();
        let permissions: Vec<&'static str> =
            if scopes.iter().any(|s| SCOPES.contains(s)) || (claims["scope"].is_null() && claims["aud"] == AUDIENCE) {
                permissions.collect()
            } else if scopes.contains(&READ_ONLY_SCOPE) {
                permissions.filter(|p| Role::ObjectViewer.permissions().contains(p)).collect()
            } else {
                return Err(invalid);
            };
        Ok(Caller { email: account.email.clone(), permissions })
    }

    fn list(&self, bucket: &str, query: &HashMap<String, String>) -> Answer {
        let state = self.state.lock().unwrap();
        let prefix = query.get("prefix").map(String::as_str).unwrap_or_default();
        let after = query.get("continuation-token").or(query.get("start-after")).cloned().unwrap_or_default();
        let max = query.get("max-keys").and_then(|m| m.parse().ok()).unwrap_or(1000usize);
        let mut contents = String::new();
        let mut listed = 0;
        let mut next = None;
        for (key, object) in state.buckets[bucket].range(after.clone()..).filter(|(k, _)| **k != after) {
            if !key.starts_with(prefix) {
                continue;
            }
            if listed == max {
                next = Some(key.clone());
                break;
            }
            listed += 1;
            contents.push_str(&format!(
                "<Contents><Key>{}</Key><Size>{}</Size><LastModified>{}</LastModified><ETag>{}</ETag></Contents>",
                escape(key),
                object.data.len(),
                object.updated.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
                escape(&object.etag)
            ));
        }
        // The token is the last key listed; the next page starts after it.
        let token = next
            .map(|_| format!("<NextContinuationToken>{}</NextContinuationToken>", escape(&last_key(&contents))))
            .unwrap_or_default();
        xml(format!(
            "<?xml version='1.0' encoding='UTF-8'?><ListBucketResult><Name>{bucket}</Name><Prefix>{}</Prefix>\
             <KeyCount>{listed}</KeyCount><IsTruncated>{}</IsTruncated>{token}{contents}</ListBucketResult>",
            escape(prefix),
            !token.is_empty()
        ))
    }

    /// The unfinished multipart uploads of `bucket` whose key starts with `prefix`, as GCS's XML
    /// API lists them (one page: the tests never start 1000).
    fn list_uploads(&self, bucket: &str, query: &HashMap<String, String>) -> Answer {
        let state = self.state.lock().unwrap();
        let prefix = query.get("prefix").map(String::as_str).unwrap_or_default();
        let mut uploads: Vec<(&String, &Upload)> =
            state.uploads.iter().filter(|(_, u)| u.bucket == bucket && u.key.starts_with(prefix)).collect();
        uploads.sort_by(|a, b| (&a.1.key, a.0).cmp(&(&b.1.key, b.0)));
        let listed: String = uploads
            .iter()
            .map(|(id, upload)| {
                format!(
                    "<Upload><Key>{}</Key><UploadId>{id}</UploadId><Initiated>{}</Initiated></Upload>",
                    escape(&upload.key),
                    upload.initiated.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
                )
            })
            .collect();
        xml(format!(
            "<?xml version='1.0' encoding='UTF-8'?><ListMultipartUploadsResult><Bucket>{bucket}</Bucket>\
             <Prefix>{}</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>{listed}\
             </ListMultipartUploadsResult>",
            escape(prefix)
        ))
    }

    fn store(&self, bucket: &str, key: &str, data: Bytes, metadata: BTreeMap<String, String>) -> Object {
        let mut state = self.state.lock().unwrap();
        state.next_id += 1;
        let etag = format!("\"{}\"", hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(&data)[..16]));
        let object = Object { data, metadata, etag, generation: state.next_id, updated: jiff::Timestamp::now() };
        state.buckets.get_mut(bucket).expect("checked").insert(key.to_owned(), object.clone());
        object
    }

    fn put(&self, bucket: &str, key: &str, data: Bytes, metadata: BTreeMap<String, String>) -> Answer {
        let object = self.store(bucket, key, data, metadata);
        Response::builder()
            .header("etag", &object.etag)
            .header("x-goog-generation", object.generation.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    fn get(&self, bucket: &str, key: &str, parts: &http::request::Parts) -> Answer {
        let object = match self.state.lock().unwrap().buckets[bucket].get(key) {
            Some(object) => object.clone(),
            None => return error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist."),
        };
        let total = object.data.len();
        let range = parts.headers.get("range").and_then(|r| r.to_str().ok()).and_then(|r| r.strip_prefix("bytes="));
        let (status, start, end) = match range.and_then(|r| r.split_once('-')) {
            Some((start, end)) => {
                let start: usize = start.parse().unwrap_or(0);
                let end = end.parse::<usize>().map_or(total, |e| (e + 1).min(total));
                if start >= end {
                    return error(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "InvalidRange",
                        "The requested range cannot be satisfied.",
                    );
                }
                (StatusCode::PARTIAL_CONTENT, start, end)
            }
            None => (StatusCode::OK, 0, total),
        };
        let mut answer = Response::builder()
            .status(status)
            .header("content-length", (end - start).to_string())
            .header("etag", &object.etag)
            .header("last-modified", object.updated.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string())
            .header("x-goog-generation", object.generation.to_string())
            .header("content-type", "application/octet-stream");
        if status == StatusCode::PARTIAL_CONTENT {
            answer = answer.header("content-range", format!("bytes {start}-{}/{total}", end - 1));
        }
        for (name, value) in &object.metadata {
            answer = answer.header(format!("x-goog-meta-{name}"), value);
        }
        let body = if parts.method == Method::HEAD { Bytes::new() } else { object.data.slice(start..end) };
        answer.body(Full::new(body)).unwrap()
    }

    fn delete(&self, bucket: &str, key: &str) -> Answer {
        match self.state.lock().unwrap().buckets.get_mut(bucket).expect("checked").remove(key) {
            Some(_) => Response::builder().status(StatusCode::NO_CONTENT).body(Full::new(Bytes::new())).unwrap(),
            None => error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist."),
        }
    }

    fn initiate(&self, bucket: &str, key: &str, metadata: BTreeMap<String, String>) -> Answer {
        let mut state = self.state.lock().unwrap();
        state.next_id += 1;
        let id = format!("ABPnzm{:016x}", state.next_id);
        let upload = Upload {
            bucket: bucket.into(),
            key: key.into(),
            initiated: jiff::Timestamp::now(),
            metadata,
            parts: BTreeMap::new(),
        };
        state.uploads.insert(id.clone(), upload);
        xml(format!(
            "<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult><Bucket>{bucket}</Bucket>\
             <Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
            escape(key)
        ))
    }

    /// Whether the request names no upload, or one started at this bucket and key: GCS, like S3,
    /// knows an upload ID only at the object it was initiated for.
    fn upload_at(&self, query: &HashMap<String, String>, bucket: &str, key: &str) -> bool {
        let Some(id) = query.get("uploadId") else {
            return true;
        };
        let state = self.state.lock().unwrap();
        state.uploads.get(id).is_none_or(|upload| upload.bucket == bucket && upload.key == key)
    }

    fn put_part(&self, query: &HashMap<String, String>, data: Bytes) -> Answer {
        let number: u32 = match query.get("partNumber").and_then(|n| n.parse().ok()) {
            Some(n @ 1..=10000) => n,
            _ => return error(StatusCode::BAD_REQUEST, "InvalidArgument", "Invalid part number."),
        };
        if self.faults.part_fails(number) {
            return error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "Please try again.");
        }
        let mut state = self.state.lock().unwrap();
        let Some(upload) = state.uploads.get_mut(&query["uploadId"]) else {
            return no_such_upload();
        };
        let etag = format!("\"{}\"", hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(&data)[..16]));
        upload.parts.insert(number, (etag.clone(), data));
        Response::builder().header("etag", etag).body(Full::new(Bytes::new())).unwrap()
    }

    fn complete(&self, query: &HashMap<String, String>, body: &[u8]) -> Answer {
        let body = String::from_utf8_lossy(body);
        let listed: Vec<(u32, String)> = body
            .split("<Part>")
            .skip(1)
            .filter_map(|part| {
                let number = between(part, "<PartNumber>", "</PartNumber>")?.trim().parse().ok()?;
                Some((number, between(part, "<ETag>", "</ETag>")?.replace("&quot;", "\"")))
            })
            .collect();
        let upload = {
            let mut state = self.state.lock().unwrap();
            let Some(upload) = state.uploads.get(&query["uploadId"]) else {
                return no_such_upload();
            };
            if listed.is_empty() || listed.windows(2).any(|w| w[0].0 >= w[1].0) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidPartOrder",
                    "The list of parts was not in ascending order.",
                );
            }
            let mut data = Vec::new();
            for (i, (number, etag)) in listed.iter().enumerate() {
                match upload.parts.get(number) {
                    Some((stored, part)) if stored == etag => {
                        if i + 1 < listed.len() && part.len() < MIN_PART_SIZE {
                            return error(
                                StatusCode::BAD_REQUEST,
                                "EntityTooSmall",
                                "Your proposed upload is smaller than the minimum allowed object size.",
                            );
                        }
                        data.extend_from_slice(part);
                    }
                    _ => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "InvalidPart",
                            "One or more of the specified parts could not be found.",
                        );
                    }
                }
            }
            let upload = state.uploads.remove(&query["uploadId"]).expect("found above");
            (upload, data)
        };
        let (upload, data) = upload;
        let object = self.store(&upload.bucket, &upload.key, data.into(), upload.metadata.clone());
        Response::builder()
            .header("x-goog-generation", object.generation.to_string())
            .header("content-type", "application/xml")
            .body(Full::new(
                format!(
                    "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult><Bucket>{}</Bucket>\
                     <Key>{}</Key><ETag>{}</ETag></CompleteMultipartUploadResult>",
                    upload.bucket,
                    escape(&upload.key),
                    escape(&object.etag)
                )
                .into(),
            ))
            .unwrap()
    }

    fn abort(&self, query: &HashMap<String, String>) -> Answer {
        match self.state.lock().unwrap().uploads.remove(&query["uploadId"]) {
            Some(_) => Response::builder().status(StatusCode::NO_CONTENT).body(Full::new(Bytes::new())).unwrap(),
            None => no_such_upload(),
        }
    }
}

/// 128 random bits, for access tokens.
fn rand_u128() -> u128 {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("random bytes");
    u128::from_le_bytes(bytes)
}

fn no_such_upload() -> Answer {
    error(StatusCode::NOT_FOUND, "NoSuchUpload", "The requested upload was not found.")
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    Some(&text[start..start + text[start..].find(close)?])
}

fn last_key(contents: &str) -> String {
    contents.rsplit("<Key>").next().and_then(|k| k.split("</Key>").next()).map(unescape).unwrap_or_default()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"").replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&")
}
