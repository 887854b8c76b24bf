//! DNS over TCP (RFC 7766): length-prefixed messages, pipelined queries answered in order,
//! idle and stalled connections closed, and caps on concurrent connections, in all and per
//! client network.
//!
//! The per-network cap ([`Limits::max_per_network`], `server.tcp_max_connections_per_network`)
//! keeps one client network (a /24 or a /56, as [`NETWORK_V4_PREFIX`] and
//! [`NETWORK_V6_PREFIX`] say) from taking every slot of the global cap: past it, its new
//! connections are closed at accept while other networks are still served (issue 9).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::{Answerer, Transport};

/// Prefix length grouping IPv4 clients into one network for the per-network cap: a /24, the
/// smallest block routed on the Internet, so one site, not one host.
pub(crate) const NETWORK_V4_PREFIX: u8 = 24;
/// Prefix length grouping IPv6 clients into one network: a /56, what one customer site is
/// usually given (RFC 6177), so one client cannot escape the cap by using many addresses.
pub(crate) const NETWORK_V6_PREFIX: u8 = 56;

/// The limits of one TCP listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Time a connection may wait for the next query, or for one read or write to progress.
    pub(crate) idle_timeout: Duration,
    /// Concurrent connections in all.
    pub(crate) max_connections: usize,
    /// Concurrent connections from one client network.
    pub(crate) max_per_network: usize,
}

/// Open connections per client network (also used by the DoQ listeners, [`super::quic`]).
pub(super) type PerNetwork = Arc<Mutex<HashMap<(bool, u128), usize>>>;

/// A slot of the per-network count; frees itself when dropped.
pub(super) struct NetworkSlot {
    table: PerNetwork,
    key: (bool, u128),
}

impl NetworkSlot {
    /// Takes a slot for `client`'s network, or returns None when it holds `max` already.
    pub(super) fn take(table: &PerNetwork, client: IpAddr, max: usize) -> Option<Self> {
        let key = network(client);
        // The lock is held for a hash-map update, at accept and at close only.
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        let open = t.entry(key).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(Self {
            table: table.clone(),
            key,
        })
    }

    /// Returns how many connections `client`'s network holds now.
    pub(super) fn open(table: &PerNetwork, client: IpAddr) -> usize {
        let t = table.lock().unwrap_or_else(|p| p.into_inner());
        t.get(&network(client)).copied().unwrap_or(0)
    }
}

/// The key of `client`'s network in a [`PerNetwork`] table.
fn network(client: IpAddr) -> (bool, u128) {
    super::rrl::network(client, NETWORK_V4_PREFIX, NETWORK_V6_PREFIX)
}

impl Drop for NetworkSlot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = t.get_mut(&self.key) {
            *open -= 1;
            if *open == 0 {
                t.remove(&self.key);
            }
        }
    }
}

/// Accepts connections on `listener` until `token` is cancelled; waits for open connections to
/// finish their current query before returning. With `tls`, each connection is DNS over TLS
/// (RFC 7858): the handshake must finish within [`super::tls::HANDSHAKE_TIMEOUT`] (or the idle
/// timeout, if shorter), then the same loop runs inside the session, under the same caps.
pub(crate) async fn serve(
    listener: TcpListener,
    answerer: Answerer,
    token: CancellationToken,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let limit = Arc::new(Semaphore::new(limits.max_connections));
    let per_network = PerNetwork::default();
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    debug!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = NetworkSlot::take(&per_network, peer.ip(), limits.max_per_network) else {
            debug!(%peer, "tcp connection limit per client network reached, closing");
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!(%peer, "tcp connection limit reached, closing");
            continue;
        };
        let answerer = answerer.clone();
        let token = token.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let _ = stream.set_nodelay(true);
            let idle = limits.idle_timeout;
            match tls {
                None => connection(stream, peer, answerer, token, idle, Transport::Tcp).await,
                Some(acceptor) => {
                    let limit = idle.min(super::tls::HANDSHAKE_TIMEOUT);
                    let accepted = tokio::select! {
                        _ = token.cancelled() => None,
                        r = tokio::time::timeout(limit, acceptor.accept(stream)) => match r {
                            Ok(Ok(s)) => Some(s),
                            Ok(Err(e)) => {
                                debug!(%peer, error = %e, "tls handshake failed");
                                None
                            }
                            Err(_) => {
                                debug!(%peer, "tls handshake timed out, closing");
                                None
                            }
                        },
                    };
                    if let Some(s) = accepted {
                        connection(s, peer, answerer, token, idle, Transport::Tls).await;
                    }
                }
            }
            drop(permit);
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Serves one connection, plain TCP or a TLS session over it.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    answerer: Answerer,
    token: CancellationToken,
    idle_timeout: Duration,
    transport: Transport,
) {
    let mut buf = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(4096);
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            _ = token.cancelled() => return,
            r = tokio::time::timeout(idle_timeout, stream.read_exact(&mut len)) => r,
        };
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return, // closed, reset, or idle too long
        }
        let n = u16::from_be_bytes(len) as usize;
        buf.resize(n, 0);
        match tokio::time::timeout(idle_timeout, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        if !answerer.respond(&buf, peer, transport, &mut out) {
            continue;
        }
        answerer.query_log.offer(peer, transport.as_str(), &out);
        // The answer path truncates anything longer (RFC 1035 §4.2.2: the length is 16 bits);
        // should it ever not, a wrong length prefix would desynchronize the stream: close.
        let Ok(len) = u16::try_from(out.len()) else {
            debug!(%peer, len = out.len(), "tcp response longer than 65535 bytes, closing");
            return;
        };
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend(len.to_be_bytes());
        framed.extend_from_slice(&out);
        // A client that stops reading must not hold the connection (and its slot) forever.
        // Flushed: a TLS stream buffers records until then (a no-op on plain TCP).
        let write = async {
            stream.write_all(&framed).await?;
            stream.flush().await
        };
        match tokio::time::timeout(idle_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "tcp write failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "tcp write timed out, closing");
                return;
            }
        }
    }
}
