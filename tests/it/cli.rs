//! `meridian check`: every problem at once, each naming the file, the key (and the line for
//! zone files); exit 2 on error, 0 when valid. Also clean shutdown on signals.

use std::time::Duration;

use crate::harness::{Server, ZONE, config, repo, run};

/// Writes `files` (name, contents) into a new temp dir and runs `meridian check` on the first.
fn check(files: &[(&str, &str)]) -> (i32, String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), config(text)).unwrap();
    }
    let path = dir.path().join(files[0].0);
    let (code, out, err) = run(&["check", "--config", path.to_str().unwrap()]);
    (code, out, err, dir)
}

const ZONE_OK: &str = "$ORIGIN t.example.\n$TTL 60\n@ IN SOA ns hostmaster 1 2 3 4 5\n@ IN NS ns\nns IN A 192.0.2.1\n";

#[test]
fn the_example_config_is_valid() {
    let path = repo().join("zones/meridian.toml");
    let (code, out, err) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(": ok ("), "{out}");
}

#[test]
fn unknown_key_is_named_with_its_table() {
    let (code, _, err, _d) = check(&[(
        "m.toml",
        &format!("[server]\ndns_listen = [\"127.0.0.1:0\"]\nlisten_dns = 1\n{ZONE}"),
    )]);
    assert_eq!(code, 2);
    assert!(
        err.contains("m.toml: server: unknown field `listen_dns`"),
        "{err}"
    );
}

#[test]
fn bad_address_and_missing_zone_file_are_reported_together() {
    let text = "[server]\ndns_listen = [\"127.0.0.1:99999\", \"nonsense\"]\n[[zone]]\norigin = \"example.net.\"\nfile = \"missing.zone\"\n";
    let (code, _, err, _d) = check(&[("m.toml", text)]);
    assert_eq!(code, 2);
    assert!(
        err.contains("server.dns_listen[0]: invalid socket address \"127.0.0.1:99999\""),
        "{err}"
    );
    assert!(
        err.contains("server.dns_listen[1]: invalid socket address \"nonsense\""),
        "{err}"
    );
    assert!(
        err.contains("zone[0].file: zone file") && err.contains("missing.zone does not exist"),
        "{err}"
    );
    assert!(err.contains("3 problem(s) found"), "{err}");
}

#[test]
fn zone_syntax_errors_carry_file_and_line_all_at_once() {
    let zone = format!("{ZONE_OK}www IN A not-an-address\nok IN A 192.0.2.2\nmx IN MX ten mail\n");
    let text = "[server]\ndns_listen = [\"127.0.0.1:0\"]\n[[zone]]\norigin = \"t.example.\"\nfile = \"t.zone\"\n";
    let (code, _, err, _d) = check(&[("m.toml", text), ("t.zone", &zone)]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("t.zone:6: zone t.example.: syntax error"),
        "{err}"
    );
    assert!(
        err.contains("t.zone:8: zone t.example.: syntax error"),
        "{err}"
    );
    assert!(!err.contains("t.zone:7"), "{err}");
}

#[test]
fn record_outside_the_origin_is_rejected_with_its_line() {
    let zone = format!("{ZONE_OK}www.other.example. IN A 192.0.2.7\n");
    let text = "[server]\ndns_listen = [\"127.0.0.1:0\"]\n[[zone]]\norigin = \"t.example.\"\nfile = \"t.zone\"\n";
    let (code, _, err, _d) = check(&[("m.toml", text), ("t.zone", &zone)]);
    assert_eq!(code, 2);
    assert!(err.contains("t.zone:6: zone t.example.: record www.other.example. is outside the zone's origin t.example."), "{err}");
}

#[test]
fn zone_without_soa_or_ns_is_rejected() {
    let zone = "$ORIGIN t.example.\n$TTL 60\nwww IN A 192.0.2.1\n";
    let text = "[server]\ndns_listen = [\"127.0.0.1:0\"]\n[[zone]]\norigin = \"t.example.\"\nfile = \"t.zone\"\n";
    let (code, _, err, _d) = check(&[("m.toml", text), ("t.zone", zone)]);
    assert_eq!(code, 2);
    assert!(err.contains("exactly one SOA"), "{err}");
    assert!(err.contains("no NS records"), "{err}");
}

#[test]
fn serve_refuses_to_start_on_a_bad_config_with_exit_2() {
    let (code, _, err, _d) = check(&[("m.toml", "[server]\ndns_listen = []\n")]);
    assert_eq!(code, 2);
    assert!(
        err.contains("server.dns_listen: must list at least one address"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, "[server]\nbogus = 1\n").unwrap();
    let (code, _, err) = run(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown field `bogus`"), "{err}");
}

fn started() -> Server {
    Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n{ZONE}"
    ))
}

#[test]
fn sigterm_shuts_down_cleanly_with_exit_0() {
    let mut s = started();
    s.signal(libc::SIGTERM);
    let status = s
        .wait_exit(Duration::from_secs(20))
        .expect("exited after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", s.log_text());
    // The log reader thread may still be behind the exit: wait for the line.
    assert!(
        s.wait_log("stopped", Duration::from_secs(5)),
        "{}",
        s.log_text()
    );
    // The port is closed: a new TCP connection is refused.
    assert!(std::net::TcpStream::connect_timeout(&s.dns, Duration::from_secs(2)).is_err());
}

#[test]
fn sigint_shuts_down_cleanly_with_exit_0() {
    let mut s = started();
    s.signal(libc::SIGINT);
    let status = s
        .wait_exit(Duration::from_secs(20))
        .expect("exited after SIGINT");
    assert_eq!(status.code(), Some(0), "{}", s.log_text());
}

/// Every table of the example config, with an unknown key injected, is rejected by name.
#[test]
fn an_unknown_key_in_any_table_of_the_example_config_is_rejected() {
    let example = std::fs::read_to_string(repo().join("zones/meridian.toml")).unwrap();
    let table: toml::Table = example.parse().unwrap();
    // (path to the table, the key as errors name it)
    let mut targets: Vec<(Vec<String>, String)> = Vec::new();
    for (k, v) in &table {
        match v {
            toml::Value::Table(t) if k == "region" || k == "check" => {
                for name in t.keys() {
                    targets.push((vec![k.clone(), name.clone()], format!("{k}.{name}")));
                }
            }
            toml::Value::Table(_) if k != "nets" => targets.push((vec![k.clone()], k.clone())),
            toml::Value::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    // Services are named by name, other arrays ([[zone]]) by position.
                    let key = match item.get("name").and_then(toml::Value::as_str) {
                        Some(name) if k == "service" => format!("{k}[{name:?}]"),
                        _ => format!("{k}[{i}]"),
                    };
                    targets.push((vec![k.clone(), i.to_string()], key));
                }
            }
            _ => {}
        }
    }
    assert!(targets.len() >= 10, "{targets:?}");
    for (path, key) in targets {
        let mut t = table.clone();
        let cur = table_at(&mut t, &path);
        cur.insert("bogus_key".into(), toml::Value::Integer(1));
        let dir = tempfile::tempdir().unwrap();
        // Relative paths in the example resolve against its directory: keep them working.
        let text = toml::to_string(&t)
            .unwrap()
            .replace(
                "\"example.net.zone\"",
                &format!("{:?}", repo().join("zones/example.net.zone")),
            )
            .replace(
                "\"admin.token\"",
                &format!("{:?}", repo().join("zones/admin.token")),
            )
            .replace(
                "\"../geodata/sample.mmdb\"",
                &format!("{:?}", repo().join("geodata/sample.mmdb")),
            );
        let p = dir.path().join("m.toml");
        std::fs::write(&p, text).unwrap();
        let (code, _, err) = run(&["check", "--config", p.to_str().unwrap()]);
        assert_eq!(code, 2, "{key}: {err}");
        assert!(
            err.contains(&format!("{key}: unknown field `bogus_key`")),
            "{key}: {err}"
        );
    }
}

/// Returns the table at `path`: a top-level table, a named sub-table, or an array element.
fn table_at<'a>(t: &'a mut toml::Table, path: &[String]) -> &'a mut toml::Table {
    let top = t.get_mut(&path[0]).expect("top-level key");
    match (top, path.get(1)) {
        (toml::Value::Table(x), None) => x,
        (toml::Value::Table(x), Some(name)) => x
            .get_mut(name)
            .and_then(toml::Value::as_table_mut)
            .expect("sub-table"),
        (toml::Value::Array(a), Some(i)) => a[i.parse::<usize>().unwrap()]
            .as_table_mut()
            .expect("array of tables"),
        _ => panic!("unexpected shape at {path:?}"),
    }
}

#[test]
fn check_warns_about_ambiguous_geo_codes_and_ttls_longer_than_failover_but_exits_0() {
    let text = format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\n{ZONE}\n\
         [region.a]\nlatitude = 1.0\nlongitude = 2.0\n\
         [check.web]\nkind = \"tcp\"\nport = 80\ninterval = \"2s\"\ntimeout = \"1s\"\nfall = 3\n\
         [[service]]\nname = \"api.example.net.\"\npolicy = \"geo\"\nttl = 3600\ncheck = \"web\"\n\
         geo = {{ \"SA\" = [\"a\"], \"continent:AS\" = [\"a\"], default = [\"a\"] }}\n\
         endpoints = [{{ region = \"a\", addresses = [\"192.0.2.1\"] }}]\n"
    );
    let (code, out, err, _d) = check(&[("m.toml", &text)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok ("), "{out}");
    assert!(
        err.contains("warning: ") && err.contains(r#"service["api.example.net."].geo.SA: "SA" is the country code of Saudi Arabia and the continent code of South America"#),
        "{err}"
    );
    assert!(
        !err.contains("geo.continent:AS"),
        "an explicit key is not ambiguous: {err}"
    );
    assert!(
        err.contains(r#"service["api.example.net."].ttl: 3600s is more than ten times the 7s"#),
        "{err}"
    );
    // The example config has neither problem.
    let path = repo().join("zones/meridian.toml");
    let (code, _, err) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn a_corrupt_state_file_is_reported_by_check_and_refused_by_serve() {
    let text = format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\nstate_file = \"state.json\"\n{ZONE}"
    );
    let (code, _, err, dir) = check(&[("m.toml", &text), ("state.json", "{ not json")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("m.toml: server.state_file: state file") && err.contains("corrupt"),
        "{err}"
    );
    let path = dir.path().join("m.toml");
    let (code, _, err) = run(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("corrupt"), "{err}");
}

/// Issue 11: a type error names the service by name, the key, and the type expected (it used
/// to say only `service[0]: invalid type`); a service without a name is named by position.
#[test]
fn issue_11_check_names_services_by_name_and_type_errors_by_key_and_expected_type() {
    let text = format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\n{ZONE}\n\
         [region.a]\nlatitude = 1.0\nlongitude = 2.0\n\
         [check.web]\nkind = \"tcp\"\nport = 80\nrise = true\n\
         [[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\nttl = \"30\"\n\
         endpoints = [{{ region = \"a\", addresses = [\"192.0.2.1\"] }}]\n\
         [[service]]\nname = \"pay.example.net.\"\npolicy = \"nearest\"\n\
         endpoints = [{{ region = \"a\", addresses = [\"192.0.2.2\"], weight = 1.5 }}]\n\
         [[service]]\nname = \"cdn.example.net.\"\npolicy = \"nearest\"\n\
         endpoints = [{{ region = \"mars\", addresses = [\"192.0.2.3\"] }}]\n\
         [[service]]\npolicy = \"nearest\"\nendpoints = []\n"
    );
    let (code, _, err, _d) = check(&[("m.toml", &text)]);
    assert_eq!(code, 2, "{err}");
    for want in [
        r#"m.toml: service["api.example.net."].ttl: expected an integer, found string "30""#,
        r#"m.toml: service["pay.example.net."].endpoints[0].weight: expected an integer, found number `1.5`"#,
        r#"m.toml: service["cdn.example.net."].endpoints[0].region: unknown region "mars""#,
        "m.toml: check.web.rise: expected an integer, found boolean `true`",
        "m.toml: service[3]: missing field `name`",
        "5 problem(s) found",
    ] {
        assert!(err.contains(want), "wanted {want:?} in:\n{err}");
    }
}

/// Issue 11: `--help` of the command and of every subcommand carries an example, the
/// environment variables and the signals.
#[test]
fn issue_11_every_help_has_an_example_the_environment_and_the_signals() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["check", "--help"],
        vec!["explain", "--help"],
        vec!["geodata", "--help"],
        vec!["geodata", "build", "--help"],
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{args:?}: {err}");
        for want in [
            "Example",
            "meridian ",
            "MERIDIAN_CONFIG",
            "MERIDIAN_LOG ",
            "MERIDIAN_LOG_FORMAT",
            "SIGHUP",
            "SIGTERM",
            "Exit status",
        ] {
            assert!(out.contains(want), "{args:?} --help lacks {want:?}:\n{out}");
        }
    }
}

/// Issue 11: `--log-format json` (or MERIDIAN_LOG_FORMAT=json) writes one JSON object per line
/// with stable field names; a config error at start is a JSON line too.
#[test]
fn issue_11_json_logs_are_one_object_per_line_with_stable_field_names() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        config(&format!(
            "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n{ZONE}"
        )),
    )
    .unwrap();
    let mut child = std::process::Command::new(crate::harness::binary())
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("MERIDIAN_LOG_FORMAT", "json")
        .env("MERIDIAN_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    // Bounded: the server logs "meridian started" after a handful of lines.
    for line in std::io::BufReader::new(stderr).lines().take(100) {
        let line = line.unwrap();
        let done = line.contains("meridian started");
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("meridian started")),
        "{lines:?}"
    );
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .contains(&v["level"].as_str().unwrap_or("")),
            "{line}"
        );
        assert!(v["message"].is_string(), "{line}");
    }
    let listening: Vec<&str> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["message"].as_str().map(str::to_owned))
        .filter(|m| m.starts_with("listening dns/udp 127.0.0.1:"))
        .map(|_| "udp")
        .collect();
    assert_eq!(listening, ["udp"], "{lines:?}");
    let started: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(
        started["version"],
        env!("CARGO_PKG_VERSION"),
        "event fields are top-level"
    );

    // A bad config: exit 2, and the error is a JSON line naming the key.
    std::fs::write(&path, "[server]\nbogus = 1\n").unwrap();
    let out = std::process::Command::new(crate::harness::binary())
        .args([
            "--log-format",
            "json",
            "serve",
            "--config",
            path.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("bogus"))
        .expect("an error line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `bogus`"),
        "{line}"
    );
}

/// Issue 11: under systemd (`Type=notify`) the server says READY=1 once it answers, and
/// STOPPING=1 on SIGTERM, on the datagram socket `$NOTIFY_SOCKET` names.
#[test]
fn issue_11_serve_notifies_systemd_when_ready_and_when_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        config(&format!(
            "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n{ZONE}"
        )),
    )
    .unwrap();
    let mut child = std::process::Command::new(crate::harness::binary())
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env_remove("MERIDIAN_LOG_FORMAT")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    // SAFETY: kill(2) with the pid of a child we spawned and still own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let n = sock.recv(&mut buf).expect("STOPPING=1 within 30 s");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
