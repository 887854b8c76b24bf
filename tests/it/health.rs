//! Health probes withdrawing failed regions, end to end: the real binary probes real local
//! backends that the test stops, slows and breaks, and answers change over real DNS.
//!
//! Waits are bounded generously for loaded CI machines; the measured times are printed
//! (`cargo test -- --nocapture` shows them).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use crate::backend::{Mode, backends};
use crate::geo::REGIONS;
use crate::harness::{Server, ZONE, add_option, ecs, query};

/// Probe timing used by these tests: withdrawal is due within interval × fall + 1 s = 2 s.
const CHECK: &str = "interval = \"500ms\"\ntimeout = \"300ms\"\nrise = 2\nfall = 2\n";
/// The bound a test waits for a behaviour before failing: generous for loaded machines.
const BOUND: Duration = Duration::from_secs(20);

fn answer(s: &Server, name: &str, client_subnet: Option<&str>) -> (ResponseCode, Vec<IpAddr>) {
    let mut m = query(name, RecordType::A);
    if let Some(subnet) = client_subnet {
        add_option(&mut m, ecs(subnet, 24));
    }
    let raw = s.udp_raw(&m.to_vec().unwrap()).expect("a response");
    let r = Message::from_vec(&raw).unwrap();
    let addrs = r
        .answers
        .iter()
        .filter_map(|a| match &a.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    (r.metadata.response_code, addrs)
}

/// Polls until `f` holds; returns the time it took, or panics after `BOUND`.
fn wait_until(what: &str, s: &Server, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < BOUND {
        if f() {
            let took = start.elapsed();
            println!("{what}: {took:?}");
            return took;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {BOUND:?}\n{}", s.log_text());
}

/// Counts logged transitions to Up.
fn ups(s: &Server) -> usize {
    s.log_text()
        .lines()
        .filter(|l| l.contains("target state changed") && l.contains("to=Up"))
        .count()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn server_for(port: u16, services: &str) -> Server {
    Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\ngeoip = \"{{GEO}}\"\n{ZONE}{REGIONS}\n\
         [check.web]\nkind = \"http\"\nport = {port}\npath = \"/healthz\"\nbody_contains = \"ok\"\n{CHECK}\n\
         [check.port]\nkind = \"tcp\"\nport = {port}\n{CHECK}\n{services}"
    ))
}

const NEAREST: &str = r#"
[[service]]
name = "api.example.net."
policy = "nearest"
check = "web"
endpoints = [
  { region = "us-east",      addresses = ["127.0.0.11"] },
  { region = "eu-west",      addresses = ["127.0.0.12"] },
  { region = "ap-northeast", addresses = ["127.0.0.13"] },
]
"#;

/// A Frankfurt client: eu-west first, then us-east.
const FRANKFURT: Option<&str> = Some("2.16.0.0");

#[test]
fn nearest_region_dies_answers_move_within_interval_times_fall_and_come_back_after_rise() {
    let (port, mut b) = backends(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    let s = server_for(port, NEAREST);
    wait_until("all three probed up", &s, || ups(&s) >= 3);
    assert_eq!(
        answer(&s, "api.example.net.", FRANKFURT).1,
        vec![ip("127.0.0.12")]
    );

    b[1].down();
    let took = wait_until("eu-west withdrawn after its backend stopped", &s, || {
        answer(&s, "api.example.net.", FRANKFURT).1 == vec![ip("127.0.0.11")]
    });
    // interval × fall + 1 s is the promise; the bound above is for loaded machines, and this
    // assertion only catches a gross regression (e.g. waiting for many more probes).
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        s.log_text().contains("127.0.0.12"),
        "transition logged with the target"
    );

    b[1].up().unwrap();
    wait_until("eu-west back after rise successes", &s, || {
        answer(&s, "api.example.net.", FRANKFURT).1 == vec![ip("127.0.0.12")]
    });
    let log = s.log_text();
    assert!(
        log.contains("connection refused") || log.contains("refused"),
        "reason logged:\n{log}"
    );
}

#[test]
fn a_target_slower_than_the_timeout_is_withdrawn() {
    let (port, b) = backends(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    let s = server_for(port, NEAREST);
    wait_until("all three probed up", &s, || ups(&s) >= 3);
    assert_eq!(
        answer(&s, "api.example.net.", FRANKFURT).1,
        vec![ip("127.0.0.12")]
    );
    b[1].set(Mode::Slow(Duration::from_millis(900)));
    wait_until("slow eu-west withdrawn", &s, || {
        answer(&s, "api.example.net.", FRANKFURT).1 == vec![ip("127.0.0.11")]
    });
    assert!(s.log_text().contains("timed out"), "{}", s.log_text());
}

#[test]
fn status_503_and_wrong_body_withdraw_a_target() {
    let (port, b) = backends(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    let s = server_for(port, NEAREST);
    wait_until("all three probed up", &s, || ups(&s) >= 3);
    assert_eq!(
        answer(&s, "api.example.net.", FRANKFURT).1,
        vec![ip("127.0.0.12")]
    );
    b[1].set(Mode::Status(503));
    wait_until("503 withdraws eu-west", &s, || {
        answer(&s, "api.example.net.", FRANKFURT).1 == vec![ip("127.0.0.11")]
    });
    b[1].set(Mode::Healthy);
    b[0].set(Mode::WrongBody);
    // A Philadelphia client: us-east first; its body no longer matches.
    wait_until("wrong body withdraws us-east", &s, || {
        let (_, a) = answer(&s, "api.example.net.", Some("24.0.0.0"));
        a == vec![ip("127.0.0.12")]
    });
    assert!(
        s.log_text().contains("body does not contain"),
        "{}",
        s.log_text()
    );
}

#[test]
fn every_backend_down_each_when_all_down_mode_does_what_it_says() {
    let (port, mut b) = backends(&["127.0.0.21", "127.0.0.22"]);
    // Three services over the same two targets, one per when_all_down mode.
    let services: String = [("open", "all"), ("empty", "empty"), ("closed", "servfail")]
        .iter()
        .map(|(name, mode)| {
            format!(
                "[[service]]\nname = \"{name}.example.net.\"\npolicy = \"failover\"\ncheck = \"port\"\n\
                 when_all_down = \"{mode}\"\nendpoints = [\n\
                 {{ region = \"us-east\", addresses = [\"127.0.0.21\"], priority = 1 }},\n\
                 {{ region = \"eu-west\", addresses = [\"127.0.0.22\"], priority = 2 }},\n]\n"
            )
        })
        .collect();
    let s = server_for(port, &services);
    wait_until("both probed up", &s, || ups(&s) >= 2);
    assert_eq!(
        answer(&s, "closed.example.net.", None),
        (ResponseCode::NoError, vec![ip("127.0.0.21")])
    );
    b[0].down();
    wait_until("failover to priority 2", &s, || {
        answer(&s, "closed.example.net.", None).1 == vec![ip("127.0.0.22")]
    });
    b[1].down();
    wait_until("servfail when everything is down", &s, || {
        answer(&s, "closed.example.net.", None).0 == ResponseCode::ServFail
    });
    assert_eq!(
        answer(&s, "empty.example.net.", None),
        (ResponseCode::NoError, vec![]),
        "empty: NODATA"
    );
    assert_eq!(
        answer(&s, "open.example.net.", None),
        (ResponseCode::NoError, vec![ip("127.0.0.21")]),
        "all: fail open, as if up"
    );
    b[1].up().unwrap();
    wait_until("recovery ends the fail-closed answer", &s, || {
        answer(&s, "closed.example.net.", None).1 == vec![ip("127.0.0.22")]
    });
}

#[test]
fn two_services_sharing_a_target_cause_one_probe_stream() {
    let (port, b) = backends(&["127.0.0.31"]);
    let services = r#"
[[service]]
name = "one.example.net."
policy = "failover"
check = "web"
endpoints = [{ region = "us-east", addresses = ["127.0.0.31"] }]
[[service]]
name = "two.example.net."
policy = "nearest"
check = "web"
endpoints = [{ region = "eu-west", addresses = ["127.0.0.31"] }]
"#;
    let s = server_for(port, services);
    wait_until("probing started", &s, || b[0].hits() >= 1);
    let start = b[0].hits();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let per_interval = (b[0].hits() - start) as f64 / (t0.elapsed().as_secs_f64() / 0.5);
    println!("probe requests per 500ms interval: {per_interval:.2}");
    // One stream probes once per interval; two would double it.
    assert!(per_interval > 0.5 && per_interval < 1.5, "{per_interval}");
}
