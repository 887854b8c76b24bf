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

use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::snapshot::{Snapshot, SnapshotCell};

/// Longest time a client may take to finish the TLS handshake (capped further by
/// `server.tcp_idle_timeout`); a client that never finishes holds its slot no longer.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    let config = server_config(snapshot, rustls::DEFAULT_VERSIONS, b"dot")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A rustls server config (ring) for `versions`, offering the one ALPN protocol `alpn`, with
/// the certificate of the live snapshot: shared by DoT and DoQ ([`super::quic`]), so both
/// serve the same certificate and pick up a reloaded one at the next handshake.
pub(super) fn server_config(
    snapshot: SnapshotCell,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[u8],
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FromSnapshot(snapshot)));
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}
