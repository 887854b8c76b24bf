//! Reads the PEM files of the TLS listeners into a snapshot, so a reload swaps certificates
//! with everything else: the DoT certificate and key (`server.tls_*`) and the admin port's
//! HTTPS setup (`server.admin_tls_*`, `server.admin_client_ca`). Here rather than in
//! `dns::tls` or `admin`, which serve them, because the snapshot layer sits below both.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A problem with a PEM file: the config key at fault and what is wrong.
pub(crate) type PemError = (&'static str, String);

/// Reads the DoT certificate chain and its private key (`server.tls_certificate`,
/// `server.tls_key`).
pub(crate) fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, PemError> {
    certified_key(cert, key, ("server.tls_certificate", "server.tls_key"))
}

/// Reads a PEM certificate chain and its private key; `keys` names the two config keys an
/// error blames.
fn certified_key(
    cert: &Path,
    key: &Path,
    (cert_key, key_key): (&'static str, &'static str),
) -> Result<CertifiedKey, PemError> {
    let chain = certificates(cert, cert_key)?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            key_key,
            format!(
                "cannot read a PEM private key from {}: {}",
                key.display(),
                pem_error(&e)
            ),
        )
    })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| {
        (
            key_key,
            format!("unsupported private key in {}: {e}", key.display()),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        (
            key_key,
            format!(
                "{} does not match the certificate in {}: {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok(certified)
}

/// Reads every PEM certificate of `path`; at least one.
fn certificates(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            (
                key,
                format!(
                    "cannot read PEM certificates from {}: {}",
                    path.display(),
                    pem_error(&e)
                ),
            )
        })?;
    if chain.is_empty() {
        return Err((key, format!("{} holds no PEM certificate", path.display())));
    }
    Ok(chain)
}

/// Says what is wrong with a PEM file in words (the parser's own message prints the marker
/// lines as byte arrays).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { end_marker } => format!(
            "a {} section has no END line (a truncated file?)",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "malformed section start line {:?}",
            String::from_utf8_lossy(line)
        ),
        Error::NoItemsFound => "no PEM section of the expected kind".into(),
        other => other.to_string(),
    }
}

/// Builds the admin port's TLS setup: TLS 1.2 and 1.3 (ring), ALPN `http/1.1`, the certificate
/// of `server.admin_tls_certificate`/`admin_tls_key`, and, with `client_ca`, a client
/// certificate signed by one of its CAs required of every client (webpki's verifier: chain,
/// validity dates and the client-auth key usage are checked).
pub(crate) fn admin_server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, PemError> {
    let certified = certified_key(
        cert,
        key,
        ("server.admin_tls_certificate", "server.admin_tls_key"),
    )?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("server.admin_tls_certificate", e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            const KEY: &str = "server.admin_client_ca";
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca, KEY)? {
                roots.add(c).map_err(|e| {
                    (
                        KEY,
                        format!("{}: not a usable CA certificate: {e}", ca.display()),
                    )
                })?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| (KEY, format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Always the same certificate: each snapshot has its own [`rustls::ServerConfig`], so a
/// reload changes the certificate by replacing the whole setup.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
