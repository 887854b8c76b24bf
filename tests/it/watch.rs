//! Automatic reload (issue 11): the server notices changed files by itself, without a signal,
//! the way they change in production: geoipupdate renames a new database over the old one,
//! Kubernetes swaps a ConfigMap volume's `..data` symlink.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hickory_proto::rr::{RData, RecordType};

use crate::geo::REGIONS;
use crate::harness::{Server, ZONE, add_option, config, ecs, query, run};

/// How long a test waits for the watcher (generous: CI machines are loaded; the interval in
/// these tests is 200 ms).
const WAIT: Duration = Duration::from_secs(30);

/// Returns the addresses of the A answer to `name`, asked with the ECS subnet `subnet`/24.
fn answer(server: &Server, name: &str, subnet: &str) -> Vec<IpAddr> {
    let mut q = query(name, RecordType::A);
    add_option(&mut q, ecs(subnet, 24));
    let bytes = server.udp_raw(&q.to_vec().unwrap()).expect("udp response");
    let m = hickory_proto::op::Message::from_vec(&bytes).expect("parse");
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

/// Waits until `name` asked from `subnet` is answered with `want`; returns how long it took.
fn wait_for_answer(server: &Server, name: &str, subnet: &str, want: &str) -> Duration {
    let want: IpAddr = want.parse().unwrap();
    let start = Instant::now();
    loop {
        if answer(server, name, subnet) == vec![want] {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "{name} from {subnet} never became {want}:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(server: &Server, needle: &str) -> usize {
    server.log_text().matches(needle).count()
}

#[test]
fn issue_11_a_geoip_database_renamed_into_place_moves_answers_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("geo.mmdb");
    std::fs::copy(crate::harness::repo().join("geodata/sample.mmdb"), &db).unwrap();
    // The new release of the database places the Berlin documentation network in Tokyo.
    let csv = std::fs::read_to_string(crate::harness::repo().join("geodata/sample.csv")).unwrap();
    let berlin = "198.51.100.0/24,52.5200,13.4050,DE,EU";
    assert!(
        csv.contains(berlin),
        "the sample CSV places 198.51.100.0/24 in Berlin"
    );
    let moved = csv.replace(berlin, "198.51.100.0/24,35.6762,139.6503,JP,AS");
    let new_csv = dir.path().join("new.csv");
    std::fs::write(&new_csv, moved).unwrap();
    let new_db = dir.path().join("geo.mmdb.tmp");
    let (code, _, err) = run(&[
        "geodata",
        "build",
        "--csv",
        new_csv.to_str().unwrap(),
        "--out",
        new_db.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");

    let path = dir.path().join("meridian.toml");
    let text = format!(
        r#"[server]
dns_listen = ["127.0.0.1:0"]
admin_listen = ""
geoip = "geo.mmdb"
watch_interval = "200ms"
{ZONE}{REGIONS}
[[service]]
name = "api.example.net."
policy = "nearest"
endpoints = [
  {{ region = "us-east",      addresses = ["192.0.2.1"] }},
  {{ region = "eu-west",      addresses = ["192.0.2.2"] }},
  {{ region = "ap-northeast", addresses = ["192.0.2.3"] }},
]
"#
    );
    std::fs::write(&path, config(&text)).unwrap();
    let server = Server::start_in(dir, &path);
    assert!(server.wait_log("watching the config, zone", WAIT));
    assert_eq!(
        answer(&server, "api.example.net", "198.51.100.0"),
        vec!["192.0.2.2".parse::<IpAddr>().unwrap()],
        "Berlin is answered from eu-west first"
    );

    // As geoipupdate does: write the new file beside the old one, rename it over.
    std::fs::rename(&new_db, &db).unwrap();
    let took = wait_for_answer(&server, "api.example.net", "198.51.100.0", "192.0.2.3");
    eprintln!("answer moved {took:?} after the rename (watch_interval 200ms)");
    assert!(
        server
            .log_text()
            .contains("watched files changed, reloading")
    );
    // The answer moves when the snapshot is swapped; the line comes just after.
    assert!(server.wait_log("configuration reloaded", WAIT));
    assert_eq!(count(&server, "configuration reloaded"), 1);
}

/// Makes `dir/..NAME` holding `meridian.toml` with `text`.
fn version(dir: &Path, name: &str, text: &str) {
    let v = dir.join(name);
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("meridian.toml"), config(text)).unwrap();
}

/// Points `dir/..data` at `dir/..NAME` in one rename, as kubelet updates a ConfigMap volume.
fn swap_data(dir: &Path, name: &str) {
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(name, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

fn service_config(address: &str, ttl: &str) -> String {
    format!(
        r#"[server]
dns_listen = ["127.0.0.1:0"]
admin_listen = ""
watch_interval = "200ms"
{ZONE}
[region.us-east]
latitude = 39.0
longitude = -77.5

[[service]]
name = "api.example.net."
policy = "nearest"
ttl = {ttl}
endpoints = [ {{ region = "us-east", addresses = ["{address}"] }} ]
"#
    )
}

#[test]
fn issue_11_a_swapped_configmap_data_symlink_is_reloaded_and_a_broken_one_is_refused_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    // The layout of a ConfigMap volume: meridian.toml -> ..data/meridian.toml,
    // ..data -> ..<version>.
    version(&d, "..v1", &service_config("192.0.2.1", "30"));
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/meridian.toml", d.join("meridian.toml")).unwrap();
    let server = Server::start_in(dir, &d.join("meridian.toml"));
    assert!(server.wait_log("watching the config, zone", WAIT));
    assert_eq!(
        answer(&server, "api.example.net", "192.0.2.0"),
        vec!["192.0.2.1".parse::<IpAddr>().unwrap()]
    );

    version(&d, "..v2", &service_config("192.0.2.2", "30"));
    swap_data(&d, "..v2");
    let took = wait_for_answer(&server, "api.example.net", "192.0.2.0", "192.0.2.2");
    eprintln!("answer moved {took:?} after the ..data swap (watch_interval 200ms)");

    // A broken version: refused, the old config keeps answering, and the reason is logged
    // once however many polls see the same broken files.
    version(&d, "..v3", &service_config("192.0.2.3", "\"thirty\""));
    swap_data(&d, "..v3");
    assert!(
        server.wait_log("automatic reload failed", WAIT),
        "{}",
        server.log_text()
    );
    assert!(server.log_text().contains("ttl"), "the error names the key");
    // Several more polls of the same broken files (a wait, not a timed assertion: a slow
    // machine polls less and still passes).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        answer(&server, "api.example.net", "192.0.2.0"),
        vec!["192.0.2.2".parse::<IpAddr>().unwrap()],
        "the old config keeps answering"
    );
    assert_eq!(count(&server, "automatic reload failed"), 1);

    // Fixed: reloaded again.
    version(&d, "..v4", &service_config("192.0.2.4", "30"));
    swap_data(&d, "..v4");
    wait_for_answer(&server, "api.example.net", "192.0.2.0", "192.0.2.4");
    let start = Instant::now();
    while count(&server, "configuration reloaded") < 2 && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(&server, "automatic reload failed"), 1);
    assert_eq!(count(&server, "configuration reloaded"), 2);
}
