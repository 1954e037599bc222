//! PKI and objects in the shapes Talos, talosctl and the upstream operator write.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use teb_api::{BundleConfig, TalosControlPlane, TalosControlPlaneSpec, TalosControlPlaneStatus};
use teb_talos::{Credentials, Talosconfig};

/// The key type of an OS CA: Ed25519 is Talos's default; Talos 1.11 in FIPS mode made ECDSA P-256 CAs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CaKeyType {
    #[default]
    Ed25519,
    EcdsaP256,
}

impl CaKeyType {
    fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            CaKeyType::Ed25519 => &rcgen::PKCS_ED25519,
            CaKeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        }
    }
}

impl std::str::FromStr for CaKeyType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ed25519" => Ok(CaKeyType::Ed25519),
            "ecdsa" | "ecdsa-p256" => Ok(CaKeyType::EcdsaP256),
            other => Err(format!("unknown CA key type {other:?}: ed25519 or ecdsa-p256")),
        }
    }
}

/// A Talos OS CA.
pub struct OsCa {
    pub cert_pem: String,
    /// The key as Talos writes it (an Ed25519 key as PKCS#8 under the label `ED25519 PRIVATE KEY`).
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl OsCa {
    /// An Ed25519 CA, as Talos generates by default.
    pub fn generate() -> anyhow::Result<Self> {
        Self::generate_with(CaKeyType::Ed25519)
    }

    pub fn generate_with(key_type: CaKeyType) -> anyhow::Result<Self> {
        let (cert_pem, key, params) = self_signed_ca("talos", key_type.algorithm())?;
        let key_pem = match key_type {
            CaKeyType::Ed25519 => key.serialize_pem().replace("PRIVATE KEY", "ED25519 PRIVATE KEY"),
            CaKeyType::EcdsaP256 => key.serialize_pem(),
        };
        Ok(OsCa { cert_pem, key_pem, issuer: Issuer::new(params, key) })
    }

    /// The CA of an existing cluster, from its certificate and key PEM (as a secrets bundle holds them,
    /// base64-decoded): new nodes built from a recovery kit.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let key = KeyPair::from_pem(&teb_talos::normalize_key_pem(key_pem))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(OsCa { cert_pem: cert_pem.to_owned(), key_pem: key_pem.to_owned(), issuer })
    }

    /// A client certificate with `roles` in Subject O and the given ExtKeyUsages (Talos accepts only
    /// exactly `[ClientAuth]`), minted the way the operator mints them.
    pub fn client(&self, roles: &[&str], ekus: &[ExtendedKeyUsagePurpose]) -> anyhow::Result<Credentials> {
        let minted = teb_talos::mint_client_certificate(&self.issuer, roles, ekus, Duration::from_secs(86_400))?;
        Ok(Credentials { ca_pem: self.cert_pem.clone(), crt_pem: minted.crt_pem, key_pem: minted.key_pem })
    }

    /// An apid server certificate for `sans` (IP addresses and host names).
    pub fn server(&self, sans: &[&str]) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate_for(self.issuer.key().algorithm())?;
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A secrets bundle in the shape of `talosctl gen secrets` (random values where only the OS CA
    /// matters here).
    pub fn secrets_bundle_yaml(&self) -> String {
        let b64 = |s: &str| BASE64.encode(s);
        let filler = |n: u8| BASE64.encode([n; 32]);
        format!(
            "cluster:\n  id: {id}\n  secret: {secret}\nsecrets:\n  bootstraptoken: abcdef.0123456789abcdef\n  secretboxencryptionsecret: {sb}\n\
             trustdinfo:\n  token: 123456.0123456789abcdef\ncerts:\n  etcd:\n    crt: {crt}\n    key: {key}\n  k8s:\n    crt: {crt}\n    key: {key}\n\
             \x20 k8saggregator:\n    crt: {crt}\n    key: {key}\n  k8sserviceaccount:\n    key: {key}\n  os:\n    crt: {crt}\n    key: {key}\n",
            id = filler(1),
            secret = filler(2),
            sb = filler(3),
            crt = b64(&self.cert_pem),
            key = b64(&self.key_pem),
        )
    }

    /// A talosconfig for a client with `roles`.
    pub fn talosconfig(
        &self,
        context: &str,
        endpoints: &[String],
        nodes: &[String],
        roles: &[&str],
    ) -> anyhow::Result<String> {
        let creds = self.client(roles, &[ExtendedKeyUsagePurpose::ClientAuth])?;
        Ok(Talosconfig::single(context, endpoints.to_vec(), nodes.to_vec(), &creds).to_yaml())
    }

    /// A talosconfig that trusts this CA but presents a client certificate `stranger` signed: Talos
    /// refuses it in the TLS handshake.
    pub fn talosconfig_with_client_of(&self, stranger: &OsCa, endpoints: &[String]) -> anyhow::Result<String> {
        let creds = stranger.client(&["os:admin"], &[ExtendedKeyUsagePurpose::ClientAuth])?;
        let creds = Credentials { ca_pem: self.cert_pem.clone(), ..creds };
        Ok(Talosconfig::single("stranger", endpoints.to_vec(), Vec::new(), &creds).to_yaml())
    }
}

fn self_signed_ca(
    org: &str,
    alg: &'static rcgen::SignatureAlgorithm,
) -> anyhow::Result<(String, KeyPair, CertificateParams)> {
    let key = KeyPair::generate_for(alg)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::OrganizationName, org);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key, params))
}

/// A rustls server configuration for `sans`, with a certificate signed by a fresh CA; returns the CA's
/// PEM for clients to trust.
pub fn tls_server_config(sans: &[&str]) -> anyhow::Result<(rustls::ServerConfig, String)> {
    let (ca_pem, ca_key, ca_params) = self_signed_ca("teb test CA", &rcgen::PKCS_ECDSA_P256_SHA256)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    let cert = params.signed_by(&key, &issuer)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, ca_pem))
}

/// A TalosControlPlane as the upstream operator leaves it once ready: `status.bundleConfig` (JSON) and
/// `status.secretBundle` (YAML).
pub fn control_plane_with_bundle(name: &str, namespace: &str, ca: &OsCa, endpoints: &[String]) -> TalosControlPlane {
    let bundle = BundleConfig {
        cluster_name: name.to_owned(),
        endpoint: Some("https://127.0.0.1:6443".into()),
        version: Some("v1.11.0".into()),
        kube_version: Some("v1.34.1".into()),
        pod_cidr: vec!["10.244.0.0/16".into()],
        service_cidr: vec!["10.96.0.0/12".into()],
        client_endpoint: endpoints.to_vec(),
        ..Default::default()
    };
    let mut cp = control_plane(name, namespace);
    cp.status = Some(TalosControlPlaneStatus {
        bundle_config: Some(serde_json::to_string(&bundle).expect("bundle config serializes")),
        secret_bundle: Some(ca.secrets_bundle_yaml()),
        state: Some("Ready".into()),
        config: Some(format!("version: v1alpha1\nmachine:\n  type: controlplane\ncluster:\n  clusterName: {name}\n")),
        observed_kube_version: Some("v1.34.1".into()),
    });
    cp
}

/// A TalosControlPlane with no status yet (not ready).
pub fn control_plane(name: &str, namespace: &str) -> TalosControlPlane {
    let mut cp = TalosControlPlane::new(
        name,
        TalosControlPlaneSpec {
            version: Some("v1.11.0".into()),
            mode: Some("metal".into()),
            replicas: Some(3),
            endpoint: Some("https://127.0.0.1:6443".into()),
        },
    );
    cp.metadata.namespace = Some(namespace.to_owned());
    cp
}

/// The Secret the upstream operator writes beside a control plane: `<name>-talosconfig`, key
/// `<name>.talosconfig`.
pub fn talosconfig_secret(controlplane: &str, namespace: &str, talosconfig: &str) -> Secret {
    secret(&format!("{controlplane}-talosconfig"), namespace, &[(&format!("{controlplane}.talosconfig"), talosconfig)])
}

/// An Opaque Secret with `data`.
pub fn secret(name: &str, namespace: &str, data: &[(&str, &str)]) -> Secret {
    let string_data = data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        string_data: Some(string_data),
        ..Default::default()
    }
}
