use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::{Error, mint};

/// PEM material for mTLS with apid. Debug output never shows the key.
#[derive(Clone)]
pub struct Credentials {
    /// The Talos OS CA, PEM.
    pub ca_pem: String,
    /// The client certificate, PEM.
    pub crt_pem: String,
    /// The client key, PEM (PKCS#8; `ED25519 PRIVATE KEY` labels are accepted).
    pub key_pem: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

/// Where and as whom to reach the Talos API.
#[derive(Clone, Debug)]
pub struct Target {
    /// apid endpoints: `host`, `host:port` or `https://host:port`; port 50000 when none is given.
    pub endpoints: Vec<String>,
    /// Nodes to consider for the snapshot, besides the etcd members the endpoint reports.
    pub nodes: Vec<String>,
    pub credentials: Credentials,
}

/// A talosconfig file (`talosctl config`'s format).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Talosconfig {
    pub context: String,
    pub contexts: BTreeMap<String, TalosContext>,
}

/// One context of a talosconfig; `ca`, `crt` and `key` are base64 of PEM.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct TalosContext {
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    #[serde(default)]
    pub ca: String,
    #[serde(default)]
    pub crt: String,
    #[serde(default)]
    pub key: String,
}

impl fmt::Debug for TalosContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TalosContext")
            .field("endpoints", &self.endpoints)
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}

impl Talosconfig {
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        serde_yaml::from_str(text).map_err(|e| Error::Talosconfig(yaml_error(&e)))
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("talosconfig always serializes")
    }

    /// A talosconfig with one context named `name`.
    pub fn single(name: &str, endpoints: Vec<String>, nodes: Vec<String>, credentials: &Credentials) -> Self {
        let context = TalosContext {
            endpoints,
            nodes,
            ca: BASE64.encode(&credentials.ca_pem),
            crt: BASE64.encode(&credentials.crt_pem),
            key: BASE64.encode(&credentials.key_pem),
        };
        Talosconfig { context: name.to_owned(), contexts: BTreeMap::from([(name.to_owned(), context)]) }
    }

    /// The target of `context`, or of the file's current context when `None`.
    pub fn target(&self, context: Option<&str>) -> Result<Target, Error> {
        let name = context.unwrap_or(&self.context);
        let ctx = self.contexts.get(name).ok_or_else(|| {
            let known: Vec<_> = self.contexts.keys().map(String::as_str).collect();
            Error::Talosconfig(format!("context {name:?} not found (contexts: {})", known.join(", ")))
        })?;
        if ctx.endpoints.is_empty() {
            return Err(Error::Talosconfig(format!("context {name:?} has no endpoints")));
        }
        let field = |value: &str, what: &str| {
            decode_pem(value).map_err(|reason| Error::Talosconfig(format!("context {name:?}: {what}: {reason}")))
        };
        let credentials = Credentials {
            ca_pem: field(&ctx.ca, "ca")?,
            crt_pem: field(&ctx.crt, "crt")?,
            key_pem: normalize_key_pem(&field(&ctx.key, "key")?),
        };
        let key = rcgen::KeyPair::from_pem(&credentials.key_pem)
            .map_err(|e| Error::Talosconfig(format!("context {name:?}: key is not a usable private key: {e}")))?;
        mint::check_key_matches(&credentials.crt_pem, &key)
            .map_err(|r| Error::Talosconfig(format!("context {name:?}: key does not match crt: {r}")))?;
        Ok(Target { endpoints: ctx.endpoints.clone(), nodes: ctx.nodes.clone(), credentials })
    }
}

/// A secrets bundle (`talosctl gen secrets`); only the Talos OS CA is read, every other field is ignored.
#[derive(Clone, Deserialize)]
pub struct SecretsBundle {
    certs: BundleCerts,
}

#[derive(Clone, Deserialize)]
struct BundleCerts {
    os: CertAndKey,
}

#[derive(Clone, Deserialize)]
struct CertAndKey {
    crt: String,
    #[serde(default)]
    key: String,
}

impl SecretsBundle {
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        serde_yaml::from_str(text).map_err(|e| Error::SecretsBundle(yaml_error(&e)))
    }

    /// Mints a client certificate signed by the bundle's OS CA, carrying `roles` in Subject O and
    /// ExtKeyUsage exactly ClientAuth, valid from a minute ago for `validity`; its key is of the CA's
    /// type, as talosctl mints them.
    pub fn mint_client(&self, roles: &[&str], validity: Duration) -> Result<Credentials, Error> {
        use rcgen::{ExtendedKeyUsagePurpose, Issuer, KeyPair};
        let ca_pem = decode_pem(&self.certs.os.crt).map_err(|r| Error::SecretsBundle(format!("certs.os.crt: {r}")))?;
        if self.certs.os.key.is_empty() {
            return Err(Error::SecretsBundle("certs.os.key is empty".into()));
        }
        let ca_key_pem = normalize_key_pem(
            &decode_pem(&self.certs.os.key).map_err(|r| Error::SecretsBundle(format!("certs.os.key: {r}")))?,
        );
        let ca_key = KeyPair::from_pem(&ca_key_pem)
            .map_err(|e| Error::SecretsBundle(format!("certs.os.key is not a usable private key: {e}")))?;
        mint::check_key_matches(&ca_pem, &ca_key)
            .map_err(|r| Error::SecretsBundle(format!("certs.os.key does not match certs.os.crt: {r}")))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
            .map_err(|e| Error::SecretsBundle(format!("certs.os.crt is not a usable CA certificate: {e}")))?;
        let minted = mint::mint_client_certificate(&issuer, roles, &[ExtendedKeyUsagePurpose::ClientAuth], validity)?;
        Ok(Credentials { ca_pem, crt_pem: minted.crt_pem, key_pem: minted.key_pem })
    }
}

/// What `talosctl gen config --with-secrets` would refuse in the secrets bundle `text`, as Talos's
/// `Bundle.Validate` (pkg/machinery/config/generate/secrets/bundle.go, v1.13.0) checks it: `cluster.id`
/// and `.secret`, `secrets.bootstraptoken`, exactly one of `secrets.secretboxencryptionsecret` and
/// `.aescbcencryptionsecret`, `trustdinfo.token`, and a PEM certificate and private key under
/// `certs.etcd`, `.k8s`, `.k8saggregator`, `.os` (a key under `.k8sserviceaccount`). Empty when it
/// loads; messages name fields, never values.
pub fn gen_config_problems(text: &str) -> Vec<String> {
    let bundle: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(value) => value,
        Err(e) => return vec![yaml_error(&e)],
    };
    let field = |path: &str| {
        path.split('.').try_fold(&bundle, |v, k| v.get(k)).and_then(|v| v.as_str()).filter(|v| !v.trim().is_empty())
    };
    let mut problems = Vec::new();
    for required in ["cluster.id", "cluster.secret", "secrets.bootstraptoken", "trustdinfo.token"] {
        if field(required).is_none() {
            problems.push(format!("{required} is required"));
        }
    }
    let encryption = ["secrets.secretboxencryptionsecret", "secrets.aescbcencryptionsecret"];
    match encryption.iter().filter(|f| field(f).is_some()).count() {
        0 => problems.push(format!("one of [{}] is required", encryption.join(", "))),
        2 => problems.push(format!("only one of [{}] is allowed", encryption.join(", "))),
        _ => {}
    }
    use rustls_pki_types::pem::PemObject as _;
    let key_problem = |path: String| {
        let pem = decode_pem(field(&path).unwrap_or_default()).map_err(|r| format!("{path} is invalid: {r}"))?;
        rustls_pki_types::PrivateKeyDer::from_pem_slice(normalize_key_pem(&pem).as_bytes())
            .map(drop)
            .map_err(|_| format!("{path} is invalid: not a PEM private key"))
    };
    for certs in ["etcd", "k8s", "k8saggregator", "os"] {
        let crt = format!("certs.{certs}.crt");
        let checked = decode_pem(field(&crt).unwrap_or_default())
            .map_err(|r| format!("{crt} is invalid: {r}"))
            .and_then(|pem| {
                rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
                    .map(drop)
                    .map_err(|_| format!("{crt} is invalid: not a PEM certificate"))
            })
            .and_then(|()| key_problem(format!("certs.{certs}.key")));
        problems.extend(checked.err());
    }
    problems.extend(key_problem("certs.k8sserviceaccount.key".into()).err());
    problems
}

/// Talos writes Ed25519 keys as PKCS#8 under the non-standard label `ED25519 PRIVATE KEY`; rustls and
/// most parsers read only `PRIVATE KEY`.
pub fn normalize_key_pem(pem: &str) -> String {
    pem.replace("ED25519 PRIVATE KEY", "PRIVATE KEY")
}

/// Decodes a base64 field that must hold PEM. Errors never echo the value.
fn decode_pem(b64: &str) -> Result<String, String> {
    if b64.trim().is_empty() {
        return Err("empty".into());
    }
    let bytes = BASE64.decode(b64.trim()).map_err(|_| "not valid base64".to_owned())?;
    let text = String::from_utf8(bytes).map_err(|_| "not PEM text".to_owned())?;
    if !text.contains("-----BEGIN ") {
        return Err("not PEM (no BEGIN line)".into());
    }
    Ok(text)
}

/// YAML errors can quote the input, which may hold keys: keep only the location and kind.
fn yaml_error(e: &serde_yaml::Error) -> String {
    match e.location() {
        Some(loc) => format!("YAML error at line {} column {}", loc.line(), loc.column()),
        None => "YAML error: the document does not have the expected shape".into(),
    }
}
