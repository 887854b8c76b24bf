//! The edges of the wire protocol, each over UDP and TCP against the real binary, with the
//! queries written byte by byte: unknown opcodes (RFC 8906 §3.1.3, ISC genreport's `opcode` and
//! `opcodeflg`), TSIG without keys (RFC 8945 §5.2), malformed ECS (RFC 7871 §6), the OPT in
//! every FORMERR and in rate-limit slips (RFC 6891 §7), and DNS cookies (RFC 7873, RFC 9018).

use std::hash::Hasher;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{Server, ZONE, tcp_raw, udp_raw};

const RCODE_NOERROR: u16 = 0;
const RCODE_FORMERR: u16 = 1;
const RCODE_NOTIMP: u16 = 4;
const RCODE_NOTAUTH: u16 = 9;
const TYPE_SOA: u16 = 6;
const TYPE_OPT: u16 = 41;
const TYPE_TSIG: u16 = 250;
const OPT_ECS: u16 = 8;
const OPT_COOKIE: u16 = 10;

fn server(extra: &str) -> Server {
    Server::start(&format!(
        "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n{extra}\n{ZONE}"
    ))
}

/// Sends `q` over UDP and over TCP; returns both raw responses.
fn both(s: &Server, q: &[u8]) -> [(&'static str, Vec<u8>); 2] {
    [
        ("udp", udp_raw(s.dns, q).expect("udp response")),
        ("tcp", tcp_raw(s.dns, q).expect("tcp response")),
    ]
}

/// Writes `name` (dotted, `.` for the root) in wire form.
fn name(n: &str) -> Vec<u8> {
    let mut w = Vec::new();
    for label in n.split('.').filter(|l| !l.is_empty()) {
        w.push(label.len() as u8);
        w.extend_from_slice(label.as_bytes());
    }
    w.push(0);
    w
}

/// A query: ID 0x4D52, `flags`, one question `qname`/`qtype` IN, then `additional` records.
fn query(flags: u16, qname: &str, qtype: u16, additional: &[Vec<u8>]) -> Vec<u8> {
    let mut q = vec![0x4D, 0x52];
    q.extend(flags.to_be_bytes());
    q.extend([0, 1, 0, 0, 0, 0]);
    q.extend((additional.len() as u16).to_be_bytes());
    q.extend(name(qname));
    q.extend(qtype.to_be_bytes());
    q.extend(1u16.to_be_bytes());
    for r in additional {
        q.extend(r);
    }
    q
}

/// An OPT record (payload 1232, version 0) with `options`.
fn opt(options: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut rdata = Vec::new();
    for (code, data) in options {
        rdata.extend(code.to_be_bytes());
        rdata.extend((data.len() as u16).to_be_bytes());
        rdata.extend(data);
    }
    let mut r = vec![0];
    r.extend(TYPE_OPT.to_be_bytes());
    r.extend(1232u16.to_be_bytes());
    r.extend([0, 0, 0, 0]);
    r.extend((rdata.len() as u16).to_be_bytes());
    r.extend(rdata);
    r
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A TSIG record as ISC genreport's `dnswkk` writes it: key `key`, hmac-sha256, signed now,
/// fudge 300, a 32-octet MAC (zeros: we have no key to check it against anyway).
fn tsig(key: &str) -> Vec<u8> {
    let mut rdata = name("hmac-sha256");
    rdata.extend(&unix_now().to_be_bytes()[2..]);
    rdata.extend(300u16.to_be_bytes());
    rdata.extend(32u16.to_be_bytes());
    rdata.extend([0u8; 32]);
    rdata.extend([0x4D, 0x52, 0, 0, 0, 0]); // original ID, error, other len
    let mut r = name(key);
    r.extend(TYPE_TSIG.to_be_bytes());
    r.extend(255u16.to_be_bytes());
    r.extend([0, 0, 0, 0]);
    r.extend((rdata.len() as u16).to_be_bytes());
    r.extend(rdata);
    r
}

/// One record of a response.
#[derive(Debug, Clone)]
struct Rr {
    name: Vec<u8>,
    rtype: u16,
    class: u16,
    ttl: u32,
    rdata: Vec<u8>,
}

/// A response, walked strictly: every count matches what follows and nothing trails.
#[derive(Debug)]
struct Reply {
    id: u16,
    flags: u16,
    counts: [u16; 4],
    answers: Vec<Rr>,
    additional: Vec<Rr>,
}

impl Reply {
    fn parse(b: &[u8]) -> Reply {
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let counts = [u16_at(4), u16_at(6), u16_at(8), u16_at(10)];
        let mut pos = 12;
        for _ in 0..counts[0] {
            pos = read_name(b, pos, &mut Vec::new()) + 4;
        }
        let mut sections = [Vec::new(), Vec::new(), Vec::new()];
        for (s, &n) in counts[1..].iter().enumerate() {
            for _ in 0..n {
                let mut owner = Vec::new();
                pos = read_name(b, pos, &mut owner);
                let rdlen = u16_at(pos + 8) as usize;
                sections[s].push(Rr {
                    name: owner,
                    rtype: u16_at(pos),
                    class: u16_at(pos + 2),
                    ttl: u32::from_be_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]),
                    rdata: b[pos + 10..pos + 10 + rdlen].to_vec(),
                });
                pos += 10 + rdlen;
            }
        }
        assert_eq!(pos, b.len(), "nothing may trail the records: {b:02x?}");
        let [answers, _, additional] = sections;
        Reply {
            id: u16_at(0),
            flags: u16_at(2),
            counts,
            answers,
            additional,
        }
    }

    fn opcode(&self) -> u16 {
        (self.flags >> 11) & 0xF
    }

    fn tc(&self) -> bool {
        self.flags & 0x0200 != 0
    }

    /// The full RCODE: header bits and, with an OPT, its extended bits.
    fn rcode(&self) -> u16 {
        let ext = self.opt().map_or(0, |o| (o.ttl >> 24) as u16);
        (ext << 4) | (self.flags & 0xF)
    }

    fn opt(&self) -> Option<&Rr> {
        self.additional.iter().find(|r| r.rtype == TYPE_OPT)
    }

    fn option(&self, code: u16) -> Option<Vec<u8>> {
        let o = &self.opt()?.rdata;
        let mut i = 0;
        while i < o.len() {
            let c = u16::from_be_bytes([o[i], o[i + 1]]);
            let len = u16::from_be_bytes([o[i + 2], o[i + 3]]) as usize;
            if c == code {
                return Some(o[i + 4..i + 4 + len].to_vec());
            }
            i += 4 + len;
        }
        None
    }
}

/// Reads a (possibly compressed) name at `pos` into `out`; returns the position after it.
fn read_name(b: &[u8], mut pos: usize, out: &mut Vec<u8>) -> usize {
    let mut after = None;
    for _ in 0..128 {
        let len = b[pos];
        if len == 0 {
            out.push(0);
            return after.unwrap_or(pos + 1);
        }
        if len >= 0xC0 {
            after.get_or_insert(pos + 2);
            pos = (usize::from(len & 0x3F) << 8) | usize::from(b[pos + 1]);
            continue;
        }
        out.extend_from_slice(&b[pos..pos + 1 + len as usize]);
        pos += 1 + len as usize;
    }
    panic!("a name loops: {b:02x?}");
}

/// Mirrors the verdict of ISC genreport (`process()` in genreport.c) for its `opcode` and
/// `opcodeflg` tests: the tags it would print, "ok" alone when it passes.
fn genreport_opcode_verdict(b: &[u8]) -> Vec<&'static str> {
    let mut tags = Vec::new();
    let r = Reply::parse(b);
    let [qd, an, ns, ar] = r.counts;
    if qd != 0 {
        tags.push("non-empty-question-section");
    }
    if an != 0 {
        tags.push("non-empty-answer-section");
    }
    if ns != 0 {
        tags.push("non-empty-authority-section");
    }
    if ar != 0 {
        tags.push("non-empty-additional-section");
    }
    if r.opcode() != 15 {
        tags.push("opcode");
    }
    if r.rcode() != RCODE_NOTIMP {
        tags.push("rcode");
    }
    if r.opt().is_some() {
        tags.push("opt");
    }
    for (bit, tag) in [
        (0x0400, "aa"),
        (0x0080, "ra"),
        (0x0100, "rd"),
        (0x0020, "ad"),
        (0x0010, "cd"),
        (0x0040, "z"),
    ] {
        if r.flags & bit != 0 {
            tags.push(tag);
        }
    }
    // genreport retries a truncated UDP answer over TCP; a NOTIMP has nothing to truncate.
    if r.tc() {
        tags.push("tc");
    }
    if tags.is_empty() {
        tags.push("ok");
    }
    tags
}

#[test]
fn rfc8906_s3_1_3_genreport_opcode_and_opcodeflg_are_ok() {
    let s = server("");
    // Exactly what genreport sends (dotest(): res_mkquery, then the opcode fixed up, the
    // question count zeroed and the message cut to the header, then the test's flags):
    // `opcode`: opcode 15, RD cleared, nothing else.
    let opcode = [0x4D, 0x52, 0x78, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    // `opcodeflg`: TC, RD, RA, Z, AD and CD set (genreport's table has AA too, but dotest()
    // never sets it).
    let opcodeflg = [0x4D, 0x53, 0x7B, 0xF0, 0, 0, 0, 0, 0, 0, 0, 0];
    // and with AA as well, as the `dig` line genreport prints for the test has it
    let with_aa = [0x4D, 0x54, 0x7F, 0xF0, 0, 0, 0, 0, 0, 0, 0, 0];
    for q in [&opcode[..], &opcodeflg, &with_aa] {
        for (t, r) in both(&s, q) {
            assert_eq!(
                genreport_opcode_verdict(&r),
                ["ok"],
                "{t} {q:02x?}: {r:02x?}"
            );
            // RFC 8906 §3.1.3: the opcode copied, QR set, every other flag clear.
            assert_eq!(r.len(), 12, "{t}");
            assert_eq!(&r[..2], &q[..2], "{t}: the ID");
            assert_eq!(r[2], 0x80 | 0x78, "{t}: QR and opcode 15 only");
            assert_eq!(r[3], 0x04, "{t}: no flag, RCODE NOTIMP");
        }
    }
}

#[test]
fn rfc8906_every_opcode_but_query_is_notimp_whatever_follows_the_header() {
    let s = server("");
    for opcode in 1..=15u16 {
        // with a question, without, with two (the count is not looked at), with an OPT
        let with_question = query(opcode << 11 | 0x0100, "example.net", TYPE_SOA, &[]);
        let mut two_questions = with_question.clone();
        two_questions[5] = 2;
        let mut header_only = with_question[..12].to_vec();
        header_only[5] = 0;
        let with_opt = query(opcode << 11, "example.net", TYPE_SOA, &[opt(&[])]);
        for (q, has_opt) in [
            (with_question, false),
            (two_questions, false),
            (header_only, false),
            (with_opt, true),
        ] {
            for (t, b) in both(&s, &q) {
                let r = Reply::parse(&b);
                assert_eq!(r.id, 0x4D52);
                assert_eq!(r.opcode(), opcode, "{t}");
                assert_eq!(r.rcode(), RCODE_NOTIMP, "{t} opcode {opcode}");
                assert_eq!(r.flags & 0xFFF0, 0x8000 | opcode << 11, "{t}: QR only");
                assert_eq!(r.counts[..3], [0, 0, 0], "{t}");
                // RFC 6891 §7: an OPT in the response when the request had one.
                assert_eq!(r.opt().is_some(), has_opt, "{t} opcode {opcode}");
            }
        }
    }
}

#[test]
fn rfc8945_s5_2_tsig_without_keys_is_notauth_badkey_and_tsig_not_last_is_formerr() {
    let s = server("");
    let signed = [
        // genreport's `dnswkk`: the well-known key "." with hmac-sha256
        (".", query(0, "example.net", TYPE_SOA, &[tsig(".")]), false),
        (
            "key.example.",
            query(
                0,
                "example.net",
                TYPE_SOA,
                &[opt(&[]), tsig("key.example.")],
            ),
            true,
        ),
    ];
    for (key, q, has_opt) in signed {
        for (t, b) in both(&s, &q) {
            let r = Reply::parse(&b);
            assert_eq!(r.rcode(), RCODE_NOTAUTH, "{t}");
            assert!(
                r.answers.is_empty(),
                "{t}: no answer to an unverified query"
            );
            assert_eq!(r.counts[0], 1, "{t}: the question is kept");
            // §5.3.2: the TSIG back, last, unsigned, with error BADKEY (17).
            let tsig = r.additional.last().expect("a TSIG record");
            assert_eq!(tsig.rtype, TYPE_TSIG, "{t}: TSIG is the last record");
            assert_eq!((tsig.class, tsig.ttl), (255, 0));
            assert_eq!(tsig.name, name(key), "{t}: key name echoed");
            let rd = &tsig.rdata;
            let alg = name("hmac-sha256");
            assert_eq!(rd[..alg.len()], alg, "{t}: algorithm echoed");
            let rest = &rd[alg.len()..];
            let mut signed_at = [0u8; 8];
            signed_at[2..].copy_from_slice(&rest[..6]);
            let signed_at = u64::from_be_bytes(signed_at);
            assert!(
                signed_at.abs_diff(unix_now()) <= 300,
                "{t}: time signed is now"
            );
            assert_eq!(u16::from_be_bytes([rest[8], rest[9]]), 0, "{t}: MAC size 0");
            assert_eq!(
                rest[10..],
                [0x4D, 0x52, 0, 17, 0, 0],
                "{t}: original ID, BADKEY"
            );
            assert_eq!(r.opt().is_some(), has_opt, "{t}: an OPT exactly when asked");
        }
    }
    // RFC 8945 §5.2: a TSIG anywhere but last is FORMERR (with an OPT when there is one).
    let mut twice = query(0, "example.net", TYPE_SOA, &[tsig("."), tsig(".")]);
    let misplaced = query(0, "example.net", TYPE_SOA, &[tsig("."), opt(&[])]);
    let mut in_answer = query(0, "example.net", TYPE_SOA, &[tsig(".")]);
    in_answer[7] = 1;
    in_answer[11] = 0;
    twice[11] = 2;
    for (q, has_opt) in [(twice, false), (misplaced, true), (in_answer, false)] {
        for (t, b) in both(&s, &q) {
            let r = Reply::parse(&b);
            assert_eq!(r.rcode(), RCODE_FORMERR, "{t}");
            assert_eq!(r.opt().is_some(), has_opt, "{t}");
            assert!(r.additional.iter().all(|x| x.rtype != TYPE_TSIG));
        }
    }
}

#[test]
fn rfc7871_s6_ecs_with_bits_beyond_the_prefix_or_the_wrong_length_is_formerr_with_opt() {
    let s = server("");
    let ecs = |family: u16, source: u8, addr: &[u8]| {
        let mut d = family.to_be_bytes().to_vec();
        d.extend([source, 0]);
        d.extend(addr);
        opt(&[(OPT_ECS, d)])
    };
    let bad = [
        ecs(1, 24, &[192, 0, 2, 1]),             // a fourth octet for a /24
        ecs(1, 24, &[192, 0]),                   // two octets for a /24
        ecs(1, 20, &[192, 0, 0xFF]),             // bits set beyond /20
        ecs(1, 0, &[192]),                       // an octet for /0
        ecs(2, 33, &[0x20, 1, 0xd, 0xb8, 0xC0]), // bit 34 set
        ecs(2, 129, &[0; 17]),                   // longer than the family
        ecs(3, 0, &[]),                          // unknown family
    ];
    for add in bad {
        let q = query(0, "example.net", TYPE_SOA, &[add]);
        for (t, b) in both(&s, &q) {
            let r = Reply::parse(&b);
            assert_eq!(r.rcode(), RCODE_FORMERR, "{t} {q:02x?}");
            assert_eq!(
                r.counts[0], 1,
                "{t}: the question, read before the fault, is echoed"
            );
            assert_eq!(
                b[12..b.len() - 11],
                q[12..12 + b.len() - 23],
                "{t}: verbatim"
            );
            // RFC 6891 §7: the OPT back, so the client does not take us for EDNS-less.
            let o = r.opt().expect("OPT in the FORMERR");
            assert_eq!((o.class, (o.ttl >> 16) & 0xFF), (1232, 0));
        }
    }
    for good in [
        ecs(1, 24, &[192, 0, 2]),
        ecs(1, 20, &[192, 0, 0xF0]),
        ecs(1, 0, &[]),
        ecs(2, 33, &[0x20, 1, 0xd, 0xb8, 0x80]),
    ] {
        let q = query(0, "example.net", TYPE_SOA, &[good]);
        for (t, b) in both(&s, &q) {
            let r = Reply::parse(&b);
            assert_eq!(r.rcode(), RCODE_NOERROR, "{t}");
            assert_eq!(r.answers.len(), 1, "{t}");
            assert!(r.option(OPT_ECS).is_some(), "{t}: ECS echoed");
        }
    }
}

#[test]
fn rfc6891_s7_every_formerr_to_a_query_with_an_opt_carries_an_opt() {
    let s = server("");
    let mut two_questions = query(0, "example.net", TYPE_SOA, &[opt(&[])]);
    two_questions[5] = 2;
    let q = query(0, "example.net", TYPE_SOA, &[]);
    two_questions.splice(q.len().., q[12..].iter().copied().chain(opt(&[])));
    let cases: Vec<(Vec<u8>, bool)> = vec![
        (two_questions, true),
        (query(0, "example.net", TYPE_OPT, &[opt(&[])]), true),
        (
            query(0, "example.net", TYPE_SOA, &[opt(&[]), opt(&[])]),
            true,
        ),
        (
            query(
                0,
                "example.net",
                TYPE_SOA,
                &[opt(&[(OPT_COOKIE, vec![1; 9])])],
            ),
            true,
        ),
        (
            {
                let mut t = query(0, "example.net", TYPE_SOA, &[opt(&[])]);
                t.push(0); // a trailing octet
                t
            },
            true,
        ),
        // without an OPT, none comes back
        (
            {
                let mut t = query(0, "example.net", TYPE_SOA, &[]);
                t[5] = 2;
                t
            },
            false,
        ),
        (query(0, "example.net", TYPE_OPT, &[]), false),
    ];
    for (q, has_opt) in cases {
        for (t, b) in both(&s, &q) {
            let r = Reply::parse(&b);
            assert_eq!(r.rcode(), RCODE_FORMERR, "{t} {q:02x?}");
            assert_eq!(r.opt().is_some(), has_opt, "{t} {q:02x?}");
        }
    }
}

#[test]
fn rfc7873_s5_2_2_cookie_of_a_malformed_length_is_formerr() {
    let s = server("");
    for len in [0usize, 1, 7, 9, 12, 15, 41, 64] {
        let q = query(
            0,
            "example.net",
            TYPE_SOA,
            &[opt(&[(OPT_COOKIE, vec![0xA5; len])])],
        );
        for (t, b) in both(&s, &q) {
            let r = Reply::parse(&b);
            assert_eq!(r.rcode(), RCODE_FORMERR, "{t} length {len}");
            assert!(r.opt().is_some(), "{t} length {len}");
        }
    }
}

/// The RFC 9018 server cookie for `client` at `ip`, stamped `at`, under `secret`: computed
/// here from the RFC's description, independently of the server's code.
fn rfc9018_cookie(secret: &[u8; 16], client: &[u8; 8], ip: IpAddr, at: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 1;
    c[4..8].copy_from_slice(&at.to_be_bytes());
    let mut h = siphasher::sip::SipHasher24::new_with_key(secret);
    h.write(client);
    h.write(&c[..8]);
    match ip {
        IpAddr::V4(a) => h.write(&a.octets()),
        IpAddr::V6(a) => h.write(&a.octets()),
    }
    c[8..].copy_from_slice(&h.finish().to_le_bytes());
    c
}

const SECRET_HEX: &str = "e5e973e5a6b2a43f48e7dc849e37bfcf";
const SECRET: [u8; 16] = [
    0xe5, 0xe9, 0x73, 0xe5, 0xa6, 0xb2, 0xa4, 0x3f, 0x48, 0xe7, 0xdc, 0x84, 0x9e, 0x37, 0xbf, 0xcf,
];

/// A server whose cookie secret file holds `lines`, with `extra` config.
fn server_with_secret(lines: &str, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cookie.secret"), lines).unwrap();
    let path = dir.path().join("meridian.toml");
    std::fs::write(
        &path,
        crate::harness::config(&format!(
            "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n\
             cookie_secret_file = \"cookie.secret\"\n{extra}\n{ZONE}"
        )),
    )
    .unwrap();
    Server::start_in(dir, &path)
}

fn cookie_query(client: [u8; 8], server: &[u8]) -> Vec<u8> {
    let mut c = client.to_vec();
    c.extend(server);
    query(0, "example.net", TYPE_SOA, &[opt(&[(OPT_COOKIE, c)])])
}

/// Checks that `reply` carries `client` and a server cookie valid for `ip` under `secret`,
/// stamped about now; returns the server cookie.
fn check_reply_cookie(r: &Reply, client: [u8; 8], ip: IpAddr, secret: &[u8; 16]) -> [u8; 16] {
    let c = r.option(OPT_COOKIE).expect("a COOKIE in the response");
    assert_eq!(c.len(), 24, "client cookie and a 16-octet server cookie");
    assert_eq!(c[..8], client, "the client cookie comes back");
    assert_eq!(c[8..12], [1, 0, 0, 0], "version 1, reserved zero");
    let at = u32::from_be_bytes([c[12], c[13], c[14], c[15]]);
    assert!(
        u64::from(at).abs_diff(unix_now()) <= 300,
        "stamped now: {at}"
    );
    let mut server = [0u8; 16];
    server.copy_from_slice(&c[8..]);
    assert_eq!(
        server,
        rfc9018_cookie(secret, &client, ip, at),
        "RFC 9018 §4 hash for {ip}"
    );
    server
}

#[test]
fn rfc7873_a_client_cookie_gets_an_rfc9018_server_cookie_over_udp_and_tcp() {
    let s = server_with_secret(&format!("# rolled 2026-12-01\n{SECRET_HEX}\n"), "");
    let client = *b"\x01\x02\x03\x04\x05\x06\x07\x08";
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    for (t, b) in both(&s, &cookie_query(client, &[])) {
        let r = Reply::parse(&b);
        assert_eq!(r.rcode(), RCODE_NOERROR, "{t}");
        assert_eq!(r.answers.len(), 1, "{t}");
        let server = check_reply_cookie(&r, client, ip, &SECRET);
        // Presenting it again: still answered, with a cookie made now.
        for (t2, b2) in both(&s, &cookie_query(client, &server)) {
            let r2 = Reply::parse(&b2);
            assert_eq!((r2.rcode(), r2.answers.len()), (0, 1), "{t} then {t2}");
            check_reply_cookie(&r2, client, ip, &SECRET);
        }
    }
    // RFC 7873 §5.2.4: a wrong server cookie (of every allowed length), or one stamped two
    // hours ago with the right hash, never costs the answer: a fresh cookie comes back.
    let stale = rfc9018_cookie(&SECRET, &client, ip, (unix_now() - 7200) as u32);
    let mut wrong_hash = rfc9018_cookie(&SECRET, &client, ip, unix_now() as u32);
    wrong_hash[15] ^= 1;
    let others: [&[u8]; 5] = [&stale, &wrong_hash, &[9; 8], &[9; 24], &[9; 32]];
    for server in others {
        for (t, b) in both(&s, &cookie_query(client, server)) {
            let r = Reply::parse(&b);
            assert_eq!((r.rcode(), r.answers.len()), (0, 1), "{t} {server:02x?}");
            check_reply_cookie(&r, client, ip, &SECRET);
        }
    }
    // ISC genreport `ednscookie`: the client cookie 0102030405060708 alone; it checks that the
    // answer is NOERROR with a 16-40 octet COOKIE starting with it.
    let genreport = query(
        0,
        "example.net",
        TYPE_SOA,
        &[opt(&[(OPT_COOKIE, (1..=8).collect())])],
    );
    for (t, b) in both(&s, &genreport) {
        let r = Reply::parse(&b);
        let c = r.option(OPT_COOKIE).unwrap();
        assert!(
            (16..=40).contains(&c.len()) && c[..8] == [1, 2, 3, 4, 5, 6, 7, 8],
            "{t}"
        );
    }
}

#[test]
fn rfc9018_instances_sharing_the_secret_file_accept_each_others_cookies() {
    // The secret rolls over: the second instance already makes cookies with the new secret
    // and still accepts the old one (the second line).
    let new = "445536bcd2513298075a5d379663c962";
    let rate_limit = "[rate_limit]\nresponses_per_second = 1\nslip = 0";
    let a = server_with_secret(&format!("{SECRET_HEX}\n"), "");
    let b = server_with_secret(&format!("{new}\n{SECRET_HEX}\n"), rate_limit);
    let client = [0x11; 8];
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let r = Reply::parse(&udp_raw(a.dns, &cookie_query(client, &[])).unwrap());
    let from_a = check_reply_cookie(&r, client, ip, &SECRET);
    // At `b`, A's cookie is valid: exempt from b's limit of one response per second.
    let answered = burst(b.dns, "127.0.0.1", &cookie_query(client, &from_a), 20);
    assert_eq!(
        answered, 20,
        "a valid cookie from another instance is exempt"
    );
    let r = Reply::parse(&udp_raw(b.dns, &cookie_query(client, &from_a)).unwrap());
    let mut new_secret = [0u8; 16];
    for (i, o) in new_secret.iter_mut().enumerate() {
        *o = u8::from_str_radix(&new[2 * i..2 * i + 2], 16).unwrap();
    }
    check_reply_cookie(&r, client, ip, &new_secret);
}

/// Sends `q` `n` times from a new socket on `from` to `to` without waiting, then counts the
/// answers that arrive (untruncated) within a generous second of quiet.
fn burst(to: SocketAddr, from: &str, q: &[u8], n: usize) -> usize {
    let sock = UdpSocket::bind((from, 0)).unwrap();
    for _ in 0..n {
        sock.send_to(q, to).unwrap();
    }
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 2048];
    let mut answered = 0;
    while let Ok((len, _)) = sock.recv_from(&mut buf) {
        if !Reply::parse(&buf[..len]).tc() {
            answered += 1;
        }
    }
    answered
}

#[test]
fn rfc7873_a_valid_server_cookie_exempts_from_rate_limiting_a_wrong_one_does_not() {
    let s = server_with_secret(
        &format!("{SECRET_HEX}\n"),
        "[rate_limit]\nresponses_per_second = 2\nslip = 0",
    );
    let client = [0x22; 8];
    let ip: IpAddr = "127.0.0.3".parse().unwrap();
    let valid = rfc9018_cookie(&SECRET, &client, ip, unix_now() as u32);
    let mut wrong = valid;
    wrong[8] ^= 0xFF;
    let stale = rfc9018_cookie(&SECRET, &client, ip, (unix_now() - 7200) as u32);
    // Each case from its own /24, so that the buckets are fresh.
    let with_valid = burst(s.dns, "127.0.0.3", &cookie_query(client, &valid), 30);
    let with_wrong = burst(s.dns, "127.0.1.3", &cookie_query(client, &wrong), 30);
    let with_stale = burst(s.dns, "127.0.2.3", &cookie_query(client, &stale), 30);
    let client_only = burst(s.dns, "127.0.3.3", &cookie_query(client, &[]), 30);
    // valid for 127.0.0.3, not for 127.0.4.3
    let other_address = burst(s.dns, "127.0.4.3", &cookie_query(client, &valid), 30);
    println!(
        "30 queries each at 2/s: valid cookie {with_valid}, wrong {with_wrong}, stale \
         {with_stale}, client cookie only {client_only}, another address's {other_address}"
    );
    assert_eq!(with_valid, 30);
    for n in [with_wrong, with_stale, client_only, other_address] {
        // the burst is the rate; a token may come back while the test sends
        assert!((2..=4).contains(&n), "{n}");
    }
    // TCP needs no cookie and is never limited; cookies come back there too.
    let r = Reply::parse(&tcp_raw(s.dns, &cookie_query(client, &[])).unwrap());
    check_reply_cookie(&r, client, "127.0.0.1".parse().unwrap(), &SECRET);
}

#[test]
fn rfc6891_s7_rate_limit_slips_keep_the_opt_and_the_cookie() {
    let s = server("[rate_limit]\nresponses_per_second = 1\nslip = 1");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let plain = query(0, "example.net", TYPE_SOA, &[opt(&[])]);
    let with_cookie = cookie_query([0x33; 8], &[]);
    for _ in 0..10 {
        sock.send_to(&plain, s.dns).unwrap();
        sock.send_to(&with_cookie, s.dns).unwrap();
    }
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 2048];
    let (mut slips, mut with_cookie_slips) = (0, 0);
    while let Ok((len, _)) = sock.recv_from(&mut buf) {
        let r = Reply::parse(&buf[..len]);
        if !r.tc() {
            continue;
        }
        slips += 1;
        assert_eq!(r.counts[..3], [1, 0, 0], "the question, no records");
        let o = r.opt().expect("RFC 6891 §7: the OPT survives the slip");
        assert_eq!(o.class, 1232);
        if let Some(c) = r.option(OPT_COOKIE) {
            assert_eq!(c[..8], [0x33; 8]);
            assert_eq!(c.len(), 24);
            with_cookie_slips += 1;
        }
    }
    println!("20 queries at 1/s, slip 1: {slips} truncated, {with_cookie_slips} with a cookie");
    assert!(slips >= 15, "{slips}");
    assert!(with_cookie_slips >= 7, "{with_cookie_slips}");
}

#[test]
fn rfc7873_cached_static_answers_carry_each_clients_own_cookie() {
    // The UDP fast path answers repeated static names from a per-thread cache; each client
    // must still get a cookie made for its own address.
    let s = server_with_secret(&format!("{SECRET_HEX}\n"), "");
    let client = [0x44; 8];
    for round in 0..3 {
        for from in ["127.0.0.1", "127.0.0.2", "127.0.5.9"] {
            let sock = UdpSocket::bind((from, 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            sock.send_to(&cookie_query(client, &[]), s.dns).unwrap();
            let mut buf = [0u8; 2048];
            let (n, _) = sock.recv_from(&mut buf).expect("an answer");
            let r = Reply::parse(&buf[..n]);
            assert_eq!((r.rcode(), r.answers.len()), (0, 1), "round {round} {from}");
            check_reply_cookie(&r, client, from.parse().unwrap(), &SECRET);
        }
    }
}

#[test]
fn a_bad_cookie_secret_file_is_a_config_error_naming_the_key() {
    for (content, says) in [
        ("not hex at all\n", "line 1: expected 32 hex digits"),
        (
            &format!("{SECRET_HEX}\n{}\n", &SECRET_HEX[..30]) as &str,
            "line 2",
        ),
        ("# only a comment\n", "holds no secret"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cookie.secret"), content).unwrap();
        let path = dir.path().join("meridian.toml");
        std::fs::write(
            &path,
            crate::harness::config(&format!(
                "[server]\ncookie_secret_file = \"cookie.secret\"\n{ZONE}"
            )),
        )
        .unwrap();
        let (code, _, err) = crate::harness::run(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("server.cookie_secret_file"), "{err}");
        assert!(err.contains(says), "{err}");
        assert!(
            !err.contains(&SECRET_HEX[..30]),
            "the secret is never printed: {err}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meridian.toml");
    std::fs::write(
        &path,
        crate::harness::config(&format!(
            "[server]\ncookie_secret_file = \"missing\"\n{ZONE}"
        )),
    )
    .unwrap();
    let (code, _, err) = crate::harness::run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("server.cookie_secret_file") && err.contains("cannot read"),
        "{err}"
    );
}
