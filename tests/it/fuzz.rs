//! Malformed input never stops service: random and mutated packets, then a valid query that
//! must still be answered.

use std::net::UdpSocket;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::harness::{Server, ZONE, add_option, ecs, query, tcp_raw};

/// A small deterministic PRNG (xorshift), so failures can be replayed from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (name, t) in [
        ("api.example.net.", RecordType::A),
        ("example.net.", RecordType::NS),
        ("big.example.net.", RecordType::TXT),
        ("nope.example.net.", RecordType::AAAA),
    ] {
        let mut m = query(name, t);
        add_option(&mut m, ecs("198.51.100.0", 24));
        out.push(m.to_vec().unwrap());
        out.push(query(name, t).to_vec().unwrap());
    }
    out
}

#[test]
fn ten_thousand_random_and_mutated_packets_then_a_valid_query_is_answered() {
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n{ZONE}"
    ));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    let seeds = seeds();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut buf = [0u8; 4096];
    let mut answered = 0usize;
    for i in 0..12_000 {
        let packet: Vec<u8> = if i % 3 == 0 {
            let len = rng.below(600);
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            let mut p = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(6) {
                match rng.below(4) {
                    0 if !p.is_empty() => {
                        let j = rng.below(p.len());
                        p[j] = rng.next() as u8;
                    }
                    1 if !p.is_empty() => p.truncate(rng.below(p.len())),
                    2 => p.push(rng.next() as u8),
                    _ if p.len() > 2 => {
                        let j = rng.below(p.len() - 1);
                        p[j] ^= 1 << rng.below(8);
                    }
                    _ => {}
                }
            }
            // Keep QR clear on most so they reach the parser rather than being dropped.
            if p.len() > 2 && rng.below(10) > 0 {
                p[2] &= 0x7F;
            }
            p
        };
        let _ = sock.send_to(&packet, s.dns);
        // Drain responses as we go so the socket buffer never fills.
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n >= 12 {
                answered += 1;
            }
        }
        if i % 500 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(
        answered > 1000,
        "only {answered} responses to 12000 packets"
    );
    // The server is still alive and answers correctly over UDP and TCP.
    let r = s.ask("example.net.", RecordType::SOA);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 1);
    let t = tcp_raw(
        s.dns,
        &query("example.net.", RecordType::SOA).to_vec().unwrap(),
    )
    .unwrap();
    assert_eq!(Message::from_vec(&t).unwrap().answers.len(), 1);
    assert!(!s.log_text().contains("panicked"), "{}", s.log_text());
}

#[test]
fn garbage_over_tcp_does_not_hurt_other_connections() {
    use std::io::Write;
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n{ZONE}"
    ));
    let mut rng = Rng(42);
    for _ in 0..50 {
        if let Ok(mut c) = std::net::TcpStream::connect(s.dns) {
            let junk: Vec<u8> = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
            let _ = c.write_all(&junk);
        }
    }
    let t = tcp_raw(
        s.dns,
        &query("example.net.", RecordType::SOA).to_vec().unwrap(),
    )
    .unwrap();
    assert_eq!(Message::from_vec(&t).unwrap().answers.len(), 1);
}
