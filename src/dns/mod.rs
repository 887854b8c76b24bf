//! DNS: the only place that speaks the protocol. Request bytes in, response bytes out.
//!
//! [`Answerer::respond`] is transport-agnostic: UDP, TCP, DoT and DoQ loops ([`udp`], [`tcp`],
//! [`quic`]) call it with the raw query and the client's address. It loads one immutable
//! [`Snapshot`] and one [`HealthView`] per query (no locks), parses the query ([`wire`]),
//! answers dynamic names from the policy and static names from [`crate::zone::Zones::lookup`]
//! (one typed result: CNAME chain and where it ends), and turns either into a message with one
//! reply builder (`Asked::reply`, over [`response`]). It never panics on input and never
//! blocks.
//!
//! Behaviour follows BIND, Knot and NSD for an authoritative-only server: REFUSED outside our
//! zones, AA on authoritative answers, NXDOMAIN/NODATA with the SOA (RFC 2308), CNAMEs chased
//! inside our zones, referrals below delegations, minimal ANY answers (RFC 8482), BADVERS for
//! EDNS versions above 0 (RFC 6891), NSID (RFC 5001) and client subnet (RFC 7871). Before any
//! answer: NOTIMP for opcodes other than QUERY (RFC 8906 §3.1.3), FORMERR with an OPT when the
//! query had one (RFC 6891 §7), NOTAUTH/BADKEY for TSIG-signed queries since no key is
//! configured (RFC 8945 §5.2), and DNS cookies on every answer (RFC 7873, RFC 9018, [`cookie`]).

pub(crate) mod cache;
pub(crate) mod cookie;
#[cfg(test)]
mod fuzz;
pub(crate) mod quic;
pub(crate) mod response;
pub(crate) mod rrl;
mod signed;
pub(crate) mod tcp;
pub(crate) mod tls;
pub(crate) mod udp;
pub(crate) mod wire;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

use crate::health::HealthView;
use crate::metrics::Metrics;
use crate::names::name_to_wire;
use crate::policy::{Family, Outcome};
use crate::snapshot::{Dynamic, Snapshot};
use crate::zone::{End, Zone};
use response::{Answer, Head, Opt, Sections};
use wire::{HEADER_LEN, Query, Reject};

/// RCODE values.
mod rcode {
    pub(super) const NOERROR: u16 = 0;
    pub(super) const FORMERR: u16 = 1;
    pub(super) const SERVFAIL: u16 = 2;
    pub(super) const NXDOMAIN: u16 = 3;
    pub(super) const NOTIMP: u16 = 4;
    pub(super) const REFUSED: u16 = 5;
    pub(super) const NOTAUTH: u16 = 9;
    pub(super) const BADVERS: u16 = 16;
    /// TSIG error (in the TSIG record, not the header): key not recognised (RFC 8945).
    pub(super) const BADKEY: u16 = 17;
}

/// The transport a query came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// UDP: responses are limited to the client's (or 512-byte) payload size.
    Udp,
    /// TCP: no size limit but 65535.
    Tcp,
    /// DNS over TLS (RFC 7858): as TCP, inside a TLS session.
    Tls,
    /// DNS over QUIC (RFC 9250): as TCP, one query per QUIC stream.
    Quic,
}

impl Transport {
    /// Returns the lowercase name (`udp`, `tcp`, `tls`, `quic`), as in metric labels and the
    /// query log.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Quic => "quic",
        }
    }

    fn index(self) -> usize {
        match self {
            Transport::Udp => 0,
            Transport::Tcp => 1,
            Transport::Tls => 2,
            Transport::Quic => 3,
        }
    }
}

/// Answers queries from the current snapshot and health view.
#[derive(Debug, Clone)]
pub(crate) struct Answerer {
    /// The current configuration, zones, GeoIP and services.
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    /// The current health view.
    pub(crate) health: Arc<ArcSwap<HealthView>>,
    /// Counters.
    pub(crate) metrics: Arc<Metrics>,
    /// `[query_log]`: offered every response sent (off: one atomic load).
    pub(crate) query_log: crate::query_log::QueryLog,
}

impl Answerer {
    /// Writes the response to `query` (from `client`, over `transport`) into `out`. Returns
    /// false when nothing should be sent (runts and responses are dropped).
    pub(crate) fn respond(
        &self,
        query: &[u8],
        client: SocketAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> bool {
        let snap = self.snapshot.load();
        let health = self.health.load();
        let (qtype, rcode) = match wire::parse(query) {
            Err(Reject::Drop) => return false,
            Err(Reject::NotImp { id, opcode, opt }) => {
                // RFC 8906 §3.1.3: the opcode copied, QR set, every other flag clear, no
                // records (ISC genreport's `opcode` and `opcodeflg`); an OPT only if the
                // request had one (RFC 6891 §7).
                let head = Head {
                    id,
                    opcode,
                    rcode: rcode::NOTIMP,
                    ..Head::default()
                };
                let opt = opt.then(Opt::default);
                response::write(out, head, None, &Sections::default(), opt.as_ref());
                (0, rcode::NOTIMP)
            }
            Err(Reject::FormErr {
                id,
                opcode,
                rd,
                question_end,
                opt,
            }) => {
                let head = Head {
                    id,
                    opcode,
                    rd,
                    rcode: rcode::FORMERR,
                    ..Head::default()
                };
                // RFC 6891 §7: a query with a readable OPT gets one back, so that the client
                // does not take the FORMERR for a server without EDNS.
                let opt = opt.then(Opt::default);
                // The question, when it could be read, so that clients match the response.
                let question = question_end.and_then(|end| query.get(wire::HEADER_LEN..end));
                response::write(out, head, question, &Sections::default(), opt.as_ref());
                (0, rcode::FORMERR)
            }
            Ok(q) => {
                self.metrics
                    .count_ecs(q.edns.as_ref().is_some_and(|e| e.ecs.is_some()));
                let rcode = answer_guarded(&snap, &health, &q, None, client, transport, out);
                (q.qtype, rcode)
            }
        };
        self.metrics.dns.count(transport.index(), qtype, rcode);
        true
    }
}

/// Answers a parsed query like [`answer`], but turns a panic into SERVFAIL. `service`: the
/// service of the query name when the caller has already looked it up (an A or AAAA query).
fn answer_guarded(
    snap: &Snapshot,
    health: &HealthView,
    q: &Query<'_>,
    service: Option<&Dynamic>,
    client: SocketAddr,
    transport: Transport,
    out: &mut Vec<u8>,
) -> u16 {
    // Defence in depth: a bug here must cost one SERVFAIL, never a listener task.
    let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        answer(snap, health, q, service, client.ip(), transport, out)
    }));
    answered.unwrap_or_else(|_| {
        tracing::error!(%client, "answering a query panicked: sent SERVFAIL");
        let head = Head {
            rcode: rcode::SERVFAIL,
            ..Head::answering(q)
        };
        response::write(out, head, Some(q.question), &Sections::default(), None);
        rcode::SERVFAIL
    })
}

/// Answers a parsed query; returns the RCODE written. `service`: as in [`answer_guarded`].
fn answer(
    snap: &Snapshot,
    health: &HealthView,
    q: &Query<'_>,
    service: Option<&Dynamic>,
    client: IpAddr,
    transport: Transport,
    out: &mut Vec<u8>,
) -> u16 {
    let mut asked = Asked::new(snap, health, q, client, transport);
    let mut head = Head::answering(q);

    // Other opcodes never get here (wire::Reject::NotImp).
    if let Some(tsig) = &q.tsig {
        // RFC 8945 §5.2.1: no key is configured, so every key is unknown: NOTAUTH, and the
        // TSIG back, unsigned, with BADKEY (§5.3.2).
        head.rcode = asked.error(head, rcode::NOTAUTH, out);
        if out.get(2).is_some_and(|f| f & 0x02 == 0) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            response::append_tsig_error(out, tsig, rcode::BADKEY, now);
            if transport == Transport::Udp && out.len() > response::udp_limit(q) {
                head.tc = true;
                let opt = asked.opt.as_ref();
                response::write(out, head, Some(q.question), &Sections::default(), opt);
            }
        }
        return head.rcode;
    }
    if q.edns.as_ref().is_some_and(|e| e.version > 0) {
        // RFC 6891 §6.1.3: BADVERS, with an OPT of our version.
        asked.opt.get_or_insert_with(Opt::default);
        return asked.error(head, rcode::BADVERS, out);
    }
    match q.qtype {
        // OPT and TKEY/TSIG are not questions; AXFR/IXFR are not offered.
        41 => return asked.error(head, rcode::FORMERR, out),
        249..=252 => return asked.error(head, rcode::REFUSED, out),
        253 | 254 => return asked.error(head, rcode::NOTIMP, out),
        _ => {}
    }
    if q.qclass == 3
        && q.qtype == 16
        && matches!(
            &q.qname_lower[..],
            b"\x02id\x06server\x00" | b"\x08hostname\x04bind\x00"
        )
        && let Some(id) = &snap.config.server.nsid
    {
        // RFC 4892: CH TXT id.server (and the older hostname.bind) name the instance that
        // answered, as NSID does: how operators tell anycast instances apart with dig.
        // version.bind is not answered: the version is nobody's business.
        let name = Name::from_ascii(if q.qname_lower[1] == b'i' {
            "id.server."
        } else {
            "hostname.bind."
        });
        if let Ok(name) = name {
            let mut txt = Record::from_rdata(name, 0, RData::TXT(TXT::new(vec![id.clone()])));
            txt.dns_class = DNSClass::CH;
            head.aa = true;
            let s = Sections {
                answer: vec![Answer::Record(txt, true)],
                ..Sections::default()
            };
            return asked.reply(head, &s, out);
        }
    }
    if q.qclass != 1 {
        // Only class IN is served; other CH names, HS and ANY get REFUSED, never an IN answer.
        return asked.error(head, rcode::REFUSED, out);
    }
    let qtype = RecordType::from(q.qtype);
    let mut s = Sections::default();

    // A service name itself: looked up from the query's bytes and answered without building a
    // name unless the answer is negative (which needs the zone's SOA). This only skips work:
    // `Zones::lookup` hands the same name to the same service (`End::Service`). Every service
    // name is inside a zone (checked when the snapshot is built), so AA holds. With a large
    // configuration each lookup is a few cache misses: the caller's is not repeated (issue 18).
    if matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY)
        && let Some(service) = service.or_else(|| snap.services.by_wire(&q.qname_lower))
    {
        head.aa = true;
        let mut denial = signed::Denial::None;
        match asked.dynamic(service, qtype, None, &mut s) {
            Served::Addresses => {}
            Served::NoData => {
                let name = wire_to_name(&q.qname_lower);
                let zone = name.as_ref().and_then(|n| snap.zones.zone_for(n));
                s.authority.extend(zone.map(Zone::negative_soa));
                if let Some(name) = name {
                    denial = signed::Denial::NoData(name);
                }
            }
            Served::ServFail => return asked.servfail(head, out),
        }
        return asked.reply_signed(head, s, &denial, out);
    }

    let Some(qname) = wire_to_name(&q.qname_lower) else {
        return asked.error(head, rcode::FORMERR, out);
    };
    if let Some(keys) = signed::key_answer(snap, &qname, q.qtype) {
        // DNSKEY, CDS and CDNSKEY of a signed apex: made from the keys, not the zone file.
        head.aa = true;
        s.answer = keys;
        return asked.reply_signed(head, s, &signed::Denial::None, out);
    }
    let Some(found) = snap.zones.lookup(&qname, qtype) else {
        return asked.error(head, rcode::REFUSED, out);
    };
    head.aa = found.authoritative;
    // The name the lookup ended at: the last CNAME's target, or the name asked for.
    let last = match found.chain.last().map(|c| &c.data) {
        Some(RData::CNAME(target)) => LowerName::new(&target.0),
        _ => qname.clone(),
    };
    let mut denial = signed::Denial::None;
    // Records owned by the query name are written as pointers to the question.
    let at_qname = found.chain.is_empty();
    s.answer = (found.chain.into_iter().enumerate())
        .map(|(i, r)| Answer::Record(r, i == 0))
        .collect();
    match found.end {
        End::Answer {
            records,
            additional,
        } => {
            s.answer
                .extend(records.into_iter().map(|r| Answer::Record(r, at_qname)));
            s.additional = additional;
        }
        End::NoData { soa } => {
            s.authority.push(soa);
            denial = signed::Denial::NoData(last);
        }
        End::NxDomain { soa } => {
            head.rcode = rcode::NXDOMAIN;
            s.authority.push(soa);
            denial = signed::Denial::NxDomain(last);
        }
        End::Referral { ns, glue } => {
            if let Some(cut) = ns.first() {
                denial = signed::Denial::Referral(LowerName::new(&cut.name));
            }
            s.authority = ns;
            s.additional = glue;
        }
        End::Service { owner, soa } => {
            let service = name_to_wire(&owner.to_ascii()).and_then(|w| snap.services.by_wire(&w));
            let owner = (!at_qname).then_some(&owner);
            // Invariant: a zone marks a name dynamic only for a service of this snapshot.
            let served = service.map_or(Served::NoData, |d| asked.dynamic(d, qtype, owner, &mut s));
            match served {
                Served::Addresses => {}
                Served::NoData => {
                    s.authority.push(soa);
                    denial = signed::Denial::NoData(last);
                }
                Served::ServFail => return asked.servfail(head, out),
            }
        }
        // The resolver follows the last CNAME.
        End::Outside => {}
        End::Broken => return asked.servfail(head, out),
    }
    asked.reply_signed(head, s, &denial, out)
}

/// What a service answered.
enum Served {
    /// Addresses were added to the answer section.
    Addresses,
    /// NODATA: the caller adds the SOA.
    NoData,
    /// SERVFAIL (`when_all_down = "servfail"`).
    ServFail,
}

/// One query being answered: what every reply to it needs.
struct Asked<'a, 'q> {
    snap: &'a Snapshot,
    health: &'a HealthView,
    q: &'a Query<'q>,
    /// The resolver's address (the source of the query).
    client: IpAddr,
    transport: Transport,
    /// The OPT of the reply: present when the query had one.
    opt: Option<Opt<'a>>,
}

impl<'a, 'q> Asked<'a, 'q> {
    fn new(
        snap: &'a Snapshot,
        health: &'a HealthView,
        q: &'a Query<'q>,
        client: IpAddr,
        transport: Transport,
    ) -> Self {
        let nsid = snap.config.server.nsid.as_deref().map(str::as_bytes);
        let mut opt = Opt::for_query(q, nsid, client, cookie::secrets(&snap.config));
        // RFC 9824 §5.1: a server that gives compact answers sets CO in its responses to
        // queries with CO (and then answers NXDOMAIN for a nonexistent name, signed.rs).
        if let (Some(o), Some(e)) = (opt.as_mut(), q.edns.as_ref())
            && e.dnssec_ok
            && e.compact_ok
            && signed::any_signed(snap)
        {
            o.flags |= wire::EDNS_CO;
        }
        let mut asked = Asked {
            snap,
            health,
            q,
            client,
            transport,
            opt,
        };
        asked.echo_ecs(0);
        asked
    }

    /// RFC 7871 §7.2.1: echoes the query's ECS option with `scope` (0 unless the answer
    /// depended on the subnet).
    fn echo_ecs(&mut self, scope: u8) {
        let ecs = self.q.edns.as_ref().and_then(|e| e.ecs);
        if let (Some(o), Some(ecs)) = (self.opt.as_mut(), ecs) {
            let (family, octets) = match ecs.addr {
                IpAddr::V4(a) => {
                    let mut o = [0u8; 16];
                    o[..4].copy_from_slice(&a.octets());
                    (1, o)
                }
                IpAddr::V6(a) => (2, a.octets()),
            };
            o.ecs = Some((family, ecs.source, scope, octets));
        }
    }

    /// The reply builder: writes `head` and `s` with the question and the OPT into `out`;
    /// SERVFAIL when a record cannot be encoded, TC when too large for the transport (UDP: the
    /// payload size; TCP: 65,535 bytes). Returns the RCODE.
    fn reply(&self, mut head: Head, s: &Sections, out: &mut Vec<u8>) -> u16 {
        let q = self.q;
        let empty = Sections::default();
        let mut too_long = false;
        match response::try_write(out, head, Some(q.question), s, self.opt.as_ref()) {
            Ok(()) => {}
            Err(response::Unwritten::TooLong) => too_long = true,
            Err(response::Unwritten::BadRecord) => {
                head.rcode = rcode::SERVFAIL;
                head.aa = false;
                response::write(out, head, Some(q.question), &empty, self.opt.as_ref());
            }
        }
        if too_long || out.len() > self.limit() {
            // RFC 2181 §9 / RFC 6891 §7: too large: send TC with the question and the OPT
            // (over UDP the client retries over TCP).
            head.tc = true;
            response::write(out, head, Some(q.question), &empty, self.opt.as_ref());
        }
        head.rcode
    }

    /// Returns the largest response the transport takes (UDP: the payload size; TCP: 65,535
    /// bytes).
    fn limit(&self) -> usize {
        match self.transport {
            Transport::Udp => response::udp_limit(self.q),
            // RFC 1035 §4.2.2: the TCP length prefix is 16 bits. RFC 1035 §4.1.1 defines TC
            // as "truncated due to length greater than that permitted on the transmission
            // channel", which this is; measured with the OPT appended.
            Transport::Tcp | Transport::Tls | Transport::Quic => usize::from(u16::MAX),
        }
    }

    /// The reply builder for answers that a signed zone signs: with DO set and a signed zone
    /// in the snapshot, the signed answer ([`signed::write`]: RRSIGs and the denial, from the
    /// thread's signed-answer cache when it can), then the OPT, and TC as [`Asked::reply`]
    /// when too large; SERVFAIL when signing fails (the signing budget is spent). Otherwise
    /// exactly [`Asked::reply`].
    fn reply_signed(
        &self,
        mut head: Head,
        s: Sections,
        denial: &signed::Denial,
        out: &mut Vec<u8>,
    ) -> u16 {
        if !self.q.edns.as_ref().is_some_and(|e| e.dnssec_ok) || !signed::any_signed(self.snap) {
            return self.reply(head, &s, out);
        }
        let now = u64::from(cookie::now());
        match signed::write(self.snap, self.q, &mut head, s, denial, now, out) {
            Ok(()) => {}
            Err(signed::Unsigned::Sign(error)) => {
                tracing::debug!(%error, "cannot sign an answer: sent SERVFAIL");
                return self.servfail(head, out);
            }
            Err(signed::Unsigned::Unwritten(s)) => return self.reply(head, &s, out),
        }
        if let Some(opt) = &self.opt
            && out.len() >= HEADER_LEN
        {
            let arcount = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
            out[10..12].copy_from_slice(&arcount.to_be_bytes());
            response::write_opt(out, head.rcode, opt);
        }
        if out.len() > self.limit() {
            // As `reply`: too large for the transport: TC with the question and the OPT.
            head.tc = true;
            let empty = Sections::default();
            response::write(out, head, Some(self.q.question), &empty, self.opt.as_ref());
        }
        head.rcode
    }

    /// Replies `rcode` with no records.
    fn error(&self, mut head: Head, rcode: u16, out: &mut Vec<u8>) -> u16 {
        head.rcode = rcode;
        self.reply(head, &Sections::default(), out)
    }

    /// Replies SERVFAIL with no records and AA clear: a failure is nobody's authoritative
    /// data, whether a service failed (directly or at the end of a CNAME chain) or a chain
    /// loops or runs too long. Records already gathered are dropped, never sent twice.
    fn servfail(&self, mut head: Head, out: &mut Vec<u8>) -> u16 {
        head.aa = false;
        self.error(head, rcode::SERVFAIL, out)
    }

    /// Asks the policy of service `d` for `qtype` and adds the addresses to `s`, owned by
    /// `owner` (`None`: the query name, written as a pointer to the question).
    fn dynamic(
        &mut self,
        d: &Dynamic,
        qtype: RecordType,
        owner: Option<&Name>,
        s: &mut Sections,
    ) -> Served {
        let family = if qtype == RecordType::AAAA {
            Family::V6
        } else {
            Family::V4
        };
        let ecs = self
            .q
            .edns
            .as_ref()
            .and_then(|e| e.ecs)
            .filter(|e| e.source > 0 && d.service().ecs());
        let decision = d.service().decide_at(
            &self.snap.geo,
            ecs.map_or(self.client, |e| e.addr),
            ecs.map(|e| e.source),
            family,
            self.health,
            rand::random(),
        );
        if ecs.is_some() {
            self.echo_ecs(decision.scope);
        }
        match decision.outcome {
            Outcome::Addresses(addrs) => {
                d.count(&addrs);
                let ttl = decision.ttl;
                s.answer.extend(addrs.into_iter().map(|addr| match owner {
                    None => Answer::Address { ttl, addr },
                    Some(owner) => {
                        let data = match addr {
                            IpAddr::V4(v4) => RData::A(A(v4)),
                            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                        };
                        Answer::Record(Record::from_rdata(owner.clone(), ttl, data), false)
                    }
                }));
                Served::Addresses
            }
            Outcome::NoData => Served::NoData,
            Outcome::ServFail => Served::ServFail,
        }
    }
}

/// Converts a lowercased wire-format name into a `LowerName`.
fn wire_to_name(wire: &[u8]) -> Option<LowerName> {
    let mut labels = Vec::new();
    let mut i = 0;
    while let Some(&len) = wire.get(i) {
        if len == 0 {
            break;
        }
        labels.push(wire.get(i + 1..i + 1 + len as usize)?);
        i += 1 + len as usize;
    }
    let mut name = Name::from_labels(labels).ok()?;
    name.set_fqdn(true);
    Some(LowerName::new(&name))
}
