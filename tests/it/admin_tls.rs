//! The admin port over HTTPS (issue 15 item 0): `meridian ctl` verifies the server certificate
//! against `--ca`, presents a client certificate when the port requires one
//! (`server.admin_client_ca`), the bearer token is still required, a certificate replaced on
//! disk is picked up by the file watcher for new connections while an open keep-alive
//! connection goes on, a bad PEM keeps the old certificate, and `meridian check` warns about
//! an admin port open beyond loopback without TLS. Certificates are generated in the test with
//! the openssl CLI (a CA, server and client certificates it signs, and an unrelated CA).
//!
//! No timed assertions: waits are bounded generously; measured times are printed
//! (`cargo test --test it admin_tls -- --nocapture`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;

use crate::harness::{Server, ZONE, binary, run, tool};

/// Runs openssl with `args`; panics with its stderr when it fails.
fn openssl(bin: &Path, args: &[&str]) {
    let out = Command::new(bin).args(args).output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a CA `<stem>.crt`/`<stem>.key` in `dir` (P-256, two days).
fn make_ca(bin: &Path, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    openssl(
        bin,
        &[
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
            &format!("/CN={stem}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
        ],
    );
    (crt, key)
}

/// Makes `<stem>.crt`/`<stem>.key` in `dir` signed by the CA `(ca_crt, ca_key)`: a server
/// certificate for 127.0.0.1 and `admin.test` (`usage` "serverAuth") or a client one
/// ("clientAuth").
fn leaf(
    bin: &Path,
    dir: &Path,
    ca: &(PathBuf, PathBuf),
    stem: &str,
    usage: &str,
) -> (PathBuf, PathBuf) {
    let (crt, key, csr, ext) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
        dir.join(format!("{stem}.csr")),
        dir.join(format!("{stem}.ext")),
    );
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:admin.test\n"
        ),
    )
    .unwrap();
    openssl(
        bin,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={stem}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
        ],
    );
    openssl(
        bin,
        &[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            ca.0.to_str().unwrap(),
            "-CAkey",
            ca.1.to_str().unwrap(),
            "-days",
            "2",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
        ],
    );
    (crt, key)
}

/// The certificates of a test: the CA, the admin port's certificate, a client certificate,
/// and an unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
    ca: (PathBuf, PathBuf),
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    other_ca: (PathBuf, PathBuf),
}

impl Pki {
    fn new(bin: &Path) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = make_ca(bin, d, "ca");
        let server = leaf(bin, d, &ca, "server", "serverAuth");
        let client = leaf(bin, d, &ca, "client", "clientAuth");
        let other_ca = make_ca(bin, d, "other-ca");
        Pki {
            dir,
            ca,
            server,
            client,
            other_ca,
        }
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn config(pki: &Pki, client_ca: bool) -> String {
    let mut admin = format!(
        "admin_tls_certificate = {:?}\nadmin_tls_key = {:?}\n",
        s(&pki.server.0),
        s(&pki.server.1)
    );
    if client_ca {
        admin.push_str(&format!("admin_client_ca = {:?}\n", s(&pki.ca.0)));
    }
    let token = pki.dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n\
         admin_token_file = {:?}\nwatch_interval = \"200ms\"\n{admin}{ZONE}",
        s(&token)
    )
}

fn https_port(s: &Server) -> SocketAddr {
    let log = s.log_text();
    log.lines()
        .find_map(|l| {
            let i = l.find("listening admin/https ")?;
            l[i + 22..].split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("a listening admin/https line:\n{log}"))
}

/// Runs `meridian ctl ARGS` with `env`; returns (exit code, stdout, stderr).
fn ctl(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("ctl").args(args);
    for v in [
        "MERIDIAN_CONFIG",
        "MERIDIAN_ADMIN_TOKEN",
        "MERIDIAN_ADMIN_CA",
        "MERIDIAN_ADMIN_CERT",
        "MERIDIAN_ADMIN_KEY",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run meridian ctl");
    let r = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("ctl {args:?} -> {}\n{}{}", r.0, r.1, r.2);
    r
}

/// A keep-alive HTTPS connection of a rustls client trusting `ca`, presenting `client` when
/// given.
struct Https(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Https {
    fn connect(addr: SocketAddr, ca: &Path, client: Option<&(PathBuf, PathBuf)>) -> Https {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((crt, key)) => {
                let chain = rustls::pki_types::CertificateDer::pem_file_iter(crt)
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        };
        let name = rustls::pki_types::ServerName::try_from("admin.test").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        while s.conn.is_handshaking() {
            if s.conn.complete_io(&mut s.sock).is_err() {
                break;
            }
        }
        Https(s)
    }

    /// Sends `GET path` on this connection (kept alive) and returns the status and body.
    fn get(&mut self, path: &str) -> (u16, String) {
        let req = format!("GET {path} HTTP/1.1\r\nHost: admin.test\r\n\r\n");
        self.0.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.0.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("a content-length header")
            .trim()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body).unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn leaf(&self) -> Vec<u8> {
        self.0.conn.peer_certificates().unwrap()[0].to_vec()
    }
}

fn der(crt: &Path) -> Vec<u8> {
    rustls::pki_types::CertificateDer::pem_file_iter(crt)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[test]
fn issue_15_ctl_over_https_verifies_the_ca_presents_a_client_certificate_and_still_needs_the_token()
{
    let Some(bin) = tool("admin https", &["openssl"], "openssl") else {
        return;
    };
    let pki = Pki::new(&bin);
    let srv = Server::start(&config(&pki, true));
    let url = format!("https://{}", https_port(&srv));
    let (ca, crt, key) = (s(&pki.ca.0), s(&pki.client.0), s(&pki.client.1));
    // A client that connects and never starts the TLS handshake: cut at the handshake timeout
    // (10 s), checked at the end of this test.
    let silent_since = Instant::now();
    let mut silent = TcpStream::connect(https_port(&srv)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();

    // Verified against the CA, with the client certificate: ok.
    let (code, out, _) = ctl(
        &[
            "--admin", &url, "--ca", &ca, "--cert", &crt, "--key", &key, "status",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&url) && out.contains(" ok "), "{out}");

    // The same through the environment.
    let (code, out, _) = ctl(
        &["--admin", &url, "--json", "status"],
        &[
            ("MERIDIAN_ADMIN_CA", &ca),
            ("MERIDIAN_ADMIN_CERT", &crt),
            ("MERIDIAN_ADMIN_KEY", &key),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["ok"], true, "{v}");
    assert!(v[0]["body"]["ready"].is_boolean(), "{v}");

    // A CA that did not sign the server's certificate: refused, saying why.
    let other = s(&pki.other_ca.0);
    let (code, out, _) = ctl(
        &[
            "--admin", &url, "--ca", &other, "--cert", &crt, "--key", &key, "status",
        ],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(
        out.contains("not signed by a CA of --ca"),
        "the error names the certificate problem: {out}"
    );

    // No client certificate: the port refuses the connection.
    let (code, out, _) = ctl(&["--admin", &url, "--ca", &ca, "status"], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("requires a client certificate"),
        "the error says a client certificate is needed: {out}"
    );
    // Nor does a raw client get an answer without one.
    let mut bare = Https::connect(https_port(&srv), &pki.ca.0, None);
    let req = b"GET /live HTTP/1.1\r\nHost: admin.test\r\n\r\n";
    let mut buf = Vec::new();
    let refused = bare.0.write_all(req).is_err() || {
        let r = bare.0.read_to_end(&mut buf);
        r.is_err() || buf.is_empty()
    };
    assert!(refused, "an answer without a client certificate: {buf:?}");
    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut plain = TcpStream::connect(https_port(&srv)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    plain
        .write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    assert!(!buf.starts_with(b"HTTP/"), "{buf:?}");

    // The bearer token is still required for mutating calls.
    let tls = ["--admin", &url, "--ca", &ca, "--cert", &crt, "--key", &key];
    let (code, out, _) = ctl(&[&tls[..], &["reload"]].concat(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED (401)"), "{out}");
    let (code, out, _) = ctl(
        &[&tls[..], &["reload"]].concat(),
        &[("MERIDIAN_ADMIN_TOKEN", "s3cret")],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reloaded"), "{out}");

    let mut b = [0u8; 1];
    let n = silent.read(&mut b).unwrap_or(0);
    let cut = silent_since.elapsed();
    eprintln!("silent admin client cut after {cut:?} (handshake timeout 10 s)");
    assert_eq!(n, 0, "the server closed the silent connection");
    assert!(cut < Duration::from_secs(60), "not cut within 60 s");
}

#[test]
fn issue_15_a_replaced_admin_certificate_is_served_after_the_watcher_reloads_and_open_connections_go_on()
 {
    let Some(bin) = tool("admin https reload", &["openssl"], "openssl") else {
        return;
    };
    let pki = Pki::new(&bin);
    let srv = Server::start(&config(&pki, false));
    let addr = https_port(&srv);

    let mut open = Https::connect(addr, &pki.ca.0, None);
    assert_eq!(open.get("/live").0, 200);
    let first = der(&pki.server.0);
    assert_eq!(open.leaf(), first);

    // cert-manager style: a new certificate and key written beside, renamed over the old.
    let d = pki.dir.path();
    let (crt2, key2) = leaf(&bin, d, &pki.ca, "renewed", "serverAuth");
    let second = der(&crt2);
    assert_ne!(first, second);
    let started = Instant::now();
    std::fs::rename(&key2, &pki.server.1).unwrap();
    std::fs::rename(&crt2, &pki.server.0).unwrap();
    // No SIGHUP: the watcher sees the PEM files change.
    let mut served = Vec::new();
    while started.elapsed() < Duration::from_secs(60) {
        served = Https::connect(addr, &pki.ca.0, None).leaf();
        if served == second {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "renewed certificate served {:?} after the rename (watch_interval 200ms)",
        started.elapsed()
    );
    assert_eq!(served, second, "the renewed certificate on new connections");
    let mut fresh = Https::connect(addr, &pki.ca.0, None);
    assert_eq!(fresh.get("/live").0, 200);
    // The connection opened before the reload still answers, with its first certificate.
    let (status, body) = open.get("/status");
    assert_eq!(status, 200, "{body}");
    assert_eq!(open.leaf(), first);

    // A broken certificate: the reload fails naming the key, the renewed one stays served.
    std::fs::write(&pki.server.0, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    assert!(
        srv.wait_log("server.admin_tls_certificate", Duration::from_secs(60)),
        "{}",
        srv.log_text()
    );
    let log = srv.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("server.admin_tls_certificate"))
        .collect();
    eprintln!("reload refused:\n{}", refused.join("\n"));
    assert!(
        refused
            .iter()
            .any(|l| l.contains("keeping the old configuration") && l.contains("PEM")),
        "{log}"
    );
    let mut after = Https::connect(addr, &pki.ca.0, None);
    assert_eq!(after.leaf(), second);
    assert_eq!(after.get("/live").0, 200);
    assert_eq!(open.get("/live").0, 200);
}

#[test]
fn issue_15_check_warns_when_the_admin_port_listens_beyond_loopback_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meridian.toml");
    let body = |admin: &str, extra: &str| {
        crate::harness::config(&format!(
            "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"{admin}\"\n{extra}{ZONE}"
        ))
    };
    std::fs::write(&path, body("0.0.0.0:8080", "")).unwrap();
    let (code, out, err) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "a warning, not an error: {out}{err}");
    assert!(
        err.contains("warning:")
            && err.contains("server.admin_listen")
            && err.contains("0.0.0.0:8080")
            && err.contains("server.admin_tls_certificate"),
        "{err}"
    );
    std::fs::write(&path, body("127.0.0.1:8080", "")).unwrap();
    let (code, _, err) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(!err.contains("server.admin_listen"), "{err}");

    // A client CA without a certificate, or a certificate without its key: errors naming the key.
    std::fs::write(
        &path,
        body("0.0.0.0:8080", "admin_client_ca = \"ca.crt\"\n"),
    )
    .unwrap();
    let (code, _, err) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("server.admin_client_ca"), "{err}");
    std::fs::write(
        &path,
        body("0.0.0.0:8080", "admin_tls_certificate = \"admin.crt\"\n"),
    )
    .unwrap();
    let (code, _, err) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("server.admin_tls_key"), "{err}");
}
