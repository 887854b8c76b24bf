//! DNS over TLS (RFC 7858): the TCP connection loop of [`super::tcp`] (length-prefixed
//! messages, idle and write timeouts, caps per client network) run inside a TLS session.
//!
//! Served with tokio-rustls rather than hickory-server's TLS listener: hickory's
//! `ResponseHandler::send_response` takes a `MessageResponse` it encodes itself, so our wire
//! answer (ECS scope, OPT, NSID, cookies, name compression) would have to be decoded and
//! re-encoded, and could differ from the TCP answer. Here the same bytes go out on both.
//!
//! The certificate comes from the live snapshot ([`Snapshot::tls`]): a reload that re-reads
//! the PEM files changes the certificate of the next handshake, and open sessions go on.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::snapshot::{Snapshot, SnapshotCell};

/// Longest time a client may take to finish the TLS handshake (capped further by
/// `server.tcp_idle_timeout`); a client that never finishes holds its slot no longer.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Hands rustls the certificate of the current snapshot.
#[derive(Debug)]
struct FromSnapshot(SnapshotCell);

impl ResolvesServerCert for FromSnapshot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snap: Arc<Snapshot> = self.0.load_full();
        snap.tls.clone()
    }
}

/// The TLS acceptor of the DoT listeners: TLS 1.2 and 1.3 (ring), ALPN `dot` (RFC 7858 §3.2,
/// as RFC 9539 probing clients offer), the certificate from the live snapshot.
pub(crate) fn acceptor(snapshot: SnapshotCell) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FromSnapshot(snapshot)));
    config.alpn_protocols = vec![b"dot".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
