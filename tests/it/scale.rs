//! Issue #17 (https://github.com/meridian/meridian/issues/17): the probe engine at scale, against
//! a farm of real loopback backends (`farm.rs`). Timings are printed, not asserted; the
//! benchmark in bench/ measures them at 10,000 targets.

use std::time::{Duration, Instant};

use crate::farm::{Farm, Kind, raise_fd_limit};
use crate::harness::{HttpStub, Server, ZONE, http};

const REGIONS: [&str; 5] = ["r0", "r1", "r2", "r3", "r4"];

/// A config of `targets / 5` services over five regions, one address per endpoint, all probed
/// by one HTTP check on `port` every `interval`.
fn scale_config(farm: &Farm, check_extra: &str) -> String {
    scale_config_with(farm, check_extra, "")
}

/// Like [`scale_config`], with `top` (e.g. a `[notify]` table) after `[server]`.
fn scale_config_with(farm: &Farm, check_extra: &str, top: &str) -> String {
    let mut out = format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n{top}\n{ZONE}\n"
    );
    for (i, r) in REGIONS.iter().enumerate() {
        out.push_str(&format!(
            "[region.{r}]\nlatitude = {}.0\nlongitude = {}.0\n",
            10 * i,
            20 * i
        ));
    }
    out.push_str(&format!(
        "[check.web]\nkind = \"http\"\nport = {}\npath = \"/healthz\"\n{check_extra}\n",
        farm.port
    ));
    for (s, chunk) in farm.addrs.chunks(REGIONS.len()).enumerate() {
        let endpoints: Vec<String> = chunk
            .iter()
            .zip(REGIONS)
            .map(|(a, r)| format!("{{ region = \"{r}\", addresses = [\"{a}\"] }}"))
            .collect();
        out.push_str(&format!(
            "[[service]]\nname = \"p{s}.example.net.\"\npolicy = \"nearest\"\ncheck = \"web\"\n\
             endpoints = [{}]\n",
            endpoints.join(", ")
        ));
    }
    out
}

/// Returns the sum of the samples of `name` whose label text contains `labels`.
fn metric_sum(s: &Server, name: &str, labels: &str) -> f64 {
    let body = http(s.admin(), "GET", "/metrics", &[], "").body;
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (bounded) until `f` holds; returns how long it took.
fn wait_for(what: &str, bound: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < bound,
            "timed out after {bound:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn issue_17_two_thousand_healthy_targets_start_without_a_false_transition_and_a_mass_failure_is_counted_exactly()
 {
    const TARGETS: usize = 2000;
    raise_fd_limit();
    let farm = Farm::start(TARGETS, Kind::Http);
    // Every transition is also posted, once, to this webhook receiver.
    let hook = HttpStub::start(200);
    let started = Instant::now();
    // A generous timeout: the backends share this loaded machine (and this test process), and
    // a backend that answers too late for the timeout is not healthy as far as a probe knows.
    let s = Server::start(&scale_config_with(
        &farm,
        "interval = \"2s\"\ntimeout = \"1500ms\"\nrise = 2\nfall = 3\n",
        &format!(
            "[notify]\nwebhook_url = \"http://{}/hook\"\ntimeout = \"5s\"\nretries = 3\n",
            hook.addr
        ),
    ));
    let ready = wait_for("/ready", Duration::from_secs(60), || {
        http(s.admin(), "GET", "/ready", &[], "").status == 200
    });
    // Steady: the probes of the last second reach 95 % of one per target and interval.
    let mut last = (Instant::now(), farm.requests());
    let mut rate = 0.0;
    wait_for("the steady probe rate", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(450));
        let now = (Instant::now(), farm.requests());
        rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
        last = now;
        rate >= 0.95 * TARGETS as f64 / 2.0
    });
    let steady_at = started.elapsed();
    // Two more intervals of probes, then look at the outcome.
    std::thread::sleep(Duration::from_secs(4));
    println!(
        "2000 targets: ready after {:.2} s, steady ({rate:.0} probes/s) after {:.2} s from \
         start; {} requests over {} connections",
        (ready).as_secs_f64(),
        steady_at.as_secs_f64(),
        farm.requests(),
        farm.accepts()
    );
    let down = metric_sum(&s, "meridian_health_transitions_total", "to=\"down\"");
    let timeouts = s.log_text().matches("timed out").count();
    assert_eq!(
        down, 0.0,
        "false transitions to down against healthy backends ({timeouts} logged timeouts)"
    );
    let up = metric_sum(&s, "meridian_health_transitions_total", "to=\"up\"");
    assert_eq!(up, TARGETS as f64, "every target went up exactly once");
    let status = http(s.admin(), "GET", "/status", &[], "").json();
    let states: Vec<&str> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|svc| svc["regions"].as_array().unwrap())
        .flat_map(|r| r["targets"].as_array().unwrap())
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), TARGETS);
    assert!(states.iter().all(|s| *s == "up"), "not all up");
    // Keep-alive: connections are reused (a timeout would cost one reconnect each).
    assert!(
        farm.accepts() < farm.requests() / 2,
        "{} connections for {} requests",
        farm.accepts(),
        farm.requests()
    );

    // Every backend hangs at once: 2,000 transitions within a few seconds, each counted once
    // in the metrics (a bounded broadcast channel used to lose them past 1024). A hung target
    // is withdrawn even while the process is busy (its probes are the target's timeouts, not
    // starved ones: the target had the whole wait since our request).
    farm.hang_below(TARGETS as u32);
    let burst = wait_for("every target down", Duration::from_secs(60), || {
        metric_sum(&s, "meridian_health_transitions_total", "to=\"down\"") >= TARGETS as f64
    });
    // And each is posted to the webhook, as one transition per target (the sender posts one at
    // a time; a POST it retried counts once, see `posted_by_address`).
    let posted = wait_for("every transition posted", Duration::from_secs(180), || {
        std::thread::sleep(Duration::from_millis(450));
        posted_by_address(&hook, "down").len() >= TARGETS
    });
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "mass failure: {TARGETS} targets down after {:.2} s, all posted {:.2} s later",
        burst.as_secs_f64(),
        posted.as_secs_f64()
    );
    assert_eq!(
        metric_sum(&s, "meridian_health_transitions_total", "to=\"down\""),
        TARGETS as f64
    );
    for to in ["up", "down"] {
        let by_address = posted_by_address(&hook, to);
        assert_eq!(by_address.len(), TARGETS, "addresses posted going {to}");
        assert!(
            by_address.values().all(|n| *n == 1),
            "a target posted going {to} in more than one transition"
        );
    }
}

#[test]
fn issue_17_a_thousand_tcp_targets_on_two_probe_threads_get_a_new_connection_per_probe_and_no_false_transition()
 {
    const TARGETS: usize = 1000;
    raise_fd_limit();
    let farm = Farm::start(TARGETS, Kind::Tcp);
    let config = scale_config_with(
        &farm,
        "interval = \"2s\"\ntimeout = \"1500ms\"\nrise = 2\nfall = 3\n",
        "probe_threads = 2\n",
    )
    .replace("kind = \"http\"\n", "kind = \"tcp\"\n")
    .replace("path = \"/healthz\"\n", "");
    let s = Server::start(&config);
    let ready = wait_for("/ready", Duration::from_secs(60), || {
        http(s.admin(), "GET", "/ready", &[], "").status == 200
    });
    // Two intervals of probes, counted by Meridian and by the farm (one accept per connection).
    let (probes0, accepts0) = (metric_sum(&s, "meridian_probes_total", ""), farm.accepts());
    std::thread::sleep(Duration::from_secs(4));
    let (probes1, accepts1) = (metric_sum(&s, "meridian_probes_total", ""), farm.accepts());
    let sockets = std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    println!(
        "{TARGETS} tcp targets: ready after {:.2} s; {} probes and {} connections in 4 s; \
         {sockets} descriptors open (sockets kept between probes)",
        ready.as_secs_f64(),
        probes1 - probes0,
        accepts1 - accepts0
    );
    let probes = probes1 - probes0;
    assert!(probes >= TARGETS as f64, "{probes} probes in two intervals");
    // Each probe is a new connection (the kept socket connects anew), give or take the
    // probes in flight at either reading.
    let connections = (accepts1 - accepts0) as f64;
    assert!(
        connections >= 0.9 * probes && connections <= 1.1 * probes + 10.0,
        "{connections} connections for {probes} probes"
    );
    assert_eq!(
        metric_sum(&s, "meridian_health_transitions_total", "to=\"down\""),
        0.0,
        "false transitions to down against healthy backends"
    );
    assert_eq!(
        metric_sum(&s, "meridian_health_transitions_total", "to=\"up\""),
        TARGETS as f64
    );
}

/// Returns how many transitions going `to` the webhook got, by address: `target_state_changed`
/// documents told apart by their `at`, so that a POST the sender retried (delivery is at least
/// once: a receiver slower than `notify.timeout` on a loaded machine gets it again, with the
/// same body) counts once, while a second transition of the same target counts twice.
fn posted_by_address(hook: &HttpStub, to: &str) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashSet::new();
    let mut out = std::collections::HashMap::new();
    for (_, body) in hook.requests() {
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if doc["event"] == "target_state_changed" && doc["to"] == to {
            let address = doc["address"].as_str().unwrap_or_default().to_string();
            let at = doc["at"].as_str().unwrap_or_default().to_string();
            if seen.insert((address.clone(), at)) {
                *out.entry(address).or_insert(0) += 1;
            }
        }
    }
    out
}

#[test]
fn issue_17_hung_targets_exhausting_our_sockets_withdraw_no_healthy_target() {
    const TARGETS: usize = 300;
    const HUNG: usize = 100;
    let farm = Farm::start(TARGETS, Kind::Http);
    farm.hang_below(HUNG as u32);
    // An open-file limit of 128 leaves 64 probe sockets; 100 hung targets hold most of them
    // for a whole timeout each, so probes of healthy targets wait for a socket and some give
    // up: that is our trouble, and must not withdraw them. Descriptors stay free for the
    // admin port throughout.
    let s = Server::start_with_fd_limit(
        &scale_config(
            &farm,
            "interval = \"500ms\"\ntimeout = \"400ms\"\nrise = 1\nfall = 1\n",
        ),
        128,
    );
    wait_for("our own errors counted", Duration::from_secs(60), || {
        metric_sum(
            &s,
            "meridian_probe_errors_total",
            "reason=\"file_descriptors\"",
        ) > 0.0
    });
    wait_for("/ready", Duration::from_secs(60), || {
        http(s.admin(), "GET", "/ready", &[], "").status == 200
    });
    std::thread::sleep(Duration::from_secs(2));
    let errors = metric_sum(
        &s,
        "meridian_probe_errors_total",
        "reason=\"file_descriptors\"",
    );
    let metrics = http(s.admin(), "GET", "/metrics", &[], "").body;
    let hung: Vec<String> = farm.addrs[..HUNG].iter().map(|a| a.to_string()).collect();
    let wrongly_down: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("meridian_health_transitions_total") && l.contains("to=\"down\""))
        .filter(|l| !hung.iter().any(|h| l.contains(&format!("address=\"{h}\""))))
        .collect();
    println!(
        "fd limit 128, {TARGETS} targets ({HUNG} hung): {errors} probe errors; \
         {} healthy targets withdrawn",
        wrongly_down.len()
    );
    assert!(
        wrongly_down.is_empty(),
        "healthy targets withdrawn: {wrongly_down:?}"
    );
    let logged = s
        .log_text()
        .lines()
        .filter(|l| l.contains("a probe could not run") && l.contains("file_descriptors"))
        .count();
    assert_eq!(logged, 1, "logged once per cause:\n{}", s.log_text());
    let status = http(s.admin(), "GET", "/status", &[], "").json();
    let targets: Vec<&serde_json::Value> = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|svc| svc["regions"].as_array().unwrap())
        .flat_map(|r| r["targets"].as_array().unwrap())
        .collect();
    assert_eq!(targets.len(), TARGETS);
    let healthy_down = targets
        .iter()
        .filter(|t| !hung.contains(&t["address"].as_str().unwrap().to_string()))
        .filter(|t| t["state"] == "down")
        .count();
    assert_eq!(healthy_down, 0);
}
