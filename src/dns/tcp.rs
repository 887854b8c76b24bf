//! DNS over TCP (RFC 7766): length-prefixed messages, pipelined queries answered in order,
//! idle connections closed, and a cap on concurrent connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::{Answerer, Transport};

/// Accepts connections on `listener` until `token` is cancelled; waits for open connections to
/// finish their current query before returning.
pub async fn serve(
    listener: TcpListener,
    answerer: Answerer,
    token: CancellationToken,
    idle_timeout: Duration,
    max_connections: usize,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
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
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!(%peer, "tcp connection limit reached, closing");
            continue;
        };
        let answerer = answerer.clone();
        let token = token.clone();
        tracker.spawn(async move {
            connection(stream, peer, answerer, token, idle_timeout).await;
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    answerer: Answerer,
    token: CancellationToken,
    idle_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
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
        if !answerer.respond(&buf, peer, Transport::Tcp, &mut out) {
            continue;
        }
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend((out.len() as u16).to_be_bytes());
        framed.extend_from_slice(&out);
        if let Err(e) = stream.write_all(&framed).await {
            debug!(%peer, error = %e, "tcp write failed");
            return;
        }
    }
}
