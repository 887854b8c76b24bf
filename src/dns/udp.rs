//! DNS over UDP: one or more SO_REUSEPORT sockets per listen address, each with its own loop.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Answerer, Transport};

/// Largest datagram we read; longer queries are truncated by the kernel and then FORMERR.
const MAX_QUERY: usize = 4096;

/// Binds `count` UDP sockets sharing `addr` (SO_REUSEPORT); port 0 picks one free port for all.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        // Bursts of queries should queue in the kernel rather than be dropped.
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket.bind(&addr.into())?;
        let std: std::net::UdpSocket = socket.into();
        addr = std.local_addr()?;
        sockets.push(std);
    }
    Ok(sockets)
}

/// Answers queries on `socket` until `token` is cancelled.
pub async fn serve(socket: UdpSocket, answerer: Answerer, token: CancellationToken) {
    let mut buf = vec![0u8; MAX_QUERY];
    let mut out = Vec::with_capacity(1232);
    loop {
        let (len, peer) = tokio::select! {
            _ = token.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some systems: not fatal.
                    debug!(error = %e, "udp receive failed");
                    continue;
                }
            },
        };
        if answerer.respond(&buf[..len], peer, Transport::Udp, &mut out)
            && let Err(e) = socket.send_to(&out, peer).await
        {
            debug!(%peer, error = %e, "udp send failed");
        }
    }
}
