use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::*;
use crate::geo::LocationSource;

/// Validation only checks that a zone file exists (policy never reads it): the crate manifest
/// stands in for one, with the config "located" in the crate root.
fn config_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policy-test.toml")
}

/// Regions: us-east (Virginia), eu-west (Dublin), ap-south (Singapore), us-west (Oregon).
const BASE: &str = r#"
[[zone]]
origin = "example.net."
file = "Cargo.toml"

[region.us-east]
latitude = 38.9
longitude = -77.4
[region.eu-west]
latitude = 53.3
longitude = -6.3
[region.ap-south]
latitude = 1.35
longitude = 103.8
[region.us-west]
latitude = 45.6
longitude = -121.2

[check.web]
kind = "tcp"
port = 80
interval = "2s"
timeout = "1s"
"#;

/// The four regions, one IPv4 and one IPv6 target each, plus a second IPv4 in us-east.
const FOUR: &str = r#"
endpoints = [
  { region = "us-east", addresses = ["192.0.2.1", "192.0.2.2", "2001:db8:1::1"] },
  { region = "eu-west", addresses = ["198.51.100.1", "2001:db8:2::1"] },
  { region = "ap-south", addresses = ["203.0.113.1", "2001:db8:3::1"] },
  { region = "us-west", addresses = ["100.64.0.1", "2001:db8:4::1"] },
]
"#;

const US_EAST: &str = "192.0.2.1";
const US_EAST_2: &str = "192.0.2.2";
const EU_WEST: &str = "198.51.100.1";
const AP_SOUTH: &str = "203.0.113.1";
const US_WEST: &str = "100.64.0.1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

/// Compiles the first service of `BASE` + `regions_extra` + `service`.
fn compile_with(regions_extra: &str, service: &str) -> CompiledService {
    let text =
        format!("{BASE}\n{regions_extra}\n[[service]]\nname = \"api.example.net.\"\n{service}");
    let config = crate::config::parse_str(&config_path(), &text)
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}"));
    CompiledService::new(&config.services[0], &config)
}

fn compile(service: &str) -> CompiledService {
    compile_with("", service)
}

/// A health source with given states; targets not listed are unknown.
#[derive(Default)]
struct Health {
    states: HashMap<IpAddr, State>,
    drained: HashSet<String>,
}

impl Health {
    fn with(states: &[(&str, State)], drained: &[&str]) -> Self {
        Health {
            states: states.iter().map(|(a, s)| (ip(a), *s)).collect(),
            drained: drained.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn down(addrs: &[&str]) -> Self {
        let states: Vec<(&str, State)> = addrs.iter().map(|a| (*a, State::Down)).collect();
        Health::with(&states, &[])
    }

    fn drained(regions: &[&str]) -> Self {
        Health::with(&[], regions)
    }
}

impl HealthSource for Health {
    fn state(&self, address: IpAddr, check: Option<&str>) -> State {
        match check {
            None => State::Up,
            Some(_) => self.states.get(&address).copied().unwrap_or(State::Unknown),
        }
    }

    fn is_drained(&self, region: &str) -> bool {
        self.drained.contains(region)
    }
}

fn at(addr: &str, lat: f64, lon: f64, country: &str, continent: &str, prefix_len: u8) -> Located {
    Located {
        ip: ip(addr),
        location: Some(Location {
            latitude: Some(lat),
            longitude: Some(lon),
            country: crate::geo::Code::new(country),
            continent: crate::geo::Code::new(continent),
        }),
        region: None,
        source: LocationSource::Database,
        prefix_len,
        via: crate::geo::Via::direct(ip(addr)),
    }
}

fn paris() -> Located {
    at("81.0.0.1", 48.85, 2.35, "FR", "EU", 16)
}
fn new_york() -> Located {
    at("24.0.0.1", 40.7, -74.0, "US", "NA", 18)
}
fn tokyo() -> Located {
    at("126.0.0.1", 35.7, 139.7, "JP", "AS", 12)
}
fn seattle() -> Located {
    at("73.0.0.1", 47.6, -122.3, "US", "NA", 20)
}

fn nowhere(addr: &str) -> Located {
    Located {
        ip: ip(addr),
        location: None,
        region: None,
        source: LocationSource::None,
        prefix_len: 8,
        via: crate::geo::Via::direct(ip(addr)),
    }
}

fn by_nets(addr: &str, region: &str) -> Located {
    Located {
        ip: ip(addr),
        location: None,
        region: Some(region.into()),
        source: LocationSource::Nets,
        prefix_len: 16,
        via: crate::geo::Via::direct(ip(addr)),
    }
}

fn decide(svc: &CompiledService, located: &Located, family: Family, health: &Health) -> Decision {
    decide_r(svc, located, family, health, 0)
}

fn decide_r(
    svc: &CompiledService,
    located: &Located,
    family: Family,
    health: &Health,
    random: u64,
) -> Decision {
    let client = Client {
        located,
        ecs_source_prefix: None,
    };
    let d = svc.decide_with(&client, family, health, random);
    // Every decision must be explained identically.
    let e = svc.explain_with(&client, family, health, random);
    assert_eq!(e.decision, d, "explain disagrees with decide:\n{e}");
    d
}

fn addrs(d: &Decision) -> Vec<IpAddr> {
    match &d.outcome {
        Outcome::Addresses(a) => a.clone(),
        other => panic!("expected addresses, got {other:?}"),
    }
}

fn nearest(extra: &str) -> CompiledService {
    compile(&format!(
        "policy = \"nearest\"\ncheck = \"web\"\n{extra}\n{FOUR}"
    ))
}

#[test]
fn nearest_answers_with_the_region_closest_to_the_client() {
    let svc = nearest("");
    let table = [
        (paris(), EU_WEST),
        (new_york(), US_EAST),
        (tokyo(), AP_SOUTH),
        (seattle(), US_WEST),
    ];
    for (client, want) in table {
        let d = decide(&svc, &client, Family::V4, &Health::default());
        assert_eq!(addrs(&d), ips(&[want]), "client {client:?}");
    }
}

#[test]
fn nearest_passes_over_down_targets_and_drained_regions() {
    let svc = nearest("");
    // (health, client, expected answer)
    let table = [
        (Health::down(&[EU_WEST]), paris(), US_EAST),
        (Health::drained(&["eu-west"]), paris(), US_EAST),
        (Health::with(&[(EU_WEST, State::Up)], &[]), paris(), EU_WEST),
        (
            Health::with(&[(EU_WEST, State::Unknown)], &[]),
            paris(),
            EU_WEST,
        ),
        // First us-east target down: the second one answers, the region stays first.
        (Health::down(&[US_EAST]), new_york(), US_EAST_2),
        (
            Health::with(&[(US_EAST, State::Down), (US_EAST_2, State::Down)], &[]),
            new_york(),
            US_WEST,
        ),
        (
            // Tokyo: Dublin (~9600 km) is nearer than Virginia (~10,900 km).
            Health::with(&[(AP_SOUTH, State::Down)], &["us-west"]),
            tokyo(),
            EU_WEST,
        ),
    ];
    for (health, client, want) in table {
        let d = decide(&svc, &client, Family::V4, &health);
        assert_eq!(addrs(&d), ips(&[want]), "client {client:?}");
    }
}

#[test]
fn nearest_without_a_location_uses_config_order() {
    let svc = nearest("");
    let d = decide(&svc, &nowhere("10.0.0.1"), Family::V4, &Health::default());
    assert_eq!(addrs(&d), ips(&[US_EAST]));
    let d = decide(
        &svc,
        &nowhere("10.0.0.1"),
        Family::V4,
        &Health::drained(&["us-east"]),
    );
    assert_eq!(addrs(&d), ips(&[EU_WEST]));
}

#[test]
fn a_region_bias_changes_the_nearest_order() {
    // Paris -> Dublin ~780 km, Paris -> Virginia ~6200 km.
    let text = BASE.replace(
        "[region.us-east]\nlatitude = 38.9\nlongitude = -77.4",
        "[region.us-east]\nlatitude = 38.9\nlongitude = -77.4\nbias = 5500.0",
    );
    let config = crate::config::parse_str(
        &config_path(),
        &format!("{text}\n[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\n{FOUR}"),
    )
    .unwrap();
    let svc = CompiledService::new(&config.services[0], &config);
    let d = decide(&svc, &paris(), Family::V4, &Health::default());
    assert_eq!(addrs(&d), ips(&[US_EAST]));
    // The explanation shows raw and effective distances.
    let client = Client {
        located: &paris(),
        ecs_source_prefix: None,
    };
    let e = svc.explain_with(&client, Family::V4, &Health::default(), 0);
    let first = &e.order[0];
    assert_eq!(first.region, "us-east");
    assert_eq!(first.bias_km, 5500.0);
    let raw = first.distance_km.unwrap();
    assert!((6000.0..6400.0).contains(&raw), "{raw}");
    assert!((first.effective_km.unwrap() - (raw - 5500.0)).abs() < 1e-9);
    assert_eq!(e.order[1].region, "eu-west");
    // A negative bias pushes a region back.
    let text = BASE.replace(
        "[region.eu-west]\nlatitude = 53.3\nlongitude = -6.3",
        "[region.eu-west]\nlatitude = 53.3\nlongitude = -6.3\nbias = -9000.0",
    );
    let config = crate::config::parse_str(
        &config_path(),
        &format!("{text}\n[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\n{FOUR}"),
    )
    .unwrap();
    let svc = CompiledService::new(&config.services[0], &config);
    let d = decide(&svc, &paris(), Family::V4, &Health::default());
    assert_eq!(addrs(&d), ips(&[US_EAST]));
}

#[test]
fn a_nets_override_region_goes_first_then_the_nearest_to_it() {
    let svc = nearest("max_answers = 3");
    let client = by_nets("10.20.0.1", "ap-south");
    let d = decide(&svc, &client, Family::V4, &Health::default());
    // Singapore, then Dublin (~11,000 km), then Oregon (~13,000 km).
    assert_eq!(addrs(&d), ips(&[AP_SOUTH, EU_WEST, US_WEST]));
    // The override beats a location that the database may also have found.
    let mut both = paris();
    both.region = Some("ap-south".into());
    let d = decide(&svc, &both, Family::V4, &Health::default());
    assert_eq!(addrs(&d)[0], ip(AP_SOUTH));
    // A down override region is skipped like any other.
    let d = decide(&svc, &client, Family::V4, &Health::down(&[AP_SOUTH]));
    assert_eq!(addrs(&d), ips(&[EU_WEST, US_WEST, US_EAST]));
}

#[test]
fn a_nets_override_to_a_region_without_an_endpoint_orders_by_distance_from_it() {
    let svc = compile(
        r#"policy = "nearest"
max_answers = 2
endpoints = [
  { region = "us-east", addresses = ["192.0.2.1"] },
  { region = "eu-west", addresses = ["198.51.100.1"] },
  { region = "us-west", addresses = ["100.64.0.1"] },
]"#,
    );
    let d = decide(
        &svc,
        &by_nets("10.0.0.1", "ap-south"),
        Family::V4,
        &Health::default(),
    );
    assert_eq!(addrs(&d), ips(&[EU_WEST, US_WEST]));
}

#[test]
fn failover_prefers_lower_priority_then_config_order() {
    let svc = compile(
        r#"policy = "failover"
check = "web"
endpoints = [
  { region = "us-east", addresses = ["192.0.2.1"], priority = 2 },
  { region = "eu-west", addresses = ["198.51.100.1"], priority = 1 },
  { region = "ap-south", addresses = ["203.0.113.1"], priority = 2 },
  { region = "us-west", addresses = ["100.64.0.1"], priority = 3 },
]"#,
    );
    let table = [
        (Health::default(), EU_WEST),
        (Health::down(&[EU_WEST]), US_EAST),
        (
            Health::with(&[(EU_WEST, State::Down)], &["us-east"]),
            AP_SOUTH,
        ),
        (Health::down(&[EU_WEST, US_EAST, AP_SOUTH]), US_WEST),
    ];
    for client in [paris(), tokyo(), nowhere("10.0.0.1")] {
        for (health, want) in &table {
            let d = decide(&svc, &client, Family::V4, health);
            assert_eq!(addrs(&d), ips(&[want]));
            assert_eq!(d.scope, 0);
        }
    }
}

fn weighted(extra: &str) -> CompiledService {
    compile(&format!(
        r#"policy = "weighted"
check = "web"
{extra}
endpoints = [
  {{ region = "us-east", addresses = ["192.0.2.1"], weight = 3 }},
  {{ region = "eu-west", addresses = ["198.51.100.1"], weight = 1 }},
  {{ region = "ap-south", addresses = ["203.0.113.1"], weight = 0 }},
]"#
    ))
}

/// Counts first answers over `n` evenly spread random numbers.
fn histogram(
    svc: &CompiledService,
    client: &Located,
    health: &Health,
    n: u64,
) -> HashMap<IpAddr, u64> {
    let mut h = HashMap::new();
    for k in 0..n {
        let random = splitmix64(k);
        let d = decide_r(svc, client, Family::V4, health, random);
        *h.entry(addrs(&d)[0]).or_insert(0) += 1;
    }
    h
}

#[test]
fn weighted_draws_in_proportion_to_weight() {
    let svc = weighted("");
    let h = histogram(&svc, &paris(), &Health::default(), 4000);
    let east = h[&ip(US_EAST)] as f64;
    let west = h[&ip(EU_WEST)] as f64;
    assert!((2.5..3.5).contains(&(east / west)), "{h:?}");
    assert!(
        !h.contains_key(&ip(AP_SOUTH)),
        "weight 0 drawn while others are up"
    );
}

#[test]
fn weighted_uses_weight_zero_only_when_nothing_else_is_usable() {
    let svc = weighted("");
    let h = histogram(&svc, &paris(), &Health::down(&[US_EAST]), 200);
    assert_eq!(h.keys().copied().collect::<Vec<_>>(), ips(&[EU_WEST]));
    let h = histogram(&svc, &paris(), &Health::down(&[US_EAST, EU_WEST]), 200);
    assert_eq!(h.keys().copied().collect::<Vec<_>>(), ips(&[AP_SOUTH]));
    let h = histogram(
        &svc,
        &paris(),
        &Health::drained(&["us-east", "eu-west"]),
        200,
    );
    assert_eq!(h.keys().copied().collect::<Vec<_>>(), ips(&[AP_SOUTH]));
}

#[test]
fn weighted_with_more_answers_draws_distinct_regions() {
    let svc = weighted("max_answers = 2");
    for k in 0..200 {
        let d = decide_r(
            &svc,
            &paris(),
            Family::V4,
            &Health::default(),
            splitmix64(k),
        );
        let mut a = addrs(&d);
        a.sort();
        // The weight-0 region stays out while others are usable.
        assert_eq!(a, ips(&[US_EAST, EU_WEST]));
    }
}

fn geo() -> CompiledService {
    compile(&format!(
        r#"policy = "geo"
check = "web"
max_answers = 2
geo = {{ "country:FR" = ["eu-west", "us-east"], "continent:EU" = ["eu-west"], "NA" = ["us-west"], "country:JP" = ["ap-south"], default = ["us-east", "eu-west"] }}
{FOUR}"#
    ))
}

#[test]
fn geo_matches_country_then_continent_then_default() {
    let svc = geo();
    let berlin = at("85.0.0.1", 52.5, 13.4, "DE", "EU", 14);
    let namibia = at("41.182.0.1", -22.6, 17.1, "NA", "AF", 16);
    let lima = at("190.0.0.1", -12.0, -77.0, "PE", "SA", 16);
    let table = [
        (paris(), vec![EU_WEST, US_EAST]),
        // Continent entry: one region only.
        (berlin, vec![EU_WEST]),
        // The bare "NA" matches the country Namibia...
        (namibia, vec![US_WEST]),
        // ...and the continent North America.
        (new_york(), vec![US_WEST]),
        (tokyo(), vec![AP_SOUTH]),
        // The default list; us-east alone has two targets.
        (lima, vec![US_EAST, US_EAST_2]),
        (nowhere("10.0.0.1"), vec![US_EAST, US_EAST_2]),
    ];
    for (client, want) in table {
        let d = decide(&svc, &client, Family::V4, &Health::default());
        assert_eq!(addrs(&d), ips(&want), "client {client:?}");
    }
}

#[test]
fn geo_uses_only_the_listed_regions_and_fails_open_within_them() {
    let svc = geo();
    // eu-west down: Paris falls back to the second listed region.
    let d = decide(&svc, &paris(), Family::V4, &Health::down(&[EU_WEST]));
    assert_eq!(addrs(&d), ips(&[US_EAST, US_EAST_2]));
    // Berlin lists only eu-west: down, so fail open over it rather than leave the list.
    let berlin = at("85.0.0.1", 52.5, 13.4, "DE", "EU", 14);
    let d = decide(&svc, &berlin, Family::V4, &Health::down(&[EU_WEST]));
    assert_eq!(addrs(&d), ips(&[EU_WEST]));
}

#[test]
fn geo_puts_a_nets_override_region_first() {
    let svc = geo();
    let d = decide(
        &svc,
        &by_nets("10.20.0.1", "ap-south"),
        Family::V4,
        &Health::default(),
    );
    // Override first, then the default list (the override has no location).
    assert_eq!(addrs(&d), ips(&[AP_SOUTH, US_EAST]));
    // An override region already in the list is not repeated.
    let mut c = paris();
    c.region = Some("us-east".into());
    let d = decide(&svc, &c, Family::V4, &Health::down(&[US_EAST_2]));
    assert_eq!(addrs(&d), ips(&[US_EAST, EU_WEST]));
}

#[test]
fn all_answers_every_usable_target_in_config_order_up_to_max_answers() {
    let svc = compile(&format!(
        "policy = \"all\"\ncheck = \"web\"\nmax_answers = 3\n{FOUR}"
    ));
    let d = decide(&svc, &paris(), Family::V4, &Health::default());
    assert_eq!(addrs(&d), ips(&[US_EAST, US_EAST_2, EU_WEST]));
    let d = decide(&svc, &paris(), Family::V4, &Health::down(&[US_EAST_2]));
    assert_eq!(addrs(&d), ips(&[US_EAST, EU_WEST, AP_SOUTH]));
    let d = decide(&svc, &tokyo(), Family::V6, &Health::drained(&["us-east"]));
    assert_eq!(
        addrs(&d),
        ips(&["2001:db8:2::1", "2001:db8:3::1", "2001:db8:4::1"])
    );
    assert_eq!(d.scope, 0);
}

#[test]
fn max_answers_spreads_a_failed_region_over_the_next_ones() {
    let svc = nearest("max_answers = 3");
    let d = decide(&svc, &new_york(), Family::V4, &Health::default());
    // us-east has two targets, then the next nearest region (Oregon, ~3900 km; Dublin is
    // ~5100 km) fills the rest.
    assert_eq!(addrs(&d), ips(&[US_EAST, US_EAST_2, US_WEST]));
    let d = decide(&svc, &new_york(), Family::V4, &Health::down(&[US_EAST]));
    assert_eq!(addrs(&d), ips(&[US_EAST_2, US_WEST, EU_WEST]));
    let d = decide(
        &svc,
        &new_york(),
        Family::V4,
        &Health::drained(&["us-east"]),
    );
    assert_eq!(addrs(&d), ips(&[US_WEST, EU_WEST, AP_SOUTH]));
    // Fewer usable targets than max_answers: all of them, no padding.
    let d = decide(
        &svc,
        &new_york(),
        Family::V4,
        &Health::down(&[US_EAST, US_EAST_2, EU_WEST, US_WEST]),
    );
    assert_eq!(addrs(&d), ips(&[AP_SOUTH]));
}

#[test]
fn a_query_for_a_uses_only_ipv4_targets_and_aaaa_only_ipv6() {
    let svc = nearest("max_answers = 8");
    let d = decide(&svc, &paris(), Family::V4, &Health::default());
    assert!(addrs(&d).iter().all(IpAddr::is_ipv4));
    assert_eq!(addrs(&d).len(), 5);
    let d = decide(&svc, &paris(), Family::V6, &Health::default());
    assert!(addrs(&d).iter().all(IpAddr::is_ipv6));
    assert_eq!(addrs(&d)[0], ip("2001:db8:2::1"));
    assert_eq!(addrs(&d).len(), 4);
}

#[test]
fn a_region_without_a_target_of_the_family_is_no_candidate() {
    let svc = compile(
        r#"policy = "nearest"
check = "web"
endpoints = [
  { region = "us-east", addresses = ["192.0.2.1", "2001:db8:1::1"] },
  { region = "eu-west", addresses = ["198.51.100.1"] },
]"#,
    );
    // Paris is nearest to eu-west, which has no IPv6: AAAA comes from us-east.
    let d = decide(&svc, &paris(), Family::V6, &Health::default());
    assert_eq!(addrs(&d), ips(&["2001:db8:1::1"]));
    let d = decide(&svc, &paris(), Family::V4, &Health::default());
    assert_eq!(addrs(&d), ips(&[EU_WEST]));
}

#[test]
fn a_family_absent_from_the_service_is_nodata_whatever_the_health() {
    for mode in ["all", "empty", "servfail"] {
        let svc = compile(&format!(
            r#"policy = "nearest"
check = "web"
when_all_down = "{mode}"
endpoints = [ {{ region = "us-east", addresses = ["192.0.2.1"] }} ]"#
        ));
        for health in [Health::default(), Health::down(&[US_EAST])] {
            let d = decide(&svc, &paris(), Family::V6, &health);
            assert_eq!(d.outcome, Outcome::NoData, "mode {mode}");
        }
    }
}

#[test]
fn geo_list_without_a_target_of_the_family_is_nodata() {
    let svc = compile(
        r#"policy = "geo"
check = "web"
when_all_down = "servfail"
geo = { "EU" = ["eu-west"], default = ["us-east"] }
endpoints = [
  { region = "us-east", addresses = ["192.0.2.1", "2001:db8:1::1"] },
  { region = "eu-west", addresses = ["198.51.100.1"] },
]"#,
    );
    let d = decide(&svc, &paris(), Family::V6, &Health::default());
    assert_eq!(d.outcome, Outcome::NoData);
}

#[test]
fn when_all_down_all_fails_open_over_non_drained_targets() {
    let svc = nearest("max_answers = 8");
    let all = [US_EAST, US_EAST_2, EU_WEST, AP_SOUTH, US_WEST];
    let d = decide(&svc, &paris(), Family::V4, &Health::down(&all));
    // As if every target were up: nearest order.
    assert_eq!(
        addrs(&d),
        ips(&[EU_WEST, US_EAST, US_EAST_2, US_WEST, AP_SOUTH])
    );
    let states: Vec<(&str, State)> = all.iter().map(|a| (*a, State::Down)).collect();
    let d = decide(
        &svc,
        &paris(),
        Family::V4,
        &Health::with(&states, &["eu-west", "us-west"]),
    );
    assert_eq!(addrs(&d), ips(&[US_EAST, US_EAST_2, AP_SOUTH]));
}

#[test]
fn when_all_down_all_with_every_region_drained_still_answers() {
    let svc = nearest("max_answers = 8");
    let every = ["us-east", "eu-west", "ap-south", "us-west"];
    // Drained everywhere, some targets up: those.
    let states = [(EU_WEST, State::Down), (US_WEST, State::Down)];
    let d = decide(&svc, &paris(), Family::V4, &Health::with(&states, &every));
    assert_eq!(addrs(&d), ips(&[US_EAST, US_EAST_2, AP_SOUTH]));
    // Drained and down everywhere: everything.
    let all = [US_EAST, US_EAST_2, EU_WEST, AP_SOUTH, US_WEST];
    let states: Vec<(&str, State)> = all.iter().map(|a| (*a, State::Down)).collect();
    let d = decide(&svc, &paris(), Family::V4, &Health::with(&states, &every));
    assert_eq!(addrs(&d).len(), 5);
}

#[test]
fn when_all_down_empty_is_nodata_and_servfail_is_servfail() {
    for (mode, want) in [("empty", Outcome::NoData), ("servfail", Outcome::ServFail)] {
        for policy in ["nearest", "failover", "weighted", "all"] {
            let svc = compile(&format!(
                "policy = \"{policy}\"\ncheck = \"web\"\nwhen_all_down = \"{mode}\"\n{FOUR}"
            ));
            let all = [US_EAST, US_EAST_2, EU_WEST, AP_SOUTH, US_WEST];
            let d = decide(&svc, &paris(), Family::V4, &Health::down(&all));
            assert_eq!(d.outcome, want, "{policy} {mode}");
            let every = Health::drained(&["us-east", "eu-west", "ap-south", "us-west"]);
            let d = decide(&svc, &paris(), Family::V4, &every);
            assert_eq!(d.outcome, want, "{policy} {mode} drained");
            // One target up is enough to answer.
            let d = decide(&svc, &paris(), Family::V4, &Health::down(&all[1..]));
            assert_eq!(addrs(&d), ips(&[US_EAST]), "{policy} {mode}");
        }
    }
}

#[test]
fn a_service_without_a_check_treats_targets_as_up() {
    let svc = compile(&format!("policy = \"nearest\"\n{FOUR}"));
    // The health source reports down, but no check probes these targets.
    let d = decide(&svc, &paris(), Family::V4, &Health::down(&[EU_WEST]));
    assert_eq!(addrs(&d), ips(&[EU_WEST]));
}

#[test]
fn decide_with_a_fresh_health_view_treats_unprobed_targets_as_up() {
    let svc = nearest("");
    let client = Client {
        located: &paris(),
        ecs_source_prefix: Some(24),
    };
    let d = svc.decide(&client, Family::V4, &HealthView::empty(), 7);
    assert_eq!(addrs(&d), ips(&[EU_WEST]));
    assert_eq!(
        svc.explain(&client, Family::V4, &HealthView::empty(), 7)
            .decision,
        d
    );
}

fn subnet_client(addr: &str) -> Located {
    let mut l = paris();
    l.ip = ip(addr);
    l
}

#[test]
fn sticky_weighted_gives_a_subnet_the_same_answer_for_any_random() {
    let svc = weighted("sticky = true\nmax_answers = 2");
    for subnet in 0..20u8 {
        let first = decide_r(
            &svc,
            &subnet_client(&format!("198.18.{subnet}.1")),
            Family::V4,
            &Health::default(),
            0,
        );
        for k in 0..50u64 {
            // Any host of the /24, any random number: the same answer.
            let host = format!("198.18.{subnet}.{}", k + 2);
            let d = decide_r(
                &svc,
                &subnet_client(&host),
                Family::V4,
                &Health::default(),
                splitmix64(k),
            );
            assert_eq!(d, first, "{host}");
        }
    }
}

#[test]
fn sticky_weighted_spreads_different_subnets_by_weight() {
    let svc = weighted("sticky = true");
    let mut h: HashMap<IpAddr, u32> = HashMap::new();
    for a in 0..40u32 {
        for b in 0..50u32 {
            let client = subnet_client(&format!("10.{a}.{b}.9"));
            let d = decide(&svc, &client, Family::V4, &Health::default());
            *h.entry(addrs(&d)[0]).or_insert(0) += 1;
        }
    }
    let ratio = f64::from(h[&ip(US_EAST)]) / f64::from(h[&ip(EU_WEST)]);
    assert!((2.5..3.5).contains(&ratio), "{h:?}");
}

#[test]
fn sticky_ipv6_clients_stick_per_56() {
    let svc = weighted("sticky = true");
    let base = subnet_client("2001:db8:aa:bb00::1");
    let first = decide(&svc, &base, Family::V4, &Health::default());
    for host in ["2001:db8:aa:bbff::1", "2001:db8:aa:bb12:1:2:3:4"] {
        let d = decide_r(
            &svc,
            &subnet_client(host),
            Family::V4,
            &Health::default(),
            99,
        );
        assert_eq!(d, first, "{host}");
    }
    assert_eq!(first.scope, 56);
}

#[test]
fn sticky_all_rotates_the_list_per_subnet() {
    let svc = compile(&format!(
        "policy = \"all\"\ncheck = \"web\"\nsticky = true\nmax_answers = 2\n{FOUR}"
    ));
    let mut firsts = HashSet::new();
    for subnet in 0..64u32 {
        let client = subnet_client(&format!("198.18.{subnet}.1"));
        let d = decide(&svc, &client, Family::V4, &Health::default());
        let a = addrs(&d);
        assert_eq!(a.len(), 2);
        firsts.insert(a[0]);
        // Same subnet, other host, other random: the same answer.
        let again = decide_r(
            &svc,
            &subnet_client(&format!("198.18.{subnet}.200")),
            Family::V4,
            &Health::default(),
            12345,
        );
        assert_eq!(again, d);
        // The two answers are consecutive in the (wrapping) config order.
        let order = ips(&[US_EAST, US_EAST_2, EU_WEST, AP_SOUTH, US_WEST]);
        let p = order.iter().position(|x| *x == a[0]).unwrap();
        assert_eq!(a[1], order[(p + 1) % order.len()]);
        assert_eq!(d.scope, 24);
    }
    assert_eq!(firsts.len(), 5, "load does not spread: {firsts:?}");
}

#[test]
fn rfc7871_scope_zero_when_answer_is_not_geo_dependent() {
    for policy in ["failover", "weighted", "all"] {
        let svc = compile(&format!("policy = \"{policy}\"\n{FOUR}"));
        for client in [paris(), tokyo(), nowhere("10.0.0.1")] {
            let d = decide(&svc, &client, Family::V4, &Health::default());
            assert_eq!(d.scope, 0, "{policy}");
        }
    }
    // One endpoint: nearest and geo cannot depend on the client either.
    let svc = compile(
        "policy = \"nearest\"\nendpoints = [ { region = \"us-east\", addresses = [\"192.0.2.1\"] } ]",
    );
    assert_eq!(
        decide(&svc, &paris(), Family::V4, &Health::default()).scope,
        0
    );
    // Nor can NODATA for an absent family of a single-region service.
    assert_eq!(
        decide(&svc, &paris(), Family::V6, &Health::default()).scope,
        0
    );
}

#[test]
fn rfc7871_scope_is_the_location_network_for_nearest_and_geo() {
    for svc in [nearest(""), geo()] {
        for client in [
            paris(),
            new_york(),
            tokyo(),
            by_nets("10.20.0.1", "eu-west"),
        ] {
            let d = decide(&svc, &client, Family::V4, &Health::default());
            assert_eq!(d.scope, client.prefix_len);
        }
    }
}

#[test]
fn rfc7871_scope_is_the_sticky_subnet_for_sticky_policies() {
    let svc = weighted("sticky = true");
    let d = decide(
        &svc,
        &subnet_client("198.18.7.1"),
        Family::V4,
        &Health::default(),
    );
    assert_eq!(d.scope, 24);
    // The family of the client's address decides, not the query's.
    let d = decide(
        &svc,
        &subnet_client("2001:db8::1"),
        Family::V4,
        &Health::default(),
    );
    assert_eq!(d.scope, 56);
}

#[test]
fn nearest_handles_more_regions_than_the_stack_buffer() {
    let mut regions = String::new();
    let mut endpoints = String::new();
    for i in 0..(INLINE_REGIONS + 8) {
        regions.push_str(&format!(
            "[region.r{i}]\nlatitude = {}\nlongitude = {}\n",
            -60.0 + 3.0 * i as f64,
            -170.0 + 8.0 * i as f64
        ));
        endpoints.push_str(&format!(
            "  {{ region = \"r{i}\", addresses = [\"10.0.{i}.1\"] }},\n"
        ));
    }
    let svc = compile_with(
        &regions,
        &format!("policy = \"nearest\"\nmax_answers = 2\nendpoints = [\n{endpoints}]"),
    );
    // Put the client right on the last region.
    let last = INLINE_REGIONS + 7;
    let client = at(
        "81.0.0.1",
        -60.0 + 3.0 * last as f64,
        -170.0 + 8.0 * last as f64,
        "XX",
        "EU",
        8,
    );
    let d = decide(&svc, &client, Family::V4, &Health::default());
    assert_eq!(
        addrs(&d),
        ips(&[
            format!("10.0.{last}.1").as_str(),
            format!("10.0.{}.1", last - 1).as_str()
        ])
    );
}

#[test]
fn a_client_with_non_finite_coordinates_is_treated_as_unlocated() {
    let svc = nearest("");
    let mut client = paris();
    if let Some(l) = &mut client.location {
        l.latitude = Some(f64::NAN);
    }
    let d = decide(&svc, &client, Family::V4, &Health::default());
    assert_eq!(addrs(&d), ips(&[US_EAST]));
}

#[test]
fn region_of_names_the_region_of_a_target() {
    let svc = nearest("");
    assert_eq!(svc.region_of(ip(US_EAST_2)), Some("us-east"));
    assert_eq!(svc.region_of(ip("2001:db8:3::1")), Some("ap-south"));
    assert_eq!(svc.region_of(ip("192.0.2.99")), None);
}

#[test]
fn explain_records_the_order_skips_and_answer() {
    let svc = nearest("max_answers = 2");
    let located = paris();
    let client = Client {
        located: &located,
        ecs_source_prefix: Some(24),
    };
    let health = Health::with(
        &[(US_EAST, State::Down), (US_EAST_2, State::Up)],
        &["eu-west"],
    );
    let e = svc.explain_with(&client, Family::V4, &health, 0);
    let order: Vec<&str> = e.order.iter().map(|r| r.region.as_str()).collect();
    assert_eq!(order, ["eu-west", "us-east", "us-west", "ap-south"]);
    assert!(
        e.order
            .windows(2)
            .all(|w| w[0].effective_km <= w[1].effective_km)
    );
    assert_eq!(e.passes.len(), 1);
    assert_eq!(
        e.passes[0].steps,
        vec![
            Step::SkipRegion {
                region: "eu-west".into(),
                reason: SkipReason::Drained
            },
            Step::SkipTarget {
                region: "us-east".into(),
                address: ip(US_EAST),
                reason: SkipReason::Down
            },
            Step::Pick {
                region: "us-east".into(),
                address: ip(US_EAST_2),
                state: State::Up
            },
            Step::Pick {
                region: "us-west".into(),
                address: ip(US_WEST),
                state: State::Unknown
            },
        ]
    );
    assert_eq!(e.client.country.as_deref(), Some("FR"));
    assert_eq!(e.client.ecs_source_prefix, Some(24));

    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["policy"], "nearest");
    assert_eq!(json["family"], "A");
    assert_eq!(json["client"]["source"], "database");
    assert_eq!(json["decision"]["outcome"]["kind"], "addresses");
    assert_eq!(json["decision"]["outcome"]["addresses"][0], US_EAST_2);
    assert_eq!(json["passes"][0]["steps"][0]["step"], "skip_region");
    assert_eq!(json["passes"][0]["steps"][0]["reason"], "drained");

    let text = e.to_string();
    for want in [
        "api.example.net. A: policy nearest",
        "client 81.0.0.1 (ECS /24): source database, country FR, continent EU",
        "  1. eu-west ",
        "  skip region eu-west: drained",
        "  skip 192.0.2.1 (us-east): down",
        "  pick 192.0.2.2 (us-east, up)",
        "answer: 192.0.2.2 100.64.0.1, ttl 30, scope /16",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn explain_shows_fail_open_passes_and_geo_entry() {
    let svc = geo();
    let client = Client {
        located: &paris(),
        ecs_source_prefix: None,
    };
    let e = svc.explain_with(
        &client,
        Family::V4,
        &Health::down(&[EU_WEST, US_EAST, US_EAST_2]),
        0,
    );
    assert_eq!(e.geo_match.as_deref(), Some("country:FR"));
    let passes: Vec<Pass> = e.passes.iter().map(|p| p.pass).collect();
    assert_eq!(passes, [Pass::Healthy, Pass::FailOpen]);
    assert_eq!(addrs(&e.decision), ips(&[EU_WEST, US_EAST]));
    assert!(e.to_string().contains("geo entry country:FR"));
    assert!(e.to_string().contains("pass: fail open"));
}

#[test]
fn explain_notes_a_family_absent_from_the_service() {
    let svc = compile(
        "policy = \"nearest\"\nendpoints = [ { region = \"us-east\", addresses = [\"192.0.2.1\"] } ]",
    );
    let client = Client {
        located: &paris(),
        ecs_source_prefix: None,
    };
    let e = svc.explain_with(&client, Family::V6, &Health::default(), 0);
    assert_eq!(e.decision.outcome, Outcome::NoData);
    assert_eq!(e.notes, ["the service has no target of this family"]);
    assert!(e.to_string().contains("answer: NODATA"));
}

#[test]
fn sticky_subnets_stay_put_when_an_unrelated_region_fails() {
    let weighted = weighted("sticky = true");
    let all = compile(&format!(
        "policy = \"all\"\ncheck = \"web\"\nsticky = true\n{FOUR}"
    ));
    for svc in [&weighted, &all] {
        let mut moved = 0;
        for subnet in 0..100u32 {
            let client = subnet_client(&format!("198.18.{subnet}.1"));
            let before = addrs(&decide(svc, &client, Family::V4, &Health::default()))[0];
            // Fail one region the subnet does not use.
            let other = [EU_WEST, US_EAST, AP_SOUTH]
                .into_iter()
                .find(|a| ip(a) != before && svc.region_of(ip(a)) != svc.region_of(before))
                .unwrap();
            let region = svc.region_of(ip(other)).unwrap().to_string();
            let after = decide(svc, &client, Family::V4, &Health::drained(&[&region]));
            if addrs(&after)[0] != before {
                moved += 1;
            }
            // Failing its own region moves it.
            let own = svc.region_of(before).unwrap().to_string();
            let gone = decide(svc, &client, Family::V4, &Health::drained(&[&own]));
            assert_ne!(addrs(&gone)[0], before);
        }
        assert_eq!(moved, 0, "{}", svc.service().policy.as_str());
    }
}

#[test]
fn weighted_fails_open_by_weight_over_non_drained_regions() {
    let svc = weighted("");
    let states = [
        (US_EAST, State::Down),
        (EU_WEST, State::Down),
        (AP_SOUTH, State::Down),
    ];
    let h = histogram(&svc, &paris(), &Health::with(&states, &[]), 400);
    assert!(
        h.contains_key(&ip(US_EAST)) && h.contains_key(&ip(EU_WEST)),
        "{h:?}"
    );
    assert!(!h.contains_key(&ip(AP_SOUTH)), "{h:?}");
    let h = histogram(&svc, &paris(), &Health::with(&states, &["us-east"]), 100);
    assert_eq!(h.keys().copied().collect::<Vec<_>>(), ips(&[EU_WEST]));
}

#[test]
fn explain_of_weighted_shows_the_regions_drawn_and_passed_over() {
    let svc = weighted("");
    let client = Client {
        located: &paris(),
        ecs_source_prefix: None,
    };
    let e = svc.explain_with(&client, Family::V4, &Health::drained(&["us-east"]), 0);
    assert_eq!(addrs(&e.decision), ips(&[EU_WEST]));
    let steps = &e.passes[0].steps;
    // random 0 draws us-east (the first by cumulative weight), which is drained.
    assert_eq!(
        steps[0],
        Step::SkipRegion {
            region: "us-east".into(),
            reason: SkipReason::Drained
        }
    );
    assert!(e.to_string().contains("regions (drawn by weight):"));
    assert!(e.to_string().contains("us-east weight 3"));
}

/// Decides with a real `HealthView` (target drains live there).
fn decide_view(
    svc: &CompiledService,
    located: &Located,
    family: Family,
    view: &HealthView,
) -> Decision {
    let client = Client {
        located,
        ecs_source_prefix: None,
    };
    let d = svc.decide(&client, family, view, 0);
    assert_eq!(svc.explain(&client, family, view, 0).decision, d);
    d
}

#[test]
fn a_drained_target_is_passed_over_like_a_drained_region_in_every_policy() {
    let view = HealthView::empty().with_drained_target(ip(US_EAST));
    // nearest: New York stays in us-east, on its other target.
    let d = decide_view(&nearest(""), &new_york(), Family::V4, &view);
    assert_eq!(addrs(&d), ips(&[US_EAST_2]));
    // both us-east targets drained: the next region.
    let both = view.clone().with_drained_target(ip(US_EAST_2));
    let d = decide_view(&nearest(""), &new_york(), Family::V4, &both);
    assert_ne!(addrs(&d), ips(&[US_EAST]));
    assert_ne!(addrs(&d), ips(&[US_EAST_2]));
    // all: skipped in the walk.
    let svc = compile(&format!("policy = \"all\"\nmax_answers = 3\n{FOUR}"));
    let d = decide_view(&svc, &paris(), Family::V4, &view);
    assert_eq!(addrs(&d), ips(&[US_EAST_2, EU_WEST, AP_SOUTH]));
    // weighted: a region whose only targets are drained is never drawn.
    let svc = weighted("");
    for random in 0..200u64 {
        let client = Client {
            located: &paris(),
            ecs_source_prefix: None,
        };
        let d = svc.decide(
            &client,
            Family::V4,
            &both,
            random.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let a = addrs(&d);
        assert!(
            !a.contains(&ip(US_EAST)) && !a.contains(&ip(US_EAST_2)),
            "{a:?}"
        );
    }
    // Everything drained: fail open over the drained targets (never an outage).
    let mut all = HealthView::empty();
    for a in [US_EAST, US_EAST_2, EU_WEST, AP_SOUTH, US_WEST] {
        all = all.with_drained_target(ip(a));
    }
    let d = decide_view(&nearest(""), &new_york(), Family::V4, &all);
    assert_eq!(addrs(&d).len(), 1);
}

/// Issue 13: services with the same decision function share one scope map, built in one walk;
/// `decide` uses it once it is there and the matched network's scope before.
#[test]
fn issue_13_scope_maps_are_shared_and_widen_the_scope_once_built() {
    let text = format!(
        "{BASE}\n[[service]]\nname = \"a.example.net.\"\npolicy = \"nearest\"\n{FOUR}\n\
         [[service]]\nname = \"b.example.net.\"\npolicy = \"nearest\"\n{FOUR}\n\
         [[service]]\nname = \"c.example.net.\"\npolicy = \"geo\"\n\
         geo = {{ \"EU\" = [\"eu-west\"], default = [\"us-east\"] }}\n{FOUR}\n\
         [[service]]\nname = \"d.example.net.\"\npolicy = \"failover\"\n{FOUR}"
    );
    let config = crate::config::parse_str(&config_path(), &text).unwrap();
    let mut services: Vec<CompiledService> = config
        .services
        .iter()
        .map(|s| CompiledService::new(s, &config))
        .collect();
    share_scope_maps(services.iter_mut());
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("geodata/sample.mmdb");
    let geo =
        crate::geo::Geo::open(Some(&sample), &[], &crate::geo::Transition::default()).unwrap();
    let frankfurt = geo.locate(ip("2.16.0.1"));
    let health = Health::default();
    let before = decide(&services[0], &frankfurt, Family::V4, &health);
    assert_eq!(
        before.scope, 15,
        "the matched network, narrowed by 2.18.0.0/16"
    );

    let jobs = ScopeJobs::new(services.iter());
    let report = jobs.run(&geo).unwrap().unwrap();
    assert_eq!(
        report.maps, 2,
        "a and b share one map; c has its own; d needs none"
    );
    assert!(services.iter().take(3).all(|s| s.has_scope_map()));
    assert!(!services[3].has_scope_map());
    assert!(
        ScopeJobs::new(services.iter()).is_empty(),
        "nothing left to build"
    );

    let after = decide(&services[0], &frankfurt, Family::V4, &health);
    assert_eq!(after.outcome, before.outcome);
    // 2.16.0.0/13 (Frankfurt) and 2.18.0.0/16 (London) are both nearest to Dublin first,
    // and in the same order after it: one run.
    assert_eq!(after.scope, 13);
    // For geo, everything in Europe is one decision.
    let geo_after = decide(&services[2], &frankfurt, Family::V4, &health);
    assert!(geo_after.scope <= 13, "{}", geo_after.scope);
    assert_eq!(
        decide(&services[3], &frankfurt, Family::V4, &health).scope,
        0
    );
}

#[test]
fn issue_13_sticky_scope_of_an_ipv4_mapped_client_is_in_ipv6_bits() {
    let svc = compile(&format!("policy = \"weighted\"\nsticky = true\n{FOUR}"));
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("geodata/sample.mmdb");
    let geo =
        crate::geo::Geo::open(Some(&sample), &[], &crate::geo::Transition::default()).unwrap();
    let mapped = geo.locate(ip("::ffff:2.16.0.1"));
    let d = decide(&svc, &mapped, Family::V4, &Health::default());
    assert_eq!(d.scope, 120, "96 + the sticky /24");
}

/// Issue 13: once the map is built, `decide_at` answers from the map (no database lookup);
/// it must give exactly what locating and deciding gives, answer and scope, for every kind
/// of client: database, `[nets]`, no location, IPv4-mapped, 6to4, Teredo, NAT64.
#[test]
fn issue_13_decide_at_from_the_map_equals_locate_then_decide() {
    let text = format!(
        "{BASE}\n[nets]\n\"10.20.0.0/16\" = \"ap-south\"\n\"2a01:4f8:8::/48\" = \"us-west\"\n\
         [[service]]\nname = \"a.example.net.\"\npolicy = \"nearest\"\n{FOUR}\n\
         [[service]]\nname = \"c.example.net.\"\npolicy = \"geo\"\n\
         geo = {{ \"EU\" = [\"eu-west\"], \"JP\" = [\"ap-south\", \"us-west\"], default = [\"us-east\"] }}\n{FOUR}"
    );
    let config = crate::config::parse_str(&config_path(), &text).unwrap();
    let mut services: Vec<CompiledService> = config
        .services
        .iter()
        .map(|s| CompiledService::new(s, &config))
        .collect();
    share_scope_maps(services.iter_mut());
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("geodata/sample.mmdb");
    let geo = crate::geo::Geo::open(
        Some(&sample),
        &config.nets,
        &crate::geo::Transition::default(),
    )
    .unwrap();
    ScopeJobs::new(services.iter()).run(&geo).unwrap().unwrap();
    let health = Health::down(&[EU_WEST]);
    let mut addrs: Vec<IpAddr> = [
        "2.16.0.1",
        "2.18.5.5",
        "24.0.0.1",
        "126.0.0.1",
        "10.20.1.1",
        "10.21.1.1",
        "8.8.8.8",
        "198.51.100.7",
        "::ffff:2.16.0.1",
        "::2.16.0.1",
        "2002:210::1",
        "64:ff9b::2.16.0.1",
        "2001:0:4136:e378:8000:63bf:fdef:fffe",
        "2a01:4f8::1",
        "2a01:4f8:8::1",
        "2001:db8:1::1",
        "2804:14c::1",
        "fd00::1",
        "::1",
    ]
    .iter()
    .map(|a| ip(a))
    .collect();
    // And a spread over both families.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..500 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        addrs.push(IpAddr::V4(std::net::Ipv4Addr::from((x >> 32) as u32)));
        addrs.push(IpAddr::V6(std::net::Ipv6Addr::from(
            (u128::from(x) << 64 | u128::from(x.rotate_left(17))) >> 3 | (1 << 125),
        )));
    }
    for svc in &services {
        // The fast path is taken for nearly all of them (not for gaps the walk did not see).
        let d = svc.scope_map.get().expect("built");
        let known = addrs
            .iter()
            .filter(|a| geo.class_of(&d.map, **a).is_some())
            .count();
        assert!(known * 10 > addrs.len() * 9, "{known} of {}", addrs.len());
        for &addr in &addrs {
            for family in [Family::V4, Family::V6] {
                let located = geo.locate(addr);
                let client = Client {
                    located: &located,
                    ecs_source_prefix: Some(24),
                };
                let slow = svc.decide_with(&client, family, &health, 7);
                let fast = svc.decide_at(&geo, addr, Some(24), family, &health, 7);
                assert_eq!(fast, slow, "{} {addr} {family:?}", svc.service().name);
            }
        }
    }
}
