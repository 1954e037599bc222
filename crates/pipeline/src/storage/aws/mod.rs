//! Amazon S3 and S3-compatible stores (MinIO, Ceph, R2, ...): the location's settings, their checks,
//! the client built from them and how S3 names its failures. Everything S3-specific lives here; the
//! rest of the crate sees only [`Storage`].

mod content_md5;
pub mod validate;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, Checksum};
use object_store::{Certificate, ClientOptions};

pub use validate::S3Field;

use super::check::classify;
use super::{Failure, LockedWriter, Storage, Uploads, client_options, retry};
use crate::Error;

/// The service, as messages name it.
pub const SERVICE: &str = "S3";

/// S3 access keys. Debug output never shows them.
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("S3Credentials { .. }")
    }
}

/// A bucket and how to reach it.
#[derive(Clone, Debug)]
pub struct S3Location {
    pub bucket: String,
    pub region: String,
    /// Custom endpoint (S3-compatible stores); requests are then path-style.
    pub endpoint: Option<String>,
    pub insecure_skip_tls_verify: bool,
    /// Extra PEM CA certificates to trust for the endpoint.
    pub ca_pem: Option<String>,
    /// Access keys; `None` for the process's own credentials, found as the AWS SDKs find them
    /// (`AWS_*` environment variables, web identity, container credentials, instance metadata).
    pub credentials: Option<S3Credentials>,
    /// Server-side encryption asked of S3 for every object written.
    pub sse: Option<ServerSideEncryption>,
    /// S3 Object Lock set on every object written.
    pub object_lock: Option<ObjectLock>,
    /// How each write's body is checked by the store.
    pub checksum: S3Checksum,
}

/// How each PutObject and part proves its body to the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum S3Checksum {
    /// `Crc64Nvme` on AWS and wherever Object Lock is asked (a locked write needs a checksum, and
    /// object_store sends no Content-MD5); `None` on any other custom endpoint, because some
    /// S3-compatible stores refuse flexible-checksum headers (`NotImplemented`, `InvalidRequest`) and
    /// every SigV4 store checks a signed body.
    #[default]
    Auto,
    /// `x-amz-checksum-crc64nvme` on every write (a signed header; S3 answers `BadDigest` on a
    /// mismatch): a tenth of SHA-256's CPU.
    Crc64Nvme,
    /// `x-amz-checksum-sha256` on every write.
    Sha256,
    /// `Content-MD5` on every write, which every S3 implementation checks and takes for Object Lock:
    /// for stores that refuse flexible-checksum headers but lock objects.
    Md5,
    /// No flexible-checksum header: the body's SHA-256 is signed instead (`x-amz-content-sha256`),
    /// which every SigV4 store checks.
    None,
}

impl S3Checksum {
    /// From its name in a spec or on the command line: `CRC64NVME`, `SHA256`, `None` or `Auto`, in any case.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "auto" => Ok(S3Checksum::Auto),
            "crc64nvme" => Ok(S3Checksum::Crc64Nvme),
            "sha256" => Ok(S3Checksum::Sha256),
            "md5" => Ok(S3Checksum::Md5),
            "none" => Ok(S3Checksum::None),
            _ => Err(format!("{text:?} is not a checksum this tool writes: use CRC64NVME, SHA256, MD5, None or Auto")),
        }
    }

    /// The name users write.
    pub fn name(self) -> &'static str {
        match self {
            S3Checksum::Auto => "Auto",
            S3Checksum::Crc64Nvme => "CRC64NVME",
            S3Checksum::Sha256 => "SHA256",
            S3Checksum::Md5 => "MD5",
            S3Checksum::None => "None",
        }
    }

    /// Itself, if it can go with Object Lock when `locked`: S3 takes a locked write only with a
    /// checksum it checks (Content-MD5 or a flexible one).
    pub fn with_lock(self, locked: bool) -> Result<Self, String> {
        match self {
            S3Checksum::None if locked => {
                let why = "None cannot go with Object Lock, whose writes need a checksum the store checks";
                Err(format!("{why}: use CRC64NVME, SHA256 or MD5"))
            }
            checksum => Ok(checksum),
        }
    }

    /// What `Auto` means for `location`; any other choice is itself.
    pub fn effective(location: &S3Location) -> S3Checksum {
        match location.checksum {
            S3Checksum::Auto if location.endpoint.is_some() && location.object_lock.is_none() => S3Checksum::None,
            S3Checksum::Auto => S3Checksum::Crc64Nvme,
            chosen => chosen,
        }
    }
}

/// S3 Object Lock on every object written: its mode, and for how long from the write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub retention: Duration,
}

/// Who may lift a lock early: in GOVERNANCE mode, users with `s3:BypassGovernanceRetention`; in
/// COMPLIANCE mode, nobody, the account's root user included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

/// The longest retention taken: 100 years, as S3 allows.
const MAX_RETENTION_DAYS: u64 = 36_500;

impl ObjectLock {
    /// From the mode as S3 names it and a retention such as `30d`, `12h`, `1d12h` or `90s`.
    pub fn parse(mode: &str, retention: &str) -> Result<Self, String> {
        let mode = match mode {
            "GOVERNANCE" => LockMode::Governance,
            "COMPLIANCE" => LockMode::Compliance,
            other => return Err(format!("mode {other:?} is not an Object Lock mode: use GOVERNANCE or COMPLIANCE")),
        };
        let retention = retention_duration(retention)?;
        Ok(ObjectLock { mode, retention })
    }
}

impl LockMode {
    /// As S3 names it.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// `<number><unit>`, repeated: units `d` (24 hours), `h`, `m`, `s`; at least a second, at most
/// 100 years.
fn retention_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        Err(format!(
            "retention {} {why}: write it as a number and a unit, d, h, m or s, such as 30d, 36h or 1d12h",
            super::check::quote(text)
        ))
    };
    let mut seconds: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        let unit = match c {
            '0'..='9' if digits.len() < 12 => {
                digits.push(c);
                continue;
            }
            '0'..='9' => return bad("has too many digits"),
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            other => return bad(&format!("holds {}", super::check::describe_char(other))),
        };
        let Ok(count) = digits.parse::<u64>() else {
            return bad("has a unit without a number before it");
        };
        digits.clear();
        seconds = seconds.saturating_add(count.saturating_mul(unit));
    }
    if !digits.is_empty() || text.is_empty() {
        return bad("must end with a unit");
    }
    if seconds == 0 {
        return bad("is zero: a lock needs at least one second");
    }
    if seconds > MAX_RETENTION_DAYS * 86_400 {
        return bad("is longer than S3's longest, 100 years (36500d)");
    }
    Ok(Duration::from_secs(seconds))
}

/// Server-side encryption of the objects written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerSideEncryption {
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS (`aws:kms`), with a key, or the bucket's default one.
    Kms { key_id: Option<String> },
}

impl ServerSideEncryption {
    /// From the names S3 uses (`AES256`, `aws:kms`) and an optional KMS key.
    pub fn parse(algorithm: &str, kms_key_id: Option<&str>) -> Result<Self, String> {
        match (algorithm, kms_key_id) {
            ("AES256", None) => Ok(ServerSideEncryption::S3),
            ("AES256", Some(_)) => Err("a KMS key goes only with aws:kms".to_owned()),
            ("aws:kms", Some(key)) if !kms_key_id_valid(key) => Err(format!(
                "kmsKeyID is not a KMS key ID, alias or ARN: use letters, digits and :/_.+=,@- only, 1 to 2048 of \
                 them (it has {} characters)",
                key.chars().count()
            )),
            ("aws:kms", key) => Ok(ServerSideEncryption::Kms { key_id: key.map(str::to_owned) }),
            (other, _) => Err(format!("{other:?} is not a server-side encryption S3 knows: use AES256 or aws:kms")),
        }
    }
}

/// object_store's `aws_server_side_encryption` setting (its key enum is not exported by name).
fn sse_key() -> object_store::aws::AmazonS3ConfigKey {
    "aws_server_side_encryption".parse().expect("object_store knows aws_server_side_encryption")
}

/// A KMS key ID, alias or ARN: what fits in a header, as KMS spells them.
fn kms_key_id_valid(key: &str) -> bool {
    (1..=2048).contains(&key.len()) && key.chars().all(|c| c.is_ascii_alphanumeric() || ":/_.+=,@-".contains(c))
}

/// The storage handle of `location`; `request_timeout` bounds each request, a part upload included.
/// The location is validated first: nothing unchecked reaches the S3 client.
pub(super) fn build(location: &S3Location, request_timeout: Duration) -> Result<Storage, Error> {
    location.validate()?;
    let mut options =
        client_options(request_timeout).with_allow_invalid_certificates(location.insecure_skip_tls_verify);
    let builder = match &location.credentials {
        Some(keys) => AmazonS3Builder::new()
            .with_access_key_id(&keys.access_key_id)
            .with_secret_access_key(&keys.secret_access_key),
        None => AmazonS3Builder::from_env(),
    };
    // Every write's body is checked by the store (see S3Checksum): by a flexible checksum, a signed
    // header, with the body itself unsigned (CRC64-NVME costs a tenth of a second SHA-256 pass, which
    // was ~0.65 CPU-s per GiB); or, without one, by signing the body's SHA-256.
    let checksum = S3Checksum::effective(location);
    let mut builder = builder
        .with_bucket_name(&location.bucket)
        .with_region(&location.region)
        .with_retry(retry())
        .with_unsigned_payload(checksum != S3Checksum::None);
    builder = match checksum {
        S3Checksum::Crc64Nvme | S3Checksum::Auto => builder.with_checksum_algorithm(Checksum::CRC64NVME),
        S3Checksum::Sha256 => builder.with_checksum_algorithm(Checksum::SHA256),
        S3Checksum::Md5 => builder.with_http_connector(content_md5::ContentMd5Connector),
        S3Checksum::None => builder,
    };
    builder = match &location.sse {
        None => builder,
        Some(ServerSideEncryption::S3) => builder.with_config(sse_key(), "AES256"),
        Some(ServerSideEncryption::Kms { key_id: Some(key) }) => builder.with_sse_kms_encryption(key),
        Some(ServerSideEncryption::Kms { key_id: None }) => builder.with_config(sse_key(), "aws:kms"),
    };
    if let Some(endpoint) = location.endpoint.as_deref() {
        let url = endpoint.trim_end_matches('/');
        options = options.with_allow_http(url.starts_with("http://"));
        builder = builder.with_endpoint(url).with_virtual_hosted_style_request(false);
    }
    if let Some(pem) = location.ca_pem.as_deref() {
        let certs = Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| Error::Invalid {
            service: SERVICE,
            field: S3Field::CaBundle.name(),
            reason: e.to_string(),
        })?;
        for cert in certs {
            options = options.with_root_certificate(cert);
        }
    }
    let locked_writer = location.object_lock.map(|lock| {
        let (builder, options) = (builder.clone(), options.clone());
        Arc::new(move || locked_writer(&builder, &options, lock, checksum)) as super::LockedWriters
    });
    let store = builder
        .with_client_options(options.clone())
        .build()
        .map_err(|e| Error::Config { service: SERVICE, message: e.to_string() })?;
    // The bucket's URL as object_store addresses it: path-style on a custom endpoint; on AWS
    // virtual-hosted, unless a dot in the name would break the certificate's wildcard.
    let (bucket, region) = (&location.bucket, &location.region);
    let base = match location.endpoint.as_deref() {
        Some(endpoint) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
        None if bucket.contains('.') => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        None => format!("https://{bucket}.s3.{region}.amazonaws.com"),
    };
    let lister = super::listing::Lister::s3(store.credentials().clone(), region, &options, base)
        .map_err(|e| Error::Config { service: SERVICE, message: e.to_string() })?;
    let asked = Asked {
        encryption: location.sse.is_some(),
        lock: location.object_lock.is_some(),
        checksum: matches!(checksum, S3Checksum::Crc64Nvme | S3Checksum::Sha256),
    };
    let failure = Arc::new(move |e| failure(e, asked));
    Ok(Storage {
        store: Arc::new(store),
        uploads: Uploads::Named,
        service: SERVICE,
        container: format!("bucket {:?}", location.bucket),
        failure,
        locked_writer,
        lister: Some(Arc::new(lister)),
    })
}

/// A client whose writes lock what they create until `lock.retention` from now. S3 takes a lock as
/// headers of the PutObject or CreateMultipartUpload that creates the object, so the date is fixed
/// per client: one is built for each write (parts and completion go through the usual client). Its
/// requests also name their checksum's algorithm as the AWS SDKs do (`x-amz-sdk-checksum-algorithm`):
/// S3 needs only the checksum, but moto takes a locked PutObject only with that header or Content-MD5
/// (moto 5.2.6 `s3/responses.py`, MissingUploadObjectWithObjectLockHeaders).
fn locked_writer(
    builder: &AmazonS3Builder,
    options: &ClientOptions,
    lock: ObjectLock,
    checksum: S3Checksum,
) -> Result<LockedWriter, Error> {
    let now = jiff::Timestamp::now();
    // Whole seconds, rounded up: never shorter than asked.
    let seconds = now.as_second() + lock.retention.as_secs() as i64 + i64::from(now.subsec_nanosecond() > 0);
    let until = jiff::Timestamp::from_second(seconds)
        .map_err(|e| Error::Config { service: SERVICE, message: format!("Object Lock retention: {e}") })?;
    let mut headers = http::HeaderMap::new();
    headers.insert("x-amz-object-lock-mode", http::HeaderValue::from_static(lock.mode.as_str()));
    let date = until.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    headers.insert("x-amz-object-lock-retain-until-date", http::HeaderValue::try_from(date).expect("a date is ASCII"));
    if matches!(checksum, S3Checksum::Crc64Nvme | S3Checksum::Sha256) {
        headers.insert("x-amz-sdk-checksum-algorithm", http::HeaderValue::from_static(checksum.name()));
    }
    let store = builder
        .clone()
        .with_client_options(options.clone().with_default_headers(headers))
        .build()
        .map_err(|e| Error::Config { service: SERVICE, message: e.to_string() })?;
    Ok(LockedWriter { store: Arc::new(store), until })
}

/// S3 error codes that another try cannot fix: credentials, the bucket, the request itself.
const PERMANENT_CODES: [&str; 10] = [
    "AccessDenied",
    "NotImplemented",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "InvalidBucketName",
    "AuthorizationHeaderMalformed",
    "PermanentRedirect",
    "InvalidArgument",
    "InvalidRequest",
];

/// What the location asks of S3 beyond a plain write, for messages that say which setting a refusal
/// is about.
#[derive(Clone, Copy)]
struct Asked {
    encryption: bool,
    lock: bool,
    /// Flexible-checksum headers are sent.
    checksum: bool,
}

/// What failed, as S3 says it. A write refused without server-side encryption may be a bucket
/// policy that requires it; a lock refused, a bucket created without Object Lock: the message then
/// says so.
fn failure(e: object_store::Error, asked: Asked) -> Failure {
    classify(e, &PERMANENT_CODES, |code, message| {
        let hint = match code {
            "AccessDenied" if !asked.encryption => {
                "if a bucket policy requires server-side encryption, set backupStorage.s3.serverSideEncryption: \
                 AES256 or aws:kms"
            }
            "NotImplemented" | "InvalidRequest" | "InvalidArgument" if asked.checksum && !asked.lock => {
                "a store that refuses flexible-checksum headers takes the body's signed SHA-256 instead: set \
                 backupStorage.s3.checksum: None, or --checksum none on the command line"
            }
            "InvalidRequest" if asked.lock && message.contains("Object Lock") => {
                "Object Lock needs a bucket created with Object Lock enabled, such as by aws s3api create-bucket \
                 --object-lock-enabled-for-bucket; without backupStorage.s3.objectLock, or --object-lock-mode on \
                 the command line, objects are written unlocked"
            }
            "NotImplemented" | "InvalidRequest" | "InvalidArgument" if asked.checksum && asked.lock => {
                "a store that refuses flexible-checksum headers may take a locked write checked by Content-MD5: set \
                 backupStorage.s3.checksum: MD5, or --checksum md5 on the command line"
            }
            _ => return None,
        };
        Some(hint.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StorageLocation;

    #[test]
    fn server_side_encryption_names_are_s3s() {
        assert_eq!(ServerSideEncryption::parse("AES256", None), Ok(ServerSideEncryption::S3));
        let kms = ServerSideEncryption::parse("aws:kms", Some("alias/backups")).unwrap();
        assert_eq!(kms, ServerSideEncryption::Kms { key_id: Some("alias/backups".into()) });
        assert!(ServerSideEncryption::parse("AES256", Some("k")).unwrap_err().contains("only with aws:kms"));
        assert!(ServerSideEncryption::parse("aes", None).unwrap_err().contains("use AES256 or aws:kms"));
    }

    #[test]
    fn object_lock_retentions_read_as_s3_takes_them() {
        let lock = ObjectLock::parse("COMPLIANCE", "1d12h").unwrap();
        assert_eq!(lock, ObjectLock { mode: LockMode::Compliance, retention: Duration::from_secs(36 * 3600) });
        assert_eq!(ObjectLock::parse("GOVERNANCE", "90s").unwrap().retention, Duration::from_secs(90));
        assert!(ObjectLock::parse("governance", "1d").unwrap_err().contains("use GOVERNANCE or COMPLIANCE"));
        for (text, why) in [
            ("", "must end with a unit"),
            ("30", "must end with a unit"),
            ("d", "without a number"),
            ("0s", "is zero"),
            ("36501d", "100 years"),
            ("1w", "the character 'w'"),
            ("1 d", "a space"),
            ("9999999999999d", "too many digits"),
        ] {
            let err = ObjectLock::parse("GOVERNANCE", text).unwrap_err();
            assert!(err.contains(why) && err.contains("such as 30d"), "{text:?}: {err}");
        }
    }

    #[test]
    fn auto_checksums_on_aws_and_for_locks_and_signs_the_body_elsewhere() {
        let mut location = S3Location {
            bucket: "b".into(),
            region: "us-east-1".into(),
            endpoint: None,
            insecure_skip_tls_verify: false,
            ca_pem: None,
            credentials: None,
            sse: None,
            object_lock: None,
            checksum: S3Checksum::Auto,
        };
        assert_eq!(S3Checksum::effective(&location), S3Checksum::Crc64Nvme);
        location.endpoint = Some("https://minio.example.com".into());
        assert_eq!(S3Checksum::effective(&location), S3Checksum::None);
        location.object_lock = Some(ObjectLock::parse("GOVERNANCE", "1d").unwrap());
        assert_eq!(S3Checksum::effective(&location), S3Checksum::Crc64Nvme);
        location.checksum = S3Checksum::Sha256;
        assert_eq!(S3Checksum::effective(&location), S3Checksum::Sha256);
        assert_eq!(S3Checksum::parse("crc64nvme"), Ok(S3Checksum::Crc64Nvme));
        assert_eq!(S3Checksum::parse("MD5"), Ok(S3Checksum::Md5));
        assert!(S3Checksum::parse("crc32").unwrap_err().contains("use CRC64NVME, SHA256, MD5, None or Auto"));
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let creds = S3Credentials { access_key_id: "AKIAEXAMPLE".into(), secret_access_key: "s3cr3t".into() };
        let text = format!("{creds:?}");
        assert!(!text.contains("AKIAEXAMPLE") && !text.contains("s3cr3t"));
    }

    #[test]
    fn endpoints_must_be_urls() {
        let location = S3Location {
            bucket: "my-backups".into(),
            region: "us-east-1".into(),
            endpoint: Some("minio.example.com".into()),
            insecure_skip_tls_verify: false,
            ca_pem: None,
            credentials: Some(S3Credentials { access_key_id: "a".into(), secret_access_key: "s".into() }),
            sse: None,
            object_lock: None,
            checksum: S3Checksum::Auto,
        };
        let err = Storage::new(&StorageLocation::S3(location), Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().starts_with("invalid S3 endpoint: \"minio.example.com\""), "{err}");
    }
}
