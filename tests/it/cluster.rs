//! A fleet that agrees (issue 10): a real etcd on loopback ports, spawned by the test and
//! killed by pid on drop, and three real `meridian` instances sharing drains and health votes
//! through it, queried over real DNS, driven through their admin ports and `meridian ctl`.
//!
//! Every wait is bounded generously (shared, noisy machines); the measured times are printed
//! (`cargo test --test it cluster -- --nocapture` shows them).

use std::net::{IpAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::{RData, RecordType};
use serde_json::Value;

use crate::backend::{Backend, backends};
use crate::harness::{HttpStub, Server, ZONE, binary, http, query, tool};

/// The bound a test waits for a behaviour before failing.
const BOUND: Duration = Duration::from_secs(30);
/// The three targets, in failover order: us-east, eu-west, ap-northeast.
const TARGETS: [&str; 3] = ["127.0.0.21", "127.0.0.22", "127.0.0.23"];
/// Instance names and the source address each probes from.
const INSTANCES: [(&str, &str); 3] = [
    ("a", "127.0.0.11"),
    ("b", "127.0.0.12"),
    ("c", "127.0.0.13"),
];

/// A real etcd on loopback ports with its data in a temporary directory.
struct Etcd {
    bin: PathBuf,
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts etcd, or returns None (after a visible SKIPPED line) when it is not installed.
    fn start(test: &str) -> Option<Etcd> {
        let bin = tool(test, &["etcd"], "etcd-server")?;
        let mut e = Etcd {
            bin,
            dir: tempfile::tempdir().unwrap(),
            client: free_port(),
            peer: free_port(),
            child: None,
        };
        e.up();
        Some(e)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    /// Starts (again) on the same ports and data.
    fn up(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = Command::new(&self.bin)
            .arg("--name=t")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .arg("--log-level=error")
            .arg("--logger=zap")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            let ok = std::net::TcpStream::connect(("127.0.0.1", self.client)).is_ok()
                && http(
                    format!("127.0.0.1:{}", self.client).parse().unwrap(),
                    "POST",
                    "/v3/kv/range",
                    &[],
                    "{\"key\":\"AA==\"}",
                )
                .status
                    == 200;
            if ok {
                println!("etcd ready in {:?}", start.elapsed());
                return;
            }
            assert!(start.elapsed() < BOUND, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills etcd (SIGKILL, by pid) and waits for it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The config of instance `name`, probing from `source`.
fn instance_config(etcd: &str, name: &str, source: &str, port: u16, extra: &str) -> String {
    format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n\
         state_file = \"state.json\"\n\n{ZONE}\n\
         [region.us-east]\nlatitude = 38.9\nlongitude = -77.4\n\
         [region.eu-west]\nlatitude = 53.3\nlongitude = -6.3\n\
         [region.ap-northeast]\nlatitude = 35.7\nlongitude = 139.7\n\n\
         [check.web]\nkind = \"http\"\nport = {port}\npath = \"/healthz\"\n\
         interval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\nsource = \"{source}\"\n\n\
         [[service]]\nname = \"api.example.net.\"\npolicy = \"failover\"\nttl = 5\ncheck = \"web\"\n\
         endpoints = [\n\
           {{ region = \"us-east\", addresses = [\"{}\"], priority = 1 }},\n\
           {{ region = \"eu-west\", addresses = [\"{}\"], priority = 2 }},\n\
           {{ region = \"ap-northeast\", addresses = [\"{}\"], priority = 3 }},\n]\n\n\
         [cluster]\nstore = \"etcd\"\nendpoints = [\"{etcd}\"]\nprefix = \"/meridian/test\"\n\
         instance = \"{name}\"\nlease_ttl = \"3s\"\n{extra}",
        TARGETS[0], TARGETS[1], TARGETS[2]
    )
}

/// Three instances and their backends.
struct Fleet {
    servers: Vec<Option<Server>>,
    _backends: Vec<Backend>,
    port: u16,
}

impl Fleet {
    fn start(etcd: &Etcd) -> (Fleet, Vec<Backend>) {
        Fleet::start_notifying(etcd, None)
    }

    /// Starts the fleet; with `hook`, instance a posts JSON notifications to it.
    fn start_notifying(etcd: &Etcd, hook: Option<&HttpStub>) -> (Fleet, Vec<Backend>) {
        let (port, backends) = backends(&TARGETS);
        let servers = INSTANCES
            .iter()
            .map(|(name, source)| {
                let extra = match hook {
                    Some(h) if *name == "a" => {
                        format!("\n[notify]\nwebhook_url = \"http://{}/hook\"\n", h.addr)
                    }
                    _ => String::new(),
                };
                Some(Server::start(&instance_config(
                    &etcd.url(),
                    name,
                    source,
                    port,
                    &extra,
                )))
            })
            .collect();
        let fleet = Fleet {
            servers,
            _backends: Vec::new(),
            port,
        };
        wait_until("every instance joined the fleet", &fleet, || {
            fleet.running().all(|(_, s)| {
                let st = status(s);
                st["fleet"]["connected"] == true
                    && st["fleet"]["instances"].as_array().map(Vec::len) == Some(3)
            })
        });
        (fleet, backends)
    }

    fn get(&self, i: usize) -> &Server {
        self.servers[i].as_ref().expect("a running instance")
    }

    fn running(&self) -> impl Iterator<Item = (usize, &Server)> {
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    /// Stops instance `i` (SIGTERM) and starts it again on the same files.
    fn restart(&mut self, i: usize) {
        let s = self.servers[i].take().unwrap();
        let dir = s.stop();
        let path = dir.path().join("meridian.toml");
        self.servers[i] = Some(Server::start_in(dir, &path));
    }
}

/// The A answer of instance `s` for api.example.net.
fn answer(s: &Server) -> Vec<IpAddr> {
    let Some(raw) = s.udp_raw(&query("api.example.net.", RecordType::A).to_vec().unwrap()) else {
        return Vec::new();
    };
    Message::from_vec(&raw)
        .map(|m| {
            m.answers
                .iter()
                .filter_map(|a| match &a.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Polls until `f` holds; returns how long it took, or panics after `BOUND`.
fn wait_until(what: &str, fleet: &Fleet, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < BOUND {
        if f() {
            let took = start.elapsed();
            println!("{what}: {took:?}");
            return took;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs: Vec<String> = fleet.running().map(|(_, s)| s.log_text()).collect();
    panic!("{what}: not within {BOUND:?}\n{}", logs.join("\n-----\n"));
}

/// Waits until every running instance answers `want`.
fn all_answer(what: &str, fleet: &Fleet, want: &str) -> Duration {
    wait_until(what, fleet, || {
        fleet.running().all(|(_, s)| answer(s) == [ip(want)])
    })
}

fn status(s: &Server) -> Value {
    http(s.admin(), "GET", "/status", &[], "").json()
}

fn post(s: &Server, path: &str, body: &str) -> (u16, Value) {
    let r = http(s.admin(), "POST", path, &[], body);
    (r.status, r.json())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

/// Runs `meridian ctl ARGS`; returns (exit code, stdout, stderr).
fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .arg("ctl")
        .args(args)
        .env_remove("MERIDIAN_CONFIG")
        .output()
        .expect("run meridian ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config_of(s: &Server) -> PathBuf {
    s.dir().join("meridian.toml")
}

fn metric(s: &Server, name: &str) -> Option<f64> {
    let text = http(s.admin(), "GET", "/metrics", &[], "").body;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

#[test]
fn issue_10_drains_reach_every_instance_survive_restarts_and_end_by_themselves() {
    let Some(etcd) = Etcd::start("fleet drains") else {
        return;
    };
    let hook = HttpStub::start(200);
    let (mut fleet, _backends) = Fleet::start_notifying(&etcd, Some(&hook));
    all_answer("fleet up, us-east answered everywhere", &fleet, TARGETS[0]);

    // A drain through one instance withdraws the region on all three.
    let (code, body) = post(
        fleet.get(0),
        "/regions/us-east/drain",
        r#"{"reason": "maintenance", "who": "test"}"#,
    );
    assert_eq!(code, 200, "{body}");
    let took = all_answer("drain through a reached all three", &fleet, TARGETS[1]);
    println!("MEASURED drain propagation to 3 instances: {took:?}");
    for (_, s) in fleet.running() {
        let st = status(s);
        assert_eq!(strings(&st["drained_regions"]), ["us-east"], "{st}");
        assert_eq!(st["drains"]["regions/us-east"]["who"], "test", "{st}");
        assert_eq!(st["drains"]["regions/us-east"]["reason"], "maintenance");
        assert_eq!(st["drains"]["regions/us-east"]["instance"], "a");
        assert_eq!(st["fleet"]["connected"], true, "{st}");
    }

    // Two drains at once on two instances both survive (keys per drain, not one file).
    std::thread::scope(|scope| {
        let (b, c) = (fleet.get(1), fleet.get(2));
        let t1 = scope.spawn(|| post(b, "/targets/127.0.0.23/drain", "{}"));
        let t2 = scope.spawn(|| post(c, "/regions/eu-west/drain", "{}"));
        assert_eq!(t1.join().unwrap().0, 200);
        assert_eq!(t2.join().unwrap().0, 200);
    });
    wait_until("both concurrent drains everywhere", &fleet, || {
        fleet.running().all(|(_, s)| {
            let st = status(s);
            strings(&st["drained_regions"]) == ["eu-west", "us-east"]
                && strings(&st["drained_targets"]) == ["127.0.0.23"]
        })
    });

    // Restarting all three keeps every drain.
    for i in 0..3 {
        fleet.restart(i);
    }
    for (_, s) in fleet.running() {
        let st = status(s);
        assert_eq!(
            strings(&st["drained_regions"]),
            ["eu-west", "us-east"],
            "{st}"
        );
        assert_eq!(strings(&st["drained_targets"]), ["127.0.0.23"], "{st}");
    }

    // Undrains through another instance bring it back everywhere.
    assert_eq!(post(fleet.get(2), "/regions/eu-west/undrain", "").0, 200);
    assert_eq!(post(fleet.get(2), "/targets/127.0.0.23/undrain", "").0, 200);
    all_answer("eu-west back after the undrain on c", &fleet, TARGETS[1]);
    assert_eq!(post(fleet.get(2), "/regions/us-east/undrain", "").0, 200);
    let took = all_answer("undrain through c reached all three", &fleet, TARGETS[0]);
    println!("MEASURED undrain propagation to 3 instances: {took:?}");

    // `meridian ctl` finds the fleet in etcd: a drain with an expiry, on every instance.
    let config = config_of(fleet.get(0));
    let config = config.to_str().unwrap();
    let (code, out, err) = ctl(&[
        "--config",
        config,
        "drain",
        "--region",
        "us-east",
        "--reason",
        "deploy",
        "--expires",
        "3s",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("drained region us-east"))
            .count(),
        3,
        "{out}"
    );
    // The store serializes the three writes: exactly one instance made the change.
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("drained region us-east") && !l.contains("(already)"))
            .count(),
        1,
        "{out}"
    );
    all_answer(
        "ctl drain with expiry reached all three",
        &fleet,
        TARGETS[1],
    );
    for (_, s) in fleet.running() {
        let st = status(s);
        assert!(
            st["drains"]["regions/us-east"]["expires"].is_string(),
            "{st}"
        );
    }
    let took = all_answer("the drain ended by itself on all three", &fleet, TARGETS[0]);
    println!("MEASURED expiry of a 3s drain seen everywhere after: {took:?} (after drain)");

    // Instance a notified every drain of the fleet, whichever instance took it, once each
    // (restarts and the store echoing a's own drains are no news), with who and why.
    let drain_events = || -> Vec<(String, String, String)> {
        hook.requests()
            .into_iter()
            .filter_map(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .filter(|b| b["subject"].is_string())
            .map(|b| {
                let s = |k: &str| b[k].as_str().unwrap_or("").to_string();
                (s("event"), s("subject"), s("reason"))
            })
            .collect()
    };
    wait_until("a notified the end of the drain", &fleet, || {
        drain_events().iter().any(|(e, _, _)| e == "drain_expired")
    });
    let of = |subject: &str| -> Vec<(String, String)> {
        drain_events()
            .into_iter()
            .filter(|(_, s, _)| s == subject)
            .map(|(e, _, r)| (e, r))
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        of("regions/us-east"),
        pairs(&[
            ("drained", "maintenance"),
            ("undrained", "maintenance"),
            ("drained", "deploy"),
            ("drain_expired", "deploy"),
        ])
    );
    let plain = pairs(&[("drained", ""), ("undrained", "")]);
    assert_eq!(of("regions/eu-west"), plain);
    assert_eq!(of("targets/127.0.0.23"), plain);

    // ctl status: one row per instance; --json has every instance's /status.
    let (code, out, err) = ctl(&["--config", config, "status"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for name in ["a ", "b ", "c "] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(name) && l.contains("connected")),
            "{out}"
        );
    }
    let (code, out, _) = ctl(&["--config", config, "--json", "status"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3, "{out}");
    assert_eq!(
        v[0]["body"]["fleet"]["instances"].as_array().unwrap().len(),
        3
    );

    // One dead instance among the listed ones: its row says so and the exit code is 1.
    let live = format!("http://{}", fleet.get(1).admin());
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (code, out, _) = ctl(&["--admin", &live, "--admin", &dead, "reload"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains(&dead) && l.contains("FAILED")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains(&live) && l.contains(" ok ")),
        "{out}"
    );
    let (code, out, _) = ctl(&[
        "--admin",
        &live,
        "explain",
        "--client",
        "192.0.2.1",
        "api.example.net",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(TARGETS[0]), "{out}");
    let _ = fleet.port;
}

#[test]
fn issue_10_a_target_is_withdrawn_only_when_a_majority_of_the_fleet_sees_it_down() {
    let Some(etcd) = Etcd::start("fleet quorum") else {
        return;
    };
    let (mut fleet, backends) = Fleet::start(&etcd);
    all_answer("fleet up", &fleet, TARGETS[0]);

    // Fails only for a's probes: a sees it down, the fleet does not withdraw it.
    backends[0].refuse_from(&[INSTANCES[0].1]);
    wait_until("b and c see a's down vote", &fleet, || {
        [1, 2].iter().all(|&i| {
            let st = status(fleet.get(i));
            let t = &st["services"][0]["regions"][0]["targets"][0];
            t["fleet"]["views"]["a"] == "down" && t["fleet"]["views"]["b"] == "up"
        })
    });
    let st = status(fleet.get(0));
    let t = &st["services"][0]["regions"][0]["targets"][0];
    assert_eq!(t["fleet"]["local"], "down", "a's own probes fail: {t}");
    assert_eq!(t["fleet"]["agreed"], "up", "{t}");
    assert_eq!(t["state"], "up", "answers use the agreed state: {t}");
    assert_eq!(t["fleet"]["basis"], "quorum", "{t}");
    assert_eq!(t["usable"], true, "{t}");
    for (_, s) in fleet.running() {
        assert_eq!(
            answer(s),
            [ip(TARGETS[0])],
            "one dissenter withdraws nothing"
        );
    }
    // On a loaded machine c's first vote may reach a after the answers above settled.
    wait_until("a sees c's up vote", &fleet, || {
        let st = status(fleet.get(0));
        st["services"][0]["regions"][0]["targets"][0]["fleet"]["views"]["c"] == "up"
    });
    let ex = http(
        fleet.get(0).admin(),
        "GET",
        "/explain?name=api.example.net&client=192.0.2.1",
        &[],
        "",
    )
    .json();
    assert_eq!(ex["targets"][0]["local"], "down", "{ex}");
    assert_eq!(ex["targets"][0]["agreed"], "up", "{ex}");
    assert_eq!(ex["targets"][0]["fleet"]["views"]["c"], "up", "{ex}");

    // Fails for a and b: withdrawn on all three, c included (its own probes pass).
    backends[0].refuse_from(&[INSTANCES[0].1, INSTANCES[1].1]);
    let took = all_answer(
        "two of three see it down: withdrawn everywhere",
        &fleet,
        TARGETS[1],
    );
    println!("MEASURED withdrawal by quorum after the second failure: {took:?}");
    let st = status(fleet.get(2));
    let t = &st["services"][0]["regions"][0]["targets"][0];
    assert_eq!(
        (t["fleet"]["local"].as_str(), t["fleet"]["agreed"].as_str()),
        (Some("up"), Some("down")),
        "{t}"
    );
    assert_eq!(t["withdrawn"], "down", "{t}");
    assert_eq!(metric(fleet.get(2), "meridian_cluster_peers"), Some(2.0));
    let agreed = http(fleet.get(2).admin(), "GET", "/metrics", &[], "").body;
    assert!(
        agreed.contains("meridian_target_agreed_up{check=\"web\",address=\"127.0.0.21\"} 0")
            && agreed.contains("meridian_target_local_up{check=\"web\",address=\"127.0.0.21\"} 1"),
        "{agreed}"
    );

    // kill -9 of a: once its lease expires its vote no longer counts: b (down) and c (up)
    // are no majority of two, so the target comes back.
    fleet.servers[0].as_ref().unwrap().signal(libc::SIGKILL);
    let _ = fleet.servers[0]
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(10));
    fleet.servers[0] = None;
    let took = all_answer("a's vote gone with its lease", &fleet, TARGETS[0]);
    println!("MEASURED a's vote stopped counting after kill -9: {took:?} (lease_ttl 3s)");
    for i in [1, 2] {
        let st = status(fleet.get(i));
        let a = st["fleet"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == "a")
            .cloned();
        assert!(a.is_none_or(|a| a["fresh"] == false), "{st}");
        assert_eq!(metric(fleet.get(i), "meridian_cluster_peers"), Some(1.0));
    }
}

#[test]
fn issue_10_etcd_outage_keeps_answers_refuses_drains_and_converges_when_it_returns() {
    let Some(mut etcd) = Etcd::start("fleet etcd outage") else {
        return;
    };
    let (mut fleet, _backends) = Fleet::start(&etcd);
    all_answer("fleet up", &fleet, TARGETS[0]);
    assert_eq!(post(fleet.get(0), "/regions/us-east/drain", "{}").0, 200);
    all_answer("drained everywhere", &fleet, TARGETS[1]);

    etcd.kill();
    wait_until("every instance reports the store lost", &fleet, || {
        fleet
            .running()
            .all(|(_, s)| metric(s, "meridian_cluster_connected") == Some(0.0))
    });
    for (_, s) in fleet.running() {
        assert_eq!(
            answer(s),
            [ip(TARGETS[1])],
            "answers go on from the last state"
        );
    }
    // A drain during the outage is refused, not applied locally.
    let (code, body) = post(fleet.get(1), "/regions/eu-west/drain", "{}");
    assert_eq!(code, 503, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("unreachable") && msg.contains("nothing was changed"),
        "{msg}"
    );
    assert!(strings(&status(fleet.get(1))["drained_regions"]) == ["us-east"]);
    let (code, out, _) = ctl(&[
        "--admin",
        &format!("http://{}", fleet.get(1).admin()),
        "drain",
        "--region",
        "eu-west",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED (503)"), "{out}");

    // An instance that starts while etcd is down serves the last known drains (its cache).
    fleet.restart(2);
    assert_eq!(answer(fleet.get(2)), [ip(TARGETS[1])]);

    etcd.up();
    let took = wait_until("every instance reconnected", &fleet, || {
        fleet
            .running()
            .all(|(_, s)| metric(s, "meridian_cluster_connected") == Some(1.0))
    });
    println!("MEASURED reconnection of 3 instances after etcd returned: {took:?}");
    assert_eq!(post(fleet.get(1), "/regions/us-east/undrain", "{}").0, 200);
    let took = all_answer(
        "undrain after the outage reached all three",
        &fleet,
        TARGETS[0],
    );
    println!("MEASURED undrain propagation after the outage: {took:?}");
}

#[test]
fn the_example_fleet_configs_pass_check() {
    for n in 1..=3 {
        let path = crate::harness::repo().join(format!("zones/fleet/ns{n}.toml"));
        let (code, out, err) = crate::harness::run(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}\n{err}");
    }
}
