//! Checks on S3 settings before any of them reaches the S3 client. object_store panics when it cannot
//! build a URI or header from a setting (a bucket, region or endpoint with whitespace or a control
//! character), and a subtly wrong value (an endpoint with a path, a bucket with invalid characters)
//! otherwise comes back as a misleading S3 error such as `NoSuchBucket` or `SignatureDoesNotMatch`.
//! Messages quote bucket, region and endpoint (they are not secrets) but never a key.

use super::{S3Location, SERVICE};
use crate::Error;
use crate::storage::check::{describe_char, quote};

/// The S3 setting an [`Error::Invalid`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Field {
    Bucket,
    Region,
    Endpoint,
    AccessKeyId,
    SecretAccessKey,
    CaBundle,
    Checksum,
}

impl S3Field {
    /// The field's name as the TalosEtcdBackup spec spells it.
    pub fn name(self) -> &'static str {
        match self {
            S3Field::Bucket => "bucket",
            S3Field::Region => "region",
            S3Field::Endpoint => "endpoint",
            S3Field::AccessKeyId => "accessKeyID",
            S3Field::SecretAccessKey => "secretAccessKey",
            S3Field::CaBundle => "caBundle",
            S3Field::Checksum => "checksum",
        }
    }
}

impl std::fmt::Display for S3Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl S3Location {
    /// Every setting checked, the first problem returned.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field: S3Field, reason| Error::Invalid { service: SERVICE, field: field.name(), reason };
        bucket(&self.bucket).map_err(|r| invalid(S3Field::Bucket, r))?;
        region(&self.region).map_err(|r| invalid(S3Field::Region, r))?;
        if let Some(url) = &self.endpoint {
            endpoint(url).map_err(|r| invalid(S3Field::Endpoint, r))?;
        }
        if let Some(keys) = &self.credentials {
            access_key_id(&keys.access_key_id).map_err(|r| invalid(S3Field::AccessKeyId, r))?;
            secret_access_key(&keys.secret_access_key).map_err(|r| invalid(S3Field::SecretAccessKey, r))?;
        }
        if let Some(pem) = &self.ca_pem {
            ca_bundle(pem).map_err(|r| invalid(S3Field::CaBundle, r))?;
        }
        self.checksum.with_lock(self.object_lock.is_some()).map_err(|r| invalid(S3Field::Checksum, r))?;
        Ok(())
    }
}

/// S3's bucket naming rules: 3 to 63 characters; lowercase letters, digits, dots and hyphens;
/// beginning and ending with a letter or digit; no two adjacent dots; not shaped like an IP address.
pub fn bucket(name: &str) -> Result<(), String> {
    let bad = |rule: &str| Err(format!("{} is not a valid S3 bucket name: {rule}", quote(name)));
    if !(3..=63).contains(&name.len()) {
        return bad("it must be 3 to 63 characters long");
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '.' || *c == '-')) {
        return bad(&format!(
            "it holds {}; only lowercase letters, digits, dots and hyphens are allowed",
            describe_char(c)
        ));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(name.chars().next()) || !edge_ok(name.chars().last()) {
        return bad("it must begin and end with a letter or digit");
    }
    if name.contains("..") {
        return bad("it must not hold two adjacent dots");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return bad("it must not be formatted as an IP address");
    }
    Ok(())
}

pub fn region(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a valid region: use letters, digits, hyphens and underscores only, such as us-west-2",
            quote(name)
        ))
    }
}

/// `http(s)://host[:port]`, with nothing after the authority but an optional `/`.
pub fn endpoint(url: &str) -> Result<(), String> {
    super::super::check::url(url, None)
}

/// Access key IDs go into the Authorization header: printable ASCII, no spaces.
pub fn access_key_id(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 256 {
        return Err("it must be 1 to 256 characters long".into());
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("it holds a space, a line break, a control or a non-ASCII character; \
                    an access key ID is printable ASCII only"
            .into());
    }
    Ok(())
}

/// Secret keys only sign requests; still, no control characters (a pasted line break is a mistake).
pub fn secret_access_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 1024 {
        return Err("it must be 1 to 1024 characters long".into());
    }
    if key.chars().any(char::is_control) {
        return Err("it holds a line break or another control character".into());
    }
    Ok(())
}

/// At least one PEM certificate, and every one of them a parsable X.509 certificate.
pub fn ca_bundle(pem: &str) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut count = 0;
    for (i, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let cert = cert.map_err(|e| format!("PEM block {} cannot be read: {e}", i + 1))?;
        x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| format!("certificate {} is not a valid X.509 certificate: {e}", i + 1))?;
        count += 1;
    }
    if count == 0 {
        return Err("it holds no PEM certificate (no -----BEGIN CERTIFICATE----- block)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3_rules() {
        for ok in ["my-etcd-backups", "my-backups", "a.b-c", "abc", &"a".repeat(63)] {
            assert!(bucket(ok).is_ok(), "{ok}");
        }
        let cases = [
            ("my bucket", "a space"),
            ("my-bucket\n", "a line break"),
            ("My-Bucket", "uppercase"),
            ("ab", "3 to 63"),
            ("-abc", "begin and end"),
            ("a..b", "adjacent dots"),
            ("192.168.1.1", "IP address"),
            ("under_score", "'_'"),
        ];
        for (name, why) in cases {
            let err = bucket(name).unwrap_err();
            assert!(err.contains(why), "{name:?}: {err}");
        }
    }

    #[test]
    fn endpoints_are_scheme_host_and_port_only() {
        for ok in ["https://minio.example.com", "http://127.0.0.1:9000", "https://s3.example.com/", "http://[::1]:9000"]
        {
            assert!(endpoint(ok).is_ok(), "{ok}: {:?}", endpoint(ok));
        }
        let cases = [
            ("minio.example.com", "must start with"),
            ("https://minio.example.com/bucket", "path"),
            ("https://minio.example.com?x=1", "path or query"),
            ("https://minio.example.com\n", "line break"),
            ("https://minio .example.com", "a space"),
            ("https://user:pw@minio.example.com", "user information"),
            ("https://minio.example.com:99999", "port"),
            ("https://", "no host"),
        ];
        for (url, why) in cases {
            let err = endpoint(url).unwrap_err();
            assert!(err.contains(why), "{url:?}: {err}");
        }
    }

    #[test]
    fn key_errors_never_quote_the_key() {
        for key in ["AKIA EXAMPLE", "AKIAEXAMPLE\n", "AKIA\u{7f}", "AKIAÉ"] {
            let err = access_key_id(key).unwrap_err();
            assert!(!err.contains("AKIA"), "{err}");
        }
        assert!(secret_access_key("s3cr3t\r\n").unwrap_err().contains("line break"));
        assert!(secret_access_key("a b").is_ok());
    }

    #[test]
    fn ca_bundles_must_hold_certificates() {
        assert!(ca_bundle("garbage").unwrap_err().contains("no PEM certificate"));
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(ca_bundle(broken).unwrap_err().contains("not a valid X.509"), "{:?}", ca_bundle(broken));
    }

    #[test]
    fn regions() {
        assert!(region("us-west-2").is_ok() && region("auto").is_ok());
        assert!(region("us-west-2 ").unwrap_err().contains("\"us-west-2 \""));
        assert!(region("").is_err());
    }
}
