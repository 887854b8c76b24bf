//! Plain DNS over TCP on Linux, off the tokio scheduler (issue 18 item 1): one thread per core,
//! each with an epoll instance of its own, as gdnsd does.
//!
//! Why not the tokio tasks that DNS over TLS uses: a client that opens one connection per
//! query cost a tokio task, its timer, a wake-up of another worker thread, the accept loop's
//! closing `EAGAIN` and a deregistration per connection, about 12 system calls and 1.9 context
//! switches per connection against gdnsd's 7.5 and 1.25 (bench/README.md, "TCP (item 1)").
//! Here:
//! - the listener is shared by the threads, level-triggered with `EPOLLEXCLUSIVE` (one thread
//!   woken per connection; it accepts one and polls again, so no `accept4` ends in `EAGAIN`);
//! - `TCP_DEFER_ACCEPT` (1 s): the kernel hands a connection over once its first bytes have
//!   come, so the query is read, answered and written at once, on the accepting thread, and
//!   the connection joins the epoll set only to wait for the next query or the client's close;
//! - closing the socket removes it from the epoll set (no `EPOLL_CTL_DEL`);
//! - one timer heap per thread for the idle and write timeouts; buffers stay with their slot
//!   and serve the next connection (no allocation per connection once warm, none per message).
//!
//! The rules are those of the tokio loop ([`super::connection`]): every complete query in a
//! read is answered in order, the answers written together (up to [`WRITE_BATCH`] at a time);
//! a connection is closed when no complete query came for `idle_timeout`, when a write makes no
//! progress for `idle_timeout` (reset: [`End::Stalled`]), at shutdown once its answers are
//! written, and how it closes is [`super::close`]'s. The caps are the listener's, shared by its
//! threads.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{End, Limits, NetworkSlot, PerNetwork, READ_BUF, WRITE_BATCH};
use crate::dns::cache::AnswerCache;
use crate::dns::{Answerer, Transport};

/// How long a thread sleeps in `epoll_wait` at most: how soon it sees a shutdown.
const TICK: Duration = Duration::from_millis(100);

/// After an accept error other than "nothing to accept" (EMFILE and friends), the listener is
/// left alone this long instead of being polled in a spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// `TCP_DEFER_ACCEPT`, seconds: a client that connects and sends nothing is handed over after
/// about this long (the kernel's next SYN-ACK retransmission), then the idle timeout applies.
const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// The first thread's CPU time per second of a window above which the other threads accept
/// connections too, and below which they stop (and serve only the ones they have).
const SPREAD_ABOVE: f64 = 0.5;
const SPREAD_BELOW: f64 = 0.25;
/// How often the first thread's busy share is looked at.
const LOAD_WINDOW: Duration = Duration::from_millis(50);

/// The epoll data of the listener; a connection's is its slot and generation.
const LISTENER: u64 = u64::MAX;

/// Serves plain TCP on `listener` with one thread per core until `token` is cancelled, then
/// waits for every connection to finish (its answers written). Returns the listener back when
/// the threads cannot be set up at all (the caller then serves it on tokio).
pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    answerer: Answerer,
    token: CancellationToken,
    limits: Limits,
) -> Result<(), tokio::net::TcpListener> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut polls = Vec::with_capacity(threads);
    for _ in 0..threads {
        match Epoll::new() {
            Ok(p) => polls.push(p),
            Err(e) => {
                warn!(error = %e, "cannot create an epoll instance for dns/tcp, serving it on tokio");
                return Err(listener);
            }
        }
    }
    let listener = match listener.into_std() {
        Ok(l) => socket2::Socket::from(l),
        Err(e) => {
            // Not expected: deregistering from tokio's reactor failed, and the listener is gone.
            warn!(error = %e, "cannot take the dns/tcp listener off tokio");
            return Ok(());
        }
    };
    prepare(&listener);
    let port = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map_or(0, |a| a.port());
    let shared = Arc::new(Shared {
        listener,
        answerer,
        limits,
        open: AtomicUsize::new(0),
        per_network: PerNetwork::default(),
        token,
        spread: AtomicBool::new(false),
    });
    let mut done = Vec::with_capacity(threads);
    for (i, epoll) in polls.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dns-tcp-{port}"))
            .spawn(move || {
                Worker::new(shared, epoll, i == 0).run();
                let _ = tx.send(());
            });
        match spawned {
            Ok(_) => done.push(rx),
            Err(e) => warn!(error = %e, "cannot start a dns/tcp thread"),
        }
    }
    if done.is_empty() {
        // No thread: serve it on tokio rather than not at all.
        let listener = Arc::into_inner(shared).map(|s| s.listener);
        return match listener.map(|l| tokio::net::TcpListener::from_std(l.into())) {
            Some(Ok(l)) => Err(l),
            Some(Err(e)) => {
                warn!(error = %e, "cannot serve dns/tcp");
                Ok(())
            }
            None => Ok(()),
        };
    }
    drop(shared);
    // Resolves with Ok when a thread says it is done, Err if it ended without saying so.
    for rx in done {
        let _ = rx.await;
    }
    Ok(())
}

/// Listener options inherited by (or applying to) every accepted connection.
fn prepare(listener: &socket2::Socket) {
    // A close is a reset unless `close` says otherwise; a connection refused at accept (over
    // a cap) is reset too: it cost the client nothing yet. On Linux TCP_NODELAY is inherited
    // too (set in `app::bind_tcp`).
    if let Err(e) = listener.set_linger(Some(Duration::ZERO)) {
        debug!(error = %e, "cannot set SO_LINGER on the tcp listener");
    }
    let secs = DEFER_ACCEPT_SECS;
    // SAFETY: setsockopt reads one c_int through the pointer, which points to a live c_int of
    // the size given; the descriptor is the listener's own and open for the call.
    let r = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const secs).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        debug!(error = %io::Error::last_os_error(), "cannot set TCP_DEFER_ACCEPT");
    }
}

/// What the threads of one listener share.
struct Shared {
    listener: socket2::Socket,
    answerer: Answerer,
    limits: Limits,
    /// Connections open on all threads, against `limits.max_connections`.
    open: AtomicUsize,
    per_network: PerNetwork,
    token: CancellationToken,
    /// Whether the threads other than the first accept connections too (see [`Load`]).
    spread: AtomicBool,
}

/// An epoll instance (the `libc` calls, checked).
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: no pointers; returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events, u64: data };
        // SAFETY: `event` is a live epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut event) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for events into `events` (its capacity at most).
    fn wait(&self, events: &mut Vec<libc::epoll_event>, timeout: Duration) -> io::Result<()> {
        events.clear();
        // Rounded up: waking before a deadline would only poll again.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        let max = events.capacity().min(i32::MAX as usize) as libc::c_int;
        // SAFETY: the kernel writes at most `max` events into the vector's spare capacity.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, ms) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the first `n` (at most `max`) entries were written by the kernel.
        unsafe { events.set_len(n as usize) };
        Ok(())
    }
}

/// The buffers of a slot, kept from one connection to the next.
struct Buffers {
    /// Bytes read: `input[start..end]` not yet answered; zeroed once when it grows, read into
    /// `input[end..]`.
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// Framed responses; `pending[written..]` not yet written.
    pending: Vec<u8>,
    written: usize,
}

impl Buffers {
    fn new() -> Self {
        Self {
            input: vec![0; READ_BUF],
            start: 0,
            end: 0,
            pending: Vec::with_capacity(512),
            written: 0,
        }
    }

    /// Empties the buffers for the next connection; one that a long message or answer grew
    /// goes back to its first size.
    fn reset(&mut self) {
        (self.start, self.end, self.written) = (0, 0, 0);
        self.pending.clear();
        if self.input.len() > READ_BUF {
            self.input.truncate(READ_BUF);
            self.input.shrink_to_fit();
        }
        if self.pending.capacity() > 4 * WRITE_BATCH {
            self.pending.shrink_to(512);
        }
    }

    /// The next complete message: its range in `input`.
    fn next_message(&mut self) -> Option<std::ops::Range<usize>> {
        let msg = super::next_frame(self.input.get(..self.end)?, self.start)?;
        self.start = msg.end;
        Some(msg)
    }

    /// Moves the unanswered bytes to the front and makes sure the rest of the message they
    /// begin (up to 2 + 65,535 bytes) fits, with room to read.
    fn make_room(&mut self) {
        if self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let need = super::frame_room(self.input.get(..self.end).unwrap_or_default());
        if need > self.input.len() {
            self.input.resize(need, 0);
        }
    }
}

/// An open connection.
struct Live {
    stream: TcpStream,
    peer: SocketAddr,
    /// Its place under the per-network cap, freed when dropped.
    _network: NetworkSlot,
    /// When the last complete query came (or the connection was accepted).
    last_query: Instant,
    /// While a write is blocked: when it must have finished.
    write_deadline: Option<Instant>,
    /// The epoll events asked for; 0 before the first registration.
    interest: u32,
    /// Whether a timer entry for this connection is in the heap.
    timer: bool,
}

/// A connection's place in a thread's table.
struct Slot {
    /// Bumped at every close, so that an event or timer of an old connection is ignored.
    generation: u32,
    live: Option<Live>,
    buffers: Buffers,
}

/// What a connection waits for next.
enum Step {
    Read,
    Write,
    Close(End),
}

/// One serving thread.
struct Worker {
    shared: Arc<Shared>,
    epoll: Epoll,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Connections open on this thread.
    open: usize,
    /// (when, slot, generation): at most one live entry per connection, re-armed when it
    /// fires before the connection's deadline (deadlines only move later).
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    cache: AnswerCache,
    /// One response as the answer path writes it.
    out: Vec<u8>,
    /// Whether the listener is in the epoll set.
    listening: bool,
    /// After an accept error: when to poll the listener again.
    resume_accept: Option<Instant>,
    stopping: bool,
    /// The first thread always accepts and measures its load; the others accept only while
    /// it is busy.
    load: Option<Load>,
}

/// The first thread's CPU time over windows of [`LOAD_WINDOW`] (its busy share; CPU time, not
/// the time out of `epoll_wait`, which counts the time it waits for a core). Every wake-up of a thread costs a context switch, which on this kind of
/// load is a large part of a connection's cost: measured at 10,000 one-query connections per
/// second on 2 cores, one thread used 30–34 µs of CPU per connection with 0.47 context
/// switches, two threads sharing the listener 46–52 µs with 0.73–0.90 (bench/README.md,
/// "TCP (item 1)", wave 6). So the other threads take connections only while the first one is
/// busy more than half the time, and stop below a quarter.
struct Load {
    window_start: Instant,
    /// The thread's CPU time at `window_start`.
    cpu_start: Duration,
}

/// The calling thread's CPU time (zero should the clock fail: the other threads then accept
/// too, as without this measure).
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which points to a live one.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

impl Worker {
    fn new(shared: Arc<Shared>, epoll: Epoll, first: bool) -> Self {
        let now = Instant::now();
        Self {
            shared,
            epoll,
            slots: Vec::new(),
            free: Vec::new(),
            open: 0,
            timers: BinaryHeap::new(),
            cache: AnswerCache::new(),
            out: Vec::with_capacity(512),
            listening: false,
            resume_accept: None,
            stopping: false,
            load: first.then(|| Load {
                window_start: now,
                cpu_start: thread_cpu(),
            }),
        }
    }

    /// At the end of a window (first thread only), turns the other threads' accepting on or
    /// off.
    fn measure(&mut self, now: Instant) {
        let Some(load) = &mut self.load else {
            return;
        };
        let window = now.saturating_duration_since(load.window_start);
        if window < LOAD_WINDOW {
            return;
        }
        let cpu = thread_cpu();
        let share = cpu.saturating_sub(load.cpu_start).as_secs_f64() / window.as_secs_f64();
        let spread = self.shared.spread.load(Ordering::Relaxed);
        if !spread && share > SPREAD_ABOVE {
            self.shared.spread.store(true, Ordering::Relaxed);
        } else if spread && share < SPREAD_BELOW {
            self.shared.spread.store(false, Ordering::Relaxed);
        }
        (load.window_start, load.cpu_start) = (now, cpu);
    }

    fn run(mut self) {
        let mut events = Vec::with_capacity(64);
        loop {
            if !self.stopping && self.shared.token.is_cancelled() {
                self.stop();
            }
            if self.stopping && self.open == 0 {
                return;
            }
            let now = Instant::now();
            self.measure(now);
            self.expire(now);
            let accepting = !self.stopping
                && (self.load.is_some() || self.shared.spread.load(Ordering::Relaxed));
            if accepting && !self.listening && self.resume_accept.is_none_or(|at| at <= now) {
                self.listen();
            } else if !accepting && self.listening {
                self.unlisten();
            }
            let mut timeout = TICK;
            if let Some(Reverse((at, _, _))) = self.timers.peek() {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
            if let Some(at) = self.resume_accept {
                timeout = timeout.min(at.saturating_duration_since(now));
            }
            if let Err(e) = self.epoll.wait(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    // Not expected (only bad arguments fail): do not spin on it.
                    debug!(error = %e, "epoll_wait failed");
                    std::thread::sleep(TICK);
                }
                continue;
            }
            for event in &events {
                let (data, flags) = (event.u64, event.events);
                if data == LISTENER {
                    self.accept();
                } else {
                    self.ready(data, flags);
                }
            }
        }
    }

    /// Puts the listener in this thread's epoll set (level-triggered, one thread woken).
    fn listen(&mut self) {
        let fd = self.shared.listener.as_raw_fd();
        let exclusive = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
        let added = match self.epoll.ctl(libc::EPOLL_CTL_ADD, fd, exclusive, LISTENER) {
            // A kernel before 4.5: every thread is woken, one accepts.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.epoll
                    .ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, LISTENER)
            }
            r => r,
        };
        match added {
            Ok(()) => {
                self.listening = true;
                self.resume_accept = None;
            }
            Err(e) => {
                debug!(error = %e, "cannot poll the tcp listener");
                self.resume_accept = Some(Instant::now() + ACCEPT_BACKOFF);
            }
        }
    }

    fn unlisten(&mut self) {
        if self.listening {
            let fd = self.shared.listener.as_raw_fd();
            let _ = self.epoll.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
            self.listening = false;
        }
    }

    /// Shutdown: no more connections (the listener stops listening, so new ones are refused),
    /// and those waiting for a query close now; those writing finish first.
    fn stop(&mut self) {
        self.stopping = true;
        self.unlisten();
        self.resume_accept = None;
        let _ = self.shared.listener.shutdown(std::net::Shutdown::Read);
        for i in 0..self.slots.len() {
            if self.slots[i]
                .live
                .as_ref()
                .is_some_and(|l| l.write_deadline.is_none())
            {
                self.close(i, End::Other);
            }
        }
    }

    /// Accepts one connection (the listener is level-triggered: more are reported again).
    fn accept(&mut self) {
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let (socket, addr) = match self.shared.listener.accept4(flags) {
            Ok(x) => x,
            Err(e) => {
                match e.raw_os_error() {
                    // Taken by another thread, or gone before it was accepted.
                    Some(libc::EAGAIN | libc::ECONNABORTED | libc::EINTR) => {}
                    // EMFILE and friends: leave the listener alone briefly instead of spinning.
                    _ => {
                        debug!(error = %e, "tcp accept failed");
                        self.unlisten();
                        self.resume_accept = Some(Instant::now() + ACCEPT_BACKOFF);
                    }
                }
                return;
            }
        };
        // Dropping `socket` below resets the connection (the listener's SO_LINGER 0).
        let Some(peer) = addr.as_socket() else {
            return;
        };
        let limits = self.shared.limits;
        let Some(network) =
            NetworkSlot::take(&self.shared.per_network, peer.ip(), limits.max_per_network)
        else {
            debug!(%peer, "tcp connection limit per client network reached, closing");
            return;
        };
        if self.shared.open.fetch_add(1, Ordering::AcqRel) >= limits.max_connections {
            self.shared.open.fetch_sub(1, Ordering::AcqRel);
            debug!(%peer, "tcp connection limit reached, closing");
            return;
        }
        self.open += 1;
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    live: None,
                    buffers: Buffers::new(),
                });
                self.slots.len() - 1
            }
        };
        self.slots[i].live = Some(Live {
            stream: socket.into(),
            peer,
            _network: network,
            last_query: Instant::now(),
            write_deadline: None,
            interest: 0,
            timer: false,
        });
        // With TCP_DEFER_ACCEPT the query is usually here already: answer it now.
        self.serve(i, true);
    }

    /// An epoll event for a connection.
    fn ready(&mut self, data: u64, flags: u32) {
        let i = (data & u64::from(u32::MAX)) as usize;
        let generation = (data >> 32) as u32;
        let Some(slot) = self.slots.get(i) else {
            return;
        };
        let Some(live) = &slot.live else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        // Waiting to write: only the write goes on (EPOLLERR/EPOLLHUP make it fail).
        let readable = live.write_deadline.is_none() || flags & libc::EPOLLOUT as u32 == 0;
        self.serve(i, readable);
    }

    /// Runs connection `i` as far as it goes without blocking, then registers what it waits
    /// for, or closes it.
    fn serve(&mut self, i: usize, readable: bool) {
        let idle = self.shared.limits.idle_timeout;
        let stopping = self.stopping;
        let Self {
            slots,
            cache,
            out,
            shared,
            ..
        } = self;
        let slot = &mut slots[i];
        let Some(live) = slot.live.as_mut() else {
            return;
        };
        let mut ctx = Ctx {
            answerer: &shared.answerer,
            cache,
            out,
            idle,
            stopping,
        };
        let step = drive(live, &mut slot.buffers, &mut ctx, readable);
        let generation = slot.generation;
        let wanted = match step {
            Step::Close(end) => {
                self.close(i, end);
                return;
            }
            Step::Read => libc::EPOLLIN as u32,
            Step::Write => libc::EPOLLOUT as u32,
        };
        let data = u64::from(generation) << 32 | i as u64;
        let fd = live.stream.as_raw_fd();
        if live.interest != wanted {
            let op = if live.interest == 0 {
                libc::EPOLL_CTL_ADD
            } else {
                libc::EPOLL_CTL_MOD
            };
            if let Err(e) = self.epoll.ctl(op, fd, wanted, data) {
                debug!(peer = %live.peer, error = %e, "cannot poll a tcp connection, closing");
                self.close(i, End::Other);
                return;
            }
            live.interest = wanted;
        }
        if !live.timer {
            live.timer = true;
            let at = live.write_deadline.unwrap_or(live.last_query + idle);
            self.timers.push(Reverse((at, i, generation)));
        }
    }

    /// Closes the connections whose deadline has passed; re-arms the timers that fired early.
    fn expire(&mut self, now: Instant) {
        let idle = self.shared.limits.idle_timeout;
        while let Some(&Reverse((at, i, generation))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(slot) = self.slots.get_mut(i) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            let Some(live) = slot.live.as_mut() else {
                continue;
            };
            let deadline = live.write_deadline.unwrap_or(live.last_query + idle);
            if deadline > now {
                self.timers.push(Reverse((deadline, i, generation)));
                continue;
            }
            live.timer = false;
            let end = if live.write_deadline.is_some() {
                debug!(peer = %live.peer, "tcp write timed out, closing");
                End::Stalled
            } else {
                End::Other
            };
            self.close(i, end);
        }
    }

    fn close(&mut self, i: usize, end: End) {
        let slot = &mut self.slots[i];
        let Some(live) = slot.live.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        slot.buffers.reset();
        super::close(&live.stream, end);
        // Closing the descriptor takes it out of the epoll set and frees the network slot.
        drop(live);
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        self.open -= 1;
        self.free.push(i);
    }
}

/// What [`drive`] needs from its thread.
struct Ctx<'a> {
    answerer: &'a Answerer,
    cache: &'a mut AnswerCache,
    out: &'a mut Vec<u8>,
    idle: Duration,
    stopping: bool,
}

/// Answers every complete query buffered, writes the answers, reads more while the socket has
/// some (`readable`: it may), and says what the connection waits for next.
fn drive(live: &mut Live, buf: &mut Buffers, ctx: &mut Ctx<'_>, mut readable: bool) -> Step {
    loop {
        let mut answered = false;
        while buf.pending.len() < WRITE_BATCH
            && let Some(msg) = buf.next_message()
        {
            answered = true;
            let Some(query) = buf.input.get(msg) else {
                return Step::Close(End::Other);
            };
            let ok =
                ctx.answerer
                    .respond_cached(query, live.peer, Transport::Tcp, ctx.out, ctx.cache);
            if ok
                && !super::frame(
                    ctx.answerer,
                    live.peer,
                    Transport::Tcp,
                    ctx.out,
                    &mut buf.pending,
                )
            {
                return Step::Close(End::Other);
            }
        }
        if answered {
            live.last_query = Instant::now();
        }
        if buf.written < buf.pending.len() {
            match write(live, buf) {
                Ok(true) => {
                    live.write_deadline = None;
                    continue;
                }
                Ok(false) => {
                    if live.write_deadline.is_none() {
                        live.write_deadline = Some(Instant::now() + ctx.idle);
                    }
                    return Step::Write;
                }
                Err(e) => {
                    debug!(peer = %live.peer, error = %e, "tcp write failed");
                    return Step::Close(End::Other);
                }
            }
        }
        if ctx.stopping {
            return Step::Close(End::Other);
        }
        if !readable {
            return Step::Read;
        }
        buf.make_room();
        let room = buf.input.len() - buf.end;
        match (&live.stream).read(&mut buf.input[buf.end..]) {
            Ok(0) => return Step::Close(End::PeerClosed),
            Ok(n) => {
                buf.end += n;
                // A short read took all there was: the next comes with an event.
                readable = n == room;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Step::Close(End::Other),
        }
    }
}

/// Writes what is pending; Ok(true) when all of it is written, Ok(false) when the socket is
/// full.
fn write(live: &Live, buf: &mut Buffers) -> io::Result<bool> {
    while buf.written < buf.pending.len() {
        match (&live.stream).write(&buf.pending[buf.written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf.written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.pending.clear();
    buf.written = 0;
    Ok(true)
}
