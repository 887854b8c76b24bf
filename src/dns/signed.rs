//! The answer path's side of DNSSEC: turns the sections of an answer to a DO=1 query into a
//! signed answer, and answers DNSKEY, CDS and CDNSKEY at a signed apex.
//!
//! [`sign`] groups the answer and authority sections into RRsets, asks the zone's
//! [`ZoneSigner`] for their RRSIGs (from the canonical form of exactly the records written),
//! and adds the denial the answer needs: compact denial (RFC 9824) for a name that does not
//! exist (NOERROR, or NXDOMAIN when the client set CO), an NSEC listing the types that exist
//! for NODATA, the signed DS RRset of a secure delegation in a referral or an NSEC at a
//! delegation without DS (RFC 4035 §3.1.4.1), and for a wildcard
//! answer an NSEC showing that the name asked for does not exist (RFC 4035 §3.1.3.3).
//! Referral NS records and the additional section are not signed (RFC 4035 §2.2: NS at a cut
//! and glue are not authoritative). Answers to queries without DO never come here.
//!
//! [`write()`] keeps, per thread, each signed answer as written (header, question, records; not
//! the OPT, which is made per query: cookie, ECS scope, NSID), keyed by the unsigned answer in
//! the same form with the client's ID, RD, CD and question case taken out, plus CO and the
//! denial. The key holds the per-client choice (the addresses a service chose for this client
//! and its TTL), so a signed answer is reused for every client given the same choice, and a
//! health change that changes the choice changes the key. An entry is used only inside the
//! signing window of its signatures ([`ZoneSigner::window_bounds`]): at the window's end the
//! same answer is signed again, as it would be without this cache, and never served past its
//! signatures' expiration. Denials of nonexistent names and wildcard answers (as random as the
//! client likes) are never kept. The cache is bounded and belongs to one configuration: a
//! reload empties it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use hickory_proto::rr::rdata::NULL;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::rcode;
use super::response::{self, Answer, Head, Sections};
use super::wire::{HEADER_LEN, Query};
use crate::config::Config;
use crate::dnssec::{self, ZoneSigner, cache::SignError, rtype};
use crate::snapshot::Snapshot;
use crate::zone::Zone;

/// Signed answers kept per thread; when full, the cache is emptied (a flood of distinct answers
/// cannot grow it, and the hot ones come back on their next query).
pub(crate) const MAX_SIGNED_ANSWERS: usize = 4096;

/// One signed answer as written, without the OPT, with ID 0, RD and CD clear and the question
/// lowercased.
struct Kept {
    message: Vec<u8>,
    /// The full RCODE (the OPT carries its upper bits).
    rcode: u16,
    /// The signing window it belongs to: used only from `since` until before `until`.
    since: u64,
    until: u64,
}

/// The per-thread signed-answer cache.
#[derive(Default)]
struct Answers {
    /// The configuration the entries were made under. `snapshot::build` makes one `Config`
    /// per snapshot, so a new pointer means a reload (and this `Arc` keeps the old one from
    /// being freed and its address reused while compared).
    config: Option<Arc<Config>>,
    entries: HashMap<Vec<u8>, Kept>,
    /// Scratch buffer for the key.
    key: Vec<u8>,
}

thread_local! {
    static ANSWERS: RefCell<Answers> = RefCell::new(Answers::default());
}

/// Why [`write()`] wrote no signed answer.
pub(super) enum Unsigned {
    /// Signing failed (the signing budget is spent, or a record cannot be encoded): the caller
    /// answers SERVFAIL.
    Sign(SignError),
    /// The signed sections do not fit in a message, or a record cannot be written: the
    /// caller's reply builder answers them (TC or SERVFAIL).
    Unwritten(Sections),
}

/// Writes into `out` the signed answer to `q` made of `head` and `s`: header, question and
/// records, without the OPT (ARCOUNT does not count it). From this thread's cache when the
/// same unsigned answer was signed in the current signing window; otherwise signed
/// ([`sign`]) and kept when it may be. `head` gets the RCODE written.
pub(super) fn write(
    snap: &Snapshot,
    q: &Query<'_>,
    head: &mut Head,
    mut s: Sections,
    denial: &Denial,
    now: u64,
    out: &mut Vec<u8>,
) -> Result<(), Unsigned> {
    ANSWERS.with(|a| {
        let mut guard = a.try_borrow_mut();
        // Re-entered (cannot happen: nothing here calls back): sign without the cache.
        let mut a = guard.as_deref_mut().ok();
        let mut keyed = false;
        if let Some(a) = a.as_deref_mut() {
            if !a
                .config
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &snap.config))
            {
                a.entries.clear();
                a.config = Some(snap.config.clone());
            }
            keyed = key(&mut a.key, q, *head, &s, denial);
            if let Some(k) = a
                .entries
                .get(&a.key)
                .filter(|k| keyed && (k.since..k.until).contains(&now))
            {
                out.clear();
                out.extend_from_slice(&k.message);
                personalize(out, q);
                head.rcode = k.rcode;
                head.aa = k.message[2] & 0x04 != 0;
                return Ok(());
            }
        }
        let signed = sign(snap, q, head, &mut s, denial, now).map_err(Unsigned::Sign)?;
        if response::try_write(out, *head, Some(q.question), &s, None).is_err() {
            return Err(Unsigned::Unwritten(s));
        }
        let keep = keyed && signed.cacheable && !matches!(denial, Denial::NxDomain(_));
        if let Some(a) = a.filter(|_| keep) {
            if a.entries.len() >= MAX_SIGNED_ANSWERS {
                a.entries.clear();
            }
            let mut message = out.clone();
            normalize(&mut message, q);
            let kept = Kept {
                message,
                rcode: head.rcode,
                since: signed.since,
                until: signed.until,
            };
            a.entries.insert(a.key.clone(), kept);
        }
        Ok(())
    })
}

/// Writes into `buf` the key of the signed answer to `q` made of `head`, `s` and `denial`: the
/// unsigned answer in normal form, then CO, then the denial. False when the unsigned answer
/// cannot be written (nothing is then cached).
fn key(buf: &mut Vec<u8>, q: &Query<'_>, head: Head, s: &Sections, denial: &Denial) -> bool {
    if response::try_write(buf, head, Some(q.question), s, None).is_err() {
        return false;
    }
    normalize(buf, q);
    buf.push(u8::from(q.edns.as_ref().is_some_and(|e| e.compact_ok)));
    let (tag, name) = match denial {
        Denial::None => (0, None),
        Denial::NoData(n) => (1, Some(n)),
        Denial::NxDomain(n) => (2, Some(n)),
        Denial::Referral(n) => (3, Some(n)),
    };
    buf.push(tag);
    if let Some(n) = name {
        buf.extend(lower_wire(n));
    }
    true
}

/// Takes what belongs to the client out of `msg`, a response to `q`: ID 0, RD and CD clear,
/// the question lowercased (same length).
fn normalize(msg: &mut [u8], q: &Query<'_>) {
    let end = HEADER_LEN + q.qname_lower.len();
    if let Some(name) = msg.get_mut(HEADER_LEN..end) {
        name.copy_from_slice(&q.qname_lower);
    }
    if let Some(h) = msg.get_mut(..4) {
        h[0] = 0;
        h[1] = 0;
        h[2] &= !0x01;
        h[3] &= !0x10;
    }
}

/// Puts back into the normalized `msg` what belongs to `q`: its ID, RD, CD and question.
fn personalize(msg: &mut [u8], q: &Query<'_>) {
    if let Some(question) = msg.get_mut(HEADER_LEN..HEADER_LEN + q.question.len()) {
        question.copy_from_slice(q.question);
    }
    if let Some(h) = msg.get_mut(..4) {
        h[..2].copy_from_slice(&q.id.to_be_bytes());
        if q.rd {
            h[2] |= 0x01;
        }
        if q.cd {
            h[3] |= 0x10;
        }
    }
}

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

/// What [`sign`] tells about the signatures it added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Signed {
    /// Every signature may be kept (none belongs to a random name: a nonexistent or
    /// wildcard-matched one).
    pub(super) cacheable: bool,
    /// The start of the earliest signing window used (seconds since the epoch).
    pub(super) since: u64,
    /// When the earliest window used ends: from then on the same answer gets new signatures.
    pub(super) until: u64,
}

impl Signed {
    fn used(&mut self, signer: &ZoneSigner, now: u64, cacheable: bool) {
        let (since, until) = signer.window_bounds(now);
        self.since = self.since.max(since);
        self.until = self.until.min(until);
        self.cacheable &= cacheable;
    }
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
) -> Result<Signed, SignError> {
    let mut info = Signed {
        cacheable: true,
        since: 0,
        until: u64::MAX,
    };
    // Answer section.
    let groups = group_answer(q, &s.answer).ok_or(SignError::Encode)?;
    let mut answer = Vec::with_capacity(s.answer.len() + groups.len());
    let mut i = 0;
    let mut wildcard_nsec: Vec<Record> = Vec::new();
    for g in groups {
        let n = g.rdatas.len();
        answer.extend(s.answer[i..i + n].iter().cloned());
        i += n;
        let Some((zone, signer)) = signer_for(snap, &g.owner, g.rtype) else {
            continue;
        };
        let lower = wire_to_lower(&g.owner).ok_or(SignError::Encode)?;
        let wildcard = zone.wildcard_labels(&lower);
        let mut rdatas = g.rdatas;
        info.used(signer, now, wildcard.is_none());
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
                &mut info,
            )?;
        }
    }
    s.answer = answer;

    // RFC 4035 §3.1.4.1: a secure delegation's DS RRset follows the (unsigned) NS RRset, signed
    // by the parent as the other authority RRsets below.
    let mut secure_cut = false;
    if let Denial::Referral(cut) = denial
        && let Some((zone, _)) = signer_for(snap, &lower_wire(cut), rtype::NS)
        && let Some(ds) = zone.ds_at(cut)
    {
        s.authority.extend(ds.iter().cloned());
        secure_cut = true;
    }
    // Authority section: the SOA of a negative answer, a cut's DS; referral NS are not signed.
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
        let Some((_, signer)) = signer_for(snap, &g.owner, g.rtype) else {
            continue;
        };
        let mut rdatas = g.rdatas;
        info.used(signer, now, true);
        for sig in signer.rrsigs(&g.owner, None, g.rtype, g.ttl, &mut rdatas, now, true)? {
            let owner = g.name.clone().unwrap_or_else(Name::root);
            authority.push(raw(owner, g.ttl, RecordType::RRSIG, sig));
        }
    }
    match denial {
        Denial::None => {}
        Denial::NoData(name) => {
            let owner = lower_wire(name);
            // A DS query's NODATA at a cut is the parent's (`Zones::zone_for_type`).
            if let Some((zone, signer)) = signer_for(snap, &owner, q.qtype) {
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
                    &mut info,
                )?;
            }
        }
        Denial::NxDomain(name) => {
            let owner = lower_wire(name);
            if let Some((zone, signer)) = signer_for(snap, &owner, q.qtype) {
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
                    &mut info,
                )?;
            }
        }
        // RFC 4035 §3.1.4.1: no DS at the cut: prove it (an insecure delegation).
        Denial::Referral(cut) if !secure_cut => {
            let owner = lower_wire(cut);
            if let Some((zone, signer)) = signer_for(snap, &owner, rtype::NS) {
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
                    &mut info,
                )?;
            }
        }
        Denial::Referral(_) => {}
    }
    authority.extend(wildcard_nsec);
    s.authority = authority;
    Ok(info)
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
    info: &mut Signed,
) -> Result<(), SignError> {
    info.used(signer, now, cacheable);
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

/// Returns the zone that answers `rtype` at `owner` (lowercase wire) and its signer, when that
/// zone is signed (a DS at a served child's apex is the parent's).
fn signer_for<'s>(
    snap: &'s Snapshot,
    owner: &[u8],
    rtype: u16,
) -> Option<(&'s Zone, &'s ZoneSigner)> {
    let lower = wire_to_lower(owner)?;
    let zone = snap.zones.zone_for_type(&lower, RecordType::from(rtype))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::wire;
    use std::net::IpAddr;
    use std::path::Path;

    /// A snapshot of the example zone signed with a new key, kept in `dir`.
    fn signed_snapshot(dir: &Path) -> Snapshot {
        let key = dir.join("k.pem");
        dnssec::keygen("example.net.", dnssec::Algorithm::default(), &key).unwrap();
        let zone = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones/example.net.zone");
        let config = dir.join("meridian.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\ndns_listen = [\"127.0.0.1:0\"]\nadmin_listen = \"\"\n\
                 [[zone]]\norigin = \"example.net.\"\nfile = {:?}\n\
                 dnssec = {{ keys = [\"k.pem\"] }}\n\
                 [region.a]\nlatitude = 0.0\nlongitude = 0.0\n\
                 [[service]]\nname = \"api.example.net.\"\npolicy = \"nearest\"\n\
                 endpoints = [{{ region = \"a\", addresses = [\"192.0.2.1\", \"192.0.2.2\"] }}]\n",
                zone.display().to_string()
            ),
        )
        .unwrap();
        crate::snapshot::load(&config).expect("signed config loads")
    }

    /// A query for `name` A with ID `id` and an OPT with DO (and CO when `co`).
    fn query(name: &str, id: u16, co: bool) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend([1, 0, 0, 1, 0, 0, 0, 0, 0, 1]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend(label.as_bytes());
        }
        q.extend([0, 0, 1, 0, 1, 0, 0, 41, 4, 208, 0, 0]);
        q.extend((wire::EDNS_DO | if co { wire::EDNS_CO } else { 0 }).to_be_bytes());
        q.extend([0, 0]);
        q
    }

    /// Writes the signed answer to `query` with `addrs` (the service's choice) at `now`.
    fn answer(snap: &Snapshot, query: &[u8], addrs: &[&str], denial: &Denial, now: u64) -> Vec<u8> {
        let q = wire::parse(query).unwrap();
        let mut head = Head::answering(&q);
        head.aa = true;
        let s = Sections {
            answer: (addrs.iter())
                .map(|a| Answer::Address {
                    ttl: 30,
                    addr: a.parse::<IpAddr>().unwrap(),
                })
                .collect(),
            ..Sections::default()
        };
        let mut out = Vec::new();
        assert!(write(snap, &q, &mut head, s, denial, now, &mut out).is_ok());
        out
    }

    #[test]
    fn signed_answers_are_reused_inside_their_window_for_the_same_choice_only() {
        let dir = tempfile::tempdir().unwrap();
        let snap = signed_snapshot(dir.path());
        let apex = LowerName::from(Name::from_ascii("example.net.").unwrap());
        let signer = snap.zones.zone_for(&apex).unwrap().signer().unwrap();
        let now = 1_800_000_000;
        let (_, until) = signer.window_bounds(now);
        let none = Denial::None;
        let q = query("api.example.net", 0x1111, false);
        let first = answer(&snap, &q, &["192.0.2.1"], &none, now);
        // ECDSA signatures are randomised: equal bytes mean the answer was reused.
        assert_eq!(answer(&snap, &q, &["192.0.2.1"], &none, now + 60), first);
        // Another client: its own ID, RD and question case, the same records.
        let other = answer(
            &snap,
            &query("API.example.NET", 0x2222, false),
            &["192.0.2.1"],
            &none,
            now,
        );
        assert_eq!(other[..2], [0x22, 0x22]);
        assert_eq!(
            &other[12..33],
            b"\x03API\x07example\x03NET\x00\x00\x01\x00\x01"
        );
        assert_eq!(other[2..12], first[2..12]);
        assert_eq!(other[33..], first[33..]);
        // Another choice is another answer, signed for its own records.
        let b = answer(&snap, &q, &["192.0.2.2"], &none, now);
        assert_ne!(b[33..], first[33..]);
        assert!(b.windows(4).any(|w| w == [192, 0, 2, 2]));
        // Past the window: signed again (new signature bytes), never the old entry.
        let later = answer(&snap, &q, &["192.0.2.1"], &none, until);
        assert_ne!(later, first);
        assert_eq!(answer(&snap, &q, &["192.0.2.1"], &none, until + 1), later);
        // Before the window (a clock set back): not reused either.
        assert_ne!(answer(&snap, &q, &["192.0.2.1"], &none, now), later);
    }

    #[test]
    fn denials_of_nonexistent_names_are_never_kept() {
        let dir = tempfile::tempdir().unwrap();
        let snap = signed_snapshot(dir.path());
        let name = LowerName::from(Name::from_ascii("nope.example.net.").unwrap());
        let nx = Denial::NxDomain(name);
        let q = query("nope.example.net", 1, true);
        let now = 1_800_000_000;
        let a = answer(&snap, &q, &[], &nx, now);
        assert_ne!(answer(&snap, &q, &[], &nx, now), a, "signed afresh");
        assert_eq!(a[3] & 0x0F, 3, "CO: NXDOMAIN");
    }
}
