//! A Google Cloud Storage server for tests: the XML API that object_store's GCS client speaks (object
//! PUT/GET/HEAD/DELETE, `list-type=2` listing, XML multipart uploads), in memory, plain HTTP on loopback.
//!
//! No published emulator implements GCS's XML multipart uploads (fake-gcs-server#852 is open, and
//! gcp-storage-emulator has only the JSON API), so the project keeps its own, as strict as GCS where
//! a client could tell:
//! - every request carries a bearer token; a service account's self-signed JWT (RS256) must verify
//!   against that account's public key, name it as issuer and not be expired
//!   (401 `AuthenticationRequired`);
//! - a missing bucket is 404 `NoSuchBucket`, a missing object 404 `NoSuchKey`, an unknown (completed,
//!   aborted) upload 404 `NoSuchUpload`, and so is an upload ID named at another bucket or key than it
//!   was initiated for;
//! - completing an upload checks each part's ETag and order and that every part but the last holds at
//!   least 5 MiB (`InvalidPart`, `InvalidPartOrder`, `EntityTooSmall`);
//! - `x-goog-meta-*` metadata is kept and returned, ranges are served as 206 with `Content-Range`.

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
    /// The trusted service account's key, as gcloud writes it.
    key_json: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A new RSA key: (PKCS#8 PEM, PKCS#1 public key DER).
fn rsa_key() -> anyhow::Result<(String, Vec<u8>)> {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::signature::KeyPair as _;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)?;
    let der = pair.as_der()?;
    let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
    Ok((pem, pair.public_key().as_ref().to_vec()))
}

/// A service account key file for `CLIENT_EMAIL` with `pem` as its private key.
fn key_json(pem: &str) -> String {
    serde_json::json!({
        "type": "service_account",
        "project_id": "teb-test",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    })
    .to_string()
}

impl GcsServer {
    pub async fn start() -> anyhow::Result<Self> {
        let (pem, public_key) = rsa_key()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::default()));
        let faults = Arc::new(GcsFaults::default());
        let service = Arc::new(Service { state: state.clone(), faults: faults.clone(), public_key });
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    let serve = hyper::service::service_fn(move |request| {
                        let service = service.clone();
                        async move { Ok::<_, std::convert::Infallible>(service.handle(request).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(stream), serve).await;
                });
            }
        });
        Ok(GcsServer { endpoint, faults, state, key_json: key_json(&pem), task })
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
        Ok(key_json(&rsa_key()?.0))
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
    public_key: Vec<u8>,
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

impl Service {
    async fn handle(&self, request: Request<hyper::body::Incoming>) -> Answer {
        if let Err(message) = self.authenticate(request.headers()) {
            return error(StatusCode::UNAUTHORIZED, "AuthenticationRequired", &message);
        }
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
        match (&parts.method, key.is_empty()) {
            (&Method::GET, true) => self.list(&bucket, &query),
            (&Method::POST, false) if query.contains_key("uploads") => self.initiate(&bucket, &key, metadata),
            (&Method::PUT | &Method::POST | &Method::DELETE, false) if !self.upload_at(&query, &bucket, &key) => {
                no_such_upload()
            }
            (&Method::PUT, false) if query.contains_key("uploadId") => self.put_part(&query, body),
            (&Method::POST, false) if query.contains_key("uploadId") => self.complete(&query, &body),
            (&Method::DELETE, false) if query.contains_key("uploadId") => self.abort(&query),
            (&Method::PUT, false) => self.put(&bucket, &key, body, metadata),
            (&Method::GET | &Method::HEAD, false) => self.get(&bucket, &key, &parts),
            (&Method::DELETE, false) => self.delete(&bucket, &key),
            _ => error(StatusCode::NOT_IMPLEMENTED, "NotImplemented", "not served by the test server"),
        }
    }

    /// The bearer token: a JWT signed with the trusted key, for the trusted account, not expired.
    fn authenticate(&self, headers: &http::HeaderMap) -> Result<(), String> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .filter(|t| !t.is_empty())
            .ok_or("Anonymous caller does not have storage.objects access.")?;
        let invalid = || "Invalid Credentials".to_owned();
        let (message, signature) = token.rsplit_once('.').ok_or_else(invalid)?;
        let signature = b64.decode(signature).map_err(|_| invalid())?;
        let key = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            &self.public_key,
        );
        key.verify(message.as_bytes(), &signature).map_err(|_| invalid())?;
        let claims = message.split_once('.').map(|(_, c)| c).ok_or_else(invalid)?;
        let claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(claims).map_err(|_| invalid())?).map_err(|_| invalid())?;
        let expired = claims["exp"].as_i64().is_none_or(|exp| exp < jiff::Timestamp::now().as_second());
        if claims["iss"] != CLIENT_EMAIL || expired {
            return Err(invalid());
        }
        Ok(())
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
        let upload = Upload { bucket: bucket.into(), key: key.into(), metadata, parts: BTreeMap::new() };
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
