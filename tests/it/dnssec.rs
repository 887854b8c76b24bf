//! DNSSEC online signing (issue 14), checked by real validators: `delv` (BIND 9) with the
//! zone's DS as trust anchor, querying the running server for static names, dynamic names
//! answered by different regions for two client networks, compact denials (RFC 9824), NODATA,
//! CNAME chains into a service and wildcards; plus the wire details a validator does not show
//! (DO copied, CO, lowercased NSEC owners, TC, unsigned answers unchanged byte for byte) and a
//! key rollover with CDS/CDNSKEY following the active key; secure delegations (a DS from the
//! zone file, signed in referrals; DNSViz follows one into a child zone served by a second
//! instance); and two instances with one key whose answers validate with each other's DNSKEY.

use std::path::{Path, PathBuf};
use std::process::Command;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::harness::{Server, config, query, query_no_edns, run, tool};
use meridian::metrics::{
    DNS_RATE_LIMITED_TOTAL, DNSSEC_BUDGET_EXHAUSTED_TOTAL, DNSSEC_SIGNATURES_TOTAL,
};

/// Two regions; the loopback sources 127.0.0.2 and 127.0.0.3 are placed in each by [nets], so
/// that a validator bound to either address gets a different answer for the same name.
const SERVICES: &str = r#"
[region.us-east]
latitude = 39.0
longitude = -77.5
[region.eu-west]
latitude = 53.3
longitude = -6.3

[nets]
"127.0.0.2/32" = "us-east"
"127.0.0.3/32" = "eu-west"
"10.2.0.0/16" = "us-east"
"10.3.0.0/16" = "eu-west"

[[service]]
name = "api.example.net."
policy = "nearest"
endpoints = [
  { region = "us-east", addresses = ["192.0.2.1", "2001:db8::a1"] },
  { region = "eu-west", addresses = ["192.0.2.2", "2001:db8::a2"] },
]
"#;

/// Runs `meridian dnssec keygen` for example.net. into `dir/name`; returns the DS line printed.
fn keygen(dir: &Path, name: &str, algorithm: &str) -> String {
    let out = dir.join(name);
    let (code, stdout, stderr) = run(&[
        "dnssec",
        "keygen",
        "--zone",
        "example.net.",
        "--algorithm",
        algorithm,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "keygen failed: {stderr}");
    assert!(stdout.contains(" IN DNSKEY 257 3 "), "{stdout}");
    stdout
        .lines()
        .find(|l| l.contains(" IN DS "))
        .expect("a DS line")
        .to_string()
}

/// Writes a delv anchor file trusting `ds` (a presentation-format DS line) for example.net.
fn anchor(dir: &Path, ds: &str) -> PathBuf {
    let f: Vec<&str> = ds.split_whitespace().collect();
    // example.net. 3600 IN DS <tag> <alg> <digest type> <digest>
    let text = format!(
        "trust-anchors {{\n  example.net. static-ds {} {} {} \"{}\";\n}};\n",
        f[4], f[5], f[6], f[7]
    );
    let path = dir.join(format!("anchor-{}.conf", f[4]));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts a server for example.net. signed with `keys` (and `published` keys), in `dir`.
fn start(dir: tempfile::TempDir, dnssec: &str) -> Server {
    start_with(dir, "admin_listen = \"\"", dnssec, "")
}

/// Like [`start`], with `server` lines in `[server]` and `tail` at the end of the config.
fn start_with(dir: tempfile::TempDir, server: &str, dnssec: &str, tail: &str) -> Server {
    let text = config(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\n{server}\n\n[[zone]]\norigin = \"example.net.\"\nfile = \"{{ZONE}}\"\n{dnssec}\n{SERVICES}\n{tail}"
    ));
    let path = dir.path().join("meridian.toml");
    std::fs::write(&path, text).unwrap();
    Server::start_in(dir, &path)
}

/// Runs delv against `s` with `anchor`, from `source`; returns its stdout and stderr.
fn delv(delv: &Path, s: &Server, anchor: &Path, source: &str, args: &[&str]) -> String {
    let out = Command::new(delv)
        .args(["@127.0.0.1", "-p", &s.dns.port().to_string(), "-b", source])
        .arg("-a")
        .arg(anchor)
        .arg("+root=example.net")
        .args(args)
        .output()
        .expect("run delv");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that delv validated the answer to `args` (data or a negative answer) and returns
/// its output.
fn validated(d: &Path, s: &Server, anchor: &Path, source: &str, args: &[&str]) -> String {
    let out = delv(d, s, anchor, source, args);
    assert!(
        out.contains("; fully validated") || out.contains("; negative response, fully validated"),
        "delv {args:?} from {source} did not validate:\n{out}"
    );
    out
}

/// The A/AAAA addresses in delv's output.
fn addresses(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && (f[3] == "A" || f[3] == "AAAA")).then(|| f[4].to_string())
        })
        .collect()
}

#[test]
fn issue_14_delv_fully_validates_static_dynamic_and_negative_answers() {
    let Some(d) = tool("dnssec delv test", &["delv"], "bind9-dnsutils") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ds = keygen(dir.path(), "k1.pem", "ecdsap256sha256");
    let trust = anchor(dir.path(), &ds);
    let s = start(dir, "dnssec = { keys = [\"k1.pem\"] }");

    // Static names, the apex keys, a CNAME chain into the service, a wildcard (one and two
    // labels below it, RFC 4035 §3.1.3.3), NODATA (a name, an empty non-terminal, the service
    // for another type, a delegation's DS), and nonexistent names (compact denial).
    for args in [
        &["example.net", "SOA"][..],
        &["example.net", "NS"],
        &["example.net", "MX"],
        &["example.net", "DNSKEY"],
        &["example.net", "CDS"],
        &["example.net", "CDNSKEY"],
        &["mail.example.net", "A"],
        &["big.example.net", "TXT"],
        &["_https._tcp.api.example.net", "SRV"],
        &["docs.example.net", "A"],
        &["www.example.net", "AAAA"],
        &["foo.user.example.net", "TXT"],
        &["a.b.user.example.net", "TXT"],
        &["foo.user.example.net", "A"],
        &["mail.example.net", "TXT"],
        &["b.example.net", "A"],
        &["api.example.net", "MX"],
        &["lab.example.net", "DS"],
        &["nope.example.net", "A"],
        &["deep.nope.example.net", "AAAA"],
    ] {
        validated(&d, &s, &trust, "127.0.0.1", args);
    }

    // The dynamic name from two client networks: different regions, both validated.
    for rtype in ["A", "AAAA"] {
        let us = validated(&d, &s, &trust, "127.0.0.2", &["api.example.net", rtype]);
        let eu = validated(&d, &s, &trust, "127.0.0.3", &["api.example.net", rtype]);
        let (us, eu) = (addresses(&us), addresses(&eu));
        assert!(!us.is_empty() && !eu.is_empty(), "{us:?} {eu:?}");
        assert_ne!(us, eu, "two regions answer {rtype}");
        // And through the CNAME chain docs -> www -> api.
        let chain = validated(&d, &s, &trust, "127.0.0.3", &["docs.example.net", rtype]);
        assert_eq!(addresses(&chain), eu);
    }

    // A wrong trust anchor must fail: the check above is not vacuous.
    let dir2 = tempfile::tempdir().unwrap();
    let other = anchor(
        dir2.path(),
        &keygen(dir2.path(), "other.pem", "ecdsap256sha256"),
    );
    let out = delv(&d, &s, &other, "127.0.0.1", &["mail.example.net", "A"]);
    assert!(!out.contains("fully validated"), "{out}");
}

#[test]
fn issue_14_ed25519_keys_validate_and_ds_prints_the_configured_key() {
    let Some(d) = tool("dnssec delv test", &["delv"], "bind9-dnsutils") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ds = keygen(dir.path(), "k.pem", "ed25519");
    assert!(ds.contains(" DS ") && ds.contains(" 15 2 "), "{ds}");
    let trust = anchor(dir.path(), &ds);
    let s = start(
        dir,
        "dnssec = { keys = [\"k.pem\"], algorithm = \"ed25519\", signature_validity = \"7d\", inception_offset = \"2h\" }",
    );
    let config_path = s.dir().join("meridian.toml");
    let (code, out, err) = run(&["dnssec", "ds", "--config", config_path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&ds), "ds prints the keygen DS:\n{out}\n{ds}");
    validated(&d, &s, &trust, "127.0.0.2", &["api.example.net", "A"]);
    validated(&d, &s, &trust, "127.0.0.1", &["nope.example.net", "TXT"]);
}

/// A raw query for `name`/`qtype` with an OPT whose flags are `flags` and payload `size`.
fn raw_query(name: &str, qtype: u16, flags: u16, size: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.push(0);
    q.extend(qtype.to_be_bytes());
    q.extend(1u16.to_be_bytes());
    q.extend([0, 0, 41]);
    q.extend(size.to_be_bytes());
    q.extend([0, 0]);
    q.extend(flags.to_be_bytes());
    q.extend([0, 0]);
    q
}

/// Returns the RDATA of the first record of type `rtype` in the authority section.
fn authority_of(m: &Message, rtype: RecordType) -> Vec<(String, Vec<u8>)> {
    use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
    m.authorities
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| {
            let mut buf = Vec::new();
            r.data.emit(&mut BinEncoder::new(&mut buf)).unwrap();
            (r.name.to_string(), buf)
        })
        .collect()
}

/// EDNS header flags DO and CO (RFC 9824 §5.1: bit 1, the second most significant).
const DO: u16 = 0x8000;
const CO: u16 = 0x4000;

#[test]
fn rfc9824_compact_denial_nxdomain_only_with_co_and_nsec_owner_lowercased() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k1.pem", "ecdsap256sha256");
    let s = start(dir, "dnssec = { keys = [\"k1.pem\"] }");

    // Mixed case: the NSEC owner is lowercased whatever the query's case.
    let r = Message::from_vec(
        &s.udp_raw(&raw_query("NoPe.ExAmple.NET", 1, DO, 1232))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r.response_code, ResponseCode::NoError, "compact: NOERROR");
    assert_eq!(
        r.edns.as_ref().map(|e| e.flags().dnssec_ok),
        Some(true),
        "DO copied"
    );
    let nsec = authority_of(&r, RecordType::NSEC);
    assert_eq!(nsec.len(), 1, "{r:?}");
    assert_eq!(nsec[0].0, "nope.example.net.");
    // next name \000.nope.example.net., then window 0: RRSIG, NSEC; window 0 also has NXNAME
    // (128): bitmap bytes 0..=16.
    let next = b"\x01\x00\x04nope\x07example\x03net\x00";
    assert_eq!(&nsec[0].1[..next.len()], next);
    let bitmap = &nsec[0].1[next.len()..];
    assert_eq!(bitmap[0], 0, "window 0");
    assert_eq!(bitmap[1], 17, "up to type 128");
    assert_eq!(bitmap[2 + 5], 0x03, "RRSIG and NSEC");
    assert_eq!(bitmap[2 + 16], 0x80, "NXNAME");
    assert_eq!(
        authority_of(&r, RecordType::RRSIG).len(),
        2,
        "SOA and NSEC signed"
    );

    let r = Message::from_vec(
        &s.udp_raw(&raw_query("nope.example.net", 1, DO | CO, 1232))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r.response_code, ResponseCode::NXDomain, "CO: NXDOMAIN");

    // NODATA for a service name lists A and AAAA whatever health says.
    let r = Message::from_vec(
        &s.udp_raw(&raw_query("api.example.net", 15, DO, 1232))
            .unwrap(),
    )
    .unwrap();
    let nsec = authority_of(&r, RecordType::NSEC);
    let next = b"\x01\x00\x03api\x07example\x03net\x00";
    let bitmap = &nsec[0].1[next.len()..];
    assert_eq!(&bitmap[..3], &[0, 6, 0x40], "A, up to NSEC (47)");
    assert_eq!(bitmap[2 + 3], 0x08, "AAAA (28)");

    // Too large for the client's UDP size when signed: TC.
    let r = s
        .udp_raw(&raw_query("big.example.net", 16, DO, 512))
        .unwrap();
    assert_ne!(r[2] & 0x02, 0, "TC");
}

#[test]
fn issue_14_answers_without_do_are_unchanged_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k1.pem", "ecdsap256sha256");
    let signed = start(dir, "dnssec = { keys = [\"k1.pem\"] }");
    let plain = start(tempfile::tempdir().unwrap(), "");
    for (name, rtype) in [
        ("example.net.", RecordType::SOA),
        ("api.example.net.", RecordType::A),
        ("api.example.net.", RecordType::AAAA),
        ("api.example.net.", RecordType::MX),
        ("docs.example.net.", RecordType::A),
        ("nope.example.net.", RecordType::A),
        ("foo.user.example.net.", RecordType::TXT),
        ("x.lab.example.net.", RecordType::A),
        ("big.example.net.", RecordType::TXT),
    ] {
        for m in [query(name, rtype), query_no_edns(name, rtype)] {
            let bytes = m.to_vec().unwrap();
            for _ in 0..2 {
                // Twice: the second answer may come from the per-thread cache.
                assert_eq!(
                    signed.udp_raw(&bytes),
                    plain.udp_raw(&bytes),
                    "{name} {rtype}"
                );
                assert_eq!(signed.tcp_raw(&bytes), plain.tcp_raw(&bytes));
            }
        }
    }
}

#[test]
fn issue_14_rollover_publishes_then_activates_a_second_key_with_cds_following() {
    let Some(d) = tool("dnssec delv test", &["delv"], "bind9-dnsutils") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ds1 = keygen(dir.path(), "k1.pem", "ecdsap256sha256");
    let ds2 = keygen(dir.path(), "k2.pem", "ecdsap256sha256");
    let (a1, a2) = (anchor(dir.path(), &ds1), anchor(dir.path(), &ds2));
    let tag = |ds: &str| ds.split_whitespace().nth(4).unwrap().to_string();
    let (t1, t2) = (tag(&ds1), tag(&ds2));

    // Step 1: k2 published only: DNSKEY has both, CDS and signatures only k1.
    let s = start(
        dir,
        "dnssec = { keys = [\"k1.pem\"], published = [\"k2.pem\"] }",
    );
    let keys = delv(&d, &s, &a1, "127.0.0.1", &["example.net", "DNSKEY"]);
    assert!(keys.contains("fully validated"), "{keys}");
    assert!(keys.contains(&format!("key id = {t1}")) && keys.contains(&format!("key id = {t2}")));
    let cds = validated(&d, &s, &a1, "127.0.0.1", &["example.net", "CDS"]);
    assert!(
        cds.contains(&format!("CDS\t{t1} ")) && !cds.contains(&format!("CDS\t{t2} ")),
        "{cds}"
    );
    let out = delv(&d, &s, &a2, "127.0.0.1", &["mail.example.net", "A"]);
    assert!(
        !out.contains("fully validated"),
        "k2 does not sign yet:\n{out}"
    );

    // Step 2: k2 active, k1 published only (reloaded with SIGHUP): CDS follows k2, and a
    // parent holding k2's DS validates.
    let cfg = s.dir().join("meridian.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "keys = [\"k1.pem\"], published = [\"k2.pem\"]",
        "keys = [\"k2.pem\"], published = [\"k1.pem\"]",
    );
    std::fs::write(&cfg, text).unwrap();
    s.signal(libc::SIGHUP);
    let mut cds = String::new();
    for _ in 0..100 {
        cds = delv(&d, &s, &a2, "127.0.0.1", &["example.net", "CDS"]);
        if cds.contains("fully validated") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        cds.contains(&format!("CDS\t{t2} ")) && !cds.contains(&format!("CDS\t{t1} ")),
        "{cds}"
    );
    validated(&d, &s, &a2, "127.0.0.2", &["api.example.net", "A"]);
    validated(&d, &s, &a2, "127.0.0.1", &["nope.example.net", "A"]);
}

/// Returns the sum of the samples of `name` (with `label`, if given) in `s`'s /metrics.
fn metric(s: &Server, name: &str, label: Option<(&str, &str)>) -> f64 {
    crate::admin::scrape(s)
        .iter()
        .filter(|x| x.name == name)
        .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k).map(String::as_str) == Some(v)))
        .map(|x| x.value)
        .sum()
}

/// The RCODE of a response (header bits only: every RCODE here is below 16).
fn rcode_of(r: &[u8]) -> u8 {
    r[3] & 0x0F
}

/// Returns true when the answer section of response `r` holds an RRSIG.
fn has_rrsig(r: &[u8]) -> bool {
    Message::from_vec(r)
        .map(|m| {
            m.answers
                .iter()
                .any(|a| a.record_type() == RecordType::RRSIG)
        })
        .unwrap_or(false)
}

#[test]
fn issue_14_a_random_name_flood_spends_the_signing_budget_not_the_cpu_and_cached_answers_stay_signed()
 {
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};
    let Some(d) = tool("dnssec delv test", &["delv"], "bind9-dnsutils") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ds = keygen(dir.path(), "k1.pem", "ecdsap256sha256");
    let trust = anchor(dir.path(), &ds);
    // One UDP thread (signature caches and budgets are per thread), a budget of 50 new
    // signatures per second, and rate limiting per /24 at 400 responses per second.
    const BUDGET: f64 = 50.0;
    let s = start_with(
        dir,
        "admin_listen = \"127.0.0.1:0\"\nudp_workers = 1",
        "dnssec = { keys = [\"k1.pem\"], signatures_per_second = 50 }",
        "[rate_limit]\nresponses_per_second = 400\nslip = 0\n",
    );
    // Warm: the names a legitimate client asks, validated (and their signatures cached).
    let legit = [
        ("127.0.0.2", "api.example.net"),
        ("127.0.0.3", "api.example.net"),
        ("127.0.0.2", "mail.example.net"),
    ];
    for (source, name) in legit {
        validated(&d, &s, &trust, source, &[name, "A"]);
    }
    let started = Instant::now();
    let signed0 = metric(&s, DNSSEC_SIGNATURES_TOTAL, None);
    let refused0 = metric(&s, DNSSEC_BUDGET_EXHAUSTED_TOTAL, None);
    let dropped0 = metric(&s, DNS_RATE_LIMITED_TOTAL, Some(("action", "drop")));

    // The flood: random names with DO from another /24 (127.0.1.0/24), as fast as the test
    // sends; every 250 of them, each legitimate question from its own address.
    const FLOOD: usize = 4_000;
    let flood = UdpSocket::bind("127.0.1.1:0").unwrap();
    flood.set_nonblocking(true).unwrap();
    let clients: Vec<UdpSocket> = legit
        .iter()
        .map(|(source, _)| {
            let c = UdpSocket::bind(format!("{source}:0")).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c
        })
        .collect();
    let (mut noerror, mut servfail, mut legit_ok) = (0, 0, 0);
    let mut buf = [0u8; 4096];
    for i in 0..FLOOD {
        let name = format!("r{i}x{:08x}.example.net", rand::random::<u32>());
        let _ = flood.send_to(&raw_query(&name, 1, DO, 1232), s.dns);
        while let Ok((n, _)) = flood.recv_from(&mut buf) {
            match rcode_of(&buf[..n]) {
                0 => noerror += 1,
                2 => servfail += 1,
                rc => panic!("rcode {rc} for a random name"),
            }
        }
        if i % 250 == 249 {
            for (c, (_, name)) in clients.iter().zip(legit) {
                c.send_to(&raw_query(name, 1, DO, 1232), s.dns).unwrap();
                let (n, _) = c
                    .recv_from(&mut buf)
                    .expect("a legitimate query is answered");
                assert_eq!(rcode_of(&buf[..n]), 0, "{name} during the flood");
                assert!(has_rrsig(&buf[..n]), "{name} signed during the flood");
                legit_ok += 1;
            }
        }
    }
    // Late answers to the flood.
    flood.set_nonblocking(false).unwrap();
    flood
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok((n, _)) = flood.recv_from(&mut buf) {
        if rcode_of(&buf[..n]) == 2 {
            servfail += 1;
        } else {
            noerror += 1;
        }
    }
    let signed = metric(&s, DNSSEC_SIGNATURES_TOTAL, None) - signed0;
    let refused = metric(&s, DNSSEC_BUDGET_EXHAUSTED_TOTAL, None) - refused0;
    let dropped = metric(&s, DNS_RATE_LIMITED_TOTAL, Some(("action", "drop"))) - dropped0;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{FLOOD} random names in {elapsed:.2} s: {noerror} signed denials, {servfail} SERVFAIL, \
         {dropped} dropped by rate limiting; {signed} signatures made, {refused} refused; \
         {legit_ok} legitimate answers signed"
    );
    // The budget held: at most a burst and the rate over the time between the two scrapes
    // (the legitimate names' signatures were all cached before).
    assert!(
        signed <= BUDGET * (1.0 + elapsed),
        "{signed} signatures in {elapsed} s"
    );
    assert!(refused > 0.0, "the budget counter moved");
    // Each refusal is one SERVFAIL (some may be lost on the way, as UDP may).
    assert!(
        servfail > 0 && servfail as f64 <= refused,
        "{servfail} {refused}"
    );
    // Rate limiting comes first: dropped queries never asked for a signature.
    assert!(dropped > 0.0, "the flood was rate limited");
    assert!(signed + refused <= FLOOD as f64 - dropped + 2.0);
    // Afterwards, validators are served as before (new names too, once the bucket refills).
    for (source, name) in legit {
        validated(&d, &s, &trust, source, &[name, "A"]);
    }
    crate::admin::eventually("a new name signed again", Duration::from_secs(10), || {
        delv(
            &d,
            &s,
            &trust,
            "127.0.0.2",
            &["nope-after.example.net", "A"],
        )
        .contains("fully validated")
    });
}

#[test]
fn rfc9824_co_is_edns_flag_bit_1_as_dig_sends_it_and_is_set_in_the_response() {
    let Some(dig) = tool("dnssec dig +coflag test", &["dig"], "bind9-dnsutils") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k1.pem", "ecdsap256sha256");
    let s = start(dir, "dnssec = { keys = [\"k1.pem\"] }");
    let ask = |args: &[&str]| {
        let out = Command::new(&dig)
            .args([
                "@127.0.0.1",
                "-p",
                &s.dns.port().to_string(),
                "+dnssec",
                "+norec",
            ])
            .args(args)
            .output()
            .expect("run dig");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // BIND's dig sets CO with +coflag: NXDOMAIN, and CO back in the OPT.
    let co = ask(&["+coflag", "nope.example.net", "A"]);
    assert!(co.contains("status: NXDOMAIN"), "{co}");
    assert!(co.contains("flags: do co;"), "{co}");
    assert!(co.contains("NXNAME") || co.contains("TYPE128"), "{co}");
    // Without it: NOERROR, and no CO.
    let plain = ask(&["nope.example.net", "A"]);
    assert!(plain.contains("status: NOERROR"), "{plain}");
    assert!(plain.contains("flags: do;"), "{plain}");
    // Data answers carry CO back too (RFC 9824 §5.1), and DO without CO never gets it.
    let data = ask(&["+coflag", "mail.example.net", "A"]);
    assert!(
        data.contains("status: NOERROR") && data.contains("flags: do co;"),
        "{data}"
    );
}

/// A network namespace with only a loopback, held by a `sleep` in it (killed on drop). DNSViz
/// runs in it beside the server, so that nothing it sends can leave the machine: not to the
/// root servers, nor to the addresses the zone gives its name servers (192.0.2.53, ...).
struct Netns {
    holder: std::process::Child,
}

impl Netns {
    /// Returns a new namespace, or `None` when this process may not make one.
    fn new() -> Option<Netns> {
        use std::io::BufRead;
        let mut holder = Command::new("unshare")
            .args([
                "-n",
                "sh",
                "-c",
                "ip link set lo up && echo up && exec sleep 600",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        let stdout = holder.stdout.take()?;
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let netns = Netns { holder };
        (line.trim() == "up").then_some(netns)
    }

    /// Returns the namespace's path, for `nsenter --net=` and `setns`.
    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.id())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Runs `dnsviz probe` for `name` (authoritative analysis of example.net only, our server as
/// its name server, `ds` as the parent's DS) in `netns`, then `dnsviz grok`; returns grok's
/// report of warnings and errors and its full report.
fn dnsviz(
    dnsviz: &Path,
    netns: &Netns,
    s: &Server,
    ds: &str,
    name: &str,
    extra: &[&str],
) -> (serde_json::Value, serde_json::Value) {
    let f: Vec<&str> = ds.split_whitespace().collect();
    let server = format!("example.net:ns1.example.net=127.0.0.1:{}", s.dns.port());
    let tag: String = extra
        .concat()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let out = s.dir().join(format!("probe-{name}-{tag}.json"));
    let out = out.to_str().unwrap().to_string();
    let probe = Command::new("timeout")
        .arg("120")
        .arg("nsenter")
        .arg(format!("--net={}", netns.path()))
        .arg(dnsviz)
        .args([
            "probe",
            "-A",
            "-a",
            "example.net",
            "-x",
            &server,
            "-N",
            &server,
        ])
        .arg("-D")
        .arg(format!("example.net:{} {} {} {}", f[4], f[5], f[6], f[7]))
        .args(["-o", &out])
        .args(extra)
        .arg(name)
        .output()
        .expect("run dnsviz probe");
    assert!(
        probe.status.success(),
        "dnsviz probe {name}: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let grok = |level: &str| {
        let r = Command::new(dnsviz)
            // -P: every server of the test is on loopback (the child's glue included).
            .args(["grok", "-P", "-r", &out, "-l", level])
            .output()
            .expect("run dnsviz grok");
        let text = String::from_utf8_lossy(&r.stdout).to_string();
        assert!(
            r.status.success(),
            "dnsviz grok {name}: {}{text}",
            String::from_utf8_lossy(&r.stderr)
        );
        if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("grok {name}: {e}\n{text}"))
        }
    };
    (grok("warning"), grok("debug"))
}

/// Returns every value of the key `key` anywhere in `v`.
fn find_all<'v>(v: &'v serde_json::Value, key: &str, out: &mut Vec<&'v serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    out.push(x);
                }
                find_all(x, key, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| find_all(x, key, out)),
        _ => {}
    }
}

#[test]
fn issue_14_dnsviz_finds_no_error_in_static_dynamic_negative_and_cname_answers() {
    let Some(viz) = tool(
        "dnssec DNSViz test",
        &["dnsviz"],
        "python3-pip: pip install dnsviz dnspython cryptography",
    ) else {
        return;
    };
    // DNSViz serves the delegation with its DS (-N, -D) from a `named` of its own.
    if tool("dnssec DNSViz test", &["named"], "bind9").is_none()
        || tool("dnssec DNSViz test", &["ip"], "iproute2").is_none()
    {
        return;
    }
    let Some(netns) = Netns::new() else {
        eprintln!("SKIPPED dnssec DNSViz test: cannot make a network namespace (unshare -n)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ds = keygen(dir.path(), "k1.pem", "ecdsap256sha256");
    // A secure delegation to sec.example.net., served by a second instance with its own key
    // at the glue address 127.0.0.2 (port 53: DNSViz follows the referral there).
    let child_dir = tempfile::tempdir().unwrap();
    let child_ds = keygen_for(child_dir.path(), "sec.example.net.", "child.pem");
    zone_with(dir.path(), &secure_delegation(&child_ds));
    child_zone(child_dir.path());
    let child_path = child_dir.path().join("meridian.toml");
    std::fs::write(
        &child_path,
        "[server]\ndns_listen = [\"127.0.0.2:53\"]\nadmin_listen = \"\"\n\n[[zone]]\n\
         origin = \"sec.example.net.\"\nfile = \"sec.zone\"\ndnssec = { keys = [\"child.pem\"] }\n",
    )
    .unwrap();
    let text = config(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n\n[[zone]]\norigin = \"example.net.\"\nfile = \"example.net.zone\"\ndnssec = {{ keys = [\"k1.pem\"] }}\n{SERVICES}"
    ));
    let path = dir.path().join("meridian.toml");
    std::fs::write(&path, text).unwrap();
    // The servers in the namespace too (DNSViz can only reach them there).
    let in_netns = |cmd: &mut Command| {
        let ns = std::fs::File::open(netns.path()).unwrap();
        // SAFETY: setns is async-signal-safe; the pre_exec closure owns `ns`, so the fd stays
        // open until the child has entered the namespace.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&ns);
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    };
    let s = Server::start_with(dir, &path, in_netns);
    let _child = Server::start_with(child_dir, &child_path, in_netns);

    // Each name probed apart (dnsviz 0.11.2's grok crashes on some multi-name probes).
    // Static names and the apex (DNSKEY, and NODATA for the types it lacks), a nonexistent
    // name (compact denial), an empty non-terminal (NODATA), a wildcard; the dynamic name
    // from two client subnets (ECS) answered by two regions; the CNAME chain into it.
    let mut rdata_by_subnet = Vec::new();
    for (name, extra) in [
        ("example.net", &[][..]),
        ("mail.example.net", &[]),
        ("nope.example.net", &[]),
        ("b.example.net", &[]),
        ("foo.user.example.net", &[]),
        ("api.example.net", &["-e", "10.2.0.0/16"]),
        ("api.example.net", &["-e", "10.3.0.0/16"]),
        ("docs.example.net", &["-e", "10.3.0.0/16"]),
        // Through the secure delegation into the child zone (DS from the parent, RRSIG by the
        // parent's key; the child's DNSKEY matches it).
        (
            "www.sec.example.net",
            &["-x", "sec.example.net:ns.sec.example.net=127.0.0.2"],
        ),
    ] {
        let (problems, report) = dnsviz(&viz, &netns, &s, &ds, name, extra);
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        find_all(&problems, "errors", &mut errors);
        find_all(&problems, "warnings", &mut warnings);
        assert!(
            errors.is_empty() && warnings.is_empty(),
            "dnsviz {name} {extra:?}: {problems:#}"
        );
        // Not vacuous: the delegation is secure by the DS, and every RRSIG was checked valid.
        let mut statuses = Vec::new();
        find_all(&report, "status", &mut statuses);
        assert!(
            statuses.iter().any(|v| *v == "SECURE"),
            "{name}: {report:#}"
        );
        assert!(statuses.iter().any(|v| *v == "VALID"), "{name}: {report:#}");
        assert!(
            !statuses
                .iter()
                .any(|v| ["BOGUS", "INVALID", "INDETERMINATE", "INSECURE"]
                    .iter()
                    .any(|b| v.as_str().is_some_and(|v| v.starts_with(b)))),
            "{name}: {report:#}"
        );
        if name == "www.sec.example.net" {
            // The child zone was reached and is secure: its DNSKEY and the A of www are
            // valid, and the delegation to it is SECURE (not INSECURE, as without a DS).
            let mut child = Vec::new();
            find_all(&report, "sec.example.net.", &mut child);
            assert!(
                child.iter().any(|z| z["delegation"]["status"] == "SECURE"),
                "{report:#}"
            );
            let text = report.to_string();
            assert!(
                text.contains("192.0.2.77"),
                "the child answered: {report:#}"
            );
        }
        if name == "api.example.net" {
            let mut rdata = Vec::new();
            find_all(&report, "rdata", &mut rdata);
            rdata_by_subnet.push(format!("{rdata:?}"));
        }
    }
    assert_ne!(
        rdata_by_subnet[0], rdata_by_subnet[1],
        "two regions: {rdata_by_subnet:?}"
    );
}

#[test]
fn rfc4035_s3_1_4_1_a_referral_to_an_insecure_delegation_proves_it_has_no_ds() {
    let Some(d) = tool("dnssec delv test", &["delv"], "bind9-dnsutils") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ds = keygen(dir.path(), "k1.pem", "ecdsap256sha256");
    let trust = anchor(dir.path(), &ds);
    let s = start(dir, "dnssec = { keys = [\"k1.pem\"] }");
    // A referral into `lab` (no DS in the zone file: an insecure delegation): the NS, and the
    // signed NSEC at the cut listing NS, RRSIG and NSEC only.
    let r = Message::from_vec(
        &s.udp_raw(&raw_query("x.LAB.example.net", 1, DO, 1232))
            .unwrap(),
    )
    .unwrap();
    assert!(!r.metadata.authoritative, "a referral: {r:?}");
    assert!(
        r.authorities
            .iter()
            .any(|a| a.record_type() == RecordType::NS)
    );
    assert!(
        !r.authorities
            .iter()
            .any(|a| a.record_type() == RecordType::DS)
    );
    let nsec = authority_of(&r, RecordType::NSEC);
    assert_eq!(nsec.len(), 1, "{r:?}");
    assert_eq!(nsec[0].0, "lab.example.net.", "lowercased");
    let next = b"\x01\x00\x03lab\x07example\x03net\x00";
    assert_eq!(&nsec[0].1[..next.len()], next);
    // Window 0, 6 octets: NS (2), RRSIG (46), NSEC (47); no DS (43), no SOA.
    assert_eq!(&nsec[0].1[next.len()..], &[0, 6, 0x20, 0, 0, 0, 0, 0x03]);
    let rrsigs = authority_of(&r, RecordType::RRSIG);
    assert_eq!(
        rrsigs.len(),
        1,
        "only the NSEC is signed, not the child's NS: {r:?}"
    );
    assert_eq!(rrsigs[0].1[..2], [0, 47]);
    // And a validator agrees that lab has no DS.
    validated(&d, &s, &trust, "127.0.0.1", &["lab.example.net", "DS"]);
}

/// Runs `meridian dnssec keygen` for `zone` into `dir/name` (ECDSA P-256); returns the DS line.
fn keygen_for(dir: &Path, zone: &str, name: &str) -> String {
    let out = dir.join(name);
    let (code, stdout, stderr) = run(&[
        "dnssec",
        "keygen",
        "--zone",
        zone,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "keygen failed: {stderr}");
    stdout
        .lines()
        .find(|l| l.contains(" IN DS "))
        .expect("a DS line")
        .to_string()
}

/// Writes `dir/example.net.zone`: the example zone plus `extra` lines.
fn zone_with(dir: &Path, extra: &str) {
    let base = std::fs::read_to_string(crate::harness::repo().join("zones/example.net.zone"))
        .expect("example zone");
    std::fs::write(dir.join("example.net.zone"), format!("{base}{extra}\n")).unwrap();
}

/// Starts a server for the zone file `dir/example.net.zone` with `dnssec`.
fn start_zone(dir: tempfile::TempDir, dnssec: &str) -> Server {
    let text = config(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n\n[[zone]]\norigin = \"example.net.\"\nfile = \"example.net.zone\"\n{dnssec}\n{SERVICES}"
    ));
    let path = dir.path().join("meridian.toml");
    std::fs::write(&path, text).unwrap();
    Server::start_in(dir, &path)
}

/// A secure delegation `sec` (glue at 127.0.0.2) with `ds` (a DS line of sec.example.net.).
fn secure_delegation(ds: &str) -> String {
    format!("sec IN NS ns.sec.example.net.\nns.sec IN A 127.0.0.2\n{ds}")
}

/// Writes `dir/sec.zone`: the child zone sec.example.net. (NS at the glue address 127.0.0.2,
/// and `www` A 192.0.2.77).
fn child_zone(dir: &Path) {
    std::fs::write(
        dir.join("sec.zone"),
        "$ORIGIN sec.example.net.\n$TTL 3600\n\
         @ IN SOA ns.sec.example.net. hostmaster.example.net. 1 7200 3600 1209600 300\n\
         @ IN NS ns.sec.example.net.\nns IN A 127.0.0.2\nwww IN A 192.0.2.77\n",
    )
    .unwrap();
}

/// The RRSIGs of `records`, as (type covered, key tag, inception, expiration).
fn rrsigs_of(records: &[hickory_proto::rr::Record]) -> Vec<(RecordType, u16, u32, u32)> {
    use hickory_proto::dnssec::rdata::DNSSECRData;
    use hickory_proto::rr::RData;
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::RRSIG(s)) => Some((
                s.input().type_covered,
                s.input().key_tag,
                s.input().sig_inception.get(),
                s.input().sig_expiration.get(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn rfc4035_s3_1_4_1_a_referral_to_a_secure_delegation_carries_its_signed_ds() {
    let dir = tempfile::tempdir().unwrap();
    let ds = keygen(dir.path(), "k1.pem", "ecdsap256sha256");
    let trust = anchor(dir.path(), &ds);
    let child_ds = keygen_for(dir.path(), "sec.example.net.", "child.pem");
    zone_with(dir.path(), &secure_delegation(&child_ds));
    let s = start_zone(dir, "dnssec = { keys = [\"k1.pem\"] }");
    // The same zone without the DS, unsigned: what a query without DO must get, byte for byte.
    let plain_dir = tempfile::tempdir().unwrap();
    zone_with(
        plain_dir.path(),
        &secure_delegation("; no DS: an insecure delegation"),
    );
    let plain = start_zone(plain_dir, "");

    // RFC 4035 §3.1.4.1: NS (unsigned, not authoritative), the DS RRset and its RRSIG in the
    // authority section, no NSEC; glue in the additional section.
    let r = Message::from_vec(
        &s.udp_raw(&raw_query("www.SEC.example.net", 1, DO, 1232))
            .unwrap(),
    )
    .unwrap();
    assert!(!r.metadata.authoritative, "a referral: {r:?}");
    assert!(r.answers.is_empty(), "{r:?}");
    let types: Vec<RecordType> = r.authorities.iter().map(|a| a.record_type()).collect();
    assert_eq!(
        types,
        [RecordType::NS, RecordType::DS, RecordType::RRSIG],
        "{r:?}"
    );
    let ds_rdata = authority_of(&r, RecordType::DS);
    assert_eq!(ds_rdata[0].0, "sec.example.net.");
    let f: Vec<&str> = child_ds.split_whitespace().collect();
    assert_eq!(
        ds_rdata[0].1[..2],
        f[4].parse::<u16>().unwrap().to_be_bytes()
    );
    let sigs = rrsigs_of(&r.authorities);
    assert_eq!(sigs.len(), 1);
    assert_eq!(sigs[0].0, RecordType::DS, "the DS is signed, not the NS");
    assert!(
        r.additionals.iter().any(
            |a| a.record_type() == RecordType::A && a.name.to_string() == "ns.sec.example.net."
        ),
        "glue: {r:?}"
    );

    // The DS query at the cut is the parent's: authoritative, signed.
    let r = Message::from_vec(
        &s.udp_raw(&raw_query("sec.example.net", 43, DO, 1232))
            .unwrap(),
    )
    .unwrap();
    assert!(r.metadata.authoritative, "{r:?}");
    let types: Vec<RecordType> = r.answers.iter().map(|a| a.record_type()).collect();
    assert_eq!(types, [RecordType::DS, RecordType::RRSIG], "{r:?}");

    // Without DO nothing changes: the referral and the other answers are those of the same
    // zone without the DS, unsigned.
    for (name, rtype) in [
        ("www.sec.example.net.", RecordType::A),
        ("sec.example.net.", RecordType::NS),
        ("mail.example.net.", RecordType::A),
    ] {
        for m in [query(name, rtype), query_no_edns(name, rtype)] {
            let bytes = m.to_vec().unwrap();
            assert_eq!(s.udp_raw(&bytes), plain.udp_raw(&bytes), "{name} {rtype}");
            assert_eq!(s.tcp_raw(&bytes), plain.tcp_raw(&bytes), "{name} {rtype}");
        }
    }

    // A validator agrees: the DS is fully validated by the parent's key.
    let Some(d) = tool("dnssec delv test", &["delv"], "bind9-dnsutils") else {
        return;
    };
    let out = validated(&d, &s, &trust, "127.0.0.1", &["sec.example.net", "DS"]);
    assert!(
        out.lines().any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() > 6 && w[3] == "DS" && w[4] == f[4] && w[5..7] == ["13", "2"]
        }),
        "the child's DS: {out}"
    );
}

#[test]
fn issue_14_check_reports_every_misplaced_or_malformed_ds_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let child_ds = keygen_for(dir.path(), "sec.example.net.", "child.pem");
    let digest = child_ds.split_whitespace().nth(7).unwrap().to_string();
    zone_with(
        dir.path(),
        &format!(
            "{}\nexample.net. IN DS 1 13 2 {digest}\nmail IN DS 2 13 2 {digest}\n\
             sec IN DS 3 13 2 {short}\nsec IN DS 4 13 4 {digest}\n",
            secure_delegation(&child_ds),
            short = &digest[..60],
        ),
    );
    let path = dir.path().join("meridian.toml");
    std::fs::write(
        &path,
        config(&format!(
            "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n\n[[zone]]\norigin = \"example.net.\"\nfile = \"example.net.zone\"\n{SERVICES}"
        )),
    )
    .unwrap();
    let (code, out, err) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    for want in [
        "example.net.: DS at the apex belongs in the parent zone",
        "mail.example.net.: DS is only allowed at a delegation point",
        "sec.example.net.: DS 3 digest is 30 bytes; digest type 2 needs 32",
        "sec.example.net.: DS 4 digest is 32 bytes; digest type 4 needs 48",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(err.contains("example.net.zone"), "names the file:\n{err}");
}

#[test]
fn issue_14_two_instances_with_one_key_give_answers_that_validate_together() {
    use hickory_proto::dnssec::PublicKey;
    use hickory_proto::dnssec::Verifier;
    use hickory_proto::dnssec::rdata::DNSSECRData;
    use hickory_proto::rr::{DNSClass, RData};
    let keys = tempfile::tempdir().unwrap();
    let ds = keygen(keys.path(), "k1.pem", "ecdsap256sha256");
    let trust = anchor(keys.path(), &ds);
    let key = keys.path().join("k1.pem");
    let dnssec = format!("dnssec = {{ keys = [{:?}] }}", key.to_str().unwrap());
    let a = start(tempfile::tempdir().unwrap(), &dnssec);
    let b = start(tempfile::tempdir().unwrap(), &dnssec);

    // `meridian dnssec ds` prints the same DS for both configurations: the keygen one.
    for s in [&a, &b] {
        let config_path = s.dir().join("meridian.toml");
        let (code, out, err) = run(&["dnssec", "ds", "--config", config_path.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&ds), "{out}\n{ds}");
    }

    // The DNSKEY RRset from A verifies the signatures B makes, for a static RRset, the dynamic
    // name (from each region) and a denial, checked with hickory's own verifier.
    let ask = |s: &Server, name: &str, qtype: u16, source: &str| -> Message {
        let bind: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
        let sock = std::net::UdpSocket::bind(bind).unwrap();
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        sock.send_to(&raw_query(name, qtype, DO, 4096), s.dns)
            .unwrap();
        let mut buf = vec![0; 4096];
        let n = sock.recv(&mut buf).expect("an answer");
        Message::from_vec(&buf[..n]).unwrap()
    };
    let keyset = ask(&a, "example.net", 48, "127.0.0.1");
    let dnskeys: Vec<_> = keyset
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::DNSKEY(k)) => Some(k.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(dnskeys.len(), 1, "{keyset:?}");
    let tag = dnskeys[0].calculate_key_tag().unwrap();
    let mut checked = 0;
    for (name, qtype, source) in [
        ("mail.example.net", 1, "127.0.0.1"),
        ("example.net", 48, "127.0.0.1"),
        ("api.example.net", 1, "127.0.0.2"),
        ("api.example.net", 1, "127.0.0.3"),
        ("api.example.net", 28, "127.0.0.3"),
        ("nope.example.net", 1, "127.0.0.1"),
    ] {
        let from_a = ask(&a, name, qtype, source);
        let from_b = ask(&b, name, qtype, source);
        for section in [&from_b.answers, &from_b.authorities] {
            for sig in section.iter().filter_map(|r| match &r.data {
                RData::DNSSEC(DNSSECRData::RRSIG(s)) => Some((r, s)),
                _ => None,
            }) {
                let (record, rrsig) = sig;
                assert_eq!(rrsig.input().key_tag, tag);
                dnskeys[0]
                    .verify_rrsig(&record.name, DNSClass::IN, rrsig, section.iter())
                    .unwrap_or_else(|e| panic!("{name} from B with A's key: {e}"));
                checked += 1;
            }
        }
        // Both sign with the same key and the same (aligned) signing window.
        let (sa, sb) = (rrsigs_of(&from_a.answers), rrsigs_of(&from_b.answers));
        assert_eq!(sa.len(), sb.len(), "{name}");
        for (x, y) in sa.iter().zip(&sb) {
            assert_eq!((x.0, x.1), (y.0, y.1), "{name}");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as u32;
            for (_, _, inception, expiration) in [x, y] {
                assert!(
                    *inception <= now && now < *expiration,
                    "{name}: {x:?} {y:?}"
                );
            }
        }
    }
    assert!(checked >= 7, "signatures checked: {checked}");

    // delv: each instance validates with the one trust anchor, and B's answers validate with
    // A's DNSKEY (fetched above) as the only anchor.
    let Some(d) = tool("dnssec delv test", &["delv"], "bind9-dnsutils") else {
        return;
    };
    let k = &dnskeys[0];
    let static_key = keys.path().join("anchor-from-a.conf");
    std::fs::write(
        &static_key,
        format!(
            "trust-anchors {{\n  example.net. static-key {} 3 {} \"{}\";\n}};\n",
            k.flags(),
            u8::from(k.algorithm()),
            data_encoding_base64(k.public_key().public_bytes())
        ),
    )
    .unwrap();
    for s in [&a, &b] {
        for args in [
            &["mail.example.net", "A"][..],
            &["nope.example.net", "A"],
            &["docs.example.net", "AAAA"],
        ] {
            validated(&d, s, &trust, "127.0.0.1", args);
        }
    }
    let from_a = validated(&d, &a, &trust, "127.0.0.2", &["api.example.net", "A"]);
    let from_b = validated(&d, &b, &static_key, "127.0.0.2", &["api.example.net", "A"]);
    assert_eq!(addresses(&from_a), addresses(&from_b));
    validated(&d, &b, &static_key, "127.0.0.1", &["example.net", "SOA"]);
}

/// Standard base64 of `bytes` (for a delv static-key anchor).
fn data_encoding_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The RRSIG RDATA of every RRSIG in `records` covering `covered`.
fn rrsig_rdata(records: &[hickory_proto::rr::Record], covered: RecordType) -> Vec<Vec<u8>> {
    use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
    records
        .iter()
        .filter(|r| r.record_type() == RecordType::RRSIG)
        .map(|r| {
            let mut buf = Vec::new();
            r.data.emit(&mut BinEncoder::new(&mut buf)).unwrap();
            buf
        })
        .filter(|b| b[..2] == u16::from(covered).to_be_bytes())
        .collect()
}

#[test]
fn issue_14_tc_when_only_the_signed_answer_is_too_large_and_wildcard_rrsigs_count_labels() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k1.pem", "ecdsap256sha256");
    // Three 120-byte strings: about 440 bytes unsigned, over 512 with an RRSIG (about 100).
    let text = "x".repeat(120);
    zone_with(
        dir.path(),
        &format!("mid IN TXT \"{text}\"\nmid IN TXT \"y{text}\"\nmid IN TXT \"z{text}\""),
    );
    let s = start_zone(dir, "dnssec = { keys = [\"k1.pem\"] }");

    // RFC 6891 §7 / RFC 4035 §3.1: the same question at 512 bytes: complete unsigned, TC signed.
    let plain = s
        .udp_raw(&raw_query("mid.example.net", 16, 0, 512))
        .unwrap();
    assert_eq!(plain[2] & 0x02, 0, "fits unsigned ({} bytes)", plain.len());
    assert!(plain.len() <= 512);
    let signed = s
        .udp_raw(&raw_query("mid.example.net", 16, DO, 512))
        .unwrap();
    assert_ne!(signed[2] & 0x02, 0, "TC when signed");
    let m = Message::from_vec(&signed).unwrap();
    assert!(m.answers.is_empty(), "no partial RRset: {m:?}");
    assert!(m.edns.is_some(), "the OPT is kept (RFC 6891 §7)");
    // With room, or over TCP, the whole signed answer.
    for r in [
        s.udp_raw(&raw_query("mid.example.net", 16, DO, 1232))
            .unwrap(),
        s.tcp_raw(&raw_query("mid.example.net", 16, DO, 512))
            .unwrap(),
    ] {
        assert_eq!(r[2] & 0x02, 0);
        let m = Message::from_vec(&r).unwrap();
        assert_eq!(m.answers.len(), 4, "three TXT and their RRSIG: {m:?}");
        assert!(r.len() > 512, "{} bytes", r.len());
    }

    // RFC 4034 §3.1.3: a wildcard answer's RRSIG counts the labels of the wildcard's owner
    // without the `*` (*.user.example.net: 3), however deep the name asked for.
    for (name, qtype, labels) in [
        ("foo.user.example.net", 16, 3),
        ("a.b.User.example.net", 16, 3),
        ("mail.example.net", 1, 3),
        ("example.net", 6, 2),
    ] {
        let m = Message::from_vec(&s.udp_raw(&raw_query(name, qtype, DO, 1232)).unwrap()).unwrap();
        let sigs = rrsig_rdata(&m.answers, RecordType::from(qtype));
        assert_eq!(sigs.len(), 1, "{name}: {m:?}");
        assert_eq!(sigs[0][3], labels, "{name}: RRSIG labels");
    }

    // NODATA asked in mixed case: the NSEC owner is lowercase (a bug seen in PowerDNS and
    // CoreDNS), as for compact denials (rfc9824_compact_denial_... above).
    let m = Message::from_vec(
        &s.udp_raw(&raw_query("MaIL.Example.NET", 16, DO, 1232))
            .unwrap(),
    )
    .unwrap();
    let nsec = authority_of(&m, RecordType::NSEC);
    assert_eq!(nsec.len(), 1, "{m:?}");
    assert_eq!(nsec[0].0, "mail.example.net.");
    assert!(
        nsec[0]
            .1
            .starts_with(b"\x01\x00\x04mail\x07example\x03net\x00")
    );
}

/// The signer name of every RRSIG in `records` covering `covered`.
fn signers(records: &[hickory_proto::rr::Record], covered: RecordType) -> Vec<String> {
    use hickory_proto::dnssec::rdata::DNSSECRData;
    use hickory_proto::rr::RData;
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::RRSIG(s)) if s.input().type_covered == covered => {
                Some(s.input().signer_name.to_string())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn rfc4035_s3_1_4_1_ds_of_a_child_served_by_the_same_instance_is_the_parents() {
    let Some(d) = tool("dnssec delv test", &["delv"], "bind9-dnsutils") else {
        return;
    };
    // example.net. and its child sec.example.net. in one instance, each with its own key;
    // with a DS at the cut (secure), then without (insecure).
    for secure in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let ds = keygen(dir.path(), "k1.pem", "ecdsap256sha256");
        let trust = anchor(dir.path(), &ds);
        let child_ds = keygen_for(dir.path(), "sec.example.net.", "child.pem");
        let delegation = if secure {
            secure_delegation(&child_ds)
        } else {
            secure_delegation("; no DS")
        };
        zone_with(dir.path(), &delegation);
        child_zone(dir.path());
        let text = config(&format!(
            "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n\n\
             [[zone]]\norigin = \"example.net.\"\nfile = \"example.net.zone\"\n\
             dnssec = {{ keys = [\"k1.pem\"] }}\n\
             [[zone]]\norigin = \"sec.example.net.\"\nfile = \"sec.zone\"\n\
             dnssec = {{ keys = [\"child.pem\"] }}\n{SERVICES}"
        ));
        let path = dir.path().join("meridian.toml");
        std::fs::write(&path, text).unwrap();
        let s = Server::start_in(dir, &path);

        // The DS query goes to the parent: authoritative, signed by example.net.'s key (the
        // DS RRset, or the NSEC at the cut listing NS only), never the child's NODATA.
        let r = Message::from_vec(
            &s.udp_raw(&raw_query("sec.example.net", 43, DO, 1232))
                .unwrap(),
        )
        .unwrap();
        assert!(r.metadata.authoritative, "{r:?}");
        if secure {
            assert_eq!(
                signers(&r.answers, RecordType::DS),
                ["example.net."],
                "{r:?}"
            );
        } else {
            assert!(r.answers.is_empty(), "{r:?}");
            let soa = authority_of(&r, RecordType::SOA);
            assert_eq!(soa[0].0, "example.net.", "the parent's SOA: {r:?}");
            let nsec = authority_of(&r, RecordType::NSEC);
            assert_eq!(nsec.len(), 1, "{r:?}");
            assert_eq!(nsec[0].0, "sec.example.net.");
            let next = b"\x01\x00\x03sec\x07example\x03net\x00";
            assert_eq!(&nsec[0].1[next.len()..], &[0, 6, 0x20, 0, 0, 0, 0, 0x03]);
            assert_eq!(signers(&r.authorities, RecordType::NSEC), ["example.net."]);
        }
        // The child's own data stays the child's.
        let r = Message::from_vec(
            &s.udp_raw(&raw_query("sec.example.net", 6, DO, 1232))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(signers(&r.answers, RecordType::SOA), ["sec.example.net."]);

        // delv validates the DS (or its absence) with example.net.'s anchor, and with the DS
        // the whole chain into the child: DS, the child's DNSKEY, www's A.
        validated(&d, &s, &trust, "127.0.0.1", &["sec.example.net", "DS"]);
        let out = delv(&d, &s, &trust, "127.0.0.1", &["www.sec.example.net", "A"]);
        if secure {
            assert!(out.contains("; fully validated"), "{out}");
            assert!(out.contains("192.0.2.77"), "{out}");
        } else {
            assert!(!out.contains("fully validated"), "insecure child: {out}");
            assert!(out.contains("192.0.2.77"), "{out}");
        }

        // ldns's drill chases the same chain from example.net.'s DNSKEY: a second validator.
        let Some(drill) = tool("dnssec drill test", &["drill"], "ldnsutils") else {
            continue;
        };
        let key = s.dir().join("k1.pem");
        let (code, keys, err) = run(&[
            "dnssec",
            "ds",
            "--zone",
            "example.net.",
            "--key",
            key.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        let dnskey = keys.lines().find(|l| l.contains(" DNSKEY ")).unwrap();
        let anchor_key = s.dir().join("anchor.key");
        std::fs::write(&anchor_key, format!("{dnskey}\n")).unwrap();
        let out = Command::new(drill)
            .args(["-p", &s.dns.port().to_string(), "-k"])
            .arg(&anchor_key)
            .args(["-S", "www.sec.example.net", "A", "@127.0.0.1"])
            .output()
            .expect("run drill");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if secure {
            assert!(text.contains(";; Chase successful"), "{text}");
            assert!(text.contains("sec.example.net. (DS keytag"), "{text}");
        } else {
            assert!(text.contains(";; Chase failed"), "insecure child: {text}");
        }
    }
}
