//! Probes: one HTTP, HTTPS or TCP check of one target address.
//!
//! A [`Prober`] is built once per (address, check) and owned by that target's probe task.
//!
//! HTTP(S) is a minimal HTTP/1.1 client written here over a tokio `TcpStream` (and
//! `tokio-rustls` for HTTPS) rather than reqwest: at 10,000 targets a client per target cost
//! about 3 ms and 125 KB each (the whole system root store, even for plain `http`), and one
//! shared client cannot connect to a pinned address while sending `check.host` as both `Host`
//! and SNI. A probe needs one GET, a status line, a few headers and at most [`MAX_BODY_BYTES`]
//! of body, which is little code. The TLS client configuration is shared per distinct
//! setting (`tls_verify` on or off), so the root store is loaded once per process
//! ([`TlsConfigs`]); plain `http` loads none.
//!
//! Connections are kept alive between probes of the same target (HTTP/1.1 persistent
//! connections, RFC 9112 §9.3): a server that keeps the connection open is probed over it
//! again, which saves a handshake per probe. A kept connection that turns out to be closed
//! (EOF or reset before the first response byte) costs one reconnect within the same probe,
//! not a failure. A dead server cannot hide behind a kept connection: its kernel closes it, and
//! the reconnect fails. TCP checks open a new connection per probe and end it with a reset,
//! keeping only the socket for the next one ([`TcpProbe`]).
//!
//! The whole probe (connect, TLS, request, body) is cut at `check.timeout`. Failures are typed
//! [`ProbeError`]s whose messages read well in logs and in `/status`. Trouble on our side
//! (file descriptors exhausted, TLS setup, a timer that fired late because the process was
//! starved) is a [`ProbeError::Ours`]: it says nothing about the target.
//!
//! A check with `load` also reads the target's load from the same response (issue 16): a
//! header, or a JSON pointer into the body (then the body is read whole, up to
//! [`MAX_BODY_BYTES`]). Only a passing probe yields a load; a missing or unparsable figure is
//! unknown (`None`), never a failure ([`Prober::take_load`]).

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{Check, CheckKind, LoadSignal, LoadSource, StatusMatch};

#[cfg(test)]
#[path = "probe_load_tests.rs"]
mod load_tests;

/// The most body bytes read when searching for `body_contains` (or skipped to keep a
/// connection for the next probe; a longer body closes it instead).
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// The most bytes of a response head (status line and headers).
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The least share of the timeout a target must have had, since our last step of the probe
/// (connect, TLS flight, request sent), for a timeout to be the target's fault. Less means our
/// process was too starved to take the steps in time (a late timer), which is our trouble.
pub(crate) const FAIR_SHARE_OF_TIMEOUT: f64 = 0.5;

/// Descriptors left for everything but probe sockets (DNS over TCP, the admin port, files),
/// at least: the probe socket budget is the open-file limit minus the larger of this and an
/// eighth of the limit.
pub(crate) const RESERVED_DESCRIPTORS: u64 = 64;

/// The `User-Agent` sent by HTTP(S) probes unless the check sets its own.
pub(crate) const DEFAULT_USER_AGENT: &str =
    concat!("meridian/", env!("CARGO_PKG_VERSION"), " (health check)");

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProbeError {
    /// The target refused the TCP connection.
    #[error("connection refused")]
    Refused,
    /// The probe did not finish within the check's timeout.
    #[error("timed out after {}", HumanDuration(*.0))]
    TimedOut(Duration),
    /// The TCP connection failed for another reason (unreachable, reset, …).
    #[error("connect failed: {0}")]
    Connect(String),
    /// The TLS handshake failed (certificate, SNI, protocol).
    #[error("tls handshake failed: {0}")]
    Tls(String),
    /// The HTTP exchange failed after connecting.
    #[error("http request failed: {0}")]
    Http(String),
    /// The response status is not accepted by the check.
    #[error("status {0} not in expect_status")]
    Status(u16),
    /// The first [`MAX_BODY_BYTES`] of the body do not contain the expected text.
    #[error("body does not contain {0:?}")]
    BodyMismatch(String),
    /// Reading the body failed.
    #[error("reading body failed: {0}")]
    Body(String),
    /// Our own trouble, not the target's: the probe says nothing about the target.
    #[error("{0}")]
    Ours(OwnError),
    /// A failure without details (should not happen; kept so no failure goes unnamed).
    #[error("probe failed")]
    Unspecified,
}

impl ProbeError {
    /// Returns the cause when the failure is ours rather than the target's.
    pub(crate) fn own(&self) -> Option<&OwnError> {
        match self {
            ProbeError::Ours(e) => Some(e),
            _ => None,
        }
    }
}

/// A probe that could not say anything about its target, because of trouble on our side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OwnError {
    /// No file descriptor for a socket (`EMFILE`, `ENFILE`).
    #[error("out of file descriptors: {0}")]
    FileDescriptors(String),
    /// No memory, buffers or local ports for a socket (`ENOMEM`, `ENOBUFS`, `EADDRNOTAVAIL`).
    #[error("out of local resources: {0}")]
    Resources(String),
    /// The TLS client configuration could not be built (e.g. no root certificates loaded).
    #[error("tls setup failed: {0}")]
    TlsSetup(String),
    /// The check cannot be turned into a request (a header or host that validation missed).
    #[error("check cannot be set up: {0}")]
    Setup(String),
    /// The probe's timer fired when the target had had only this long since our last step (the
    /// process was starved: its timer fired late, or it took its steps late).
    #[error(
        "probe starved: the target had {} since our last step when the timer fired",
        HumanDuration(*.0)
    )]
    LateTimer(Duration),
}

impl OwnError {
    /// Every value of [`OwnError::reason`], for metrics.
    pub(crate) const REASONS: [&'static str; 5] = [
        "file_descriptors",
        "resources",
        "tls_setup",
        "setup",
        "late_timer",
    ];

    /// Returns the cause as a metrics label (`reason` of `meridian_probe_errors_total`).
    pub(crate) fn reason(&self) -> &'static str {
        Self::REASONS[self.index()]
    }

    /// Returns the position of [`OwnError::reason`] in [`OwnError::REASONS`].
    pub(crate) fn index(&self) -> usize {
        match self {
            OwnError::FileDescriptors(_) => 0,
            OwnError::Resources(_) => 1,
            OwnError::TlsSetup(_) => 2,
            OwnError::Setup(_) => 3,
            OwnError::LateTimer(_) => 4,
        }
    }
}

/// Formats a duration the way config files write it: `1s`, `250ms`, `1.5s`.
struct HumanDuration(Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "{}s", d.as_secs())
        } else if d < Duration::from_secs(1) && d.subsec_nanos().is_multiple_of(1_000_000) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}s", d.as_secs_f64())
        }
    }
}

/// The outcome of one probe: how long it took, and whether it passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProbeOutcome {
    /// Time from the start of the probe to its verdict (at most about the timeout).
    pub(crate) latency: Duration,
    /// `Ok` when the probe passed.
    pub(crate) result: Result<(), ProbeError>,
}

/// Installs ring as the process-wide rustls provider, unless one is installed already.
pub(crate) fn install_crypto_provider() {
    // An error means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS client configurations shared by every HTTPS probe of the process: one per distinct
/// setting (`tls_verify` on or off), built on first use. A failed build (no root certificates
/// loaded, e.g. because file descriptors ran out) is not kept: the next probe tries again.
#[derive(Debug, Default)]
pub(crate) struct TlsConfigs {
    verify: Mutex<Option<Arc<rustls::ClientConfig>>>,
    no_verify: Mutex<Option<Arc<rustls::ClientConfig>>>,
}

/// The configurations of this process.
static TLS_CONFIGS: TlsConfigs = TlsConfigs {
    verify: Mutex::new(None),
    no_verify: Mutex::new(None),
};

impl TlsConfigs {
    /// Returns the process-wide configurations.
    pub(crate) fn shared() -> &'static TlsConfigs {
        &TLS_CONFIGS
    }

    /// Returns the configuration for `verify`, building it on first use.
    pub(crate) fn get(&self, verify: bool) -> Result<Arc<rustls::ClientConfig>, OwnError> {
        let slot = if verify {
            &self.verify
        } else {
            &self.no_verify
        };
        // A panic cannot leave the slot half-written (it is one assignment).
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = &*slot {
            return Ok(config.clone());
        }
        let config = Arc::new(build_tls_config(verify)?);
        *slot = Some(config.clone());
        Ok(config)
    }
}

fn build_tls_config(verify: bool) -> Result<rustls::ClientConfig, OwnError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| OwnError::TlsSetup(e.to_string()))?;
    let mut config = if verify {
        let verifier = rustls_platform_verifier::Verifier::new(provider)
            .map_err(|e| OwnError::TlsSetup(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerifier(provider)))
            .with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any certificate (`tls_verify = false`), still checking handshake signatures.
#[derive(Debug)]
struct NoVerifier(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The budget of probe sockets: so many descriptors below the open-file limit that probes can
/// never starve DNS over TCP or the admin port of descriptors. A socket (kept connection
/// included) holds one permit. Sized once, at the first probe (after any limit raise at start).
#[derive(Debug)]
struct SocketBudget {
    permits: Arc<tokio::sync::Semaphore>,
    size: usize,
}

impl SocketBudget {
    fn shared() -> &'static SocketBudget {
        static BUDGET: std::sync::OnceLock<SocketBudget> = std::sync::OnceLock::new();
        BUDGET.get_or_init(|| {
            let limit = open_file_limit();
            let size = limit
                .saturating_sub(RESERVED_DESCRIPTORS.max(limit / 8))
                .max(8)
                .min(tokio::sync::Semaphore::MAX_PERMITS as u64) as usize;
            SocketBudget {
                permits: Arc::new(tokio::sync::Semaphore::new(size)),
                size,
            }
        })
    }

    /// Waits up to `wait` for a socket permit; running out is our trouble, not the target's.
    async fn acquire(&self, wait: Duration) -> Result<tokio::sync::OwnedSemaphorePermit, OwnError> {
        // The usual case, without a timer: a permit is free.
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a timeout means every permit stayed in use.
            _ => Err(OwnError::FileDescriptors(format!(
                "all {} probe sockets in use (open-file limit minus a reserve)",
                self.size
            ))),
        }
    }

    /// True while enough permits are free to keep a connection for the next probe; when the
    /// budget runs low, connections are closed after each probe so that every target gets
    /// its turn.
    fn may_keep(&self) -> bool {
        self.permits.available_permits() >= self.size / 8
    }
}

/// Returns the soft open-file limit of the process.
fn open_file_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return 1024;
    }
    l.rlim_cur
}

/// A socket permit (see [`SocketBudget`]).
type Permit = tokio::sync::OwnedSemaphorePermit;

/// Probes one target address with one check.
#[derive(Debug)]
pub(crate) struct Prober {
    target: SocketAddr,
    timeout: Duration,
    kind: ProberKind,
    /// The check, kept to retry a setup that failed.
    check: Arc<Check>,
}

#[derive(Debug)]
enum ProberKind {
    Tcp(TcpProbe),
    Http(Box<HttpProbe>),
    /// The probe cannot be built; every probe retries the setup and reports our own error.
    Broken(OwnError),
}

#[derive(Debug)]
struct HttpProbe {
    target: SocketAddr,
    /// `Some` for HTTPS: the name sent as SNI and verified (an IP address sends no SNI).
    tls: Option<(ServerName<'static>, bool)>,
    /// The whole request, built once.
    request: Vec<u8>,
    /// The URL probed, for tests to check how it is built.
    #[cfg(test)]
    url: String,
    expect_status: Vec<StatusMatch>,
    body_contains: Option<String>,
    /// Where the load is read (issue 16), if the check reads one.
    load: Option<LoadSignal>,
    /// The load read by the last probe (`None`: unknown, or the probe failed).
    last_load: Option<f64>,
    /// The connection kept from the last probe, if the server kept it open, and its permit.
    conn: Option<(Stream, Permit)>,
    /// The local address probes leave from (`check.source`).
    source: Option<IpAddr>,
    /// When this probe last took a step (connected, finished TLS, sent the request).
    last_step: Instant,
}

impl Prober {
    /// Returns a prober of `address` with `check`. Setup problems (which validation should have
    /// caught) do not fail here: every probe then retries the setup and, while it fails,
    /// reports a [`OwnError::Setup`].
    pub(crate) fn new(address: IpAddr, check: &Check) -> Self {
        let check = Arc::new(check.clone());
        let target = SocketAddr::new(address, check.port);
        Self {
            target,
            timeout: check.timeout,
            kind: Self::build(target, &check),
            check,
        }
    }

    fn build(target: SocketAddr, check: &Check) -> ProberKind {
        match check.kind {
            CheckKind::Tcp => ProberKind::Tcp(TcpProbe::default()),
            CheckKind::Http | CheckKind::Https => match HttpProbe::new(target, check) {
                Ok(h) => ProberKind::Http(Box::new(h)),
                Err(e) => ProberKind::Broken(e),
            },
        }
    }

    #[cfg(test)]
    /// Returns the URL an HTTP(S) prober requests (`None` for TCP).
    pub(crate) fn url(&self) -> Option<&str> {
        match &self.kind {
            ProberKind::Http(h) => Some(h.url.as_str()),
            _ => None,
        }
    }

    /// Returns the load the last probe read and forgets it: `None` when the check reads no
    /// load, the probe failed, or the figure was missing or unparsable (unknown, never down).
    pub(crate) fn take_load(&mut self) -> Option<f64> {
        match &mut self.kind {
            ProberKind::Http(h) => h.last_load.take(),
            _ => None,
        }
    }

    /// Returns true when an HTTP(S) prober holds a connection kept from its last probe.
    pub(crate) fn has_kept_connection(&self) -> bool {
        matches!(&self.kind, ProberKind::Http(h) if h.conn.is_some())
    }

    /// Returns true when the prober holds a socket (and its permit) for its next probe: an
    /// HTTP(S) connection kept alive, or a TCP check's disconnected socket.
    fn holds_socket(&self) -> bool {
        match &self.kind {
            ProberKind::Tcp(t) => t.sock.is_some(),
            _ => self.has_kept_connection(),
        }
    }

    /// Runs one probe, cut at the check's timeout. A timeout is the target's only when it had
    /// at least [`FAIR_SHARE_OF_TIMEOUT`] of the timeout since our last step; otherwise our
    /// process was starved and the result is our own error.
    ///
    /// Why not just "did the timer fire late": tokio polls a timed-out future once more
    /// before its timer, so an answer that arrived is never lost to a late timer; what a
    /// starved process loses is the time to take its own steps (send the request after the
    /// connect, answer a TLS flight). A hung target under a busy process, on the other hand,
    /// had the whole wait since our request, and must still be withdrawn.
    pub(crate) async fn probe(&mut self) -> ProbeOutcome {
        if let ProberKind::Broken(_) = self.kind {
            self.kind = Self::build(self.target, &self.check);
        }
        let start = Instant::now();
        let timeout = self.timeout;
        // A new socket needs a permit; waiting for one does not count against the target.
        let permit = if self.holds_socket() {
            None
        } else {
            match SocketBudget::shared().acquire(timeout).await {
                Ok(p) => Some(p),
                Err(e) => {
                    return ProbeOutcome {
                        latency: start.elapsed(),
                        result: Err(ProbeError::Ours(e)),
                    };
                }
            }
        };
        let start = Instant::now();
        let result = match tokio::time::timeout(timeout, self.probe_inner(permit)).await {
            Ok(r) => r,
            Err(_) => {
                // A connection cut mid-exchange cannot be reused.
                let last_step = match &mut self.kind {
                    ProberKind::Http(h) => {
                        h.conn = None;
                        h.last_step.max(start)
                    }
                    ProberKind::Tcp(t) => {
                        // Abandon the connection attempt (the socket is reused).
                        t.disconnect();
                        start
                    }
                    ProberKind::Broken(_) => start,
                };
                let share = last_step.elapsed();
                if share < timeout.mul_f64(FAIR_SHARE_OF_TIMEOUT) {
                    Err(ProbeError::Ours(OwnError::LateTimer(share)))
                } else {
                    Err(ProbeError::TimedOut(timeout))
                }
            }
        };
        ProbeOutcome {
            latency: start.elapsed(),
            result,
        }
    }

    async fn probe_inner(&mut self, permit: Option<Permit>) -> Result<(), ProbeError> {
        match &mut self.kind {
            ProberKind::Tcp(t) => t.probe(self.target, self.check.source, permit).await,
            ProberKind::Http(h) => h.probe(permit).await,
            ProberKind::Broken(e) => Err(ProbeError::Ours(e.clone())),
        }
    }
}

/// A TCP check: every probe is a new connection to the target (a new handshake from a new
/// local port), ended at once with a reset, as HAProxy's checks end theirs (no FIN exchange and
/// no TIME_WAIT left behind: 10,000 targets at 1 s would keep 600,000).
///
/// The socket itself is kept between probes: the connection is ended by disconnecting the
/// socket (`connect` to `AF_UNSPEC`, the kernel's `tcp_disconnect`, which is what `close`
/// with `SO_LINGER` 0 runs too), and the same descriptor, still registered with the runtime's
/// poller, connects again at the next probe. That saves per probe a `socket`, a `close` and
/// the two `epoll_ctl` calls of registering and deregistering a new socket (about a fifth of
/// what a TCP check costs the process; see bench/README.md), and changes nothing the target
/// sees. Between probes the socket is closed in TCP terms: no connection, no local port. A
/// socket holds a permit of the [`SocketBudget`] while kept; when the budget runs low it is
/// closed after the probe, as before.
#[derive(Debug, Default)]
struct TcpProbe {
    /// The socket, registered with the runtime, and its permit.
    sock: Option<(tokio::io::unix::AsyncFd<socket2::Socket>, Permit)>,
}

impl TcpProbe {
    /// Connects to `target` (from `source` when set) and ends the connection; `permit` is
    /// given exactly when no socket is kept.
    async fn probe(
        &mut self,
        target: SocketAddr,
        source: Option<IpAddr>,
        permit: Option<Permit>,
    ) -> Result<(), ProbeError> {
        if self.sock.is_none() {
            let Some(permit) = permit else {
                return Err(ProbeError::Ours(OwnError::FileDescriptors(
                    "no socket permit".into(),
                )));
            };
            let sock = new_tcp_socket(target, source).map_err(|e| connect_error(&e))?;
            // SAFETY: the socket owns its descriptor, which stays open and the same until the
            // AsyncFd is dropped (nothing takes the socket out or replaces it).
            let fd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    sock,
                    tokio::io::Interest::WRITABLE,
                )
            }
            .map_err(|e| connect_error(&e.into()))?;
            self.sock = Some((fd, permit));
        }
        let Some((fd, _)) = &self.sock else {
            return Err(ProbeError::Unspecified);
        };
        let result = connect_on(fd, target).await;
        self.disconnect();
        if !SocketBudget::shared().may_keep() {
            self.sock = None;
        }
        result
    }

    /// Ends the connection or connection attempt of the kept socket, with a reset if it was
    /// established; a socket that cannot be disconnected is closed (with a reset too).
    fn disconnect(&mut self) {
        use std::os::fd::AsRawFd;
        let Some((fd, _)) = &self.sock else { return };
        // SAFETY: zeroed is a valid `sockaddr`; only its family is read for AF_UNSPEC.
        let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
        addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        // SAFETY: a valid descriptor we own and a `sockaddr` of the size given.
        let rc = unsafe {
            libc::connect(
                fd.get_ref().as_raw_fd(),
                &addr,
                std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            self.sock = None;
        }
    }
}

/// Returns a non-blocking TCP socket for `target` that closes with a reset (`SO_LINGER` 0),
/// bound to `source` when set (the port is picked anew at each connect).
fn new_tcp_socket(target: SocketAddr, source: Option<IpAddr>) -> io::Result<socket2::Socket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_linger(Some(Duration::ZERO))?;
    if let Some(source) = source {
        sock.bind(&SocketAddr::new(source, 0).into())?;
    }
    Ok(sock)
}

/// Connects the disconnected socket `fd` to `target`: done when the kernel completes the
/// handshake within the call, else when the poller reports the socket writable and it has a
/// peer (a readiness left from the previous connection is told apart by having none).
async fn connect_on(
    fd: &tokio::io::unix::AsyncFd<socket2::Socket>,
    target: SocketAddr,
) -> Result<(), ProbeError> {
    match fd.get_ref().connect(&target.into()) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(connect_error(&e)),
    }
    loop {
        let mut ready = fd.writable().await.map_err(|e| connect_error(&e))?;
        if let Some(e) = fd.get_ref().take_error().map_err(|e| connect_error(&e))? {
            return Err(connect_error(&e));
        }
        match fd.get_ref().peer_addr() {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => ready.clear_ready(),
            Err(e) => return Err(connect_error(&e)),
        }
    }
}

/// Connects to `target`, from `source` when set (so that each instance of a fleet can probe
/// from its own address, and a backend can tell the instances apart), mapping errors to the
/// target's or our own.
async fn connect(target: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, ProbeError> {
    let stream = match source {
        None => TcpStream::connect(target).await,
        Some(source) => {
            let socket = if target.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            };
            match socket.and_then(|s| s.bind(SocketAddr::new(source, 0)).map(|()| s)) {
                Ok(s) => s.connect(target).await,
                Err(e) => Err(e),
            }
        }
    }
    .map_err(|e| connect_error(&e))?;
    Ok(stream)
}

/// How a kept connection failed before the response began (so one reconnect is due).
struct Stale;

impl HttpProbe {
    fn new(target: SocketAddr, check: &Check) -> Result<Self, OwnError> {
        let https = check.kind == CheckKind::Https;
        let default_port = if https { 443 } else { 80 };
        let port_suffix = if check.port == default_port {
            String::new()
        } else {
            format!(":{}", check.port)
        };
        // A host name is both Host and SNI; an IP literal as `host` (or none) only sets the
        // Host header, and rustls sends no SNI for an IP address.
        let (authority, server_name) = match check.host.as_deref() {
            Some(host) => match host.parse::<IpAddr>() {
                Ok(ip) => (host_for_ip(ip), ServerName::IpAddress(target.ip().into())),
                Err(_) => {
                    let name = ServerName::try_from(host.to_string())
                        .map_err(|e| OwnError::Setup(format!("host {host:?}: {e}")))?;
                    (host.to_string(), name)
                }
            },
            None => (
                host_for_ip(target.ip()),
                ServerName::IpAddress(target.ip().into()),
            ),
        };
        let host_header = format!("{authority}{port_suffix}");
        #[cfg(test)]
        let scheme = if https { "https" } else { "http" };
        #[cfg(test)]
        let url = match check.host.as_deref() {
            Some(h) if h.parse::<IpAddr>().is_err() => {
                format!("{scheme}://{h}{port_suffix}{}", check.path)
            }
            _ => format!(
                "{scheme}://{}:{}{}",
                host_for_ip(target.ip()),
                check.port,
                check.path
            ),
        };
        let has = |name: &str| {
            check
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        let mut request = format!("GET {} HTTP/1.1\r\n", check.path);
        if !has("host") {
            request.push_str(&format!("Host: {host_header}\r\n"));
        }
        if !has("user-agent") {
            request.push_str(&format!("User-Agent: {DEFAULT_USER_AGENT}\r\n"));
        }
        if !has("accept") {
            request.push_str("Accept: */*\r\n");
        }
        for (name, value) in &check.headers {
            if name.is_empty() || name.contains([':', '\r', '\n', ' ']) {
                return Err(OwnError::Setup(format!("header {name:?}: invalid name")));
            }
            if value.contains(['\r', '\n']) {
                return Err(OwnError::Setup(format!(
                    "header {name:?} value: contains a line break"
                )));
            }
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        if check.path.contains([' ', '\r', '\n']) {
            return Err(OwnError::Setup(format!("path {:?}", check.path)));
        }
        Ok(Self {
            target,
            tls: https.then_some((server_name, check.tls_verify)),
            request: request.into_bytes(),
            #[cfg(test)]
            url,
            expect_status: check.expect_status.clone(),
            body_contains: check.body_contains.clone(),
            load: check.load.clone(),
            last_load: None,
            conn: None,
            source: check.source,
            last_step: Instant::now(),
        })
    }

    async fn open(&mut self) -> Result<Stream, ProbeError> {
        let tcp = connect(self.target, self.source).await?;
        // One small request and response per probe: do not wait to fill a segment.
        let _ = tcp.set_nodelay(true);
        self.last_step = Instant::now();
        let Some((name, verify)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let config = TlsConfigs::shared()
            .get(*verify)
            .map_err(ProbeError::Ours)?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| tls_error(&e))?;
        self.last_step = Instant::now();
        Ok(Stream::Tls(Box::new(tls)))
    }

    /// Probes over the kept connection, or a new one using `permit` (given exactly when no
    /// connection is kept).
    async fn probe(&mut self, permit: Option<Permit>) -> Result<(), ProbeError> {
        self.last_load = None;
        let permit = match (self.conn.take(), permit) {
            (Some((mut stream, permit)), _) => {
                // Err(Stale): the server closed the kept connection (idle timeout, restart),
                // so reconnect below with the same permit.
                self.last_step = Instant::now();
                if let Ok((result, keep)) = self.exchange(&mut stream).await {
                    if keep && SocketBudget::shared().may_keep() {
                        self.conn = Some((stream, permit));
                    }
                    return result;
                }
                permit
            }
            (None, Some(permit)) => permit,
            (None, None) => {
                return Err(ProbeError::Ours(OwnError::FileDescriptors(
                    "no socket permit".into(),
                )));
            }
        };
        let mut stream = self.open().await?;
        self.last_step = Instant::now();
        match self.exchange(&mut stream).await {
            Ok((result, keep)) => {
                if keep && SocketBudget::shared().may_keep() {
                    self.conn = Some((stream, permit));
                }
                result
            }
            Err(Stale) => Err(ProbeError::Http(
                "connection closed before a response".into(),
            )),
        }
    }

    /// Sends the request and reads the response. Returns the verdict and whether the
    /// connection may serve the next probe, or [`Stale`] when it failed before any response
    /// byte arrived.
    async fn exchange(
        &mut self,
        stream: &mut Stream,
    ) -> Result<(Result<(), ProbeError>, bool), Stale> {
        if stream.write_all(&self.request).await.is_err() {
            return Err(Stale);
        }
        let mut buf: Vec<u8> = Vec::with_capacity(2048);
        let head = loop {
            match read_more(stream, &mut buf).await {
                Ok(0) if buf.is_empty() => return Err(Stale),
                Err(e) if buf.is_empty() && is_stale(&e) => return Err(Stale),
                Ok(0) => {
                    return Ok((
                        Err(ProbeError::Http(
                            "connection closed in the response head".into(),
                        )),
                        false,
                    ));
                }
                Err(e) => return Ok((Err(read_error(&e, ProbeError::Http)), false)),
                Ok(_) => {}
            }
            match parse_head(&buf) {
                Ok(Some(head)) => break head,
                Ok(None) if buf.len() < MAX_HEAD_BYTES => {}
                Ok(None) => {
                    return Ok((
                        Err(ProbeError::Http("response head too long".into())),
                        false,
                    ));
                }
                Err(e) => return Ok((Err(ProbeError::Http(e)), false)),
            }
        };
        let header_load = match &self.load {
            Some(LoadSignal {
                source: LoadSource::Header(name),
                ..
            }) => header_figure(&buf[..head.len], name),
            _ => None,
        };
        buf.drain(..head.len);
        if !self.expect_status.iter().any(|m| m.matches(head.status)) {
            // The body is not needed; skip it only when that is cheap.
            let keep = head.keep_alive && skip_body(stream, &head, buf).await;
            return Ok((Err(ProbeError::Status(head.status)), keep));
        }
        if let Some(signal) = &self.load {
            match &signal.source {
                LoadSource::Header(_) => {
                    self.last_load = header_load.and_then(|f| signal.load_of(f))
                }
                LoadSource::Json(pointer) => {
                    // The body is needed whole: read it once for the load and `body_contains`.
                    let (body, complete) = read_body(stream, &head, buf).await;
                    let keep = head.keep_alive && complete;
                    let result = match (&body, &self.body_contains) {
                        (Err(e), _) => Err(ProbeError::Body(e.to_string())),
                        (Ok(b), Some(needle)) if !contains(b, needle.as_bytes()) => {
                            Err(ProbeError::BodyMismatch(needle.clone()))
                        }
                        (Ok(_), _) => Ok(()),
                    };
                    if let (Ok(()), Ok(b)) = (&result, &body) {
                        self.last_load = json_figure(b, pointer).and_then(|f| signal.load_of(f));
                    }
                    return Ok((result, keep));
                }
            }
        }
        match &self.body_contains {
            None => {
                let keep = head.keep_alive && skip_body(stream, &head, buf).await;
                Ok((Ok(()), keep))
            }
            Some(needle) => {
                let (found, complete) = search_body(stream, &head, buf, needle.as_bytes()).await;
                let keep = head.keep_alive && complete;
                Ok((
                    found.and_then(|found| {
                        if found {
                            Ok(())
                        } else {
                            Err(ProbeError::BodyMismatch(needle.clone()))
                        }
                    }),
                    keep,
                ))
            }
        }
    }
}

/// The parts of a response head a probe needs.
struct Head {
    /// Bytes of the head, including the blank line.
    len: usize,
    status: u16,
    framing: Framing,
    /// False when the server closes after this response (`Connection: close`, HTTP/1.0).
    keep_alive: bool,
}

/// How the end of a body is found (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid response: {e}")),
    };
    let status = response.code.unwrap_or(0);
    let mut keep_alive = response.version == Some(1);
    let mut framing = Framing::Close;
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| "invalid content-length".to_string())?;
            if framing != Framing::Chunked {
                framing = Framing::Length(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if h.value.to_ascii_lowercase().ends_with(b"chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value.to_ascii_lowercase();
            if v.windows(5).any(|w| w == b"close") {
                keep_alive = false;
            } else if v.windows(10).any(|w| w == b"keep-alive") && response.version == Some(0) {
                keep_alive = true;
            }
        }
    }
    // RFC 9112 §6.3: 1xx, 204 and 304 have no body.
    if status < 200 || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    if framing == Framing::Close {
        keep_alive = false;
    }
    Ok(Some(Head {
        len,
        status,
        framing,
        keep_alive,
    }))
}

/// Returns the number in the response header `name` of a head (`0.93`, or `93%` for 0.93).
fn header_figure(head: &[u8], name: &str) -> Option<f64> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(head).ok()?;
    let h = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))?;
    parse_figure(std::str::from_utf8(h.value).ok()?)
}

/// Returns the number at `pointer` (RFC 6901) in a JSON body: a JSON number, or a string
/// holding one (`"0.93"`, `"93%"`).
fn json_figure(body: &[u8], pointer: &str) -> Option<f64> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    match doc.pointer(pointer)? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => parse_figure(s),
        _ => None,
    }
}

/// Parses `0.93` or `93%` (percent: divided by 100); `None` for anything else.
fn parse_figure(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = match text.strip_suffix('%') {
        Some(n) => (n.trim_end(), 0.01),
        None => (text, 1.0),
    };
    let x: f64 = number.parse().ok()?;
    x.is_finite().then_some(x * scale)
}

/// Reads the first [`MAX_BODY_BYTES`] of the body. Returns it (or the read error) and
/// whether the whole body was read (so the connection can be kept).
async fn read_body(
    stream: &mut Stream,
    head: &Head,
    already: Vec<u8>,
) -> (io::Result<Vec<u8>>, bool) {
    let mut body = Body::new(head.framing, already);
    let mut seen: Vec<u8> = Vec::new();
    loop {
        match body.next(stream).await {
            Ok(Some(chunk)) => {
                let room = MAX_BODY_BYTES.saturating_sub(seen.len());
                seen.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.total > MAX_BODY_BYTES as u64 {
                    return (Ok(seen), false);
                }
            }
            Ok(None) => return (Ok(seen), body.complete),
            Err(e) => return (Err(e), false),
        }
    }
}

/// Reads into the spare capacity of `buf` (reserving 2 KB more when it is full, without
/// zeroing it); returns the bytes read.
async fn read_more(stream: &mut Stream, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(2048);
    }
    stream.read_buf(buf).await
}

/// Reads and discards the body so that the connection can carry the next probe. Returns
/// false (close the connection) when the body is longer than [`MAX_BODY_BYTES`] or broken.
async fn skip_body(stream: &mut Stream, head: &Head, already: Vec<u8>) -> bool {
    let mut body = Body::new(head.framing, already);
    loop {
        match body.next(stream).await {
            Ok(Some(_)) if body.total > MAX_BODY_BYTES as u64 => return false,
            Ok(Some(_)) => {}
            Ok(None) => return body.complete,
            Err(_) => return false,
        }
    }
}

/// Searches the first [`MAX_BODY_BYTES`] of the body for `needle`. Returns whether it was
/// found and whether the whole body was read (so the connection can be kept).
async fn search_body(
    stream: &mut Stream,
    head: &Head,
    already: Vec<u8>,
    needle: &[u8],
) -> (Result<bool, ProbeError>, bool) {
    let mut body = Body::new(head.framing, already);
    let mut seen: Vec<u8> = Vec::new();
    let mut found = needle.is_empty();
    loop {
        match body.next(stream).await {
            Ok(Some(chunk)) => {
                if !found && seen.len() < MAX_BODY_BYTES {
                    let room = MAX_BODY_BYTES - seen.len();
                    seen.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    found = contains(&seen, needle);
                }
                if body.total > MAX_BODY_BYTES as u64 {
                    return (Ok(found), false);
                }
            }
            Ok(None) => return (Ok(found), body.complete),
            Err(_) if found => return (Ok(true), false),
            Err(e) => return (Err(ProbeError::Body(e.to_string())), false),
        }
    }
}

/// A body reader over a response's framing, starting with bytes already read past the head.
struct Body {
    framing: Framing,
    pending: Vec<u8>,
    /// Body bytes still due: the rest of the length, or of the current chunk.
    left: u64,
    /// Chunked: the final chunk and trailers were read.
    complete: bool,
    total: u64,
    started: bool,
}

impl Body {
    fn new(framing: Framing, pending: Vec<u8>) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Self {
            framing,
            pending,
            left,
            complete: false,
            total: 0,
            started: false,
        }
    }

    /// Returns the next piece of body, `None` at its end.
    async fn next(&mut self, stream: &mut Stream) -> io::Result<Option<Vec<u8>>> {
        match self.framing {
            Framing::Length(_) => {
                if self.left == 0 {
                    self.complete = true;
                    return Ok(None);
                }
                if self.pending.is_empty() && read_more(stream, &mut self.pending).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let n = (self.left as usize).min(self.pending.len());
                let piece: Vec<u8> = self.pending.drain(..n).collect();
                self.left -= n as u64;
                self.total += n as u64;
                Ok(Some(piece))
            }
            Framing::Close => {
                if !self.started && !self.pending.is_empty() {
                    self.started = true;
                    let piece = std::mem::take(&mut self.pending);
                    self.total += piece.len() as u64;
                    return Ok(Some(piece));
                }
                self.started = true;
                self.pending.clear();
                if read_more(stream, &mut self.pending).await? == 0 {
                    // The end of the body; the connection is gone (never kept).
                    return Ok(None);
                }
                let piece = std::mem::take(&mut self.pending);
                self.total += piece.len() as u64;
                Ok(Some(piece))
            }
            Framing::Chunked => self.next_chunked(stream).await,
        }
    }

    async fn next_chunked(&mut self, stream: &mut Stream) -> io::Result<Option<Vec<u8>>> {
        if self.complete {
            return Ok(None);
        }
        if self.left == 0 {
            // A chunk boundary: the CRLF after the previous chunk, then "size[;ext]\r\n".
            if self.started {
                let line = self.line(stream).await?;
                if !line.is_empty() {
                    return Err(io::Error::other("chunk not followed by CRLF"));
                }
            }
            self.started = true;
            let line = self.line(stream).await?;
            let size = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.split(';').next())
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .ok_or_else(|| io::Error::other("invalid chunk size"))?;
            if size == 0 {
                // Trailers, up to the blank line.
                while !self.line(stream).await?.is_empty() {}
                self.complete = true;
                return Ok(None);
            }
            self.left = size;
        }
        if self.pending.is_empty() && read_more(stream, &mut self.pending).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = (self.left as usize).min(self.pending.len());
        let piece: Vec<u8> = self.pending.drain(..n).collect();
        self.left -= n as u64;
        self.total += n as u64;
        Ok(Some(piece))
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    async fn line(&mut self, stream: &mut Stream) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let line = self.pending[..i].to_vec();
                self.pending.drain(..i + 2);
                return Ok(line);
            }
            if self.pending.len() > 4096 {
                return Err(io::Error::other("chunk line too long"));
            }
            if read_more(stream, &mut self.pending).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// A plain or TLS connection.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Returns an IP address as it appears in a URL authority (IPv6 in brackets).
fn host_for_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Returns our own error when `e` says the process ran out of something.
fn own_io_error(e: &io::Error) -> Option<OwnError> {
    match e.raw_os_error()? {
        libc::EMFILE | libc::ENFILE => Some(OwnError::FileDescriptors(e.to_string())),
        libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL => {
            Some(OwnError::Resources(e.to_string()))
        }
        _ => None,
    }
}

/// True for errors of a kept connection that the server has closed.
fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// Maps a connect-time I/O error to a probe error.
fn connect_error(e: &io::Error) -> ProbeError {
    if let Some(own) = own_io_error(e) {
        return ProbeError::Ours(own);
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ProbeError::Refused,
        _ => ProbeError::Connect(e.to_string()),
    }
}

/// Maps an I/O error after connecting (the target's, unless we ran out of something).
fn read_error(e: &io::Error, wrap: fn(String) -> ProbeError) -> ProbeError {
    match own_io_error(e) {
        Some(own) => ProbeError::Ours(own),
        None => wrap(e.to_string()),
    }
}

/// Maps a TLS handshake error: rustls errors (certificate, protocol) are the target's.
fn tls_error(e: &io::Error) -> ProbeError {
    if let Some(own) = own_io_error(e) {
        return ProbeError::Ours(own);
    }
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => ProbeError::Tls(tls.to_string()),
        None if e.kind() == io::ErrorKind::UnexpectedEof => {
            ProbeError::Tls("connection closed during the handshake".into())
        }
        None => ProbeError::Tls(e.to_string()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::num::NonZeroU32;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What a test backend answers.
    #[derive(Debug, Clone)]
    pub(crate) struct Reply {
        pub(crate) status: u16,
        pub(crate) body: String,
        pub(crate) delay: Duration,
    }

    impl Reply {
        pub(crate) fn ok() -> Self {
            Self {
                status: 200,
                body: "ok".into(),
                delay: Duration::ZERO,
            }
        }
    }

    /// A tiny HTTP/1.1 responder on 127.0.0.1 that counts requests and records the last
    /// request head. The reply can be changed while it runs.
    pub(crate) struct Backend {
        pub(crate) addr: SocketAddr,
        pub(crate) hits: Arc<AtomicUsize>,
        pub(crate) reply: Arc<std::sync::Mutex<Reply>>,
        pub(crate) last_head: Arc<std::sync::Mutex<String>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Backend {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Backend {
        pub(crate) async fn start(reply: Reply) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let hits = Arc::new(AtomicUsize::new(0));
            let reply = Arc::new(std::sync::Mutex::new(reply));
            let last_head = Arc::new(std::sync::Mutex::new(String::new()));
            let (h, r, l) = (hits.clone(), reply.clone(), last_head.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut sock, _)) = listener.accept().await else {
                        return;
                    };
                    let (h, r, l) = (h.clone(), r.clone(), l.clone());
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut tmp = [0u8; 1024];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                            }
                        }
                        h.fetch_add(1, Ordering::SeqCst);
                        *l.lock().unwrap() = String::from_utf8_lossy(&buf).into_owned();
                        let reply = r.lock().unwrap().clone();
                        tokio::time::sleep(reply.delay).await;
                        let resp = format!(
                            "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                            reply.status,
                            reply.body.len(),
                            reply.body
                        );
                        let _ = sock.write_all(resp.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    });
                }
            });
            Self {
                addr,
                hits,
                reply,
                last_head,
                task,
            }
        }

        pub(crate) fn set(&self, reply: Reply) {
            *self.reply.lock().unwrap() = reply;
        }

        pub(crate) fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    pub(crate) fn http_check(port: u16) -> Check {
        Check {
            name: "web".into(),
            kind: CheckKind::Http,
            port,
            path: "/healthz".into(),
            host: None,
            interval: Duration::from_millis(200),
            fast_interval: Duration::from_millis(50),
            timeout: Duration::from_millis(150),
            rise: NonZeroU32::new(2).unwrap(),
            fall: NonZeroU32::new(3).unwrap(),
            expect_status: vec![StatusMatch::Class(2)],
            body_contains: None,
            headers: Vec::new(),
            tls_verify: true,
            initial_state: crate::config::InitialState::Unknown,
            load: None,
            source: None,
        }
    }

    fn localhost() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    /// Returns a loopback port with nothing listening on it.
    async fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn http_probe_passes_on_200_and_sends_path_and_user_agent() {
        let b = Backend::start(Reply::ok()).await;
        let mut p = Prober::new(localhost(), &http_check(b.addr.port()));
        let out = p.probe().await;
        assert_eq!(out.result, Ok(()));
        let head = b.last_head.lock().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /healthz http/1.1"), "{head}");
        assert!(head.contains("user-agent: meridian/"), "{head}");
        assert!(head.contains("(health check)"), "{head}");
    }

    #[tokio::test]
    async fn http_probe_fails_on_503_with_status_error() {
        let b = Backend::start(Reply {
            status: 503,
            ..Reply::ok()
        })
        .await;
        let out = Prober::new(localhost(), &http_check(b.addr.port()))
            .probe()
            .await;
        assert_eq!(out.result, Err(ProbeError::Status(503)));
        assert_eq!(
            out.result.unwrap_err().to_string(),
            "status 503 not in expect_status"
        );
    }

    #[tokio::test]
    async fn expect_status_accepts_an_exact_code_outside_2xx() {
        let b = Backend::start(Reply {
            status: 418,
            ..Reply::ok()
        })
        .await;
        let mut c = http_check(b.addr.port());
        c.expect_status = vec![StatusMatch::Code(418)];
        assert_eq!(Prober::new(localhost(), &c).probe().await.result, Ok(()));
    }

    #[tokio::test]
    async fn body_contains_passes_on_match_and_fails_on_wrong_body() {
        let b = Backend::start(Reply::ok()).await;
        let mut c = http_check(b.addr.port());
        c.body_contains = Some("ok".into());
        let mut p = Prober::new(localhost(), &c);
        assert_eq!(p.probe().await.result, Ok(()));
        b.set(Reply {
            body: "degraded".into(),
            ..Reply::ok()
        });
        let err = p.probe().await.result.unwrap_err();
        assert_eq!(err, ProbeError::BodyMismatch("ok".into()));
        assert_eq!(err.to_string(), "body does not contain \"ok\"");
    }

    #[tokio::test]
    async fn body_search_stops_at_the_byte_limit() {
        let b = Backend::start(Reply {
            body: format!("{}needle", "x".repeat(MAX_BODY_BYTES)),
            ..Reply::ok()
        })
        .await;
        let mut c = http_check(b.addr.port());
        c.body_contains = Some("needle".into());
        c.timeout = Duration::from_secs(2);
        let err = Prober::new(localhost(), &c).probe().await.result;
        assert_eq!(err, Err(ProbeError::BodyMismatch("needle".into())));
    }

    #[tokio::test]
    async fn slow_server_times_out_within_the_check_timeout() {
        let b = Backend::start(Reply {
            delay: Duration::from_secs(3),
            ..Reply::ok()
        })
        .await;
        let mut c = http_check(b.addr.port());
        c.timeout = Duration::from_millis(300);
        let out = Prober::new(localhost(), &c).probe().await;
        assert_eq!(
            out.result,
            Err(ProbeError::TimedOut(Duration::from_millis(300)))
        );
        assert!(out.latency < Duration::from_secs(2), "{:?}", out.latency);
        assert_eq!(out.result.unwrap_err().to_string(), "timed out after 300ms");
    }

    #[tokio::test]
    async fn closed_port_is_connection_refused_for_http_and_tcp() {
        let port = closed_port().await;
        let mut c = http_check(port);
        let http = Prober::new(localhost(), &c).probe().await.result;
        assert_eq!(http, Err(ProbeError::Refused));
        c.kind = CheckKind::Tcp;
        let tcp = Prober::new(localhost(), &c).probe().await.result;
        assert_eq!(tcp, Err(ProbeError::Refused));
        assert_eq!(tcp.unwrap_err().to_string(), "connection refused");
    }

    #[tokio::test]
    async fn tcp_probe_passes_when_something_listens() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = http_check(l.local_addr().unwrap().port());
        c.kind = CheckKind::Tcp;
        assert_eq!(Prober::new(localhost(), &c).probe().await.result, Ok(()));
    }

    #[tokio::test]
    async fn issue_17_each_tcp_probe_is_a_new_connection_ended_with_a_reset_on_a_kept_socket() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let mut c = http_check(port);
        c.kind = CheckKind::Tcp;
        // From a source address, which the kept socket keeps across connections.
        c.source = Some(IpAddr::from([127, 0, 0, 2]));
        let mut p = Prober::new(localhost(), &c);
        let mut ports = std::collections::HashSet::new();
        for _ in 0..5 {
            assert_eq!(p.probe().await.result, Ok(()));
            assert!(p.holds_socket(), "the socket is kept for the next probe");
            let (mut s, peer) = l.accept().await.unwrap();
            assert_eq!(peer.ip(), IpAddr::from([127, 0, 0, 2]));
            ports.insert(peer.port());
            // The probe has already ended its connection, with a reset.
            let mut b = [0u8; 1];
            let r = s.read(&mut b).await;
            assert!(
                matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
                "{r:?}"
            );
        }
        assert_eq!(ports.len(), 5, "a new connection (local port) per probe");
        // The target goes away, then comes back: the same socket tells both apart.
        drop(l);
        assert_eq!(p.probe().await.result, Err(ProbeError::Refused));
        let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        assert_eq!(p.probe().await.result, Ok(()));
        assert_eq!(
            l.accept().await.unwrap().1.ip(),
            IpAddr::from([127, 0, 0, 2])
        );
    }

    #[tokio::test]
    async fn issue_17_a_tcp_probe_cut_by_its_timeout_leaves_a_socket_that_connects_again() {
        // A listener whose accept queue is full drops new SYNs: the connect hangs.
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        l.bind(&SocketAddr::new(localhost(), 0).into()).unwrap();
        l.listen(0).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let _queued = std::net::TcpStream::connect(addr).unwrap();
        let mut c = http_check(addr.port());
        c.kind = CheckKind::Tcp;
        let mut p = Prober::new(localhost(), &c);
        assert_eq!(
            p.probe().await.result,
            Err(ProbeError::TimedOut(c.timeout)),
            "the SYN is dropped while the accept queue is full"
        );
        assert!(
            p.holds_socket(),
            "the abandoned attempt is disconnected, the socket kept"
        );
        // Room in the queue again: the next probe connects on the same socket.
        let (first, _) = l.accept().unwrap();
        drop(first);
        assert_eq!(p.probe().await.result, Ok(()));
    }

    #[tokio::test]
    async fn host_goes_in_the_host_header_while_connecting_to_the_target() {
        let b = Backend::start(Reply::ok()).await;
        let mut c = http_check(b.addr.port());
        c.host = Some("api.example.net".into());
        c.headers = vec![
            ("X-Probe".into(), "1".into()),
            ("User-Agent".into(), "custom".into()),
        ];
        let mut p = Prober::new(localhost(), &c);
        assert_eq!(
            p.url(),
            Some(format!("http://api.example.net:{}/healthz", b.addr.port()).as_str())
        );
        assert_eq!(p.probe().await.result, Ok(()));
        let head = b.last_head.lock().unwrap().to_ascii_lowercase();
        assert!(head.contains("host: api.example.net"), "{head}");
        assert!(head.contains("x-probe: 1"), "{head}");
        assert!(head.contains("user-agent: custom"), "{head}");
        assert!(!head.contains("meridian/"), "{head}");
    }

    #[test]
    fn ipv6_target_is_bracketed_in_the_url() {
        let c = http_check(8080);
        let p = Prober::new("2001:db8::1".parse().unwrap(), &c);
        assert_eq!(p.url(), Some("http://[2001:db8::1]:8080/healthz"));
    }

    #[tokio::test]
    async fn https_probe_against_a_plain_text_server_fails_with_a_tls_error() {
        // No certificate generator among the dependencies: this exercises the https path with
        // `tls_verify = false` against a server that answers the ClientHello in plain text.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            while let Ok((mut sock, _)) = l.accept().await {
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\n\r\nok").await;
                let _ = sock.shutdown().await;
            }
        });
        let mut c = http_check(port);
        c.kind = CheckKind::Https;
        c.tls_verify = false;
        c.host = Some("api.example.net".into());
        c.timeout = Duration::from_secs(2);
        let mut p = Prober::new(localhost(), &c);
        assert!(p.url().unwrap().starts_with("https://api.example.net:"));
        let err = p.probe().await.result.unwrap_err();
        server.abort();
        assert!(matches!(err, ProbeError::Tls(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("tls handshake failed: "),
            "{err}"
        );
    }

    /// Serves `connections` TLS connections on 127.0.0.1 with the self-signed certificate for
    /// api.example.net in `testdata/` (see `gen-cert.sh`), answering 200 "ok", and records the
    /// SNI name each client sent. Runs on a plain thread with rustls' blocking stream.
    fn tls_backend(connections: usize) -> (u16, Arc<std::sync::Mutex<Vec<Option<String>>>>) {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        use std::io::{Read, Write};
        let cert = CertificateDer::from(include_bytes!("testdata/cert.der").to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            include_bytes!("testdata/key.der").to_vec(),
        ));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sni = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sni.clone();
        std::thread::spawn(move || {
            for _ in 0..connections {
                let Ok((sock, _)) = listener.accept() else {
                    return;
                };
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let mut buf = Vec::new();
                let mut tmp = [0u8; 1024];
                let complete = loop {
                    match tls.read(&mut tmp) {
                        Ok(0) | Err(_) => break false,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break true;
                    }
                };
                seen.lock()
                    .unwrap()
                    .push(tls.conn.server_name().map(str::to_string));
                if complete {
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        (port, sni)
    }

    #[tokio::test]
    async fn https_probe_sends_sni_from_host_and_skips_verification_when_told() {
        let (port, sni) = tls_backend(1);
        let mut c = http_check(port);
        c.kind = CheckKind::Https;
        c.host = Some("api.example.net".into());
        c.tls_verify = false;
        c.body_contains = Some("ok".into());
        c.timeout = Duration::from_secs(5);
        let out = Prober::new(localhost(), &c).probe().await;
        assert_eq!(out.result, Ok(()));
        assert_eq!(*sni.lock().unwrap(), [Some("api.example.net".to_string())]);
    }

    #[tokio::test]
    async fn https_probe_rejects_a_self_signed_certificate_when_verifying() {
        let (port, _sni) = tls_backend(1);
        let mut c = http_check(port);
        c.kind = CheckKind::Https;
        c.host = Some("api.example.net".into());
        c.timeout = Duration::from_secs(5);
        let err = Prober::new(localhost(), &c)
            .probe()
            .await
            .result
            .unwrap_err();
        assert!(matches!(err, ProbeError::Tls(_)), "{err:?}");
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    /// A keep-alive HTTP/1.1 server on 127.0.0.1: answers every request on a connection with
    /// `response`, closing the connection after `per_connection` responses. Counts accepted
    /// connections and requests.
    async fn keep_alive_backend(
        response: &'static str,
        per_connection: usize,
    ) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, r) = (accepts.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 1024];
                    for _ in 0..per_connection {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                        buf.drain(..end + 4);
                        r.fetch_add(1, Ordering::SeqCst);
                        if sock.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepts, requests)
    }

    #[tokio::test]
    async fn issue_17_probes_reuse_a_kept_alive_connection() {
        let (addr, accepts, requests) =
            keep_alive_backend("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 1000).await;
        let mut c = http_check(addr.port());
        c.body_contains = Some("ok".into());
        let mut p = Prober::new(localhost(), &c);
        for _ in 0..5 {
            assert_eq!(p.probe().await.result, Ok(()));
            assert!(p.has_kept_connection());
        }
        assert_eq!(requests.load(Ordering::SeqCst), 5);
        assert_eq!(
            accepts.load(Ordering::SeqCst),
            1,
            "one connection for five probes"
        );
    }

    #[tokio::test]
    async fn issue_17_a_closed_kept_connection_costs_one_reconnect_not_a_failure() {
        // The server answers one request per connection, then closes it without saying so.
        let (addr, accepts, requests) =
            keep_alive_backend("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 1).await;
        let mut p = Prober::new(localhost(), &http_check(addr.port()));
        for _ in 0..4 {
            assert_eq!(p.probe().await.result, Ok(()));
            // Let the server's close arrive before the next probe.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(requests.load(Ordering::SeqCst), 4);
        assert_eq!(accepts.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn chunked_body_is_searched_and_the_connection_kept() {
        let (addr, accepts, _) = keep_alive_backend(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             3\r\nsta\r\n6;ext=1\r\ntus=ok\r\n0\r\nx-trailer: 1\r\n\r\n",
            1000,
        )
        .await;
        let mut c = http_check(addr.port());
        c.body_contains = Some("status=ok".into());
        let mut p = Prober::new(localhost(), &c);
        assert_eq!(p.probe().await.result, Ok(()));
        assert_eq!(p.probe().await.result, Ok(()));
        assert_eq!(accepts.load(Ordering::SeqCst), 1);
        c.body_contains = Some("down".into());
        let err = Prober::new(localhost(), &c).probe().await.result;
        assert_eq!(err, Err(ProbeError::BodyMismatch("down".into())));
    }

    #[tokio::test]
    async fn a_failing_status_keeps_the_connection_too() {
        let (addr, accepts, _) = keep_alive_backend(
            "HTTP/1.1 503 Unavailable\r\ncontent-length: 4\r\n\r\ndown",
            1000,
        )
        .await;
        let mut p = Prober::new(localhost(), &http_check(addr.port()));
        assert_eq!(p.probe().await.result, Err(ProbeError::Status(503)));
        assert_eq!(p.probe().await.result, Err(ProbeError::Status(503)));
        assert_eq!(accepts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn running_out_of_descriptors_or_ports_is_our_error_not_the_targets() {
        for (errno, reason) in [
            (libc::EMFILE, "file_descriptors"),
            (libc::ENFILE, "file_descriptors"),
            (libc::ENOBUFS, "resources"),
            (libc::EADDRNOTAVAIL, "resources"),
        ] {
            let e = connect_error(&io::Error::from_raw_os_error(errno));
            assert_eq!(e.own().map(OwnError::reason), Some(reason), "{e}");
        }
        let refused = connect_error(&io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert_eq!(refused, ProbeError::Refused);
        let unreachable = connect_error(&io::Error::from_raw_os_error(libc::EHOSTUNREACH));
        assert!(unreachable.own().is_none());
    }

    #[tokio::test]
    async fn a_check_that_cannot_be_set_up_is_our_error_and_retried() {
        let b = Backend::start(Reply::ok()).await;
        let mut c = http_check(b.addr.port());
        c.headers = vec![("Bad Name".into(), "1".into())];
        let mut p = Prober::new(localhost(), &c);
        let err = p.probe().await.result.unwrap_err();
        assert_eq!(err.own().map(OwnError::reason), Some("setup"), "{err}");
        assert!(
            err.to_string().starts_with("check cannot be set up: "),
            "{err}"
        );
        assert_eq!(b.hits(), 0);
    }

    #[test]
    fn timeouts_are_written_like_config_durations() {
        let s = |d| ProbeError::TimedOut(d).to_string();
        assert_eq!(s(Duration::from_secs(1)), "timed out after 1s");
        assert_eq!(s(Duration::from_millis(250)), "timed out after 250ms");
        assert_eq!(s(Duration::from_millis(1500)), "timed out after 1.5s");
    }
}
