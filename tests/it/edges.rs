//! Edges of the static lookup (`zone::Zones::lookup`) and of its hand-off to services, over UDP
//! and TCP against the real binary, on a zone built for them: ANY at and below a delegation and
//! on a wildcard, glue, CNAME loops and long chains, and a CNAME to a failing service.

use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

use crate::harness::{Server, query};

/// The zone of these tests. `c0` starts a chain of 9 CNAMEs, `c1` one of 8 (the limit).
const ZONE_FILE: &str = "$ORIGIN example.org.
$TTL 300
@        SOA   ns1 hostmaster 1 7200 3600 1209600 60
@        NS    ns1
@        MX    10 mail.sub
ns1      A     192.0.2.53
sub      NS    ns.sub
ns.sub   A     192.0.2.99
mail.sub A     192.0.2.98
*.wild   TXT   \"wildcard\"
loop1    CNAME loop2
loop2    CNAME loop3
loop3    CNAME loop1
self     CNAME self
c0       CNAME c1
c1       CNAME c2
c2       CNAME c3
c3       CNAME c4
c4       CNAME c5
c5       CNAME c6
c6       CNAME c7
c7       CNAME c8
c8       CNAME end
end      A     192.0.2.80
tosf     CNAME sf
tosub    CNAME host.sub
";

/// Starts a server on [`ZONE_FILE`] with `sf.example.org.`, a service whose only target is
/// probed on a closed port and that answers SERVFAIL when everything is down.
fn server() -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("example.org.zone"), ZONE_FILE).unwrap();
    // A port nobody listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n\
         [[zone]]\norigin = \"example.org.\"\nfile = \"example.org.zone\"\n\
         [region.us-east]\nlatitude = 39.0\nlongitude = -77.5\n\
         [check.closed]\nkind = \"tcp\"\nport = {closed}\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1\n\
         [[service]]\nname = \"sf.example.org.\"\npolicy = \"failover\"\ncheck = \"closed\"\n\
         when_all_down = \"servfail\"\n\
         endpoints = [{{ region = \"us-east\", addresses = [\"127.0.0.1\"] }}]\n"
    );
    let path = dir.path().join("meridian.toml");
    std::fs::write(&path, config).unwrap();
    Server::start_in(dir, &path)
}

fn types(section: &[hickory_proto::rr::Record]) -> Vec<RecordType> {
    section.iter().map(|r| r.record_type()).collect()
}

fn names(section: &[hickory_proto::rr::Record]) -> Vec<String> {
    section.iter().map(|r| r.name.to_ascii()).collect()
}

/// Asserts that `r` is the referral to `sub.example.org.`: not authoritative, no answer, the NS
/// of the cut in authority and its glue in additional.
fn assert_referral(r: &Message, what: &str) {
    assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{what}");
    assert!(
        !r.metadata.authoritative,
        "{what}: a referral is not authoritative"
    );
    assert!(r.answers.is_empty(), "{what}: {:?}", r.answers);
    assert_eq!(types(&r.authorities), vec![RecordType::NS], "{what}");
    assert_eq!(names(&r.authorities), vec!["sub.example.org."], "{what}");
    assert!(
        names(&r.additionals).contains(&"ns.sub.example.org.".to_string()),
        "{what}: glue in additional: {:?}",
        r.additionals
    );
}

#[test]
fn rfc8482_any_at_or_below_a_delegation_gets_the_referral() {
    // RFC 1034 §4.3.2 step 3b: at or below a cut the server refers, whatever the type; RFC 8482
    // changes what ANY returns, not where authority ends.
    let s = server();
    for name in [
        "sub.example.org.",
        "ns.sub.example.org.",
        "deep.host.sub.example.org.",
    ] {
        for r in s.both(&query(name, RecordType::ANY)) {
            assert_referral(&r, &format!("ANY {name}"));
        }
    }
}

#[test]
fn rfc4592_any_on_a_wildcard_name_answers_from_the_wildcard() {
    let s = server();
    for r in s.both(&query("Someone.wild.example.org.", RecordType::ANY)) {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(types(&r.answers), vec![RecordType::TXT]);
        // RFC 4592 §3.3.1: synthesised with the query name as owner (its case kept).
        assert_eq!(names(&r.answers), vec!["Someone.wild.example.org."]);
    }
    // The wildcard's own parent is an empty non-terminal: NODATA, not the wildcard.
    for r in s.both(&query("wild.example.org.", RecordType::ANY)) {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert_eq!(types(&r.authorities), vec![RecordType::SOA]);
    }
}

#[test]
fn rfc1034_glue_is_never_an_authoritative_answer() {
    let s = server();
    // The glue's own name and type: a referral, not AA data (RFC 1034 §4.3.2, RFC 2181 §6.1).
    for t in [RecordType::A, RecordType::AAAA, RecordType::TXT] {
        for r in s.both(&query("ns.sub.example.org.", t)) {
            assert_referral(&r, &format!("{t} ns.sub"));
        }
    }
    // A CNAME into the delegation: the CNAME is ours (AA), the rest is a referral.
    for r in s.both(&query("tosub.example.org.", RecordType::A)) {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(types(&r.answers), vec![RecordType::CNAME]);
        assert_eq!(types(&r.authorities), vec![RecordType::NS]);
    }
    // An authoritative MX answer whose exchange lies below the cut: occluded addresses are not
    // offered as additional data (RFC 2181 §5.4.1: glue is not authoritative data).
    for r in s.both(&query("example.org.", RecordType::MX)) {
        assert!(r.metadata.authoritative);
        assert_eq!(types(&r.answers), vec![RecordType::MX]);
        assert!(
            !names(&r.additionals).contains(&"mail.sub.example.org.".to_string()),
            "glue offered with an authoritative answer: {:?}",
            r.additionals
        );
    }
}

/// Asserts a SERVFAIL with AA clear and no records at all.
fn assert_servfail_once(r: &Message, what: &str) {
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail, "{what}");
    assert!(!r.metadata.authoritative, "{what}: AA on a failure");
    assert!(
        r.answers.is_empty() && r.authorities.is_empty(),
        "{what}: records in a SERVFAIL: {:?} {:?}",
        r.answers,
        r.authorities
    );
}

#[test]
fn rfc1034_cname_loops_and_chains_longer_than_eight_are_servfail_once() {
    // RFC 1034 §3.6.2: CNAME loops are forbidden; a server stops following them. The answer is
    // one SERVFAIL, never the chain's records repeated until the packet is full.
    let s = server();
    for name in [
        "loop1.example.org.",
        "loop3.example.org.",
        "self.example.org.",
    ] {
        for t in [RecordType::A, RecordType::TXT] {
            for r in s.both(&query(name, t)) {
                assert_servfail_once(&r, &format!("{t} {name}"));
            }
        }
    }
    // Nine CNAMEs: one more than followed.
    for r in s.both(&query("c0.example.org.", RecordType::A)) {
        assert_servfail_once(&r, "a chain of nine");
    }
    // Eight CNAMEs, then the address: answered in full, each record once.
    for r in s.both(&query("c1.example.org.", RecordType::A)) {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        let mut expected = vec![RecordType::CNAME; 8];
        expected.push(RecordType::A);
        assert_eq!(types(&r.answers), expected);
        let owners = names(&r.answers);
        let mut unique = owners.clone();
        unique.dedup();
        assert_eq!(owners, unique, "no record twice");
        assert_eq!(r.answers[8].data, RData::A("192.0.2.80".parse().unwrap()));
    }
}

#[test]
fn a_cname_to_a_servfail_service_keeps_the_services_aa_rule() {
    let s = server();
    // The only target is probed on a closed port: down after one probe, and the service
    // fails closed. Bounded wait, generous for loaded machines.
    let started = Instant::now();
    loop {
        let r = s.ask("sf.example.org.", RecordType::A);
        if r.metadata.response_code == ResponseCode::ServFail {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "sf.example.org never went SERVFAIL: {r:?}\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("service down and SERVFAIL after {:?}", started.elapsed());
    for r in s.both(&query("sf.example.org.", RecordType::A)) {
        assert_servfail_once(&r, "the service itself");
    }
    for r in s.both(&query("tosf.example.org.", RecordType::A)) {
        assert_servfail_once(&r, "a CNAME to the service");
    }
    // Types the service does not answer stay static data of the zone: NODATA, AA.
    for r in s.both(&query("tosf.example.org.", RecordType::TXT)) {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(types(&r.answers), vec![RecordType::CNAME]);
    }
}
