//! Monitoring as an on-call engineer gets it (issue 12): `/metrics` in both exposition formats
//! parsed by Prometheus' own tools, health apart from drains, services failing open (gauge and
//! WARN log), the shipped alert rules with their unit tests, and the Grafana dashboard and the
//! alerts referring only to metrics that the binary exposes.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use meridian::metrics::{
    BUILD_INFO, DNS_ANSWERS_TOTAL, DNS_ECS_QUERIES_TOTAL, SERVICE_ALL_DOWN, SERVICE_FAILING_OPEN,
    TARGET_DRAINED, TARGET_UP,
};

use crate::admin::{PROMETHEUS_ACCEPT, Sample, cfg, check, eventually, parse_exposition, value};
use crate::harness::{HttpStub, Server, add_option, ecs, http, query, repo, tool};

/// Runs `program` with `args` (and `stdin`), returns (exit code, stdout + stderr).
fn run_tool(program: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(repo())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A server whose exposition holds every metric family: a probed service with one backend up
/// and one down (transitions, probe histograms), a service failing open, the GeoIP database,
/// rate limiting, and queries with and without ECS.
fn exercised_server(backend: &HttpStub) -> Server {
    let s = Server::start(&cfg(
        "geoip = \"{GEO}\"",
        &format!(
            "[rate_limit]\nresponses_per_second = 1000\n\
             {}[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
             endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.1\", \"::1\"] }}, \
                          {{ region = \"eu-west\", addresses = [\"127.0.0.2\"] }}]\n\
             [[service]]\nname = \"pay.example.net.\"\npolicy = \"failover\"\ncheck = \"web\"\n\
             endpoints = [{{ region = \"eu-west\", addresses = [\"127.0.0.3\"] }}]\n",
            check("web", backend.addr.port())
        ),
    ));
    crate::admin::wait_ready(&s);
    // The targets without a backend go down after `fall` failed probes.
    eventually(
        "the targets without a backend down",
        Duration::from_secs(15),
        || {
            let m = crate::admin::scrape(&s);
            ["127.0.0.2", "127.0.0.3", "::1"].iter().all(|a| {
                m.iter()
                    .any(|x| x.name == TARGET_UP && x.labels["address"] == *a && x.value == 0.0)
            })
        },
    );
    s
}

fn scrape_text(s: &Server, accept: Option<&str>) -> (String, String) {
    let headers: Vec<(&str, &str)> = accept.map(|a| vec![("Accept", a)]).unwrap_or_default();
    let r = http(s.admin(), "GET", "/metrics", &headers, "");
    assert_eq!(r.status, 200, "{}", r.body);
    (r.header("content-type").unwrap_or("").to_string(), r.body)
}

/// The metric names a PromQL expression refers to (`meridian_*` and `process_*`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let end = (i..bytes.len())
                .find(|&j| !word(bytes[j]))
                .unwrap_or(bytes.len());
            let w = &expr[i..end];
            if w.starts_with("meridian_") || w.starts_with("process_") {
                out.insert(w.to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Every `expr` and templating `query` string of a Grafana dashboard.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

#[test]
fn metrics_negotiate_openmetrics_or_prometheus_text_and_promtool_parses_both() {
    let Some(promtool) = tool("metrics format test", &["promtool"], "prometheus") else {
        return;
    };
    let backend = HttpStub::start(200);
    let s = exercised_server(&backend);
    // One query with ECS, one without, so that every family has samples.
    let mut with_ecs = query("api.example.net.", RecordType::A);
    add_option(&mut with_ecs, ecs("198.51.100.0", 24));
    let answer = Message::from_vec(&s.udp_raw(&with_ecs.to_vec().unwrap()).unwrap()).unwrap();
    assert_eq!(answer.answers.len(), 1);
    s.ask("api.example.net.", RecordType::AAAA);
    s.ask("example.net.", RecordType::SOA);

    // No Accept header (curl): the Prometheus text format 0.0.4, which promtool lints.
    let (ctype, text) = scrape_text(&s, None);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    assert!(
        text.contains("# TYPE meridian_dns_queries_total counter\n"),
        "{text}"
    );
    let (code, out) = run_tool(&promtool, &["check", "metrics"], Some(&text));
    assert_eq!(
        (code, out.trim()),
        (0, ""),
        "promtool check metrics:\n{text}"
    );

    // Prometheus' Accept header: OpenMetrics, which promtool's OpenMetrics parser (the one
    // Prometheus scrapes with) takes for a backfill; samples need timestamps there.
    let (ctype, om) = scrape_text(&s, Some(PROMETHEUS_ACCEPT));
    assert_eq!(
        ctype,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE meridian_dns_queries counter\n"), "{om}");
    let stamped: String = om
        .lines()
        .map(|l| {
            if l.starts_with('#') {
                format!("{l}\n")
            } else {
                format!("{l} 1700000000\n")
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.om");
    std::fs::write(&file, stamped).unwrap();
    let blocks = dir.path().join("blocks");
    let (code, out) = run_tool(
        &promtool,
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            file.to_str().unwrap(),
            blocks.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "promtool OpenMetrics parse: {out}\n{om}");
    // Both formats carry the same samples.
    let (a, b) = (parse_exposition(&text), parse_exposition(&om));
    let names = |v: &[Sample]| v.iter().map(|s| s.name.clone()).collect::<BTreeSet<_>>();
    assert_eq!(names(&a), names(&b));

    // Build info: the version and the commit the binary was built from.
    let build = b.iter().find(|x| x.name == BUILD_INFO).expect("build info");
    assert_eq!(build.value, 1.0);
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(head) => assert_eq!(build.labels["commit"], head),
        None => assert!(!build.labels["commit"].is_empty()),
    }
    // Process metrics from /proc/self.
    let v = |name: &str| value(&b, name, &[]).unwrap_or_else(|| panic!("no {name}:\n{om}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = v("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 600.0,
        "{started} vs {now}"
    );
    assert!(v("process_resident_memory_bytes") > 1e6);
    assert!(v("process_open_fds") >= 5.0, "sockets and files are open");
    assert!(v("process_max_fds") >= v("process_open_fds"));
    assert!(v("process_cpu_seconds_total") >= 0.0);
    // ECS-bearing and plain queries, answers by family.
    assert_eq!(
        value(&b, DNS_ECS_QUERIES_TOTAL, &[("ecs", "yes")]),
        Some(1.0)
    );
    assert!(value(&b, DNS_ECS_QUERIES_TOTAL, &[("ecs", "no")]).unwrap() >= 2.0);
    let answers = |region: &str, family: &str| {
        value(
            &b,
            DNS_ANSWERS_TOTAL,
            &[
                ("service", "api.example.net."),
                ("region", region),
                ("family", family),
            ],
        )
    };
    // 198.51.100.0/24 is in Germany in the sample database: eu-west is down (nothing listens
    // on 127.0.0.2), so us-east answers A; AAAA only us-east has.
    assert_eq!(
        (answers("us-east", "A"), answers("us-east", "AAAA")),
        (Some(1.0), Some(1.0))
    );
    assert!(value(&b, "meridian_geoip_build_timestamp_seconds", &[]).unwrap() > 1.0e9);
}

#[test]
fn target_up_is_the_probe_result_drains_are_apart_and_failing_open_is_a_gauge_and_a_warning() {
    let backend = HttpStub::start(200);
    let s = exercised_server(&backend);
    let m = crate::admin::scrape(&s);
    let target = |m: &[Sample], name: &str, region: &str, address: &str| {
        value(
            m,
            name,
            &[
                ("service", "api.example.net."),
                ("region", region),
                ("address", address),
            ],
        )
    };
    let service = |m: &[Sample], name: &str, service: &str, family: &str| {
        value(m, name, &[("service", service), ("family", family)])
    };
    // 127.0.0.2 has nothing listening: down, not drained.
    assert_eq!(target(&m, TARGET_UP, "eu-west", "127.0.0.2"), Some(0.0));
    assert_eq!(
        target(&m, TARGET_DRAINED, "eu-west", "127.0.0.2"),
        Some(0.0)
    );
    assert_eq!(target(&m, TARGET_UP, "us-east", "127.0.0.1"), Some(1.0));
    // pay.example.net.'s only target is down: it fails open (when_all_down = "all").
    assert_eq!(
        service(&m, SERVICE_FAILING_OPEN, "pay.example.net.", "A"),
        Some(1.0)
    );
    assert_eq!(
        service(&m, SERVICE_ALL_DOWN, "pay.example.net.", "A"),
        Some(1.0)
    );
    assert_eq!(
        service(&m, SERVICE_FAILING_OPEN, "api.example.net.", "A"),
        Some(0.0)
    );
    let pay_warning = || {
        s.log_text()
            .lines()
            .find(|l| l.contains("service fails open") && l.contains("pay.example.net."))
            .map(str::to_string)
    };
    eventually(
        "a WARN that pay.example.net. fails open",
        Duration::from_secs(10),
        || pay_warning().is_some(),
    );
    assert!(pay_warning().unwrap().contains(" WARN "));

    // Draining us-east: its targets stay up by their probes and show as drained; with
    // eu-west down, api.example.net. has nothing usable left for A and fails open too.
    let r = http(s.admin(), "POST", "/regions/us-east/drain", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let m = crate::admin::scrape(&s);
    assert_eq!(target(&m, TARGET_UP, "us-east", "127.0.0.1"), Some(1.0));
    assert_eq!(
        target(&m, TARGET_DRAINED, "us-east", "127.0.0.1"),
        Some(1.0)
    );
    assert_eq!(
        service(&m, SERVICE_FAILING_OPEN, "api.example.net.", "A"),
        Some(1.0)
    );
    let started = Instant::now();
    eventually(
        "a WARN that api.example.net. fails open",
        Duration::from_secs(10),
        || {
            s.log_text().lines().any(|l| {
                l.contains("service fails open")
                    && l.contains("api.example.net.")
                    && l.contains("family=\"A\"")
            })
        },
    );
    // Undrain: it recovers, and says so.
    let r = http(s.admin(), "POST", "/regions/us-east/undrain", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(
        "a WARN that api.example.net. recovered",
        Duration::from_secs(10),
        || {
            s.log_text().lines().any(|l| {
                l.contains("service recovered")
                    && l.contains("api.example.net.")
                    && l.contains("family=\"A\"")
            })
        },
    );
    eprintln!(
        "failing open logged and recovered within {:?}",
        started.elapsed()
    );
    let m = crate::admin::scrape(&s);
    assert_eq!(
        service(&m, SERVICE_FAILING_OPEN, "api.example.net.", "A"),
        Some(0.0)
    );
}

#[test]
fn alert_rules_pass_promtool_and_each_alert_has_a_unit_test_and_a_runbook() {
    let Some(promtool) = tool("alert rules test", &["promtool"], "prometheus") else {
        return;
    };
    let (code, out) = run_tool(
        &promtool,
        &["check", "rules", "deploy/prometheus/alerts.yml"],
        None,
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = run_tool(
        &promtool,
        &["test", "rules", "deploy/prometheus/alerts_test.yml"],
        None,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");

    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(repo().join("deploy/prometheus/alerts_test.yml")).unwrap();
    let runbooks = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 9, "{alerts:?}");
    for alert in &alerts {
        // A test where it fires (expected alerts listed after its name).
        let fires = tests.split("alertname: ").skip(1).any(|t| {
            t.starts_with(&format!("{alert}\n"))
                && t.lines().nth(1).is_some_and(|l| l.trim() == "exp_alerts:")
        });
        assert!(fires, "no unit test where {alert} fires");
        let anchor = alert.to_ascii_lowercase();
        assert!(
            rules.contains(&format!("runbook_url: \"docs/operations.md#{anchor}\"")),
            "{alert}: runbook link"
        );
        assert!(
            runbooks.contains(&format!("\n### {alert}\n")),
            "{alert}: no runbook heading in docs/operations.md"
        );
    }
}

#[test]
fn dashboard_and_alert_rules_name_only_metrics_the_binary_exposes() {
    let backend = HttpStub::start(200);
    let s = exercised_server(&backend);
    s.ask("api.example.net.", RecordType::A);
    let (_, text) = scrape_text(&s, None);
    let exposed: BTreeSet<String> = parse_exposition(&text)
        .into_iter()
        .map(|x| x.name)
        .collect();

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/meridian.json")).unwrap(),
    )
    .expect("the dashboard is valid JSON");
    assert_eq!(dashboard["uid"], "meridian");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let used: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(used.len() >= 12, "{used:?}");
    let missing: Vec<_> = used.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "the dashboard names metrics the binary does not expose: {missing:?}\nexposed: {exposed:?}"
    );

    // Only a fleet has the `[cluster]` metrics (README's rows say so).
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let fleet_only: BTreeSet<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `meridian_cluster_") && l.contains("with `[cluster]`"))
        .flat_map(metric_names)
        .collect();
    assert!(
        fleet_only.contains("meridian_cluster_connected"),
        "{fleet_only:?}"
    );
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).unwrap();
    let used: BTreeSet<String> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(metric_names)
        .collect();
    assert!(used.len() >= 8, "{used:?}");
    let missing: Vec<_> = used
        .difference(&exposed)
        .filter(|n| !fleet_only.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "the alert rules name metrics the binary does not expose: {missing:?}"
    );
}

/// Metric families exposed only when some check has `load` (issue 16).
const LOAD_ONLY: [&str; 3] = [
    "meridian_target_load",
    "meridian_region_load",
    "meridian_region_spill_fraction",
];

#[test]
fn readme_lists_every_metric_the_binary_exposes_with_its_type() {
    let backend = HttpStub::start(200);
    let s = exercised_server(&backend);
    s.ask("api.example.net.", RecordType::A);
    let (_, text) = scrape_text(&s, None);
    // Family -> type, from the `# TYPE` lines of the Prometheus text format.
    let exposed: std::collections::BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.trim().to_string()))
        .collect();
    assert!(exposed.len() >= 20, "{exposed:?}");

    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has a Metrics section");
    let mut listed = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        // `| metric | type | labels | meaning |` (no cell holds a `|`).
        let cells: Vec<&str> = row.split('|').skip(1).map(str::trim).collect();
        let names = metric_names(cells[0]);
        assert!(!names.is_empty(), "{row}");
        for name in &names {
            match exposed.get(name) {
                // The type column, where the row has one, is the exposed type.
                Some(t) => assert!(
                    cells[1].is_empty() || cells[1] == t,
                    "README says {name} is a {}, the binary says {t}",
                    cells[1]
                ),
                // Only a fleet has the cluster metrics (the row says so), only a check with
                // `load` the load and spill gauges (issue 16).
                None => assert!(
                    row.contains("with `[cluster]`") || LOAD_ONLY.contains(&name.as_str()),
                    "README lists {name}, which the binary does not expose: {row}"
                ),
            }
        }
        listed.extend(names);
    }
    let missing: Vec<_> = exposed.keys().filter(|n| !listed.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "README's metric table misses {missing:?}"
    );
}

#[test]
fn status_page_banner_says_servfail_or_nodata_when_a_service_has_nothing_usable() {
    use crate::backend::{Mode, backends};
    let (port, backends) = backends(&["127.0.0.11", "127.0.0.12"]);
    let s = Server::start(&cfg(
        "",
        &format!(
            "{}[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
             when_all_down = \"empty\"\n\
             endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.11\"] }}]\n\
             [[service]]\nname = \"pay.example.net.\"\npolicy = \"failover\"\ncheck = \"web\"\n\
             when_all_down = \"servfail\"\n\
             endpoints = [{{ region = \"eu-west\", addresses = [\"127.0.0.12\"] }}]\n",
            check("web", port)
        ),
    ));
    crate::admin::wait_ready(&s);
    let page = || http(s.admin(), "GET", "/", &[], "").body;
    eventually("both services usable", Duration::from_secs(20), || {
        !page().contains("data-banner=")
    });
    for b in &backends {
        b.set(Mode::Status(503));
    }
    eventually("two all-down banners", Duration::from_secs(20), || {
        page().matches("data-banner=\"all-down\"").count() == 2
    });
    let html = page();
    // The banner's element, its text included.
    let banner = |service: &str| -> &str {
        let attr = format!("data-banner=\"all-down\" data-service=\"{service}\"");
        let i = html
            .find(&attr)
            .unwrap_or_else(|| panic!("no {attr}: {html}"));
        let end = i + html[i..].find("</div>").unwrap();
        &html[i..end]
    };
    assert!(
        banner("pay.example.net.").contains("clients get SERVFAIL"),
        "{html}"
    );
    assert!(
        banner("api.example.net.").contains("clients get NODATA"),
        "{html}"
    );
    assert!(!html.contains("data-banner=\"failing-open\""), "{html}");
    // What the banners say is what clients get.
    let pay = s.ask("pay.example.net.", RecordType::A);
    assert_eq!(
        pay.metadata.response_code,
        hickory_proto::op::ResponseCode::ServFail
    );
    let api = s.ask("api.example.net.", RecordType::A);
    assert_eq!(
        api.metadata.response_code,
        hickory_proto::op::ResponseCode::NoError
    );
    assert!(api.answers.is_empty(), "{api:?}");
}

/// A server posting notifications in `format` to `hook`, probing one target on `backend`
/// (the only target of its service: it fails open when the backend fails); `extra` goes into
/// `[notify]`, `files` are written beside the config.
fn notifying_server(format: &str, hook: &HttpStub, backend: &HttpStub, extra: &str) -> Server {
    let s = crate::admin::start_with(
        &cfg(
            "nsid = \"notify-1\"",
            &format!(
                "[notify]\nwebhook_url = \"http://{}/hook\"\ntimeout = \"1s\"\nretries = 2\n\
                 format = \"{format}\"\n{extra}\n\
                 {}[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
                 endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.1\"] }}]\n",
                hook.addr,
                check("web", backend.addr.port())
            ),
        ),
        &[("routing.key", "R0UT1NG-KEY\n")],
    );
    crate::admin::wait_ready(&s);
    s
}

/// The JSON bodies the receiver got so far.
fn bodies(hook: &HttpStub) -> Vec<serde_json::Value> {
    hook.requests()
        .into_iter()
        .filter_map(|(_, body)| serde_json::from_str(&body).ok())
        .collect()
}

/// A drain's record as the admin API takes it (who, why, expiry).
fn drain_body(who: &str, reason: &str, expires: &str) -> String {
    serde_json::json!({"who": who, "reason": reason, "expires": expires}).to_string()
}

/// POSTs `action` (`drain`, `undrain`) of `subject` (`regions/NAME`, `targets/ADDRESS`).
fn set_drain(s: &Server, subject: &str, action: &str, body: &str) {
    let r = http(
        s.admin(),
        "POST",
        &format!("/{subject}/{action}"),
        &[],
        body,
    );
    assert_eq!(r.status, 200, "{action} {subject}: {}", r.body);
}

/// Asserts that `t` is an RFC 3339 UTC time about `ahead` from now (within a minute).
fn assert_time_ahead(t: &serde_json::Value, ahead: Duration) {
    let t = t.as_str().unwrap_or_else(|| panic!("not a time: {t}"));
    // `YYYY-MM-DDTHH:MM:SS.mmmZ` to Unix seconds (Howard Hinnant's days_from_civil).
    let secs = |s: &str| -> i64 {
        assert!(
            s.len() == 24 && s.ends_with('Z'),
            "not an RFC 3339 UTC time: {s}"
        );
        let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
        let (y, m, d) = (n(0..4), n(5..7), n(8..10));
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
        let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
        days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let delta = secs(t) - now - ahead.as_secs() as i64;
    assert!(delta.abs() < 60, "{t} is not {ahead:?} from now");
}

#[test]
fn pagerduty_events_trigger_on_failure_and_the_recovery_resolves_the_same_dedup_key() {
    let backend = HttpStub::start(200);
    let hook = HttpStub::start(202);
    let s = notifying_server(
        "pagerduty",
        &hook,
        &backend,
        "routing_key_file = \"routing.key\"",
    );
    let started = Instant::now();
    backend.set_status(503);
    let target_key = "meridian/target/127.0.0.1/web";
    let service_key = "meridian/service/api.example.net./A";
    let has = |key: &str, action: &str| {
        bodies(&hook)
            .into_iter()
            .find(|b| b["dedup_key"] == key && b["event_action"] == action)
    };
    eventually(
        "PagerDuty triggers for the target and the service",
        Duration::from_secs(15),
        || has(target_key, "trigger").is_some() && has(service_key, "trigger").is_some(),
    );
    eprintln!(
        "triggers received {:?} after the backend failed",
        started.elapsed()
    );
    let t = has(target_key, "trigger").unwrap();
    assert_eq!(t["routing_key"], "R0UT1NG-KEY");
    assert_eq!(t["payload"]["severity"], "error");
    assert_eq!(t["payload"]["source"], "notify-1");
    assert_eq!(t["payload"]["class"], "target_down");
    assert!(
        t["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1 (check web) is down"),
        "{t}"
    );
    assert_eq!(t["payload"]["custom_details"]["to"], "down");
    let o = has(service_key, "trigger").unwrap();
    assert_eq!(o["payload"]["severity"], "critical");
    assert_eq!(o["payload"]["class"], "service_failing_open");
    assert!(
        o["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("failing open"),
        "{o}"
    );
    assert_eq!(has(target_key, "resolve"), None);

    // Recovery resolves both incidents under their own keys.
    let recovered = Instant::now();
    backend.set_status(200);
    eventually(
        "PagerDuty resolves for the target and the service",
        Duration::from_secs(15),
        || has(target_key, "resolve").is_some() && has(service_key, "resolve").is_some(),
    );
    eprintln!(
        "resolves received {:?} after the backend recovered",
        recovered.elapsed()
    );
    assert_eq!(
        has(target_key, "resolve").unwrap(),
        serde_json::json!({"routing_key": "R0UT1NG-KEY", "event_action": "resolve",
                           "dedup_key": target_key})
    );

    // A planned drain is an `info` alert (low urgency: it does not page) under its own key,
    // with who, why and the expiry; lifting it resolves it, and so does its expiry.
    let drain_key = "meridian/drain/regions/eu-west";
    set_drain(
        &s,
        "regions/eu-west",
        "drain",
        &drain_body("alice@ops", "kernel upgrade", "2h"),
    );
    set_drain(&s, "regions/eu-west", "undrain", "");
    set_drain(
        &s,
        "targets/127.0.0.1",
        "drain",
        &drain_body("bob@ops", "disk swap", "2s"),
    );
    let expiring_key = "meridian/drain/targets/127.0.0.1";
    eventually(
        "PagerDuty triggers and resolves for a lifted and an expired drain",
        Duration::from_secs(15),
        || {
            has(drain_key, "trigger").is_some()
                && has(drain_key, "resolve").is_some()
                && has(expiring_key, "trigger").is_some()
                && has(expiring_key, "resolve").is_some()
        },
    );
    let d = has(drain_key, "trigger").unwrap();
    assert_eq!(d["payload"]["severity"], "info");
    assert_eq!(d["payload"]["class"], "drain");
    assert_eq!(d["payload"]["component"], "regions/eu-west");
    let summary = d["payload"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("Region eu-west drained by alice@ops: kernel upgrade (until "),
        "{summary}"
    );
    let details = &d["payload"]["custom_details"];
    assert_eq!(
        (&details["who"], &details["reason"]),
        (
            &serde_json::json!("alice@ops"),
            &serde_json::json!("kernel upgrade")
        )
    );
    assert_time_ahead(&details["expires"], Duration::from_secs(7200));
    // Each resolve comes after its trigger.
    let order = |key: &str| -> Vec<String> {
        bodies(&hook)
            .into_iter()
            .filter(|b| b["dedup_key"] == key)
            .map(|b| b["event_action"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(order(drain_key), ["trigger", "resolve"]);
    assert_eq!(order(expiring_key), ["trigger", "resolve"]);
    drop(s);
}

#[test]
fn slack_messages_tell_of_failures_failing_open_drains_and_recovery() {
    let backend = HttpStub::start(200);
    let hook = HttpStub::start(200);
    let s = notifying_server("slack", &hook, &backend, "");
    let texts = || {
        bodies(&hook)
            .into_iter()
            .map(|b| {
                assert_eq!(b["blocks"][0]["text"]["text"], b["text"], "{b}");
                assert!(
                    b["blocks"][1]["elements"][0]["text"]
                        .as_str()
                        .unwrap()
                        .contains("notify-1"),
                    "{b}"
                );
                b["text"].as_str().unwrap().to_string()
            })
            .collect::<Vec<_>>()
    };
    let seen = |needle: &str| texts().iter().any(|t| t.contains(needle));
    backend.set_status(503);
    eventually(
        "Slack messages for down and failing open",
        Duration::from_secs(15),
        || {
            seen(":red_circle: Target *127.0.0.1* (check web) is *down*")
                && seen(":rotating_light: Service *api.example.net.* (A) is *failing open*")
        },
    );
    set_drain(
        &s,
        "regions/eu-west",
        "drain",
        &drain_body("alice@ops", "kernel upgrade", "2h"),
    );
    set_drain(
        &s,
        "targets/127.0.0.1",
        "drain",
        &drain_body("bob@ops", "disk swap", "2s"),
    );
    eventually(
        "Slack messages for both drains and the expiry of one",
        Duration::from_secs(15),
        || {
            seen(":construction: Region *eu-west* *drained* by alice@ops: kernel upgrade (until ")
                && seen(":construction: Target *127.0.0.1* *drained* by bob@ops: disk swap (until ")
                && seen(
                    ":hourglass: Target *127.0.0.1* *drain expired* (the drain by bob@ops: disk swap, until ",
                )
        },
    );
    set_drain(&s, "regions/eu-west", "undrain", "");
    backend.set_status(200);
    eventually(
        "Slack messages for undrain and recovery",
        Duration::from_secs(15),
        || {
            seen(
                ":white_check_mark: Region *eu-west* *undrained* (the drain by alice@ops: kernel upgrade, until ",
            ) && seen(":large_green_circle: Target *127.0.0.1* (check web) is *up*")
                && seen(
                    ":white_check_mark: Service *api.example.net.* (A) has *a usable target* again",
                )
        },
    );
}

#[test]
fn json_notifications_cover_failing_open_and_drains() {
    let backend = HttpStub::start(200);
    let hook = HttpStub::start(200);
    let s = notifying_server("json", &hook, &backend, "");
    let find = |event: &str| bodies(&hook).into_iter().find(|b| b["event"] == event);
    backend.set_status(503);
    eventually(
        "a service_failing_open document",
        Duration::from_secs(15),
        || find("service_failing_open").is_some(),
    );
    let o = find("service_failing_open").unwrap();
    assert_eq!(o["instance"], "notify-1");
    assert_eq!(o["service"], "api.example.net.");
    assert_eq!(o["family"], "A");
    assert_eq!(o["when_all_down"], "all");
    assert_eq!(
        (o["targets"].as_u64(), o["down"].as_u64()),
        (Some(1), Some(1))
    );
    // A drain lifted right after it was made: both are notified, in order, with the record.
    set_drain(
        &s,
        "targets/127.0.0.1",
        "drain",
        &drain_body("alice@ops", "kernel upgrade", "1h"),
    );
    set_drain(&s, "targets/127.0.0.1", "undrain", "");
    // A drain that ends by itself.
    set_drain(
        &s,
        "regions/eu-west",
        "drain",
        &drain_body("bob@ops", "network change", "2s"),
    );
    eventually(
        "drained, undrained and drain_expired documents",
        Duration::from_secs(15),
        || find("undrained").is_some() && find("drain_expired").is_some(),
    );
    let drains: Vec<(String, String)> = bodies(&hook)
        .into_iter()
        .filter(|b| b["subject"].is_string())
        .map(|b| {
            let (e, s) = (b["event"].as_str(), b["subject"].as_str());
            (e.unwrap().to_string(), s.unwrap().to_string())
        })
        .collect();
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        drains,
        pairs(&[
            ("drained", "targets/127.0.0.1"),
            ("undrained", "targets/127.0.0.1"),
            ("drained", "regions/eu-west"),
            ("drain_expired", "regions/eu-west"),
        ])
    );
    for event in ["drained", "undrained"] {
        let d = find(event).unwrap();
        assert_eq!(d["instance"], "notify-1");
        assert_eq!(d["subject"], "targets/127.0.0.1");
        assert_eq!(
            (d["who"].as_str(), d["reason"].as_str()),
            (Some("alice@ops"), Some("kernel upgrade"))
        );
        assert_time_ahead(&d["expires"], Duration::from_secs(3600));
        assert_time_ahead(&d["since"], Duration::ZERO);
        assert_time_ahead(&d["at"], Duration::ZERO);
    }
    let e = find("drain_expired").unwrap();
    assert_eq!(
        (e["who"].as_str(), e["reason"].as_str()),
        (Some("bob@ops"), Some("network change"))
    );
    backend.set_status(200);
    eventually(
        "a service_recovered document",
        Duration::from_secs(15),
        || find("service_recovered").is_some(),
    );
    let r = find("service_recovered").unwrap();
    assert_eq!(
        (
            r["service"].as_str(),
            r["family"].as_str(),
            r["active"].as_bool()
        ),
        (Some("api.example.net."), Some("A"), Some(false))
    );
}

#[test]
fn query_log_writes_one_json_line_per_answer_with_the_region_and_why() {
    let backend = HttpStub::start(200);
    let s = Server::start(&cfg(
        "geoip = \"{GEO}\"",
        &format!(
            "[query_log]\nfile = \"queries.log\"\nsample = 1.0\n\
             {}[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
             endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.1\"] }}, \
                          {{ region = \"eu-west\", addresses = [\"127.0.0.2\"] }}]\n",
            check("web", backend.addr.port())
        ),
    ));
    crate::admin::wait_ready(&s);
    // 127.0.0.2 (eu-west) has no backend: wait until it is down.
    eventually("eu-west down", Duration::from_secs(15), || {
        value(
            &crate::admin::scrape(&s),
            TARGET_UP,
            &[
                ("service", "api.example.net."),
                ("region", "eu-west"),
                ("address", "127.0.0.2"),
            ],
        ) == Some(0.0)
    });
    // Germany by ECS: eu-west is nearest but down, so us-east answers.
    let mut q = query("api.example.net.", RecordType::A);
    add_option(&mut q, ecs("198.51.100.0", 24));
    let answer = Message::from_vec(&s.udp_raw(&q.to_vec().unwrap()).unwrap()).unwrap();
    assert_eq!(answer.answers.len(), 1);
    let soa = query("example.net.", RecordType::SOA);
    crate::harness::tcp_raw(s.dns, &soa.to_vec().unwrap()).expect("tcp answer");

    let path = s.dir().join("queries.log");
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    eventually("two query log lines", Duration::from_secs(10), || {
        lines().len() >= 2
    });
    let l = lines();
    let api = l.iter().find(|x| x["name"] == "api.example.net.").unwrap();
    assert_eq!(api["client"], "127.0.0.1");
    assert_eq!(api["transport"], "udp");
    assert_eq!(api["type"], "A");
    assert_eq!(api["rcode"], "NOERROR");
    assert_eq!(api["ecs"], "198.51.100.0/24");
    assert!(api["scope"].as_u64().unwrap() > 0, "{api}");
    assert_eq!(api["service"], "api.example.net.");
    assert_eq!(api["answers"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(api["region"], "us-east");
    let why = api["why"].as_str().unwrap();
    assert!(
        why.starts_with("nearest from the ECS subnet, located by GeoIP in DE (EU)"),
        "{why}"
    );
    assert!(api["time"].as_str().unwrap().ends_with('Z'), "{api}");
    let soa = l.iter().find(|x| x["type"] == "SOA").unwrap();
    assert_eq!(soa["transport"], "tcp");
    assert_eq!(soa["service"], serde_json::Value::Null);
    assert_eq!(soa["ecs"], serde_json::Value::Null);
    let m = crate::admin::scrape(&s);
    assert!(value(&m, "meridian_query_log_lines_total", &[]).unwrap() >= 2.0);
    assert_eq!(
        value(
            &m,
            "meridian_query_log_dropped_total",
            &[("reason", "queue_full")]
        ),
        Some(0.0)
    );
}

#[test]
fn query_log_over_its_rate_cap_drops_and_counts_every_line_it_does_not_write() {
    let s = Server::start(&cfg(
        "",
        "[query_log]\nfile = \"queries.log\"\nmax_per_second = 5\n",
    ));
    let q = query("example.net.", RecordType::SOA).to_vec().unwrap();
    let started = Instant::now();
    const SENT: usize = 200;
    for _ in 0..SENT {
        s.udp_raw(&q).expect("an answer");
    }
    let elapsed = started.elapsed();
    let counts = || {
        let m = crate::admin::scrape(&s);
        (
            value(&m, "meridian_query_log_lines_total", &[]).unwrap(),
            value(
                &m,
                "meridian_query_log_dropped_total",
                &[("reason", "rate_cap")],
            )
            .unwrap(),
        )
    };
    eventually(
        "every answer written or dropped",
        Duration::from_secs(10),
        || {
            let (lines, dropped) = counts();
            lines + dropped == SENT as f64
        },
    );
    let (lines, dropped) = counts();
    eprintln!("{SENT} answers in {elapsed:?}: {lines} lines, {dropped} dropped by the cap");
    // At most 5 per started second of sending (plus the one the log was in).
    assert!(
        lines <= 5.0 * (elapsed.as_secs_f64().ceil() + 2.0),
        "{lines}"
    );
    assert!(dropped > 0.0);
    let written = std::fs::read_to_string(s.dir().join("queries.log")).unwrap();
    assert_eq!(written.lines().count() as f64, lines);
}

/// Takes a screenshot of `url` with headless Chromium into `png`; tries twice (Chromium
/// sometimes exits without a picture on a loaded machine).
fn screenshot(browser: &Path, url: &str, png: &Path, profile: &Path) {
    let _ = std::fs::remove_file(png);
    if !try_screenshot(browser, url, png, profile) {
        eprintln!("chromium made no screenshot, trying again");
        assert!(
            try_screenshot(browser, url, png, profile),
            "chromium made no screenshot of {url}"
        );
    }
}

/// One attempt of [`screenshot`] (Chromium killed by pid if it hangs); returns whether a
/// full-page PNG was written.
fn try_screenshot(browser: &Path, url: &str, png: &Path, profile: &Path) -> bool {
    let _turn = crate::harness::chromium_turn();
    let mut child = Command::new(browser)
        .args(crate::harness::CHROMIUM_HEADLESS)
        .args(["--hide-scrollbars", "--window-size=1280,1500"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display()));
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish the screenshot in 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let bytes = std::fs::read(png).unwrap_or_default();
    let ok = status.success() && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000;
    eprintln!(
        "screenshot: {} ({} bytes, chromium {status})",
        png.display(),
        bytes.len()
    );
    ok
}

#[test]
fn status_page_paints_on_the_server_and_screenshots_show_healthy_drained_and_failing_open() {
    let Some(browser) = tool(
        "status page screenshots",
        &["chromium", "chromium-browser"],
        "chromium",
    ) else {
        return;
    };
    use crate::backend::{Mode, backends};
    let (port, backends) = backends(&["127.0.0.11", "127.0.0.12", "127.0.0.13"]);
    let s = Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n\
         geoip = \"{{GEO}}\"\nnsid = \"status-page-1\"\n{}\n\
         [region.us-east]\nlatitude = 39.0\nlongitude = -77.5\n\
         [region.eu-west]\nlatitude = 53.3\nlongitude = -6.3\n\
         [region.ap-northeast]\nlatitude = 35.7\nlongitude = 139.7\n\
         {}[[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
         endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.11\"] }}, \
                      {{ region = \"eu-west\", addresses = [\"127.0.0.12\"] }}, \
                      {{ region = \"ap-northeast\", addresses = [\"127.0.0.13\"] }}]\n",
        crate::harness::ZONE,
        check("web", port)
    ));
    crate::admin::wait_ready(&s);
    // Traffic from three continents: Philadelphia, Berlin (twice as much), Osaka.
    let ask = |subnet: &str, times: usize| {
        for _ in 0..times {
            let mut q = query("api.example.net.", RecordType::A);
            add_option(&mut q, ecs(subnet, 24));
            s.udp_raw(&q.to_vec().unwrap()).expect("an answer");
        }
    };
    ask("24.0.0.0", 10);
    ask("198.51.100.0", 20);
    ask("126.0.0.0", 10);
    let dir = std::env::var_os("MERIDIAN_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join("target/status-page-screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", s.admin());
    let page = || {
        let r = http(s.admin(), "GET", "/", &[], "");
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        r.body
    };

    // Healthy: no banner; every region healthy on the map with its share of the answers.
    let html = page();
    assert!(
        html.contains("<meta http-equiv=\"refresh\""),
        "refreshes itself"
    );
    assert!(!html.contains("<script"), "paints without JavaScript");
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("src="),
        "no external assets"
    );
    assert!(!html.contains("data-banner="), "{html}");
    for region in ["us-east", "eu-west", "ap-northeast"] {
        let g = crate::admin::tag_with(&html, &format!("<g data-region=\"{region}\""));
        assert!(g.contains("data-health=\"healthy\""), "{g}");
    }
    let eu = crate::admin::tag_with(&html, "<g data-region=\"eu-west\"");
    assert!(eu.contains("data-share=\"50.0\""), "{eu}");
    assert!(html.contains("data-share-region=\"eu-west\""), "{html}");
    assert!(html.contains("Nothing is drained."));
    screenshot(&browser, &url, &dir.join("healthy.png"), profile.path());

    // Drained: eu-west out, listed with who, why and until when; its target shows why it is
    // withdrawn.
    let r = http(
        s.admin(),
        "POST",
        "/regions/eu-west/drain",
        &[],
        &drain_body("alice@ops", "kernel upgrade", "2h"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let html = page();
    let eu = crate::admin::tag_with(&html, "<g data-region=\"eu-west\"");
    assert!(eu.contains("data-health=\"drained\""), "{eu}");
    let row = html
        .split("<tr data-drain=\"regions/eu-west\">")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("no drain row for eu-west: {html}"));
    let cells: Vec<&str> = row
        .split("<td>")
        .skip(1)
        .map(|c| c.trim_end_matches("</td>"))
        .collect();
    assert_eq!(cells.len(), 4, "{row}");
    assert_eq!(cells[1..3], ["alice@ops", "kernel upgrade"], "{row}");
    assert_time_ahead(&serde_json::json!(cells[3]), Duration::from_secs(7200));
    assert!(html.contains("data-why=\"region_drained\""), "{html}");
    screenshot(&browser, &url, &dir.join("drained.png"), profile.path());
    let r = http(s.admin(), "POST", "/regions/eu-west/undrain", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);

    // Failing open: every backend answers 503; a banner, and each target says why.
    for b in &backends {
        b.set(Mode::Status(503));
    }
    // Waits for the probe error as well: on a loaded machine a probe may time out first, and
    // the page shows the last error of each target.
    let mut html = String::new();
    eventually(
        "the failing-open banner and the 503",
        Duration::from_secs(20),
        || {
            html = page();
            html.contains("data-banner=\"failing-open\"") && html.contains("503")
        },
    );
    assert!(
        html.contains("api.example.net. (A) is failing open"),
        "{html}"
    );
    for region in ["us-east", "eu-west", "ap-northeast"] {
        let g = crate::admin::tag_with(&html, &format!("<g data-region=\"{region}\""));
        assert!(g.contains("data-health=\"down\""), "{g}");
    }
    let why = crate::admin::tag_with(&html, "data-why=\"down\"");
    assert!(why.contains("class=\"why\""), "{why}");
    assert!(html.contains("503"), "the probe error is shown: {html}");
    // The timeline has the change from up to down.
    let timeline = crate::admin::tag_with(&html, "<svg class=\"timeline\"");
    assert!(!timeline.contains("data-changes=\"0\""), "{timeline}");
    screenshot(
        &browser,
        &url,
        &dir.join("failing-open.png"),
        profile.path(),
    );
}
