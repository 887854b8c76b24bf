//! Reads the PEM certificate and key of the DoT listener into a snapshot (`server.tls_*`), so a
//! reload swaps the certificate with everything else. Here rather than in `dns::tls`, which
//! serves it, because the snapshot layer sits below `dns/`.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Reads a PEM certificate chain and its private key; on error returns the config key at
/// fault and what is wrong.
pub(crate) fn load_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<CertifiedKey, (&'static str, String)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            (
                "server.tls_certificate",
                format!("cannot read PEM certificates from {}: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err((
            "server.tls_certificate",
            format!("{} holds no PEM certificate", cert.display()),
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            "server.tls_key",
            format!("cannot read a PEM private key from {}: {e}", key.display()),
        )
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| {
        (
            "server.tls_key",
            format!("unsupported private key in {}: {e}", key.display()),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        (
            "server.tls_key",
            format!(
                "{} does not match the certificate in {}: {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok(certified)
}
