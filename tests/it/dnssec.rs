//! DNSSEC online signing (issue 14), checked by real validators: `delv` (BIND 9) with the
//! zone's DS as trust anchor, querying the running server for static names, dynamic names
//! answered by different regions for two client networks, compact denials (RFC 9824), NODATA,
//! CNAME chains into a service and wildcards; plus the wire details a validator does not show
//! (DO copied, CO, lowercased NSEC owners, TC, unsigned answers unchanged byte for byte) and a
//! key rollover with CDS/CDNSKEY following the active key.

use std::path::{Path, PathBuf};
use std::process::Command;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::harness::{Server, config, query, query_no_edns, run, tool};

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
    let text = config(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n\n[[zone]]\norigin = \"example.net.\"\nfile = \"{{ZONE}}\"\n{dnssec}\n{SERVICES}"
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

#[test]
fn rfc9824_compact_denial_nxdomain_only_with_co_and_nsec_owner_lowercased() {
    let dir = tempfile::tempdir().unwrap();
    keygen(dir.path(), "k1.pem", "ecdsap256sha256");
    let s = start(dir, "dnssec = { keys = [\"k1.pem\"] }");
    const DO: u16 = 0x8000;
    const CO: u16 = 0x4000;

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
