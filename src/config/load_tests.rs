//! Config of load and spill-over (issue 16): `load` on a check, `high_watermark` on a
//! service and its endpoints; every mistake reported at once, naming file, key and service.

use super::*;

fn parse(text: &str) -> Result<Config, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("z.zone"), "").unwrap();
    parse_str(&dir.path().join("m.toml"), text)
        .map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

const BASE: &str = r#"
[[zone]]
origin = "example.net."
file = "z.zone"
[region.eu-west]
latitude = 53.3
longitude = -6.3
[region.us-east]
latitude = 38.9
longitude = -77.4
"#;

#[test]
fn issue_16_load_and_high_watermark_are_read_with_their_defaults() {
    let c = parse(&format!(
        r#"{BASE}
[check.hdr]
kind = "http"
port = 8080
load = {{ header = "X-Load" }}
[check.js]
kind = "https"
load = {{ json = "/stats/active", capacity = 500 }}
[[service]]
name = "api.example.net."
policy = "nearest"
check = "hdr"
high_watermark = 0.9
endpoints = [
  {{ region = "eu-west", addresses = ["192.0.2.1"], high_watermark = 0.7 }},
  {{ region = "us-east", addresses = ["192.0.2.2"], check = "js" }},
]
[[service]]
name = "www.example.net."
policy = "failover"
check = "hdr"
endpoints = [{{ region = "eu-west", addresses = ["192.0.2.1"] }}]
"#
    ))
    .unwrap();
    let hdr = c.checks.iter().find(|c| c.name == "hdr").unwrap();
    let load = hdr.load.as_ref().unwrap();
    assert_eq!(load.source, LoadSource::Header("X-Load".into()));
    assert_eq!(load.load_of(0.93), Some(0.93));
    let js = c.checks.iter().find(|c| c.name == "js").unwrap();
    let load = js.load.as_ref().unwrap();
    assert_eq!(load.source, LoadSource::Json("/stats/active".into()));
    assert_eq!(load.load_of(450.0), Some(0.9));
    assert_eq!(load.load_of(-1.0), None);
    let eps = &c.services[0].endpoints;
    assert_eq!((eps[0].high_watermark, eps[1].high_watermark), (0.7, 0.9));
    assert!(eps[0].has_load() && eps[1].has_load());
    assert_eq!(
        c.services[1].endpoints[0].high_watermark,
        DEFAULT_HIGH_WATERMARK
    );
}

#[test]
fn issue_16_every_load_mistake_is_reported_at_once_with_file_key_and_service() {
    let errors = parse(&format!(
        r#"{BASE}
[check.badptr]
kind = "http"
load = {{ json = "load" }}
[check.tilde]
kind = "http"
load = {{ json = "/a~2b" }}
[check.both]
kind = "http"
load = {{ header = "X-Load", json = "/load" }}
[check.none]
kind = "http"
load = {{ capacity = 10 }}
[check.cap]
kind = "http"
load = {{ header = "X-Load", capacity = 0 }}
[check.tcp]
kind = "tcp"
port = 80
load = {{ header = "X-Load" }}
[check.ok]
kind = "http"
load = {{ header = "X-Load" }}
[[service]]
name = "api.example.net."
policy = "nearest"
check = "ok"
high_watermark = 1.5
endpoints = [
  {{ region = "eu-west", addresses = ["192.0.2.1"], high_watermark = 0 }},
]
[[service]]
name = "w.example.net."
policy = "weighted"
check = "ok"
high_watermark = 0.9
endpoints = [{{ region = "eu-west", addresses = ["192.0.2.1"] }}]
"#
    ))
    .unwrap_err();
    let text = errors.join("\n");
    println!("{text}");
    for want in [
        "check.badptr.load.json: \"load\" is not a JSON pointer (RFC 6901): it must be empty or start with '/'",
        "check.tilde.load.json: \"/a~2b\" is not a JSON pointer (RFC 6901): '~' must be followed by 0 or 1",
        "check.both.load: set either header or json, not both",
        "check.none.load: needs header = \"NAME\" or json = \"/pointer\"",
        "check.cap.load.capacity: 0 must be a number greater than zero",
        "check.tcp.load: applies only to http and https checks",
        "service[\"api.example.net.\"].high_watermark: 1.5 is outside (0, 1]",
        "service[\"api.example.net.\"].endpoints[0].high_watermark: 0 is outside (0, 1]",
        "service[\"w.example.net.\"].high_watermark: applies only to the nearest, geo and failover policies",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        errors.iter().all(|e| e.contains("m.toml")),
        "every error names the file:\n{text}"
    );
}

#[test]
fn issue_16_an_unknown_key_in_load_is_rejected() {
    let errors = parse(&format!(
        "{BASE}\n[check.x]\nkind = \"http\"\nload = {{ heder = \"X-Load\" }}\n"
    ))
    .unwrap_err();
    assert!(
        errors
            .join("\n")
            .contains("check.x.load: unknown field `heder`"),
        "{errors:?}"
    );
}

#[test]
fn issue_16_a_check_that_reads_load_differs_from_one_that_does_not() {
    // A changed load signal restarts the probes of a reload (probes_differ compares checks).
    let a = LoadSignal {
        source: LoadSource::Header("X-Load".into()),
        capacity: None,
    };
    let b = LoadSignal {
        capacity: Some(100.0),
        ..a.clone()
    };
    assert_ne!(a, b);
    assert_eq!(a, a.clone());
}

#[test]
fn issue_16_a_high_watermark_without_a_load_reading_check_is_warned_about() {
    let config = parse(&format!(
        r#"{BASE}
[check.plain]
kind = "http"
[check.loaded]
kind = "http"
load = {{ header = "X-Load" }}
[[service]]
name = "api.example.net."
policy = "nearest"
check = "plain"
high_watermark = 0.7
endpoints = [
  {{ region = "eu-west", addresses = ["192.0.2.1"] }},
  {{ region = "us-east", addresses = ["192.0.2.2"], check = "loaded" }},
]
[[service]]
name = "b.example.net."
policy = "nearest"
endpoints = [{{ region = "eu-west", addresses = ["192.0.2.3"], high_watermark = 0.6 }}]
[[service]]
name = "c.example.net."
policy = "nearest"
check = "plain"
endpoints = [{{ region = "eu-west", addresses = ["192.0.2.4"] }}]
"#
    ))
    .expect("valid config");
    let warnings = config.warnings().join("\n");
    println!("{warnings}");
    for want in [
        "service[\"api.example.net.\"].endpoints[0].high_watermark: 0.7 has no effect: its check \"plain\" reads no load (set `load` on it)",
        "service[\"b.example.net.\"].endpoints[0].high_watermark: 0.6 has no effect: it has no check, so no load is read",
    ] {
        assert!(warnings.contains(want), "missing {want:?} in:\n{warnings}");
    }
    // The endpoint whose check reads load, and a service that sets no watermark: no warning.
    assert!(
        !warnings.contains("endpoints[1].high_watermark"),
        "{warnings}"
    );
    assert!(!warnings.contains("c.example.net."), "{warnings}");
    assert_eq!(config.warnings().len(), 2, "{warnings}");
}
