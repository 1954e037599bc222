//! Azurite, Microsoft's Azure Storage emulator (npm `azurite`), as the Azure Blob Storage server of
//! the tests: its blob service on loopback with an account of its own whose SharedKey and SAS
//! signatures it checks (not loose mode), block blobs with staged and committed blocks, container
//! and blob names checked as Azure checks them. Telemetry off.

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use object_store::azure::{AzureAccessKey, AzureAuthorizer, AzureCredential};
use teb_pipeline::{AzureCredentials, AzureLocation, Storage, StorageLocation};

use crate::process::ChildProcess;

/// The emulated storage account and its key (base64, as the portal shows keys).
pub const ACCOUNT: &str = "tebbackups";
pub const ACCOUNT_KEY: &str =
    "dGFsb3MtZXRjZC1iYWNrdXAgdGVzdCBhY2NvdW50IGtleTsgbm90IGEgc2VjcmV0OiAwMTIzNDU2Nzg5YWJjZA==";
/// The service version the helper requests of Azurite speak.
const VERSION: &str = "2021-08-06";

pub struct Azurite {
    /// The blob service URL of the account: `http://127.0.0.1:<port>/tebbackups`.
    pub endpoint: String,
    port: u16,
    _process: ChildProcess,
    _dir: tempfile::TempDir,
}

impl Azurite {
    pub async fn start() -> anyhow::Result<Self> {
        let binary = crate::assets::azurite_blob()?;
        let dir = tempfile::tempdir()?;
        let port = crate::free_port();
        let mut command = Command::new(binary);
        command
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path().join("data"))
            .args(["--disableTelemetry", "--skipApiVersionCheck", "--disableProductStyleUrl", "--silent"])
            .env("AZURITE_ACCOUNTS", format!("{ACCOUNT}:{ACCOUNT_KEY}"));
        let mut process = ChildProcess::spawn("azurite", command, &dir.path().join("azurite.log"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            process.check_running()?;
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "azurite did not listen on {port} within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Azurite { endpoint: format!("http://127.0.0.1:{port}/{ACCOUNT}"), port, _process: process, _dir: dir })
    }

    pub async fn create_container(&self, name: &str) -> anyhow::Result<()> {
        let (status, body) = self.request("PUT", &format!("/{ACCOUNT}/{name}?restype=container")).await?;
        anyhow::ensure!(status == 201, "creating container {name}: {status} {body}");
        Ok(())
    }

    /// The location of `container` with the account key, as a spec's Secret gives it.
    pub fn location(&self, container: &str) -> AzureLocation {
        AzureLocation {
            account: ACCOUNT.into(),
            container: container.into(),
            endpoint: Some(self.endpoint.clone()),
            credentials: Some(AzureCredentials::AccountKey(ACCOUNT_KEY.into())),
        }
    }

    /// A storage handle on `container`, to look at what a test stored.
    pub fn storage(&self, container: &str) -> anyhow::Result<Storage> {
        Ok(Storage::new(&StorageLocation::Azure(self.location(container)), Duration::from_secs(30))?)
    }

    /// Committed blobs, with their sizes.
    pub async fn blobs(&self, container: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let listed = self.storage(container)?.list("").await?;
        Ok(listed.into_iter().map(|(key, size, _)| (key, size)).collect())
    }

    /// Blobs that have staged blocks and were never committed (what an unfinished upload leaves).
    pub async fn uncommitted_blobs(&self, container: &str) -> anyhow::Result<Vec<String>> {
        let path = format!("/{ACCOUNT}/{container}?restype=container&comp=list&include=uncommittedblobs");
        let (status, body) = self.request("GET", &path).await?;
        anyhow::ensure!(status == 200, "listing {container}: {status} {body}");
        let committed: Vec<String> = self.blobs(container).await?.into_iter().map(|(k, _)| k).collect();
        let names = body.split("<Name>").skip(1).filter_map(|s| s.split("</Name>").next());
        Ok(names.map(str::to_owned).filter(|n| !committed.contains(n)).collect())
    }

    /// A service SAS for `container` with read, add, create, write, delete and list permissions,
    /// valid until `expiry` (in the past for an expired one), signed with the account key.
    pub fn container_sas(&self, container: &str, expiry: jiff::Timestamp) -> String {
        self.container_sas_with(container, expiry, "racwdl")
    }

    /// [`Azurite::container_sas`] with `permissions` (`rl`: read-only).
    pub fn container_sas_with(&self, container: &str, expiry: jiff::Timestamp, permissions: &str) -> String {
        use hmac::Mac as _;
        let start = (expiry - jiff::SignedDuration::from_hours(2)).strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let expiry = expiry.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let (version, resource) = ("2020-12-06", "c");
        let canonical = format!("/blob/{ACCOUNT}/{container}");
        // Service SAS string-to-sign of version 2020-12-06 and later: 16 lines.
        let fields = [
            permissions,
            &start,
            &expiry,
            &canonical,
            "",
            "",
            "https,http",
            version,
            resource,
            "",
            "",
            "",
            "",
            "",
            "",
            "",
        ];
        let key = base64::engine::general_purpose::STANDARD.decode(ACCOUNT_KEY).expect("the key is base64");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key");
        mac.update(fields.join("\n").as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let pairs = [
            ("sv", version),
            ("st", &start),
            ("se", &expiry),
            ("sr", resource),
            ("sp", permissions),
            ("spr", "https,http"),
            ("sig", &signature),
        ];
        form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
    }

    /// One SharedKey-signed request with no body; the status and body of the answer.
    async fn request(&self, method: &str, path_and_query: &str) -> anyhow::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let uri = format!("http://127.0.0.1:{}{path_and_query}", self.port);
        let mut request: object_store::client::HttpRequest =
            http::Request::builder().method(method).uri(&uri).body(bytes::Bytes::new().into())?;
        let credential = AzureCredential::AccessKey(AzureAccessKey::try_new(ACCOUNT_KEY)?);
        request.headers_mut().insert("x-ms-version", http::HeaderValue::from_static(VERSION));
        AzureAuthorizer::new(&credential, ACCOUNT).try_authorize(&mut request)?;
        let mut head = format!("{method} {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n", self.port);
        for (name, value) in request.headers() {
            head.push_str(&format!("{name}: {}\r\n", value.to_str()?));
        }
        head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream.write_all(head.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body))
    }
}
