//! Clients that cannot hurt others (issue 9, item 3): the rate limit holds per client network
//! across UDP threads, a TCP client network cannot take every connection, a response too long
//! for TCP is truncated, the admin port survives a flood of idle connections and answers every
//! error in JSON, and the open-file limit is raised at start.
//!
//! No timed assertions: waits are bounded generously and the measured times are printed
//! (`cargo test --test it clients -- --nocapture`).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use crate::backend::backends;
use crate::geo::REGIONS;
use crate::harness::{Server, ZONE, http, query, tcp_exchange, tcp_raw};

/// The bound a test waits for a behaviour before failing: generous for loaded machines.
const BOUND: Duration = Duration::from_secs(20);

/// Opens a TCP connection to `to` from the source address `from`.
fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )?;
    s.bind(&SocketAddr::new(from, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(s.into())
}

/// Sends one framed DNS query on `s` and reads the framed response.
fn ask_on(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Message> {
    Message::from_vec(&tcp_exchange(s, msg)?).map_err(std::io::Error::other)
}

/// Whether the server has closed `s` (EOF or reset), waiting up to `BOUND` for it.
fn is_closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(BOUND)).unwrap();
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn issue_9_rate_limit_holds_per_network_across_udp_threads_for_a_client_on_200_ports() {
    // Four UDP sockets: with a limiter per socket, a client on many ports got 4x the rate.
    let rate = 10;
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\nudp_workers = 4\n\
         [rate_limit]\nresponses_per_second = {rate}\nslip = 0\n{ZONE}"
    ));
    let q = query("example.net.", RecordType::SOA).to_vec().unwrap();
    let sockets: Vec<UdpSocket> = (0..200)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let start = Instant::now();
    for sock in &sockets {
        for _ in 0..2 {
            sock.send_to(&q, s.dns).unwrap();
        }
    }
    // Collect until nothing more arrives for a second.
    let mut answered = 0;
    let mut last = start;
    let mut buf = [0u8; 2048];
    for sock in &sockets {
        sock.set_nonblocking(true).unwrap();
    }
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(1) {
        let mut got = false;
        for sock in &sockets {
            while let Ok((n, _)) = sock.recv_from(&mut buf) {
                assert!(!Message::from_vec(&buf[..n]).unwrap().metadata.truncation);
                answered += 1;
                last = Instant::now();
                got = true;
            }
        }
        if got {
            quiet_since = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Every answer was sent between the first query and the last answer: at most the burst
    // (the rate) plus what the bucket refilled meanwhile.
    let window = last.duration_since(start).as_secs_f64();
    let bound = rate as f64 * (1.0 + window) + 1.0;
    println!(
        "400 queries from 200 ports over 4 threads: {answered} answered in {window:.3} s (bound {bound:.1}; per-socket limiting allowed up to {})",
        4 * rate
    );
    assert!(answered >= rate, "{answered} answered: the burst must pass");
    assert!(
        answered as f64 <= bound,
        "{answered} answered in {window:.3} s: more than the rate allows ({bound:.1})"
    );
    // The server's other clients are served.
    let other = UdpSocket::bind("127.0.1.1:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    other.send_to(&q, s.dns).unwrap();
    assert!(
        other.recv_from(&mut buf).is_ok(),
        "another network is answered"
    );
}

#[test]
fn issue_9_a_client_network_holding_its_tcp_cap_does_not_keep_another_network_out() {
    // Per-network cap 4 of 64: one /24 holds four idle connections.
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n\
         tcp_idle_timeout = \"60s\"\ntcp_max_connections = 64\n\
         tcp_max_connections_per_network = 4\n{ZONE}"
    ));
    let q = query("example.net.", RecordType::SOA).to_vec().unwrap();
    let greedy: IpAddr = "127.0.0.2".parse().unwrap();
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| connect_from(greedy, s.dns).unwrap())
        .collect();
    // Each held connection is served (so the server has accepted and counted it).
    for c in &mut held {
        c.set_read_timeout(Some(BOUND)).unwrap();
        assert_eq!(ask_on(c, &q).unwrap().answers.len(), 1);
    }
    // A fifth from the same network (another address in the /24) is reset at accept, which
    // the client sees at connect or at its first exchange, depending on timing.
    let refused = match connect_from("127.0.0.3".parse().unwrap(), s.dns) {
        Err(_) => true,
        Ok(mut fifth) => {
            fifth.set_read_timeout(Some(BOUND)).unwrap();
            ask_on(&mut fifth, &q).is_err()
        }
    };
    assert!(refused, "the network's fifth connection is refused");
    // Another network is served, over a new connection.
    let mut other = connect_from("127.0.1.3".parse().unwrap(), s.dns).unwrap();
    other.set_read_timeout(Some(BOUND)).unwrap();
    let r = ask_on(&mut other, &q).expect("another network is served");
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    // The held connections still work, and once one closes the network gets a slot back.
    assert_eq!(ask_on(&mut held[0], &q).unwrap().answers.len(), 1);
    drop(held.remove(0));
    let deadline = Instant::now() + BOUND;
    loop {
        // Until the slot is back, a new connection is reset, possibly before connect returns.
        if let Ok(mut c) = connect_from(greedy, s.dns) {
            c.set_read_timeout(Some(BOUND)).unwrap();
            if ask_on(&mut c, &q).is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn issue_9_a_tcp_client_that_stops_reading_loses_its_connection_after_the_write_timeout() {
    // One connection per network, 1 s timeouts: a client that never reads its answers holds
    // its network's only slot until the server gives up writing.
    let dir = tempfile::tempdir().unwrap();
    let zone = big_zone(dir.path(), 240);
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n\
         tcp_idle_timeout = \"1s\"\ntcp_max_connections_per_network = 1\n{zone}"
    ));
    let q = query("big.example.org.", RecordType::TXT).to_vec().unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    // A small receive window, so that the server's writes stall soon.
    let stalled = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    stalled.set_recv_buffer_size(4096).unwrap();
    stalled
        .bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    stalled
        .connect_timeout(&s.dns.into(), Duration::from_secs(5))
        .unwrap();
    let mut stalled: TcpStream = stalled.into();
    // 200 queries for ~63 kB answers (12 MB): far more than the socket buffers hold.
    stalled
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for _ in 0..200 {
        if stalled.write_all(&framed).is_err() {
            break;
        }
    }
    let t = Instant::now();
    let small = query("example.org.", RecordType::SOA).to_vec().unwrap();
    loop {
        // While the slot is held, the server resets the new connection at accept, which can
        // reach the client before its connect returns: a failed connect is "not yet" too.
        if let Ok(mut c) = connect_from("127.0.0.3".parse().unwrap(), s.dns) {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            if ask_on(&mut c, &small).is_ok() {
                break;
            }
        }
        assert!(
            t.elapsed() < BOUND,
            "the stalled connection still holds the slot after {BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "slot freed {:?} after the client stopped reading",
        t.elapsed()
    );
    drop(stalled);
}

/// A zone with one TXT RRset of `count` 250-byte strings at `big.example.org.`.
fn big_zone(dir: &std::path::Path, count: usize) -> String {
    let mut z = String::from(
        "$ORIGIN example.org.\n$TTL 300\n\
         @ IN SOA ns1.example.org. hostmaster.example.org. 1 3600 600 86400 300\n\
         @ IN NS ns1.example.org.\nns1 IN A 192.0.2.53\n",
    );
    for i in 0..count {
        z.push_str(&format!("big IN TXT \"{i:05}{}\"\n", "x".repeat(245)));
    }
    let path = dir.join("example.org.zone");
    std::fs::write(&path, z).unwrap();
    format!(
        "[[zone]]\norigin = \"example.org.\"\nfile = \"{}\"\n",
        path.display()
    )
}

#[test]
fn rfc1035_4_2_2_a_tcp_response_over_65535_bytes_is_truncated_with_tc_and_keeps_the_opt() {
    // 300 records of ~263 bytes: about 79 kB, more than the 16-bit TCP length can carry.
    let dir = tempfile::tempdir().unwrap();
    let zone = big_zone(dir.path(), 300);
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n{zone}"
    ));
    let raw = tcp_raw(
        s.dns,
        &query("big.example.org.", RecordType::TXT).to_vec().unwrap(),
    )
    .expect("a framed TCP response");
    assert!(raw.len() <= 65_535);
    let r = Message::from_vec(&raw).unwrap();
    println!("TCP response: {} bytes", raw.len());
    assert!(r.metadata.truncation, "TC is set");
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert_eq!(r.queries.len(), 1, "the question is kept");
    assert!(r.edns.is_some(), "RFC 6891 §7: the OPT is kept");

    // 240 records (about 63 kB with the OPT) still fit: answered in full.
    let dir = tempfile::tempdir().unwrap();
    let zone = big_zone(dir.path(), 240);
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n{zone}"
    ));
    let raw = tcp_raw(
        s.dns,
        &query("big.example.org.", RecordType::TXT).to_vec().unwrap(),
    )
    .expect("a framed TCP response");
    let r = Message::from_vec(&raw).unwrap();
    println!("TCP response: {} bytes", raw.len());
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 240);
}

/// Number of descriptors `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn issue_9_with_1100_idle_admin_connections_dns_probes_and_live_still_work() {
    // The test itself needs more than the common default of 1024 descriptors.
    let (before, after) = meridian::rlimit::raise(4096).unwrap();
    println!("test's open file limit: {} -> {}", before.soft, after.soft);
    let (port, mut b) = backends(&["127.0.0.31", "127.0.0.32"]);
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n{ZONE}{REGIONS}\n\
         [check.web]\nkind = \"http\"\nport = {port}\npath = \"/healthz\"\n\
         interval = \"300ms\"\ntimeout = \"200ms\"\nrise = 1\nfall = 1\n\
         [[service]]\nname = \"api.example.net.\"\npolicy = \"failover\"\ncheck = \"web\"\n\
         endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.31\"] }}, \
                      {{ region = \"eu-west\", addresses = [\"127.0.0.32\"] }}]\n"
    ));
    let admin = s.admin.unwrap();
    let start = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match TcpStream::connect_timeout(&admin, Duration::from_secs(5)) {
            Ok(c) => idle.push(c),
            Err(e) => panic!("connect {} failed: {e}", idle.len()),
        }
    }
    println!(
        "1100 idle admin connections opened in {:?}",
        start.elapsed()
    );
    // /live over a new connection.
    let t = Instant::now();
    let live = http(admin, "GET", "/live", &[], "");
    assert_eq!(live.status, 200);
    assert_eq!(live.json()["live"], true);
    println!("/live answered in {:?}", t.elapsed());
    // DNS over UDP and TCP.
    let q = query("example.net.", RecordType::SOA).to_vec().unwrap();
    assert_eq!(s.ask("example.net.", RecordType::SOA).answers.len(), 1);
    let t = tcp_raw(s.dns, &q).expect("a TCP answer");
    assert_eq!(Message::from_vec(&t).unwrap().answers.len(), 1);
    // Probes: the backend goes down, the answer moves to the second endpoint.
    let addrs = |s: &Server| -> Vec<String> {
        s.ask("api.example.net.", RecordType::A)
            .answers
            .iter()
            .filter_map(|a| match &a.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !f() {
            assert!(
                t.elapsed() < BOUND,
                "{what}: not within {BOUND:?}\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        println!("{what}: {:?}", t.elapsed());
    };
    wait("first probe round up", &|| addrs(&s) == ["127.0.0.31"]);
    b[0].down();
    wait("withdrawn after the backend went down", &|| {
        addrs(&s) == ["127.0.0.32"]
    });
    b[0].up().unwrap();
    wait("back after the backend came up", &|| {
        addrs(&s) == ["127.0.0.31"]
    });
    // The server evicted the oldest idle connections: its descriptors stay bounded.
    let fds = open_fds(s.pid());
    println!("server descriptors with 1100 idle admin connections: {fds}");
    assert!(fds < 1000, "{fds} descriptors open");
    assert!(is_closed_by_server(&mut idle[0]), "the oldest was closed");
    assert!(!s.log_text().contains("accept failed"), "{}", s.log_text());
}

#[test]
fn issue_9_admin_errors_are_json_for_every_status_including_413() {
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n{ZONE}{REGIONS}"
    ));
    let admin = s.admin.unwrap();
    let check = |status: u16, r: crate::harness::HttpResponse| {
        assert_eq!(r.status, status, "{}", r.body);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{status}: {:?}",
            r.headers
        );
        let error = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(!error.is_empty(), "{status}: {}", r.body);
        println!("{status}: {error}");
        error
    };
    // A declared body over the limit: refused before routing.
    let big = "x".repeat(100 * 1024);
    let e = check(
        413,
        http(admin, "POST", "/regions/us-east/drain", &[], &big),
    );
    assert!(e.contains("larger than"), "{e}");
    // A chunked body over the limit: refused while reading it (axum's own rejection).
    let mut c = TcpStream::connect(admin).unwrap();
    c.set_read_timeout(Some(BOUND)).unwrap();
    let chunk = "y".repeat(32 * 1024);
    let mut req = String::from(
        "POST /regions/us-east/drain HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for _ in 0..3 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let _ = c.write_all(req.as_bytes());
    let mut raw = String::new();
    let _ = c.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
    assert!(body.contains("\"error\""), "{raw}");
    // 404, 405 and a 400 from a handler.
    check(404, http(admin, "GET", "/nope", &[], ""));
    check(405, http(admin, "GET", "/reload", &[], ""));
    // axum's own path rejection (plain text from axum: not UTF-8) comes out as JSON too.
    let e = check(400, http(admin, "POST", "/regions/%FF/drain", &[], ""));
    assert!(!e.contains("required"), "{e}");
    check(
        400,
        http(admin, "POST", "/regions/us-east/drain", &[], "{not json"),
    );
    // /live still answers after all that.
    assert_eq!(http(admin, "GET", "/live", &[], "").status, 200);
}

#[test]
fn issue_9_an_admin_client_that_never_finishes_its_headers_is_disconnected() {
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n{ZONE}"
    ));
    let mut c = TcpStream::connect(s.admin.unwrap()).unwrap();
    c.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t = Instant::now();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rest = Vec::new();
    let r = c.read_to_end(&mut rest);
    let took = t.elapsed();
    println!("half-sent headers: closed after {took:?} ({r:?})");
    assert!(took < Duration::from_secs(60), "never closed");
    // The header timeout is 10 s: not much sooner.
    assert!(took >= Duration::from_secs(5), "closed after {took:?}");
}

/// Spawns `meridian ARGS` with the open-file limits `soft`/`hard`.
fn with_file_limit(args: &[&str], soft: u64, hard: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(crate::harness::binary());
    cmd.args(args)
        .env("MERIDIAN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn issue_9_serve_raises_the_open_file_limit_and_check_warns_when_the_hard_limit_is_too_low() {
    use std::io::BufRead;
    let current = meridian::rlimit::current().unwrap();
    if current.hard < 2048 {
        println!(
            "SKIPPED: the hard open-file limit {} is below 2048",
            current.hard
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meridian.toml");
    std::fs::write(
        &path,
        crate::harness::config(&format!(
            "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\nudp_workers = 1\n{ZONE}"
        )),
    )
    .unwrap();
    let config = path.to_str().unwrap();
    // serve, started with a soft limit of 256: raised to what 1024 TCP connections need.
    let mut child = with_file_limit(&["serve", "--config", config], 256, 2048)
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = None;
    for l in stderr.lines().map_while(Result::ok).take(50) {
        if l.contains("open file limit") {
            line = Some(l);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("an open file limit line");
    println!("{line}");
    assert!(line.contains("previous_soft=256"), "{line}");
    let soft: u64 = line
        .split("soft=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("the new soft limit");
    assert!((1024..=2048).contains(&soft), "{line}");
    assert!(line.contains("hard=2048"), "{line}");

    // check, with a hard limit below what the config needs: a warning naming the key, exit 0.
    let out = with_file_limit(&["check", "--config", config], 256, 512)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("server.tcp_max_connections") && stderr.contains("open-file limit 512"),
        "{stderr}"
    );
}
