//! The admin port's HTTP server: accepts connections, caps them, times them out, and makes
//! every error JSON (issue 9). The handlers live in the parent module.
//!
//! What a client cannot do to the admin port:
//! - hold it with many connections: at [`MAX_CONNECTIONS`] a new connection closes the oldest
//!   one (an idle one closes at once, a busy one after its request, within [`EVICT_GRACE`]),
//!   so `/live` and an operator's drain still get through; descriptors stay bounded by
//!   [`MAX_OPEN_CONNECTIONS`], past which new connections are closed at accept;
//! - hold a connection by sending headers slowly, or not at all: [`HEADER_TIMEOUT`] (also the
//!   wait for the next request on a kept-alive connection);
//! - hold it by sending a body slowly or not reading the response: [`IDLE_TIMEOUT`] without
//!   progress in either direction closes it (not counting the time a handler runs: a reload
//!   of a large config on a busy machine may take longer, and its answer must arrive);
//! - send a large body: [`MAX_BODY`], 413;
//! - over HTTPS (`server.admin_tls_certificate`), hold a connection by never finishing the TLS
//!   handshake: [`HANDSHAKE_TIMEOUT`]. The handshake runs in the connection's own task, after
//!   the caps above are taken, so a slow one holds one slot, never the accept loop.
//!
//! Over HTTPS each new connection handshakes with the live snapshot's setup ([`AdminTls`]):
//! a reload that re-reads the PEM files changes the certificate (and client CA) of the next
//! connection, and open connections go on with the one they began with.
//!
//! Every response with an error status is JSON `{"error": "..."}`, also those that axum
//! writes itself (extractor rejections: 400, 413, 415, 422).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::snapshot::SnapshotCell;

/// Admin connections served at once; a new one past this closes the oldest.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Admin connections open at once, counting those closing after eviction; past this, new
/// connections are closed at accept.
pub(crate) const MAX_OPEN_CONNECTIONS: usize = 2 * MAX_CONNECTIONS;
/// Time a client has to send a request's headers, and to start the next one on a kept-alive
/// connection.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection may make no progress reading or writing (a slow body, a client that
/// does not read the response), while none of its requests is being handled.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time an evicted connection has to finish its request.
pub(crate) const EVICT_GRACE: Duration = Duration::from_secs(1);
/// Largest request body taken (drain reasons are a few hundred bytes).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// Time a client has to finish the TLS handshake on the HTTPS admin port.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin port's TLS: the setup of the live snapshot for each new connection. A reload
/// that turned admin TLS off keeps the last setup (the scheme of a running port does not
/// change; the reload warns that it takes effect at restart).
pub(super) struct AdminTls {
    snapshot: SnapshotCell,
    last: Mutex<Arc<rustls::ServerConfig>>,
}

impl AdminTls {
    /// Returns the admin TLS of `snapshot`, when its config sets it.
    pub(super) fn of(snapshot: &SnapshotCell) -> Option<Self> {
        let first = snapshot.load().admin_tls.clone()?;
        Some(Self {
            snapshot: snapshot.clone(),
            last: Mutex::new(first),
        })
    }

    /// Returns the acceptor of the next connection.
    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(current) = &self.snapshot.load().admin_tls
            && !Arc::ptr_eq(current, &last)
        {
            *last = current.clone();
        }
        tokio_rustls::TlsAcceptor::from(last.clone())
    }
}

/// The connections being served, oldest first, each with the token that evicts it.
#[derive(Default)]
struct Open {
    next: u64,
    by_age: BTreeMap<u64, CancellationToken>,
}

/// Serves `router` on `listener` (over TLS with `tls`) until `token` is cancelled.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<AdminTls>,
    token: CancellationToken,
) {
    let router = router
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(json_errors));
    let descriptors = Arc::new(Semaphore::new(MAX_OPEN_CONNECTIONS));
    let open = Arc::new(Mutex::new(Open::default()));
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = descriptors.clone().try_acquire_owned() else {
            debug!(%peer, "admin connection limit reached, closing");
            continue;
        };
        let evict = token.child_token();
        let id = {
            let mut o = open.lock().unwrap_or_else(|p| p.into_inner());
            if o.by_age.len() >= MAX_CONNECTIONS
                && let Some((_, oldest)) = o.by_age.pop_first()
            {
                oldest.cancel();
            }
            let id = o.next;
            o.next += 1;
            o.by_age.insert(id, evict.clone());
            id
        };
        let router = router.clone();
        let open = open.clone();
        let acceptor = tls.as_ref().map(AdminTls::acceptor);
        tracker.spawn(async move {
            match acceptor {
                None => connection(stream, peer, router, evict).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let stream = tokio::select! {
                        r = handshake => r,
                        _ = evict.cancelled() => Ok(Err(io::ErrorKind::ConnectionAborted.into())),
                    };
                    match stream {
                        Ok(Ok(stream)) => connection(stream, peer, router, evict).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "admin TLS handshake failed"),
                        Err(_) => debug!(%peer, "admin TLS handshake timed out"),
                    }
                }
            }
            open.lock()
                .unwrap_or_else(|p| p.into_inner())
                .by_age
                .remove(&id);
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Serves one connection until it closes, times out, or `evict` is cancelled (then it gets
/// [`EVICT_GRACE`] to finish).
async fn connection<S>(stream: S, peer: SocketAddr, router: Router, evict: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handling = Arc::new(AtomicUsize::new(0));
    let in_service = Arc::clone(&handling);
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        // Counted until the handler's future ends or is dropped: a slow handler (a reload of a
        // large config) is not a stalled client.
        let busy = Busy::enter(&in_service);
        // Router is always ready (its poll_ready returns Ready): calling it directly is fine.
        let response = tower_service::Service::call(&mut router, request.map(Body::new));
        async move {
            let response = response.await;
            drop(busy);
            response
        }
    });
    let io = TokioIo::new(Stalled::new(stream, IDLE_TIMEOUT, handling));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = evict.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(EVICT_GRACE, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "admin connection ended with an error");
    }
}

/// Turns every error response that is not JSON yet (axum's extractor rejections) into
/// `{"error": "..."}`, and refuses a declared body over [`MAX_BODY`] before routing.
async fn json_errors(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, too_large());
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
        _ => text,
    };
    let mut out = error(status, message);
    // Keep what the inner response said besides its body (e.g. Allow, WWW-Authenticate).
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

fn too_large() -> String {
    format!("request body larger than {MAX_BODY} bytes")
}

fn error(status: StatusCode, message: String) -> Response {
    let mut r = (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// One request being handled on a connection, for [`Stalled`]: counted from the call of the
/// handler until its future ends or is dropped.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that fails with `TimedOut` once neither reading nor writing has made progress
/// for its timeout while one of them was waiting.
struct Stalled<S> {
    inner: S,
    timeout: Duration,
    last_progress: Instant,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Requests of this connection being handled: while one is, waiting is the server's, not
    /// the client's, and the connection is not stalled.
    handling: Arc<AtomicUsize>,
}

impl<S> Stalled<S> {
    fn new(inner: S, timeout: Duration, handling: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            timeout,
            last_progress: Instant::now(),
            sleep: Box::pin(tokio::time::sleep(timeout)),
            handling,
        }
    }

    /// Called when the inner stream is pending: errors once stalled too long, else arranges
    /// to be woken at the deadline.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            if self.handling.load(Ordering::Relaxed) > 0 {
                self.last_progress = Instant::now();
            }
            let deadline = self.last_progress + self.timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no progress on the admin connection",
                ));
            }
            // Progress was made since the timer was set: wait for the new deadline.
            self.sleep
                .as_mut()
                .reset(tokio::time::Instant::from_std(deadline));
        }
    }

    fn progress<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.last_progress = Instant::now();
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_stalled(cx).map(Err),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalled<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.progress(r, cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalled<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(r, cx)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A handler that runs longer than the idle timeout (a reload of a large config on a busy
    /// machine) keeps its connection; once no request is handled, silence cuts it as before.
    #[tokio::test]
    async fn a_connection_is_not_stalled_while_its_request_is_handled() {
        let (_client, server) = tokio::io::duplex(64);
        let handling = Arc::new(AtomicUsize::new(0));
        let timeout = Duration::from_millis(100);
        let mut stalled = Stalled::new(server, timeout, Arc::clone(&handling));
        let mut buf = [0u8; 8];

        let busy = Busy::enter(&handling);
        // Ten idle timeouts of silence while the request is handled: still open.
        let waited = tokio::time::timeout(10 * timeout, stalled.read(&mut buf)).await;
        assert!(
            waited.is_err(),
            "the connection ended while its request was handled: {waited:?}"
        );

        drop(busy);
        let read = tokio::time::timeout(Duration::from_secs(30), stalled.read(&mut buf))
            .await
            .expect("a silent connection with no request handled was not cut");
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
