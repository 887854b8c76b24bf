//! DNS over TLS (issue 15, RFC 7858): `kdig +tls` gets answers, a Rust rustls client gets the
//! very bytes a TCP client gets (ECS scope, OPT, NSID, cookie, AA), a client that never
//! finishes the handshake is cut at the timeout, and a reload serves a new certificate on the
//! next connection. Certificates are generated in the test with the openssl CLI.
//!
//! No timed assertions: waits are bounded generously; measured times are printed
//! (`cargo test --test it tls -- --nocapture`).

use rustls::pki_types::pem::PemObject;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};

use crate::geo::{REGIONS, SERVICES};
use crate::harness::{Server, ZONE, add_option, ecs, http, query, tcp_raw, tool};

/// Generates a self-signed P-256 certificate for `dot.test` and 127.0.0.1 with subject `cn`,
/// as `<stem>.crt` and `<stem>.key` in `dir`.
pub fn self_signed(openssl: &Path, dir: &Path, stem: &str, cn: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    let out = Command::new(openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
        ])
        .arg(format!("/CN={cn}"))
        .args(["-addext", "subjectAltName=DNS:dot.test,IP:127.0.0.1"])
        // An end-entity certificate (webpki refuses a CA one as the server certificate).
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (crt, key)
}

fn tls_port(s: &Server) -> SocketAddr {
    let log = s.log_text();
    log.lines()
        .find_map(|l| {
            let i = l.find("listening dns/tls ")?;
            l[i + 18..].split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("a dns/tls listening line:\n{log}"))
}

/// A DoT session of a rustls client trusting `ca` only.
struct Dot(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Dot {
    fn ask(&mut self, msg: &[u8]) -> Vec<u8> {
        let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(msg);
        self.0.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        self.0.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        self.0.read_exact(&mut buf).unwrap();
        buf
    }

    fn leaf(&self) -> Vec<u8> {
        self.0.conn.peer_certificates().unwrap()[0].to_vec()
    }
}

/// Answers `msg` on a new DoT session; returns the answer and the server's leaf certificate.
fn dot_raw(addr: SocketAddr, ca: &Path, msg: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut d = dot_connect(addr, ca);
    let answer = d.ask(msg);
    (answer, d.leaf())
}

fn dot_connect(addr: SocketAddr, ca: &Path) -> Dot {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"dot".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("dot.test").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    Dot(rustls::StreamOwned::new(conn, sock))
}

fn config(crt: &Path, key: &Path) -> String {
    format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\ntls_listen = [\"127.0.0.1:0\"]\n\
         admin_listen = \"127.0.0.1:0\"\ngeoip = \"{{GEO}}\"\nnsid = \"dot-test\"\ntcp_idle_timeout = \"3s\"\n\
         tls_certificate = {:?}\ntls_key = {:?}\n{ZONE}{REGIONS}{SERVICES}",
        crt.display().to_string(),
        key.display().to_string(),
    )
}

pub fn pem_der(crt: &Path) -> Vec<u8> {
    let pem = std::fs::read(crt).unwrap();
    rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[test]
fn issue_15_dot_answers_kdig_and_matches_tcp_bytes_cuts_stalled_handshakes_and_reloads_the_cert() {
    let Some(openssl) = tool("dot test", &["openssl"], "openssl") else {
        return;
    };
    let kdig = tool("dot test", &["kdig"], "knot-dnsutils");
    let certs = tempfile::tempdir().unwrap();
    let (crt1, key1) = self_signed(&openssl, certs.path(), "one", "first");
    let s = Server::start(&config(&crt1, &key1));
    let dot = tls_port(&s);

    // 1. kdig over TLS, verifying the certificate against the generated CA.
    if let Some(kdig) = &kdig {
        let text = kdig_soa(kdig, dot, &crt1, &[]);
        assert!(text.contains("TLS session"), "{text}");
        assert!(text.contains("\"dot-test\""), "NSID missing: {text}");
    }

    // 2. The same bytes as TCP: ECS with its scope, OPT, NSID, a cookie, AA. The server
    //    cookie carries a timestamp in seconds: a pair straddling a second may differ there,
    //    so a few pairs are tried and one must match exactly.
    let mut m = query("api.example.net.", RecordType::A);
    add_option(&mut m, ecs("198.51.100.0", 24));
    add_option(
        &mut m,
        EdnsOption::Unknown(u16::from(EdnsCode::NSID), Vec::new()),
    );
    add_option(
        &mut m,
        EdnsOption::Unknown(u16::from(EdnsCode::Cookie), vec![7u8; 8]),
    );
    let q = m.to_vec().unwrap();
    let mut matched = None;
    for _ in 0..5 {
        let t = tcp_raw(s.dns, &q).expect("tcp answer");
        let (d, leaf) = dot_raw(dot, &crt1, &q);
        assert_eq!(leaf, pem_der(&crt1));
        if t == d {
            matched = Some(d);
            break;
        }
    }
    let bytes = matched.expect("a DoT answer byte-identical to the TCP answer");
    let r = Message::from_vec(&bytes).unwrap();
    assert!(r.authoritative, "AA");
    assert!(!r.answers.is_empty(), "{r:?}");
    let opts = r.edns.as_ref().expect("OPT").options();
    let codes: Vec<EdnsCode> = opts.as_ref().iter().map(|(c, _)| *c).collect();
    for c in [EdnsCode::Subnet, EdnsCode::NSID, EdnsCode::Cookie] {
        assert!(codes.contains(&c), "{c:?} missing in {codes:?}");
    }

    // 3. A client that connects and never sends a ClientHello is closed by the server.
    let started = Instant::now();
    let mut idle = TcpStream::connect(dot).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut b = [0u8; 1];
    let n = idle.read(&mut b).unwrap_or(0);
    let cut = started.elapsed();
    eprintln!("silent client cut after {cut:?} (handshake bound: min(tcp_idle_timeout 3s, 10s))");
    assert_eq!(n, 0, "server closed the connection");
    assert!(cut < Duration::from_secs(30), "not cut within 30 s");

    // 4. A reload with a new certificate: an open session goes on, the next one gets it.
    let m2 = query("example.net.", RecordType::SOA).to_vec().unwrap();
    let (crt2, key2) = self_signed(&openssl, certs.path(), "two", "second");
    let mut open = dot_connect(dot, &crt1);
    assert!(Message::from_vec(&open.ask(&m2)).unwrap().authoritative);
    std::fs::write(
        s.dir().join("meridian.toml"),
        crate::harness::config(&config(&crt2, &key2)),
    )
    .unwrap();
    s.signal(libc::SIGHUP);
    assert!(
        s.wait_log("configuration reloaded", Duration::from_secs(30)),
        "{}",
        s.log_text()
    );
    let (answer, leaf) = dot_raw(dot, &crt2, &m2);
    assert_eq!(
        leaf,
        pem_der(&crt2),
        "the new certificate on the next connection"
    );
    assert!(Message::from_vec(&answer).unwrap().authoritative);
    assert_eq!(open.leaf(), pem_der(&crt1));
    assert!(
        Message::from_vec(&open.ask(&m2)).unwrap().authoritative,
        "the session opened before the reload still answers"
    );

    // 5. A broken key on reload is refused and the served certificate stays.
    std::fs::write(&key2, "not a key").unwrap();
    s.signal(libc::SIGHUP);
    assert!(
        s.wait_log("server.tls_key", Duration::from_secs(30)),
        "{}",
        s.log_text()
    );
    let (_, leaf) = dot_raw(dot, &crt2, &m2);
    assert_eq!(leaf, pem_der(&crt2));

    // 6. Counted by transport.
    let metrics = http(s.admin(), "GET", "/metrics", &[], "").body;
    assert!(
        metrics
            .contains(r#"meridian_dns_queries_total{transport="tls",qtype="A",rcode="NOERROR"}"#),
        "{metrics}"
    );
}

/// Asks `example.net SOA` with NSID through `kdig` at `server` over TLS, the certificate
/// verified against `ca` for the name `dot.test`, with `transport` options after `+tls-ca`
/// (`+quic`: kdig takes the last transport option). Asserts an authoritative NOERROR answer
/// with the SOA and returns kdig's output for the caller's own checks.
pub(crate) fn kdig_soa(kdig: &Path, server: SocketAddr, ca: &Path, transport: &[&str]) -> String {
    let out = Command::new(kdig)
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .arg(format!("+tls-ca={}", ca.display()))
        .arg("+tls-hostname=dot.test")
        .args(transport)
        .args(["+nsid", "example.net", "SOA"])
        .output()
        .expect("run kdig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("kdig {transport:?}:\n{text}");
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("status: NOERROR"), "{text}");
    assert!(text.contains("Flags: qr aa"), "{text}");
    assert!(
        text.contains("example.net.") && text.contains("SOA"),
        "{text}"
    );
    text
}
