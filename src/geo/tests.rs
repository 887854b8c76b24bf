//! Unit tests for `geo`: lookups against databases built from small CSVs, `[nets]` overrides,
//! ECS scopes, and the committed sample database.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use mmdb_writer::{IpVersion, Value, Writer};

use super::build::{Row, parse_csv};
use super::prefix::{self, Bits, Net};
use super::*;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("meridian-geo-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test database: a few networks with known answers.
const TEST_CSV: &str = "\
# comment lines and blank lines are ignored

network,latitude,longitude,country,continent
198.51.100.0/24,52.52,13.405,DE,EU
203.0.113.0/24,35.6762,139.6503,JP,AS
192.0.2.0/24,40.7128,-74.006,US,NA
2.16.0.0/13,50.1109,8.6821,DE,EU
2.18.0.0/16,51.5074,-0.1278,GB,EU
8.0.0.0/6,37.386,-122.084,US,NA
185.0.0.0/16,,,CH,EU
2001:db8:1::/48,52.52,13.405,DE,EU
2001:db8:3::/48,35.6762,139.6503,JP,AS
";

/// Builds `csv` into a database in `dir` through the public entry point.
fn build_in(dir: &TempDir, csv: &str) -> PathBuf {
    let csv_path = dir.path("in.csv");
    let out = dir.path("out.mmdb");
    std::fs::write(&csv_path, csv).unwrap();
    build_database(&csv_path, &out).unwrap();
    out
}

fn nets(entries: &[(&str, &str)]) -> Vec<NetOverride> {
    entries
        .iter()
        .map(|(net, region)| NetOverride {
            net: net.parse().unwrap(),
            region: region.to_string(),
        })
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sample_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("geodata")
        .join(name)
}

#[test]
fn built_database_reads_back_with_location_country_and_continent() {
    let dir = TempDir::new();
    let db = build_in(&dir, TEST_CSV);
    let geo = Geo::open(Some(&db), &[], &Transition::default()).unwrap();
    let got = geo.locate(ip("198.51.100.7"));
    assert_eq!(got.source, LocationSource::Database);
    assert_eq!(got.region, None);
    assert_eq!(got.prefix_len, 24);
    let loc = got.location.unwrap();
    assert_eq!(loc.coordinates(), Some((52.52, 13.405)));
    assert_eq!(loc.country.as_deref(), Some("DE"));
    assert_eq!(loc.continent.as_deref(), Some("EU"));

    let info = geo.database_info().unwrap();
    assert_eq!(info.database_type, build::DATABASE_TYPE);
    assert_eq!(info.build_epoch, build::BUILD_EPOCH);
    assert_eq!(info.ip_version, 6);
}

#[test]
fn build_report_counts_networks_by_family_and_size() {
    let dir = TempDir::new();
    let csv_path = dir.path("in.csv");
    let out = dir.path("out.mmdb");
    std::fs::write(&csv_path, TEST_CSV).unwrap();
    let report = build_database(&csv_path, &out).unwrap();
    assert_eq!(report.networks, 9);
    assert_eq!(report.ipv4_networks, 7);
    assert_eq!(report.ipv6_networks, 2);
    assert_eq!(report.bytes as u64, std::fs::metadata(&out).unwrap().len());
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn building_twice_gives_identical_bytes() {
    let rows = parse_csv(TEST_CSV, "test.csv").unwrap();
    assert_eq!(build::encode(&rows).unwrap(), build::encode(&rows).unwrap());
}

#[test]
fn country_only_record_has_codes_but_no_coordinates() {
    let dir = TempDir::new();
    let geo = Geo::open(Some(&build_in(&dir, TEST_CSV)), &[], &Transition::default()).unwrap();
    let got = geo.locate(ip("185.0.3.4"));
    assert_eq!(got.source, LocationSource::Database);
    let loc = got.location.unwrap();
    assert_eq!(loc.coordinates(), None);
    assert_eq!((loc.latitude, loc.longitude), (None, None));
    assert_eq!(loc.country.as_deref(), Some("CH"));
    assert_eq!(loc.continent.as_deref(), Some("EU"));
}

#[test]
fn ipv4_mapped_ipv6_is_located_as_ipv4() {
    let dir = TempDir::new();
    let geo = Geo::open(Some(&build_in(&dir, TEST_CSV)), &[], &Transition::default()).unwrap();
    let mapped = geo.locate(ip("::ffff:198.51.100.7"));
    let v4 = geo.locate(ip("198.51.100.7"));
    assert_eq!(mapped.ip, ip("198.51.100.7"));
    assert_eq!(mapped.location, v4.location);
    assert_eq!(mapped.prefix_len, 24);
    assert_eq!(mapped.via.rule, Rule::Ipv4Mapped);
    // Issue 13: the scope echoed for an IPv6 option is 96 + the IPv4 scope, not /24.
    assert_eq!(mapped.via.scope(mapped.prefix_len), 120);
    assert_eq!(v4.via.scope(v4.prefix_len), 24);
}

#[test]
fn ipv6_addresses_are_located_with_ipv6_prefix_lengths() {
    let dir = TempDir::new();
    let geo = Geo::open(Some(&build_in(&dir, TEST_CSV)), &[], &Transition::default()).unwrap();
    let de = geo.locate(ip("2001:db8:1:2::3"));
    assert_eq!(de.source, LocationSource::Database);
    assert_eq!(de.location.unwrap().country.as_deref(), Some("DE"));
    assert_eq!(de.prefix_len, 48);
    let jp = geo.locate(ip("2001:db8:3:ffff::1"));
    assert_eq!(jp.location.unwrap().country.as_deref(), Some("JP"));
    assert_eq!(jp.prefix_len, 48);
    let unknown = geo.locate(ip("2001:db8:9::1"));
    assert_eq!(unknown.source, LocationSource::None);
    assert_eq!(unknown.location, None);
}

#[test]
fn private_and_special_addresses_have_no_location() {
    let dir = TempDir::new();
    // 8.0.0.0/6 in the test database covers 10.0.0.0/8: the private block still wins.
    let geo = Geo::open(Some(&build_in(&dir, TEST_CSV)), &[], &Transition::default()).unwrap();
    let cases = [
        ("10.1.2.3", 8),
        ("192.168.1.1", 16),
        ("172.16.5.4", 12),
        ("127.0.0.1", 8),
        ("100.64.0.1", 10),
        ("169.254.1.1", 16),
        ("224.0.0.251", 4),
        ("255.255.255.255", 4),
        // IPv4-compatible: 0.0.0.1 and 0.0.0.0, in 0.0.0.0/8.
        ("::1", 104),
        ("::", 104),
        ("fe80::1", 10),
        ("fd00::1", 7),
        ("ff02::1", 8),
        ("::ffff:10.0.0.1", 104),
    ];
    for (addr, scope) in cases {
        let got = geo.locate(ip(addr));
        assert_eq!(got.source, LocationSource::None, "{addr}");
        assert_eq!(got.location, None, "{addr}");
        assert_eq!(got.via.scope(got.prefix_len), scope, "{addr}");
    }
}

#[test]
fn nets_override_wins_over_the_database() {
    let dir = TempDir::new();
    let db = build_in(&dir, TEST_CSV);
    let geo = Geo::open(
        Some(&db),
        &nets(&[("198.51.100.0/24", "us-east")]),
        &Transition::default(),
    )
    .unwrap();
    let got = geo.locate(ip("198.51.100.7"));
    assert_eq!(got.source, LocationSource::Nets);
    assert_eq!(got.region.as_deref(), Some("us-east"));
    assert_eq!(got.location, None);
    assert_eq!(got.prefix_len, 24);
}

#[test]
fn nets_override_wins_for_private_addresses() {
    let geo = Geo::open(
        None,
        &nets(&[("10.20.0.0/16", "eu-west")]),
        &Transition::default(),
    )
    .unwrap();
    let got = geo.locate(ip("10.20.1.2"));
    assert_eq!(got.source, LocationSource::Nets);
    assert_eq!(got.region.as_deref(), Some("eu-west"));
    assert_eq!(got.prefix_len, 16);
}

#[test]
fn nets_longest_prefix_wins_whatever_the_file_order() {
    let overrides = nets(&[
        ("10.20.30.0/24", "ap-south"),
        ("10.0.0.0/8", "us-east"),
        ("10.20.0.0/16", "eu-west"),
    ]);
    let geo = Geo::open(None, &overrides, &Transition::default()).unwrap();
    let region = |a: &str| geo.locate(ip(a)).region.map(|r| r.to_string());
    assert_eq!(region("10.20.30.40").as_deref(), Some("ap-south"));
    assert_eq!(region("10.20.31.1").as_deref(), Some("eu-west"));
    assert_eq!(region("10.21.0.1").as_deref(), Some("us-east"));
    assert_eq!(region("11.0.0.1"), None);
}

/// One ECS scope case: overrides, client address, expected source/region and scope.
struct ScopeCase {
    why: &'static str,
    nets: &'static [(&'static str, &'static str)],
    ip: &'static str,
    source: LocationSource,
    region: Option<&'static str>,
    scope: u8,
}

#[test]
fn scope_is_the_matched_network_narrowed_by_overrides_inside_it() {
    use LocationSource::{Database, Nets, None as Nothing};
    let cases = [
        ScopeCase {
            why: "database network, nothing inside",
            nets: &[],
            ip: "198.51.100.7",
            source: Database,
            region: None,
            scope: 24,
        },
        ScopeCase {
            why: "override in the upper half narrows to the lower half",
            nets: &[("198.51.100.128/25", "us-east")],
            ip: "198.51.100.7",
            source: Database,
            region: None,
            scope: 25,
        },
        ScopeCase {
            why: "the override itself",
            nets: &[("198.51.100.128/25", "us-east")],
            ip: "198.51.100.200",
            source: Nets,
            region: Some("us-east"),
            scope: 25,
        },
        ScopeCase {
            why: "small override next door: scope keeps the first differing bit",
            nets: &[("198.51.100.8/30", "us-east")],
            ip: "198.51.100.7",
            source: Database,
            region: None,
            scope: 29,
        },
        ScopeCase {
            why: "several overrides: the most narrowing one decides",
            nets: &[
                ("198.51.100.128/25", "us-east"),
                ("198.51.100.16/28", "us-west"),
            ],
            ip: "198.51.100.7",
            source: Database,
            region: None,
            scope: 28,
        },
        ScopeCase {
            why: "override outside the database network does not narrow",
            nets: &[("198.51.101.0/24", "us-east")],
            ip: "198.51.100.7",
            source: Database,
            region: None,
            scope: 24,
        },
        ScopeCase {
            why: "override wider than the database network contains ip and wins",
            nets: &[("198.51.0.0/16", "us-east")],
            ip: "198.51.100.7",
            source: Nets,
            region: Some("us-east"),
            scope: 16,
        },
        ScopeCase {
            why: "outer override narrowed by an inner one to another region",
            nets: &[("198.51.0.0/16", "us-east"), ("198.51.100.0/24", "eu-west")],
            ip: "198.51.7.1",
            source: Nets,
            region: Some("us-east"),
            scope: 18,
        },
        ScopeCase {
            why: "inner override to the same region does not narrow",
            nets: &[("198.51.0.0/16", "us-east"), ("198.51.100.0/24", "us-east")],
            ip: "198.51.7.1",
            source: Nets,
            region: Some("us-east"),
            scope: 16,
        },
        ScopeCase {
            why: "inner override wins inside the outer one",
            nets: &[("198.51.0.0/16", "us-east"), ("198.51.100.0/24", "eu-west")],
            ip: "198.51.100.1",
            source: Nets,
            region: Some("eu-west"),
            scope: 24,
        },
        ScopeCase {
            why: "database splits 2.16.0.0/13 around the more specific 2.18.0.0/16",
            nets: &[],
            ip: "2.16.1.1",
            source: Database,
            region: None,
            scope: 15,
        },
        ScopeCase {
            why: "the more specific database network",
            nets: &[],
            ip: "2.18.1.1",
            source: Database,
            region: None,
            scope: 16,
        },
        ScopeCase {
            why: "database network covering a private block is narrowed to exclude it",
            nets: &[],
            ip: "8.8.8.8",
            source: Database,
            region: None,
            scope: 7,
        },
        ScopeCase {
            why: "private block narrowed by an override inside it",
            nets: &[("10.20.0.0/16", "eu-west")],
            ip: "10.1.2.3",
            source: Nothing,
            region: None,
            scope: 12,
        },
        ScopeCase {
            why: "IPv6 override inside an IPv6 database network",
            nets: &[("2001:db8:1:8000::/49", "us-east")],
            ip: "2001:db8:1::1",
            source: Database,
            region: None,
            scope: 49,
        },
        ScopeCase {
            why: "IPv4 overrides do not narrow IPv6 scopes",
            nets: &[("198.51.100.128/25", "us-east")],
            ip: "2001:db8:1::1",
            source: Database,
            region: None,
            scope: 48,
        },
        ScopeCase {
            why: "IPv4-mapped override matches the IPv4 client",
            nets: &[("::ffff:198.51.100.0/120", "us-east")],
            ip: "198.51.100.7",
            source: Nets,
            region: Some("us-east"),
            scope: 24,
        },
    ];
    let dir = TempDir::new();
    let db = build_in(&dir, TEST_CSV);
    for case in cases {
        let geo = Geo::open(Some(&db), &nets(case.nets), &Transition::default()).unwrap();
        let got = geo.locate(ip(case.ip));
        assert_eq!(got.source, case.source, "{}", case.why);
        assert_eq!(got.region.as_deref(), case.region, "{}", case.why);
        assert_eq!(got.prefix_len, case.scope, "{}", case.why);
    }
}

/// Returns the scope an unknown address should get: the largest network around `ip` that
/// holds none of `rows` (nor the IPv4 aliases of an IPv6 tree, for IPv6 addresses).
fn expected_unknown_scope(rows: &[Row], ip: IpAddr) -> u8 {
    let bits = Bits::of(ip);
    let mut others: Vec<Net> = rows.iter().map(|r| Net::of(r.network)).collect();
    if ip.is_ipv6() {
        // The IPv4 subtree (::/96) and its aliases hold data too.
        for alias in ["::/96", "::ffff:0:0/96", "2001::/32", "2002::/16"] {
            let n: ipnet::Ipv6Net = alias.parse().unwrap();
            others.push(Net {
                bits: u128::from(n.network()),
                len: n.prefix_len(),
                v6: true,
            });
        }
    }
    others
        .iter()
        .fold(0, |scope, net| prefix::narrow(scope, bits, net))
}

#[test]
fn unknown_address_scope_is_the_empty_network_around_it() {
    // Verifies that maxminddb reports the empty node's network for not-found lookups.
    let dir = TempDir::new();
    let geo = Geo::open(Some(&build_in(&dir, TEST_CSV)), &[], &Transition::default()).unwrap();
    let rows = parse_csv(TEST_CSV, "test.csv").unwrap();
    for addr in [
        "1.1.1.1",
        "12.0.0.1",
        "198.51.101.1",
        "198.51.99.255",
        "203.0.112.1",
        "223.255.255.1",
        "2001:db8:2::1",
        "2001:db8:4::1",
        "2400::1",
        "3fff::1",
    ] {
        let got = geo.locate(ip(addr));
        assert_eq!(got.source, LocationSource::None, "{addr}");
        assert_eq!(
            got.prefix_len,
            expected_unknown_scope(&rows, ip(addr)),
            "{addr}"
        );
    }
}

#[test]
fn without_a_database_only_overrides_locate() {
    let geo = Geo::open(
        None,
        &nets(&[("10.20.0.0/16", "eu-west")]),
        &Transition::default(),
    )
    .unwrap();
    assert!(geo.database_info().is_none());
    let got = geo.locate(ip("8.8.8.8"));
    assert_eq!(got.source, LocationSource::None);
    // 8.8.8.8 and 10.20.0.0 share 6 bits.
    assert_eq!(got.prefix_len, 7);
    // All of IPv6 answers the same, but for the embedding networks: 2001:db8:: and Teredo's
    // 2001::/32 share 20 bits.
    assert_eq!(geo.locate(ip("2001:db8::1")).prefix_len, 21);
    assert_eq!(geo.locate(ip("4000::1")).prefix_len, 2);
}

#[test]
fn flat_schema_records_are_understood() {
    let dir = TempDir::new();
    let path = dir.path("flat.mmdb");
    let mut w = Writer::builder("Flat-City").build();
    w.insert_value(
        "198.51.100.0/24".parse::<ipnet::IpNet>().unwrap(),
        Value::map([
            ("city", Value::from("Berlin")),
            ("country_code", Value::from("de")),
            ("latitude", Value::Float(52.5)),
            ("longitude", Value::Float(13.25)),
            ("postcode", Value::from("10115")),
        ]),
    )
    .unwrap();
    std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
    let geo = Geo::open(Some(&path), &[], &Transition::default()).unwrap();
    let loc = geo.locate(ip("198.51.100.1")).location.unwrap();
    assert_eq!(loc.coordinates(), Some((52.5, 13.25)));
    assert_eq!(loc.country.as_deref(), Some("DE"));
    assert_eq!(loc.continent, None);
}

#[test]
fn registered_country_is_used_when_country_is_absent() {
    let dir = TempDir::new();
    let path = dir.path("reg.mmdb");
    let mut w = Writer::new("GeoIP2-Country");
    w.insert_value(
        "198.51.100.0/24".parse::<ipnet::IpNet>().unwrap(),
        Value::map([
            ("continent", Value::map([("code", "EU")])),
            ("registered_country", Value::map([("iso_code", "NL")])),
        ]),
    )
    .unwrap();
    std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
    let geo = Geo::open(Some(&path), &[], &Transition::default()).unwrap();
    let loc = geo.locate(ip("198.51.100.1")).location.unwrap();
    assert_eq!(loc.country.as_deref(), Some("NL"));
    assert_eq!(loc.coordinates(), None);
}

#[test]
fn records_without_usable_fields_give_no_location() {
    let dir = TempDir::new();
    let path = dir.path("odd.mmdb");
    let mut w = Writer::new("Odd-DB");
    let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
    w.insert_value(net("198.51.100.0/24"), Value::from("not a map"))
        .unwrap();
    w.insert_value(
        net("203.0.113.0/24"),
        Value::map([
            ("location", Value::map([("latitude", Value::Double(95.0))])),
            ("country", Value::map([("iso_code", "XYZ")])),
        ]),
    )
    .unwrap();
    std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
    let geo = Geo::open(Some(&path), &[], &Transition::default()).unwrap();
    for addr in ["198.51.100.1", "203.0.113.1"] {
        let got = geo.locate(ip(addr));
        assert_eq!(got.source, LocationSource::None, "{addr}");
        assert_eq!(got.location, None, "{addr}");
    }
}

#[test]
fn ipv6_client_of_an_ipv4_only_database_is_unknown_with_scope_zero() {
    let dir = TempDir::new();
    let path = dir.path("v4.mmdb");
    let mut w = Writer::builder("V4-City").ip_version(IpVersion::V4).build();
    w.insert_value(
        "198.51.100.0/24".parse::<ipnet::IpNet>().unwrap(),
        Value::map([("country", Value::map([("iso_code", "DE")]))]),
    )
    .unwrap();
    std::fs::write(&path, w.to_bytes().unwrap()).unwrap();
    let geo = Geo::open(Some(&path), &[], &Transition::default()).unwrap();
    assert_eq!(geo.locate(ip("198.51.100.1")).prefix_len, 24);
    let v6 = geo.locate(ip("2001:db8::1"));
    assert_eq!(v6.source, LocationSource::None);
    // Unknown everywhere but in the embedding networks (2001::/32 shares 20 bits).
    assert_eq!(v6.prefix_len, 21);
}

#[test]
fn opening_a_missing_or_invalid_file_names_it() {
    let dir = TempDir::new();
    let missing = dir.path("missing.mmdb");
    let err = Geo::open(Some(&missing), &[], &Transition::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.mmdb"), "{err}");
    let junk = dir.path("junk.mmdb");
    std::fs::write(&junk, b"not a database").unwrap();
    let err = Geo::open(Some(&junk), &[], &Transition::default())
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot open GeoIP database"), "{err}");
    assert!(err.contains("junk.mmdb"), "{err}");
}

#[test]
fn csv_errors_name_the_line() {
    let header = "network,latitude,longitude,country,continent\n";
    let cases = [
        ("not,the,header\n", 1, "expected the header"),
        ("", 0, "empty file"),
        (
            "network,latitude,longitude,country,continent\n10.0.0.1/8,1,2,DE,EU\n",
            2,
            "host bits",
        ),
        ("1.2.3.0/24,1,2,DE\n", 2, "expected 5 fields"),
        ("1.2.3.0/33,1,2,DE,EU\n", 2, "not a CIDR"),
        ("1.2.3.0/24,91,2,DE,EU\n", 2, "latitude"),
        ("1.2.3.0/24,1,181,DE,EU\n", 2, "longitude"),
        ("1.2.3.0/24,1,,DE,EU\n", 2, "both"),
        ("1.2.3.0/24,1,2,de,EU\n", 2, "country \"de\""),
        ("1.2.3.0/24,1,2,DE,XX\n", 2, "continent \"XX\""),
        ("1.2.3.0/24,,,,\n", 2, "no location"),
        (
            "1.2.3.0/24,1,2,DE,EU\n\n1.2.3.0/24,1,2,DE,EU\n",
            4,
            "line 2",
        ),
    ];
    for (body, line, needle) in cases {
        let text = if body.starts_with("not,") || body.is_empty() || body.starts_with("network") {
            body.to_string()
        } else {
            format!("{header}{body}")
        };
        let err = parse_csv(&text, "bad.csv").unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, GeoError::Csv { line: l, .. } if l == line),
            "{body:?}: {msg}"
        );
        assert!(msg.starts_with(&format!("bad.csv:{line}: ")), "{msg}");
        assert!(msg.contains(needle), "{body:?}: {msg}");
    }
}

#[test]
fn build_rejects_aliased_networks_naming_the_line() {
    let rows = parse_csv(
        "network,latitude,longitude,country,continent\n2002::/16,1,2,DE,EU\n",
        "x.csv",
    )
    .unwrap();
    let err = build::encode(&rows).unwrap_err();
    assert!(err.contains("line 2") && err.contains("2002::/16"), "{err}");
}

#[test]
fn committed_sample_database_matches_the_csv() {
    // If this fails after editing geodata/sample.csv, rebuild the database:
    //   cargo run -- geodata build --csv geodata/sample.csv --out geodata/sample.mmdb
    let csv = std::fs::read_to_string(sample_path("sample.csv")).unwrap();
    let rows = parse_csv(&csv, "geodata/sample.csv").unwrap();
    let committed = Geo::open(
        Some(&sample_path("sample.mmdb")),
        &[],
        &Transition::default(),
    )
    .unwrap();
    let dir = TempDir::new();
    let fresh_path = dir.path("fresh.mmdb");
    std::fs::write(&fresh_path, build::encode(&rows).unwrap()).unwrap();
    let fresh = Geo::open(Some(&fresh_path), &[], &Transition::default()).unwrap();
    assert_eq!(committed.database_info(), fresh.database_info());
    for row in &rows {
        let first = row.network.network();
        let last = row.network.broadcast();
        for addr in [first, last] {
            let got = committed.locate(addr);
            assert_eq!(got, fresh.locate(addr), "line {}: {addr}", row.line);
            // And the CSV row itself is what answers (no more specific row covers these).
            let loc = got
                .location
                .unwrap_or_else(|| panic!("line {}: {addr}", row.line));
            assert_eq!(loc.country, row.country, "line {}", row.line);
            assert_eq!(loc.continent, row.continent, "line {}", row.line);
            assert_eq!(loc.coordinates(), row.coordinates, "line {}", row.line);
        }
    }
}

#[test]
fn sample_places_european_american_and_asian_clients_apart() {
    let geo = Geo::open(
        Some(&sample_path("sample.mmdb")),
        &[],
        &Transition::default(),
    )
    .unwrap();
    let continent = |a: &str| {
        geo.locate(ip(a))
            .location
            .and_then(|l| l.continent)
            .map(|c| c.to_string())
    };
    for (addr, want) in [
        ("2.16.1.1", "EU"),
        ("198.51.100.7", "EU"),
        ("2a01:4f8::1", "EU"),
        ("192.0.2.1", "NA"),
        ("73.1.2.3", "NA"),
        ("2601::1", "NA"),
        ("203.0.113.7", "AS"),
        ("126.1.2.3", "AS"),
        ("2400:4000::1", "AS"),
        ("177.40.0.1", "SA"),
        ("41.1.2.3", "AF"),
        ("1.120.0.1", "OC"),
        ("157.132.70.1", "AN"),
    ] {
        assert_eq!(continent(addr).as_deref(), Some(want), "{addr}");
    }
}

#[test]
fn code_accepts_two_letters_and_reads_like_a_str() {
    let de = Code::new("de").unwrap();
    assert_eq!(de.as_str(), "DE");
    assert_eq!(&*de, "DE");
    assert_eq!(de, "DE");
    assert_eq!(de.to_string(), "DE");
    assert_eq!(format!("{de:?}"), "\"DE\"");
    assert_eq!(serde_json::to_string(&de).unwrap(), "\"DE\"");
    assert_eq!(Some(de).as_deref(), Some("DE"));
    for bad in ["", "D", "DEU", "D1", "ü", "é"] {
        assert_eq!(Code::new(bad), None, "{bad:?}");
    }
}

#[test]
fn distance_between_known_cities_matches_published_values() {
    // Frankfurt – New York is about 6,200 km; London – Tokyo about 9,560 km.
    let fra_nyc = distance_km(50.1109, 8.6821, 40.7128, -74.0060);
    assert!((fra_nyc - 6200.0).abs() < 50.0, "{fra_nyc}");
    let lon_tyo = distance_km(51.5074, -0.1278, 35.6762, 139.6503);
    assert!((lon_tyo - 9560.0).abs() < 50.0, "{lon_tyo}");
}

#[test]
fn distance_is_zero_symmetric_and_bounded() {
    assert_eq!(distance_km(10.0, 20.0, 10.0, 20.0), 0.0);
    let a = distance_km(-33.87, 151.21, 40.71, -74.01);
    let b = distance_km(40.71, -74.01, -33.87, 151.21);
    assert!((a - b).abs() < 1e-9);
    // Antipodes: half the circumference, no NaN from rounding.
    let half = distance_km(0.0, 0.0, 0.0, 180.0);
    assert!(
        (half - std::f64::consts::PI * 6371.0).abs() < 1e-6,
        "{half}"
    );
    let poles = distance_km(90.0, 0.0, -90.0, 0.0);
    assert!(!poles.is_nan());
}

// ---- Issue 13: IPv6 transition prefixes and widest ECS scopes.

fn v4(s: &str) -> u32 {
    u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
}

fn v6(s: &str) -> u128 {
    u128::from(s.parse::<std::net::Ipv6Addr>().unwrap())
}

#[test]
fn rfc6052_nat64_addresses_embed_ipv4_at_every_prefix_length() {
    // RFC 6052 §2.4, the table of examples for 192.0.2.33.
    let cases = [
        (32, "2001:db8:c000:221::"),
        (40, "2001:db8:1c0:2:21::"),
        (48, "2001:db8:122:c000:2:2100::"),
        (56, "2001:db8:122:3c0:0:221::"),
        (64, "2001:db8:122:344:c0:2:2100:0"),
        (96, "2001:db8:122:344::192.0.2.33"),
    ];
    for (len, addr) in cases {
        assert_eq!(
            Rule::Nat64(len).extract(v6(addr)),
            v4("192.0.2.33"),
            "/{len}"
        );
        // The whole IPv4 address ends 8 bits later when it straddles the u octet (64..72).
        assert_eq!(Rule::Nat64(len).outer_scope(len, 0), len);
        assert_eq!(
            Rule::Nat64(len).outer_scope(len, 32),
            match len {
                32 => 64,
                96 => 128,
                _ => len + 40,
            }
        );
    }
    assert_eq!(Rule::Nat64(40).outer_scope(40, 24), 64);
    assert_eq!(Rule::Nat64(40).outer_scope(40, 25), 73);
    assert_eq!(Rule::Nat64(96).outer_scope(96, 24), 120);
}

#[test]
fn rfc3056_6to4_and_rfc4380_teredo_embed_ipv4() {
    assert_eq!(
        Rule::SixToFour.extract(v6("2002:c000:221::1")),
        v4("192.0.2.33")
    );
    assert_eq!(Rule::SixToFour.outer_scope(16, 24), 40);
    // RFC 4380 §4: the client 192.0.2.45 (obfuscated) behind server 65.54.227.120.
    let teredo = v6("2001:0:4136:e378:8000:63bf:3fff:fdd2");
    assert_eq!(Rule::Teredo.extract(teredo), v4("192.0.2.45"));
    assert_eq!(Rule::Teredo.outer_scope(32, 24), 120);
    assert_eq!(Rule::Teredo.outer_scope(32, 0), 32);
    assert_eq!(
        Rule::Ipv4Compatible.extract(v6("::198.51.100.7")),
        v4("198.51.100.7")
    );
}

/// 198.51.100.7 as 6to4, NAT64 (well-known and a configured /40) and Teredo clients.
const SIX_TO_FOUR: &str = "2002:c633:6407::1";
const NAT64_WKP: &str = "64:ff9b::198.51.100.7";
const NAT64_40: &str = "2001:db8:1c6:3364:7::";
// !198.51.100.7 = 57.204.155.248 = 0x39cc9bf8
const TEREDO: &str = "2001:0:4136:e378:8000:63bf:39cc:9bf8";

#[test]
fn issue_13_transition_clients_are_located_by_the_embedded_ipv4_address() {
    let dir = TempDir::new();
    let db = build_in(&dir, TEST_CSV);
    let transition = Transition {
        enabled: true,
        nat64_prefixes: vec!["2001:db8:100::/40".parse().unwrap()],
    };
    let geo = Geo::open(Some(&db), &[], &transition).unwrap();
    let berlin = geo.locate(ip("198.51.100.7"));
    for (addr, rule, scope) in [
        (SIX_TO_FOUR, Rule::SixToFour, 40),
        (NAT64_WKP, Rule::Nat64(96), 120),
        (NAT64_40, Rule::Nat64(40), 64),
        (TEREDO, Rule::Teredo, 120),
        ("::198.51.100.7", Rule::Ipv4Compatible, 120),
        ("::ffff:198.51.100.7", Rule::Ipv4Mapped, 120),
    ] {
        let got = geo.locate(ip(addr));
        assert_eq!(got.ip, ip("198.51.100.7"), "{addr}");
        assert_eq!(got.location, berlin.location, "{addr}");
        assert_eq!(got.via.rule, rule, "{addr}");
        assert_eq!(got.via.queried, ip(addr));
        assert_eq!(got.via.scope(got.prefix_len), scope, "{addr}");
    }
    assert_eq!(
        geo.locate(ip(TEREDO)).via.to_string(),
        "Teredo (inverted) 2001::/32"
    );
    // An address next to an embedding network never gets a scope that covers it.
    let next_to_teredo = geo.locate(ip("2001:1::1"));
    assert_eq!(next_to_teredo.via.rule, Rule::Direct);
    assert_eq!(next_to_teredo.prefix_len, 32);

    // Off: NAT64 and Teredo fall back to the database's record of the address itself (the
    // test database aliases 2002::/16 and 2001::/32 to IPv4, Teredo by the server's address).
    let off = Transition {
        enabled: false,
        nat64_prefixes: Vec::new(),
    };
    let geo = Geo::open(Some(&db), &[], &off).unwrap();
    for addr in [NAT64_WKP, TEREDO] {
        let got = geo.locate(ip(addr));
        assert_eq!(got.via.rule, Rule::Direct, "{addr}");
        assert_ne!(got.location, berlin.location, "{addr}");
    }
    // IPv4-mapped and IPv4-compatible stay on.
    assert_eq!(
        geo.locate(ip("::ffff:198.51.100.7")).via.rule,
        Rule::Ipv4Mapped
    );
}

#[test]
fn issue_13_a_nets_entry_inside_a_transition_prefix_wins_and_narrows_the_others() {
    let dir = TempDir::new();
    let db = build_in(&dir, TEST_CSV);
    let geo = Geo::open(
        Some(&db),
        &nets(&[("2002:c633:6400::/40", "ap")]),
        &Transition::default(),
    )
    .unwrap();
    let got = geo.locate(ip(SIX_TO_FOUR));
    assert_eq!(got.source, LocationSource::Nets);
    assert_eq!(got.via.rule, Rule::Direct);
    // 198.51.101.0 as 6to4: located by IPv4, but its scope must not cover 2002:c633:6400::/40.
    let beside = geo.locate(ip("2002:c633:6500::"));
    assert_eq!(beside.via.rule, Rule::SixToFour);
    assert_eq!(beside.via.scope(0), 40);
}

/// Classifies by continent (a stand-in for a decision function): `[nets]` regions named like
/// a continent share its class; no location is class 0.
fn by_continent(l: &Located, out: &mut [u32]) {
    let code = |s: &str| u32::from(u16::from_be_bytes([s.as_bytes()[0], s.as_bytes()[1]]));
    out[0] = match (&l.region, &l.location) {
        (Some(r), _) => code(&r.to_uppercase()),
        (None, Some(loc)) => loc.continent.map_or(1, |c| code(&c)),
        (None, None) => 0,
    };
}

fn maps_for(geo: &Geo) -> ScopeMap {
    let (mut maps, stats) = geo
        .scope_maps(1, &mut by_continent, &|| false)
        .unwrap()
        .unwrap();
    assert!(stats.networks > 0 || geo.database_info().is_none());
    maps.pop().unwrap()
}

const WIDE_CSV: &str = "\
network,latitude,longitude,country,continent
1.0.0.0/24,52.52,13.405,DE,EU
1.0.1.0/24,52.52,13.405,DE,EU
1.0.2.0/23,50.11,8.68,DE,EU
1.0.4.0/22,48.85,2.35,FR,EU
1.0.16.0/20,35.67,139.65,JP,AS
1.0.32.0/19,40.71,-74.0,US,NA
2a01:4f8::/32,49.45,11.07,DE,EU
2a01:4f9::/32,48.85,2.35,FR,EU
2a01:4fa::/31,40.71,-74.0,US,NA
";

#[test]
fn issue_13_widest_scope_merges_networks_and_nets_entries_with_the_same_decision() {
    let dir = TempDir::new();
    let db = build_in(&dir, WIDE_CSV);
    // (nets, address, widest scope in the queried family)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, u8);
    let cases: &[Case<'_>] = &[
        // Four EU networks of three sizes make one EU /21.
        (&[], "1.0.0.5", 21),
        (&[], "1.0.6.1", 21),
        // 1.0.8.0/21 has no location: its own /21.
        (&[], "1.0.9.9", 21),
        (&[], "1.0.17.1", 20),
        (&[], "1.0.40.1", 19),
        // A [nets] entry to "eu" next to the EU networks merges with them into a /20 ...
        (&[("1.0.8.0/21", "eu")], "1.0.0.5", 20),
        (&[("1.0.8.0/21", "eu")], "1.0.9.9", 20),
        // ... and one to another decision inside them splits them.
        (&[("1.0.2.0/24", "as")], "1.0.0.5", 23),
        (&[("1.0.2.0/24", "as")], "1.0.3.5", 24),
        (&[("1.0.2.0/24", "as")], "1.0.5.5", 22),
        (&[("1.0.2.0/24", "as")], "1.0.2.1", 24),
        // IPv6: DE and FR are both EU: one /31; the US /31 beside it is another.
        (&[], "2a01:4f8:1::1", 31),
        (&[], "2a01:4f9:ffff::1", 31),
        (&[], "2a01:4fb::1", 31),
        // Embedded IPv4: 16 + 21 for 6to4, 96 + 21 for IPv4-mapped, NAT64.
        (&[], "2002:100:5::", 37),
        (&[], "::ffff:1.0.0.5", 117),
        (&[], "64:ff9b::1.0.0.5", 117),
    ];
    for &(n, addr, want) in cases {
        let geo = Geo::open(Some(&db), &nets(n), &Transition::default()).unwrap();
        let map = maps_for(&geo);
        let located = geo.locate(ip(addr));
        assert_eq!(map.scope(&located), Some(want), "{addr} with {n:?}");
        // Never narrower than... the matched network: the widest contains it.
        assert!(want <= located.via.scope(located.prefix_len), "{addr}");
    }
}

#[test]
fn issue_13_widest_scope_is_never_wider_than_the_decision_allows() {
    // An oracle independent of the map: the class is constant between consecutive
    // boundaries (network starts and ends of the CSV, nets, non-public blocks and embedding
    // networks), so a block is uniform when every boundary inside it has the class of its
    // start. Embedding networks count as a class of their own, as the map treats them.
    let dir = TempDir::new();
    let csv = format!("{TEST_CSV}{}", &WIDE_CSV[build::CSV_HEADER.len() + 1..]);
    let db = build_in(&dir, &csv);
    let overrides = nets(&[
        ("198.51.100.128/25", "as"),
        ("1.0.8.0/21", "eu"),
        ("2a01:4f8:8::/48", "na"),
    ]);
    let geo = Geo::open(Some(&db), &overrides, &Transition::default()).unwrap();
    let map = maps_for(&geo);
    let class = |a: IpAddr| -> u32 {
        let l = geo.locate(a);
        if l.via.rule != Rule::Direct {
            return u32::MAX;
        }
        let mut out = [0];
        by_continent(&l, &mut out);
        out[0]
    };
    let rows = parse_csv(&csv, "t.csv").unwrap();
    let mut nets_all: Vec<Net> = rows.iter().map(|r| Net::of(r.network)).collect();
    nets_all.extend(overrides.iter().map(|o| Net::of(o.net)));
    nets_all.extend(prefix::non_public());
    nets_all.extend(prefix::embeddings(true, &[]).iter().map(|e| e.net));
    for v6 in [false, true] {
        let width: u32 = if v6 { 128 } else { 32 };
        let to_ip = |x: u128| -> IpAddr {
            if v6 {
                IpAddr::V6(x.into())
            } else {
                IpAddr::V4((x as u32).into())
            }
        };
        let value = |n: &Net| if v6 { n.bits } else { n.bits >> 96 };
        let span = |len: u8| -> u128 {
            let host = width - u32::from(len);
            if host >= 128 {
                u128::MAX
            } else {
                (1u128 << host) - 1
            }
        };
        let mut bounds: Vec<u128> = Vec::new();
        for n in nets_all.iter().filter(|n| n.v6 == v6) {
            bounds.push(value(n));
            if let Some(b) = (value(n) | span(n.len)).checked_add(1) {
                bounds.push(b);
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        let uniform = |x: u128, p: u8| -> bool {
            let lo = x & !span(p);
            let hi = lo | span(p);
            let c = class(to_ip(lo));
            bounds
                .iter()
                .filter(|&&b| b > lo && b <= hi)
                .all(|&b| class(to_ip(b)) == c)
        };
        // Probe every boundary, its neighbours and a spread of addresses.
        let mut probes: Vec<u128> = bounds
            .iter()
            .flat_map(|&b| [b, b.wrapping_sub(1), b + 1])
            .collect();
        let mut x: u128 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            probes.push(if v6 { x } else { x >> 96 });
        }
        for probe in probes {
            let probe = probe & span(0);
            let a = to_ip(probe);
            let located = geo.locate(a);
            if located.via.rule != Rule::Direct {
                continue;
            }
            let Some(got) = map.scope(&located) else {
                continue;
            };
            let want = (0..=width as u8).find(|&p| uniform(probe, p)).unwrap();
            assert_eq!(got, want, "{a}");
        }
    }
}
