//! Reload (issue 9 item 4): a SIGHUP swaps the snapshot, and no UDP thread's answer cache
//! (`dns/cache.rs`) serves an answer from the previous one.

use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use crate::harness::{Server, query};

/// UDP threads of the server: set explicitly, so that the test knows how many caches exist.
const UDP_WORKERS: usize = 4;
/// Client sockets, each with its own source port. SO_REUSEPORT spreads flows over the threads
/// by a hash of the addresses and ports: the chance that some thread receives none of 64 flows
/// is 4 × (3/4)^64 ≈ 4e-8.
const CLIENTS: usize = 64;

fn zone(www: &str, extra: &str) -> String {
    format!(
        "$ORIGIN example.org.\n$TTL 300\n\
         @ SOA ns1 hostmaster 1 7200 3600 1209600 60\n@ NS ns1\nns1 A 192.0.2.53\n\
         www A {www}\n{extra}"
    )
}

fn config(api: &str) -> String {
    format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\nudp_workers = {UDP_WORKERS}\n\
         [[zone]]\norigin = \"example.org.\"\nfile = \"example.org.zone\"\n\
         [region.us-east]\nlatitude = 39.0\nlongitude = -77.5\n\
         [[service]]\nname = \"api.example.org.\"\npolicy = \"failover\"\n\
         endpoints = [{{ region = \"us-east\", addresses = [\"{api}\"] }}]\n"
    )
}

/// Asks `name` A from `sock`; returns the RCODE and the A addresses.
fn ask(sock: &UdpSocket, server: std::net::SocketAddr, name: &str) -> (ResponseCode, Vec<IpAddr>) {
    let bytes = query(name, RecordType::A).to_vec().unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..3 {
        sock.send_to(&bytes, server).unwrap();
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let r = Message::from_vec(&buf[..n]).unwrap();
            let addrs = r
                .answers
                .iter()
                .filter_map(|a| match &a.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect();
            return (r.metadata.response_code, addrs);
        }
    }
    panic!("no answer to {name} from {server}");
}

#[test]
fn issue_9_after_sighup_no_udp_thread_answers_from_the_old_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("example.org.zone"), zone("192.0.2.1", "")).unwrap();
    let path = dir.path().join("meridian.toml");
    std::fs::write(&path, config("192.0.2.10")).unwrap();
    let s = Server::start_in(dir, &path);
    assert!(
        s.log_text().matches("listening dns/udp").count() >= 1,
        "{}",
        s.log_text()
    );
    let clients: Vec<UdpSocket> = (0..CLIENTS)
        .map(|_| {
            let c = UdpSocket::bind("127.0.0.1:0").unwrap();
            c.set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            c
        })
        .collect();
    let v = |a: &str| vec![a.parse::<IpAddr>().unwrap()];
    // Twice from every client: the second static answer of each thread comes from its cache;
    // the NXDOMAIN is cached too.
    for c in &clients {
        for _ in 0..2 {
            assert_eq!(
                ask(c, s.dns, "www.example.org."),
                (ResponseCode::NoError, v("192.0.2.1"))
            );
            assert_eq!(ask(c, s.dns, "new.example.org.").0, ResponseCode::NXDomain);
            assert_eq!(
                ask(c, s.dns, "api.example.org."),
                (ResponseCode::NoError, v("192.0.2.10"))
            );
        }
    }

    // A static record edited, one added, and the service's address changed.
    std::fs::write(
        s.dir().join("example.org.zone"),
        zone("192.0.2.2", "new A 192.0.2.3\n"),
    )
    .unwrap();
    std::fs::write(s.dir().join("meridian.toml"), config("192.0.2.20")).unwrap();
    let started = Instant::now();
    s.signal(libc::SIGHUP);
    assert!(
        s.wait_log("configuration reloaded", Duration::from_secs(20)),
        "{}",
        s.log_text()
    );
    eprintln!("reload logged after {:?}", started.elapsed());

    // Every client (so every thread) gets the new data at once, from its first query on.
    for c in &clients {
        assert_eq!(
            ask(c, s.dns, "www.example.org."),
            (ResponseCode::NoError, v("192.0.2.2"))
        );
        assert_eq!(
            ask(c, s.dns, "new.example.org."),
            (ResponseCode::NoError, v("192.0.2.3"))
        );
        assert_eq!(
            ask(c, s.dns, "api.example.org."),
            (ResponseCode::NoError, v("192.0.2.20"))
        );
    }
}
