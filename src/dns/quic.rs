//! DNS over QUIC (RFC 9250): one query per client-initiated bidirectional stream, framed with
//! the 2-byte length of DNS over TCP, message ID 0 on the wire, answered by the same
//! [`Answerer::respond`] as UDP, TCP and DoT, so a DoQ answer carries the very bytes of the TCP
//! answer to the same query (ECS scope, OPT, NSID, cookie, AA).
//!
//! Served with quinn directly rather than hickory-server's QUIC listener: hickory's
//! `ResponseHandler::send_response` takes a `MessageResponse` it encodes itself (no way to hand
//! it our wire answer: it would write the first owner name in full where ours points to the
//! question), its `ServerContext` decodes the query and answers undecodable ones (FORMERR
//! without an OPT) before any handler sees them, and its `QuicServer::next` awaits each
//! handshake (up to 5 s) inside the accept loop, so one client that never finishes a handshake
//! holds up every new connection; it has no connection caps (docs/DESIGN.md, "Why not
//! hickory-server's listeners").
//!
//! Limits are those of the TCP listeners ([`Limits`]): the caps in all and per client network
//! (the same [`PerNetwork`] table type as TCP), the idle timeout (no new query for that long
//! closes a connection with `DOQ_NO_ERROR`, RFC 9250 §5.5) and the handshake bound
//! ([`super::tls::HANDSHAKE_TIMEOUT`] or the idle timeout if shorter). Each connection runs
//! in a task of its own, so a stalled handshake costs one slot for at most that bound. QUIC
//! connection attempts carry a source address that may be spoofed: once a client network
//! holds half its cap, or half of all slots are taken, a new attempt from an unproven address
//! gets a Retry (RFC 9000 §8.1) and takes a slot only when it comes back with the token.
//!
//! The certificate comes from the live snapshot, as for DoT ([`super::tls::server_config`]):
//! a reload that re-reads the PEM files changes the certificate of the next handshake, and
//! open connections go on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, ReadExactError, RecvStream, SendStream, VarInt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::tcp::{Limits, NetworkSlot, PerNetwork};
use super::{Answerer, Transport};
use crate::snapshot::SnapshotCell;

/// The ALPN protocol of DoQ (RFC 9250 §4.1.1).
pub(crate) const ALPN: &[u8] = b"doq";

/// DoQ error codes (RFC 9250 §4.3), sent in CONNECTION_CLOSE and RESET_STREAM frames.
pub(crate) mod code {
    use quinn::VarInt;
    /// No error: closing an idle connection or at shutdown.
    pub(crate) const NO_ERROR: VarInt = VarInt::from_u32(0x0);
    /// An internal error: an answer that cannot be framed.
    pub(crate) const INTERNAL_ERROR: VarInt = VarInt::from_u32(0x1);
    /// A protocol error: a non-zero message ID, a stream finished inside a message, or a
    /// message that is not a DNS query.
    pub(crate) const PROTOCOL_ERROR: VarInt = VarInt::from_u32(0x2);
    /// A request cancelled: its query did not arrive within the idle timeout.
    pub(crate) const REQUEST_CANCELLED: VarInt = VarInt::from_u32(0x3);
}

/// Concurrent queries (bidirectional streams) one connection may have open; RFC 9250 §6.4
/// asks servers not to limit clients to fewer than 100.
pub(crate) const MAX_STREAMS_PER_CONNECTION: u32 = 100;

/// How much longer than the idle timeout QUIC's own (silent) idle timeout is.
const IDLE_SLACK: Duration = Duration::from_secs(1);

/// How long shutdown lets closed connections tell their peers (CONNECTION_CLOSE) before the
/// socket goes.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Builds the QUIC endpoint of a DoQ listener on `socket`: TLS 1.3 only (RFC 9001), ALPN
/// `doq`, the certificate of the live snapshot, no unidirectional streams, no datagrams, and
/// QUIC's idle timeout just past that of `limits`. Needs a tokio runtime.
pub(crate) fn endpoint(
    socket: std::net::UdpSocket,
    snapshot: SnapshotCell,
    limits: Limits,
) -> anyhow::Result<quinn::Endpoint> {
    let tls = super::tls::server_config(snapshot, &[&rustls::version::TLS13], ALPN)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
        // RFC 9250 §4.2: DoQ uses client-initiated bidirectional streams only.
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        // A little beyond our own idle close, which then comes first and says DOQ_NO_ERROR;
        // QUIC's silent idle timeout only ends connections whose peer vanished.
        .max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle_timeout + IDLE_SLACK).ok());
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// Accepts connections on `endpoint` until `token` is cancelled; then lets open connections
/// finish their current queries, closes them with `DOQ_NO_ERROR` and returns.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    answerer: Answerer,
    token: CancellationToken,
    limits: Limits,
) {
    let limit = Arc::new(Semaphore::new(limits.max_connections));
    let per_network = PerNetwork::default();
    let tracker = TaskTracker::new();
    loop {
        let incoming = tokio::select! {
            _ = token.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break, // the endpoint was closed
            },
        };
        let peer = incoming.remote_address();
        let client = peer.ip().to_canonical();
        if !incoming.remote_address_validated()
            && is_under_pressure(
                NetworkSlot::open(&per_network, client),
                limit.available_permits(),
                limits,
            )
        {
            // Under pressure: the client proves its address before it may take a slot.
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        let Some(slot) = NetworkSlot::take(&per_network, client, limits.max_per_network) else {
            debug!(%peer, "quic connection limit per client network reached, refusing");
            incoming.refuse();
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!(%peer, "quic connection limit reached, refusing");
            incoming.refuse();
            continue;
        };
        let connecting = match incoming.accept() {
            Ok(c) => c,
            Err(e) => {
                debug!(%peer, error = %e, "quic connection failed at accept");
                continue;
            }
        };
        let answerer = answerer.clone();
        let token = token.clone();
        tracker.spawn(async move {
            let idle = limits.idle_timeout;
            let bound = idle.min(super::tls::HANDSHAKE_TIMEOUT);
            // Dropping an unfinished `Connecting` abandons the handshake (quinn closes it).
            let connection = tokio::select! {
                _ = token.cancelled() => None,
                r = tokio::time::timeout(bound, connecting) => match r {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "quic handshake failed");
                        None
                    }
                    Err(_) => {
                        debug!(%peer, "quic handshake timed out, closing");
                        None
                    }
                },
            };
            if let Some(c) = connection {
                connection_loop(c, peer, answerer, token, idle).await;
            }
            drop(permit);
            drop(slot);
        });
    }
    tracker.close();
    tracker.wait().await;
    endpoint.close(code::NO_ERROR, b"");
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
}

/// Says whether a new connection from an unproven address must answer a Retry first: when its
/// client network already holds half its cap (`open` connections), or half of all slots are
/// taken (`free` left), so that spoofed sources cannot fill a network's or the listener's
/// slots with handshakes that never finish.
fn is_under_pressure(open: usize, free: usize, limits: Limits) -> bool {
    open * 2 >= limits.max_per_network || free * 2 <= limits.max_connections
}

/// Serves the queries of one connection, each stream in a task of its own, until the peer
/// closes it, no query comes for `idle`, or `token` is cancelled.
async fn connection_loop(
    conn: Connection,
    peer: SocketAddr,
    answerer: Answerer,
    token: CancellationToken,
    idle: Duration,
) {
    let streams = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => break,
            r = tokio::time::timeout(idle, conn.accept_bi()) => r,
        };
        match accepted {
            Ok(Ok((send, recv))) => {
                streams.spawn(query(
                    conn.clone(),
                    send,
                    recv,
                    peer,
                    answerer.clone(),
                    idle,
                ));
            }
            Ok(Err(e)) => {
                // Closed by the peer, by a protocol error of ours, or lost.
                debug!(%peer, error = %e, "quic connection ended");
                break;
            }
            Err(_) => {
                debug!(%peer, "quic connection idle, closing");
                break;
            }
        }
    }
    streams.close();
    streams.wait().await;
    // RFC 9250 §5.5: a connection closed for idleness (or at shutdown) gets DOQ_NO_ERROR.
    conn.close(code::NO_ERROR, b"");
}

/// Answers the one query of a stream: reads the length-prefixed message, answers it, writes
/// the length-prefixed answer and finishes the stream.
async fn query(
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    peer: SocketAddr,
    answerer: Answerer,
    idle: Duration,
) {
    let read = async {
        let mut len = [0u8; 2];
        recv.read_exact(&mut len).await?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        recv.read_exact(&mut buf).await?;
        Ok::<_, ReadExactError>(buf)
    };
    let buf = match tokio::time::timeout(idle, read).await {
        Ok(Ok(buf)) => buf,
        Ok(Err(ReadExactError::FinishedEarly(_))) => {
            // RFC 9250 §4.3.3: a STREAM FIN before the whole message is a protocol error.
            debug!(%peer, "doq stream finished inside a message");
            conn.close(code::PROTOCOL_ERROR, b"stream finished inside a message");
            return;
        }
        Ok(Err(ReadExactError::ReadError(e))) => {
            debug!(%peer, error = %e, "doq stream read failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "doq query not received in time, cancelling the stream");
            let _ = send.reset(code::REQUEST_CANCELLED);
            let _ = recv.stop(code::REQUEST_CANCELLED);
            return;
        }
    };
    // RFC 9250 §4.2.1: the message ID MUST be 0; anything else is a protocol error.
    if buf.get(..2).is_some_and(|id| id != [0, 0]) {
        debug!(%peer, "doq query with a message id other than 0");
        conn.close(code::PROTOCOL_ERROR, b"message id not 0");
        return;
    }
    let mut out = Vec::with_capacity(512);
    if !answerer.respond(&buf, peer, Transport::Quic, &mut out) {
        // A runt or a response: not a DNS query, so the stream broke the protocol.
        debug!(%peer, "doq stream without a dns query");
        conn.close(code::PROTOCOL_ERROR, b"not a dns query");
        return;
    }
    answerer
        .query_log
        .offer(peer, Transport::Quic.as_str(), &out);
    // The answer path keeps answers within 65535 bytes (TC beyond), as over TCP.
    let Ok(len) = u16::try_from(out.len()) else {
        debug!(%peer, len = out.len(), "doq response longer than 65535 bytes");
        let _ = send.reset(code::INTERNAL_ERROR);
        return;
    };
    let mut framed = Vec::with_capacity(out.len() + 2);
    framed.extend(len.to_be_bytes());
    framed.extend_from_slice(&out);
    // A client that stops reading must not hold the stream (and the connection) forever;
    // waiting for the acknowledgement keeps the connection open until the answer arrived.
    let write = async {
        send.write_all(&framed).await.ok()?;
        send.finish().ok()?;
        send.stopped().await.ok()
    };
    if tokio::time::timeout(idle, write).await.is_err() {
        debug!(%peer, "doq write timed out, cancelling the stream");
        let _ = send.reset(code::REQUEST_CANCELLED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_per_network: usize) -> Limits {
        Limits {
            idle_timeout: Duration::from_secs(10),
            max_connections,
            max_per_network,
        }
    }

    #[test]
    fn retry_from_half_the_network_cap_or_half_the_slots() {
        let l = limits(1024, 64);
        // (open in the network, free slots) -> Retry?
        for (open, free, retry) in [
            (0, 1024, false),
            (31, 1024, false),
            (32, 1024, true),
            (64, 1024, true),
            (0, 513, false),
            (0, 512, true),
            (0, 0, true),
        ] {
            assert_eq!(is_under_pressure(open, free, l), retry, "{open} {free}");
        }
        // A cap of one: the first connection goes straight in, the next proves its address.
        let one = limits(16, 1);
        assert!(!is_under_pressure(0, 16, one));
        assert!(is_under_pressure(1, 15, one));
    }
}
