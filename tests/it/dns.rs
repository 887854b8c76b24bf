//! DNS behaviour of an authoritative server, as an operator checks it with dig. Each test asks
//! over UDP and TCP; RFC sections are cited in the names.

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use crate::harness::{Server, ZONE, add_option, ecs, query, query_no_edns};

fn server() -> Server {
    Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\nnsid = \"test-ns-1\"\n{ZONE}\n{API}"
    ))
}

/// One dynamic name, so that CNAME chains can end in a service.
const API: &str = r#"
[region.us-east]
latitude = 39.0
longitude = -77.5
[[service]]
name = "api.example.net."
policy = "failover"
endpoints = [{ region = "us-east", addresses = ["192.0.2.10"] }]
"#;

fn types(section: &[hickory_proto::rr::Record]) -> Vec<RecordType> {
    section.iter().map(|r| r.record_type()).collect()
}

#[test]
fn serves_udp_and_tcp_on_the_logged_port() {
    let s = server();
    assert_ne!(s.dns.port(), 0);
    assert!(
        s.log_text()
            .contains(&format!("listening dns/tcp {}", s.dns)),
        "{}",
        s.log_text()
    );
    for r in s.both(&query("example.net.", RecordType::SOA)) {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(types(&r.answers), vec![RecordType::SOA]);
    }
}

#[test]
fn rfc1035_aa_is_set_and_question_case_is_kept() {
    let s = server();
    for r in s.both(&query("MaIl.ExAmPlE.nEt.", RecordType::A)) {
        assert!(r.metadata.authoritative);
        assert_eq!(r.metadata.message_type, MessageType::Response);
        assert_eq!(r.queries[0].name().to_ascii(), "MaIl.ExAmPlE.nEt.");
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data, RData::A("192.0.2.25".parse().unwrap()));
    }
}

#[test]
fn apex_ns_has_glue_in_additional() {
    let s = server();
    for r in s.both(&query("example.net.", RecordType::NS)) {
        assert!(r.metadata.authoritative);
        assert_eq!(r.answers.len(), 2);
        let glue: Vec<String> = r.additionals.iter().map(|a| a.name.to_ascii()).collect();
        assert!(glue.contains(&"ns1.example.net.".to_string()), "{glue:?}");
        assert!(glue.contains(&"ns2.example.net.".to_string()), "{glue:?}");
        assert!(
            r.additionals
                .iter()
                .any(|a| a.record_type() == RecordType::AAAA)
        );
    }
}

#[test]
fn rfc2308_nxdomain_carries_the_soa() {
    let s = server();
    for r in s.both(&query("nope.example.net.", RecordType::A)) {
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.metadata.authoritative);
        assert!(r.answers.is_empty());
        assert_eq!(types(&r.authorities), vec![RecordType::SOA]);
        // negative TTL: min(SOA TTL, MINIMUM) = 300
        assert_eq!(r.authorities[0].ttl, 300);
    }
}

#[test]
fn rfc2308_nodata_for_an_existing_name_of_another_type() {
    let s = server();
    for r in s.both(&query("mail.example.net.", RecordType::AAAA)) {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(types(&r.authorities), vec![RecordType::SOA]);
    }
}

#[test]
fn empty_non_terminal_is_nodata_not_nxdomain() {
    let s = server();
    for r in s.both(&query("b.example.net.", RecordType::TXT)) {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(types(&r.authorities), vec![RecordType::SOA]);
    }
    // and the name below it exists
    let r = s.ask("a.b.example.net.", RecordType::TXT);
    assert_eq!(r.answers.len(), 1);
}

#[test]
fn cname_is_chased_inside_the_zone() {
    let s = server();
    for r in s.both(&query("docs.example.net.", RecordType::A)) {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        let t = types(&r.answers);
        assert_eq!(
            t,
            vec![RecordType::CNAME, RecordType::CNAME, RecordType::A],
            "{r:?}"
        );
        assert_eq!(r.answers[2].name.to_ascii(), "api.example.net.");
        assert_eq!(r.answers[2].data, RData::A("192.0.2.10".parse().unwrap()));
    }
    // asking for the CNAME itself does not chase
    let r = s.ask("www.example.net.", RecordType::CNAME);
    assert_eq!(types(&r.answers), vec![RecordType::CNAME]);
}

#[test]
fn mx_srv_txt_caa_aaaa_are_served() {
    let s = server();
    let r = s.ask("example.net.", RecordType::MX);
    assert_eq!(types(&r.answers), vec![RecordType::MX]);
    assert!(
        r.additionals
            .iter()
            .any(|a| a.name.to_ascii() == "mail.example.net.")
    );
    let r = s.ask("_sip._udp.example.net.", RecordType::SRV);
    assert_eq!(types(&r.answers), vec![RecordType::SRV]);
    assert!(
        r.additionals
            .iter()
            .any(|a| a.name.to_ascii() == "sip.example.net.")
    );
    for (t, name) in [
        (RecordType::TXT, "example.net."),
        (RecordType::CAA, "example.net."),
        (RecordType::AAAA, "ns1.example.net."),
    ] {
        let r = s.ask(name, t);
        assert_eq!(types(&r.answers), vec![t], "{name} {t}");
    }
}

#[test]
fn names_outside_every_zone_are_refused() {
    let s = server();
    for r in s.both(&query("example.com.", RecordType::A)) {
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert!(!r.metadata.authoritative);
        assert!(r.answers.is_empty());
    }
}

#[test]
fn class_other_than_in_is_refused_never_answered_as_in() {
    let s = server();
    for class in [DNSClass::CH, DNSClass::HS, DNSClass::ANY] {
        let mut m = query("example.net.", RecordType::SOA);
        let mut q = Query::query(Name::from_ascii("example.net.").unwrap(), RecordType::SOA);
        q.set_query_class(class);
        m.queries = vec![q];
        for r in s.both(&m) {
            assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{class:?}");
            assert!(r.answers.is_empty());
        }
    }
}

#[test]
fn opcode_other_than_query_is_notimp() {
    let s = server();
    let mut m = query("example.net.", RecordType::SOA);
    m.metadata.op_code = OpCode::Status;
    for r in s.both(&m) {
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp);
    }
}

#[test]
fn more_than_one_question_is_formerr() {
    let s = server();
    let mut m = query("example.net.", RecordType::SOA);
    m.add_query(Query::query(
        Name::from_ascii("mail.example.net.").unwrap(),
        RecordType::A,
    ));
    for r in s.both(&m) {
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(r.metadata.id, m.metadata.id);
    }
}

#[test]
fn rfc6891_opt_in_every_answer_with_payload_1232() {
    let s = server();
    for name in ["example.net.", "nope.example.net.", "example.com."] {
        for r in s.both(&query(name, RecordType::SOA)) {
            let e = r.edns.as_ref().expect("OPT in response");
            assert_eq!(e.max_payload(), 1232, "{name}");
            assert_eq!(e.version(), 0);
        }
    }
    // and none when the query had none
    for r in s.both(&query_no_edns("example.net.", RecordType::SOA)) {
        assert!(r.edns.is_none());
    }
}

#[test]
fn rfc6891_edns_version_above_zero_is_badvers_with_opt() {
    let s = server();
    let mut m = query("example.net.", RecordType::SOA);
    m.edns.as_mut().unwrap().set_version(1);
    for r in s.both(&m) {
        // RFC 6891 §9: BADVERS is 16 (hickory decodes 16 as BADSIG, which shares the value).
        assert_eq!(u16::from(r.metadata.response_code), 16);
        let e = r.edns.as_ref().expect("OPT with BADVERS");
        assert_eq!(e.version(), 0);
        assert!(r.answers.is_empty());
    }
}

#[test]
fn rfc6891_unknown_edns_options_are_ignored_not_echoed() {
    let s = server();
    let mut m = query("example.net.", RecordType::SOA);
    add_option(&mut m, EdnsOption::Unknown(65001, vec![1, 2, 3]));
    for r in s.both(&m) {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        let e = r.edns.as_ref().unwrap();
        assert!(e.options().options.is_empty(), "{:?}", e.options());
    }
}

#[test]
fn rfc5001_nsid_is_returned_when_asked() {
    let s = server();
    let mut m = query("example.net.", RecordType::SOA);
    add_option(&mut m, EdnsOption::Unknown(3, vec![]));
    for r in s.both(&m) {
        let e = r.edns.as_ref().unwrap();
        match e.option(EdnsCode::NSID) {
            Some(EdnsOption::NSID(p)) => assert_eq!(p.as_ref(), b"test-ns-1"),
            other => panic!("no NSID: {other:?}"),
        }
    }
    // not asked: not sent
    let r = s.ask("example.net.", RecordType::SOA);
    assert!(r.edns.unwrap().option(EdnsCode::NSID).is_none());
}

#[test]
fn rfc6891_too_large_for_udp_sets_tc_keeps_opt_and_tcp_has_it_all() {
    let s = server();
    // Without EDNS the limit is 512 bytes; the TXT RRset is ~700.
    let m = query_no_edns("big.example.net.", RecordType::TXT);
    let u = Message::from_vec(&s.udp_raw(&m.to_vec().unwrap()).unwrap()).unwrap();
    assert!(u.metadata.truncation);
    assert!(u.answers.is_empty());
    // With EDNS at 512 the OPT must survive truncation.
    let mut m = query("big.example.net.", RecordType::TXT);
    m.edns.as_mut().unwrap().set_max_payload(512);
    let raw = s.udp_raw(&m.to_vec().unwrap()).unwrap();
    assert!(raw.len() <= 512);
    let u = Message::from_vec(&raw).unwrap();
    assert!(u.metadata.truncation);
    assert!(u.edns.is_some(), "OPT dropped from a truncated response");
    let t = Message::from_vec(&s.tcp_raw(&m.to_vec().unwrap()).unwrap()).unwrap();
    assert!(!t.metadata.truncation);
    assert_eq!(t.answers.len(), 5);
}

#[test]
fn rfc8482_any_gets_a_minimal_answer() {
    let s = server();
    for r in s.both(&query("example.net.", RecordType::ANY)) {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(!r.answers.is_empty());
        let first = r.answers[0].record_type();
        assert!(
            r.answers.iter().all(|a| a.record_type() == first),
            "more than one RRset: {:?}",
            r.answers
        );
    }
}

#[test]
fn delegation_below_the_apex_is_a_referral_with_glue() {
    let s = server();
    for r in s.both(&query("host.lab.example.net.", RecordType::A)) {
        assert!(!r.metadata.authoritative);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(types(&r.authorities), vec![RecordType::NS]);
        assert_eq!(r.additionals[0].name.to_ascii(), "ns.lab.example.net.");
    }
}

#[test]
fn rfc4592_wildcard_answers_with_the_query_name() {
    let s = server();
    let r = s.ask("anyone.user.example.net.", RecordType::TXT);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].name.to_ascii(), "anyone.user.example.net.");
    // A name that exists under the wildcard's parent is not replaced by it.
    let r = s.ask("anyone.user.example.net.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
}

#[test]
fn rfc7871_ecs_on_a_static_name_is_echoed_with_scope_zero() {
    let s = server();
    let mut m = query("mail.example.net.", RecordType::A);
    add_option(&mut m, ecs("198.51.100.0", 24));
    for r in s.both(&m) {
        match r.edns.as_ref().unwrap().option(EdnsCode::Subnet) {
            Some(EdnsOption::Subnet(c)) => {
                assert_eq!(c.source_prefix(), 24);
                assert_eq!(c.scope_prefix(), 0);
                assert_eq!(
                    c.addr(),
                    "198.51.100.0".parse::<std::net::IpAddr>().unwrap()
                );
            }
            other => panic!("ECS not echoed: {other:?}"),
        }
    }
}

#[test]
fn ipv6_listener_answers_too() {
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\", \"[::1]:0\"]\nadmin_listen = \"\"\n{ZONE}\n"
    ));
    let log = s.log_text();
    let v6 = log
        .lines()
        .find_map(|l| {
            l.split("listening dns/udp ")
                .nth(1)
                .filter(|a| a.starts_with('['))
        })
        .expect("an IPv6 listening line")
        .trim()
        .parse()
        .unwrap();
    let raw = crate::harness::udp_raw(
        v6,
        &query("example.net.", RecordType::SOA).to_vec().unwrap(),
    )
    .unwrap();
    assert_eq!(Message::from_vec(&raw).unwrap().answers.len(), 1);
}

#[test]
fn rfc7766_pipelined_tcp_queries_are_answered_in_order_on_one_connection() {
    use std::io::{Read, Write};
    let s = server();
    let names = [
        "example.net.",
        "mail.example.net.",
        "nope.example.net.",
        "api.example.net.",
    ];
    let mut c = std::net::TcpStream::connect(s.dns).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut ids = Vec::new();
    let mut batch = Vec::new();
    for n in names {
        let m = query(n, RecordType::A);
        ids.push(m.metadata.id);
        let b = m.to_vec().unwrap();
        batch.extend((b.len() as u16).to_be_bytes());
        batch.extend(b);
    }
    c.write_all(&batch).unwrap();
    for (id, n) in ids.iter().zip(names) {
        let mut len = [0u8; 2];
        c.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        c.read_exact(&mut buf).unwrap();
        let r = Message::from_vec(&buf).unwrap();
        assert_eq!(r.metadata.id, *id, "{n}");
        assert_eq!(r.queries[0].name().to_ascii(), n);
    }
}

#[test]
fn rfc7766_tcp_queries_in_one_write_split_across_writes_or_longer_than_a_read_are_answered_in_order()
 {
    use std::io::{Read, Write};
    use std::time::Duration;
    let s = server();
    let mut c = std::net::TcpStream::connect(s.dns).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // 400 queries in one write: the answers (about 40 kB) take more than one write batch.
    // Then one query sent a byte at a time, and one of 6 kB (EDNS padding, RFC 7830), more
    // than the first read buffer holds.
    let names = [
        "example.net.",
        "api.example.net.",
        "nope.example.net.",
        "www.example.net.",
    ];
    let mut sent = Vec::new();
    let mut batch = Vec::new();
    for i in 0..400 {
        let name = names[i % names.len()];
        let m = query(name, RecordType::A);
        sent.push((m.metadata.id, name));
        let b = m.to_vec().unwrap();
        batch.extend((b.len() as u16).to_be_bytes());
        batch.extend(b);
    }
    c.write_all(&batch).unwrap();
    let split = query("mail.example.net.", RecordType::MX);
    sent.push((split.metadata.id, "mail.example.net."));
    let b = split.to_vec().unwrap();
    let mut framed = (b.len() as u16).to_be_bytes().to_vec();
    framed.extend(b);
    for byte in framed {
        c.write_all(&[byte]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut long = query("example.net.", RecordType::SOA);
    add_option(&mut long, EdnsOption::Unknown(12, vec![0; 6000]));
    sent.push((long.metadata.id, "example.net."));
    let b = long.to_vec().unwrap();
    assert!(b.len() > 6000);
    c.write_all(&(b.len() as u16).to_be_bytes()).unwrap();
    c.write_all(&b).unwrap();
    for (i, (id, name)) in sent.iter().enumerate() {
        let mut len = [0u8; 2];
        c.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        c.read_exact(&mut buf).unwrap();
        let r = Message::from_vec(&buf).unwrap();
        assert_eq!(r.metadata.id, *id, "answer {i} ({name})");
        assert_eq!(r.queries[0].name().to_ascii(), *name, "answer {i}");
        assert!(
            !r.metadata.truncation,
            "TC is never set on TCP for a short answer"
        );
        assert_eq!(
            r.metadata.response_code != ResponseCode::NXDomain,
            *name != "nope.example.net."
        );
    }
}

#[test]
fn a_tcp_client_trickling_a_query_is_closed_after_the_idle_timeout() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    // The idle timeout counts from the last complete query, not from the last byte: a client
    // sending a byte now and then never completes a query and must not keep its slot.
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\ntcp_idle_timeout = \"1s\"\n{ZONE}"
    ));
    let mut c = std::net::TcpStream::connect(s.dns).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // A 1000-byte message announced, then one byte every 100 ms: 100 s to complete it.
    let start = Instant::now();
    let mut closed = c.write_all(&1000u16.to_be_bytes()).is_err();
    while !closed && start.elapsed() < Duration::from_secs(30) {
        let mut buf = [0u8; 1];
        closed = match c.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => panic!("an answer to an incomplete query"),
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        } || c.write_all(&[0]).is_err();
    }
    assert!(
        closed,
        "still open after {:?} of trickling",
        start.elapsed()
    );
    println!("trickling TCP client closed after {:?}", start.elapsed());
}

#[test]
fn tcp_connections_beyond_the_cap_are_closed_and_idle_ones_time_out() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\ntcp_max_connections = 2\n\
         tcp_idle_timeout = \"1s\"\n{ZONE}"
    ));
    let a = std::net::TcpStream::connect(s.dns).unwrap();
    let b = std::net::TcpStream::connect(s.dns).unwrap();
    // Accepts are in order: the first two take the two slots, the third finds none.
    let mut third = std::net::TcpStream::connect(s.dns).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        third.read(&mut buf).unwrap_or(0),
        0,
        "third connection closed by the server"
    );
    // An idle connection is closed after tcp_idle_timeout (bound: generous for loaded machines).
    let mut a = a;
    a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    assert_eq!(a.read(&mut buf).unwrap_or(0), 0);
    println!("idle TCP connection closed after {:?}", start.elapsed());
    drop(b);
    // Capacity is back: a query over a new connection is answered.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = crate::harness::tcp_raw(
            s.dns,
            &query("example.net.", RecordType::SOA).to_vec().unwrap(),
        ) {
            assert_eq!(Message::from_vec(&r).unwrap().answers.len(), 1);
            break;
        }
        assert!(Instant::now() < deadline, "no capacity came back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The state (`st` of `/proc/net/tcp`, e.g. 06 for TIME_WAIT) of this host's IPv4 TCP socket
/// from 127.0.0.1:`local` to 127.0.0.1:`remote`, if there is one. (Other sockets may use the
/// same local port towards other addresses.)
fn tcp_socket_state(local: u16, remote: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let (local, remote) = (
        format!("0100007F:{local:04X}"),
        format!("0100007F:{remote:04X}"),
    );
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str()))
            .then(|| u8::from_str_radix(f[3], 16).unwrap())
    })
}

#[test]
fn issue_18_a_tcp_client_that_closes_after_its_answers_is_reset_and_keeps_no_time_wait() {
    use std::time::{Duration, Instant};
    let s = server();
    let q = query("example.net.", RecordType::SOA);
    for _ in 0..3 {
        let mut c = std::net::TcpStream::connect(s.dns).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let port = c.local_addr().unwrap().port();
        let buf = crate::harness::tcp_exchange(&mut c, &q.to_vec().unwrap()).unwrap();
        let r = Message::from_vec(&buf).unwrap();
        assert_eq!((r.metadata.id, r.answers.len()), (q.metadata.id, 1));
        drop(c);
        // The server answers the client's FIN with a reset: the client's socket is gone at
        // once. An orderly close would leave it in TIME_WAIT (06) for a minute.
        let start = Instant::now();
        while let Some(state) = tcp_socket_state(port, s.dns.port()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the client's socket is still in state {state:02X}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("client socket gone {:?} after its close", start.elapsed());
    }
}

#[test]
fn issue_18_a_tcp_client_that_shuts_its_side_reads_every_answer_and_idle_closes_are_orderly() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n\
         tcp_idle_timeout = \"1s\"\n{ZONE}\n{API}"
    ));
    // Three pipelined queries, then the client shuts its sending side (half-close): every
    // answer still arrives whole, whatever ends the connection after them.
    let mut c = std::net::TcpStream::connect(s.dns).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let queries: Vec<Message> = ["example.net.", "www.example.net.", "api.example.net."]
        .iter()
        .map(|n| query(n, RecordType::A))
        .collect();
    let mut framed = Vec::new();
    for q in &queries {
        let b = q.to_vec().unwrap();
        framed.extend_from_slice(&(b.len() as u16).to_be_bytes());
        framed.extend_from_slice(&b);
    }
    c.write_all(&framed).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    for q in &queries {
        let r = Message::from_vec(&crate::harness::read_framed(&mut c).unwrap()).unwrap();
        assert_eq!(r.metadata.id, q.metadata.id);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    }
    let mut b = [0u8; 1];
    match c.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("after the answers: {other:?}"),
    }
    // A connection the server closes for idleness ends with a FIN (end of file), not a
    // reset: the client may have had a query on its way.
    let mut idle = std::net::TcpStream::connect(s.dns).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(
        idle.read(&mut b).unwrap(),
        0,
        "an orderly close after idleness"
    );
}

#[test]
fn issue_18_at_shutdown_open_tcp_connections_close_in_order_without_waiting_for_their_idle_timeout()
{
    use std::io::Read;
    use std::time::{Duration, Instant};
    // A long idle timeout: only the shutdown can end these connections soon.
    let mut s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n\
         tcp_idle_timeout = \"60s\"\n{ZONE}"
    ));
    let q = query("example.net.", RecordType::SOA).to_vec().unwrap();
    // One connection that has been answered and waits for its next query, one in the middle
    // of its first query.
    let mut served = std::net::TcpStream::connect(s.dns).unwrap();
    served
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let r = Message::from_vec(&crate::harness::tcp_exchange(&mut served, &q).unwrap()).unwrap();
    assert_eq!(r.answers.len(), 1);
    let mut partial = std::net::TcpStream::connect(s.dns).unwrap();
    partial
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    std::io::Write::write_all(&mut partial, &q[..q.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s
        .wait_exit(Duration::from_secs(30))
        .expect("exited after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", s.log_text());
    let mut b = [0u8; 1];
    // The answered connection ends with a FIN (end of file), not a reset or a timeout.
    assert_eq!(
        served.read(&mut b).unwrap(),
        0,
        "an orderly close at shutdown"
    );
    // The other is closed too (a FIN; a reset had the listener closed before it was
    // accepted), not left hanging until the read timeout.
    match partial.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection in the middle of a query: {other:?}"),
    }
    assert!(
        !s.log_text().contains("did not stop in time"),
        "{}",
        s.log_text()
    );
    println!(
        "stopped with two open TCP connections in {:?}",
        start.elapsed()
    );
}

#[test]
fn rate_limit_drops_and_slips_a_flood_from_one_network_but_not_others_or_tcp() {
    use std::net::UdpSocket;
    use std::time::Duration;
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n\
         [rate_limit]\nresponses_per_second = 5\nslip = 2\n{ZONE}"
    ));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let q = query("example.net.", RecordType::SOA).to_vec().unwrap();
    for _ in 0..40 {
        sock.send_to(&q, s.dns).unwrap();
    }
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let (mut full, mut truncated) = (0, 0);
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        let r = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(r.queries.len(), 1, "the question is kept");
        if r.metadata.truncation {
            assert!(r.answers.is_empty());
            truncated += 1;
        } else {
            assert_eq!(r.answers.len(), 1);
            full += 1;
        }
    }
    println!(
        "40 queries: {full} answered, {truncated} truncated (slip), {} dropped",
        40 - full - truncated
    );
    // The burst is the rate (5); a few more tokens may come back while the test sends.
    assert!((5..=8).contains(&full), "{full}");
    // Every second limited response slips: about half of the remaining 32-35.
    assert!((14..=18).contains(&truncated), "{truncated}");

    // Another client network is not affected (127.0.1.0/24 is another /24 on loopback).
    let other = UdpSocket::bind("127.0.1.1:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    other.send_to(&q, s.dns).unwrap();
    let (n, _) = other
        .recv_from(&mut buf)
        .expect("another network is answered");
    assert!(!Message::from_vec(&buf[..n]).unwrap().metadata.truncation);
    // TCP is never limited.
    let t = crate::harness::tcp_raw(s.dns, &q).expect("tcp answer");
    assert_eq!(Message::from_vec(&t).unwrap().answers.len(), 1);
    // Both actions are counted.
    let metrics = crate::harness::http(s.admin.unwrap(), "GET", "/metrics", &[], "").body;
    let count = |action: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("meridian_dns_rate_limited_total")
                    && l.contains(&format!("action=\"{action}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(count("slip"), Some(truncated as f64), "{metrics}");
    assert_eq!(
        count("drop"),
        Some((40 - full - truncated) as f64),
        "{metrics}"
    );
}

fn ch_txt(name: &str) -> Message {
    let mut m = query(name, RecordType::TXT);
    let mut q = Query::query(Name::from_ascii(name).unwrap(), RecordType::TXT);
    q.set_query_class(DNSClass::CH);
    m.queries = vec![q];
    m
}

#[test]
fn rfc4892_ch_txt_id_server_names_the_instance_and_version_bind_is_refused() {
    let s = server();
    for name in ["id.server.", "ID.SERVER.", "hostname.bind."] {
        for r in s.both(&ch_txt(name)) {
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(r.answers.len(), 1, "{name}");
            assert_eq!(r.answers[0].dns_class, DNSClass::CH);
            assert_eq!(r.answers[0].data.to_string(), "test-ns-1", "{name}");
            assert_eq!(r.queries[0].name().to_ascii(), name, "question case kept");
        }
    }
    for r in s.both(&ch_txt("version.bind.")) {
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
        assert!(r.answers.is_empty());
    }
    // Without an NSID there is no identity to give.
    let plain = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n{ZONE}"
    ));
    for r in plain.both(&ch_txt("id.server.")) {
        assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    }
}
