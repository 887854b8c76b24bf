//! Request parsing: the fields an authoritative answer needs, read straight from the wire.
//!
//! hickory-proto's decoder builds a whole `Message` (allocations for every name and option) and
//! hides details we must judge ourselves: the exact length of an ECS address (RFC 7871 §6:
//! too many or too few octets is FORMERR), a duplicate OPT (RFC 6891 §6.1.1), the length of a
//! COOKIE (RFC 7873 §5.2.2) and where a TSIG sits (RFC 8945 §5.2). So queries are parsed here,
//! bounds-checked at every step, without panics; records are still written with hickory-proto
//! (`super::response`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// DNS header length.
pub(crate) const HEADER_LEN: usize = 12;
/// RR type OPT.
pub(crate) const TYPE_OPT: u16 = 41;
/// RR type TSIG (RFC 8945).
pub(crate) const TYPE_TSIG: u16 = 250;
/// EDNS option code NSID (RFC 5001).
pub(crate) const OPT_NSID: u16 = 3;
/// EDNS option code client subnet (RFC 7871).
pub(crate) const OPT_ECS: u16 = 8;
/// EDNS option code COOKIE (RFC 7873).
pub(crate) const OPT_COOKIE: u16 = 10;
/// EDNS header flag DO, DNSSEC answer OK (RFC 3225 §3): bit 0, the most significant.
pub(crate) const EDNS_DO: u16 = 0x8000;
/// EDNS header flag CO, Compact Answers OK (RFC 9824 §5.1: "the second most significant bit",
/// bit 1 of the IANA registry; BIND's dig +coflag and miekg/dns use the same 0x4000).
pub(crate) const EDNS_CO: u16 = 0x4000;
/// Opcode QUERY, the only one served.
const OPCODE_QUERY: u8 = 0;

/// Why a packet is not a query we answer normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reject {
    /// Not worth an answer: shorter than a header, or a response (QR=1) — answering responses
    /// invites reflection loops.
    Drop,
    /// An opcode other than QUERY: answer NOTIMP with the header alone (RFC 8906 §3.1.3),
    /// judged before anything else in the message.
    NotImp {
        /// Message ID.
        id: u16,
        /// Opcode bits, echoed.
        opcode: u8,
        /// The message carried an OPT record that could be read (RFC 6891 §7: then the
        /// response carries one too).
        opt: bool,
    },
    /// Malformed: answer FORMERR with this header information.
    FormErr {
        /// Message ID.
        id: u16,
        /// Opcode bits.
        opcode: u8,
        /// RD flag.
        rd: bool,
        /// Where the question ends, when the message had exactly one and it could be read
        /// (the fault lies after it): the response echoes it, so clients match it to the query.
        question_end: Option<usize>,
        /// The message carried an OPT record that could be read (RFC 6891 §7).
        opt: bool,
    },
}

/// A client-subnet option, validated (RFC 7871 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientSubnet {
    /// The address; no bit is set beyond `source`.
    pub(crate) addr: IpAddr,
    /// SOURCE PREFIX-LENGTH.
    pub(crate) source: u8,
}

/// A COOKIE option of a query (RFC 7873 §4): a client cookie, and the server cookie when the
/// client has learnt one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cookie {
    bytes: [u8; 40],
    len: u8,
}

impl Cookie {
    /// Returns the option if its length is one RFC 7873 §5.2.2 allows: 8 octets (client
    /// cookie only) or 16 to 40 (client and server cookie).
    pub(crate) fn new(data: &[u8]) -> Option<Cookie> {
        if !(data.len() == 8 || (16..=40).contains(&data.len())) {
            return None;
        }
        let mut bytes = [0u8; 40];
        bytes[..data.len()].copy_from_slice(data);
        Some(Cookie {
            bytes,
            len: data.len() as u8,
        })
    }

    /// Returns the client cookie.
    pub(crate) fn client(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c.copy_from_slice(&self.bytes[..8]);
        c
    }

    /// Returns the server cookie (8 to 32 octets), when the client sent one.
    pub(crate) fn server(&self) -> Option<&[u8]> {
        (self.len > 8).then(|| &self.bytes[8..self.len as usize])
    }
}

/// The EDNS(0) part of a query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Edns {
    /// Requestor's UDP payload size.
    pub(crate) udp_size: u16,
    /// EDNS version.
    pub(crate) version: u8,
    /// DNSSEC OK bit.
    pub(crate) dnssec_ok: bool,
    /// Compact Answers OK bit (RFC 9824 §5.1: EDNS header flag bit 1, [`EDNS_CO`]): the
    /// client takes an NXDOMAIN RCODE with a compact denial.
    pub(crate) compact_ok: bool,
    /// NSID was requested.
    pub(crate) nsid: bool,
    /// Client subnet, when present.
    pub(crate) ecs: Option<ClientSubnet>,
    /// DNS cookie, when present (the first one, if a client sent several).
    pub(crate) cookie: Option<Cookie>,
}

/// A TSIG record of a query (RFC 8945 §4.2): what an error response echoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tsig {
    /// Key name, uncompressed wire form, case kept.
    pub(crate) key: Vec<u8>,
    /// Algorithm name, uncompressed wire form, case kept.
    pub(crate) algorithm: Vec<u8>,
    /// Fudge, in seconds.
    pub(crate) fudge: u16,
    /// Original ID.
    pub(crate) original_id: u16,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Query<'a> {
    /// Message ID.
    pub(crate) id: u16,
    /// Opcode (always QUERY: other opcodes are [`Reject::NotImp`]).
    pub(crate) opcode: u8,
    /// RD flag.
    pub(crate) rd: bool,
    /// CD flag.
    pub(crate) cd: bool,
    /// The question section as received (name, type, class): echoed verbatim, keeping its case.
    pub(crate) question: &'a [u8],
    /// The question name in wire format, lowercased.
    pub(crate) qname_lower: Vec<u8>,
    /// QTYPE.
    pub(crate) qtype: u16,
    /// QCLASS.
    pub(crate) qclass: u16,
    /// EDNS(0), when the query had an OPT record.
    pub(crate) edns: Option<Edns>,
    /// TSIG, when the query was signed (the last record of the additional section).
    pub(crate) tsig: Option<Tsig>,
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(i)?,
        *b.get(i + 1)?,
        *b.get(i + 2)?,
        *b.get(i + 3)?,
    ]))
}

/// Reads an uncompressed name at `pos`, appending its lowercased wire form to `out`; returns the
/// position after it.
fn read_question_name(b: &[u8], mut pos: usize, out: &mut Vec<u8>) -> Option<usize> {
    loop {
        let len = *b.get(pos)? as usize;
        if len == 0 {
            out.push(0);
            return Some(pos + 1);
        }
        // A pointer (or the reserved 0x40/0x80 label types) cannot occur in the first question
        // of a query: there is nothing before it to point to.
        if len > 63 {
            return None;
        }
        let label = b.get(pos + 1..pos + 1 + len)?;
        if out.len() + 1 + len + 1 > 255 {
            return None;
        }
        out.push(len as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
        pos += 1 + len;
    }
}

/// Reads a possibly compressed name at `pos`, appending its uncompressed wire form (case kept)
/// to `out`; returns the position after it in the message. Pointers must point backwards, so
/// a loop of pointers cannot be followed.
fn read_name(b: &[u8], mut pos: usize, out: &mut Vec<u8>) -> Option<usize> {
    let mut after = None;
    loop {
        let len = *b.get(pos)?;
        match len {
            0 => {
                out.push(0);
                return Some(after.unwrap_or(pos + 1));
            }
            1..=63 => {
                let label = b.get(pos + 1..pos + 1 + len as usize)?;
                if out.len() + 1 + label.len() + 1 > 255 {
                    return None;
                }
                out.push(len);
                out.extend_from_slice(label);
                pos += 1 + len as usize;
            }
            0xC0..=0xFF => {
                let target = (usize::from(len & 0x3F) << 8) | usize::from(*b.get(pos + 1)?);
                if target >= pos {
                    return None;
                }
                after.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return None,
        }
    }
}

/// Skips a possibly compressed name at `pos`; returns the position after it.
fn skip_name(b: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *b.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            1..=63 => pos += 1 + len as usize,
            0xC0..=0xFF => {
                b.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
        if pos > b.len() {
            return None;
        }
    }
}

/// Parses a query. Never panics.
pub(crate) fn parse(b: &[u8]) -> Result<Query<'_>, Reject> {
    if b.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    let flags = u16::from_be_bytes([b[2], b[3]]);
    if flags & 0x8000 != 0 {
        return Err(Reject::Drop);
    }
    let opcode = ((flags >> 11) & 0xF) as u8;
    if opcode != OPCODE_QUERY {
        // RFC 8906 §3.1.3: NOTIMP for an opcode we do not implement, before any look at the
        // rest (ISC genreport's `opcode` test sends opcode 15 with no question at all).
        return Err(Reject::NotImp {
            id,
            opcode,
            opt: opt_rdata(b).is_some(),
        });
    }
    let rd = flags & 0x0100 != 0;
    let cd = flags & 0x0010 != 0;
    let mut question_end = None;
    parse_query(b, id, rd, cd, &mut question_end).ok_or_else(|| Reject::FormErr {
        id,
        opcode,
        rd,
        question_end,
        opt: opt_rdata(b).is_some(),
    })
}

/// Parses the sections of a standard query; `None` when it is malformed. Sets `question_end`
/// once the question has been read.
fn parse_query<'a>(
    b: &'a [u8],
    id: u16,
    rd: bool,
    cd: bool,
    question_end: &mut Option<usize>,
) -> Option<Query<'a>> {
    let qdcount = u16_at(b, 4)?;
    let ancount = u16_at(b, 6)?;
    let nscount = u16_at(b, 8)?;
    let arcount = u16_at(b, 10)?;
    if qdcount != 1 {
        return None;
    }
    let mut qname_lower = Vec::with_capacity(64);
    let pos = read_question_name(b, HEADER_LEN, &mut qname_lower)?;
    let qtype = u16_at(b, pos)?;
    let qclass = u16_at(b, pos + 2)?;
    let question = b.get(HEADER_LEN..pos + 4)?;
    let mut pos = pos + 4;
    *question_end = Some(pos);

    // Answer and authority sections are unusual in a query but legal: skip them. A TSIG there
    // is out of place (RFC 8945 §5.2).
    for _ in 0..(ancount as usize + nscount as usize) {
        pos = skip_name(b, pos)?;
        if u16_at(b, pos)? == TYPE_TSIG {
            return None;
        }
        let rdlen = u16_at(b, pos + 8)? as usize;
        pos += 10 + rdlen;
        if pos > b.len() {
            return None;
        }
    }
    let mut edns: Option<Edns> = None;
    let mut tsig = None;
    for i in 0..arcount {
        let name_start = pos;
        pos = skip_name(b, pos)?;
        let rtype = u16_at(b, pos)?;
        let class = u16_at(b, pos + 2)?;
        let ttl = u32_at(b, pos + 4)?;
        let rdlen = u16_at(b, pos + 8)? as usize;
        let rdata_start = pos + 10;
        let rdata = b.get(rdata_start..rdata_start + rdlen)?;
        pos = rdata_start + rdlen;
        match rtype {
            TYPE_OPT => {
                // RFC 6891 §6.1.1: one OPT, owned by the root; otherwise FORMERR.
                if edns.is_some() || b[name_start] != 0 {
                    return None;
                }
                edns = Some(parse_opt(class, ttl, rdata)?);
            }
            TYPE_TSIG => {
                // RFC 8945 §5.2: only as the last record; CLASS ANY and TTL 0 (§4.2), or it
                // cannot be interpreted.
                if i + 1 != arcount || class != 255 || ttl != 0 {
                    return None;
                }
                tsig = Some(parse_tsig(b, name_start, rdata_start, pos)?);
            }
            _ => {}
        }
    }
    if pos != b.len() {
        // Trailing bytes after the last record: not a well-formed message.
        return None;
    }
    Some(Query {
        id,
        opcode: OPCODE_QUERY,
        rd,
        cd,
        question,
        qname_lower,
        qtype,
        qclass,
        edns,
        tsig,
    })
}

/// Parses an OPT record's fields and options.
fn parse_opt(class: u16, ttl: u32, rdata: &[u8]) -> Option<Edns> {
    let mut e = Edns {
        udp_size: class,
        version: (ttl >> 16) as u8,
        dnssec_ok: ttl & u32::from(EDNS_DO) != 0,
        compact_ok: ttl & u32::from(EDNS_CO) != 0,
        ..Edns::default()
    };
    let mut i = 0;
    while i < rdata.len() {
        let code = u16_at(rdata, i)?;
        let len = u16_at(rdata, i + 2)? as usize;
        let data = rdata.get(i + 4..i + 4 + len)?;
        i += 4 + len;
        match code {
            OPT_NSID => e.nsid = true,
            OPT_ECS => {
                if e.ecs.is_some() {
                    return None;
                }
                e.ecs = Some(parse_ecs(data)?);
            }
            OPT_COOKIE => {
                // RFC 7873 §5.2.2: a length other than 8 or 16 to 40 is FORMERR.
                let cookie = Cookie::new(data)?;
                e.cookie.get_or_insert(cookie);
            }
            // RFC 6891 §6.1.2: unknown options are ignored.
            _ => {}
        }
    }
    Some(e)
}

/// Parses a TSIG record whose owner starts at `name_start` and whose RDATA spans
/// `start..end` of `b`.
fn parse_tsig(b: &[u8], name_start: usize, start: usize, end: usize) -> Option<Tsig> {
    let mut key = Vec::new();
    read_name(b, name_start, &mut key)?;
    let mut algorithm = Vec::new();
    let pos = read_name(b, start, &mut algorithm)?;
    // Time signed (48 bits), fudge, MAC size.
    let fudge = u16_at(b, pos + 6)?;
    let mac_len = u16_at(b, pos + 8)? as usize;
    let pos = pos + 10 + mac_len;
    let original_id = u16_at(b, pos)?;
    let other_len = u16_at(b, pos + 4)? as usize;
    if pos + 6 + other_len != end {
        return None;
    }
    Some(Tsig {
        key,
        algorithm,
        fudge,
        original_id,
    })
}

/// Parses and validates an ECS option (RFC 7871 §6): a known family, a source prefix no
/// longer than it, exactly the address octets the prefix needs, and no bit set beyond it.
fn parse_ecs(d: &[u8]) -> Option<ClientSubnet> {
    let family = u16_at(d, 0)?;
    let source = *d.get(2)?;
    let _scope = *d.get(3)?;
    let addr = d.get(4..)?;
    let max = match family {
        1 => 32,
        2 => 128,
        _ => return None,
    };
    if source > max || addr.len() != (source as usize).div_ceil(8) {
        return None;
    }
    let mut octets = [0u8; 16];
    octets[..addr.len()].copy_from_slice(addr);
    let v = u128::from_be_bytes(octets);
    let mask = if source == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(source))
    };
    // RFC 7871 §6: bits beyond the source prefix must be zero; a server SHOULD answer FORMERR
    // so that the sender's developer fixes it.
    if v & !mask != 0 {
        return None;
    }
    let addr = if family == 1 {
        IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    };
    Some(ClientSubnet { addr, source })
}

/// Returns the RDATA of the first OPT record of message `b`, walking every section without
/// judging anything else: used to tell whether a message we reject still carried an OPT that a
/// response must mirror (RFC 6891 §7), and by the rate limiter to find a cookie cheaply.
pub(crate) fn opt_rdata(b: &[u8]) -> Option<&[u8]> {
    let count = |i: usize| u16_at(b, i).map(usize::from);
    let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
    let mut pos = HEADER_LEN;
    for _ in 0..qd {
        pos = skip_name(b, pos)? + 4;
    }
    for i in 0..an + ns + ar {
        let start = pos;
        pos = skip_name(b, pos)?;
        let rtype = u16_at(b, pos)?;
        let rdlen = u16_at(b, pos + 8)? as usize;
        let rdata = b.get(pos + 10..pos + 10 + rdlen)?;
        pos += 10 + rdlen;
        if i >= an + ns && rtype == TYPE_OPT && b[start] == 0 {
            return Some(rdata);
        }
    }
    None
}

/// Returns the first COOKIE option of message `b`, if it has one of a valid length.
pub(crate) fn find_cookie(b: &[u8]) -> Option<Cookie> {
    let rdata = opt_rdata(b)?;
    let mut i = 0;
    while i < rdata.len() {
        let code = u16_at(rdata, i)?;
        let len = u16_at(rdata, i + 2)? as usize;
        let data = rdata.get(i + 4..i + 4 + len)?;
        if code == OPT_COOKIE {
            return Cookie::new(data);
        }
        i += 4 + len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], qtype: u16, additional: &[u8], arcount: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0];
        q.extend(arcount.to_be_bytes());
        q.extend(name);
        q.extend(qtype.to_be_bytes());
        q.extend(1u16.to_be_bytes());
        q.extend(additional);
        q
    }

    fn opt(options: &[u8]) -> Vec<u8> {
        let mut o = vec![0, 0, 41, 0x10, 0x00, 0, 0, 0, 0];
        o.extend((options.len() as u16).to_be_bytes());
        o.extend(options);
        o
    }

    const NAME: &[u8] = b"\x03API\x07example\x03net\x00";

    #[test]
    fn question_is_kept_verbatim_and_lowercased_for_lookup() {
        let q = query(NAME, 1, &[], 0);
        let p = parse(&q).unwrap();
        assert_eq!(p.question, &q[12..]);
        assert_eq!(p.qname_lower, b"\x03api\x07example\x03net\x00");
        assert_eq!((p.qtype, p.qclass, p.id), (1, 1, 0x1234));
        assert!(p.edns.is_none());
    }

    #[test]
    fn responses_and_runts_are_dropped() {
        assert_eq!(parse(&[0; 11]), Err(Reject::Drop));
        let mut q = query(NAME, 1, &[], 0);
        q[2] |= 0x80;
        assert_eq!(parse(&q), Err(Reject::Drop));
    }

    #[test]
    fn rfc7871_s6_ecs_is_masked_and_validated() {
        // 192.0.2.0/24 in the 3 octets the prefix needs.
        let ecs = [0, 8, 0, 7, 0, 1, 24, 0, 192, 0, 2];
        let q = query(NAME, 1, &opt(&ecs), 1);
        let e = parse(&q).unwrap().edns.unwrap();
        assert_eq!(e.ecs.unwrap().addr, "192.0.2.0".parse::<IpAddr>().unwrap());
        assert_eq!(e.udp_size, 4096);
        // RFC 7871 §6: bits set beyond the prefix inside the last octet are FORMERR
        let ecs = [0, 8, 0, 7, 0, 1, 20, 0, 192, 0, 0xFF];
        assert!(matches!(
            parse(&query(NAME, 1, &opt(&ecs), 1)),
            Err(Reject::FormErr { opt: true, .. })
        ));
        let ecs = [0, 8, 0, 7, 0, 1, 20, 0, 192, 0, 0xF0];
        let e = parse(&query(NAME, 1, &opt(&ecs), 1)).unwrap().edns.unwrap();
        assert_eq!(
            e.ecs.unwrap().addr,
            "192.0.240.0".parse::<IpAddr>().unwrap()
        );
        // and for IPv6: 2001:db8::1/32 has a bit set in the fourth octet... of 4 sent
        let ecs = [0, 8, 0, 8, 0, 2, 31, 0, 0x20, 0x01, 0x0d, 0xb9];
        assert!(matches!(
            parse(&query(NAME, 1, &opt(&ecs), 1)),
            Err(Reject::FormErr { .. })
        ));
        // too many address octets for the prefix
        let ecs = [0, 8, 0, 8, 0, 1, 24, 0, 192, 0, 2, 1];
        assert!(matches!(
            parse(&query(NAME, 1, &opt(&ecs), 1)),
            Err(Reject::FormErr { .. })
        ));
        // unknown family
        let ecs = [0, 8, 0, 4, 0, 3, 0, 0];
        assert!(matches!(
            parse(&query(NAME, 1, &opt(&ecs), 1)),
            Err(Reject::FormErr { .. })
        ));
        // prefix longer than the family
        let ecs = [0, 8, 0, 9, 0, 1, 33, 0, 1, 2, 3, 4, 5];
        assert!(matches!(
            parse(&query(NAME, 1, &opt(&ecs), 1)),
            Err(Reject::FormErr { .. })
        ));
    }

    #[test]
    fn rfc6891_two_opt_records_are_formerr() {
        let mut add = opt(&[]);
        add.extend(opt(&[]));
        assert!(matches!(
            parse(&query(NAME, 1, &add, 2)),
            Err(Reject::FormErr { .. })
        ));
    }

    #[test]
    fn unknown_options_are_ignored_and_nsid_is_seen() {
        let opts = [0, 99, 0, 2, 1, 2, 0, 3, 0, 0];
        let e = parse(&query(NAME, 1, &opt(&opts), 1))
            .unwrap()
            .edns
            .unwrap();
        assert!(e.nsid);
        assert!(e.ecs.is_none());
    }

    #[test]
    fn truncated_and_trailing_garbage_are_formerr() {
        let q = query(NAME, 1, &[], 0);
        assert!(matches!(
            parse(&q[..q.len() - 1]),
            Err(Reject::FormErr { .. })
        ));
        let mut q2 = q.clone();
        q2.push(0);
        assert!(matches!(parse(&q2), Err(Reject::FormErr { .. })));
        let mut q3 = q;
        q3[5] = 2;
        assert!(matches!(parse(&q3), Err(Reject::FormErr { .. })));
    }

    fn header(flags: [u8; 2], counts: [u16; 4]) -> Vec<u8> {
        let mut h = vec![0xAB, 0xCD, flags[0], flags[1]];
        for c in counts {
            h.extend(c.to_be_bytes());
        }
        h
    }

    #[test]
    fn rfc8906_unknown_opcode_is_notimp_before_the_question_count() {
        // ISC genreport `opcode`: opcode 15, header only, no question.
        assert_eq!(
            parse(&header([0x78, 0x00], [0, 0, 0, 0])),
            Err(Reject::NotImp {
                id: 0xABCD,
                opcode: 15,
                opt: false
            })
        );
        // two questions, or garbage after the header, do not change that
        let mut q = header([0x28, 0x00], [2, 0, 0, 0]);
        q.extend([0xFF; 7]);
        assert!(matches!(
            parse(&q),
            Err(Reject::NotImp {
                opcode: 5,
                opt: false,
                ..
            })
        ));
        // a NOTIFY with an OPT: the OPT is seen, so the response mirrors it
        let mut q = query(NAME, 6, &opt(&[]), 1);
        q[2] = 0x20;
        assert!(matches!(
            parse(&q),
            Err(Reject::NotImp {
                opcode: 4,
                opt: true,
                ..
            })
        ));
    }

    #[test]
    fn rfc6891_s7_formerr_knows_whether_the_query_had_an_opt() {
        // two questions: FORMERR, but the OPT after them is still found
        let mut q = header([0x01, 0x00], [2, 0, 0, 1]);
        for _ in 0..2 {
            q.extend(NAME);
            q.extend([0, 1, 0, 1]);
        }
        q.extend(opt(&[]));
        assert!(matches!(parse(&q), Err(Reject::FormErr { opt: true, .. })));
        let mut q = query(NAME, 1, &[], 0);
        q[5] = 2;
        assert!(matches!(
            parse(&q),
            Err(Reject::FormErr {
                opt: false,
                question_end: None,
                ..
            })
        ));
        // a fault after the question: the question is there to echo
        let q = query(NAME, 1, &opt(&[0, 10, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9]), 1);
        assert_eq!(
            parse(&q),
            Err(Reject::FormErr {
                id: 0x1234,
                opcode: 0,
                rd: true,
                question_end: Some(12 + NAME.len() + 4),
                opt: true
            })
        );
    }

    #[test]
    fn rfc7873_s5_2_2_cookie_lengths() {
        for len in [0usize, 1, 7, 9, 15, 41, 48] {
            let mut o = vec![0, 10];
            o.extend((len as u16).to_be_bytes());
            o.extend(vec![7u8; len]);
            assert!(
                matches!(
                    parse(&query(NAME, 1, &opt(&o), 1)),
                    Err(Reject::FormErr { opt: true, .. })
                ),
                "{len}"
            );
        }
        for len in [8usize, 16, 24, 40] {
            let mut o = vec![0, 10];
            o.extend((len as u16).to_be_bytes());
            o.extend((0..len as u8).collect::<Vec<_>>());
            let c = parse(&query(NAME, 1, &opt(&o), 1))
                .unwrap()
                .edns
                .unwrap()
                .cookie
                .unwrap();
            assert_eq!(c.client(), [0, 1, 2, 3, 4, 5, 6, 7]);
            assert_eq!(c.server().map_or(0, <[u8]>::len), len - 8);
            assert_eq!(find_cookie(&query(NAME, 1, &opt(&o), 1)), Some(c));
        }
    }

    /// A TSIG record: key `name`, hmac-sha256, a 32-byte MAC, original ID 0xABCD.
    fn tsig(class: u16) -> Vec<u8> {
        let mut rdata = b"\x0bhmac-sha256\x00".to_vec();
        rdata.extend([0, 0, 0x65, 0, 0, 0]); // time signed
        rdata.extend(300u16.to_be_bytes()); // fudge
        rdata.extend(32u16.to_be_bytes());
        rdata.extend([0x5A; 32]);
        rdata.extend([0xAB, 0xCD, 0, 0, 0, 0]); // original ID, error, other len
        let mut r = b"\x03key\x07example\x00".to_vec();
        r.extend(TYPE_TSIG.to_be_bytes());
        r.extend(class.to_be_bytes());
        r.extend([0, 0, 0, 0]);
        r.extend((rdata.len() as u16).to_be_bytes());
        r.extend(rdata);
        r
    }

    #[test]
    fn rfc8945_s5_2_tsig_is_read_only_as_the_last_record() {
        let mut add = opt(&[]);
        add.extend(tsig(255));
        let t = parse(&query(NAME, 1, &add, 2)).unwrap().tsig.unwrap();
        assert_eq!(t.key, b"\x03key\x07example\x00");
        assert_eq!(t.algorithm, b"\x0bhmac-sha256\x00");
        assert_eq!((t.fudge, t.original_id), (300, 0xABCD));
        // before the OPT: not last
        let mut add = tsig(255);
        add.extend(opt(&[]));
        assert!(matches!(
            parse(&query(NAME, 1, &add, 2)),
            Err(Reject::FormErr { opt: true, .. })
        ));
        // two of them
        let mut add = tsig(255);
        add.extend(tsig(255));
        assert!(matches!(
            parse(&query(NAME, 1, &add, 2)),
            Err(Reject::FormErr { opt: false, .. })
        ));
        // class IN: cannot be interpreted
        assert!(matches!(
            parse(&query(NAME, 1, &tsig(1), 1)),
            Err(Reject::FormErr { .. })
        ));
        // other data longer than the RDATA holds
        let mut t = tsig(255);
        let n = t.len();
        t[n - 1] = 1;
        assert!(matches!(
            parse(&query(NAME, 1, &t, 1)),
            Err(Reject::FormErr { .. })
        ));
    }

    #[test]
    fn compressed_names_are_followed_backwards_only() {
        let b = b"\x01a\x00\xC0\x00\xC0\x05";
        let mut out = Vec::new();
        assert_eq!(read_name(b, 3, &mut out), Some(5));
        assert_eq!(out, b"\x01a\x00");
        out.clear();
        assert_eq!(read_name(b, 5, &mut out), None, "points at itself");
    }
}
