//! Response writing: header and question by hand, records through hickory-proto's encoder.
//!
//! The question is copied verbatim from the query (so its case survives, as resolvers using
//! 0x20 randomisation expect), and answer records owned by the query name point at it
//! (0xC00C), as BIND and NSD do. The OPT record is written last, by hand, so that it is never
//! lost from a truncated response (RFC 6891 §7, hickory issue #3633).

use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::wire::{HEADER_LEN, OPT_ECS, OPT_NSID, Query, TYPE_OPT};

/// The largest UDP payload we advertise and send (DNS flag day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// Header fields of a response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Head {
    /// Message ID.
    pub id: u16,
    /// Opcode.
    pub opcode: u8,
    /// RD copied from the query.
    pub rd: bool,
    /// CD copied from the query.
    pub cd: bool,
    /// Authoritative answer.
    pub aa: bool,
    /// Truncated.
    pub tc: bool,
    /// Full response code (values above 15 go in the OPT).
    pub rcode: u16,
}

/// The OPT of a response.
#[derive(Debug, Clone, Default)]
pub struct Opt<'a> {
    /// NSID payload to include.
    pub nsid: Option<&'a [u8]>,
    /// ECS to echo: (family, source prefix, scope prefix, address octets).
    pub ecs: Option<(u16, u8, u8, [u8; 16])>,
}

/// A record to write, and whether its owner is the query name (written as a pointer).
pub type Rr<'a> = (&'a Record, bool);

/// Writes a full response into `out`. Returns false if a record could not be encoded.
pub fn write(
    out: &mut Vec<u8>,
    head: Head,
    question: Option<&[u8]>,
    sections: [&[Rr<'_>]; 3],
    opt: Option<&Opt<'_>>,
) -> bool {
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
    for s in &sections[..2] {
        out.extend((s.len() as u16).to_be_bytes());
    }
    out.extend(((sections[2].len() + usize::from(opt.is_some())) as u16).to_be_bytes());
    if let Some(q) = question {
        out.extend_from_slice(q);
    }
    let ok = {
        // The encoder writes at its offset, which is also the base of compression pointers:
        // start it at the end of what is already written.
        let start = out.len() as u32;
        let mut enc = BinEncoder::with_offset(out, start);
        sections
            .iter()
            .flat_map(|s| s.iter())
            .all(|(rr, at_qname)| {
                emit_record(&mut enc, rr, *at_qname && question.is_some()).is_ok()
            })
    };
    if let Some(opt) = opt {
        write_opt(out, head.rcode, opt);
    }
    ok
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
    out.extend(0u16.to_be_bytes()); // flags: DO clear, we do not sign (RFC 3225 §3)
    let len_at = out.len();
    out.extend(0u16.to_be_bytes());
    if let Some(n) = opt.nsid {
        out.extend(OPT_NSID.to_be_bytes());
        out.extend((n.len() as u16).to_be_bytes());
        out.extend_from_slice(n);
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
pub fn udp_limit(q: &Query<'_>) -> usize {
    match &q.edns {
        Some(e) => e.udp_size.clamp(512, MAX_UDP_PAYLOAD) as usize,
        None => 512,
    }
}
