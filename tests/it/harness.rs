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
        let mut child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(path)
            .env("MERIDIAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meridian");
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
        server.admin = find("listening admin/http ");
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
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(msg);
    s.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
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
