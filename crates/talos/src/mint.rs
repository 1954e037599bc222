//! Client certificates as talosctl mints them from the Talos OS CA: the roles in Subject O (one value
//! each), KeyUsage DigitalSignature, ExtKeyUsage exactly ClientAuth, and a key of the CA's type
//! (Ed25519 for the default Ed25519 CA, ECDSA P-256 for the ECDSA CAs of FIPS-mode clusters).

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SigningKey,
};

use crate::Error;

/// A freshly minted client certificate and its key, both PEM.
pub struct MintedClient {
    pub crt_pem: String,
    pub key_pem: String,
}

/// Mints a client certificate signed by `issuer`, valid from a minute ago for `validity`, with
/// `roles` in Subject O and the given ExtKeyUsages (Talos accepts only exactly `[ClientAuth]`).
pub fn mint_client_certificate<S: SigningKey>(
    issuer: &Issuer<'_, S>,
    roles: &[&str],
    ekus: &[ExtendedKeyUsagePurpose],
    validity: Duration,
) -> Result<MintedClient, Error> {
    let mint = |e: rcgen::Error| Error::Mint(e.to_string());
    let key = KeyPair::generate_for(client_key_algorithm(issuer.key().algorithm())?).map_err(mint)?;
    let mut params = CertificateParams::default();
    if let Some(first) = roles.first() {
        params.distinguished_name.push(DnType::OrganizationName, *first);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = ekus.to_vec();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + validity;
    let cert = params.signed_by(&key, issuer).map_err(mint)?;
    let der = if roles.len() > 1 { with_roles(cert.der(), roles, issuer.key())? } else { cert.der().to_vec() };
    Ok(MintedClient { crt_pem: pem("CERTIFICATE", &der), key_pem: key.serialize_pem() })
}

/// talosctl's choice of client key for a CA: Ed25519 for Ed25519, ECDSA P-256 for any ECDSA curve.
fn client_key_algorithm(ca: &'static rcgen::SignatureAlgorithm) -> Result<&'static rcgen::SignatureAlgorithm, Error> {
    if ca == &rcgen::PKCS_ED25519 {
        Ok(&rcgen::PKCS_ED25519)
    } else if ca == &rcgen::PKCS_ECDSA_P256_SHA256 || ca == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Ok(&rcgen::PKCS_ECDSA_P256_SHA256)
    } else {
        Err(Error::Mint(format!("the OS CA's key type ({ca:?}) is not one Talos uses; expected Ed25519 or ECDSA")))
    }
}

/// Fails when `key` is not the private key of the certificate `cert_pem` (a bundle or talosconfig
/// whose halves come from different places); a TLS handshake would otherwise fail with an opaque
/// transport error.
pub(crate) fn check_key_matches(cert_pem: &str, key: &impl PublicKeyData) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    if cert.public_key().raw == key.subject_public_key_info().as_slice() {
        Ok(())
    } else {
        Err("the private key does not belong to the certificate (their public keys differ)".into())
    }
}

/// rcgen keeps one value per attribute type, but Talos reads every Organization value as a role. So
/// the certificate's subject is replaced by one `O=<role>` RDN per role (Go parses these exactly as it
/// parses talosctl's), and the changed TBSCertificate is signed again with the issuer's key.
fn with_roles(der: &[u8], roles: &[&str], issuer_key: &impl SigningKey) -> Result<Vec<u8>, Error> {
    let malformed = || Error::Mint("rcgen produced a certificate that cannot be re-encoded".into());
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| malformed())?;
    let tbs = cert.tbs_certificate.as_ref();
    let subject = cert.tbs_certificate.subject.as_raw();
    // Both are slices of `der`: their positions follow from their addresses.
    let tbs_start = tbs.as_ptr() as usize - der.as_ptr() as usize;
    let subject_start = subject.as_ptr() as usize - tbs.as_ptr() as usize;
    let content_start = tbs_start + header_len(tbs).ok_or_else(malformed)?;
    let subject_start = tbs_start + subject_start;
    let subject_end = subject_start + subject.len();
    let tbs_end = tbs_start + tbs.len();

    const ORGANIZATION: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x0a];
    let rdns: Vec<u8> = roles
        .iter()
        .flat_map(|role| tlv(0x31, &tlv(0x30, &[&ORGANIZATION[..], &tlv(0x0c, role.as_bytes())].concat())))
        .collect();
    let new_tbs =
        tlv(0x30, &[&der[content_start..subject_start], &tlv(0x30, &rdns), &der[subject_end..tbs_end]].concat());
    let algorithm_len = tlv_len(&der[tbs_end..]).ok_or_else(malformed)?;
    let algorithm = &der[tbs_end..tbs_end + algorithm_len];
    let signature = issuer_key.sign(&new_tbs).map_err(|e| Error::Mint(e.to_string()))?;
    let bit_string = tlv(0x03, &[&[0u8][..], &signature].concat());
    Ok(tlv(0x30, &[new_tbs.as_slice(), algorithm, &bit_string].concat()))
}

/// DER: tag, definite length, content.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

fn header_len(der: &[u8]) -> Option<usize> {
    let first = *der.get(1)?;
    Some(if first < 0x80 { 2 } else { 2 + (first & 0x7f) as usize })
}

/// Header plus content length of the DER element at the start of `der`.
fn tlv_len(der: &[u8]) -> Option<usize> {
    let header = header_len(der)?;
    let first = *der.get(1)?;
    let len = if first < 0x80 {
        first as usize
    } else {
        der.get(2..header)?.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize)
    };
    Some(header + len)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let lines: Vec<&str> =
        b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(alg: &'static rcgen::SignatureAlgorithm) -> (Issuer<'static, KeyPair>, String) {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::OrganizationName, "talos");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        (Issuer::new(params, key), pem)
    }

    fn parsed_roles(pem: &str) -> (Vec<String>, String) {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let roles = cert.subject().iter_organization().map(|o| o.as_str().unwrap().to_owned()).collect();
        (roles, cert.public_key().algorithm.algorithm.to_id_string())
    }

    #[test]
    fn every_role_is_its_own_organization_value() {
        let (issuer, _) = ca(&rcgen::PKCS_ED25519);
        let roles = ["os:reader", "os:etcd:backup", "os:operator"];
        let minted =
            mint_client_certificate(&issuer, &roles, &[ExtendedKeyUsagePurpose::ClientAuth], Duration::from_secs(60))
                .unwrap();
        assert_eq!(parsed_roles(&minted.crt_pem).0, roles);
    }

    #[test]
    fn client_key_type_follows_the_ca() {
        for (alg, oid) in [(&rcgen::PKCS_ED25519, "1.3.101.112"), (&rcgen::PKCS_ECDSA_P256_SHA256, "1.2.840.10045.2.1")]
        {
            let (issuer, _) = ca(alg);
            let minted = mint_client_certificate(&issuer, &["os:etcd:backup"], &[], Duration::from_secs(60)).unwrap();
            assert_eq!(parsed_roles(&minted.crt_pem).1, oid);
        }
    }

    #[test]
    fn a_key_from_elsewhere_is_noticed() {
        let (_, pem) = ca(&rcgen::PKCS_ED25519);
        let (other, _) = ca(&rcgen::PKCS_ED25519);
        assert!(check_key_matches(&pem, other.key()).unwrap_err().contains("does not belong"));
    }

    #[test]
    fn der_lengths() {
        assert_eq!(tlv(0x04, &[1; 3]), vec![0x04, 3, 1, 1, 1]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(tlv_len(&long), Some(304));
    }
}
