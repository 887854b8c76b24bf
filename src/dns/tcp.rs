//! DNS over TCP (RFC 7766): length-prefixed messages, pipelined queries answered in order,
//! idle and stalled connections closed, and caps on concurrent connections, in all and per
//! client network.
//!
//! The per-network cap ([`Limits::max_per_network`], `server.tcp_max_connections_per_network`)
//! keeps one client network (a /24 or a /56, as [`NETWORK_V4_PREFIX`] and
//! [`NETWORK_V6_PREFIX`] say) from taking every slot of the global cap: past it, its new
//! connections are closed at accept while other networks are still served (issue 9).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::cache::AnswerCache;
use super::{Answerer, Transport};

#[cfg(target_os = "linux")]
mod plain;

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
    // Plain TCP on Linux: threads of its own (`plain`); on tokio (below) only should they fail
    // to start, and elsewhere.
    #[cfg(target_os = "linux")]
    let listener = match tls {
        Some(_) => listener,
        None => match plain::serve(listener, answerer.clone(), token.clone(), limits).await {
            Ok(()) => return,
            Err(listener) => listener,
        },
    };
    if tls.is_none() {
        // Inherited by every accepted connection: a close is a reset unless `close` says
        // otherwise. A connection refused at accept (over a cap) is reset too: it cost the
        // client nothing yet, and the server keeps no state for it.
        if let Err(e) = socket2::SockRef::from(&listener).set_linger(Some(Duration::ZERO)) {
            debug!(error = %e, "cannot set SO_LINGER on the tcp listener");
        }
    }
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
        let idle = limits.idle_timeout;
        // Two task types: a plain TCP task does not carry the (large) TLS session state,
        // which tokio would copy around when spawning each one.
        let Some(acceptor) = &tls else {
            tracker.spawn(async move {
                // On Linux the listener's TCP_NODELAY is inherited (`app::bind_tcp`).
                #[cfg(not(target_os = "linux"))]
                let _ = stream.set_nodelay(true);
                let mut stream = stream;
                let end =
                    connection(&mut stream, peer, answerer, token, idle, Transport::Tcp).await;
                close(&stream, end);
                drop(stream);
                drop(permit);
                drop(slot);
            });
            continue;
        };
        let acceptor = acceptor.clone();
        tracker.spawn(async move {
            #[cfg(not(target_os = "linux"))]
            let _ = stream.set_nodelay(true);
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
            drop(permit);
            drop(slot);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Bytes read at once when the connection is opened: a few dozen pipelined queries. The
/// buffer grows (up to one whole message of 65,535 bytes) only when a longer message comes.
const READ_BUF: usize = 4096;

/// Framed answers gathered before they are written: past this, the batch is written before
/// the next query is answered, so that a long pipeline does not hold all of its answers.
const WRITE_BATCH: usize = 16 * 1024;

thread_local! {
    /// Prebuilt static answers of this runtime worker thread, shared by the connections it
    /// serves (see [`AnswerCache`]; the UDP threads have one each too). Used only between two
    /// awaits, so never borrowed twice.
    static CACHE: RefCell<AnswerCache> = RefCell::new(AnswerCache::new());
}

/// Serves one connection, plain TCP or a TLS session over it.
///
/// Batched: each read takes as many bytes as the buffer holds, every complete query in it is
/// answered in order (RFC 7766 §6.2.1.1 allows out of order; in order is simpler and what
/// clients expect of a server that answers at once), and the answers go out together in one
/// write. Buffers are reused: no allocation per message on this loop. One timer per
/// connection: the time since the last complete query (or the connection's start) while
/// reading, the time since the write began while writing, both `idle_timeout`.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    answerer: Answerer,
    token: CancellationToken,
    idle_timeout: Duration,
    transport: Transport,
) -> End {
    let mut conn = Conn {
        input: Vec::with_capacity(READ_BUF),
        start: 0,
        out: Vec::with_capacity(512),
        pending: Vec::new(),
        timer: Timer::new(idle_timeout),
    };
    let cancelled = token.cancelled();
    tokio::pin!(cancelled);
    let mut last_query = Instant::now();
    loop {
        // Every complete message in the buffer, in order.
        let mut answered = false;
        while let Some(msg) = conn.next_message() {
            answered = true;
            if !conn.answer(&answerer, msg, peer, transport) {
                return End::Other;
            }
            if conn.pending.len() >= WRITE_BATCH
                && let Err(end) = conn.flush(&mut stream, peer).await
            {
                return end;
            }
        }
        if answered {
            last_query = Instant::now();
        }
        if !conn.pending.is_empty()
            && let Err(end) = conn.flush(&mut stream, peer).await
        {
            return end;
        }
        conn.make_room();
        // Wait for more: closed, reset, cancelled or idle too long ends the connection.
        let deadline = last_query + idle_timeout;
        let Conn { input, timer, .. } = &mut conn;
        let read = async {
            loop {
                tokio::select! {
                    biased;
                    // Into the free capacity: nothing to zero first.
                    r = stream.read_buf(input) => return r.ok(),
                    _ = &mut cancelled => return None,
                    expired = timer.wait(deadline) => if expired { return None },
                }
            }
        };
        match read.await {
            Some(0) => return End::PeerClosed,
            None => return End::Other,
            Some(_) => {}
        }
    }
}

/// Why [`connection`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed its side with every query answered and every answer written.
    PeerClosed,
    /// A write made no progress within the idle timeout: the client stopped reading.
    Stalled,
    /// Anything else: idle, cancelled, a read or write error, a message too long.
    Other,
}

/// Closes a plain TCP connection. The listener's `SO_LINGER` 0, inherited by the connection
/// (see [`serve`]), makes the close a reset (RST) in two cases:
/// - the client has closed its side and has acknowledged every byte written (`SIOCOUTQ` is
///   0): it has every answer and will send nothing more, so the reset loses nothing, and it
///   spares the server the FIN, the client's ACK of it and the `LAST_ACK` state, and the
///   client a `TIME_WAIT` socket, so that a client opening one connection per query is not
///   slowed by them (bench/README.md, issue 18 item 1: 1.5–1.75x the one-shot connections per
///   second; the server's CPU per connection at an equal rate did not move past the noise).
///   A client that shut only its sending side reads its answers, then ECONNRESET instead of
///   end-of-file;
/// - the client stopped reading: the answers it left unread are dropped at once instead of
///   being retried by an orphaned socket.
///
/// Otherwise (idle, shutdown, errors, or bytes not yet acknowledged) it clears the linger
/// first, so the close is an orderly FIN after the data.
/// The caller drops the stream after.
fn close<S: std::os::fd::AsFd>(stream: &S, end: End) {
    let reset = match end {
        End::PeerClosed => all_acknowledged(stream),
        End::Stalled => true,
        End::Other => false,
    };
    if !reset && let Err(e) = socket2::SockRef::from(stream).set_linger(None) {
        debug!(error = %e, "cannot clear SO_LINGER before closing");
    }
}

/// Whether the peer has acknowledged every byte written on `stream` (Linux: `SIOCOUTQ` is 0).
#[cfg(target_os = "linux")]
fn all_acknowledged<S: std::os::fd::AsFd>(stream: &S) -> bool {
    use std::os::fd::AsRawFd;
    let mut unacked: libc::c_int = -1;
    // SAFETY: TIOCOUTQ (SIOCOUTQ for TCP) writes one int through the pointer, which points to
    // a live c_int; the descriptor is the stream's own and open for the duration of the call.
    let r = unsafe { libc::ioctl(stream.as_fd().as_raw_fd(), libc::TIOCOUTQ, &mut unacked) };
    r == 0 && unacked == 0
}

/// Elsewhere: not known, so never (an orderly close).
#[cfg(not(target_os = "linux"))]
fn all_acknowledged<S: std::os::fd::AsFd>(_: &S) -> bool {
    false
}

/// The buffers and the timer of one connection.
struct Conn {
    /// Bytes read; `input[start..]` not yet answered. Read into its free capacity.
    input: Vec<u8>,
    start: usize,
    /// One response, as the answer path writes it.
    out: Vec<u8>,
    /// Framed responses not yet written.
    pending: Vec<u8>,
    timer: Timer,
}

/// The complete length-prefixed message (RFC 1035 §4.2.2) that begins at `buf[start..]`, if
/// all of it is there: its range in `buf`, the two length bytes left out.
fn next_frame(buf: &[u8], start: usize) -> Option<std::ops::Range<usize>> {
    let [a, b, ..] = *buf.get(start..)? else {
        return None;
    };
    let msg = start + 2..start + 2 + usize::from(u16::from_be_bytes([a, b]));
    (msg.end <= buf.len()).then_some(msg)
}

/// The bytes a buffer holding `buffered` (from the start of a message) must have room for: all
/// of the message it begins (up to 2 + 65,535 bytes), and at least one more byte to read.
fn frame_room(buffered: &[u8]) -> usize {
    match buffered {
        [a, b, ..] => 2 + usize::from(u16::from_be_bytes([*a, *b])),
        _ => 2,
    }
    .max(buffered.len() + 1)
}

impl Conn {
    /// Takes the next complete message out of the buffer; returns its range in `input`.
    fn next_message(&mut self) -> Option<std::ops::Range<usize>> {
        let msg = next_frame(&self.input, self.start)?;
        self.start = msg.end;
        Some(msg)
    }

    /// Answers the message at `msg` and appends the framed response to `pending`; returns
    /// false when the connection must close.
    fn answer(
        &mut self,
        answerer: &Answerer,
        msg: std::ops::Range<usize>,
        peer: SocketAddr,
        transport: Transport,
    ) -> bool {
        let Some(query) = self.input.get(msg) else {
            return false;
        };
        let out = &mut self.out;
        let answered = CACHE.with(|cache| match cache.try_borrow_mut() {
            Ok(mut cache) => answerer.respond_cached(query, peer, transport, out, &mut cache),
            Err(_) => answerer.respond(query, peer, transport, out),
        });
        !answered || frame(answerer, peer, transport, out, &mut self.pending)
    }

    /// Moves the unanswered bytes to the front of the buffer and makes sure the rest of the
    /// message they begin (up to 2 + 65,535 bytes) fits in its capacity, with room to read.
    fn make_room(&mut self) {
        if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
        }
        let need = frame_room(&self.input);
        if need > self.input.capacity() {
            self.input.reserve(need - self.input.len());
        }
    }

    /// Writes the pending responses (and flushes: a TLS stream buffers records until then);
    /// returns why when the connection must close. A client that stops reading must not hold
    /// the connection (and its slot) forever: a write not done within `idle_timeout` closes
    /// it. Not cut short by shutdown: answers to queries already read are sent.
    async fn flush<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        peer: SocketAddr,
    ) -> Result<(), End> {
        let deadline = Instant::now() + self.timer.idle;
        let Self { pending, timer, .. } = self;
        let write = async {
            stream.write_all(pending).await?;
            stream.flush().await
        };
        tokio::pin!(write);
        let written = loop {
            tokio::select! {
                biased;
                r = &mut write => break r,
                expired = timer.wait(deadline) => if expired {
                    debug!(%peer, "tcp write timed out, closing");
                    return Err(End::Stalled);
                },
            }
        };
        pending.clear();
        if let Err(e) = written {
            debug!(%peer, error = %e, "tcp write failed");
            return Err(End::Other);
        }
        Ok(())
    }
}

/// Offers the response in `out` to the query log and appends it, framed, to `pending`;
/// returns false when the connection must close.
fn frame(
    answerer: &Answerer,
    peer: SocketAddr,
    transport: Transport,
    out: &[u8],
    pending: &mut Vec<u8>,
) -> bool {
    answerer.query_log.offer(peer, transport.as_str(), out);
    // The answer path truncates anything longer (RFC 1035 §4.2.2: the length is 16 bits);
    // should it ever not, a wrong length prefix would desynchronize the stream: close.
    let Ok(len) = u16::try_from(out.len()) else {
        debug!(%peer, len = out.len(), "tcp response longer than 65535 bytes, closing");
        return false;
    };
    pending.extend_from_slice(&len.to_be_bytes());
    pending.extend_from_slice(out);
    true
}

/// One timer per connection, re-armed only when it fires before the deadline of the moment
/// (or is set later than it): moving a deadline forward on every query costs nothing, where a
/// new `tokio::time::timeout` per read and write would register a timer each.
struct Timer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// When `sleep` fires.
    at: Instant,
    idle: Duration,
}

impl Timer {
    fn new(idle: Duration) -> Self {
        let at = Instant::now() + idle;
        Self {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            at,
            idle,
        }
    }

    /// Waits until `deadline` (or, when the timer is set later, re-arms it first). Resolves
    /// to true when the deadline has passed, false when it fired early and was re-armed (the
    /// caller polls again).
    async fn wait(&mut self, deadline: Instant) -> bool {
        if deadline < self.at {
            self.rearm(deadline);
        }
        (&mut self.sleep).await;
        if Instant::now() >= deadline {
            return true;
        }
        self.rearm(deadline);
        false
    }

    fn rearm(&mut self, at: Instant) {
        self.at = at;
        self.sleep.as_mut().reset(at);
    }
}

#[cfg(test)]
mod tests {
    use super::{frame_room, next_frame};

    #[test]
    fn a_frame_is_taken_only_when_all_of_it_is_there() {
        // Two messages of 3 and 0 bytes, then the first byte of a third's length.
        let buf = [0, 3, b'a', b'b', b'c', 0, 0, 0];
        assert_eq!(next_frame(&buf, 0), Some(2..5));
        assert_eq!(next_frame(&buf, 5), Some(7..7));
        assert_eq!(next_frame(&buf, 7), None, "half a length");
        assert_eq!(next_frame(&buf, 8), None, "nothing left");
        assert_eq!(next_frame(&buf, 9), None, "past the end");
        assert_eq!(next_frame(&buf[..4], 0), None, "body incomplete");
        let long = [0xff, 0xff, 1, 2];
        assert_eq!(next_frame(&long, 0), None, "65,535 bytes announced");
    }

    #[test]
    fn room_is_the_whole_message_begun_and_one_byte_more() {
        assert_eq!(frame_room(&[]), 2);
        assert_eq!(frame_room(&[0]), 2);
        assert_eq!(frame_room(&[0, 3, b'a']), 5);
        assert_eq!(frame_room(&[0xff, 0xff]), 2 + 65_535);
        // A whole message and more buffered: room to read past them.
        assert_eq!(frame_room(&[0, 1, b'a', 0]), 5);
    }
}
