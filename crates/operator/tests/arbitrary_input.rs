//! Arbitrary strings (whitespace, control characters, unicode, very long values) in every field a user
//! controls: the spec, the Secret values, the talosconfig, the secrets bundle and the bundleConfig.
//! Nothing may panic; every bad value ends in an error, and no error carries a secret. S3 settings
//! that pass validation go to a real S3 server on loopback, since the S3 client is where values used
//! to panic. The seeds of past failures in `arbitrary_input.proptest-regressions` are replayed
//! first, so a fixed panic stays fixed.

use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use sha2::Digest as _;
use talos_etcd_backup::resolve::validate_spec;
use teb_api::{
    AzureStorage, BackupStorage, GcsStorage, ObjectLock, ObjectLockMode, S3ChecksumAlgorithm, S3Storage, SecretKeyRef,
    TalosControlPlaneRef, TalosEtcdBackupSpec,
};
use teb_pipeline::{
    AzureCredentials, AzureLocation, GcsLocation, Limits, S3Credentials, S3Location, ServiceAccountKey, Storage,
    StorageLocation,
};
use teb_testkit::azure::Azurite;
use teb_testkit::emulator::{EmulatorOptions, TalosEmulator};
use teb_testkit::gcs::GcsServer;
use teb_testkit::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

/// Strings a user could paste: arbitrary unicode, ASCII with control characters, near-valid names,
/// valid values with a stray space or line break, and very long ones.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~\t\n\r\u{0}\u{1}\u{7f}]{0,40}",
        "[a-zA-Z0-9._-]{0,70}",
        prop::sample::select(vec!["my-etcd-backups", "us-west-2", "accessKeyID", "my-controlplane"])
            .prop_flat_map(|v| prop::sample::select(vec![" ", "\n", "\t", "\r\n", "\u{0}", "é", ""])
                .prop_map(move |s| format!("{v}{s}"))),
        prop::collection::vec(any::<char>(), 300..3000).prop_map(String::from_iter),
    ]
}

/// A valid spec, encrypted to `recipient`.
fn spec_with_encryption(recipient: &str) -> TalosEtcdBackupSpec {
    let yaml = "talosControlPlaneRef: {name: cp}\nbackupStorage:\n  s3: {bucket: my-backups, region: us-west-2}\ncompression: zstd\n";
    let mut spec: TalosEtcdBackupSpec = serde_yaml::from_str(yaml).unwrap();
    spec.encryption = Some(teb_api::Encryption {
        age: teb_api::AgeEncryption {
            recipients: vec![recipient.to_owned()],
            recipients_secret_ref: None,
            identity_secret_ref: None,
        },
    });
    spec
}

fn reference() -> impl Strategy<Value = SecretKeyRef> {
    (text(), text()).prop_map(|(name, key)| SecretKeyRef { name, key })
}

/// (Boxed, as the other storage strategies: their nested value trees overflow a test thread's stack.)
fn s3_storage() -> BoxedStrategy<S3Storage> {
    let sse = (proptest::option::of(prop_oneof![text(), Just("aws:kms".to_owned())]), proptest::option::of(text()));
    let mode = prop_oneof![Just(ObjectLockMode::Governance), Just(ObjectLockMode::Compliance)];
    let lock = proptest::option::of((mode, prop_oneof![text(), Just("1d12h".to_owned())]))
        .prop_map(|lock| lock.map(|(mode, retention)| ObjectLock { mode, retention }));
    let checksum = proptest::option::of(prop_oneof![
        Just(S3ChecksumAlgorithm::Crc64Nvme),
        Just(S3ChecksumAlgorithm::Sha256),
        Just(S3ChecksumAlgorithm::None)
    ]);
    (text(), text(), proptest::option::of(text()), reference(), reference(), sse, (lock, checksum))
        .prop_map(|(bucket, region, endpoint, access, secret, (sse, kms), (object_lock, checksum))| S3Storage {
            bucket,
            region,
            endpoint,
            insecure_skip_tls_verify: None,
            access_key_id: Some(access),
            secret_access_key: Some(secret),
            ca_bundle: None,
            server_side_encryption: sse,
            kms_key_id: kms,
            object_lock,
            checksum,
        })
        .boxed()
}

fn azure_storage() -> BoxedStrategy<AzureStorage> {
    let name = |valid: &'static str| prop_oneof![text(), Just(valid.to_owned())];
    (
        name("tebbackups"),
        name("etcd-backups"),
        proptest::option::of(text()),
        proptest::option::of(reference()),
        proptest::option::of(reference()),
    )
        .prop_map(|(account, container, endpoint, account_key, sas_token)| AzureStorage {
            account,
            container,
            endpoint,
            account_key,
            sas_token,
        })
        .boxed()
}

fn gcs_storage() -> BoxedStrategy<GcsStorage> {
    (
        prop_oneof![text(), Just("my-etcd-backups".to_owned())],
        proptest::option::of(text()),
        proptest::option::of(reference()),
    )
        .prop_map(|(bucket, endpoint, service_account_key)| GcsStorage { bucket, endpoint, service_account_key })
        .boxed()
}

/// Any of the three backends, and now and then two at once or none.
fn backup_storage() -> BoxedStrategy<BackupStorage> {
    let one = |s3, azure, gcs| BackupStorage { s3, azure, gcs };
    prop_oneof![
        s3_storage().prop_map(move |s3| one(Some(s3), None, None)),
        azure_storage().prop_map(move |azure| one(None, Some(azure), None)),
        gcs_storage().prop_map(move |gcs| one(None, None, Some(gcs))),
        (
            proptest::option::of(s3_storage()),
            proptest::option::of(azure_storage()),
            proptest::option::of(gcs_storage())
        )
            .prop_map(move |(s3, azure, gcs)| one(s3, azure, gcs)),
    ]
    .boxed()
}

fn spec() -> impl Strategy<Value = TalosEtcdBackupSpec> {
    (text(), backup_storage(), proptest::option::of(reference())).prop_map(|(cp, backup_storage, talosconfig)| {
        TalosEtcdBackupSpec {
            talos_control_plane_ref: TalosControlPlaneRef { name: cp },
            backup_storage,
            compression: None,
            compression_level: None,
            encryption: None,
            recovery_kit: None,
            import_key: None,
            talosconfig_secret_ref: talosconfig,
            deletion_policy: Default::default(),
            verify: false,
        }
    })
}

/// One runtime and the servers every case shares.
struct Ground {
    runtime: tokio::runtime::Runtime,
    /// Bucket `my-etcd-backups`.
    s3: S3Server,
    emulator: TalosEmulator,
    /// Container `etcd-backups`.
    azurite: Azurite,
    /// Bucket `my-etcd-backups`.
    gcs: GcsServer,
}

fn proving_ground() -> &'static Ground {
    static GROUND: OnceLock<Ground> = OnceLock::new();
    GROUND.get_or_init(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (s3, emulator, azurite, gcs) = runtime.block_on(async {
            let s3 = S3Server::start().await.unwrap();
            s3.create_bucket_in("my-etcd-backups", teb_testkit::spec::SPEC_REGION).unwrap();
            let options = EmulatorOptions { control_planes: 1, workers: 0, ..Default::default() };
            let azurite = Azurite::start().await.unwrap();
            azurite.create_container("etcd-backups").await.unwrap();
            let gcs = GcsServer::start().await.unwrap();
            gcs.create_bucket("my-etcd-backups");
            (s3, TalosEmulator::start(options).await.unwrap(), azurite, gcs)
        });
        Ground { runtime, s3, emulator, azurite, gcs }
    })
}

/// Uploads a tiny snapshot through `storage`, if it could be built: the error, if any.
fn try_upload(runtime: &tokio::runtime::Runtime, storage: Result<Storage, teb_pipeline::Error>) -> Option<String> {
    let storage = match storage {
        Ok(storage) => storage,
        Err(e) => return Some(e.to_string()),
    };
    let limits =
        Limits { idle_timeout: Duration::from_secs(5), total_timeout: Duration::from_secs(20), ..Limits::default() };
    let source = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(snapshot()))]);
    let key = "talos-operator-etcd-backups/fuzz/etcd-snapshot.db";
    let result = runtime.block_on(async {
        let upload = storage.create_upload(key, &[]).await?;
        teb_pipeline::run(source, &storage, &upload, &limits, &Default::default(), &|_| {}).await
    });
    result.err().map(|e| e.to_string())
}

/// A tiny but valid snapshot: one 512-byte page and its SHA-256 trailer.
fn snapshot() -> Vec<u8> {
    let db = vec![7u8; 512];
    [db.clone(), sha2::Sha256::digest(&db).to_vec()].concat()
}

/// `public`: values the message may quote (bucket, region, endpoint), as given or Debug-escaped; a
/// secret that happens to be part of one of them is not a leak. Secrets shorter than 12 characters
/// are not checked: random short strings turn up in the messages' own wording.
fn assert_no_secret(message: &str, secrets: &[&str], public: &[&str]) {
    let shown_anyway = |secret: &str| public.iter().any(|p| p.contains(secret) || format!("{p:?}").contains(secret));
    for secret in secrets.iter().map(|s| s.trim()).filter(|s| s.chars().count() >= 12 && !shown_anyway(s)) {
        assert!(!message.contains(secret), "a secret leaked into {message:?}");
    }
}

/// The committed seeds of past failures, by a path from the package root (where cargo runs tests):
/// proptest's default looks for them beside a lib.rs or main.rs, which tests/ does not have.
fn regressions() -> Option<Box<dyn proptest::test_runner::FailurePersistence>> {
    Some(Box::new(proptest::test_runner::FileFailurePersistence::Direct("tests/arbitrary_input.proptest-regressions")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: regressions(), ..ProptestConfig::default() })]

    #[test]
    fn spec_validation_never_panics_and_names_the_field(spec in spec()) {
        if let Err(e) = validate_spec(&spec) {
            let message = e.to_string();
            prop_assert!(message.starts_with("Invalid spec: spec."), "{}", message);
        }
    }

    #[test]
    fn age_keys_never_panic_and_identities_are_never_echoed(recipient in text(), identity in text(), level in any::<i32>()) {
        if let Err(e) = teb_pipeline::codec::parse_recipients([recipient.as_str()]) {
            prop_assert!(e.contains("is not an age X25519 recipient"), "{}", e);
        }
        if let Err(e) = teb_pipeline::codec::parse_identities(&identity) {
            let shown = identity.trim();
            prop_assert!(shown.len() < 8 || !e.contains(shown), "{}", e);
        }
        let mut spec = spec_with_encryption(&recipient);
        spec.compression_level = Some(level);
        if let Err(e) = validate_spec(&spec) {
            prop_assert!(e.to_string().starts_with("Invalid spec: spec."), "{}", e);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..4096), zstd: bool, age: bool) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let format = teb_pipeline::Format { zstd, age };
        let identity = teb_pipeline::Identity::from(age::x25519::Identity::generate());
        // Also a real age header in front, so the decoder gets past it.
        let mut prefixed = b"age-encryption.org/v1\n-> X25519 ".to_vec();
        prefixed.extend_from_slice(&bytes);
        for data in [bytes.clone(), prefixed] {
            let empty = data.is_empty();
            let stream = futures::stream::iter([Ok(bytes::Bytes::from(data))]);
            let result: Result<Vec<bytes::Bytes>, teb_pipeline::Error> = runtime.block_on(async {
                use futures::TryStreamExt as _;
                let decoded = teb_pipeline::codec::decode(stream, format, std::slice::from_ref(&identity)).await?;
                decoded.try_collect().await
            });
            // (An empty zstd stream may decode to nothing; the snapshot check then calls it truncated.)
            if format != teb_pipeline::Format::default() && !empty {
                prop_assert!(result.is_err(), "random bytes decoded as {:?}", format);
            }
        }
    }

    #[test]
    fn talos_parsers_never_panic_nor_echo_keys(endpoint in text(), node in text(), key in text(), garbage in text()) {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let _ = teb_talos::Talosconfig::from_yaml(&garbage).and_then(|c| c.target(None));
        let talosconfig = format!(
            "context: a\ncontexts:\n  a:\n    endpoints: [{endpoint:?}]\n    nodes: [{node:?}]\n    ca: {}\n    crt: {key:?}\n    key: {}\n",
            b64(&garbage), b64(&key)
        );
        if let Err(e) = teb_talos::Talosconfig::from_yaml(&talosconfig).and_then(|c| c.target(None)) {
            assert_no_secret(&e.to_string(), &[&key, &b64(&key)], &[&endpoint, &node, &garbage]);
        }
        let bundle = format!("certs:\n  os:\n    crt: {}\n    key: {}\n", b64(&garbage), b64(&key));
        if let Err(e) = teb_talos::SecretsBundle::from_yaml(&bundle).and_then(|b| b.mint_client(&["os:etcd:backup"], Duration::from_secs(60))) {
            assert_no_secret(&e.to_string(), &[&key, &b64(&key)], &[&endpoint, &node, &garbage]);
        }
        let config = serde_json::json!({"clusterName": garbage, "clientEndpoint": [endpoint]}).to_string();
        if let Ok(config) = serde_json::from_str::<teb_api::BundleConfig>(&config) {
            prop_assert!(!config.talos_endpoints().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: regressions(), ..ProptestConfig::default() })]

    #[test]
    fn s3_settings_never_panic_the_upload(
        bucket in prop_oneof![text(), Just("my-etcd-backups".to_owned())],
        region in prop_oneof![text(), Just("us-west-2".to_owned())],
        scheme in prop::sample::select(vec!["http://", "http://", "https://", "", "ftp://", "http:/"]),
        suffix in prop_oneof![text(), Just(String::new()), Just("/".to_owned())],
        access in prop_oneof![text(), Just(ACCESS_KEY.to_owned())],
        secret in prop_oneof![text(), Just(SECRET_KEY.to_owned())],
    ) {
        let Ground { runtime, s3, .. } = proving_ground();
        // The host stays 127.0.0.1 whatever the suffix, or the case is not sent anywhere.
        let endpoint = format!("{scheme}{}{suffix}", s3.endpoint.trim_start_matches("http://"));
        let public = [bucket.clone(), region.clone(), endpoint.clone()];
        let public: Vec<&str> = public.iter().map(String::as_str).collect();
        let location = S3Location {
            bucket,
            region,
            endpoint: Some(endpoint.clone()),
            insecure_skip_tls_verify: false,
            ca_pem: None,
            credentials: Some(S3Credentials { access_key_id: access.clone(), secret_access_key: secret.clone() }),
            sse: None,
            object_lock: None,
            checksum: teb_pipeline::S3Checksum::Auto,
        };
        let storage = Storage::new(&StorageLocation::S3(location), Duration::from_secs(5));
        if storage.is_ok() {
            let uri: http::Uri = endpoint.parse().expect("a validated endpoint parses");
            prop_assume!(uri.host() == Some("127.0.0.1"));
        }
        if let Some(e) = try_upload(runtime, storage) {
            assert_no_secret(&e, &[&secret], &public);
        }
        prop_assert!(s3.unfinished_uploads().is_empty());
    }

    #[test]
    fn azure_settings_never_panic_the_upload(
        account in prop_oneof![text(), Just(teb_testkit::azure::ACCOUNT.to_owned())],
        container in prop_oneof![text(), Just("etcd-backups".to_owned())],
        suffix in prop_oneof![text(), Just(String::new()), Just("/".to_owned())],
        secret in prop_oneof![text(), Just(teb_testkit::azure::ACCOUNT_KEY.to_owned())],
        sas: bool,
    ) {
        let Ground { runtime, azurite, .. } = proving_ground();
        // The endpoint's host stays 127.0.0.1 after any suffix of its path.
        let endpoint = format!("{}{suffix}", azurite.endpoint);
        let public = [account.clone(), container.clone(), endpoint.clone()];
        let public: Vec<&str> = public.iter().map(String::as_str).collect();
        let credentials = if sas { AzureCredentials::Sas(secret.clone()) } else { AzureCredentials::AccountKey(secret.clone()) };
        let location = AzureLocation { account, container, endpoint: Some(endpoint.clone()), credentials: Some(credentials) };
        let storage = Storage::new(&StorageLocation::Azure(location), Duration::from_secs(5));
        if storage.is_ok() {
            let uri: http::Uri = endpoint.parse().expect("a validated endpoint parses");
            prop_assume!(uri.host() == Some("127.0.0.1"));
        }
        if let Some(e) = try_upload(runtime, storage) {
            assert_no_secret(&e, &[&secret], &public);
        }
        prop_assert!(runtime.block_on(azurite.uncommitted_blobs("etcd-backups")).unwrap().is_empty());
    }

    #[test]
    fn gcs_settings_never_panic_the_upload(
        bucket in prop_oneof![text(), Just("my-etcd-backups".to_owned())],
        suffix in prop_oneof![text(), Just(String::new()), Just("/".to_owned())],
        email in prop_oneof![text(), Just(teb_testkit::gcs::CLIENT_EMAIL.to_owned())],
        private_key in prop_oneof![text(), Just(String::new())],
        whole in text(),
        shape in 0..3u8,
    ) {
        let Ground { runtime, gcs, .. } = proving_ground();
        let endpoint = format!("{}{suffix}", gcs.endpoint);
        let mut key: serde_json::Value = serde_json::from_str(&gcs.service_account_key()).unwrap();
        let pem = key["private_key"].as_str().unwrap().to_owned();
        // The server's key with another account; a key whose PEM is garbage; garbage for a file.
        let (json, secret) = match shape {
            0 => {
                key["client_email"] = email.clone().into();
                (key.to_string(), pem)
            }
            1 => {
                key["private_key"] = private_key.clone().into();
                (key.to_string(), private_key)
            }
            _ => (whole.clone(), whole),
        };
        let public = [bucket.clone(), endpoint.clone(), email];
        let public: Vec<&str> = public.iter().map(String::as_str).collect();
        let location = GcsLocation { bucket, endpoint: Some(endpoint.clone()), service_account_key: Some(ServiceAccountKey(json)) };
        let storage = Storage::new(&StorageLocation::Gcs(location), Duration::from_secs(5));
        if storage.is_ok() {
            let uri: http::Uri = endpoint.parse().expect("a validated endpoint parses");
            prop_assume!(uri.host() == Some("127.0.0.1"));
        }
        if let Some(e) = try_upload(runtime, storage) {
            // A PEM's lines, not just the whole: a message could quote one.
            let lines: Vec<&str> = secret.lines().filter(|l| !l.starts_with("-----")).collect();
            assert_no_secret(&e, &[&[secret.as_str()], lines.as_slice()].concat(), &public);
        }
        prop_assert!(gcs.unfinished_uploads().is_empty());
    }

    #[test]
    fn node_names_never_panic_the_talos_client(node in text()) {
        let Ground { runtime, emulator, .. } = proving_ground();
        let target = teb_talos::Talosconfig::from_yaml(&emulator.talosconfig(&["os:etcd:backup"]).unwrap())
            .unwrap()
            .target(None)
            .unwrap();
        // Calls go to the emulator on loopback; the node name is only request metadata.
        runtime.block_on(async {
            let client = teb_talos::TalosClient::connect(&target, Duration::from_secs(5)).await.unwrap();
            let _ = client.etcd_status(&node).await;
            let _ = client.choose_node(std::slice::from_ref(&node)).await;
        });
    }
}
