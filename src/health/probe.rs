//! Probes: one HTTP, HTTPS or TCP check of one target address.
//!
//! A [`Prober`] is built once per (address, check) and reused for every probe of that target.
//! HTTP(S) probes use a reqwest client of their own, because `check.host` must be both the
//! `Host` header and the TLS SNI name while the connection goes to the target's address: the
//! URL names the host and the client's resolver is pinned to the address
//! (`ClientBuilder::resolve`). The client keeps no idle connections, so every probe opens a
//! fresh connection and a dead server cannot hide behind a pooled socket. Proxies from the
//! environment are ignored and redirects are not followed (a 301 is a status like any other).
//!
//! The whole probe (connect, TLS, request, body) is cut at `check.timeout`. Failures are typed
//! [`ProbeError`]s whose messages read well in logs and in `/status`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{Check, CheckKind, StatusMatch};

/// The most body bytes read when searching for `body_contains`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The `User-Agent` sent by HTTP(S) probes unless the check sets its own.
pub const DEFAULT_USER_AGENT: &str =
    concat!("meridian/", env!("CARGO_PKG_VERSION"), " (health check)");

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
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
    /// The probe could not be set up (bad header, TLS setup).
    #[error("invalid probe setup: {0}")]
    Setup(String),
    /// A failure without details (should not happen; kept so no failure goes unnamed).
    #[error("probe failed")]
    Unspecified,
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
pub struct ProbeOutcome {
    /// Time from the start of the probe to its verdict (at most about the timeout).
    pub latency: Duration,
    /// `Ok` when the probe passed.
    pub result: Result<(), ProbeError>,
}

/// Installs ring as the process-wide rustls provider, unless one is installed already.
pub fn install_crypto_provider() {
    // An error means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Probes one target address with one check.
#[derive(Debug)]
pub struct Prober {
    target: SocketAddr,
    /// The local address probes are sent from (`check.source`).
    source: Option<IpAddr>,
    timeout: Duration,
    kind: ProberKind,
}

#[derive(Debug)]
enum ProberKind {
    Tcp,
    Http(Box<HttpProbe>),
    /// The probe cannot be built (reported as a failure on every probe).
    Broken(ProbeError),
}

#[derive(Debug)]
struct HttpProbe {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    expect_status: Vec<StatusMatch>,
    body_contains: Option<String>,
}

impl Prober {
    /// Returns a prober of `address` with `check`. Setup problems (which validation should have
    /// caught) do not fail here: every probe then fails with a [`ProbeError::Setup`].
    pub fn new(address: IpAddr, check: &Check) -> Self {
        let target = SocketAddr::new(address, check.port);
        let kind = match check.kind {
            CheckKind::Tcp => ProberKind::Tcp,
            CheckKind::Http | CheckKind::Https => match HttpProbe::new(target, check) {
                Ok(h) => ProberKind::Http(Box::new(h)),
                Err(e) => ProberKind::Broken(e),
            },
        };
        Self {
            target,
            source: check.source,
            timeout: check.timeout,
            kind,
        }
    }

    /// Returns the URL an HTTP(S) prober requests (`None` for TCP).
    pub fn url(&self) -> Option<&str> {
        match &self.kind {
            ProberKind::Http(h) => Some(h.url.as_str()),
            _ => None,
        }
    }

    /// Runs one probe, cut at the check's timeout.
    pub async fn probe(&self) -> ProbeOutcome {
        let start = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.probe_inner()).await {
            Ok(r) => r,
            Err(_) => Err(ProbeError::TimedOut(self.timeout)),
        };
        ProbeOutcome {
            latency: start.elapsed(),
            result,
        }
    }

    async fn probe_inner(&self) -> Result<(), ProbeError> {
        match &self.kind {
            ProberKind::Tcp => match connect_from(self.source, self.target).await {
                Ok(_stream) => Ok(()),
                Err(e) => Err(connect_error(&e)),
            },
            ProberKind::Http(h) => h.probe().await,
            ProberKind::Broken(e) => Err(e.clone()),
        }
    }
}

/// Connects to `target`, from `source` when set (so that one instance of a fleet can probe
/// from its own address, and a backend can tell the instances apart).
async fn connect_from(
    source: Option<IpAddr>,
    target: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let Some(source) = source else {
        return tokio::net::TcpStream::connect(target).await;
    };
    let socket = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

impl HttpProbe {
    fn new(target: SocketAddr, check: &Check) -> Result<Self, ProbeError> {
        install_crypto_provider();
        let scheme = match check.kind {
            CheckKind::Https => "https",
            _ => "http",
        };
        let mut headers = HeaderMap::new();
        let mut builder = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(DEFAULT_USER_AGENT)
            .tls_danger_accept_invalid_certs(!check.tls_verify)
            .local_address(check.source);
        // A host name goes in the URL (so it becomes both Host and SNI) with resolution pinned
        // to the target; an IP literal as `host` only sets the Host header (no SNI for IPs).
        let url = match check.host.as_deref() {
            Some(host) if host.parse::<IpAddr>().is_err() => {
                builder = builder.resolve(host, target);
                format!("{scheme}://{host}:{}{}", check.port, check.path)
            }
            Some(host) => {
                let value = HeaderValue::from_str(host)
                    .map_err(|e| ProbeError::Setup(format!("host {host:?}: {e}")))?;
                headers.insert(reqwest::header::HOST, value);
                format!("{scheme}://{target}{}", check.path)
            }
            None => format!("{scheme}://{target}{}", check.path),
        };
        let url = reqwest::Url::parse(&url)
            .map_err(|e| ProbeError::Setup(format!("url {url:?}: {e}")))?;
        for (name, value) in &check.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ProbeError::Setup(format!("header {name:?}: {e}")))?;
            let v = HeaderValue::from_str(value)
                .map_err(|e| ProbeError::Setup(format!("header {name:?} value: {e}")))?;
            headers.insert(n, v);
        }
        let client = builder
            .build()
            .map_err(|e| ProbeError::Setup(error_chain(&e)))?;
        Ok(Self {
            client,
            url,
            headers,
            expect_status: check.expect_status.clone(),
            body_contains: check.body_contains.clone(),
        })
    }

    async fn probe(&self) -> Result<(), ProbeError> {
        let mut response = self
            .client
            .get(self.url.clone())
            .headers(self.headers.clone())
            .send()
            .await
            .map_err(|e| request_error(&e))?;
        let status = response.status().as_u16();
        if !self.expect_status.iter().any(|m| m.matches(status)) {
            return Err(ProbeError::Status(status));
        }
        let Some(needle) = &self.body_contains else {
            return Ok(());
        };
        let needle_bytes = needle.as_bytes();
        let mut body: Vec<u8> = Vec::new();
        while body.len() < MAX_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY_BYTES - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if contains(&body, needle_bytes) {
                        return Ok(());
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(ProbeError::Body(error_chain(&e))),
            }
        }
        Err(ProbeError::BodyMismatch(needle.clone()))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Maps a connect-time I/O error to a probe error.
fn connect_error(e: &std::io::Error) -> ProbeError {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => ProbeError::Refused,
        _ => ProbeError::Connect(e.to_string()),
    }
}

/// Classifies a reqwest error by walking its source chain.
fn request_error(e: &reqwest::Error) -> ProbeError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(found) = classify(err) {
            return found;
        }
        source = err.source();
    }
    if e.is_connect() {
        ProbeError::Connect(error_chain(e))
    } else {
        ProbeError::Http(error_chain(e))
    }
}

/// Recognizes refusals and TLS errors, looking inside nested `io::Error`s (whose `source()`
/// skips the wrapped error itself).
fn classify(err: &(dyn std::error::Error + 'static)) -> Option<ProbeError> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(ProbeError::Tls(tls.to_string()));
    }
    let io = err.downcast_ref::<std::io::Error>()?;
    if io.kind() == std::io::ErrorKind::ConnectionRefused {
        return Some(ProbeError::Refused);
    }
    let inner: &(dyn std::error::Error + 'static) = io.get_ref()?;
    classify(inner)
}

/// Returns an error and its sources joined with ": ", skipping repeats.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let s = err.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = err.source();
    }
    out
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
            timeout: Duration::from_millis(150),
            rise: NonZeroU32::new(2).unwrap(),
            fall: NonZeroU32::new(3).unwrap(),
            expect_status: vec![StatusMatch::Class(2)],
            body_contains: None,
            headers: Vec::new(),
            tls_verify: true,
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
        let p = Prober::new(localhost(), &http_check(b.addr.port()));
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
        let p = Prober::new(localhost(), &c);
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
    async fn host_goes_in_the_host_header_while_connecting_to_the_target() {
        let b = Backend::start(Reply::ok()).await;
        let mut c = http_check(b.addr.port());
        c.host = Some("api.example.net".into());
        c.headers = vec![
            ("X-Probe".into(), "1".into()),
            ("User-Agent".into(), "custom".into()),
        ];
        let p = Prober::new(localhost(), &c);
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
        let p = Prober::new(localhost(), &c);
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

    #[test]
    fn timeouts_are_written_like_config_durations() {
        let s = |d| ProbeError::TimedOut(d).to_string();
        assert_eq!(s(Duration::from_secs(1)), "timed out after 1s");
        assert_eq!(s(Duration::from_millis(250)), "timed out after 250ms");
        assert_eq!(s(Duration::from_millis(1500)), "timed out after 1.5s");
    }
}
