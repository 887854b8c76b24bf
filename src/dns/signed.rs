//! The answer path's side of DNSSEC: turns the sections of an answer to a DO=1 query into a
//! signed answer, and answers DNSKEY, CDS and CDNSKEY at a signed apex.
//!
//! [`sign`] groups the answer and authority sections into RRsets, asks the zone's
//! [`ZoneSigner`] for their RRSIGs (from the canonical form of exactly the records written),
//! and adds the denial the answer needs: compact denial (RFC 9824) for a name that does not
//! exist (NOERROR, or NXDOMAIN when the client set CO), an NSEC listing the types that exist
//! for NODATA, an NSEC at a delegation without DS (RFC 4035 §3.1.4), and for a wildcard
//! answer an NSEC showing that the name asked for does not exist (RFC 4035 §3.1.3.3).
//! Referral NS records and the additional section are not signed (RFC 4035 §2.2: NS at a cut
//! and glue are not authoritative). Answers to queries without DO never come here.

use hickory_proto::rr::rdata::NULL;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::rcode;
use super::response::{Answer, Head, Sections};
use super::wire::Query;
use crate::dnssec::{self, ZoneSigner, cache::SignError, rtype};
use crate::snapshot::Snapshot;
use crate::zone::Zone;

/// What an answer denies, for the NSEC it needs.
#[derive(Debug, Clone)]
pub(super) enum Denial {
    /// Nothing (data, or a chain leaving our zones).
    None,
    /// `name` exists but has no RRset of the type asked for.
    NoData(LowerName),
    /// `name` does not exist.
    NxDomain(LowerName),
    /// A referral to the delegation at `cut`.
    Referral(LowerName),
}

/// One RRset gathered from a section.
struct Group {
    /// Owner, lowercase wire form.
    owner: Vec<u8>,
    /// The owner as written (`None`: the query name, written as a pointer).
    name: Option<Name>,
    rtype: u16,
    ttl: u32,
    rdatas: Vec<Vec<u8>>,
}

/// Signs the answer `s` to `q` in place (see the module docs); `head.rcode` becomes NOERROR
/// for a compact denial unless the client set CO. Errors (a spent signing budget, a record
/// that cannot be encoded) leave `s` half-signed: the caller answers SERVFAIL.
pub(super) fn sign(
    snap: &Snapshot,
    q: &Query<'_>,
    head: &mut Head,
    s: &mut Sections,
    denial: &Denial,
    now: u64,
) -> Result<(), SignError> {
    // Answer section.
    let groups = group_answer(q, &s.answer).ok_or(SignError::Encode)?;
    let mut answer = Vec::with_capacity(s.answer.len() + groups.len());
    let mut i = 0;
    let mut wildcard_nsec: Vec<Record> = Vec::new();
    for g in groups {
        let n = g.rdatas.len();
        answer.extend(s.answer[i..i + n].iter().cloned());
        i += n;
        let Some((zone, signer)) = signer_for(snap, &g.owner) else {
            continue;
        };
        let lower = wire_to_lower(&g.owner).ok_or(SignError::Encode)?;
        let wildcard = zone.wildcard_labels(&lower);
        let mut rdatas = g.rdatas;
        let sigs = signer.rrsigs(
            &g.owner,
            wildcard,
            g.rtype,
            g.ttl,
            &mut rdatas,
            now,
            wildcard.is_none(),
        )?;
        let owner = g.name.clone().unwrap_or_else(Name::root);
        for sig in sigs {
            answer.push(Answer::Record(
                raw(owner.clone(), g.ttl, RecordType::RRSIG, sig),
                g.name.is_none(),
            ));
        }
        if let Some(enc_labels) = wildcard {
            // RFC 4035 §3.1.3.3: prove that no closer name exists: an NSEC just around the
            // next closer name (covering the name asked for, below it). Both ends are its
            // siblings, so that a validator finds the closest encloser the wildcard belongs
            // to (BIND takes the longest common ancestor of the name and either end).
            let next_closer = dnssec::signer::suffix(&g.owner, enc_labels + 1).to_vec();
            let (Some(before), Some(after)) = (
                dnssec::name_before(&next_closer),
                dnssec::sibling_after(&next_closer),
            ) else {
                return Err(SignError::Encode);
            };
            nsec(
                zone,
                signer,
                &before,
                &after,
                &[rtype::RRSIG, rtype::NSEC],
                now,
                false,
                &mut wildcard_nsec,
            )?;
        }
    }
    s.answer = answer;

    // Authority section: the SOA of a negative answer; referral NS are not signed.
    let mut authority = Vec::with_capacity(s.authority.len() + 4);
    let referral = matches!(denial, Denial::Referral(_));
    for g in group_records(&s.authority).ok_or(SignError::Encode)? {
        for r in s
            .authority
            .iter()
            .filter(|r| name_wire(&r.name) == g.owner && u16::from(r.record_type()) == g.rtype)
        {
            authority.push(r.clone());
        }
        if referral && g.rtype == rtype::NS {
            continue;
        }
        let Some((_, signer)) = signer_for(snap, &g.owner) else {
            continue;
        };
        let mut rdatas = g.rdatas;
        for sig in signer.rrsigs(&g.owner, None, g.rtype, g.ttl, &mut rdatas, now, true)? {
            let owner = g.name.clone().unwrap_or_else(Name::root);
            authority.push(raw(owner, g.ttl, RecordType::RRSIG, sig));
        }
    }
    match denial {
        Denial::None => {}
        Denial::NoData(name) => {
            let owner = lower_wire(name);
            if let Some((zone, signer)) = signer_for(snap, &owner) {
                let mut types = zone.types_at(name);
                types.extend([rtype::RRSIG, rtype::NSEC]);
                let next = dnssec::next_after(&owner).ok_or(SignError::Encode)?;
                // A wildcard-matched name is as random as the client likes: not cached.
                let cacheable = zone.wildcard_labels(name).is_none();
                nsec(
                    zone,
                    signer,
                    &owner,
                    &next,
                    &types,
                    now,
                    cacheable,
                    &mut authority,
                )?;
            }
        }
        Denial::NxDomain(name) => {
            let owner = lower_wire(name);
            if let Some((zone, signer)) = signer_for(snap, &owner) {
                // RFC 9824 §3.1: NOERROR and an NSEC at the name with {RRSIG, NSEC, NXNAME};
                // NXDOMAIN only for a client that said it understands it (CO, §4).
                let co = q.edns.as_ref().is_some_and(|e| e.compact_ok);
                head.rcode = if co { rcode::NXDOMAIN } else { rcode::NOERROR };
                let next = dnssec::next_after(&owner).ok_or(SignError::Encode)?;
                let types = [rtype::RRSIG, rtype::NSEC, rtype::NXNAME];
                // Random names are never cached (issue 14: a flood would evict the useful).
                nsec(
                    zone,
                    signer,
                    &owner,
                    &next,
                    &types,
                    now,
                    false,
                    &mut authority,
                )?;
            }
        }
        Denial::Referral(cut) => {
            let owner = lower_wire(cut);
            if let Some((zone, signer)) = signer_for(snap, &owner)
                && !zone.types_at(cut).contains(&rtype::DS)
            {
                // RFC 4035 §3.1.4.1: no DS at the cut: prove it (an insecure delegation).
                let next = dnssec::next_after(&owner).ok_or(SignError::Encode)?;
                let types = [rtype::NS, rtype::RRSIG, rtype::NSEC];
                nsec(
                    zone,
                    signer,
                    &owner,
                    &next,
                    &types,
                    now,
                    true,
                    &mut authority,
                )?;
            }
        }
    }
    authority.extend(wildcard_nsec);
    s.authority = authority;
    Ok(())
}

/// Appends an NSEC at `owner` (lowercase wire) with `next` and `types`, and its RRSIGs.
#[allow(clippy::too_many_arguments)]
fn nsec(
    zone: &Zone,
    signer: &ZoneSigner,
    owner: &[u8],
    next: &[u8],
    types: &[u16],
    now: u64,
    cacheable: bool,
    out: &mut Vec<Record>,
) -> Result<(), SignError> {
    // RFC 9077 §3: the NSEC TTL is that of negative answers, min(SOA TTL, MINIMUM).
    let ttl = zone.negative_ttl();
    let rdata = dnssec::nsec_rdata(next, types);
    let name = wire_to_name(owner).ok_or(SignError::Encode)?;
    let mut rdatas = vec![rdata.clone()];
    let sigs = signer.rrsigs(owner, None, rtype::NSEC, ttl, &mut rdatas, now, cacheable)?;
    out.push(raw(name.clone(), ttl, RecordType::NSEC, rdata));
    for sig in sigs {
        out.push(raw(name.clone(), ttl, RecordType::RRSIG, sig));
    }
    Ok(())
}

/// Returns the DNSKEY, CDS or CDNSKEY RRset of a signed apex `qname` for `qtype`, as answer
/// records owned by the query name; `None` when `qname` is no signed apex or `qtype` is none
/// of them.
pub(super) fn key_answer(snap: &Snapshot, qname: &LowerName, qtype: u16) -> Option<Vec<Answer>> {
    let zone = snap.zones.zone_for(qname)?;
    let signer = zone.signer()?;
    if !zone.is_apex(qname) {
        return None;
    }
    let (code, rdatas) = match qtype {
        rtype::DNSKEY => (RecordType::DNSKEY, signer.dnskey_rdatas()),
        rtype::CDS => (RecordType::CDS, signer.cds_rdatas()),
        rtype::CDNSKEY => (RecordType::CDNSKEY, signer.cdnskey_rdatas()),
        _ => return None,
    };
    let name = Name::from(qname.clone());
    Some(
        rdatas
            .into_iter()
            .map(|r| Answer::Record(raw(name.clone(), signer.key_ttl(), code, r), true))
            .collect(),
    )
}

/// Returns the zone of `owner` (lowercase wire) and its signer, when that zone is signed.
fn signer_for<'s>(snap: &'s Snapshot, owner: &[u8]) -> Option<(&'s Zone, &'s ZoneSigner)> {
    let lower = wire_to_lower(owner)?;
    let zone = snap.zones.zone_for(&lower)?;
    Some((zone, zone.signer()?))
}

/// Returns true when some zone of `snap` is signed.
pub(super) fn any_signed(snap: &Snapshot) -> bool {
    snap.zones.any_signed()
}

/// A record with raw RDATA of type `code`.
fn raw(name: Name, ttl: u32, code: RecordType, rdata: Vec<u8>) -> Record {
    Record::from_rdata(
        name,
        ttl,
        RData::Unknown {
            code,
            rdata: NULL::with(rdata),
        },
    )
}

/// Groups the answer section into RRsets of consecutive records with the same owner and type.
fn group_answer(q: &Query<'_>, answer: &[Answer]) -> Option<Vec<Group>> {
    let mut groups: Vec<Group> = Vec::new();
    for a in answer {
        let (owner, name, rtype, ttl, rdata) = match a {
            Answer::Address { ttl, addr } => {
                let (t, rdata) = match addr {
                    std::net::IpAddr::V4(v4) => (1u16, v4.octets().to_vec()),
                    std::net::IpAddr::V6(v6) => (28u16, v6.octets().to_vec()),
                };
                (q.qname_lower.clone(), None, t, *ttl, rdata)
            }
            Answer::Record(r, at_qname) => {
                let owner = if *at_qname {
                    q.qname_lower.clone()
                } else {
                    name_wire(&r.name)
                };
                let name = (!*at_qname).then(|| r.name.clone());
                (
                    owner,
                    name,
                    u16::from(r.record_type()),
                    r.ttl,
                    canonical_rdata(r)?,
                )
            }
        };
        match groups.last_mut() {
            Some(g) if g.owner == owner && g.rtype == rtype => g.rdatas.push(rdata),
            _ => groups.push(Group {
                owner,
                name,
                rtype,
                ttl,
                rdatas: vec![rdata],
            }),
        }
    }
    Some(groups)
}

/// Groups records (in any order) into RRsets by owner and type, in order of first appearance.
fn group_records(records: &[Record]) -> Option<Vec<Group>> {
    let mut groups: Vec<Group> = Vec::new();
    for r in records {
        let owner = name_wire(&r.name);
        let rtype = u16::from(r.record_type());
        let rdata = canonical_rdata(r)?;
        match groups
            .iter_mut()
            .find(|g| g.owner == owner && g.rtype == rtype)
        {
            Some(g) => g.rdatas.push(rdata),
            None => groups.push(Group {
                owner,
                name: Some(r.name.clone()),
                rtype,
                ttl: r.ttl,
                rdatas: vec![rdata],
            }),
        }
    }
    Some(groups)
}

/// Returns the RDATA of `r` in canonical form (RFC 4034 §6.2: names uncompressed, lowercased
/// for the types of RFC 4034 §6.2 item 3 as amended by RFC 6840 §5.1).
fn canonical_rdata(r: &Record) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(64);
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_canonical_form(true);
    r.data.emit(&mut enc).ok()?;
    Some(buf)
}

/// Returns the lowercase wire form of `name`.
fn name_wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// Returns the lowercase wire form of `name`.
fn lower_wire(name: &LowerName) -> Vec<u8> {
    name_wire(&Name::from(name.clone()))
}

fn wire_to_name(wire: &[u8]) -> Option<Name> {
    super::wire_to_name(wire).map(Name::from)
}

fn wire_to_lower(wire: &[u8]) -> Option<LowerName> {
    super::wire_to_name(wire)
}
