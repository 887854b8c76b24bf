//! Request parsing: the fields an authoritative answer needs, read straight from the wire.
//!
//! hickory-proto's decoder builds a whole `Message` (allocations for every name and option) and
//! hides details we must judge ourselves: the exact length of an ECS address (RFC 7871 §6:
//! too many or too few octets is FORMERR) and a duplicate OPT (RFC 6891 §6.1.1). So queries
//! are parsed here, bounds-checked at every step, without panics; records are still written with
//! hickory-proto (`super::response`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// DNS header length.
pub const HEADER_LEN: usize = 12;
/// RR type OPT.
pub const TYPE_OPT: u16 = 41;
/// EDNS option code NSID (RFC 5001).
pub const OPT_NSID: u16 = 3;
/// EDNS option code client subnet (RFC 7871).
pub const OPT_ECS: u16 = 8;

/// Why a packet is not a query we answer normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// Not worth an answer: shorter than a header, or a response (QR=1) — answering responses
    /// invites reflection loops.
    Drop,
    /// Malformed: answer FORMERR with this header information (and no question).
    FormErr {
        /// Message ID.
        id: u16,
        /// Opcode bits.
        opcode: u8,
        /// RD flag.
        rd: bool,
    },
}

/// A client-subnet option, validated and masked to its source prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSubnet {
    /// The address, with bits beyond `source` cleared.
    pub addr: IpAddr,
    /// SOURCE PREFIX-LENGTH.
    pub source: u8,
}

/// The EDNS(0) part of a query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Edns {
    /// Requestor's UDP payload size.
    pub udp_size: u16,
    /// EDNS version.
    pub version: u8,
    /// DNSSEC OK bit.
    pub dnssec_ok: bool,
    /// NSID was requested.
    pub nsid: bool,
    /// Client subnet, when present.
    pub ecs: Option<ClientSubnet>,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    /// Message ID.
    pub id: u16,
    /// Opcode.
    pub opcode: u8,
    /// RD flag.
    pub rd: bool,
    /// CD flag.
    pub cd: bool,
    /// The question section as received (name, type, class): echoed verbatim, keeping its case.
    pub question: &'a [u8],
    /// The question name in wire format, lowercased.
    pub qname_lower: Vec<u8>,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// EDNS(0), when the query had an OPT record.
    pub edns: Option<Edns>,
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
pub fn parse(b: &[u8]) -> Result<Query<'_>, Reject> {
    if b.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    let flags = u16::from_be_bytes([b[2], b[3]]);
    if flags & 0x8000 != 0 {
        return Err(Reject::Drop);
    }
    let opcode = ((flags >> 11) & 0xF) as u8;
    let rd = flags & 0x0100 != 0;
    let cd = flags & 0x0010 != 0;
    let formerr = Reject::FormErr { id, opcode, rd };
    let qdcount = u16::from_be_bytes([b[4], b[5]]);
    let ancount = u16::from_be_bytes([b[6], b[7]]);
    let nscount = u16::from_be_bytes([b[8], b[9]]);
    let arcount = u16::from_be_bytes([b[10], b[11]]);
    if qdcount != 1 {
        return Err(formerr);
    }
    let mut qname_lower = Vec::with_capacity(64);
    let pos = read_question_name(b, HEADER_LEN, &mut qname_lower).ok_or(formerr.clone())?;
    let qtype = u16_at(b, pos).ok_or(formerr.clone())?;
    let qclass = u16_at(b, pos + 2).ok_or(formerr.clone())?;
    let question = &b[HEADER_LEN..pos + 4];
    let mut pos = pos + 4;

    // Answer and authority sections are unusual in a query but legal: skip them.
    for _ in 0..(ancount as usize + nscount as usize) {
        pos = skip_name(b, pos).ok_or(formerr.clone())?;
        let rdlen = u16_at(b, pos + 8).ok_or(formerr.clone())? as usize;
        pos += 10 + rdlen;
        if pos > b.len() {
            return Err(formerr);
        }
    }
    let mut edns: Option<Edns> = None;
    for _ in 0..arcount {
        let name_start = pos;
        pos = skip_name(b, pos).ok_or(formerr.clone())?;
        let rtype = u16_at(b, pos).ok_or(formerr.clone())?;
        let class = u16_at(b, pos + 2).ok_or(formerr.clone())?;
        let ttl = u32_at(b, pos + 4).ok_or(formerr.clone())?;
        let rdlen = u16_at(b, pos + 8).ok_or(formerr.clone())? as usize;
        let rdata = b.get(pos + 10..pos + 10 + rdlen).ok_or(formerr.clone())?;
        pos += 10 + rdlen;
        if rtype != TYPE_OPT {
            continue;
        }
        // RFC 6891 §6.1.1: one OPT, owned by the root; otherwise FORMERR.
        if edns.is_some() || b[name_start] != 0 {
            return Err(formerr);
        }
        let mut e = Edns {
            udp_size: class,
            version: (ttl >> 16) as u8,
            dnssec_ok: ttl & 0x8000 != 0,
            ..Edns::default()
        };
        let mut i = 0;
        while i < rdata.len() {
            let code = u16_at(rdata, i).ok_or(formerr.clone())?;
            let len = u16_at(rdata, i + 2).ok_or(formerr.clone())? as usize;
            let data = rdata.get(i + 4..i + 4 + len).ok_or(formerr.clone())?;
            i += 4 + len;
            match code {
                OPT_NSID => e.nsid = true,
                OPT_ECS => {
                    if e.ecs.is_some() {
                        return Err(formerr);
                    }
                    e.ecs = Some(parse_ecs(data).ok_or(formerr.clone())?);
                }
                // RFC 6891 §6.1.2: unknown options are ignored.
                _ => {}
            }
        }
        edns = Some(e);
    }
    if pos != b.len() {
        // Trailing bytes after the last record: not a well-formed message.
        return Err(formerr);
    }
    Ok(Query {
        id,
        opcode,
        rd,
        cd,
        question,
        qname_lower,
        qtype,
        qclass,
        edns,
    })
}

/// Parses and validates an ECS option (RFC 7871 §6); masks bits beyond the source prefix.
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
    let addr = if family == 1 {
        let v = u32::from_be_bytes([octets[0], octets[1], octets[2], octets[3]]);
        let mask = if source == 0 {
            0
        } else {
            u32::MAX << (32 - source)
        };
        IpAddr::V4(Ipv4Addr::from(v & mask))
    } else {
        let v = u128::from_be_bytes(octets);
        let mask = if source == 0 {
            0
        } else {
            u128::MAX << (128 - source)
        };
        IpAddr::V6(Ipv6Addr::from(v & mask))
    };
    Some(ClientSubnet { addr, source })
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
        // 192.0.2.77/24 with a stray host byte count of 3: masked to 192.0.2.0.
        let ecs = [0, 8, 0, 7, 0, 1, 24, 0, 192, 0, 2];
        let q = query(NAME, 1, &opt(&ecs), 1);
        let e = parse(&q).unwrap().edns.unwrap();
        assert_eq!(e.ecs.unwrap().addr, "192.0.2.0".parse::<IpAddr>().unwrap());
        assert_eq!(e.udp_size, 4096);
        // bits beyond the prefix inside the last octet are cleared
        let ecs = [0, 8, 0, 7, 0, 1, 20, 0, 192, 0, 0xFF];
        let e = parse(&query(NAME, 1, &opt(&ecs), 1)).unwrap().edns.unwrap();
        assert_eq!(
            e.ecs.unwrap().addr,
            "192.0.240.0".parse::<IpAddr>().unwrap()
        );
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
}
