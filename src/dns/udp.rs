//! DNS over UDP: one or more SO_REUSEPORT sockets per listen address, each served by its own
//! OS thread.
//!
//! The kernel spreads datagrams over the sockets of one address (SO_REUSEPORT hashes the
//! client's address and port), so one socket per core gives each core its own queue. Each
//! thread blocks in `recvmmsg(2)` for up to [`BATCH`] datagrams at once, answers them with
//! [`Answerer::respond`] and sends every response with one `sendmmsg(2)`: two system calls
//! per batch instead of two per query and no async runtime on the path. This is what gdnsd
//! does too; a tokio task per socket doing `recv_from`/`send_to` reached 0.8x gdnsd's queries
//! per second on the bench (bench/README.md). Other Unix systems get a plain
//! `recv_from`/`send_to` loop on the same thread layout.
//!
//! Shutdown: the socket has a receive timeout ([`POLL_INTERVAL`]), after which the thread
//! checks the cancellation token; [`serve`] resolves once the thread has returned.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

#[cfg(target_os = "linux")]
use super::cache::AnswerCache;
use super::rrl::{self, Limiter, Verdict};
use super::{Answerer, Transport};
use crate::config::RateLimit;

/// Largest datagram we read; longer queries are truncated by the kernel and then FORMERR.
const MAX_QUERY: usize = 4096;

/// Datagrams received (and responses sent) per system call at most.
pub(crate) const BATCH: usize = 32;

/// How often a thread blocked in receive wakes up to check for shutdown.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Binds `count` UDP sockets sharing `addr` (SO_REUSEPORT); port 0 picks one free port for all.
/// Each asks for a receive buffer of `receive_buffer` bytes (`server.udp_receive_buffer`; 0:
/// the system's default).
pub(crate) fn bind(
    addr: SocketAddr,
    count: usize,
    receive_buffer: usize,
) -> io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_reuse_port(true)?;
        // Blocking, with a timeout so that the serving thread notices shutdown.
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(POLL_INTERVAL))?;
        // By default bursts of queries queue in the kernel rather than be dropped; what the
        // kernel grants is capped by net.core.rmem_max (not an error).
        if receive_buffer > 0 {
            let _ = socket.set_recv_buffer_size(receive_buffer);
        }
        let _ = socket.set_send_buffer_size(4 << 20);
        socket.bind(&addr.into())?;
        let std: UdpSocket = socket.into();
        addr = std.local_addr()?;
        sockets.push(std);
    }
    Ok(sockets)
}

/// Answers queries on `socket` (from [`bind`]) on a dedicated thread until `token` is
/// cancelled; resolves when that thread has stopped. `limiter` is shared by every UDP socket
/// of the process, so that `[rate_limit]` holds per client network whichever socket the
/// kernel hands a datagram to.
pub(crate) async fn serve(
    socket: UdpSocket,
    answerer: Answerer,
    limiter: Arc<Limiter>,
    token: CancellationToken,
) {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let name = match socket.local_addr() {
        Ok(a) => format!("dns-udp-{}", a.port()),
        Err(_) => "dns-udp".to_string(),
    };
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        run(&socket, &answerer, &limiter, &token);
        let _ = done_tx.send(());
    });
    match spawned {
        // Resolves with Ok when the thread says it is done, Err if it died without saying so.
        Ok(_) => {
            let _ = done_rx.await;
        }
        Err(e) => warn!(error = %e, "cannot start a dns/udp thread"),
    }
}

/// The receive-answer-send loop of one socket.
#[cfg(target_os = "linux")]
fn run(socket: &UdpSocket, answerer: &Answerer, limiter: &Limiter, token: &CancellationToken) {
    let mut batch = mmsg::Batch::new();
    let mut cache = AnswerCache::new();
    while !token.is_cancelled() {
        let n = match receive(&mut batch, socket) {
            Ok(n) => n,
            Err(e) => {
                log_receive_error(&e);
                continue;
            }
        };
        // Read once per batch: a reload may add, change or remove `[rate_limit]`.
        let rate_limit = answerer.snapshot.load().config.rate_limit;
        let now = Instant::now();
        for i in 0..n {
            let Some((query, peer, out)) = batch.query(i) else {
                continue;
            };
            // Rate limiting first: a dropped query costs no answer and no signature (issue 14).
            let verdict = admit(limiter, rate_limit.as_ref(), answerer, peer, query, now);
            let send = verdict != Verdict::Drop
                && answerer.respond_cached(query, peer, Transport::Udp, out, &mut cache)
                && (verdict == Verdict::Send || rrl::truncate(out));
            if send {
                answerer.query_log.offer(peer, Transport::Udp.as_str(), out);
            }
            batch.set_reply(i, send);
        }
        if let Err(e) = batch.send(socket, n) {
            debug!(error = %e, "udp send failed");
        }
    }
}

/// Takes the next batch of datagrams: blocks until at least one is queued (returns at once
/// when some are), as gdnsd does. No poll-`sched_yield`-poll first: the yield hands the core
/// to whatever else is runnable (the client, on the bench) and the datagrams that arrive
/// meanwhile wait for its time slice. Measured in interleaved runs (bench/README.md, issue 18
/// item 3): at 80,000 q/s, p50 0.14 ms and p99 2.5 ms with the yield against 0.07 ms and
/// 1.1 ms without (gdnsd 0.06 and 0.9 ms); at full speed queries/s within noise of gdnsd.
#[cfg(target_os = "linux")]
fn receive(batch: &mut mmsg::Batch, socket: &UdpSocket) -> io::Result<usize> {
    batch.recv(socket, 0)
}

/// Applies the rate limit to `query` from `peer`, before it is answered: returns whether to
/// answer it, answer it truncated (it slips) or drop it, and counts the last two. A valid DNS
/// cookie in the query exempts it.
fn admit(
    limiter: &Limiter,
    config: Option<&RateLimit>,
    answerer: &Answerer,
    peer: SocketAddr,
    query: &[u8],
    now: Instant,
) -> Verdict {
    let Some(config) = config else {
        return Verdict::Send;
    };
    // A client that proved its address with a valid DNS server cookie (RFC 7873 §5.3) is
    // exempt. Only checked with `[rate_limit]` on.
    let snap = answerer.snapshot.load();
    let secrets = super::cookie::secrets(&snap.config);
    let exempt = super::cookie::has_valid(query, peer.ip(), secrets);
    let verdict = limiter.check(config, peer.ip(), now, exempt);
    match verdict {
        Verdict::Send => {}
        Verdict::Slip => {
            answerer.metrics.rate_limited_slip.inc();
        }
        Verdict::Drop => {
            answerer.metrics.rate_limited_drop.inc();
        }
    }
    verdict
}

/// Logs a failed receive at debug level, unless it is the timeout that lets the thread check
/// for shutdown (or an interrupted call). ICMP errors from earlier sends surface here on some
/// systems: never fatal.
fn log_receive_error(e: &io::Error) {
    if !matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    ) {
        debug!(error = %e, "udp receive failed");
    }
}

/// The receive-answer-send loop of one socket.
#[cfg(not(target_os = "linux"))]
fn run(socket: &UdpSocket, answerer: &Answerer, limiter: &Limiter, token: &CancellationToken) {
    let mut buf = vec![0u8; MAX_QUERY];
    let mut out = Vec::with_capacity(super::response::MAX_UDP_PAYLOAD as usize);
    while !token.is_cancelled() {
        let (len, peer) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) => {
                log_receive_error(&e);
                continue;
            }
        };
        let rate_limit = answerer.snapshot.load().config.rate_limit;
        let query = &buf[..len];
        let verdict = admit(
            limiter,
            rate_limit.as_ref(),
            answerer,
            peer,
            query,
            Instant::now(),
        );
        if verdict != Verdict::Drop
            && answerer.respond(query, peer, Transport::Udp, &mut out)
            && (verdict == Verdict::Send || rrl::truncate(&mut out))
        {
            answerer
                .query_log
                .offer(peer, Transport::Udp.as_str(), &out);
            if let Err(e) = socket.send_to(&out, peer) {
                debug!(%peer, error = %e, "udp send failed");
            }
        }
    }
}

/// `recvmmsg`/`sendmmsg` batches: the unsafe code of this module, kept to building the
/// message headers and the two calls.
#[cfg(target_os = "linux")]
mod mmsg {
    use std::io;
    use std::mem;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
    use std::os::fd::AsRawFd;

    use super::{BATCH, MAX_QUERY};
    use crate::dns::response::MAX_UDP_PAYLOAD;

    /// Buffers for [`BATCH`] queries and their responses, reused for every batch.
    pub(super) struct Batch {
        queries: Vec<[u8; MAX_QUERY]>,
        lens: [usize; BATCH],
        addrs: [libc::sockaddr_storage; BATCH],
        addr_lens: [libc::socklen_t; BATCH],
        replies: Vec<Vec<u8>>,
        send: [bool; BATCH],
    }

    impl Batch {
        pub(super) fn new() -> Self {
            Self {
                queries: vec![[0u8; MAX_QUERY]; BATCH],
                lens: [0; BATCH],
                // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
                addrs: unsafe { mem::zeroed() },
                addr_lens: [0; BATCH],
                replies: (0..BATCH)
                    .map(|_| Vec::with_capacity(MAX_UDP_PAYLOAD as usize))
                    .collect(),
                send: [false; BATCH],
            }
        }

        /// Takes every queued datagram up to [`BATCH`]; returns how many. With `flags` 0 it
        /// blocks until one arrives (or the socket's timeout passes); with `MSG_DONTWAIT` it
        /// fails with `WouldBlock` when none is queued.
        pub(super) fn recv(&mut self, socket: &UdpSocket, flags: libc::c_int) -> io::Result<usize> {
            // SAFETY: zeroed iovec/mmsghdr are valid; every pointer set below points into
            // `self`, which outlives the call, and the lengths are those of the buffers.
            let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            for i in 0..BATCH {
                iovs[i].iov_base = self.queries[i].as_mut_ptr().cast();
                iovs[i].iov_len = MAX_QUERY;
                let h = &mut hdrs[i].msg_hdr;
                h.msg_name = (&raw mut self.addrs[i]).cast();
                h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_iov = &raw mut iovs[i];
                h.msg_iovlen = 1;
            }
            // SAFETY: see above; MSG_WAITFORONE returns as soon as one datagram is in.
            let n = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_WAITFORONE | flags,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = (n as usize).min(BATCH);
            for (i, h) in hdrs.iter().take(n).enumerate() {
                self.lens[i] = (h.msg_len as usize).min(MAX_QUERY);
                self.addr_lens[i] = h.msg_hdr.msg_namelen;
                self.send[i] = false;
            }
            Ok(n)
        }

        /// Returns datagram `i`, its sender and the buffer for its response.
        pub(super) fn query(&mut self, i: usize) -> Option<(&[u8], SocketAddr, &mut Vec<u8>)> {
            let peer = to_socket_addr(self.addrs.get(i)?)?;
            let query = self.queries.get(i)?.get(..*self.lens.get(i)?)?;
            Some((query, peer, self.replies.get_mut(i)?))
        }

        /// Marks whether response `i` is to be sent.
        pub(super) fn set_reply(&mut self, i: usize, send: bool) {
            if let Some(s) = self.send.get_mut(i) {
                *s = send;
            }
        }

        /// Sends the marked responses among the first `n`, each to the address its query came
        /// from. A datagram the kernel refuses is skipped (and reported), not retried.
        pub(super) fn send(&mut self, socket: &UdpSocket, n: usize) -> io::Result<()> {
            // SAFETY: as in `recv`: pointers into `self`, valid for the duration of the call.
            let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
            let mut count = 0;
            for i in 0..n.min(BATCH) {
                if !self.send[i] {
                    continue;
                }
                iovs[count].iov_base = self.replies[i].as_mut_ptr().cast();
                iovs[count].iov_len = self.replies[i].len();
                let h = &mut hdrs[count].msg_hdr;
                h.msg_name = (&raw mut self.addrs[i]).cast();
                h.msg_namelen = self.addr_lens[i];
                h.msg_iov = &raw mut iovs[count];
                h.msg_iovlen = 1;
                count += 1;
            }
            let mut done = 0;
            let mut error = None;
            while done < count {
                // SAFETY: `done < count <= BATCH`: the slice of headers is in bounds.
                let r = unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        hdrs.as_mut_ptr().add(done),
                        (count - done) as libc::c_uint,
                        0,
                    )
                };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // The first unsent datagram failed (e.g. EAGAIN with a full buffer after
                    // the send timeout, or an unroutable address): skip it.
                    done += 1;
                    error = Some(e);
                } else {
                    done += r as usize;
                }
            }
            error.map_or(Ok(()), Err)
        }
    }

    /// Converts a sockaddr filled in by the kernel.
    fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match s.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the family says it is a sockaddr_in, which fits in sockaddr_storage.
                let a: &libc::sockaddr_in =
                    unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: as above, for sockaddr_in6.
                let a: &libc::sockaddr_in6 =
                    unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sockets_share_one_port_and_time_out_for_shutdown_checks() {
        let sockets = bind("127.0.0.1:0".parse().unwrap(), 2, 0).unwrap();
        assert_eq!(sockets.len(), 2);
        let port = sockets[0].local_addr().unwrap().port();
        assert_eq!(sockets[1].local_addr().unwrap().port(), port);
        assert_eq!(sockets[0].read_timeout().unwrap(), Some(POLL_INTERVAL));
    }

    /// `server.udp_receive_buffer`: the size asked is what the socket gets (Linux doubles it
    /// for its bookkeeping); 0 leaves the system's default.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_receive_buffer_is_the_one_asked_or_the_system_default() {
        let rcvbuf = |s: &UdpSocket| socket2::SockRef::from(s).recv_buffer_size().unwrap();
        let small = bind("127.0.0.1:0".parse().unwrap(), 1, 65_536).unwrap();
        assert_eq!(rcvbuf(&small[0]), 2 * 65_536);
        let default = bind("127.0.0.1:0".parse().unwrap(), 1, 0).unwrap();
        let system: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_default")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(rcvbuf(&default[0]), system);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_batch_receives_queued_datagrams_and_replies_to_each_sender() {
        let server = bind("127.0.0.1:0".parse().unwrap(), 1, 0)
            .unwrap()
            .remove(0);
        let to = server.local_addr().unwrap();
        let clients: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (i, c) in clients.iter().enumerate() {
            c.send_to(&[i as u8; 20], to).unwrap();
        }
        let mut batch = mmsg::Batch::new();
        let mut got = 0;
        while got < 3 {
            let n = batch.recv(&server, 0).unwrap();
            for i in 0..n {
                let (q, peer, out) = batch.query(i).unwrap();
                assert_eq!(q.len(), 20);
                out.clear();
                out.extend_from_slice(q);
                out.push(peer.port() as u8);
                batch.set_reply(i, true);
            }
            batch.send(&server, n).unwrap();
            got += n;
        }
        for (i, c) in clients.iter().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 64];
            let (len, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!(from, to);
            assert_eq!(len, 21);
            assert_eq!(buf[0], i as u8);
            assert_eq!(buf[20], c.local_addr().unwrap().port() as u8);
        }
    }
}
