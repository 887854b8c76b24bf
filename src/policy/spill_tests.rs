//! Spill-over in the policy (issue 16): which clients move, the ECS scope, down beats load,
//! drains, `weighted` by free capacity, and the explanation.

use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::geo::{Code, LocationSource, Via};
use crate::health::RegionLoad;

const CONFIG: &str = r#"
[[zone]]
origin = "example.net."
file = "Cargo.toml"

[region.us-east]
latitude = 38.9
longitude = -77.4
[region.eu-west]
latitude = 53.3
longitude = -6.3
[region.eu-central]
latitude = 50.1
longitude = 8.7

[check.web]
kind = "http"
port = 80
load = { header = "X-Load" }
"#;

const EU_WEST: &str = "198.51.100.1";
const EU_CENTRAL: &str = "198.51.100.2";
const US_EAST: &str = "192.0.2.1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn compile(policy: &str, extra: &str) -> CompiledService {
    let text = format!(
        r#"{CONFIG}
[[service]]
name = "api.example.net."
policy = "{policy}"
check = "web"
{extra}
endpoints = [
  {{ region = "eu-west", addresses = ["198.51.100.1"], priority = 1 }},
  {{ region = "eu-central", addresses = ["198.51.100.2"], priority = 2 }},
  {{ region = "us-east", addresses = ["192.0.2.1"], priority = 3 }},
]
"#
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("spill-test.toml");
    let config = crate::config::parse_str(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    CompiledService::new(&config.services[0], &config)
}

/// Health with loads: (region, load, fraction, free) per endpoint in config order.
#[derive(Default)]
struct Loaded {
    down: Vec<IpAddr>,
    drained: Vec<String>,
    load: Option<ServiceLoad>,
}

impl Loaded {
    fn new(regions: &[(&str, f64, f64, Option<f64>)]) -> Self {
        let regions: Vec<RegionLoad> = regions
            .iter()
            .map(|&(r, load, fraction, free)| RegionLoad {
                region: r.into(),
                has_load: true,
                load: Some(load),
                high_watermark: 0.8,
                spill_fraction: fraction,
                free,
            })
            .collect();
        Loaded {
            load: Some(ServiceLoad {
                regions: regions.into(),
            }),
            ..Loaded::default()
        }
    }

    /// eu-west at `load` spilling `fraction`; the others idle.
    fn eu_west(load: f64, fraction: f64) -> Self {
        Loaded::new(&[
            ("eu-west", load, fraction, None),
            ("eu-central", 0.2, 0.0, None),
            ("us-east", 0.1, 0.0, None),
        ])
    }
}

impl HealthSource for Loaded {
    fn state(&self, address: IpAddr, check: Option<&str>) -> State {
        match check {
            Some(_) if self.down.contains(&address) => State::Down,
            _ => State::Up,
        }
    }

    fn is_drained(&self, region: &str) -> bool {
        self.drained.iter().any(|d| d == region)
    }

    fn service_load(&self, _service: &str) -> Option<&ServiceLoad> {
        self.load.as_ref()
    }
}

/// A client in Dublin at the `i`-th /24 of 81.0.0.0/8, its network a /16 in the database.
fn dubliner(i: u32) -> Located {
    let addr = IpAddr::from(std::net::Ipv4Addr::from(0x5100_0000 + (i << 8) + 7));
    Located {
        ip: addr,
        location: Some(crate::geo::Location {
            latitude: Some(53.35),
            longitude: Some(-6.26),
            country: Code::new("IE"),
            continent: Code::new("EU"),
        }),
        region: None,
        source: LocationSource::Database,
        prefix_len: 16,
        via: Via::direct(addr),
    }
}

fn decide(svc: &CompiledService, located: &Located, health: &Loaded) -> Decision {
    let client = Client {
        located,
        ecs_source_prefix: Some(24),
    };
    let d = svc.decide_with(&client, Family::V4, health, 0);
    let e = svc.explain_with(&client, Family::V4, health, 0);
    assert_eq!(e.decision, d, "explain disagrees with decide:\n{e}");
    d
}

fn first(d: &Decision) -> IpAddr {
    match &d.outcome {
        Outcome::Addresses(a) => a[0],
        other => panic!("expected addresses, got {other:?}"),
    }
}

/// Answers by address over `n` client subnets.
fn shares(svc: &CompiledService, health: &Loaded, n: u32) -> HashMap<IpAddr, u32> {
    let mut h = HashMap::new();
    for i in 0..n {
        *h.entry(first(&decide(svc, &dubliner(i), health)))
            .or_insert(0) += 1;
    }
    h
}

#[test]
fn issue_16_nearest_moves_the_fraction_of_subnets_to_the_next_region() {
    let svc = compile("nearest", "");
    let n = 4000;
    for fraction in [0.0, 0.14, 0.3, 0.6] {
        let h = shares(&svc, &Loaded::eu_west(0.93, fraction), n);
        let moved = f64::from(h.get(&ip(EU_CENTRAL)).copied().unwrap_or(0)) / f64::from(n);
        println!("fraction {fraction}: {h:?}");
        assert!(
            (moved - fraction).abs() < 0.03,
            "moved {moved} at {fraction}"
        );
        // The next region of a Dubliner is Frankfurt, never the farther us-east.
        assert!(!h.contains_key(&ip(US_EAST)), "{h:?}");
    }
}

#[test]
fn issue_16_the_same_subnets_move_and_a_larger_fraction_only_adds_some() {
    let svc = compile("nearest", "");
    let at = |f: f64| -> Vec<bool> {
        (0..2000)
            .map(|i| first(&decide(&svc, &dubliner(i), &Loaded::eu_west(0.9, f))) == ip(EU_CENTRAL))
            .collect()
    };
    let (small, large) = (at(0.2), at(0.4));
    assert_eq!(small, at(0.2), "a subnet's answer is stable");
    for (s, l) in small.iter().zip(&large) {
        assert!(!s || *l, "a subnet moved at 0.2 came back at 0.4");
    }
    // Another host of the same /24 gets the same answer as the first.
    for i in 0..500 {
        let mut other = dubliner(i);
        if let IpAddr::V4(v4) = other.ip {
            other.ip = IpAddr::from(std::net::Ipv4Addr::from(u32::from(v4) ^ 0xff));
        }
        other.via = Via::direct(other.ip);
        let h = Loaded::eu_west(0.9, 0.3);
        assert_eq!(
            first(&decide(&svc, &dubliner(i), &h)),
            first(&decide(&svc, &other, &h))
        );
    }
}

#[test]
fn issue_16_a_spilling_region_narrows_the_ecs_scope_to_the_hash_subnet() {
    let svc = compile("nearest", "");
    // Without spill the scope is the located network (/16 here).
    assert_eq!(
        decide(&svc, &dubliner(1), &Loaded::eu_west(0.5, 0.0)).scope,
        16
    );
    // With spill both the moved and the kept clients are scoped to their /24: a cached
    // answer is never shared by a moved and a kept subnet.
    let h = Loaded::eu_west(0.93, 0.5);
    let mut seen = [false, false];
    for i in 0..64 {
        let d = decide(&svc, &dubliner(i), &h);
        assert_eq!(d.scope, 24);
        seen[usize::from(first(&d) == ip(EU_CENTRAL))] = true;
    }
    assert_eq!(seen, [true, true]);
    // failover answers do not depend on the location, but with spill they do.
    let svc = compile("failover", "");
    assert_eq!(
        decide(&svc, &dubliner(1), &Loaded::eu_west(0.5, 0.0)).scope,
        0
    );
    assert_eq!(
        decide(&svc, &dubliner(1), &Loaded::eu_west(0.93, 0.5)).scope,
        24
    );
    // A spilling region the walk never reached does not narrow it.
    let svc = compile("failover", "");
    let h = Loaded::new(&[
        ("eu-west", 0.5, 0.0, None),
        ("eu-central", 0.2, 0.0, None),
        ("us-east", 0.95, 0.5, None),
    ]);
    assert_eq!(decide(&svc, &dubliner(1), &h).scope, 0);
}

#[test]
fn issue_16_down_beats_load_and_a_spilled_client_still_gets_an_answer() {
    let svc = compile("failover", "");
    let client = (0..100)
        .map(dubliner)
        .find(|c| first(&decide(&svc, c, &Loaded::eu_west(0.95, 0.5))) == ip(EU_CENTRAL))
        .expect("some subnet spills at 0.5");
    // Its next region down: the one after it.
    let mut h = Loaded::eu_west(0.95, 0.5);
    h.down = vec![ip(EU_CENTRAL)];
    assert_eq!(first(&decide(&svc, &client, &h)), ip(US_EAST));
    // Every other region down or drained: back to the loaded region, not to fail-open.
    h.down = vec![ip(EU_CENTRAL), ip(US_EAST)];
    assert_eq!(first(&decide(&svc, &client, &h)), ip(EU_WEST));
    h.down = vec![ip(EU_CENTRAL)];
    h.drained = vec!["us-east".into()];
    assert_eq!(first(&decide(&svc, &client, &h)), ip(EU_WEST));
    // The loaded region down: nobody gets it, whatever the hash.
    let mut h = Loaded::eu_west(0.95, 0.5);
    h.down = vec![ip(EU_WEST)];
    let s = shares(&svc, &h, 200);
    assert_eq!(s.get(&ip(EU_CENTRAL)), Some(&200), "{s:?}");
    // A drained spilling region is skipped as today.
    let mut h = Loaded::eu_west(0.95, 0.5);
    h.drained = vec!["eu-west".into()];
    assert_eq!(shares(&svc, &h, 200).get(&ip(EU_CENTRAL)), Some(&200));
}

#[test]
fn issue_16_geo_spills_to_the_next_region_of_the_map() {
    let svc = compile(
        "geo",
        r#"geo = { "IE" = ["eu-west", "us-east"], default = ["us-east"] }"#,
    );
    let h = shares(&svc, &Loaded::eu_west(0.9, 0.25), 4000);
    let moved = f64::from(h[&ip(US_EAST)]) / 4000.0;
    assert!((moved - 0.25).abs() < 0.03, "{h:?}");
    assert!(!h.contains_key(&ip(EU_CENTRAL)), "not in the map: {h:?}");
}

#[test]
fn issue_16_weighted_scales_each_weight_by_free_capacity() {
    let svc = compile("weighted", "");
    let h = Loaded::new(&[
        ("eu-west", 0.75, 0.0, Some(0.25)),
        ("eu-central", 0.0, 0.0, Some(1.0)),
        ("us-east", 1.0, 0.0, Some(0.0)),
    ]);
    let client = dubliner(0);
    let mut counts: HashMap<IpAddr, u32> = HashMap::new();
    for k in 0..5000u64 {
        let c = Client {
            located: &client,
            ecs_source_prefix: None,
        };
        let d = svc.decide_with(&c, Family::V4, &h, geometry::splitmix64(k));
        *counts.entry(first(&d)).or_insert(0) += 1;
    }
    let west = f64::from(counts[&ip(EU_WEST)]) / 5000.0;
    assert!((west - 0.2).abs() < 0.03, "{counts:?}");
    assert!(
        !counts.contains_key(&ip(US_EAST)),
        "a full region drawn: {counts:?}"
    );
    // A full region is still drawn when nothing with free capacity is usable.
    let mut h = h;
    h.down = vec![ip(EU_WEST), ip(EU_CENTRAL)];
    let c = Client {
        located: &client,
        ecs_source_prefix: None,
    };
    assert_eq!(first(&svc.decide_with(&c, Family::V4, &h, 7)), ip(US_EAST));
}

#[test]
fn issue_16_explain_says_when_and_why_a_client_was_spilled() {
    let svc = compile("nearest", "");
    let h = Loaded::eu_west(0.93, 0.14);
    let explain = |c: &Located| {
        let client = Client {
            located: c,
            ecs_source_prefix: Some(24),
        };
        svc.explain_with(&client, Family::V4, &h, 0)
    };
    let (moved, kept) = {
        let mut moved = None;
        let mut kept = None;
        for i in 0..200 {
            let e = explain(&dubliner(i));
            if first(&e.decision) == ip(EU_CENTRAL) {
                moved.get_or_insert(e);
            } else {
                kept.get_or_insert(e);
            }
        }
        (moved.unwrap(), kept.unwrap())
    };
    let text = moved.to_string();
    println!("{text}");
    assert!(
        text.contains("eu-west at 0.93 > 0.80, 14 % of its clients moved; this client's hash 0.")
            && text.contains(" < 0.14: answered with its next usable region"),
        "{text}"
    );
    let text = kept.to_string();
    assert!(text.contains(">= 0.14: stays"), "{text}");
    assert!(text.contains("spill hash 0."), "{text}");
    let json = serde_json::to_value(&moved).unwrap();
    let hash = json["spill_hash"].as_f64().unwrap();
    assert!(hash < 0.14, "{json}");
    assert_eq!(json["passes"][0]["steps"][0]["client_hash"], hash);
    let step = &json["passes"][0]["steps"][0];
    assert_eq!(step["step"], "spill");
    assert_eq!(step["moved"], true);
    assert_eq!(step["fraction"], 0.14);
}

#[test]
fn issue_16_ipv6_clients_hash_and_scope_by_their_56() {
    let svc = compile("nearest", "");
    let h = Loaded::eu_west(0.93, 0.5);
    let v6 = |i: u16, host: u16| -> Located {
        let addr: IpAddr = format!("2a02:c7f:{i:x}:{host:x}::1").parse().unwrap();
        Located {
            ip: addr,
            via: Via::direct(addr),
            prefix_len: 32,
            ..dubliner(0)
        }
    };
    let mut moved = 0;
    for i in 0..400 {
        let d = decide(&svc, &v6(i, 0), &h);
        assert_eq!(d.scope, 56, "scope of a spilling answer to an IPv6 client");
        // Another /64 of the same /56 gets the same answer.
        assert_eq!(first(&d), first(&decide(&svc, &v6(i, 0x7f), &h)));
        moved += usize::from(first(&d) == ip(EU_CENTRAL));
    }
    assert!(
        (150..250).contains(&moved),
        "{moved} of 400 /56s moved at 0.5"
    );
}

#[test]
fn issue_16_a_client_spilled_from_many_regions_keeps_their_order() {
    // Ten regions in failover order; the first nine spill 90 % of their clients.
    let mut text = String::from(CONFIG);
    let mut endpoints = String::new();
    for i in 0..10 {
        text.push_str(&format!(
            "[region.r{i}]\nlatitude = 0.0\nlongitude = {}.0\n",
            i * 10
        ));
        endpoints.push_str(&format!(
            "{{ region = \"r{i}\", addresses = [\"10.0.0.{i}\"], priority = {} }},\n",
            i + 1
        ));
    }
    text.push_str(&format!(
        "[[service]]\nname = \"api.example.net.\"\npolicy = \"failover\"\ncheck = \"web\"\n\
         max_answers = 3\nendpoints = [\n{endpoints}]\n"
    ));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("spill-test.toml");
    let config = crate::config::parse_str(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    let svc = CompiledService::new(&config.services[0], &config);
    let names: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let regions: Vec<(&str, f64, f64, Option<f64>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), 0.95, if i < 9 { 0.9 } else { 0.0 }, None))
        .collect();
    let mut h = Loaded::new(&regions);
    let client = (0..100)
        .map(dubliner)
        .find(|c| first(&decide(&svc, c, &h)) == ip("10.0.0.9"))
        .expect("a subnet below 0.9");
    let all = |d: &Decision| match &d.outcome {
        Outcome::Addresses(a) => a.clone(),
        other => panic!("{other:?}"),
    };
    // r9 first, then the spilled ones in their order.
    assert_eq!(
        all(&decide(&svc, &client, &h)),
        vec![ip("10.0.0.9"), ip("10.0.0.0"), ip("10.0.0.1")]
    );
    // r9 and the first seven down: the eighth and ninth spilled regions (past the stack slots).
    h.down = (0..7)
        .chain([9])
        .map(|i| ip(&format!("10.0.0.{i}")))
        .collect();
    assert_eq!(
        all(&decide(&svc, &client, &h)),
        vec![ip("10.0.0.7"), ip("10.0.0.8")]
    );
}
