//! GeoIP routing seen from outside: ECS (RFC 7871) and resolver addresses answered by region,
//! with the scope a resolver may cache the answer for.

use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{RData, RecordType};

use crate::harness::{Server, ZONE, add_option, ecs, query};

/// Regions on four continents, one service per policy that depends on location.
pub const REGIONS: &str = r#"
[region.us-east]
latitude = 39.0
longitude = -77.5
[region.eu-west]
latitude = 53.3
longitude = -6.3
[region.ap-northeast]
latitude = 35.7
longitude = 139.7
[region.sa-east]
latitude = -23.5
longitude = -46.6
"#;

pub const SERVICES: &str = r#"
[nets]
"10.20.0.0/16" = "eu-west"
"198.51.100.128/25" = "ap-northeast"

[[service]]
name = "api.example.net."
policy = "nearest"
endpoints = [
  { region = "us-east",      addresses = ["192.0.2.1"] },
  { region = "eu-west",      addresses = ["192.0.2.2"] },
  { region = "ap-northeast", addresses = ["192.0.2.3"] },
  { region = "sa-east",      addresses = ["192.0.2.4"] },
]

[[service]]
name = "geo.example.net."
policy = "geo"
geo = { "DE" = ["eu-west", "us-east"], "AS" = ["ap-northeast"], default = ["us-east"] }
endpoints = [
  { region = "us-east",      addresses = ["2001:db8:10::1"] },
  { region = "eu-west",      addresses = ["2001:db8:20::1"] },
  { region = "ap-northeast", addresses = ["2001:db8:30::1"] },
]

[[service]]
name = "pay.example.net."
policy = "failover"
endpoints = [
  { region = "us-east", addresses = ["192.0.2.21"], priority = 1 },
  { region = "eu-west", addresses = ["192.0.2.22"], priority = 2 },
]

[[service]]
name = "noecs.example.net."
policy = "nearest"
ecs = false
endpoints = [
  { region = "us-east", addresses = ["192.0.2.31"] },
  { region = "eu-west", addresses = ["192.0.2.32"] },
]
"#;

/// The log line of a finished scope-map build.
const MAPS_READY: &str = "ecs scope maps ready";

/// Starts a server on the sample database and waits until its widest-scope maps are built
/// (milliseconds for the sample; the bound is generous for a loaded machine).
fn server() -> Server {
    server_with("")
}

/// Like [`server`], with extra `[server]` keys.
fn server_with(server_keys: &str) -> Server {
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\ngeoip = \"{{GEO}}\"\n{server_keys}\n{ZONE}{REGIONS}{SERVICES}"
    ));
    assert!(
        s.wait_log(MAPS_READY, Duration::from_secs(60)),
        "no scope maps:\n{}",
        s.log_text()
    );
    s
}

/// Asks `name`/`rtype` with an ECS option for `subnet`/`source` over UDP and TCP; returns the
/// answers' addresses (the same over both) and the echoed scope.
fn ask_ecs(
    s: &Server,
    name: &str,
    rtype: RecordType,
    subnet: &str,
    source: u8,
) -> (Vec<IpAddr>, u8) {
    let mut m = query(name, rtype);
    add_option(&mut m, ecs(subnet, source));
    let [u, t] = s.both(&m);
    let addrs = |r: &Message| -> Vec<IpAddr> {
        r.answers
            .iter()
            .filter_map(|a| match &a.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    };
    let scope = |r: &Message| match r.edns.as_ref().and_then(|e| e.option(EdnsCode::Subnet)) {
        Some(EdnsOption::Subnet(c)) => {
            assert_eq!(c.source_prefix(), source, "source prefix echoed");
            assert_eq!(
                c.addr(),
                subnet.parse::<IpAddr>().unwrap(),
                "address echoed"
            );
            c.scope_prefix()
        }
        other => panic!("no ECS in the response: {other:?}"),
    };
    assert_eq!(addrs(&u), addrs(&t), "UDP and TCP agree");
    assert_eq!(scope(&u), scope(&t));
    (addrs(&u), scope(&u))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn european_american_and_asian_clients_get_their_nearest_region() {
    let s = server();
    let cases = [
        // (client subnet, expected address, expected scope)
        ("2.16.0.0", "192.0.2.2", 15), // Frankfurt -> eu-west; /13 split by 2.18.0.0/16
        ("24.0.0.0", "192.0.2.1", 12), // Philadelphia -> us-east
        ("126.0.0.0", "192.0.2.3", 8), // Osaka -> ap-northeast
        ("177.32.0.0", "192.0.2.4", 11), // São Paulo -> sa-east
        ("41.0.0.0", "192.0.2.4", 11), // Johannesburg -> sa-east (7,400 km; Dublin is 9,600)
    ];
    for (subnet, want, scope) in cases {
        let (addrs, got_scope) = ask_ecs(&s, "api.example.net.", RecordType::A, subnet, 24);
        assert_eq!(addrs, vec![ip(want)], "{subnet}");
        assert_eq!(
            got_scope, scope,
            "{subnet}: scope is the matched database network"
        );
    }
}

#[test]
fn rfc7871_scope_is_narrowed_where_a_nets_override_splits_the_source_subnet() {
    let s = server();
    // 198.51.100.0/24 is Berlin in the database, but its upper half is sent to ap-northeast.
    let (addrs, scope) = ask_ecs(&s, "api.example.net.", RecordType::A, "198.51.100.0", 24);
    assert_eq!(addrs, vec![ip("192.0.2.2")]);
    assert_eq!(
        scope, 25,
        "longer than the source: the /24 itself is split (RFC 7871 §7.2.1)"
    );
    let (addrs, scope) = ask_ecs(&s, "api.example.net.", RecordType::A, "198.51.100.128", 25);
    assert_eq!(addrs, vec![ip("192.0.2.3")]);
    assert_eq!(scope, 25);
    // A private network mapped by [nets].
    let (addrs, scope) = ask_ecs(&s, "api.example.net.", RecordType::A, "10.20.30.0", 24);
    assert_eq!(addrs, vec![ip("192.0.2.2")]);
    assert_eq!(scope, 16);
}

#[test]
fn geo_policy_answers_aaaa_by_country_then_continent() {
    let s = server();
    let (addrs, scope) = ask_ecs(&s, "geo.example.net.", RecordType::AAAA, "2a01:4f8::", 48);
    assert_eq!(addrs, vec![ip("2001:db8:20::1")], "DE");
    assert_eq!(scope, 32);
    let (addrs, _) = ask_ecs(&s, "geo.example.net.", RecordType::AAAA, "2406:3003::", 48);
    assert_eq!(
        addrs,
        vec![ip("2001:db8:30::1")],
        "SG matches the AS continent entry"
    );
    let (addrs, scope) = ask_ecs(&s, "geo.example.net.", RecordType::AAAA, "2804:14c::", 48);
    assert_eq!(addrs, vec![ip("2001:db8:10::1")], "BR falls to the default");
    // Issue 13: the widest scope. Every network but the DE and AS ones falls to the default,
    // and so do unknown addresses: 2800::/7 holds neither 2406:3003::/32 (SG) nor
    // 2a01:4f8::/32 (DE), 2800::/6 holds the latter.
    assert_eq!(scope, 7, "wider than the matched /31 and the source /48");
}

#[test]
fn rfc7871_scope_zero_when_the_answer_does_not_depend_on_location() {
    let s = server();
    for subnet in ["2.16.0.0", "126.0.0.0"] {
        let (addrs, scope) = ask_ecs(&s, "pay.example.net.", RecordType::A, subnet, 24);
        assert_eq!(addrs, vec![ip("192.0.2.21")]);
        assert_eq!(scope, 0);
    }
}

#[test]
fn rfc7871_source_zero_means_use_the_resolver_address() {
    let s = server();
    // The resolver is 127.0.0.1: no location, so config order (us-east first).
    let (addrs, scope) = ask_ecs(&s, "api.example.net.", RecordType::A, "0.0.0.0", 0);
    assert_eq!(addrs, vec![ip("192.0.2.1")]);
    assert_eq!(scope, 0);
}

#[test]
fn a_service_with_ecs_off_ignores_the_option_and_echoes_scope_zero() {
    let s = server();
    let (addrs, scope) = ask_ecs(&s, "noecs.example.net.", RecordType::A, "2.16.0.0", 24);
    assert_eq!(
        addrs,
        vec![ip("192.0.2.31")],
        "resolver (loopback) location: config order"
    );
    assert_eq!(scope, 0);
}

#[test]
fn clients_without_location_get_config_order() {
    let s = server();
    let r = s.ask("api.example.net.", RecordType::A);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].data, RData::A("192.0.2.1".parse().unwrap()));
    assert_eq!(r.answers[0].ttl, 30, "default service TTL");
}

#[test]
fn a_family_with_no_targets_is_nodata_with_the_soa() {
    let s = server();
    for r in s.both(&query("api.example.net.", RecordType::AAAA)) {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    }
    // and other types at a service name are NODATA, not NXDOMAIN
    let r = s.ask("api.example.net.", RecordType::TXT);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
}

#[test]
fn rfc7871_malformed_client_subnet_is_formerr() {
    let s = server();
    // Source /24 but four address octets: too many (RFC 7871 §6).
    let mut m = query("api.example.net.", RecordType::A);
    add_option(
        &mut m,
        EdnsOption::Unknown(8, vec![0, 1, 24, 0, 192, 0, 2, 1]),
    );
    for r in s.both(&m) {
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    }
}

#[test]
fn explain_cli_shows_location_order_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        crate::harness::config(&format!(
            "[server]\ndns_listen = [\"127.0.0.1:0\"]\ngeoip = \"{{GEO}}\"\n{ZONE}{REGIONS}{SERVICES}"
        )),
    )
    .unwrap();
    let (code, out, err) = crate::harness::run(&[
        "explain",
        "--config",
        path.to_str().unwrap(),
        "--client",
        "2.16.0.1",
        "api.example.net",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("country DE"), "{out}");
    assert!(out.contains("1. eu-west"), "{out}");
    assert!(out.contains("answer: 192.0.2.2"), "{out}");
    assert!(out.contains("scope /15"), "{out}");
    let (code, _, err) = crate::harness::run(&[
        "explain",
        "--config",
        path.to_str().unwrap(),
        "--client",
        "2.16.0.1",
        "mail.example.net",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("not a service name"), "{err}");
}

#[test]
fn issue_13_ipv4_mapped_and_compatible_ecs_scope_is_96_plus_the_ipv4_scope() {
    let s = server();
    let (_, v4_scope) = ask_ecs(&s, "api.example.net.", RecordType::A, "2.16.0.0", 24);
    assert_eq!(v4_scope, 15);
    for subnet in ["::ffff:2.16.0.0", "::2.16.0.0"] {
        let (addrs, scope) = ask_ecs(&s, "api.example.net.", RecordType::A, subnet, 120);
        assert_eq!(
            addrs,
            vec![ip("192.0.2.2")],
            "{subnet}: Frankfurt -> eu-west"
        );
        assert_eq!(scope, 96 + 15, "{subnet}: not the IPv4 /15");
    }
}

#[test]
fn issue_13_nat64_6to4_and_teredo_clients_are_located_by_the_embedded_ipv4_address() {
    let s = server_with("nat64_prefixes = [\"2001:db8:100::/40\"]");
    let cases = [
        // (subnet, source, scope): 2.16.0.0/15 is Frankfurt -> eu-west.
        ("64:ff9b::2.16.0.0", 120, 96 + 15),
        ("2002:210::", 32, 16 + 15),
        // RFC 4380: the client's address inverted: !2.16.0.0 = 253.239.255.255.
        ("2001:0:4136:e378:8000:63bf:fdef:ffff", 128, 96 + 15),
        // RFC 6052 /40: the IPv4 address in bits 40..64 (and 72..80).
        ("2001:db8:102:1000::", 64, 40 + 15),
    ];
    for (subnet, source, want) in cases {
        let (addrs, scope) = ask_ecs(&s, "api.example.net.", RecordType::A, subnet, source);
        assert_eq!(addrs, vec![ip("192.0.2.2")], "{subnet}");
        assert_eq!(scope, want, "{subnet}");
    }
    // The resolver's own address is not involved: nothing embeds 127.0.0.1 here.
    let (addrs, _) = ask_ecs(&s, "api.example.net.", RecordType::A, "2002:7f00::", 24);
    assert_eq!(
        addrs,
        vec![ip("192.0.2.1")],
        "2002:7f00::/24 embeds 127.0.0.0/8: no location"
    );
}

#[test]
fn issue_13_ipv6_transition_false_locates_the_ipv6_address_itself() {
    let s = server_with("ipv6_transition = false");
    for (subnet, source) in [
        ("64:ff9b::2.16.0.0", 120),
        ("2001:0:4136:e378:8000:63bf:fdef:ffff", 128),
    ] {
        let (addrs, _) = ask_ecs(&s, "api.example.net.", RecordType::A, subnet, source);
        assert_eq!(
            addrs,
            vec![ip("192.0.2.1")],
            "{subnet}: no location, config order"
        );
    }
    // IPv4-mapped stays on.
    let (addrs, scope) = ask_ecs(
        &s,
        "api.example.net.",
        RecordType::A,
        "::ffff:2.16.0.0",
        120,
    );
    assert_eq!(addrs, vec![ip("192.0.2.2")]);
    assert_eq!(scope, 111);
}

#[test]
fn issue_13_scope_maps_are_rebuilt_on_reload() {
    let s = server();
    s.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while s.log_text().matches(MAPS_READY).count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "not rebuilt:\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (addrs, scope) = ask_ecs(&s, "geo.example.net.", RecordType::AAAA, "2804:14c::", 48);
    assert_eq!(addrs, vec![ip("2001:db8:10::1")]);
    assert_eq!(scope, 7);
}

#[test]
fn issue_13_explain_says_which_rule_located_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        crate::harness::config(&format!(
            "[server]\ndns_listen = [\"127.0.0.1:0\"]\ngeoip = \"{{GEO}}\"\n{ZONE}{REGIONS}{SERVICES}"
        )),
    )
    .unwrap();
    let explain = |client: &str| {
        let (code, out, err) = crate::harness::run(&[
            "explain",
            "--config",
            path.to_str().unwrap(),
            "--client",
            client,
            "api.example.net",
        ]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let out = explain("2002:210::1");
    assert!(
        out.contains("located by 6to4 2002::/16 as 2.16.0.0"),
        "{out}"
    );
    assert!(out.contains("answer: 192.0.2.2"), "{out}");
    assert!(
        out.contains("scope /31 (widest on which the region order is the same)"),
        "{out}"
    );
    let out = explain("2001:0:4136:e378:8000:63bf:fdef:ffff");
    assert!(
        out.contains("located by Teredo (inverted) 2001::/32 as 2.16.0.0"),
        "{out}"
    );
    let out = explain("64:ff9b::2.16.0.1");
    assert!(
        out.contains("located by NAT64 64:ff9b::/96 as 2.16.0.1"),
        "{out}"
    );
    let out = explain("2.16.0.1");
    assert!(!out.contains("located by"), "{out}");
}
