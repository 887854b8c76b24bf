//! DNS over QUIC (issue 15, RFC 9250): `kdig +quic` gets answers; a quinn client gets the very
//! bytes a TCP client gets for the same query (ECS scope, OPT, NSID, cookie, AA; NOERROR,
//! NXDOMAIN and SERVFAIL); a non-zero message ID, a stream finished inside its message and a
//! runt close the connection with DOQ_PROTOCOL_ERROR; a reload serves a new certificate on the next connection while open
//! ones go on; a client that never finishes its handshake holds its slot for a bounded time;
//! connections are capped per client network as for TCP; idle connections and shutdown close
//! with DOQ_NO_ERROR. Certificates are generated in the
//! test with the openssl CLI (as for DoT).
//!
//! No timed assertions: waits are bounded generously; measured times are printed
//! (`cargo test --test it quic -- --nocapture`).

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};

use crate::geo::{REGIONS, SERVICES};
use crate::harness::{Server, ZONE, add_option, ecs, http, query, tcp_raw, tool};
use crate::tls::{kdig_soa, pem_der, self_signed};

/// Generous bound on one QUIC step (handshake, query) on a loaded machine.
const STEP: Duration = Duration::from_secs(30);

/// A zone whose CNAME loop is answered SERVFAIL.
const LOOP_ZONE: &str = "$ORIGIN example.org.
$TTL 300
@     SOA   ns1 hostmaster 1 7200 3600 1209600 60
@     NS    ns1
ns1   A     192.0.2.53
loop1 CNAME loop2
loop2 CNAME loop1
";

fn quic_port(s: &Server) -> SocketAddr {
    let log = s.log_text();
    log.lines()
        .find_map(|l| {
            let i = l.find("listening dns/quic ")?;
            l[i + 19..].split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("a dns/quic listening line:\n{log}"))
}

fn config(crt: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nquic_listen = [\"127.0.0.1:0\"]\n\
         admin_listen = \"127.0.0.1:0\"\ngeoip = \"{{GEO}}\"\nnsid = \"doq-test\"\n\
         tls_certificate = {:?}\ntls_key = {:?}\n{extra}{ZONE}{REGIONS}{SERVICES}",
        crt.display().to_string(),
        key.display().to_string(),
    )
}

/// A multi-threaded runtime for the quinn client: its endpoint driver keeps running while
/// the test blocks on TCP or kdig.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A quinn client endpoint trusting `ca` only, offering ALPN `doq`, TLS 1.3.
fn client(ca: &Path) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pem_der(ca).into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"doq".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep
}

/// Connects to `addr` (as `dot.test`), bounded by [`STEP`].
async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let connecting = ep.connect(addr, "dot.test").expect("connect");
    tokio::time::timeout(STEP, connecting)
        .await
        .expect("the handshake ends (either way) in time")
}

/// Sends `msg` on a new stream (length-prefixed, then FIN) and reads the framed answer.
async fn ask(conn: &quinn::Connection, msg: &[u8]) -> Result<Vec<u8>, String> {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(msg);
        send.write_all(&framed).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let all = recv.read_to_end(65537).await.map_err(|e| e.to_string())?;
        let (len, body) = all.split_at_checked(2).ok_or("no length prefix")?;
        assert_eq!(
            usize::from(u16::from_be_bytes([len[0], len[1]])),
            body.len(),
            "one length-prefixed message per stream"
        );
        Ok(body.to_vec())
    };
    tokio::time::timeout(STEP, exchange)
        .await
        .map_err(|_| "no answer in time".to_string())?
}

/// The server's leaf certificate on `conn`.
fn leaf(conn: &quinn::Connection) -> Vec<u8> {
    let identity = conn.peer_identity().expect("a peer certificate");
    let chain = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .expect("a rustls certificate chain");
    chain[0].to_vec()
}

/// Asks `q` over TCP and over DoQ until both answers are byte-identical (the server cookie
/// carries a timestamp in seconds: a pair straddling a second may differ there); returns it.
async fn same_over_tcp_and_doq(s: &Server, conn: &quinn::Connection, q: &[u8]) -> Vec<u8> {
    let mut last = None;
    for _ in 0..5 {
        let t = tcp_raw(s.dns, q).expect("tcp answer");
        let d = ask(conn, q).await.expect("doq answer");
        if t == d {
            return d;
        }
        last = Some((t, d));
    }
    panic!("no DoQ answer byte-identical to the TCP answer: {last:?}");
}

#[test]
fn issue_15_doq_answers_kdig_and_matches_tcp_bytes_rejects_nonzero_ids_and_reloads_the_cert() {
    let Some(openssl) = tool("doq test", &["openssl"], "openssl") else {
        return;
    };
    let kdig = tool("doq test", &["kdig"], "knot-dnsutils");
    let dir = tempfile::tempdir().unwrap();
    let (crt1, key1) = self_signed(&openssl, dir.path(), "one", "first");
    let zone = dir.path().join("example.org.zone");
    std::fs::write(&zone, LOOP_ZONE).unwrap();
    // The idle timeout outlasts the reload below, so the open connection is still there.
    let extra = format!(
        "tcp_idle_timeout = \"60s\"\n[[zone]]\norigin = \"example.org.\"\nfile = {:?}\n",
        zone.display().to_string()
    );
    let mut s = Server::start(&config(&crt1, &key1, &extra));
    let doq = quic_port(&s);

    // 1. kdig over QUIC, verifying the certificate against the generated CA.
    if let Some(kdig) = &kdig {
        let text = kdig_soa(kdig, doq, &crt1, &["+quic"]);
        assert!(text.contains("QUIC session"), "{text}");
        assert!(text.contains("status: NOERROR; id: 0"), "{text}");
        assert!(text.contains("\"doq-test\""), "NSID missing: {text}");
    }

    let rt = runtime();
    rt.block_on(async {
        let ep = client(&crt1);
        let conn = connect(&ep, doq).await.expect("a DoQ connection");
        assert_eq!(leaf(&conn), pem_der(&crt1));

        // 2. The same bytes as TCP (ID 0 on both, RFC 9250 §4.2.1): ECS with its scope, OPT,
        //    NSID, a cookie, AA.
        let mut m = query("api.example.net.", RecordType::A);
        m.metadata.id = 0;
        add_option(&mut m, ecs("198.51.100.0", 24));
        add_option(
            &mut m,
            EdnsOption::Unknown(u16::from(EdnsCode::NSID), Vec::new()),
        );
        add_option(
            &mut m,
            EdnsOption::Unknown(u16::from(EdnsCode::Cookie), vec![7u8; 8]),
        );
        let bytes = same_over_tcp_and_doq(&s, &conn, &m.to_vec().unwrap()).await;
        let r = Message::from_vec(&bytes).unwrap();
        assert_eq!(r.metadata.id, 0);
        assert!(r.metadata.authoritative, "AA");
        assert!(!r.answers.is_empty(), "{r:?}");
        let opts = r.edns.as_ref().expect("OPT").options();
        let codes: Vec<EdnsCode> = opts.as_ref().iter().map(|(c, _)| *c).collect();
        for c in [EdnsCode::Subnet, EdnsCode::NSID, EdnsCode::Cookie] {
            assert!(codes.contains(&c), "{c:?} missing in {codes:?}");
        }
        let scope = opts.as_ref().iter().find_map(|(_, o)| match o {
            EdnsOption::Subnet(s) => Some(s.scope_prefix()),
            _ => None,
        });
        eprintln!("ECS echoed over DoQ with scope {scope:?}");

        // NXDOMAIN and SERVFAIL too.
        for (name, rcode) in [
            ("nope.example.net.", ResponseCode::NXDomain),
            ("loop1.example.org.", ResponseCode::ServFail),
        ] {
            let mut m = query(name, RecordType::A);
            m.metadata.id = 0;
            let bytes = same_over_tcp_and_doq(&s, &conn, &m.to_vec().unwrap()).await;
            let r = Message::from_vec(&bytes).unwrap();
            assert_eq!(r.metadata.response_code, rcode, "{name}: {r:?}");
        }

        // 3. Many queries at once on one connection, one stream each.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..20u16 {
            let conn = conn.clone();
            set.spawn(async move {
                let name = if i % 2 == 0 {
                    "example.net."
                } else {
                    "api.example.net."
                };
                let mut m = query(name, RecordType::A);
                m.metadata.id = 0;
                let r = Message::from_vec(&ask(&conn, &m.to_vec().unwrap()).await?).unwrap();
                Ok::<_, String>((name, r))
            });
        }
        let mut answered = 0;
        while let Some(r) = set.join_next().await {
            let (name, r) = r.unwrap().expect("a concurrent answer");
            assert_eq!(r.queries[0].name().to_ascii(), name);
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            answered += 1;
        }
        assert_eq!(answered, 20);

        // 4. A non-zero message ID: DOQ_PROTOCOL_ERROR closes the connection (§4.2.1).
        let bad = connect(&ep, doq).await.expect("a second connection");
        let mut m = query("example.net.", RecordType::SOA);
        m.metadata.id = 0x1234;
        assert!(ask(&bad, &m.to_vec().unwrap()).await.is_err());
        assert_protocol_error(&bad, "a non-zero message ID").await;
        // So do a stream finished inside its message (§4.3.3) and a runt that is no query.
        for (what, raw) in [
            ("a FIN inside the message", {
                let mut v = 100u16.to_be_bytes().to_vec();
                v.extend([0u8; 10]);
                v
            }),
            ("a 5-byte message", vec![0, 5, 0, 0, 1, 0, 0]),
        ] {
            let bad = connect(&ep, doq).await.expect("another connection");
            let (mut send, mut recv) = bad.open_bi().await.unwrap();
            send.write_all(&raw).await.unwrap();
            send.finish().unwrap();
            assert!(recv.read_to_end(65537).await.is_err(), "{what}: no answer");
            assert_protocol_error(&bad, what).await;
        }
        // The first connection is not affected.
        let m = {
            let mut m = query("example.net.", RecordType::SOA);
            m.metadata.id = 0;
            m.to_vec().unwrap()
        };
        assert!(
            Message::from_vec(&ask(&conn, &m).await.unwrap())
                .unwrap()
                .metadata
                .authoritative
        );

        // 5. A reload with a new certificate: the open connection goes on, the next one gets it.
        let (crt2, key2) = self_signed(&openssl, dir.path(), "two", "second");
        std::fs::write(
            s.dir().join("meridian.toml"),
            crate::harness::config(&config(&crt2, &key2, &extra)),
        )
        .unwrap();
        s.signal(libc::SIGHUP);
        assert!(
            s.wait_log("configuration reloaded", STEP),
            "{}",
            s.log_text()
        );
        let next = connect(&client(&crt2), doq)
            .await
            .expect("a connection after the reload");
        assert_eq!(leaf(&next), pem_der(&crt2), "the new certificate");
        assert!(
            Message::from_vec(&ask(&next, &m).await.unwrap())
                .unwrap()
                .metadata
                .authoritative
        );
        assert_eq!(leaf(&conn), pem_der(&crt1));
        assert!(
            Message::from_vec(&ask(&conn, &m).await.expect("the old connection answers"))
                .unwrap()
                .metadata
                .authoritative
        );
        next.close(quinn::VarInt::from_u32(0), b"");

        // 6. Counted by transport.
        let metrics = http(s.admin(), "GET", "/metrics", &[], "").body;
        assert!(
            metrics.contains(
                r#"meridian_dns_queries_total{transport="quic",qtype="A",rcode="NOERROR"}"#
            ),
            "{metrics}"
        );

        // 7. SIGTERM: the open connection is closed with DOQ_NO_ERROR, the server exits 0.
        s.signal(libc::SIGTERM);
        match tokio::time::timeout(STEP, conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
                assert_eq!(c.error_code, quinn::VarInt::from_u32(0), "{c:?}")
            }
            other => panic!("expected DOQ_NO_ERROR at shutdown, got {other:?}"),
        }
    });
    let status = s.wait_exit(STEP).expect("exited after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", s.log_text());
}

/// Asserts that the server closed `conn` with DOQ_PROTOCOL_ERROR (0x2) after `what`.
async fn assert_protocol_error(conn: &quinn::Connection, what: &str) {
    match tokio::time::timeout(STEP, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(2), "{what}: {c:?}")
        }
        other => panic!("{what}: expected DOQ_PROTOCOL_ERROR, got {other:?}"),
    }
}

/// Forwards the first datagram a client sends to `server` and drops everything after, both
/// ways, for `hold`: the server sees a handshake begin that never finishes.
fn mute_relay(server: SocketAddr, hold: Duration) -> (SocketAddr, std::sync::mpsc::Receiver<()>) {
    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = relay.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        relay
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let started = Instant::now();
        let mut forwarded = false;
        while started.elapsed() < hold {
            if let Ok((n, _)) = relay.recv_from(&mut buf)
                && !forwarded
            {
                relay.send_to(&buf[..n], server).unwrap();
                forwarded = true;
                let _ = tx.send(());
            }
        }
    });
    (addr, rx)
}

#[test]
fn issue_15_doq_stalled_handshakes_cost_a_bounded_slot_and_connections_are_capped_per_network() {
    let Some(openssl) = tool("doq test", &["openssl"], "openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = self_signed(&openssl, dir.path(), "one", "first");
    // One connection per client network (127.0.0.0/24 here); handshakes bounded by the idle
    // timeout (6 s, under the 10 s handshake cap).
    let extra = "tcp_idle_timeout = \"6s\"\ntcp_max_connections_per_network = 1\n";
    let s = Server::start(&config(&crt, &key, extra));
    let doq = quic_port(&s);
    let rt = runtime();
    rt.block_on(async {
        let ep = client(&crt);
        // 1. A handshake that never finishes takes the network's one slot...
        let (relay, forwarded) = mute_relay(doq, Duration::from_secs(20));
        let stalled = ep.connect(relay, "dot.test").expect("connect");
        let stalled_at = Instant::now();
        tokio::task::spawn_blocking(move || forwarded.recv_timeout(STEP))
            .await
            .unwrap()
            .expect("the relay forwarded the first datagram");
        // 2. ...so another client of the network is refused meanwhile (after a Retry)...
        match connect(&ep, doq).await {
            Err(quinn::ConnectionError::ConnectionClosed(c)) => {
                assert_eq!(
                    c.error_code,
                    quinn::TransportErrorCode::CONNECTION_REFUSED,
                    "{c:?}"
                )
            }
            other => panic!("expected CONNECTION_REFUSED while the handshake stalls: {other:?}"),
        }
        // 3. ...until the stalled handshake is cut at its bound and the slot is free again.
        let started = Instant::now();
        let conn = loop {
            if let Ok(c) = connect(&ep, doq).await {
                break c;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the stalled handshake still holds the slot after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        eprintln!(
            "stalled handshake released its slot {:?} after it began (bound: min(idle 6 s, 10 s))",
            stalled_at.elapsed()
        );
        drop(stalled);
        let mut m = query("example.net.", RecordType::SOA);
        m.metadata.id = 0;
        let m = m.to_vec().unwrap();
        assert!(
            Message::from_vec(&ask(&conn, &m).await.unwrap())
                .unwrap()
                .metadata
                .authoritative
        );
        // 4. A finished connection holds the slot too: the next one from the network is
        //    refused while it is open.
        match connect(&ep, doq).await {
            Err(quinn::ConnectionError::ConnectionClosed(c)) => {
                assert_eq!(c.error_code, quinn::TransportErrorCode::CONNECTION_REFUSED)
            }
            other => panic!("expected CONNECTION_REFUSED at the cap: {other:?}"),
        }
        assert!(ask(&conn, &m).await.is_ok(), "the open connection goes on");
        // 5. No query for the idle timeout: closed with DOQ_NO_ERROR (RFC 9250 §5.5).
        let idle_from = Instant::now();
        match tokio::time::timeout(Duration::from_secs(60), conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(c)) => {
                assert_eq!(c.error_code, quinn::VarInt::from_u32(0), "{c:?}")
            }
            other => panic!("expected DOQ_NO_ERROR on an idle connection, got {other:?}"),
        }
        eprintln!(
            "idle connection closed after {:?} (tcp_idle_timeout 6 s)",
            idle_from.elapsed()
        );
    });
}

#[test]
fn issue_15_check_reports_every_quic_listen_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        crate::harness::config(&format!(
            "[server]\ndns_listen = [\"127.0.0.1:5300\"]\n\
             quic_listen = [\"127.0.0.1:5300\", \"nonsense\"]\n{ZONE}"
        )),
    )
    .unwrap();
    let (code, _, err) = crate::harness::run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    for needle in [
        "server.quic_listen[0]: duplicate address \"127.0.0.1:5300\"",
        "server.quic_listen[1]: invalid socket address \"nonsense\"",
        "server.quic_listen: needs server.tls_certificate and server.tls_key",
    ] {
        assert!(err.contains(needle), "{needle:?} missing in {err}");
    }
}
