//! The `snapshot` command: one backup outside Kubernetes, from a talosconfig into S3.

use std::collections::BTreeMap;
use std::process::Command;

use object_store::ObjectStoreExt as _;
use teb_testkit::emulator::{BootStage, EmulatorOptions};
use teb_testkit::ground::CliGround;
use teb_testkit::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use teb_testkit::snapshots;

/// `talos-etcd-backup <subcommand> --bucket backups --endpoint <the S3 server>`, its keys in the
/// environment.
fn cli(subcommand: &str, s3: &S3Server) -> Command {
    cli_at(subcommand, &s3.endpoint, "backups")
}

/// [`cli`] against `bucket` of the S3 server at `endpoint`.
fn cli_at(subcommand: &str, endpoint: &str, bucket: &str) -> Command {
    let mut command = bare(subcommand);
    command
        .args(["--bucket", bucket, "--endpoint", endpoint])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    command
}

/// `talos-etcd-backup <subcommand>`, with no storage settings from this environment.
fn bare(subcommand: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_talos-etcd-backup"));
    command.arg(subcommand).env_remove("AGE_IDENTITY_FILE").env_remove("RUST_LOG");
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET", "S3_ENDPOINT"] {
        command.env_remove(name);
    }
    for name in ["AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN"] {
        command.env_remove(name);
    }
    for name in ["GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST", "GCE_METADATA_ROOT", "GCE_METADATA_IP"] {
        command.env_remove(name);
    }
    command
}

/// The `snapshot` command of cluster `demo` with `talosconfig`.
fn command(talosconfig: &std::path::Path, s3: &S3Server) -> Command {
    let mut command = cli("snapshot", s3);
    command.arg("--talosconfig").arg(talosconfig).args(["--cluster", "demo"]);
    command
}

/// Runs `command` (off the async runtime's threads): whether it succeeded, its JSON summary (null
/// when it printed none) and its standard error.
fn outcome(command: &mut Command) -> (bool, serde_json::Value, String) {
    let output = tokio::task::block_in_place(|| command.output().unwrap());
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    (output.status.success(), summary, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// A successful `snapshot` with `talosconfig`: its summary and key.
fn snapshot_with(talosconfig: &std::path::Path, s3: &S3Server) -> (serde_json::Value, String) {
    let (ok, summary, stderr) = outcome(&mut command(talosconfig, s3));
    assert!(ok, "{stderr}");
    let key = summary["key"].as_str().unwrap().to_owned();
    (summary, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_command_uploads_a_verified_snapshot() {
    let ground = CliGround::start_with(EmulatorOptions::default(), false).await;
    ground.emulator.etcd().put(b"/cli/key", b"value").await.unwrap();
    let (s3, talosconfig) = (&ground.s3, ground.talosconfig("talosconfig", "os:etcd:backup"));

    let output = tokio::task::block_in_place(|| command(&talosconfig, s3).output().unwrap());
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let key = summary["key"].as_str().unwrap();
    assert!(key.starts_with("talos-operator-etcd-backups/demo/etcd-snapshot-"), "{key}");
    let objects = s3.objects("backups").await.unwrap();
    assert_eq!(snapshots(&objects), vec![(key.to_owned(), summary["size"].as_u64().unwrap())]);
    // Its content report beside it, counted from the backup's own stream, and its manifest.
    let report = summary["report"].as_str().unwrap();
    let manifest_key = summary["manifest"].as_str().unwrap();
    assert_eq!(objects.len(), 3);
    assert!(objects.iter().any(|(k, _)| k == report) && objects.iter().any(|(k, _)| k == manifest_key));
    assert!(summary["contents"]["keys"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(manifest_key, key.replace("/etcd-snapshot-", "/manifest-").replace(".db", ".json"));
    let (bytes, _) = s3.get("backups", manifest_key).await.unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let etcd_version = ground.emulator.etcd().members[0].status().await.unwrap().version;
    let expected = serde_json::json!({
        "format": "talos-etcd-backup-manifest", "formatVersion": 1,
        "tool": format!("talos-etcd-backup {}", env!("CARGO_PKG_VERSION")),
        "controlPlane": "demo", "etcdVersion": etcd_version, "memberId": manifest["memberId"],
        "node": summary["node"], "revision": summary["contents"]["revision"], "dbSize": summary["contents"]["db_size"],
        "snapshot": {"key": key, "sha256": summary["sha256"], "size": summary["size"],
                     "storedSize": summary["stored_size"], "compression": "none"},
        "report": report, "time": manifest["time"],
    });
    assert_eq!(manifest, expected);
    assert!(manifest["memberId"].as_str().unwrap().len() > 4, "{manifest}");
    assert!(etcd_version.starts_with("3.5."), "{etcd_version}");
    // `list` and `verify` show it; a manifest that records another snapshot fails verification.
    let (ok, listed, stderr) = outcome(cli("list", s3).args(["--output", "json"]));
    assert!(ok, "{stderr}");
    assert_eq!(listed[0]["manifest"], manifest);
    let (ok, verified, stderr) = outcome(cli("verify", s3).args(["--key", key]));
    assert!(ok, "{stderr}");
    assert_eq!(verified["manifest"], manifest);
    let mut forged = manifest.clone();
    forged["snapshot"]["sha256"] = "0".repeat(64).into();
    let forged = serde_json::to_vec(&forged).unwrap();
    s3.client("backups").unwrap().put(&object_store::path::Path::from(manifest_key), forged.into()).await.unwrap();
    let (ok, verified, _) = outcome(cli("verify", s3).args(["--key", key]));
    let error = verified["error"].as_str().unwrap_or_default();
    assert!(!ok && error.contains("does not hold: it records SHA-256 0000"), "{verified}");
    // `restore` reads it too: it refuses a snapshot its manifest does not describe, and prints the
    // manifest in its plan; a manifest it cannot read does not stand in its way.
    let admin = ground.talosconfig("admin.talosconfig", "os:admin");
    let restore = || outcome(cli("restore", s3).arg("--talosconfig").arg(&admin).args(["--key", key, "--dry-run"]));
    let (ok, _, stderr) = restore();
    assert!(!ok && stderr.contains("is not the backup its manifest describes: it records SHA-256 0000"), "{stderr}");
    let manifest_path = object_store::path::Path::from(manifest_key);
    s3.client("backups").unwrap().put(&manifest_path, serde_json::to_vec(&manifest).unwrap().into()).await.unwrap();
    let (ok, plan, stderr) = restore();
    assert!(ok && plan["manifest"] == manifest, "{stderr}");
    s3.client("backups").unwrap().put(&manifest_path, "not a manifest".into()).await.unwrap();
    let (ok, plan, stderr) = restore();
    assert!(ok && plan["manifest"].is_null() && plan["dry_run"] == true, "{stderr}");
    assert!(summary["peak_rss_bytes"].as_u64().unwrap() > 0);
    // No secret in what the command printed.
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(!printed.contains(SECRET_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_command_explains_bad_input() {
    let s3 = S3Server::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-talosconfig");
    let output = command(&missing, &s3).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reading talosconfig") && stderr.contains("no-such-talosconfig"), "{stderr}");

    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "context: x\ncontexts: {}\n").unwrap();
    let output = command(&garbage, &s3).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("context \"x\" not found"), "{stderr}");

    let output = command(&garbage, &s3).args(["--idle-timeout", "soon"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not a duration like 90s"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_timeout_bounds_a_slow_backup_and_leaves_nothing() {
    let ground = CliGround::start().await;
    // About 400 KiB of data: some 25 s at 16 KiB/s, far past the 2 s limit.
    ground.fill("/slow", 100, 4096).await;
    ground.emulator.faults.limit_bandwidth(16 * 1024);
    let (s3, talosconfig) = (&ground.s3, ground.talosconfig("talosconfig", "os:etcd:backup"));

    let output =
        tokio::task::block_in_place(|| command(&talosconfig, s3).args(["--total-timeout", "2s"]).output().unwrap());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("did not finish within 2s"), "{stderr}");
    assert!(s3.objects("backups").await.unwrap().is_empty());
    assert!(s3.unfinished_uploads().is_empty(), "{:?}", s3.unfinished_uploads());
}

/// SIGINT (Ctrl-C) or SIGTERM mid-upload: the command aborts its multipart upload before it exits,
/// saying so; the bucket holds nothing, whole or half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_snapshot_command_aborts_its_upload() {
    let ground = CliGround::start().await;
    ground.fill("/slow", 100, 4096).await;
    ground.emulator.faults.limit_bandwidth(16 * 1024);
    let (s3, talosconfig) = (&ground.s3, ground.talosconfig("talosconfig", "os:etcd:backup"));
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let child = command(&talosconfig, s3).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let started = std::time::Instant::now();
        while s3.unfinished_uploads().is_empty() {
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "{name}: no upload started");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // SAFETY: kill(2) on the child's own PID, which is alive until waited for.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        let output = tokio::task::block_in_place(|| child.wait_with_output().unwrap());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}: {stderr}");
        assert!(stderr.contains(&format!("interrupted by {name}; the multipart upload was aborted")), "{stderr}");
        assert!(s3.unfinished_uploads().is_empty(), "{name}: {:?}", s3.unfinished_uploads());
        assert!(s3.objects("backups").await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_command_uses_web_identity_when_no_keys_are_given() {
    use teb_testkit::s3::{WEB_IDENTITY_ROLE, WEB_IDENTITY_TOKEN};
    // The S3 server over TLS also answers STS; it accepts the temporary keys STS hands out, checking
    // their signatures, so a stored object proves the exchange happened and its keys were used.
    let ground =
        CliGround::start_with(EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() }, true).await;
    let (s3, dir) = (&ground.s3, &ground.dir);
    let talosconfig = ground.talosconfig("talosconfig", "os:etcd:backup");
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, s3.ca_pem.as_deref().unwrap()).unwrap();
    let run = |token: &str| {
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_talos-etcd-backup"));
        command
            .arg("snapshot")
            .arg("--talosconfig")
            .arg(&talosconfig)
            .args(["--bucket", "backups", "--endpoint", &s3.endpoint, "--cluster", "demo", "--ca-file"])
            .arg(&ca)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("RUST_LOG")
            .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
            .env("AWS_ROLE_ARN", WEB_IDENTITY_ROLE)
            .env("AWS_ENDPOINT_URL_STS", &s3.endpoint)
            // Never the real instance metadata address: only loopback here.
            .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:1");
        command.output().unwrap()
    };
    let output = tokio::task::block_in_place(|| run(WEB_IDENTITY_TOKEN));
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let objects = snapshots(&s3.objects("backups").await.unwrap());
    assert_eq!(objects, vec![(summary["key"].as_str().unwrap().to_owned(), summary["size"].as_u64().unwrap())]);

    // A token STS refuses: a clear failure, nothing stored.
    let output = tokio::task::block_in_place(|| run("some-other-token"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AssumeRoleWithWebIdentity"), "{stderr}");
    assert!(!stderr.contains("some-other-token"), "the token must not be printed: {stderr}");
    assert_eq!(snapshots(&s3.objects("backups").await.unwrap()).len(), 1);
    assert!(s3.unfinished_uploads().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_command_shows_what_the_bucket_holds() {
    let ground = CliGround::start().await;
    let (s3, talosconfig) = (&ground.s3, ground.talosconfig("talosconfig", "os:etcd:backup"));
    let mut summaries = Vec::new();
    for (cluster, key) in [("demo", "a"), ("demo", "b"), ("other", "c")] {
        let key = format!("talos-operator-etcd-backups/{cluster}/etcd-snapshot-{key}.db");
        let output = tokio::task::block_in_place(|| command(&talosconfig, s3).args(["--key", &key]).output().unwrap());
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        summaries.push(serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap());
    }
    // Something else under the prefix: listed, with nothing claimed about it.
    let foreign = "talos-operator-etcd-backups/demo/notes.txt";
    s3.client("backups").unwrap().put(&object_store::path::Path::from(foreign), "hello".into()).await.unwrap();

    let list = |extra: &[&str]| {
        let output = tokio::task::block_in_place(|| cli("list", s3).args(extra).output().unwrap());
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let json: Vec<serde_json::Value> = serde_json::from_str(&list(&["--cluster", "demo", "--output", "json"])).unwrap();
    assert_eq!(json.len(), 3, "{json:?}");
    for summary in &summaries[..2] {
        let entry = json.iter().find(|e| e["key"] == summary["key"]).expect("each demo backup is listed");
        assert_eq!(entry["size"], summary["size"]);
        assert_eq!(entry["sha256"], summary["sha256"]);
        assert_eq!(entry["node"], summary["node"]);
        assert_eq!(entry["cluster"], "demo");
    }
    let other = json.iter().find(|e| e["key"] == foreign).unwrap();
    assert!(other["sha256"].is_null() && other["node"].is_null() && other["size"] == 5, "{other}");

    let table = list(&[]);
    assert!(table.starts_with("TIME"), "{table}");
    assert_eq!(table.lines().count(), 1 + 4, "every backup of every cluster: {table}");
    let short_sha = &summaries[2]["sha256"].as_str().unwrap()[..12];
    assert!(table.lines().any(|l| l.contains(short_sha) && l.ends_with("etcd-snapshot-c.db")), "{table}");
    // From each backup's manifest: etcd's version and the member that served the snapshot.
    let manifest = &json.iter().find(|e| e["key"] == summaries[0]["key"]).unwrap()["manifest"];
    let (etcd, member) = (manifest["etcdVersion"].as_str().unwrap(), manifest["memberId"].as_str().unwrap());
    let line = table.lines().find(|l| l.ends_with("etcd-snapshot-a.db")).unwrap();
    assert!(line.contains(&format!(" {etcd} ")) && line.contains(&format!(" {member} ")), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_command_passes_real_snapshots_and_catches_damage() {
    use sha2::Digest as _;
    let ground = CliGround::start().await;
    let (emulator, s3) = (&ground.emulator, &ground.s3);
    for i in 0..300 {
        emulator.etcd().put(format!("/registry/secrets/ns/s-{i}").as_bytes(), &[b'v'; 2048]).await.unwrap();
    }
    let talosconfig = ground.talosconfig("talosconfig", "os:etcd:backup");
    let (snapshot, key) = snapshot_with(&talosconfig, s3);
    let verify = |extra: &[&str]| outcome(cli("verify", s3).args(extra));
    // A real etcd snapshot passes: its trailer, meta pages, size and page headers.
    let (ok, summary, stderr) = verify(&["--key", &key]);
    assert!(ok, "{summary} {stderr}");
    assert_eq!(summary["result"], "pass");
    assert_eq!(summary["sha256"], snapshot["sha256"]);
    assert_eq!(summary["size"], snapshot["size"]);
    let (page_size, pages) = (summary["page_size"].as_u64().unwrap(), summary["pages"].as_u64().unwrap());
    assert_eq!(page_size * pages + 32, summary["size"].as_u64().unwrap(), "{summary}");
    assert!(summary["pages_checked"].as_u64().unwrap() > 10, "{summary}");
    // What is inside: the 300 Secrets put above, read from the stored object in place.
    let contents = &summary["contents"];
    assert_eq!(contents["resources"]["secrets"], 300, "{summary}");
    assert!(contents["revision"].as_i64().unwrap() >= 300 && contents["keys"].as_u64().unwrap() >= 300, "{summary}");
    let (ok, latest, _) = verify(&["--latest", "--cluster", "demo"]);
    assert!(ok && latest["key"] == key.as_str(), "{latest}");
    // One by one: `objects` lists the 300 Secrets, name by name, sizes and revisions, never values.
    let listed = tokio::task::block_in_place(|| {
        cli("objects", s3).args(["--key", &key, "--resource", "secrets", "--output", "json"]).output().unwrap()
    });
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(listed.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut expected: Vec<String> = (0..300).map(|i| format!("s-{i}")).collect();
    expected.sort();
    let names: Vec<&str> = lines.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, expected);
    assert!(lines.iter().all(|l| l["namespace"] == "ns" && l["size"] == 2048 && l.get("value").is_none()));

    // Damage: a flipped byte (the trailer no longer matches), and a broken page header under a
    // recomputed trailer (only the structure check sees it).
    let (bytes, _) = s3.get("backups", &key).await.unwrap();
    let store = s3.client("backups").unwrap();
    let mut flipped = bytes.to_vec();
    flipped[5000] ^= 0x01;
    let flipped_key = "talos-operator-etcd-backups/demo/etcd-snapshot-flipped.db";
    store.put(&object_store::path::Path::from(flipped_key), flipped.into()).await.unwrap();
    let (ok, summary, stderr) = verify(&["--key", flipped_key]);
    assert!(!ok && summary["result"] == "fail", "{summary}");
    assert!(stderr.contains("snapshot is corrupt: SHA-256 of the database is"), "{stderr}");
    let mut db = bytes[..bytes.len() - 32].to_vec();
    db[16] ^= 0xFF; // the first meta page's magic
    let trailer = sha2::Sha256::digest(&db);
    db.extend_from_slice(&trailer);
    let rehashed_key = "talos-operator-etcd-backups/demo/etcd-snapshot-rehashed.db";
    store.put(&object_store::path::Path::from(rehashed_key), db.into()).await.unwrap();
    let (ok, summary, stderr) = verify(&["--key", rehashed_key]);
    assert!(!ok, "{summary}");
    assert!(
        summary["error"].as_str().unwrap().contains("not a sound etcd (bbolt) database: meta page 0 has magic"),
        "{summary}"
    );
    assert!(stderr.contains(rehashed_key));
    let (ok, summary, _) = verify(&["--key", "talos-operator-etcd-backups/demo/missing.db"]);
    assert!(!ok && summary["error"].as_str().unwrap().contains("GetObject"), "{summary}");
    let (ok, _, stderr) = verify(&[]);
    assert!(!ok && stderr.contains("--key"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_command_recovers_a_wiped_etcd_and_refuses_a_running_one_or_a_damaged_backup() {
    use sha2::Digest as _;
    let ground = CliGround::start().await;
    let (emulator, s3) = (&ground.emulator, &ground.s3);
    for i in 0..200 {
        emulator.etcd().put(format!("/registry/configmaps/ns/before-{i}").as_bytes(), &[b'b'; 1024]).await.unwrap();
    }
    let backup_config = ground.talosconfig("backup.talosconfig", "os:etcd:backup");
    let admin_config = ground.talosconfig("admin.talosconfig", "os:admin");
    let (snapshot, key) = snapshot_with(&backup_config, s3);
    emulator.etcd().put(b"/registry/configmaps/ns/after", b"a").await.unwrap();

    let restore = |talosconfig: &std::path::Path, extra: &[&str]| {
        outcome(cli("restore", s3).arg("--talosconfig").arg(talosconfig).args(["--wait", "60s"]).args(extra))
    };

    // Dry run: the plan, and nothing changes.
    let (ok, plan, stderr) = restore(&admin_config, &["--key", &key, "--dry-run"]);
    assert!(ok, "{stderr}");
    assert_eq!((plan["dry_run"].as_bool(), plan["etcd_before"]["running"].as_bool()), (Some(true), Some(true)));
    assert_eq!((&plan["size"], &plan["sha256"]), (&snapshot["size"], &snapshot["sha256"]));
    assert!(plan["would"].as_str().unwrap().starts_with("refuse"), "{plan}");

    // A running etcd is never restored over.
    let (ok, _, stderr) = restore(&admin_config, &["--key", &key]);
    assert!(
        !ok && stderr.contains("is running") && stderr.contains("restoring over a live etcd is refused"),
        "{stderr}"
    );
    assert!(!emulator.has_recovery_snapshot(), "nothing may be uploaded to a running node");

    // Without os:admin: refused, saying which role is needed.
    emulator.wipe_etcd();
    let (ok, _, stderr) = restore(&backup_config, &["--key", &key]);
    assert!(!ok && stderr.contains("os:admin"), "{stderr}");

    // A backup damaged under a matching trailer: caught on the way, the upload cancelled, no bootstrap.
    let (bytes, _) = s3.get("backups", &key).await.unwrap();
    let mut db = bytes[..bytes.len() - 32].to_vec();
    db[4096 + 16] ^= 0xFF; // the second meta page's magic
    let trailer = sha2::Sha256::digest(&db);
    db.extend_from_slice(&trailer);
    let damaged = "talos-operator-etcd-backups/demo/etcd-snapshot-damaged.db";
    s3.client("backups").unwrap().put(&object_store::path::Path::from(damaged), db.into()).await.unwrap();
    let (ok, _, stderr) = restore(&admin_config, &["--key", damaged]);
    assert!(!ok && stderr.contains("not a sound etcd (bbolt) database"), "{stderr}");
    assert!(!emulator.has_recovery_snapshot(), "a cancelled upload leaves nothing on the node");
    assert!(emulator.with_restored(|etcd| etcd.is_none()).await, "nothing may be bootstrapped");

    // The wiped etcd waits to be bootstrapped: the backup is restored, with the keys it held.
    let (ok, plan, stderr) = restore(&admin_config, &["--key", &key, "--dry-run"]);
    assert!(ok && plan["etcd_before"]["running"] == false, "{plan} {stderr}");
    assert_eq!(
        (&plan["etcd_before"]["etcd"], &plan["etcd_before"]["data"]),
        (&"not running".into(), &serde_json::json!([]))
    );
    let (ok, _, stderr) = restore(&admin_config, &["--latest", "--cluster", "demo"]);
    assert!(!ok && stderr.contains("not a sound etcd"), "--latest takes the newest object, the damaged one: {stderr}");
    let (ok, restored, stderr) = restore(&admin_config, &["--key", &key]);
    assert!(ok, "{stderr}");
    assert_eq!(restored["restored"], true);
    assert_eq!(restored["sha256"], snapshot["sha256"]);
    let before = emulator.restored_get("/registry/configmaps/ns/before-123").await;
    let after = emulator.restored_get("/registry/configmaps/ns/after").await;
    assert_eq!(before.map(|v| v.len()), Some(1024), "the backup's keys are back");
    assert_eq!(after, None, "keys written after the backup are not");
    // etcd runs again: a second restore is refused.
    let (ok, _, stderr) = restore(&admin_config, &["--key", &key]);
    assert!(!ok && stderr.contains("is running"), "{stderr}");
}

/// A disaster as it happens: two members gone with their machines, the third crash-looping with its
/// data, the talosconfig's endpoint a VIP that went down with etcd. The restore refuses while another
/// member runs and while the target has data, connects through a node address, and the wiped nodes
/// that come back join the recovered member; a recovery that fails after Bootstrap is reported at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disaster_drill_recovers_through_a_node_address() {
    let ground =
        CliGround::start_with(EmulatorOptions { control_planes: 3, workers: 1, ..Default::default() }, false).await;
    let (emulator, s3) = (&ground.emulator, &ground.s3);
    for i in 0..100 {
        emulator.etcd().put(format!("/registry/configmaps/ns/before-{i}").as_bytes(), &[b'b'; 1024]).await.unwrap();
    }
    let backup_config = ground.talosconfig("backup.talosconfig", "os:etcd:backup");
    let (snapshot, key) = snapshot_with(&backup_config, s3);
    emulator.etcd().put(b"/registry/configmaps/ns/after", b"a").await.unwrap();
    // The talosconfig names a VIP (nothing answers there once etcd is lost); the nodes by address.
    let nodes: Vec<String> = emulator.nodes()[..3].iter().map(|n| n.address.clone()).collect();
    let vip = emulator.ca.talosconfig("emulator", &["127.0.0.9:1".to_owned()], &nodes, &["os:admin"]).unwrap();
    let vip_config = ground.dir.path().join("vip.talosconfig");
    std::fs::write(&vip_config, vip).unwrap();
    let restore = |extra: &[&str]| {
        outcome(
            cli("restore", s3).arg("--talosconfig").arg(&vip_config).args(["--key", &key, "--wait", "60s"]).args(extra),
        )
    };
    let through_node = ["--endpoints", emulator.endpoint.as_str()];

    // etcd crash-loops on the first node while the two others still run: recovering beside them would
    // make two clusters. The caller naming only the target changes nothing: the backup's own members
    // bucket names the other two.
    emulator.crash_etcd(0);
    for nodes in [&[][..], &["--nodes", "127.0.10.1"][..]] {
        let (ok, _, stderr) = restore(&[&through_node[..], nodes].concat());
        assert!(
            !ok && stderr.contains("etcd still runs on 127.0.10.2 (member") && stderr.contains("127.0.10.3"),
            "{stderr}"
        );
    }
    assert!(!emulator.has_recovery_snapshot(), "nothing may be uploaded");

    // Their machines are gone. The VIP is down: the error says to name a node address.
    emulator.set_down(1, true);
    emulator.set_down(2, true);
    let (ok, _, stderr) = restore(&[]);
    assert!(!ok && stderr.contains("Talos VIP") && stderr.contains("--endpoints"), "{stderr}");

    // Through a node address: the dry run shows every node; the crashed member's data refuses the restore.
    let (ok, plan, stderr) = restore(&[&through_node[..], &["--dry-run"]].concat());
    assert!(ok, "{stderr}");
    let states: Vec<(&str, &str)> = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap(), n["etcd"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("127.0.10.1", "not running"), ("127.0.10.2", "unreachable"), ("127.0.10.3", "unreachable")]);
    let mut members: Vec<&str> =
        plan["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    members.sort();
    assert_eq!(members, ["cp-1", "cp-2", "cp-3"], "{plan}");
    assert_eq!(plan["etcd_before"]["data"], serde_json::json!(["member"]));
    let wipe = "talosctl -n 127.0.10.1 reset --system-labels-to-wipe EPHEMERAL --reboot --graceful=false";
    assert!(plan["would"].as_str().unwrap().contains(wipe), "{plan}");
    let (ok, _, stderr) = restore(&through_node);
    assert!(
        !ok && stderr.contains("data directory on node 127.0.10.1 is not empty") && stderr.contains(wipe),
        "{stderr}"
    );
    assert!(!emulator.has_recovery_snapshot());

    // Wiped, it is still refused while two members of the backup's cluster do not answer: back with
    // their data, they would re-form the old cluster. Acknowledged as lost, it is restored with the
    // backup's keys and none written after it.
    emulator.wipe_node(0).await;
    let (ok, _, stderr) = restore(&["--nodes", "127.0.10.1"]);
    assert!(!ok && stderr.contains("Talos VIP"), "{stderr}");
    let (ok, _, stderr) = restore(&[&through_node[..], &["--nodes", "127.0.10.1"]].concat());
    assert!(
        !ok && stderr.contains("127.0.10.2 (member cp-2), 127.0.10.3 (member cp-3) did not answer")
            && stderr.contains("talosctl -n 127.0.10.2 reset")
            && stderr.contains("--acknowledge-lost 127.0.10.2,127.0.10.3"),
        "{stderr}"
    );
    let (ok, _, stderr) = restore(&[&through_node[..], &["--acknowledge-lost", "cp-2"]].concat());
    assert!(!ok && stderr.contains("127.0.10.3 (member cp-3) did not answer"), "one acknowledged, one not: {stderr}");
    assert!(!emulator.has_recovery_snapshot(), "nothing may be uploaded");
    let (ok, restored, stderr) = restore(&[&through_node[..], &["--acknowledge-lost", "127.0.10.2,cp-3"]].concat());
    assert!(ok, "{stderr}");
    assert_eq!(restored["sha256"], snapshot["sha256"]);
    // The lost ones are listed with what to do before they return.
    assert_eq!(states_after(&restored), [("127.0.10.2", "unreachable"), ("127.0.10.3", "unreachable")]);
    let wipe_third = "talosctl -n 127.0.10.3 reset --system-labels-to-wipe EPHEMERAL";
    assert!(restored["nodes_after"][1]["advice"].as_str().unwrap().contains(wipe_third), "{restored}");
    let read = |key: &'static str| emulator.restored_get(key);
    assert_eq!(read("/registry/configmaps/ns/before-42").await.map(|v| v.len()), Some(1024));
    assert_eq!(read("/registry/configmaps/ns/after").await, None);

    // The lost machines come back wiped and join the recovered member.
    for index in [1, 2] {
        emulator.set_down(index, false);
        emulator.wipe_node(index).await;
    }
    assert_eq!(emulator.with_restored(|etcd| etcd.expect("restored").members.len()).await, 3);
    assert_eq!(read("/registry/configmaps/ns/before-7").await.map(|v| v.len()), Some(1024));

    // A late restore: every node was wiped longer ago than the (shortened) join timeout, so the others'
    // etcd gave up and stays Failed. The second was rebooted since and joins; the third is reported with
    // the reboot command, and joins once rebooted. The target has just booted: the restore waits.
    emulator.set_join_timeout(std::time::Duration::from_secs(1));
    emulator.wipe_etcd();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    emulator.set_join_timeout(std::time::Duration::from_secs(1800));
    emulator.wipe_node(1).await;
    emulator.boot(0, BootStage::ContainerRuntime, std::time::Duration::from_secs(3));
    let (ok, restored, stderr) = restore(&through_node);
    assert!(ok, "{stderr}");
    assert_eq!(states_after(&restored), [("127.0.10.2", "joined"), ("127.0.10.3", "failed")]);
    let reboot = "talosctl reboot -n 127.0.10.3";
    let advice = restored["nodes_after"][1]["advice"].as_str().unwrap();
    assert!(
        advice.contains("30-minute join timeout") && advice.contains(reboot) && stderr.contains(reboot),
        "{advice}"
    );
    emulator.wipe_node(2).await;
    assert_eq!(emulator.with_restored(|etcd| etcd.expect("restored").members.len()).await, 3);

    // A recovery that fails after Bootstrap answered (the disk fills) is reported at once, not after
    // --wait; the directory it left must be wiped before the next try.
    emulator.wipe_etcd();
    emulator.faults.fail_recovery(true);
    let started = std::time::Instant::now();
    let (ok, _, stderr) = restore(&through_node);
    assert!(!ok && stderr.contains("failed after Bootstrap: Failed to run pre stage"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(40), "{:?}", started.elapsed());
    emulator.faults.clear();
    let (ok, _, stderr) = restore(&through_node);
    assert!(!ok && stderr.contains("is not empty"), "{stderr}");

    // An etcd that comes up healthy without the backup's data is no success.
    emulator.wipe_etcd();
    emulator.faults.recover_empty(true);
    let (ok, _, stderr) = restore(&through_node);
    assert!(!ok && stderr.contains("it does not hold the backup"), "{stderr}");

    // etcd that exits after a good pre stage (Talos restarts it: a crash loop) is reported as soon as
    // the service shows it; one that comes up over its quota (NOSPACE) is no success either.
    emulator.faults.clear();
    emulator.wipe_etcd();
    emulator.faults.crash_after_recovery(true);
    let started = std::time::Instant::now();
    let (ok, _, stderr) = restore(&through_node);
    assert!(!ok && stderr.contains("a crash loop") && stderr.contains("talosctl -n 127.0.10.1 logs etcd"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(40), "{:?}", started.elapsed());
    emulator.faults.clear();
    emulator.wipe_etcd();
    emulator.faults.nospace_after_recovery(true);
    let (ok, _, stderr) = restore(&through_node);
    assert!(!ok && stderr.contains("NOSPACE alarm") && stderr.contains("etcd alarm disarm"), "{stderr}");
}

/// Each other node's etcd after a restore, as the summary lists it.
fn states_after(restored: &serde_json::Value) -> Vec<(&str, &str)> {
    let nodes = restored["nodes_after"].as_array().unwrap();
    nodes.iter().map(|n| (n["node"].as_str().unwrap(), n["etcd"].as_str().unwrap())).collect()
}

/// Runs `script` with sh in `dir`; its standard output.
fn shell(dir: &std::path::Path, script: &str) -> Vec<u8> {
    let output = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap();
    assert!(output.status.success(), "{script}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_compressed_backups_open_with_age_and_zstd_and_restore() {
    use sha2::Digest as _;
    let ground = CliGround::start().await;
    let (emulator, s3, dir) = (&ground.emulator, &ground.s3, &ground.dir);
    for i in 0..300 {
        emulator.etcd().put(format!("/registry/secrets/ns/s-{i}").as_bytes(), &[b's'; 2048]).await.unwrap();
    }
    let backup_config = ground.talosconfig("backup.talosconfig", "os:etcd:backup");
    // Keys made by Debian's age-keygen: the standard tool's keys work here, and the reverse.
    shell(dir.path(), "age-keygen -o key.txt 2>/dev/null && age-keygen -o other.txt 2>/dev/null");
    let recipient = String::from_utf8(shell(dir.path(), "age-keygen -y key.txt")).unwrap().trim().to_owned();
    let secret = std::fs::read_to_string(dir.path().join("key.txt")).unwrap();
    let secret_line = secret.lines().find(|l| l.starts_with("AGE-SECRET-KEY-")).unwrap().to_owned();

    let snapshot = |extra: &[&str]| outcome(command(&backup_config, s3).args(extra));
    let (ok, summary, stderr) = snapshot(&["--zstd", "--zstd-level", "9", "--age-recipient", &recipient]);
    assert!(ok, "{stderr}");
    let key = summary["key"].as_str().unwrap().to_owned();
    assert!(key.ends_with(".db.zst.age"), "{key}");
    assert_eq!(summary["encoding"], "zstd+age");
    let (size, stored) = (summary["size"].as_u64().unwrap(), summary["stored_size"].as_u64().unwrap());
    assert!(stored * 4 < size, "repetitive values compress: {stored} of {size}");
    assert_eq!(summary["recipients"].as_array().unwrap().len(), 1);
    assert_eq!(snapshots(&s3.objects("backups").await.unwrap()), vec![(key.clone(), stored)]);
    assert!(summary["report"].as_str().unwrap().ends_with(".json.age"), "sealed as the backup: {summary}");
    let printed = format!("{summary}{stderr}");
    assert!(!printed.contains(&secret_line[15..]), "the identity never shows");

    // The standard tools open it: age -d | zstd -d gives exactly the snapshot, which etcdctl restores.
    let (bytes, _) = s3.get("backups", &key).await.unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
    std::fs::write(dir.path().join("backup.db.zst.age"), &bytes).unwrap();
    shell(dir.path(), "age -d -i key.txt backup.db.zst.age | zstd -d -q -o plain.db");
    let plain = std::fs::read(dir.path().join("plain.db")).unwrap();
    assert_eq!(plain.len() as u64, size);
    let (db, trailer) = plain.split_at(plain.len() - 32);
    assert_eq!(hex::encode(sha2::Sha256::digest(db)), summary["sha256"].as_str().unwrap());
    assert_eq!(trailer, &sha2::Sha256::digest(db)[..]);
    let restored = teb_testkit::etcd::EtcdCluster::restore(&dir.path().join("plain.db")).await.unwrap();
    assert_eq!(restored.get("/registry/secrets/ns/s-42").unwrap().map(|v| v.len()), Some(2048));
    drop(restored);

    // zstd alone: `zstd -d` opens it.
    let (ok, zstd_only, stderr) = snapshot(&["--zstd", "--key", "talos-operator-etcd-backups/demo/only.db.zst"]);
    assert!(ok && zstd_only["encoding"] == "zstd", "{stderr}");
    let (compressed, _) = s3.get("backups", "talos-operator-etcd-backups/demo/only.db.zst").await.unwrap();
    std::fs::write(dir.path().join("only.db.zst"), &compressed).unwrap();
    let decompressed = shell(dir.path(), "zstd -d -q -c only.db.zst");
    let db = &decompressed[..decompressed.len() - 32];
    assert_eq!(hex::encode(sha2::Sha256::digest(db)), zstd_only["sha256"].as_str().unwrap());

    // verify and list decode on the fly; a missing or wrong identity, a truncated object: clear errors.
    let run = |args: &[&str]| outcome(cli(args[0], s3).args(&args[1..]));
    let key_file = dir.path().join("key.txt").display().to_string();
    let other_file = dir.path().join("other.txt").display().to_string();
    let (ok, verified, stderr) = run(&["verify", "--key", &key, "--age-identity-file", &key_file]);
    assert!(ok, "{verified} {stderr}");
    assert_eq!((&verified["sha256"], &verified["size"]), (&summary["sha256"], &summary["size"]));
    // Decoded into a scratch file to be read: the same database inside.
    assert!(verified["contents"]["keys"].as_u64().unwrap() > 0, "{verified}");
    let (ok, failed, _) = run(&["verify", "--key", &key]);
    assert!(!ok && failed["error"].as_str().unwrap().contains("give the identity"), "{failed}");
    let (ok, failed, _) = run(&["verify", "--key", &key, "--age-identity-file", &other_file]);
    assert!(!ok && failed["error"].as_str().unwrap().contains("encrypted to other recipients"), "{failed}");
    let cut = "talos-operator-etcd-backups/demo/etcd-snapshot-cut.db.zst.age";
    let truncated = bytes.slice(..bytes.len() - 1000);
    s3.client("backups").unwrap().put(&object_store::path::Path::from(cut), truncated.into()).await.unwrap();
    let (ok, failed, _) = run(&["verify", "--key", cut, "--age-identity-file", &key_file]);
    assert!(!ok && failed["error"].as_str().unwrap().contains("cannot decode the zstd+age backup"), "{failed}");
    let (ok, listed, stderr) = run(&["list", "--output", "json"]);
    assert!(ok, "{stderr}");
    let entry = listed.as_array().unwrap().iter().find(|e| e["key"] == key.as_str()).unwrap().clone();
    assert_eq!(
        (&entry["encoding"], &entry["sha256"], &entry["size"]),
        (&"zstd+age".into(), &None::<String>.into(), &stored.into())
    );
    assert_eq!(entry["recipients"], summary["recipients"]);

    // Bad recipients: a clear error, and nothing reaches the bucket.
    let before = s3.objects("backups").await.unwrap();
    let (ok, _, stderr) = snapshot(&["--age-recipient", "age1notakey"]);
    assert!(!ok && stderr.contains("\"age1notakey\" is not an age X25519 recipient"), "{stderr}");
    std::fs::write(dir.path().join("empty.txt"), "# nobody\n").unwrap();
    let (ok, _, stderr) = snapshot(&["--age-recipients-file", &dir.path().join("empty.txt").display().to_string()]);
    assert!(!ok && stderr.contains("hold no recipient"), "{stderr}");
    assert_eq!(s3.objects("backups").await.unwrap(), before);
    assert!(s3.unfinished_uploads().is_empty());

    // Restore decrypts and decompresses into EtcdRecover.
    let admin_config = dir.path().join("admin.talosconfig");
    std::fs::write(&admin_config, emulator.talosconfig(&["os:admin"]).unwrap()).unwrap();
    emulator.wipe_etcd();
    let admin = admin_config.display().to_string();
    let (ok, _, stderr) = run(&["restore", "--talosconfig", &admin, "--key", &key]);
    assert!(!ok && stderr.contains("pass --age-identity-file"), "{stderr}");
    let (ok, restored, stderr) =
        run(&["restore", "--talosconfig", &admin, "--key", &key, "--age-identity-file", &key_file, "--wait", "60s"]);
    assert!(ok, "{stderr}");
    assert_eq!((&restored["sha256"], &restored["size"]), (&summary["sha256"], &summary["size"]));
    let value = emulator.restored_get("/registry/secrets/ns/s-7").await;
    assert_eq!(value.map(|v| v.len()), Some(2048));
}

/// The command line never overwrites an object: a `--key` that is taken is refused (the object stays
/// as it was), and a generated key already taken gets the next numbered key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_command_never_overwrites_an_object() {
    let ground = CliGround::start().await;
    let (emulator, s3) = (&ground.emulator, &ground.s3);
    let talosconfig = ground.talosconfig("talosconfig", "os:etcd:backup");
    let run =
        |extra: Vec<String>| tokio::task::block_in_place(|| command(&talosconfig, s3).args(extra).output().unwrap());
    let key = "manual/etcd.db".to_owned();
    let first = run(vec!["--key".into(), key.clone()]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let (before, _) = s3.get("backups", &key).await.unwrap();
    emulator.etcd().put(b"/cli/changed", b"after the first backup").await.unwrap();
    let second = run(vec!["--key".into(), key.clone()]);
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("an object is already stored at manual/etcd.db") && stderr.contains("--key"), "{stderr}");
    assert_eq!(s3.get("backups", &key).await.unwrap().0, before, "the object was replaced");
    assert!(s3.unfinished_uploads().is_empty());
    // Another format of the same name would share its manifest, kit and report (named from the key
    // up to `.db`): refused too, and the first backup still verifies against its own manifest.
    let manifest = s3.get("backups", "manual/manifest-etcd.json").await.unwrap().0;
    let sibling = run(vec!["--key".into(), "manual/etcd.db.zst".into()]);
    let stderr = String::from_utf8_lossy(&sibling.stderr);
    assert!(
        !sibling.status.success() && stderr.contains("manual/etcd.db is stored beside manual/etcd.db.zst"),
        "{stderr}"
    );
    assert_eq!(s3.get("backups", "manual/manifest-etcd.json").await.unwrap().0, manifest, "the manifest was replaced");
    let (ok, verified, stderr) = outcome(cli("verify", s3).args(["--key", &key]));
    assert!(ok && verified["manifest"]["snapshot"]["key"] == key.as_str(), "{stderr}");
    // A bucket written before that, where the sibling's manifest replaced this one: another
    // snapshot's manifest is not this one's (no manifest, rather than a false mismatch).
    let mut theirs: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    theirs["snapshot"]["key"] = "manual/etcd.db.zst".into();
    theirs["snapshot"]["sha256"] = "0".repeat(64).into();
    let theirs = serde_json::to_vec(&theirs).unwrap();
    let store = s3.client("backups").unwrap();
    store.put(&object_store::path::Path::from("manual/manifest-etcd.json"), theirs.into()).await.unwrap();
    let (ok, verified, stderr) = outcome(cli("verify", s3).args(["--key", &key]));
    assert!(ok && verified["manifest"].is_null(), "{stderr}");

    // Generated keys that are taken (objects at the keys of the next four seconds): numbered.
    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    let store = s3.client("backups").unwrap();
    for second in 0..4 {
        let taken = at + jiff::SignedDuration::from_secs(second);
        let key = format!("talos-operator-etcd-backups/demo/etcd-snapshot-{}.db", taken.strftime("%Y-%m-%dT%H-%M-%SZ"));
        store.put(&object_store::path::Path::from(key.as_str()), before.clone().into()).await.unwrap();
    }
    while jiff::Timestamp::now().as_second() < at.as_second() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let third = run(vec![]);
    assert!(third.status.success(), "{}", String::from_utf8_lossy(&third.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&third.stdout).unwrap();
    let stored = summary["key"].as_str().unwrap();
    assert!(stored.ends_with("Z-2.db"), "a taken generated key is numbered: {stored}");
    // Under the prefix: the four taken and the one stored (manual/etcd.db is outside it).
    assert_eq!(snapshots(&s3.objects("backups").await.unwrap()).len(), 5);
}

/// The same commands on Azure Blob Storage (Azurite) and GCS, named by object_store's URLs:
/// `--bucket az://container` / `gs://bucket`, or the whole object URL as `--key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_and_gcs_urls_snapshot_list_and_verify() {
    use teb_testkit::azure::{ACCOUNT, ACCOUNT_KEY, Azurite};
    use teb_testkit::gcs::GcsServer;
    let ground = CliGround::start().await;
    ground.fill("/registry/secrets/ns/", 200, 1024).await;
    let talosconfig = ground.talosconfig("talosconfig", "os:etcd:backup");
    let azurite = Azurite::start().await.unwrap();
    azurite.create_container("backups").await.unwrap();
    let gcs = GcsServer::start().await.unwrap();
    gcs.create_bucket("backups");
    let gcs_key = ground.dir.path().join("key.json");
    std::fs::write(&gcs_key, gcs.service_account_key()).unwrap();
    let gcs_key = gcs_key.to_str().unwrap();

    let azure = |subcommand: &str| {
        let mut command = bare(subcommand);
        command
            .args(["--endpoint", &azurite.endpoint, "--azure-account", ACCOUNT])
            .env("AZURE_STORAGE_ACCOUNT_KEY", ACCOUNT_KEY);
        command
    };
    let google = |subcommand: &str| {
        let mut command = bare(subcommand);
        command.args(["--endpoint", &gcs.endpoint, "--gcs-service-account-key", gcs_key]);
        command
    };
    for (url, run) in [("az://backups", &azure as &dyn Fn(&str) -> Command), ("gs://backups", &google)] {
        let (ok, summary, stderr) = outcome(
            run("snapshot")
                .args(["--bucket", url, "--cluster", "demo", "--zstd"])
                .arg("--talosconfig")
                .arg(&talosconfig),
        );
        assert!(ok, "{url}: {stderr}");
        let key = summary["key"].as_str().unwrap().to_owned();
        assert!(key.starts_with("talos-operator-etcd-backups/demo/") && key.ends_with(".db.zst"), "{key}");
        assert_eq!(summary["bucket"], url, "{summary}");

        let (ok, listed, stderr) = outcome(run("list").args(["--bucket", url, "--output", "json"]));
        assert!(ok, "{url}: {stderr}");
        let entries = listed.as_array().unwrap();
        assert_eq!(entries.len(), 1, "{listed}");
        assert_eq!((&entries[0]["key"], &entries[0]["encoding"]), (&summary["key"], &"zstd".into()), "{listed}");

        // The object URL alone names the container or bucket.
        let (ok, verified, stderr) = outcome(run("verify").args(["--key", &format!("{url}/{key}")]));
        assert!(ok && verified["result"] == "pass", "{url}: {verified} {stderr}");
        assert_eq!(verified["sha256"], summary["sha256"]);
    }
    assert!(gcs.unfinished_uploads().is_empty());

    // GCS's ambient credentials, with no --gcs-service-account-key: the key file that
    // GOOGLE_APPLICATION_CREDENTIALS names, and the metadata server of a GCE instance or of a GKE pod
    // with workload identity (both its addresses on loopback, or the client falls back to
    // 169.254.169.254), whose account's role is then the limit.
    let ambient = |subcommand: &str, env: &[(&str, &str)]| {
        let mut command = bare(subcommand);
        command.args(["--endpoint", &gcs.endpoint, "--bucket", "gs://backups"]).envs(env.iter().copied());
        command
    };
    let listed_one = |(ok, listed, stderr): (bool, serde_json::Value, String)| {
        assert!(ok && listed.as_array().map(Vec::len) == Some(1), "{listed} {stderr}");
    };
    listed_one(outcome(ambient("list", &[("GOOGLE_APPLICATION_CREDENTIALS", gcs_key)]).args(["--output", "json"])));
    gcs.serve_metadata("node@teb-test.iam.gserviceaccount.com", teb_testkit::gcs::Role::ObjectViewer);
    let host = gcs.metadata_host();
    let metadata = [("GCE_METADATA_HOST", host.as_str()), ("GCE_METADATA_IP", host.as_str())];
    listed_one(outcome(ambient("list", &metadata).args(["--output", "json"])));
    let (ok, _, stderr) =
        outcome(ambient("snapshot", &metadata).args(["--cluster", "demo"]).arg("--talosconfig").arg(&talosconfig));
    assert!(!ok && stderr.contains("does not have storage.multipartUploads.create access"), "{stderr}");

    // A SAS token for the container works as the key does; a wrong key says which service refused.
    let sas = azurite.container_sas("backups", jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1));
    let mut listing = bare("list");
    listing.args(["--bucket", "az://backups", "--endpoint", &azurite.endpoint, "--azure-account", ACCOUNT]);
    let (ok, listed, stderr) = outcome(listing.env("AZURE_STORAGE_SAS_TOKEN", &sas).args(["--output", "json"]));
    assert!(ok && listed.as_array().unwrap().len() == 1, "{listed} {stderr}");
    let wrong = "bm90IHRoZSBhY2NvdW50IGtleQ==";
    let (ok, _, stderr) =
        outcome(azure("list").args(["--bucket", "az://backups"]).env("AZURE_STORAGE_ACCOUNT_KEY", wrong));
    assert!(!ok && stderr.contains("Azure Blob Storage error Authori"), "{stderr}");
    assert!(stderr.contains("Failed to list the backups in Azure Blob Storage: ListObjects"), "{stderr}");
    assert!(!stderr.contains(wrong) && !stderr.contains(ACCOUNT_KEY), "{stderr}");
    // An Azure container without its account is refused before any request.
    let (ok, _, stderr) = outcome(bare("list").args(["--bucket", "az://backups", "--endpoint", &azurite.endpoint]));
    assert!(!ok && stderr.contains("--azure-account"), "{stderr}");
}

/// `--object-lock-mode` and `--object-lock-retention`: the snapshot is written locked into a bucket
/// with Object Lock (its parts checksummed, or the bucket would refuse them) and verifies; a bucket
/// without Object Lock and a malformed retention are refused, saying what to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_command_writes_locked_objects() {
    let ground = CliGround::start_with(EmulatorOptions::default(), false).await;
    let (s3, talosconfig) = (&ground.s3, ground.talosconfig("talosconfig", "os:etcd:backup"));
    s3.create_bucket_with_object_lock("vault", teb_testkit::s3::REGION).unwrap();
    let locked_with = |bucket: &str, retention: &str, extra: &[&str]| {
        let mut command = bare("snapshot");
        command
            .args(["--bucket", bucket, "--endpoint", &s3.endpoint, "--cluster", "demo", "--talosconfig"])
            .arg(&talosconfig)
            .args(["--object-lock-mode", "COMPLIANCE", "--object-lock-retention", retention])
            .args(extra)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        outcome(&mut command)
    };
    let locked = |bucket: &str, retention: &str| locked_with(bucket, retention, &[]);
    let started = jiff::Timestamp::now();
    let (ok, summary, stderr) = locked("vault", "1h");
    assert!(ok, "{stderr}");
    let key = summary["key"].as_str().unwrap();
    let lock = s3.lock_of("vault", key).expect("locked");
    assert_eq!(lock.mode, "COMPLIANCE");
    assert!((3600..3610).contains(&lock.until.duration_since(started).as_secs()), "{lock:?}");
    let (ok, _, stderr) = outcome(
        bare("verify")
            .args(["--key", &format!("s3://vault/{key}"), "--endpoint", &s3.endpoint])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    );
    assert!(ok, "{stderr}");

    let (ok, _, stderr) = locked("backups", "1h");
    assert!(!ok && stderr.contains("Object Lock needs a bucket created with Object Lock enabled"), "{stderr}");
    let (ok, _, stderr) = locked("vault", "1 week");
    assert!(
        !ok && stderr.contains("--object-lock-mode/--object-lock-retention") && stderr.contains("such as 30d"),
        "{stderr}"
    );
    assert!(s3.objects("backups").await.unwrap().is_empty());
    assert!(s3.unfinished_uploads().is_empty());

    // A store that locks objects but refuses flexible-checksum headers: the default fails, naming
    // MD5; `--checksum md5` writes every part and the object with Content-MD5, which it takes.
    s3.faults.refuse_flexible_checksums(true);
    let (ok, _, stderr) = locked("vault", "1h");
    assert!(!ok && stderr.contains("NotImplemented") && stderr.contains("--checksum md5"), "{stderr}");
    let (ok, summary, stderr) = locked_with("vault", "1h", &["--checksum", "md5"]);
    assert!(ok, "{stderr}");
    let key = summary["key"].as_str().unwrap();
    assert_eq!(s3.lock_of("vault", key).map(|lock| lock.mode), Some("COMPLIANCE".to_owned()));
    assert!(s3.unfinished_uploads().is_empty());
}

/// A store that refuses flexible-checksum headers (as some S3-compatible stores answer them:
/// `NotImplemented`) takes a backup with the default settings: on a custom endpoint no such header is
/// sent and the body's SHA-256 is signed instead, which the server checks. Forcing an algorithm fails
/// with the store's answer and the setting to change, leaving nothing behind; where the store knows
/// them, each algorithm works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_flexible_checksums_takes_the_default() {
    let ground = CliGround::start().await;
    let s3 = &ground.s3;
    let config = ground.talosconfig("backup.talosconfig", "os:etcd:backup");
    s3.faults.refuse_flexible_checksums(true);
    for checksum in [&[][..], &["--checksum", "none"]] {
        let (ok, summary, stderr) = outcome(command(&config, s3).args(checksum));
        assert!(ok, "{checksum:?}: {stderr}");
        let (ok, verified, stderr) = outcome(cli("verify", s3).args(["--key", summary["key"].as_str().unwrap()]));
        assert!(ok && verified["sha256"] == summary["sha256"], "{verified} {stderr}");
    }
    assert_eq!(s3.faults.fired("checksum refused"), 0);
    let stored = s3.objects("backups").await.unwrap().len();
    for algorithm in ["crc64nvme", "sha256"] {
        let (ok, _, stderr) = outcome(command(&config, s3).args(["--checksum", algorithm]));
        assert!(
            !ok && stderr.contains("NotImplemented") && stderr.contains("--checksum none"),
            "{algorithm}: {stderr}"
        );
    }
    assert!(s3.faults.fired("checksum refused") >= 2);
    assert_eq!(s3.objects("backups").await.unwrap().len(), stored, "nothing stored");
    assert!(s3.unfinished_uploads().is_empty(), "{:?}", s3.unfinished_uploads());
    s3.faults.refuse_flexible_checksums(false);
    for algorithm in ["crc64nvme", "sha256"] {
        let (ok, _, stderr) = outcome(command(&config, s3).args(["--checksum", algorithm]));
        assert!(ok, "{algorithm}: {stderr}");
    }
}

/// The compatibility matrix: the whole cycle against S3 servers nobody on this project wrote (moto,
/// SeaweedFS; README's table): `snapshot` with the default checksum and with each flexible one, `list`,
/// `verify`, `restore` into a wiped etcd, and the delete retention makes, leaving nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_cycle_works_on_s3_servers_nobody_here_wrote() {
    use teb_testkit::compat::{Compat, CompatS3};
    for kind in Compat::ALL {
        let ground = CliGround::start().await;
        let emulator = &ground.emulator;
        emulator.etcd().put(b"/registry/configmaps/ns/kept", b"kept").await.unwrap();
        let backup = ground.talosconfig("backup.talosconfig", "os:etcd:backup");
        let admin = ground.talosconfig("admin.talosconfig", "os:admin");
        let server = CompatS3::start(kind).await.unwrap();
        let run_in = |bucket: &str, subcommand: &str, args: &[&str]| {
            outcome(cli_at(subcommand, &server.endpoint, bucket).args(args))
        };
        let run = |subcommand: &str, args: &[&str]| run_in("backups", subcommand, args);
        let config = backup.to_str().unwrap();
        let mut keys = Vec::new();
        for checksum in ["auto", "crc64nvme", "sha256", "md5"] {
            let (ok, summary, stderr) =
                run("snapshot", &["--talosconfig", config, "--cluster", "demo", "--checksum", checksum]);
            assert!(ok, "{} --checksum {checksum}: {stderr}", kind.name());
            keys.push(summary["key"].as_str().unwrap().to_owned());
            if keys.len() == 1 {
                // A custom resource (stored as JSON) in every backup but the first.
                let widget = r#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w","namespace":"ns","uid":"u-1"},"spec":{"size":3}}"#;
                emulator.etcd().put(b"/registry/example.com/widgets/ns/w", widget.as_bytes()).await.unwrap();
            }
        }
        // One object back, what changed, and the catalog checked: read from this store in place.
        let stdout = |subcommand: &str, args: &[&str]| {
            let output = tokio::task::block_in_place(|| {
                cli_at(subcommand, &server.endpoint, "backups").args(args).output().unwrap()
            });
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "{} {subcommand}: {stderr}", kind.name());
            String::from_utf8(output.stdout).unwrap()
        };
        let listed = json_lines(&stdout(
            "objects",
            &["--key", &keys[1], "--resource", "widgets.example.com", "--output", "json"],
        ));
        assert_eq!(listed.len(), 1, "{}: {listed:?}", kind.name());
        assert_eq!((&listed[0]["namespace"], &listed[0]["name"]), (&"ns".into(), &"w".into()));
        let yaml = stdout("get", &["widgets.example.com", "ns/w", "--key", &keys[1]]);
        let object: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(object["spec"]["size"], 3, "{}: {yaml}", kind.name());
        assert!(object["metadata"].get("uid").is_none(), "{}: {yaml}", kind.name());
        let changes = json_lines(&stdout("diff", &[&keys[0], &keys[1], "--output", "json"]));
        let changes: Vec<(&str, &str)> =
            changes.iter().map(|l| (l["change"].as_str().unwrap(), l["key"].as_str().unwrap())).collect();
        assert_eq!(changes, [("added", "/registry/example.com/widgets/ns/w")], "{}", kind.name());
        let checked = json_lines(&stdout("import", &["--cluster", "demo"]));
        assert_eq!(checked.len(), keys.len(), "{}", kind.name());
        assert!(checked.iter().all(|c| c["result"] == "verified"), "{}: {checked:?}", kind.name());
        let (ok, listed, stderr) = run("list", &["--output", "json"]);
        assert!(ok, "{}: {stderr}", kind.name());
        let mut listed: Vec<&str> = listed.as_array().unwrap().iter().map(|b| b["key"].as_str().unwrap()).collect();
        listed.sort();
        let mut written: Vec<&str> = keys.iter().map(String::as_str).collect();
        written.sort();
        assert_eq!(listed, written, "{}", kind.name());
        let (ok, verified, stderr) = run("verify", &["--key", &keys[0]]);
        assert!(ok, "{}: {stderr}", kind.name());
        emulator.etcd().put(b"/registry/configmaps/ns/after", b"lost").await.unwrap();
        emulator.wipe_etcd();
        let (ok, restored, stderr) =
            run("restore", &["--talosconfig", admin.to_str().unwrap(), "--key", &keys[0], "--wait", "60s"]);
        assert!(ok && restored["sha256"] == verified["sha256"], "{}: {stderr}", kind.name());
        assert_eq!(emulator.restored_get("/registry/configmaps/ns/kept").await.as_deref(), Some("kept"));
        assert_eq!(emulator.restored_get("/registry/configmaps/ns/after").await, None);
        // The delete retention makes: every backup goes, and the bucket is empty.
        let location = teb_testkit::s3::location(&server.endpoint, "backups", "us-east-1");
        let storage = teb_pipeline::StorageLocation::S3(location.clone());
        let storage = teb_pipeline::Storage::new(&storage, std::time::Duration::from_secs(30)).unwrap();
        for key in &keys {
            let deleted = teb_core::catalog::delete_snapshot(&storage, key).await.unwrap();
            assert_eq!(deleted, teb_core::catalog::Deletion::Deleted, "{}", kind.name());
        }
        assert_eq!(storage.list("").await.unwrap().len(), 0, "{}", kind.name());
        if kind == Compat::Moto {
            // Object Lock: a locked backup is written (every part checksummed) and verifies.
            server.create_locked_bucket("vault").await.unwrap();
            let lock = ["--object-lock-mode", "GOVERNANCE", "--object-lock-retention", "1d"];
            let (ok, summary, stderr) =
                run_in("vault", "snapshot", &[&["--talosconfig", config, "--cluster", "demo"][..], &lock[..]].concat());
            assert!(ok, "{}: {stderr}", kind.name());
            let key = summary["key"].as_str().unwrap();
            let (ok, _, stderr) = run_in("vault", "verify", &["--key", key]);
            assert!(ok, "{}: {stderr}", kind.name());
            // A locked PutObject, as a recovery kit is written: moto wants the SDKs' algorithm header.
            let lock = teb_pipeline::ObjectLock {
                mode: teb_pipeline::LockMode::Governance,
                retention: std::time::Duration::from_secs(86400),
            };
            let location = teb_pipeline::S3Location { bucket: "vault".into(), object_lock: Some(lock), ..location };
            let vault = teb_pipeline::StorageLocation::S3(location);
            let vault = teb_pipeline::Storage::new(&vault, std::time::Duration::from_secs(30)).unwrap();
            vault.put("kit.age", b"a recovery kit".to_vec(), &[]).await.expect("a locked PutObject on moto");
            assert!(vault.locked_until("kit.age").await.unwrap().is_some());
        }
    }
}

/// kube-apiserver's encryption configuration for Secrets: `providers` in order (provider, key name,
/// base64 secret), then identity, as Talos writes it.
fn encryption_config(providers: &[(&str, &str, &str)]) -> String {
    let mut yaml = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
                    - resources: [secrets]\n  providers:\n"
        .to_owned();
    for (provider, name, secret) in providers {
        yaml += &format!("  - {provider}:\n      keys:\n      - name: {name}\n        secret: {secret}\n");
    }
    yaml + "  - identity: {}\n"
}

/// Runs `each` for 0..n, 16 at a time.
async fn each<F: std::future::Future<Output = ()>>(n: usize, each: impl Fn(usize) -> F) {
    use futures::StreamExt as _;
    futures::stream::iter(0..n).for_each_concurrent(16, each).await;
}

/// Runs `command` (off the async runtime's threads): whether it succeeded, its standard output and
/// its standard error.
fn run(command: &mut Command) -> (bool, String, String) {
    let output = tokio::task::block_in_place(|| command.output().unwrap());
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
    (output.status.success(), text(output.stdout), text(output.stderr))
}

/// JSON lines.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Objects as kube-apiserver serves them, less what the cluster assigns, by `namespace/name`; only
/// those in `namespaces`.
fn by_name(objects: Vec<serde_json::Value>, namespaces: &[&str]) -> BTreeMap<String, serde_json::Value> {
    let mut named = BTreeMap::new();
    for mut object in objects {
        let metadata = object["metadata"].as_object_mut().unwrap();
        for field in teb_core::kube_object::ASSIGNED_METADATA {
            metadata.remove(field);
        }
        let namespace = metadata["namespace"].as_str().unwrap().to_owned();
        let name = format!("{namespace}/{}", metadata["name"].as_str().unwrap());
        if namespaces.contains(&namespace.as_str()) {
            named.insert(name, object);
        }
    }
    named
}

/// `get` brings back each object exactly as kube-apiserver serves it (less what the cluster
/// assigned), from a real etcd filled through a real kube-apiserver that encrypts Secrets at rest
/// with Talos's two keys (secretbox `key2`, aescbc `key1`: some Secrets written with each), with
/// overwritten and deleted keys and a compaction, in every format a backup is stored in; each
/// backup's report counts what kube-apiserver lists; `diff` names what changed between two backups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_brings_back_each_object_as_kube_apiserver_serves_it_and_diff_names_changes() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
    use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
    use teb_testkit::kube::{KubeEnv, KubeOptions, apply_yaml};

    let ground = CliGround::start().await;
    let (s3, dir) = (&ground.s3, ground.dir.path());
    let (secretbox, aescbc) = (BASE64.encode([0x5b; 32]), BASE64.encode([0xcb; 32]));
    // A Talos secrets bundle (`talosctl gen secrets`) with both keys, as a cluster made with aescbc
    // and upgraded since has them.
    let bundle_yaml = ground.emulator.ca.secrets_bundle_yaml();
    let (line_start, _) = bundle_yaml.split_once("  secretboxencryptionsecret: ").unwrap();
    let rest = bundle_yaml[line_start.len()..].split_once('\n').unwrap().1;
    let bundle = dir.join("secrets.yaml");
    let both = format!("  secretboxencryptionsecret: {secretbox}\n  aescbcencryptionsecret: {aescbc}\n");
    std::fs::write(&bundle, format!("{line_start}{both}{rest}")).unwrap();
    let bundle = bundle.to_str().unwrap().to_owned();
    let talos_order = encryption_config(&[("secretbox", "key2", &secretbox), ("aescbc", "key1", &aescbc)]);
    let aescbc_first = encryption_config(&[("aescbc", "key1", &aescbc), ("secretbox", "key2", &secretbox)]);
    let etcd_servers = Some(ground.emulator.etcd().client_urls().join(","));
    let kube = KubeEnv::start_with(KubeOptions { etcd_servers, encryption: Some(aescbc_first) }).await.unwrap();
    let client = kube.admin_client().await.unwrap();
    let widget = teb_testkit::kube::widget_resource();
    apply_yaml(&client, teb_testkit::kube::WIDGET_CRD, None).await.unwrap();
    let namespaces = ["team-a", "team-b"];
    for ns in namespaces {
        let namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let secrets = |ns: &str| Api::<Secret>::namespaced(client.clone(), ns);
    let configmaps = |ns: &str| Api::<ConfigMap>::namespaced(client.clone(), ns);
    let widgets = |ns: &str| Api::<DynamicObject>::namespaced_with(client.clone(), ns, &widget);
    let create_secrets = |range: std::ops::Range<usize>| {
        let apis = namespaces.map(secrets);
        each(2 * range.len(), move |i| {
            let (api, n) = (apis[i % 2].clone(), range.start + i / 2);
            async move {
                let secret = serde_json::json!({"metadata": {"name": format!("s-{n}"), "labels": {"n": n.to_string()}},
                    "type": if n % 3 == 0 { "kubernetes.io/basic-auth" } else { "Opaque" },
                    "stringData": {"username": format!("user-{n}"), "password": "w".repeat(1 + n % 50)},
                    "data": {"binary": BASE64.encode([n as u8, 0, 255])}});
                api.create(&PostParams::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
            }
        })
    };
    // Secrets written under aescbc first, as an older cluster did.
    create_secrets(0..250).await;
    for ns in namespaces {
        let (configmaps, widgets) = (configmaps(ns), widgets(ns));
        each(400, |i| {
            let (configmaps, widgets) = (configmaps.clone(), widgets.clone());
            async move {
                let cm = serde_json::json!({"metadata": {"name": format!("cm-{i}"), "annotations": {"a": "b"}},
                    "data": {"v": "x".repeat(i % 400)}, "binaryData": {"bin": "AAEC"}, "immutable": i % 3 == 0});
                configmaps.create(&PostParams::default(), &serde_json::from_value(cm).unwrap()).await.unwrap();
                if i % 2 == 0 {
                    let widget = serde_json::json!({"apiVersion": "example.com/v1", "kind": "Widget",
                        "metadata": {"name": format!("w-{i}"), "finalizers": ["example.com/keep"]},
                        "spec": {"size": i, "tags": ["a", "b"], "nested": {"on": true}}});
                    widgets.create(&PostParams::default(), &serde_json::from_value(widget).unwrap()).await.unwrap();
                }
            }
        })
        .await;
    }
    // kube-apiserver restarted in Talos's order: new Secrets sealed with secretbox; some old ones
    // deleted, some ConfigMaps overwritten.
    kube.stop_apiserver();
    kube.set_encryption(&talos_order).unwrap();
    kube.start_apiserver().await.unwrap();
    create_secrets(250..500).await;
    for ns in namespaces {
        let (configmaps, secrets) = (configmaps(ns), secrets(ns));
        each(60, |i| {
            let (configmaps, secrets) = (configmaps.clone(), secrets.clone());
            async move {
                let name = format!("cm-{}", 1 + i * 3);
                let mut cm = configmaps.get(&name).await.unwrap();
                cm.data = Some([("v".to_owned(), "changed".to_owned())].into());
                configmaps.replace(&name, &PostParams::default(), &cm).await.unwrap();
                secrets.delete(&format!("s-{}", i * 5), &DeleteParams::default()).await.unwrap();
            }
        })
        .await;
    }
    let stored = |key: &str| ground.emulator.etcd().get(key).unwrap().unwrap();
    assert!(stored("/registry/secrets/team-a/s-1").starts_with("k8s:enc:aescbc:v1:key1:"));
    assert!(stored("/registry/secrets/team-a/s-251").starts_with("k8s:enc:secretbox:v1:key2:"));
    assert!(stored("/registry/configmaps/team-a/cm-1").starts_with("k8s\0"));

    // History compacted: each key's newest revision stays.
    ground.emulator.etcd().compact().unwrap();

    // Backed up in the four formats.
    let talosconfig = ground.talosconfig("backup.talosconfig", "os:etcd:backup");
    let identity = age::x25519::Identity::generate();
    let identity_file = dir.join("identity.txt");
    std::fs::write(&identity_file, age::secrecy::ExposeSecret::expose_secret(&identity.to_string())).unwrap();
    let recipient = identity.to_public().to_string();
    let formats: [&[&str]; 4] =
        [&[], &["--zstd"], &["--age-recipient", &recipient], &["--zstd", "--age-recipient", &recipient]];
    let (mut backups, mut reports) = (Vec::new(), Vec::new());
    // The last one counted without memory: every revision through the scratch folder.
    let scratch = tempfile::tempdir().unwrap();
    for (n, extra) in formats.into_iter().enumerate() {
        let mut snapshot = command(&talosconfig, s3);
        if n == 3 {
            snapshot.env("REPORT_MEMORY_MIB", "0").env("REPORT_SCRATCH_DIR", scratch.path());
        }
        let (ok, summary, stderr) = outcome(snapshot.args(extra));
        assert!(ok, "{stderr}");
        backups.push(summary["key"].as_str().unwrap().to_owned());
        reports.push(summary["contents"]["resources"].clone());
    }
    let verify = |budget: &str, folder: &std::path::Path| {
        let mut verify = cli("verify", s3);
        verify.args(["--key", &backups[3], "--report-memory-mib", budget, "--age-identity-file"]).arg(&identity_file);
        outcome(verify.arg("--report-scratch-dir").arg(folder))
    };
    let (ok, in_memory, stderr) = verify("32", scratch.path());
    assert!(ok && in_memory["report_scratch_bytes"] == 0, "{stderr}");
    let (ok, on_disk, stderr) = verify("0", scratch.path());
    assert!(ok && on_disk["report_scratch_bytes"].as_u64() > Some(0), "{stderr}");
    assert_eq!(on_disk["contents"], in_memory["contents"]);
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0, "the scratch folder is left behind");
    let (ok, refused, _) = verify("0", &scratch.path().join("missing"));
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(!ok && error.contains("its scratch folder failed (making a folder in"), "{refused}");
    let get = |key: &str, args: &[&str]| {
        let mut get = cli("get", s3);
        get.args(args).args(["--key", key, "--age-identity-file"]).arg(&identity_file);
        run(&mut get)
    };
    let lp = ListParams::default();
    let served = |kind: &str, api_version: &str, items: serde_json::Value| {
        let items = items["items"].as_array().unwrap().iter().map(|o| {
            let mut o = o.clone();
            (o["kind"], o["apiVersion"]) = (kind.into(), api_version.into());
            o
        });
        by_name(items.collect(), &namespaces)
    };
    fn json<T: serde::Serialize>(list: T) -> serde_json::Value {
        serde_json::to_value(list).unwrap()
    }
    let expected = [
        ("secrets", served("Secret", "v1", json(Api::<Secret>::all(client.clone()).list(&lp).await.unwrap()))),
        ("configmaps", served("ConfigMap", "v1", json(Api::<ConfigMap>::all(client.clone()).list(&lp).await.unwrap()))),
        (
            "widgets.example.com",
            served(
                "Widget",
                "example.com/v1",
                json(Api::<DynamicObject>::all_with(client.clone(), &widget).list(&lp).await.unwrap()),
            ),
        ),
    ];
    // Each backup's report counts what kube-apiserver lists.
    let counts = [
        ("secrets", Api::<Secret>::all(client.clone()).list(&lp).await.unwrap().items.len()),
        ("configmaps", Api::<ConfigMap>::all(client.clone()).list(&lp).await.unwrap().items.len()),
        (
            "widgets.example.com",
            Api::<DynamicObject>::all_with(client.clone(), &widget).list(&lp).await.unwrap().items.len(),
        ),
    ];
    for (resources, (resource, listed)) in reports.iter().flat_map(|r| counts.iter().map(move |c| (r, c))) {
        assert_eq!(resources[resource].as_u64(), Some(*listed as u64), "{resource}: {resources}");
    }
    let mut compared = 0;
    for key in &backups {
        for (resource, expected) in &expected {
            let (ok, stdout, stderr) = get(key, &[resource, "--secrets-bundle", &bundle, "--output", "json"]);
            assert!(ok, "{key} {resource}: {stderr}");
            let got = by_name(json_lines(&stdout), &namespaces);
            assert_eq!(got.len(), expected.len(), "{key} {resource}");
            for (name, object) in expected {
                assert_eq!(got.get(name), Some(object), "{key}: {resource} {name}");
            }
            compared += expected.len();
        }
    }
    assert!(compared > 4 * 2000, "{compared} objects compared");

    // One object as YAML, as `kubectl apply -f` takes it.
    let (ok, text, stderr) = get(&backups[3], &["secret", "team-b/s-251", "--secrets-bundle", &bundle]);
    assert!(ok, "{stderr}");
    assert!(text.starts_with("---\napiVersion: v1\nkind: Secret\nmetadata:\n"), "{text}");
    let document: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(document["data"]["username"], BASE64.encode("user-251"));
    let secret = secrets("team-b").get("s-251").await.unwrap();
    assert_eq!(serde_json::from_value::<Secret>(document).unwrap().data, secret.data);
    // The keys from the backup's recovery kit, sealed beside it as the operator stores it.
    let kit = teb_core::kit::RecoveryKit {
        cluster: "demo".into(),
        secrets_bundle: std::fs::read_to_string(&bundle).unwrap(),
        bundle_config: "{}".into(),
        namespace: None,
        state: teb_core::kit::upstream_state(None).into(),
        machine_config: None,
        observed_kube_version: None,
        backup_key: backups[2].clone(),
        backup_sha256: None,
        backup_node: "127.0.0.1".into(),
        backup_time: "2026-12-06T00:00:00Z".into(),
    };
    let recipients = teb_pipeline::codec::parse_recipients([recipient.as_str()]).unwrap();
    let sealed = teb_pipeline::codec::seal(kit.to_yaml().as_bytes(), &recipients).unwrap();
    let kit_key = object_store::path::Path::from(teb_core::kit::kit_key(&backups[2], true));
    s3.client("backups").unwrap().put(&kit_key, sealed.into()).await.unwrap();
    let (ok, text, stderr) = get(&backups[2], &["secrets", "team-a/s-1"]);
    assert!(ok, "{stderr}");
    let document: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let secret = secrets("team-a").get("s-1").await.unwrap();
    assert_eq!(serde_json::from_value::<Secret>(document).unwrap().data, secret.data);
    // Without the keys it says where to find them; with another cluster's, that they are not its.
    let (ok, _, stderr) = get(&backups[0], &["secret", "team-a/s-1"]);
    assert!(
        !ok && stderr.contains("has no recovery kit to take their keys from: pass the cluster's secrets"),
        "{stderr}"
    );
    let other = dir.join("other.yaml");
    std::fs::write(&other, format!("secrets:\n  aescbcencryptionsecret: {}\n", BASE64.encode([1; 32]))).unwrap();
    let (ok, _, stderr) = get(&backups[0], &["secret", "team-a/s-1", "--secrets-bundle", other.to_str().unwrap()]);
    assert!(!ok && stderr.contains("does not open with the aescbc key \"key1\""), "{stderr}");
    let (ok, _, stderr) = get(&backups[0], &["configmap", "team-a/nothing"]);
    assert!(!ok && stderr.contains("holds no configmaps team-a/nothing"), "{stderr}");

    // Later: a ConfigMap added, a Secret deleted, a Widget changed.
    let new: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "new"}})).unwrap();
    configmaps("team-a").create(&PostParams::default(), &new).await.unwrap();
    secrets("team-b").delete("s-2", &DeleteParams::default()).await.unwrap();
    let mut changed = widgets("team-a").get("w-4").await.unwrap();
    changed.data["spec"]["size"] = 400.into();
    widgets("team-a").replace("w-4", &PostParams::default(), &changed).await.unwrap();
    let (ok, later, stderr) = outcome(&mut command(&talosconfig, s3));
    assert!(ok, "{stderr}");
    let later = later["key"].as_str().unwrap();
    let expected = [
        ("configmaps", ("added", "/registry/configmaps/team-a/new")),
        ("secrets", ("removed", "/registry/secrets/team-b/s-2")),
        ("widgets.example.com", ("changed", "/registry/example.com/widgets/team-a/w-4")),
    ];
    for (resource, expected) in expected {
        let (ok, stdout, stderr) =
            run(cli("diff", s3).args([&backups[0], later, "--output", "json", "--resource", resource]));
        assert!(ok, "{stderr}");
        let lines = json_lines(&stdout);
        let changes: Vec<(&str, &str)> =
            lines.iter().map(|l| (l["change"].as_str().unwrap(), l["key"].as_str().unwrap())).collect();
        assert_eq!(changes, [expected], "{resource}");
    }
    let (ok, text, stderr) = run(cli("diff", s3).args([&backups[0], later]));
    assert!(ok, "{stderr}");
    let counts = |resource: &str| {
        text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).any(|w| w[..] == [resource, "1", "0", "0"])
    };
    assert!(counts("configmaps"), "{text}");
    eprintln!("{compared} objects compared with kube-apiserver's across {} backups", backups.len());
}
