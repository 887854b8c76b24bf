//! Steering by load (issue 16), seen from outside: real local HTTP backends report their
//! load in a header of the health response, and the share of answers by region over many
//! client subnets (ECS) follows the spill-over of the loaded region.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{RData, RecordType};

use crate::harness::{Server, ZONE, add_option, ecs, http, query, run};

/// An HTTP health endpoint on a loopback address answering 200 with `X-Load: <load>`; the
/// load can be changed while it runs, and the endpoint stopped.
struct LoadBackend {
    load: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl LoadBackend {
    fn start(listener: TcpListener) -> LoadBackend {
        let addr = listener.local_addr().unwrap();
        let load = Arc::new(AtomicU64::new(0.1f64.to_bits()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (load.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let value = f64::from_bits(l.load(Ordering::SeqCst));
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nX-Load: {value:.4}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                });
            }
        });
        LoadBackend { load, stop, addr }
    }

    fn set(&self, load: f64) {
        self.load.store(load.to_bits(), Ordering::SeqCst);
    }

    /// Stops listening: probes are refused from now on.
    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
    }
}

impl Drop for LoadBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three backends on 127.0.0.61-63, one port (a check probes one port).
fn backends() -> (u16, [LoadBackend; 3]) {
    for _ in 0..20 {
        let port = TcpListener::bind("127.0.0.61:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bind = |i: u8| TcpListener::bind(format!("127.0.0.{i}:{port}"));
        if let (Ok(a), Ok(b), Ok(c)) = (bind(61), bind(62), bind(63)) {
            return (
                port,
                [
                    LoadBackend::start(a),
                    LoadBackend::start(b),
                    LoadBackend::start(c),
                ],
            );
        }
    }
    panic!("no common free port on 127.0.0.61-63");
}

const EU_WEST: &str = "127.0.0.61";
const EU_CENTRAL: &str = "127.0.0.62";
const US_EAST: &str = "127.0.0.63";

fn config(port: u16) -> String {
    format!(
        r#"[server]
dns_listen = ["127.0.0.1:0"]
admin_listen = "127.0.0.1:0"
geoip = "{{GEO}}"
{ZONE}
[region.eu-west]
latitude = 53.3
longitude = -6.3
[region.eu-central]
latitude = 50.1
longitude = 8.7
[region.us-east]
latitude = 39.0
longitude = -77.5

[check.web]
kind = "http"
port = {port}
path = "/healthz"
interval = "200ms"
timeout = "150ms"
rise = 1
fall = 1
load = {{ header = "X-Load" }}

[[service]]
name = "api.example.net."
policy = "nearest"
ttl = 1
check = "web"
endpoints = [
  {{ region = "eu-west",    addresses = ["{EU_WEST}"] }},
  {{ region = "eu-central", addresses = ["{EU_CENTRAL}"] }},
  {{ region = "us-east",    addresses = ["{US_EAST}"] }},
]
"#
    )
}

/// Client subnets in Ireland (87.32.0.0/12 in the sample database): nearest is eu-west, then
/// eu-central.
fn subnets(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| format!("87.{}.{}.0", 32 + i / 256, i % 256))
        .collect()
}

/// Asks for `api.example.net. A` with ECS `subnet`/24 over UDP; returns (address, scope).
fn ask(s: &Server, subnet: &str) -> (IpAddr, u8) {
    let mut m = query("api.example.net.", RecordType::A);
    add_option(&mut m, ecs(subnet, 24));
    let bytes = s.udp_raw(&m.to_vec().unwrap()).expect("udp response");
    let r = Message::from_vec(&bytes).unwrap();
    let addr = r
        .answers
        .iter()
        .find_map(|a| match &a.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no address for {subnet}: {r:?}"));
    let scope = match r.edns.as_ref().and_then(|e| e.option(EdnsCode::Subnet)) {
        Some(EdnsOption::Subnet(c)) => c.scope_prefix(),
        other => panic!("no ECS echoed: {other:?}"),
    };
    (addr, scope)
}

/// The answers for every subnet: address by subnet.
fn answers(s: &Server, subnets: &[String]) -> Vec<(IpAddr, u8)> {
    subnets.iter().map(|n| ask(s, n)).collect()
}

fn share(answers: &[(IpAddr, u8)], addr: &str) -> f64 {
    let ip: IpAddr = addr.parse().unwrap();
    answers.iter().filter(|(a, _)| *a == ip).count() as f64 / answers.len() as f64
}

fn eu_west_status(s: &Server) -> serde_json::Value {
    let st = http(s.admin(), "GET", "/status", &[], "").json();
    st["services"][0]["regions"][0].clone()
}

#[test]
fn issue_16_a_region_over_its_mark_sheds_the_share_of_subnets_that_brings_it_under() {
    let (port, b) = backends();
    let s = Server::start(&config(port));
    let subnets = subnets(1000);
    // Everything idle: every Irish subnet gets eu-west, scoped as the location says.
    let first = answers(&s, &subnets);
    assert_eq!(share(&first, EU_WEST), 1.0);

    // eu-west's demand is 1.2 (120 % of its capacity): its reported load is the demand times
    // the share of the subnets still answered with it, measured from the answers each turn,
    // so the load reacts to the spill-over as a real backend's would.
    let demand = 1.2;
    b[0].set(demand);
    let started = Instant::now();
    let mut trace = Vec::new();
    let mut stable = 0;
    let mut last_fraction = -1.0;
    for turn in 0..120 {
        let a = answers(&s, &subnets);
        let at_home = share(&a, EU_WEST);
        let load = demand * at_home;
        b[0].set(load);
        let region = eu_west_status(&s);
        let fraction = region["load"]["spill_fraction"].as_f64().unwrap();
        trace.push(format!(
            "{:5.1}s turn {turn:3}: eu-west share {at_home:.3} -> load {load:.3}; /status load {} fraction {fraction:.3}",
            started.elapsed().as_secs_f64(),
            region["load"]["load"]
        ));
        stable = if fraction > 0.0 && fraction == last_fraction && (0.70..=0.81).contains(&load) {
            stable + 1
        } else {
            0
        };
        last_fraction = fraction;
        if stable >= 8 {
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    println!("{}", trace.join("\n"));
    assert!(stable >= 8, "did not settle:\n{}", trace.join("\n"));
    println!("settled after {:.1} s", started.elapsed().as_secs_f64());

    let a = answers(&s, &subnets);
    let (home, next, far) = (
        share(&a, EU_WEST),
        share(&a, EU_CENTRAL),
        share(&a, US_EAST),
    );
    println!(
        "shares over 1000 Irish /24s: eu-west {home:.3}, eu-central {next:.3}, us-east {far:.3}"
    );
    // The moved share is about 1 - 0.775 / 1.2 = 0.35 and matches the published fraction.
    assert!((0.25..=0.45).contains(&next), "moved {next}");
    assert!(
        (next - last_fraction).abs() < 0.05,
        "moved {next}, fraction {last_fraction}"
    );
    assert_eq!(
        far, 0.0,
        "spilled clients go to their next region, not further"
    );
    assert!(
        a.iter().all(|(_, scope)| *scope == 24),
        "every answer scoped to the /24"
    );
    // The same subnets stay where they are.
    assert_eq!(
        answers(&s, &subnets),
        a,
        "answers are stable while the fraction holds"
    );

    // /metrics carries the loads and the fraction.
    let m = http(s.admin(), "GET", "/metrics", &[], "").body;
    assert!(m.contains("meridian_target_load{service=\"api.example.net.\",region=\"eu-west\",address=\"127.0.0.61\"}"), "{m}");
    assert!(
        m.contains(
            "meridian_region_spill_fraction{service=\"api.example.net.\",region=\"eu-west\"} 0.3"
        ),
        "{m}"
    );
    // The status page shows the region's load and spill.
    let page = http(s.admin(), "GET", "/", &[], "").body;
    assert!(
        page.contains("of its clients spill to their next region"),
        "{page}"
    );

    // /explain says why a moved subnet was moved.
    let i = a
        .iter()
        .position(|(addr, _)| addr.to_string() == EU_CENTRAL)
        .unwrap();
    let e = http(
        s.admin(),
        "GET",
        &format!(
            "/explain?name=api.example.net.&type=A&client={}",
            subnets[i]
        ),
        &[],
        "",
    )
    .json();
    let step = &e["passes"][0]["steps"][0];
    assert_eq!(step["step"], "spill", "{e}");
    assert_eq!(step["moved"], true);
    assert!(step["client_hash"].as_f64().unwrap() < step["fraction"].as_f64().unwrap());

    // Down beats load: eu-central stops, the moved subnets go to us-east, the others stay.
    b[1].stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut now = answers(&s, &subnets);
    while share(&now, EU_CENTRAL) > 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = answers(&s, &subnets);
    }
    for ((before, _), (after, _)) in a.iter().zip(&now) {
        let expect = if before.to_string() == EU_CENTRAL {
            US_EAST
        } else {
            EU_WEST
        };
        assert_eq!(after.to_string(), expect);
    }
    // A drained loaded region is skipped by everyone, as today.
    let r = http(s.admin(), "POST", "/regions/eu-west/drain", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let drained = answers(&s, &subnets[..100]);
    assert_eq!(share(&drained, US_EAST), 1.0);
}

#[test]
fn issue_16_unknown_load_never_withdraws_and_load_falling_gives_every_subnet_back() {
    let (port, b) = backends();
    let s = Server::start(&config(port));
    let subnets = subnets(300);
    b[0].set(0.95);
    let deadline = Instant::now() + Duration::from_secs(30);
    while eu_west_status(&s)["load"]["spill_fraction"]
        .as_f64()
        .unwrap()
        < 0.2
    {
        assert!(Instant::now() < deadline, "no spill at 0.95");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(share(&answers(&s, &subnets), EU_CENTRAL) > 0.1);
    // Load back to 0.3: every subnet comes home within a few rounds.
    b[0].set(0.3);
    let started = Instant::now();
    while eu_west_status(&s)["load"]["spill_fraction"]
        .as_f64()
        .unwrap()
        > 0.0
    {
        assert!(
            Instant::now() < started + Duration::from_secs(30),
            "fraction stuck"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "every subnet home {:.1} s after the load fell",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(share(&answers(&s, &subnets), EU_WEST), 1.0);
    let region = eu_west_status(&s);
    assert_eq!(region["targets"][0]["load"], 0.3, "{region}");
    assert_eq!(region["load"]["load"], 0.3, "{region}");
    assert_eq!(region["load"]["high_watermark"], 0.8, "{region}");
    // A garbage figure is unknown: the target stays up, no load is shown.
    b[0].set(f64::NAN);
    std::thread::sleep(Duration::from_millis(800));
    let region = eu_west_status(&s);
    assert_eq!(region["targets"][0]["state"], "up", "{region}");
    assert_eq!(region["load"]["load"], serde_json::Value::Null, "{region}");
    assert_eq!(share(&answers(&s, &subnets), EU_WEST), 1.0);
}

#[test]
fn issue_16_the_readme_example_config_checks() {
    let path = crate::harness::repo().join("zones/spill.toml");
    let (code, out, err) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn issue_16_check_reports_every_load_mistake_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = crate::harness::config(&format!(
        "{ZONE}[region.a]\nlatitude = 1.0\nlongitude = 2.0\n\
         [check.web]\nkind = \"http\"\nload = {{ json = \"load\", capacity = -5 }}\n\
         [[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
         high_watermark = 2\nendpoints = [{{ region = \"a\", addresses = [\"192.0.2.1\"] }}]\n"
    ));
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = run(&["check", "--config", path.to_str().unwrap()]);
    let all = format!("{out}{err}");
    assert_eq!(code, 2, "{all}");
    for want in [
        "check.web.load.json",
        "check.web.load.capacity",
        "service[\"api.example.net.\"].high_watermark",
    ] {
        assert!(all.contains(want), "missing {want}: {all}");
    }
}
