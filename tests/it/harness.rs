//! Starts the real `meridian` binary on loopback ports and talks to it over real sockets.
//!
//! A [`Server`] is spawned with a config written into its own temporary directory, its bound
//! ports are read from the `listening ...` log lines, and it is killed (by pid) on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

/// How long a test waits for the server to come up (generous: CI machines are loaded).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The path of the `meridian` binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_meridian")
}

/// A running `meridian serve`.
pub struct Server {
    child: Child,
    /// DNS address (UDP and TCP).
    pub dns: SocketAddr,
    /// Admin HTTP address, when the server logged one.
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    /// The temporary directory holding the config, removed when the server is dropped.
    _dir: tempfile::TempDir,
}

/// A config file body with `{ZONE}` and `{GEO}` placeholders replaced, plus loopback port-0
/// listeners. `body` holds everything after `[server]`'s listen lines.
pub fn config(body: &str) -> String {
    let zone = repo().join("zones/example.net.zone");
    let geo = repo().join("geodata/sample.mmdb");
    body.replace("{ZONE}", &toml_path(&zone))
        .replace("{GEO}", &toml_path(&geo))
}

fn toml_path(p: &Path) -> String {
    p.display().to_string().replace('\\', "\\\\")
}

/// The zone part that most tests share.
pub const ZONE: &str = "[[zone]]\norigin = \"example.net.\"\nfile = \"{ZONE}\"\n";

impl Server {
    /// Writes `config_text` (placeholders replaced) as `meridian.toml` in a new temporary
    /// directory and starts the server on it.
    pub fn start(config_text: &str) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meridian.toml");
        std::fs::write(&path, config(config_text)).expect("write config");
        Self::start_in(dir, &path)
    }

    /// Starts the server on an existing config file in `dir`.
    pub fn start_in(dir: tempfile::TempDir, path: &Path) -> Server {
        Self::start_with(dir, path, |_| {})
    }

    /// Like [`Server::start`], with the open-file limit (soft and hard) of the server process
    /// set to `nofile`.
    pub fn start_with_fd_limit(config_text: &str, nofile: u64) -> Server {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("meridian.toml");
        std::fs::write(&path, config(config_text)).expect("write config");
        Self::start_with(dir, &path, move |cmd| {
            // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    let l = libc::rlimit {
                        rlim_cur: nofile,
                        rlim_max: nofile,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        })
    }

    /// Starts the server on an existing config file in `dir`, after `configure` has adjusted
    /// the command.
    pub fn start_with(
        dir: tempfile::TempDir,
        path: &Path,
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        let mut cmd = Command::new(binary());
        cmd.args(["serve", "--config"])
            .arg(path)
            .env("MERIDIAN_LOG", "info")
            // The harness reads text lines, whatever the caller's environment says.
            .env_remove("MERIDIAN_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("spawn meridian");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut server = Server {
            child,
            dns: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        // `meridian started` is logged once every socket is bound and logged.
        while !server.wait_log("meridian started", Duration::from_millis(50)) {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "meridian exited early with {status}:\n{}",
                    server.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!("meridian did not start in time:\n{}", server.log_text());
            }
        }
        let lines = server.log.lock().unwrap().clone();
        let find = |tag: &str| {
            lines.iter().find_map(|l| {
                let i = l.find(tag)?;
                l[i + tag.len()..]
                    .split_whitespace()
                    .next()?
                    .parse::<SocketAddr>()
                    .ok()
            })
        };
        server.dns = find("listening dns/udp ").expect("a dns/udp listening line");
        server.admin = find("listening admin/http ").or_else(|| find("listening admin/https "));
        server
    }

    /// Returns everything the server logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle`; returns false on timeout.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends `signal` to the server.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with the pid of a child we spawned and still own.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Returns the server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends `msg` over UDP and returns the raw response.
    pub fn udp_raw(&self, msg: &[u8]) -> Option<Vec<u8>> {
        udp_raw(self.dns, msg)
    }

    /// Sends `msg` over TCP and returns the raw response.
    pub fn tcp_raw(&self, msg: &[u8]) -> Option<Vec<u8>> {
        tcp_raw(self.dns, msg)
    }

    /// Sends `msg` over UDP and TCP and returns both parsed responses.
    pub fn both(&self, msg: &Message) -> [Message; 2] {
        let bytes = msg.to_vec().unwrap();
        let u = self.udp_raw(&bytes).expect("udp response");
        let t = self.tcp_raw(&bytes).expect("tcp response");
        [
            Message::from_vec(&u).expect("parse udp"),
            Message::from_vec(&t).expect("parse tcp"),
        ]
    }

    /// Asks `name`/`rtype` over UDP (with EDNS) and returns the response.
    pub fn ask(&self, name: &str, rtype: RecordType) -> Message {
        let bytes = query(name, rtype).to_vec().unwrap();
        Message::from_vec(&self.udp_raw(&bytes).expect("udp response")).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `msg` to `addr` over UDP; waits up to 5 s (retrying twice) for a response.
pub fn udp_raw(addr: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    let bind = if addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .ok()?;
    let mut buf = vec![0u8; 65535];
    for _ in 0..3 {
        sock.send_to(msg, addr).ok()?;
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// Sends `msg` to `addr` over a new TCP connection and returns the response.
pub fn tcp_raw(addr: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    tcp_exchange(&mut s, msg).ok()
}

/// Sends one DNS message on `s` with its 2-byte length (RFC 1035 §4.2.2) and reads one
/// framed response.
pub fn tcp_exchange(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    s.write_all(&framed)?;
    read_framed(s)
}

/// Reads one length-prefixed DNS message from `s`.
pub fn read_framed(s: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

/// Builds a query for `name`/`rtype` with EDNS (payload 1232).
pub fn query(name: &str, rtype: RecordType) -> Message {
    let mut m = query_no_edns(name, rtype);
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.edns = Some(e);
    m
}

/// Builds a query for `name`/`rtype` without EDNS.
pub fn query_no_edns(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0x2a00);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs `meridian` with `args` and returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("run meridian");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Adds an EDNS option to a query built by [`query`].
pub fn add_option(m: &mut Message, option: hickory_proto::rr::rdata::opt::EdnsOption) {
    m.edns
        .as_mut()
        .expect("a query with EDNS")
        .options_mut()
        .insert(option);
}

/// Builds an ECS option for `subnet`/`source` (scope 0, as queries carry it).
pub fn ecs(subnet: &str, source: u8) -> hickory_proto::rr::rdata::opt::EdnsOption {
    hickory_proto::rr::rdata::opt::EdnsOption::Subnet(
        hickory_proto::rr::rdata::opt::ClientSubnet::new(
            subnet.parse().expect("an IP address"),
            source,
            0,
        ),
    )
}

impl Server {
    /// Returns the directory holding the config (and any state file under it).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Returns the admin address; panics when the server logged none.
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("a listening admin/http line")
    }

    /// Replaces the config file with `config_text` (placeholders replaced).
    pub fn write_config(&self, config_text: &str) {
        std::fs::write(self.dir().join("meridian.toml"), config(config_text))
            .expect("write config");
    }

    /// Stops the server with SIGTERM, waits for it to exit, and returns its directory (for a
    /// restart on the same files with [`Server::start_in`]).
    pub fn stop(mut self) -> tempfile::TempDir {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(15));
        assert!(
            status.is_some(),
            "meridian did not exit on SIGTERM:\n{}",
            self.log_text()
        );
        // Drop still kills and reaps (a no-op now) and removes the placeholder directory.
        std::mem::replace(&mut self._dir, tempfile::tempdir().expect("temp dir"))
    }
}

/// An HTTP response as a test sees it.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The body (chunked encoding removed).
    pub body: String,
}

impl HttpResponse {
    /// Returns the value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Parses the body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Sends one HTTP/1.1 request over a new connection (`Connection: close`) and reads the whole
/// response. `headers` are extra request headers.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&data[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// A tiny HTTP server on 127.0.0.1:0 standing in for a backend (probed by health checks) or a
/// webhook receiver: answers every request with the current status, counts requests and keeps
/// their bodies. Its thread stops when the stub is dropped.
pub struct HttpStub {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<StubState>,
}

struct StubState {
    status: std::sync::atomic::AtomicU16,
    /// Requests still to be answered with 500 before `status` applies.
    fail_next: std::sync::atomic::AtomicU32,
    /// When set, connections are accepted but never answered.
    hang: std::sync::atomic::AtomicBool,
    requests: Mutex<Vec<(String, String)>>,
    stop: std::sync::atomic::AtomicBool,
}

impl HttpStub {
    /// Starts a stub answering `status` with the body `ok`.
    pub fn start(status: u16) -> HttpStub {
        use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind stub");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(StubState {
            status: AtomicU16::new(status),
            fail_next: AtomicU32::new(0),
            hang: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            while !st.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || stub_serve(sock, &st));
                    }
                    // Short, so that a burst of webhook posts (one connection each) is
                    // taken quickly.
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        HttpStub { addr, state }
    }

    /// Answers `status` from now on.
    pub fn set_status(&self, status: u16) {
        self.state
            .status
            .store(status, std::sync::atomic::Ordering::Relaxed);
    }

    /// Answers the next `n` requests with 500.
    pub fn fail_next(&self, n: u32) {
        self.state
            .fail_next
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Accepts connections but never answers them (a hung backend).
    pub fn set_hang(&self, hang: bool) {
        self.state
            .hang
            .store(hang, std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns how many requests arrived so far.
    pub fn hits(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Returns the (request line, body) of every request so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn stub_serve(mut sock: TcpStream, st: &StubState) {
    use std::sync::atomic::Ordering;
    let _ = sock.set_nonblocking(false);
    let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match sock.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    let line = head.lines().next().unwrap_or("").to_string();
    st.requests.lock().unwrap().push((line, body));
    if st.hang.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    let failing = st
        .fail_next
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok();
    let status = if failing {
        500
    } else {
        st.status.load(Ordering::Relaxed)
    };
    let reply = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    );
    let _ = sock.write_all(reply.as_bytes());
}

/// Finds an outside tool that a test needs (`etcd`, `promtool`, `kdig`, `chromium`, ...): the
/// path in `MERIDIAN_<NAME>` (upper case, `-` as `_`), else the first of `names` on PATH.
///
/// When the tool is absent the test is skipped with a visible `SKIPPED` line on stderr, unless
/// `MERIDIAN_REQUIRE_TOOLS=1` (set by `.ci/run` after installing every tool) or the tool's own
/// `MERIDIAN_REQUIRE_<NAME>=1` is set (for Chromium also `MERIDIAN_REQUIRE_BROWSER=1`, the name
/// issue 11 gives it): then its absence fails the test. Use it as
/// `let Some(etcd) = tool("etcd test", &["etcd"], "etcd-server") else { return };`.
pub fn tool(test: &str, names: &[&str], package: &str) -> Option<PathBuf> {
    let key = names[0].to_ascii_uppercase().replace('-', "_");
    if let Some(p) = std::env::var_os(format!("MERIDIAN_{key}")) {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let required = |var: &str| std::env::var(var).is_ok_and(|v| v == "1");
    let message = format!(
        "{test}: `{}` not found on PATH (or MERIDIAN_{key}); install the Debian package `{package}`",
        names[0]
    );
    let alias = (key == "CHROMIUM").then_some("MERIDIAN_REQUIRE_BROWSER");
    if required("MERIDIAN_REQUIRE_TOOLS")
        || required(&format!("MERIDIAN_REQUIRE_{key}"))
        || alias.is_some_and(required)
    {
        panic!("{message} (required: MERIDIAN_REQUIRE_TOOLS or MERIDIAN_REQUIRE_{key} is set)");
    }
    eprintln!("SKIPPED {message}");
    None
}

/// The flags every browser test starts Chromium with: headless as root, and no connection of
/// its own to the outside (this machine's network refuses them).
pub const CHROMIUM_HEADLESS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
];

/// Held while a test runs headless Chromium: two Chromiums started at once by parallel tests
/// sometimes exit 0 without a page (seen in CI runs), so the browser tests take turns.
pub static CHROMIUM: Mutex<()> = Mutex::new(());

/// Takes the [`CHROMIUM`] turn, whatever a panicking holder left behind.
pub fn chromium_turn() -> std::sync::MutexGuard<'static, ()> {
    CHROMIUM.lock().unwrap_or_else(|p| p.into_inner())
}
