//! Test-only RSA material shipped in the crate so start-up needs no key generation.

use sha1::Digest as _;
use x509_parser::prelude::*;

pub const SIGNING_KEY_PEM: &str = include_str!("../keys/signing-key.pem");
pub const SIGNING_CERT_PEM: &str = include_str!("../keys/signing-cert.pem");
pub const APP_KEY_PEM: &str = include_str!("../keys/app-key.pem");
pub const APP_CERT_PEM: &str = include_str!("../keys/app-cert.pem");

/// Facts about a certificate that token checks and JWKS need.
#[derive(Clone)]
pub struct CertInfo {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
    pub sha1: Vec<u8>,
    pub sha256: Vec<u8>,
    /// PKCS#1 RSAPublicKey DER.
    pub public_key_der: Vec<u8>,
    pub modulus: Vec<u8>,
    pub exponent: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("not a PEM certificate: {0}")]
    Pem(String),
    #[error("not an X.509 certificate: {0}")]
    X509(String),
    #[error("the certificate's key is not RSA")]
    NotRsa,
}

pub fn cert_info(cert_pem: &str, key_pem: &str) -> Result<CertInfo, CertError> {
    let parsed = ::pem::parse(cert_pem).map_err(|e| CertError::Pem(e.to_string()))?;
    let der = parsed.contents().to_vec();
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| CertError::X509(e.to_string()))?;
    let spki = cert.public_key();
    let public_key_der = spki.subject_public_key.data.to_vec();
    let (modulus, exponent) = match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => (
            strip_zeros(rsa.modulus).to_vec(),
            strip_zeros(rsa.exponent).to_vec(),
        ),
        _ => return Err(CertError::NotRsa),
    };
    Ok(CertInfo {
        cert_pem: cert_pem.to_string(),
        key_pem: key_pem.to_string(),
        sha1: sha1::Sha1::digest(&der).to_vec(),
        sha256: sha2::Sha256::digest(&der).to_vec(),
        der,
        public_key_der,
        modulus,
        exponent,
    })
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}
