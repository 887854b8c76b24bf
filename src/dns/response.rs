//! Response writing: header and question by hand, records through hickory-proto's encoder.
//!
//! The question is copied verbatim from the query (so its case survives, as resolvers using
//! 0x20 randomisation expect), and answer records owned by the query name point at it
//! (0xC00C), as BIND and NSD do. The OPT record is written last, by hand, so that it is never
//! lost from a truncated response (RFC 6891 §7, hickory issue #3633), not even from one that
//! the rate limiter shortens ([`truncate`]). A query signed with TSIG gets its record back
//! with the error ([`append_tsig_error`]).

use std::net::IpAddr;

use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::cookie::{self, Secret};
use super::wire::{HEADER_LEN, OPT_COOKIE, OPT_ECS, OPT_NSID, Query, TYPE_OPT, TYPE_TSIG, Tsig};

/// The largest UDP payload we advertise and send (DNS flag day 2020).
pub(crate) const MAX_UDP_PAYLOAD: u16 = 1232;

/// Header fields of a response.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Head {
    /// Message ID.
    pub(crate) id: u16,
    /// Opcode.
    pub(crate) opcode: u8,
    /// RD copied from the query.
    pub(crate) rd: bool,
    /// CD copied from the query.
    pub(crate) cd: bool,
    /// Authoritative answer.
    pub(crate) aa: bool,
    /// Truncated.
    pub(crate) tc: bool,
    /// Full response code (values above 15 go in the OPT).
    pub(crate) rcode: u16,
}

impl Head {
    /// Returns the header of a response to `q` with RCODE NOERROR: ID, opcode, RD and CD
    /// copied, AA and TC clear.
    pub(crate) fn answering(q: &Query<'_>) -> Head {
        Head {
            id: q.id,
            opcode: q.opcode,
            rd: q.rd,
            cd: q.cd,
            ..Head::default()
        }
    }
}

/// The OPT of a response.
#[derive(Debug, Clone, Default)]
pub(crate) struct Opt<'a> {
    /// NSID payload to include.
    pub(crate) nsid: Option<&'a [u8]>,
    /// ECS to echo: (family, source prefix, scope prefix, address octets).
    pub(crate) ecs: Option<(u16, u8, u8, [u8; 16])>,
    /// COOKIE to return: the client's cookie and our server cookie (RFC 7873 §5.2.3).
    pub(crate) cookie: Option<[u8; cookie::REPLY_LEN]>,
    /// EDNS header flags: DO copied from the query (RFC 3225 §3); CO set by the answer path
    /// for a query with DO and CO when a zone is signed (RFC 9824 §5.1).
    pub(crate) flags: u16,
}

impl<'a> Opt<'a> {
    /// Returns the OPT of a response to `q` from `client`, or `None` when the query had none:
    /// NSID when asked for and configured, and a fresh server cookie when the query carried a
    /// cookie (valid or not, RFC 7873 §5.2.3-4). ECS is added by the answer, which knows its
    /// scope.
    pub(crate) fn for_query(
        q: &Query<'_>,
        nsid: Option<&'a [u8]>,
        client: IpAddr,
        secrets: &[Secret],
    ) -> Option<Opt<'a>> {
        let e = q.edns.as_ref()?;
        Some(Opt {
            nsid: if e.nsid { nsid } else { None },
            ecs: None,
            flags: if e.dnssec_ok { super::wire::EDNS_DO } else { 0 },
            cookie: e
                .cookie
                .map(|c| cookie::reply(&c, client, secrets, cookie::now())),
        })
    }
}

/// One record of the answer section.
// Boxing the large variant would cost an allocation per static record; an answer holds a
// handful of these, so the size difference is of no consequence.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// A record, and whether its owner is the query name (then written as a pointer to it).
    Record(Record, bool),
    /// A service's address, owned by the query name: written straight to the wire, without
    /// building a hickory `Record` (the hot path of dynamic answers).
    Address {
        /// TTL in seconds.
        ttl: u32,
        /// The address (A for IPv4, AAAA for IPv6).
        addr: IpAddr,
    },
}

/// The three record sections of a response (the OPT is separate).
#[derive(Debug, Clone, Default)]
pub(crate) struct Sections {
    /// Answer section.
    pub(crate) answer: Vec<Answer>,
    /// Authority section.
    pub(crate) authority: Vec<Record>,
    /// Additional section.
    pub(crate) additional: Vec<Record>,
}

/// Writes a full response into `out`. Returns false if a record could not be encoded.
pub(crate) fn write(
    out: &mut Vec<u8>,
    head: Head,
    question: Option<&[u8]>,
    sections: &Sections,
    opt: Option<&Opt<'_>>,
) -> bool {
    try_write(out, head, question, sections, opt).is_ok()
}

/// Why a response was not written in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unwritten {
    /// The records do not fit in a DNS message (65,535 bytes, hickory's encoder limit).
    TooLong,
    /// A record could not be encoded.
    BadRecord,
}

/// Writes a full response into `out`, saying why when it could not.
pub(crate) fn try_write(
    out: &mut Vec<u8>,
    head: Head,
    question: Option<&[u8]>,
    sections: &Sections,
    opt: Option<&Opt<'_>>,
) -> Result<(), Unwritten> {
    out.clear();
    let mut flags: u16 = 0x8000 | (u16::from(head.opcode & 0xF) << 11) | (head.rcode & 0xF);
    if head.aa {
        flags |= 0x0400;
    }
    if head.tc {
        flags |= 0x0200;
    }
    if head.rd {
        flags |= 0x0100;
    }
    if head.cd {
        flags |= 0x0010;
    }
    out.extend(head.id.to_be_bytes());
    out.extend(flags.to_be_bytes());
    out.extend(u16::from(question.is_some()).to_be_bytes());
    out.extend((sections.answer.len() as u16).to_be_bytes());
    out.extend((sections.authority.len() as u16).to_be_bytes());
    out.extend(((sections.additional.len() + usize::from(opt.is_some())) as u16).to_be_bytes());
    if let Some(q) = question {
        out.extend_from_slice(q);
    }
    let written = {
        // The encoder writes at its offset, which is also the base of compression pointers:
        // start it at the end of what is already written.
        let start = out.len() as u32;
        let mut enc = BinEncoder::with_offset(out, start);
        let pointer_ok = question.is_some();
        let mut outcome = Ok(());
        let mut emitted = |r: Result<(), hickory_proto::ProtoError>| match r {
            Ok(()) => true,
            Err(e) => {
                outcome = Err(match e {
                    hickory_proto::ProtoError::MaxBufferSizeExceeded(_) => Unwritten::TooLong,
                    _ => Unwritten::BadRecord,
                });
                false
            }
        };
        let _ = sections.answer.iter().all(|a| match a {
            Answer::Record(rr, at_qname) => {
                emitted(emit_record(&mut enc, rr, *at_qname && pointer_ok))
            }
            Answer::Address { ttl, addr } => {
                emitted(emit_address(&mut enc, *ttl, *addr, pointer_ok))
            }
        }) && sections
            .authority
            .iter()
            .chain(&sections.additional)
            .all(|rr| emitted(emit_record(&mut enc, rr, false)));
        outcome
    };
    if let Some(opt) = opt {
        write_opt(out, head.rcode, opt);
    }
    written
}

/// Writes an A or AAAA record owned by the query name.
fn emit_address(
    enc: &mut BinEncoder<'_>,
    ttl: u32,
    addr: IpAddr,
    pointer_ok: bool,
) -> Result<(), hickory_proto::ProtoError> {
    if !pointer_ok {
        return Err(hickory_proto::ProtoError::from(
            "an address answer needs the question",
        ));
    }
    enc.emit_u16(0xC000 | HEADER_LEN as u16)?;
    match addr {
        IpAddr::V4(a) => {
            enc.emit_u16(u16::from(RecordType::A))?;
            enc.emit_u16(u16::from(DNSClass::IN))?;
            enc.emit_u32(ttl)?;
            enc.emit_u16(4)?;
            enc.emit_vec(&a.octets())
        }
        IpAddr::V6(a) => {
            enc.emit_u16(u16::from(RecordType::AAAA))?;
            enc.emit_u16(u16::from(DNSClass::IN))?;
            enc.emit_u32(ttl)?;
            enc.emit_u16(16)?;
            enc.emit_vec(&a.octets())
        }
    }
}

fn emit_record(
    enc: &mut BinEncoder<'_>,
    rr: &Record,
    at_qname: bool,
) -> Result<(), hickory_proto::ProtoError> {
    if at_qname {
        enc.emit_u16(0xC000 | HEADER_LEN as u16)?;
    } else {
        rr.name.emit(enc)?;
    }
    rr.record_type().emit(enc)?;
    rr.dns_class.emit(enc)?;
    enc.emit_u32(rr.ttl)?;
    let place = enc.place::<u16>()?;
    rr.data.emit(enc)?;
    let len = enc.len_since_place(&place);
    place.replace(enc, len as u16)
}

/// Appends the OPT record of a response with RCODE `rcode` (the caller counts it in ARCOUNT).
pub(super) fn write_opt(out: &mut Vec<u8>, rcode: u16, opt: &Opt<'_>) {
    out.push(0); // root
    out.extend(TYPE_OPT.to_be_bytes());
    out.extend(MAX_UDP_PAYLOAD.to_be_bytes());
    out.push((rcode >> 4) as u8); // extended RCODE
    out.push(0); // version
    out.extend(opt.flags.to_be_bytes());
    let len_at = out.len();
    out.extend(0u16.to_be_bytes());
    if let Some(n) = opt.nsid {
        out.extend(OPT_NSID.to_be_bytes());
        out.extend((n.len() as u16).to_be_bytes());
        out.extend_from_slice(n);
    }
    if let Some(c) = &opt.cookie {
        out.extend(OPT_COOKIE.to_be_bytes());
        out.extend((c.len() as u16).to_be_bytes());
        out.extend_from_slice(c);
    }
    if let Some((family, source, scope, addr)) = opt.ecs {
        let n = (source as usize).div_ceil(8);
        out.extend(OPT_ECS.to_be_bytes());
        out.extend(((4 + n) as u16).to_be_bytes());
        out.extend(family.to_be_bytes());
        out.push(source);
        out.push(scope);
        out.extend_from_slice(&addr[..n]);
    }
    let rdlen = (out.len() - len_at - 2) as u16;
    out[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
}

/// Returns the UDP size limit for a response to `q` (RFC 6891 §6.2.5, capped at 1232).
pub(crate) fn udp_limit(q: &Query<'_>) -> usize {
    match &q.edns {
        Some(e) => e.udp_size.clamp(512, MAX_UDP_PAYLOAD) as usize,
        None => 512,
    }
}

/// Appends to the response in `out` the unsigned TSIG record of an error (RFC 8945 §5.3.2):
/// the query's key and algorithm names, the time now, an empty MAC, the original ID and
/// `error`. The caller has written the rest; ARCOUNT is counted up here.
pub(crate) fn append_tsig_error(out: &mut Vec<u8>, tsig: &Tsig, error: u16, now: u64) {
    if out.len() < HEADER_LEN {
        return;
    }
    out.extend_from_slice(&tsig.key);
    out.extend(TYPE_TSIG.to_be_bytes());
    out.extend(255u16.to_be_bytes()); // class ANY
    out.extend(0u32.to_be_bytes()); // TTL 0
    let len_at = out.len();
    out.extend(0u16.to_be_bytes());
    out.extend_from_slice(&tsig.algorithm);
    out.extend(&now.to_be_bytes()[2..]); // time signed, 48 bits
    out.extend(tsig.fudge.to_be_bytes());
    out.extend(0u16.to_be_bytes()); // MAC size: unsigned
    out.extend(tsig.original_id.to_be_bytes());
    out.extend(error.to_be_bytes());
    out.extend(0u16.to_be_bytes()); // other len
    let rdlen = (out.len() - len_at - 2) as u16;
    out[len_at..len_at + 2].copy_from_slice(&rdlen.to_be_bytes());
    let arcount = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
    out[10..12].copy_from_slice(&arcount.to_be_bytes());
}

/// Rewrites the response in `out` as a truncated one: TC set, the question kept, no records but
/// the OPT (RFC 6891 §7: a response to a query with an OPT carries one, truncated or not).
/// Returns false if `out` is not a response it can walk.
pub(crate) fn truncate(out: &mut Vec<u8>) -> bool {
    let Some((question_end, opt)) = walk(out) else {
        return false;
    };
    let opt = opt.map(|(start, end)| out[start..end].to_vec());
    out.truncate(question_end);
    out[2] |= 0x02; // TC
    out[6..12].fill(0);
    if let Some(opt) = opt {
        out.extend_from_slice(&opt);
        out[10..12].copy_from_slice(&1u16.to_be_bytes());
    }
    true
}

/// Walks a response with one question: returns where the question ends and where the OPT
/// record lies, if there is one. `None` if it cannot be walked.
fn walk(msg: &[u8]) -> Option<(usize, Option<(usize, usize)>)> {
    let count = |i: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *msg.get(i)?,
            *msg.get(i + 1)?,
        ])))
    };
    if count(4)? != 1 {
        return None;
    }
    let skip_name = |mut pos: usize| -> Option<usize> {
        loop {
            match *msg.get(pos)? {
                0 => return Some(pos + 1),
                len @ 1..=63 => pos += 1 + usize::from(len),
                0xC0..=0xFF => return Some(pos + 2),
                _ => return None,
            }
        }
    };
    let question_end = skip_name(HEADER_LEN)? + 4;
    if question_end > msg.len() {
        return None;
    }
    // If the records cannot be walked, keep what is certain: the question.
    let find_opt = || -> Option<(usize, usize)> {
        let mut pos = question_end;
        let mut opt = None;
        for _ in 0..count(6)? + count(8)? + count(10)? {
            let start = pos;
            pos = skip_name(pos)?;
            let rtype = count(pos)?;
            pos += 10 + count(pos + 8)?;
            if pos > msg.len() {
                return None;
            }
            if rtype == usize::from(TYPE_OPT) {
                opt = Some((start, pos));
            }
        }
        opt
    };
    let opt = find_opt();
    Some((question_end, opt))
}
