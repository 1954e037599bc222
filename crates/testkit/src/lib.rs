//! The proving ground: real components for tests, the quickstart demo and benchmarks.
//!
//! - [`kube::KubeEnv`]: etcd + kube-apiserver (RBAC on) on loopback, an admin client and a client
//!   limited to the operator's own RBAC manifests.
//! - [`s3::S3Server`]: an S3 server (s3s) that checks SigV4 signatures, does multipart uploads, serves
//!   plain HTTP or TLS, and injects faults.
//! - [`azure::Azurite`]: Azurite's blob service (npm), checking SharedKey and SAS signatures.
//! - [`gcs::GcsServer`]: GCS's XML API with multipart uploads, checking service account JWTs.
//! - [`emulator::TalosEmulator`]: the Talos machine API over mTLS with Talos's role rules, backed by a
//!   real etcd cluster, with fault injection.
//! - [`fixtures`]: OS CA, secrets bundle, talosconfig files and TalosControlPlane objects in the shapes
//!   talosctl and the upstream operator write.
//! - [`ground`]: those wired into the scenarios every test file shares.
//!
//! Every server listens on 127.0.0.1 only.

pub mod assets;
pub mod azure;
pub mod compat;
pub mod emulator;
pub mod etcd;
pub mod fixtures;
pub mod gcs;
pub mod ground;
pub mod kube;
pub mod ping_policy;
pub mod process;
pub mod s3;
pub mod spec;

/// etcd's v3 API, trimmed to what the emulator and tests use.
pub mod etcd_proto {
    tonic::include_proto!("etcdserverpb");
}

/// The objects a backup's status names, sorted: its snapshot, recovery kit, content report and
/// manifest. A bucket holds exactly these of a backup, nothing more.
pub fn backup_objects(status: &teb_api::TalosEtcdBackupStatus) -> Vec<String> {
    let mut keys: Vec<String> =
        [&status.filename, &status.state_filename, &status.report_filename, &status.manifest_filename]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
    keys.sort();
    keys
}

/// The snapshots among a bucket's `objects` (key, size), each stored with its kit and content report
/// beside it.
pub fn snapshots(objects: &[(String, u64)]) -> Vec<(String, u64)> {
    objects.iter().filter(|(key, _)| key.contains("/etcd-snapshot-")).cloned().collect()
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for test servers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("loopback has free ports")
}
