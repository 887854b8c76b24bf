//! The admin HTTP port (issue 5), as an operator and Prometheus use it: real binary, real
//! HTTP over loopback, local backends the tests turn up and down, a local webhook receiver,
//! and headless Chromium for the status page.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use meridian::metrics::{
    CONFIG_RELOADS_TOTAL, DNS_ANSWERS_TOTAL, DNS_QUERIES_TOTAL, HEALTH_TRANSITIONS_TOTAL,
    PROBE_DURATION_SECONDS, TARGET_DRAINED, TARGET_UP,
};

use crate::harness::{HttpResponse, HttpStub, Server, ZONE, http, query, tool};

const REGIONS: &str = "[region.us-east]\nlatitude = 38.9\nlongitude = -77.4\n\
                       [region.eu-west]\nlatitude = 53.3\nlongitude = -6.3\n";

/// A config with port-0 DNS and admin listeners; `server` goes into `[server]`.
pub(crate) fn cfg(server: &str, body: &str) -> String {
    format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n{server}\n\
         {ZONE}\n{REGIONS}\n{body}"
    )
}

/// An HTTP check on `port` probing every 200 ms (rise 2, fall 3).
pub(crate) fn check(name: &str, port: u16) -> String {
    format!(
        "[check.{name}]\nkind = \"http\"\nport = {port}\npath = \"/healthz\"\n\
         interval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 3\n"
    )
}

/// Starts a server whose directory also holds `files` (name, content), written before start.
pub(crate) fn start_with(config_text: &str, files: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("write file");
    }
    let path = dir.path().join("meridian.toml");
    std::fs::write(&path, crate::harness::config(config_text)).expect("write config");
    Server::start_in(dir, &path)
}

pub(crate) fn get(s: &Server, path: &str) -> HttpResponse {
    http(s.admin(), "GET", path, &[], "")
}

pub(crate) fn post(s: &Server, path: &str, token: Option<&str>, body: &str) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http(s.admin(), "POST", path, &headers, body)
}

/// Polls `f` every 50 ms until it holds; panics after `timeout` naming `what`.
pub(crate) fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn wait_ready(s: &Server) {
    eventually("/ready to answer 200", Duration::from_secs(15), || {
        get(s, "/ready").status == 200
    });
}

/// One sample of a text exposition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// Parses Prometheus/OpenMetrics text: `name{k="v",...} value` lines; comments skipped.
pub(crate) fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name_end, mut rest) = match line.find(['{', ' ']) {
            Some(i) => (i, &line[i..]),
            None => panic!("bad sample line {line:?}"),
        };
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices();
            let mut key = String::new();
            let end = loop {
                let (i, c) = chars.next().expect("unterminated labels");
                match c {
                    '}' => break i,
                    ',' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|x| x.1), Some('"'), "{line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().expect("unterminated value").1 {
                                '\\' => match chars.next().expect("escape").1 {
                                    'n' => value.push('\n'),
                                    c => value.push(c),
                                },
                                '"' => break,
                                c => value.push(c),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            };
            rest = &r[end + 1..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .expect("a value")
            .parse::<f64>()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Returns the value of `name` with exactly `labels`.
pub(crate) fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// The `Accept` header Prometheus 2.x sends: OpenMetrics first.
pub(crate) const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
     application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Scrapes `/metrics` as Prometheus does (OpenMetrics) and parses the samples.
pub(crate) fn scrape(s: &Server) -> Vec<Sample> {
    let r = http(
        s.admin(),
        "GET",
        "/metrics",
        &[("Accept", PROMETHEUS_ACCEPT)],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    parse_exposition(&r.body)
}

/// Asks `name` A over UDP once (no retry): `None` when no answer came within 2 s.
fn ask_once(dns: SocketAddr, name: &str) -> Option<Message> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let q = query(name, RecordType::A);
    sock.send_to(&q.to_vec().ok()?, dns).ok()?;
    let mut buf = [0u8; 4096];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let m = Message::from_vec(&buf[..n]).ok()?;
    (m.metadata.id == q.metadata.id).then_some(m)
}

fn a_records(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

/// The target of `/status` at service `svc`, region `reg`, target index `t`.
fn target(status: &serde_json::Value, svc: usize, reg: usize, t: usize) -> &serde_json::Value {
    &status["services"][svc]["regions"][reg]["targets"][t]
}

#[test]
fn ready_is_503_until_the_first_probe_round_completes_and_live_is_always_200() {
    let backend = HttpStub::start(200);
    backend.set_hang(true);
    // The first result of a hung backend comes only when its 3 s timeout expires.
    let check = format!(
        "[check.web]\nkind = \"http\"\nport = {}\ninterval = \"4s\"\ntimeout = \"3s\"\n",
        backend.addr.port()
    );
    let s = Server::start(&cfg(
        "",
        &format!(
            "{check}[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
             endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.1\"] }}]\n"
        ),
    ));
    assert!(
        s.log_text()
            .contains(&format!("listening admin/http {}", s.admin())),
        "{}",
        s.log_text()
    );
    assert_ne!(s.admin().port(), 0);
    let r = get(&s, "/ready");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["ready"], false);
    let live = get(&s, "/live");
    assert_eq!(
        (live.status, live.json()["live"].as_bool()),
        (200, Some(true))
    );
    assert_eq!(get(&s, "/status").json()["ready"], false);
    wait_ready(&s);
    assert_eq!(get(&s, "/ready").json()["ready"], true);
    let status = get(&s, "/status").json();
    assert_eq!(status["ready"], true);
    // Issue #17: one timeout does not withdraw a target (fall = 3 does).
    let t = target(&status, 0, 0, 0);
    assert_eq!(t["state"], "unknown", "{status}");
    assert_eq!(t["last_check"]["result"], "fail", "{status}");
    assert_eq!(t["last_check"]["error"], "timed out after 3s", "{status}");
}

#[test]
fn status_lists_services_regions_and_targets_in_config_order_with_probe_results() {
    let backend = HttpStub::start(200);
    // 127.0.0.2 has nothing on the backend's port: its probes are refused.
    let s = Server::start(&cfg(
        "",
        &format!(
            "{}[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
             endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.1\"] }}, \
                          {{ region = \"eu-west\", addresses = [\"127.0.0.2\"], priority = 2 }}]\n\
             [[service]]\nname = \"cdn.example.net.\"\npolicy = \"weighted\"\nttl = 60\n\
             when_all_down = \"empty\"\n\
             endpoints = [{{ region = \"eu-west\", addresses = [\"198.51.100.31\"], weight = 3 }}]\n",
            check("web", backend.addr.port())
        ),
    ));
    wait_ready(&s);
    eventually("eu-west target down", Duration::from_secs(10), || {
        target(&get(&s, "/status").json(), 0, 1, 0)["state"] == "down"
    });
    let r = get(&s, "/status");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json"),
        "{:?}",
        r.headers
    );
    let j = r.json();
    assert_eq!(j["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(j["ready"], true);
    assert!(
        j["config_file"]
            .as_str()
            .unwrap()
            .ends_with("meridian.toml")
    );
    assert_eq!(j["drained_regions"], serde_json::json!([]));

    let api = &j["services"][0];
    assert_eq!(api["name"], "api.example.net.");
    assert_eq!(api["policy"], "nearest");
    assert_eq!(api["ttl"], 30);
    assert_eq!(api["when_all_down"], "all");
    let regions: Vec<&str> = api["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(regions, ["us-east", "eu-west"]);
    assert_eq!(api["regions"][1]["drained"], false);
    assert_eq!(api["regions"][1]["priority"], 2);

    let up = target(&j, 0, 0, 0);
    assert_eq!(up["address"], "127.0.0.1");
    assert_eq!(up["check"], "web");
    assert_eq!(up["state"], "up");
    assert_eq!(
        (up["forced"].as_bool(), up["usable"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(up["since"].as_str().unwrap().ends_with('Z'), "{up}");
    let last = &up["last_check"];
    assert_eq!(last["ok"], true);
    assert!(last["latency_ms"].as_f64().unwrap() >= 0.0, "{last}");
    assert!(last["at"].is_string() && last["error"].is_null(), "{last}");

    let down = target(&j, 0, 1, 0);
    assert_eq!(
        (down["state"].as_str(), down["usable"].as_bool()),
        (Some("down"), Some(false))
    );
    assert_eq!(down["last_check"]["ok"], false);
    assert!(
        down["last_check"]["error"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{down}"
    );

    let cdn = &j["services"][1];
    assert_eq!(
        (cdn["policy"].as_str(), cdn["ttl"].as_u64()),
        (Some("weighted"), Some(60))
    );
    assert_eq!(cdn["when_all_down"], "empty");
    assert_eq!(cdn["regions"][0]["weight"], 3);
    let unprobed = target(&j, 1, 0, 0);
    assert_eq!(unprobed["state"], "up");
    assert!(
        unprobed["check"].is_null()
            && unprobed["last_check"].is_null()
            && unprobed["since"].is_null()
    );
}

#[test]
fn metrics_expose_the_contract_names_and_move_with_queries_transitions_and_reloads() {
    let backend = HttpStub::start(200);
    let good = cfg(
        "",
        &format!(
            "{}[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
             endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.1\"] }}, \
                          {{ region = \"eu-west\", addresses = [\"127.0.0.2\"] }}]\n",
            check("web", backend.addr.port())
        ),
    );
    let s = Server::start(&good);
    wait_ready(&s);
    let r = http(
        s.admin(),
        "GET",
        "/metrics",
        &[("Accept", PROMETHEUS_ACCEPT)],
        "",
    );
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        r.headers
    );

    // Queries: exactly the ones this test sends.
    let udp_a = [("transport", "udp"), ("qtype", "A"), ("rcode", "NOERROR")];
    let before = value(&scrape(&s), DNS_QUERIES_TOTAL, &udp_a).unwrap_or(0.0);
    for _ in 0..3 {
        assert_eq!(
            s.ask("api.example.net.", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::NoError
        );
    }
    let m = scrape(&s);
    assert_eq!(
        value(&m, DNS_QUERIES_TOTAL, &udp_a),
        Some(before + 3.0),
        "{m:#?}"
    );
    // Answers by service and region: the resolver (loopback) has no location, so us-east,
    // the first region in config order, answered all three.
    let answers = [
        ("service", "api.example.net."),
        ("region", "us-east"),
        ("family", "A"),
    ];
    assert_eq!(value(&m, DNS_ANSWERS_TOTAL, &answers), Some(3.0), "{m:#?}");

    // Target up: computed at scrape time from the config and the health view.
    let up = |m: &[Sample], region: &str, address: &str| {
        value(
            m,
            TARGET_UP,
            &[
                ("service", "api.example.net."),
                ("region", region),
                ("address", address),
            ],
        )
    };
    assert_eq!(up(&m, "us-east", "127.0.0.1"), Some(1.0));
    eventually("127.0.0.2 down in metrics", Duration::from_secs(10), || {
        up(&scrape(&s), "eu-west", "127.0.0.2") == Some(0.0)
    });

    // Probe durations: a histogram by check and region.
    let web_us = [("check", "web"), ("region", "us-east")];
    let probes = |m: &[Sample]| value(m, &format!("{PROBE_DURATION_SECONDS}_count"), &web_us);
    eventually(
        "two probes of us-east observed",
        Duration::from_secs(10),
        || probes(&scrape(&s)).is_some_and(|n| n >= 2.0),
    );
    let m = scrape(&s);
    let count = probes(&m).unwrap();
    assert_eq!(
        value(
            &m,
            &format!("{PROBE_DURATION_SECONDS}_bucket"),
            &[("check", "web"), ("region", "us-east"), ("le", "+Inf")]
        ),
        Some(count)
    );
    assert!(value(&m, &format!("{PROBE_DURATION_SECONDS}_sum"), &web_us).is_some());

    // Transitions: turn the backend down and count exactly one up -> down.
    backend.set_status(503);
    let down = [("address", "127.0.0.1"), ("to", "down")];
    eventually(
        "a transition to down counted",
        Duration::from_secs(10),
        || value(&scrape(&s), HEALTH_TRANSITIONS_TOTAL, &down) == Some(1.0),
    );
    assert_eq!(up(&scrape(&s), "us-east", "127.0.0.1"), Some(0.0));

    // Reloads: both results exist from the start; POST /reload and SIGHUP both count.
    let reloads =
        |m: &[Sample], result: &str| value(m, CONFIG_RELOADS_TOTAL, &[("result", result)]);
    let m = scrape(&s);
    assert_eq!(
        (reloads(&m, "ok"), reloads(&m, "error")),
        (Some(0.0), Some(0.0))
    );
    s.write_config("[server]\nnot_a_key = 1\n");
    assert_eq!(post(&s, "/reload", None, "").status, 400);
    assert_eq!(reloads(&scrape(&s), "error"), Some(1.0));
    s.signal(libc::SIGHUP);
    eventually(
        "SIGHUP reload error counted",
        Duration::from_secs(10),
        || reloads(&scrape(&s), "error") == Some(2.0),
    );
    s.write_config(&good);
    assert_eq!(post(&s, "/reload", None, "").status, 200);
    let m = scrape(&s);
    assert_eq!(
        (reloads(&m, "ok"), reloads(&m, "error")),
        (Some(1.0), Some(2.0))
    );
    // Every metric family of the contract is named once, with its type (OpenMetrics names a
    // counter's family without `_total`).
    let r = http(
        s.admin(),
        "GET",
        "/metrics",
        &[("Accept", PROMETHEUS_ACCEPT)],
        "",
    )
    .body;
    for (family, kind) in [
        ("meridian_dns_queries", "counter"),
        ("meridian_target_up", "gauge"),
        ("meridian_health_transitions", "counter"),
        ("meridian_probe_duration_seconds", "histogram"),
        ("meridian_config_reloads", "counter"),
    ] {
        assert_eq!(
            r.lines()
                .filter(|l| *l == format!("# TYPE {family} {kind}"))
                .count(),
            1,
            "{family}: {r}"
        );
    }
}

const TOKEN: &str = "s3cret-token";

fn drain_config() -> String {
    cfg(
        "admin_token_file = \"admin.token\"\nstate_file = \"state/overrides.json\"",
        "[[service]]\nname = \"cdn.example.net.\"\npolicy = \"all\"\nmax_answers = 2\n\
         endpoints = [{ region = \"us-east\", addresses = [\"192.0.2.10\"] }, \
                      { region = \"eu-west\", addresses = [\"198.51.100.10\"] }]\n",
    )
}

/// The sorted A answers for `cdn` (policy `all`, one address per region).
fn cdn_answers(s: &Server) -> Vec<IpAddr> {
    let mut a = a_records(&s.ask("cdn.example.net.", RecordType::A));
    a.sort();
    a
}

fn drained(s: &Server) -> serde_json::Value {
    get(s, "/status").json()["drained_regions"].clone()
}

#[test]
fn drain_needs_the_token_shows_in_status_and_metrics_and_survives_a_restart() {
    let s = start_with(&drain_config(), &[("admin.token", &format!("  {TOKEN}\n"))]);

    // No token, a wrong one, another scheme: 401, nothing changes.
    for auth in [None, Some("wrong"), Some("s3cret-toke")] {
        let r = post(&s, "/regions/eu-west/drain", auth, "");
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap().contains("bearer token"),
            "{}",
            r.body
        );
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    let r = http(
        s.admin(),
        "POST",
        "/regions/eu-west/drain",
        &[("Authorization", &format!("Basic {TOKEN}"))],
        "",
    );
    assert_eq!(r.status, 401);
    assert_eq!(drained(&s), serde_json::json!([]));
    let both: Vec<IpAddr> = vec![
        "192.0.2.10".parse().unwrap(),
        "198.51.100.10".parse().unwrap(),
    ];
    let us_only: Vec<IpAddr> = vec!["192.0.2.10".parse().unwrap()];
    assert_eq!(cdn_answers(&s), both);

    let r = post(
        &s,
        "/regions/eu-west/drain",
        Some(TOKEN),
        r#"{"reason": "maintenance"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"region": "eu-west", "drained": true, "changed": true})
    );
    // Withdrawn from answers at once (the 200 comes after the health view changed).
    assert_eq!(cdn_answers(&s), us_only);
    let again = post(&s, "/regions/eu-west/drain", Some(TOKEN), "");
    assert_eq!(again.json()["changed"], false);

    // Unknown region: 404, JSON error, nothing changes.
    for action in ["drain", "undrain"] {
        let r = post(&s, &format!("/regions/mars/{action}"), Some(TOKEN), "");
        assert_eq!(r.status, 404, "{}", r.body);
        assert_eq!(r.json()["error"], "unknown region \"mars\"");
    }
    assert_eq!(drained(&s), serde_json::json!(["eu-west"]));

    let j = get(&s, "/status").json();
    let eu = &j["services"][0]["regions"][1];
    assert_eq!(
        (eu["name"].as_str(), eu["drained"].as_bool()),
        (Some("eu-west"), Some(true))
    );
    assert_eq!(eu["targets"][0]["forced"], true);
    assert_eq!(eu["targets"][0]["usable"], false);
    assert_eq!(j["services"][0]["regions"][0]["drained"], false);
    // Health and drain apart: the drained target is still up by its probes (none here), and
    // drained.
    let m = scrape(&s);
    let gauge = |name: &str, region: &str, address: &str| {
        value(
            &m,
            name,
            &[
                ("service", "cdn.example.net."),
                ("region", region),
                ("address", address),
            ],
        )
    };
    assert_eq!(
        (
            gauge(TARGET_UP, "eu-west", "198.51.100.10"),
            gauge(TARGET_UP, "us-east", "192.0.2.10")
        ),
        (Some(1.0), Some(1.0))
    );
    assert_eq!(
        (
            gauge(TARGET_DRAINED, "eu-west", "198.51.100.10"),
            gauge(TARGET_DRAINED, "us-east", "192.0.2.10")
        ),
        (Some(1.0), Some(0.0))
    );
    assert!(s.wait_log("admin: region override set", Duration::from_secs(2)));
    assert!(s.log_text().contains("maintenance"), "the reason is logged");

    // The token is re-read on every call: rotating the file takes effect at once.
    std::fs::write(s.dir().join("admin.token"), "rotated\n").unwrap();
    assert_eq!(post(&s, "/reload", Some(TOKEN), "").status, 401);
    assert_eq!(post(&s, "/reload", Some("rotated"), "").status, 200);
    std::fs::write(s.dir().join("admin.token"), TOKEN).unwrap();

    // A restart on the same directory keeps the drain (the state file).
    let dir = s.stop();
    let path = dir.path().join("meridian.toml");
    let s = Server::start_in(dir, &path);
    assert_eq!(drained(&s), serde_json::json!(["eu-west"]));
    assert_eq!(cdn_answers(&s), us_only);
    assert_eq!(
        get(&s, "/status").json()["services"][0]["regions"][1]["drained"],
        true
    );
    let r = post(&s, "/regions/eu-west/undrain", Some(TOKEN), "");
    assert_eq!(
        r.json(),
        serde_json::json!({"region": "eu-west", "drained": false, "changed": true})
    );
    assert_eq!(drained(&s), serde_json::json!([]));
    assert_eq!(cdn_answers(&s), both);
}

#[test]
fn without_a_token_file_mutating_calls_are_allowed_on_a_loopback_listener() {
    let s = Server::start(&cfg("", ""));
    let r = post(&s, "/regions/us-east/drain", None, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(drained(&s), serde_json::json!(["us-east"]));
    assert_eq!(post(&s, "/reload", None, "").status, 200);
}

#[test]
fn bad_admin_calls_get_clear_json_errors() {
    let s = Server::start(&cfg("", ""));
    let r = get(&s, "/nope");
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"].as_str().unwrap().contains("GET /nope"),
        "{}",
        r.body
    );
    for (method, path) in [
        ("GET", "/reload"),
        ("POST", "/status"),
        ("DELETE", "/regions/us-east/drain"),
    ] {
        let r = http(s.admin(), method, path, &[], "");
        assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
        let e = r.json()["error"].as_str().unwrap().to_string();
        assert!(e.contains(method) && e.contains(path), "{e}");
    }
    for body in ["{not json", r#"{"reason": 7}"#, r#"{"why": "x"}"#] {
        let r = post(&s, "/regions/us-east/drain", None, body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        let e = r.json()["error"].as_str().unwrap().to_string();
        assert!(e.starts_with("request body: expected JSON"), "{e}");
    }
    assert_eq!(
        drained(&s),
        serde_json::json!([]),
        "bad calls change nothing"
    );
}

/// A config whose `api` answers `api_addr`; `pay` is probed on `kept`; `cdn` (probed on
/// `removed`) is present only when `with_cdn`.
fn reload_config(api_addr: &str, kept: u16, removed: u16, with_cdn: bool) -> String {
    let cdn = if with_cdn {
        "[[service]]\nname = \"cdn.example.net.\"\npolicy = \"nearest\"\ncheck = \"old\"\n\
         endpoints = [{ region = \"eu-west\", addresses = [\"127.0.0.1\"] }]\n"
    } else {
        ""
    };
    cfg(
        "",
        &format!(
            "{}{}[[service]]\nname = \"api.example.net.\"\npolicy = \"failover\"\n\
             endpoints = [{{ region = \"us-east\", addresses = [\"{api_addr}\"] }}]\n\
             [[service]]\nname = \"pay.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
             endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.1\"] }}]\n{cdn}",
            check("web", kept),
            check("old", removed),
        ),
    )
}

#[test]
fn reloads_under_query_load_lose_no_answer_keep_probe_state_and_stop_removed_probes() {
    const A: &str = "192.0.2.10";
    const B: &str = "192.0.2.20";
    let kept = HttpStub::start(200);
    let removed = HttpStub::start(200);
    let (kp, rp) = (kept.addr.port(), removed.addr.port());
    let s = Server::start(&reload_config(A, kp, rp, true));
    wait_ready(&s);
    let pay_since = target(&get(&s, "/status").json(), 1, 0, 0)["since"].clone();
    assert!(pay_since.is_string(), "{pay_since}");

    // A client querying as fast as it can through every reload.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, lost, wrong) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let client = {
        let (stop, sent, lost, wrong) = (stop.clone(), sent.clone(), lost.clone(), wrong.clone());
        let dns = s.dns;
        std::thread::spawn(move || {
            let valid: [IpAddr; 2] = [A.parse().unwrap(), B.parse().unwrap()];
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                match ask_once(dns, "api.example.net.") {
                    None => {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(m) => {
                        let a = a_records(&m);
                        if m.metadata.response_code != ResponseCode::NoError
                            || a.len() != 1
                            || !valid.contains(&a[0])
                        {
                            eprintln!("wrong answer: {m:?}");
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
    };

    let started = Instant::now();
    for i in 0..20 {
        let addr = if i % 2 == 0 { B } else { A };
        s.write_config(&reload_config(addr, kp, rp, true));
        let r = post(&s, "/reload", None, "");
        assert_eq!(r.status, 200, "reload {i}: {}", r.body);
        assert_eq!(r.json()["reloaded"], true);
        // The swap happened before the 200: the next answer is the new one.
        let m = s.ask("api.example.net.", RecordType::A);
        assert_eq!(
            a_records(&m),
            [addr.parse::<IpAddr>().unwrap()],
            "after reload {i}"
        );
        // Let the client see every config for a while.
        std::thread::sleep(Duration::from_millis(25));
    }
    let reload_time = started.elapsed();

    // A broken config: 400 with every problem as "file: key: message"; the old one serves.
    let broken = reload_config(B, kp, rp, true).replace(
        "region = \"us-east\", addresses = [\"192.0.2.20\"]",
        "region = \"mars\", addresses = [\"192.0.2.20\"]",
    ) + "\n[check.bad]\nkind = \"smtp\"\nport = 25\n";
    s.write_config(&broken);
    let r = post(&s, "/reload", None, "");
    assert_eq!(r.status, 400, "{}", r.body);
    let j = r.json();
    assert_eq!(
        j["error"],
        "config rejected, the old configuration keeps serving"
    );
    let errors: Vec<&str> = j["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(errors.len() >= 2, "{errors:?}");
    for e in &errors {
        assert!(e.contains("meridian.toml: "), "{e}");
    }
    assert!(
        errors.iter().any(
            |e| e.contains(r#"service["api.example.net."].endpoints[0].region"#)
                && e.contains("mars")
        ),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("check.bad.kind")),
        "{errors:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let m = s.ask("api.example.net.", RecordType::A);
    assert_eq!(
        a_records(&m),
        [A.parse::<IpAddr>().unwrap()],
        "the last good config still answers"
    );

    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let (sent, lost, wrong) = (
        sent.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    );
    eprintln!("20 reloads in {reload_time:?}; {sent} queries, {lost} lost, {wrong} wrong");
    assert!(sent >= 100, "only {sent} queries during the reloads");
    assert_eq!((lost, wrong), (0, 0), "of {sent} queries");

    // Probe state of a target that stayed is kept across every reload.
    let pay = target(&get(&s, "/status").json(), 1, 0, 0).clone();
    assert_eq!(
        (&pay["state"], &pay["since"]),
        (&serde_json::json!("up"), &pay_since),
        "{pay}"
    );

    // A removed target is no longer probed; a kept one still is.
    s.write_config(&reload_config(A, kp, rp, false));
    assert_eq!(post(&s, "/reload", None, "").status, 200);
    std::thread::sleep(Duration::from_millis(400)); // a probe may be in flight at the reload
    let (removed_hits, kept_hits) = (removed.hits(), kept.hits());
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(removed.hits(), removed_hits, "removed target still probed");
    assert!(kept.hits() >= kept_hits + 3, "kept target no longer probed");
    assert_eq!(
        get(&s, "/status").json()["services"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// Loads `url` in headless Chromium, lets its scripts run for up to 2 s of virtual time (the
/// page reloads itself after 5 s: a budget that reaches it dumps a page mid-navigation), and
/// returns the serialized DOM.
pub(crate) fn rendered_dom(browser: &Path, url: &str, profile: &Path) -> String {
    // Chromium has exited 0 without printing a page (mostly when the virtual time reached the
    // page's own reload; now and then under load): one more try before calling it a failure.
    let (status, dom, stderr) = match dump_dom(browser, url, profile) {
        (status, dom, _) if status.success() && dom.contains("</html>") => return dom,
        _ => dump_dom(browser, url, profile),
    };
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium failed twice ({status}):\n{stderr}\n{dom}"
    );
    dom
}

/// Runs headless Chromium once with `--dump-dom`: its exit status, stdout and stderr.
fn dump_dom(
    browser: &Path,
    url: &str,
    profile: &Path,
) -> (std::process::ExitStatus, String, String) {
    let _turn = crate::harness::chromium_turn();
    let child = std::process::Command::new(browser)
        .args(crate::harness::CHROMIUM_HEADLESS)
        .args(["--virtual-time-budget=2000", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (install the Debian package `chromium`)",
                browser.display()
            )
        });
    let pid = child.id();
    // Kill (by pid) a Chromium that hangs, so that the test fails instead of waiting forever.
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(90);
            while !done.load(Ordering::Relaxed) {
                if Instant::now() > deadline {
                    // SAFETY: kill(2) on the pid of the child we spawned and have not reaped.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let out = child.wait_with_output().expect("chromium output");
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Returns the start tag of the element carrying `attr` in `dom`.
pub(crate) fn tag_with<'a>(dom: &'a str, attr: &str) -> &'a str {
    let i = dom
        .find(attr)
        .unwrap_or_else(|| panic!("no {attr} in:\n{dom}"));
    let start = dom[..i].rfind('<').unwrap();
    let end = i + dom[i..].find('>').unwrap();
    &dom[start..=end]
}

#[test]
fn status_page_renders_health_colours_and_shows_a_drained_region_in_headless_chromium() {
    let Some(browser) = tool(
        "status page test",
        &["chromium", "chromium-browser"],
        "chromium",
    ) else {
        return;
    };
    let backend = HttpStub::start(200);
    let s = Server::start(&cfg(
        "",
        &format!(
            "{}[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
             endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.1\"] }}, \
                          {{ region = \"eu-west\", addresses = [\"127.0.0.2\"] }}]\n",
            check("web", backend.addr.port())
        ),
    ));
    wait_ready(&s);
    assert_eq!(post(&s, "/regions/eu-west/drain", None, "").status, 200);
    let page = get(&s, "/");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        !page.body.contains("http://")
            && !page.body.contains("https://")
            && !page.body.contains("src="),
        "the page must not load external assets"
    );

    let profile = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let dom = rendered_dom(&browser, &format!("http://{}/", s.admin()), profile.path());
    eprintln!(
        "chromium rendered the status page in {:?}",
        started.elapsed()
    );
    assert!(
        tag_with(&dom, "<body").contains("data-loaded=\"true\""),
        "the page did not render:\n{dom}"
    );
    assert!(dom.contains("api.example.net."), "{dom}");
    // The service card's region rows (the map has its own `data-region` groups).
    let eu = tag_with(&dom, "data-region=\"eu-west\" data-drained");
    assert!(
        eu.contains("class=\"region drained") && eu.contains("data-drained=\"true\""),
        "{eu}"
    );
    assert!(dom.contains(">DRAINED<"), "{dom}");
    let us = tag_with(&dom, "data-region=\"us-east\" data-drained");
    assert!(
        us.contains("data-drained=\"false\"") && !us.contains("drained "),
        "{us}"
    );
    // Targets are coloured by state: 127.0.0.1 up, 127.0.0.2 (nothing listening) down.
    assert!(tag_with(&dom, ">127.0.0.1<").contains("addr up"), "{dom}");
    let t2 = tag_with(&dom, ">127.0.0.2<");
    assert!(t2.contains("addr down forced"), "{t2}");
}

#[test]
fn webhook_receives_each_state_change_with_services_and_retries_a_failed_post() {
    let backend = HttpStub::start(200);
    let hook = HttpStub::start(200);
    hook.fail_next(1);
    let s = Server::start(&cfg(
        "nsid = \"test-ns-1\"",
        &format!(
            "[notify]\nwebhook_url = \"http://{}/hook\"\ntimeout = \"1s\"\nretries = 3\n\
             {}[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
             endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.1\"] }}]\n",
            hook.addr,
            check("web", backend.addr.port())
        ),
    ));
    wait_ready(&s);
    // Up first: on a busy machine the first probe may be starved (our own error, which leaves
    // the target unknown), and this test is about a change from up to down.
    eventually(
        "the webhook to receive the first up transition",
        Duration::from_secs(15),
        || {
            hook.requests()
                .iter()
                .any(|(_, b)| b.contains("\"to\":\"up\""))
        },
    );
    let started = Instant::now();
    backend.set_status(503);
    let to_down = || {
        hook.requests()
            .into_iter()
            .filter_map(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .find(|j| j["to"] == "down")
    };
    eventually(
        "the webhook to receive the down transition",
        Duration::from_secs(15),
        || to_down().is_some(),
    );
    eprintln!(
        "down notification received {:?} after the backend failed",
        started.elapsed()
    );
    let n = to_down().unwrap();
    assert_eq!(n["event"], "target_state_changed");
    assert_eq!(n["instance"], "test-ns-1");
    assert_eq!(n["services"], serde_json::json!(["api.example.net."]));
    assert_eq!(n["address"], "127.0.0.1");
    assert_eq!(n["check"], "web");
    assert_eq!(n["regions"], serde_json::json!(["us-east"]));
    assert_eq!(
        (n["from"].as_str(), n["to"].as_str()),
        (Some("up"), Some("down"))
    );
    assert!(n["reason"].as_str().unwrap().contains("503"), "{n}");
    assert!(n["at"].as_str().unwrap().ends_with('Z'), "{n}");

    let requests = hook.requests();
    assert!(
        requests
            .iter()
            .all(|(line, _)| line.starts_with("POST /hook ")),
        "{requests:?}"
    );
    // The first POST got a 500: the same notification was posted again.
    let bodies: Vec<&String> = requests.iter().map(|(_, b)| b).collect();
    assert!(
        bodies
            .iter()
            .enumerate()
            .any(|(i, b)| bodies[i + 1..].contains(b)),
        "no retry seen: {requests:?}"
    );

    // And back up: another notification.
    backend.set_status(200);
    eventually(
        "the webhook to receive the up transition",
        Duration::from_secs(15),
        || {
            hook.requests()
                .iter()
                .any(|(_, b)| b.contains("\"from\":\"down\",\"to\":\"up\""))
        },
    );
}

#[test]
fn explain_returns_the_decision_trace_as_json_and_rejects_bad_parameters() {
    let body = "geoip = \"{GEO}\"";
    let services = "[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\n\
                    endpoints = [{ region = \"us-east\", addresses = [\"192.0.2.1\"] }, \
                                 { region = \"eu-west\", addresses = [\"192.0.2.2\"] }]\n";
    let s = Server::start(&cfg(body, services));
    // The widest-scope map is built in the background: wait for it, so the scope is known.
    assert!(
        s.wait_log("ecs scope maps ready", Duration::from_secs(60)),
        "{}",
        s.log_text()
    );
    let r = get(&s, "/explain?name=api.example.net&type=A&client=2.16.0.1");
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["client"]["country"], "DE", "{j}");
    assert_eq!(j["order"][0]["region"], "eu-west", "{j}");
    assert_eq!(j["decision"]["outcome"]["addresses"][0], "192.0.2.2", "{j}");
    // Frankfurt's /15 and London's 2.18.0.0/16 order the two regions alike: one /13.
    assert_eq!(j["decision"]["scope"], 13, "{j}");
    assert_eq!(j["client"]["scope_map"], true, "{j}");
    assert_eq!(j["client"]["located_by"], "the address itself", "{j}");
    // After a drain the live health view is used.
    let r = post(&s, "/regions/eu-west/drain", None, "");
    assert_eq!(r.status, 200, "{}", r.body);
    let j = get(&s, "/explain?name=api.example.net.&client=2.16.0.1").json();
    assert_eq!(j["decision"]["outcome"]["addresses"][0], "192.0.2.1", "{j}");
    for (path, status) in [
        ("/explain?name=api.example.net", 400),
        ("/explain?name=api.example.net&client=not-an-ip", 400),
        (
            "/explain?name=api.example.net&client=192.0.2.1&type=MX",
            400,
        ),
        ("/explain?name=mail.example.net&client=192.0.2.1", 404),
    ] {
        let r = get(&s, path);
        assert_eq!(r.status, status, "{path}: {}", r.body);
        assert!(
            r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}"
        );
    }
}

#[test]
fn a_target_drain_withdraws_one_address_everywhere_shows_as_forced_and_survives_a_restart() {
    let s = start_with(&drain_config(), &[("admin.token", TOKEN)]);
    let both: Vec<IpAddr> = vec![
        "192.0.2.10".parse().unwrap(),
        "198.51.100.10".parse().unwrap(),
    ];
    let eu_only: Vec<IpAddr> = vec!["198.51.100.10".parse().unwrap()];
    assert_eq!(cdn_answers(&s), both);
    // Without the token: 401 and nothing changes.
    assert_eq!(post(&s, "/targets/192.0.2.10/drain", None, "").status, 401);
    assert_eq!(cdn_answers(&s), both);
    // Not an IP: 400; an address no endpoint has: 404; nothing changes.
    let r = post(&s, "/targets/not-an-ip/drain", Some(TOKEN), "");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = post(&s, "/targets/192.0.2.99/drain", Some(TOKEN), "");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.json()["error"].as_str().unwrap().contains("192.0.2.99"),
        "{}",
        r.body
    );
    let r = post(&s, "/targets/192.0.2.10/bogus", Some(TOKEN), "");
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(get(&s, "/targets/192.0.2.10/drain").status, 405);
    assert_eq!(
        get(&s, "/status").json()["drained_targets"],
        serde_json::json!([])
    );

    let r = post(
        &s,
        "/targets/192.0.2.10/drain",
        Some(TOKEN),
        r#"{"reason": "bad disk"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({"target": "192.0.2.10", "drained": true, "changed": true})
    );
    assert_eq!(cdn_answers(&s), eu_only, "withdrawn at once");
    let j = get(&s, "/status").json();
    assert_eq!(j["drained_targets"], serde_json::json!(["192.0.2.10"]));
    let us = &j["services"][0]["regions"][0];
    assert_eq!(us["drained"], false, "the region itself is not drained");
    assert_eq!(us["targets"][0]["forced"], true);
    assert_eq!(us["targets"][0]["usable"], false);
    let m = scrape(&s);
    let up = [
        ("service", "cdn.example.net."),
        ("region", "us-east"),
        ("address", "192.0.2.10"),
    ];
    assert_eq!(value(&m, TARGET_UP, &up), Some(1.0), "not probed: up");
    assert_eq!(value(&m, TARGET_DRAINED, &up), Some(1.0));

    // A restart on the same directory keeps it (the state file), and undrain restores it.
    let dir = s.stop();
    let path = dir.path().join("meridian.toml");
    let s = Server::start_in(dir, &path);
    assert_eq!(cdn_answers(&s), eu_only);
    let r = post(&s, "/targets/192.0.2.10/undrain", Some(TOKEN), "");
    assert_eq!(r.json()["changed"], true, "{}", r.body);
    assert_eq!(cdn_answers(&s), both);
}
