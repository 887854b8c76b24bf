//! DNS: the only place that speaks the protocol. Request bytes in, response bytes out.
//!
//! [`Answerer::respond`] is transport-agnostic: UDP and TCP loops ([`udp`], [`tcp`]) call it
//! with the raw query and the client's address. It loads one immutable [`Snapshot`] and one
//! [`HealthView`] per query (no locks), parses the query ([`wire`]), answers dynamic names from
//! the policy and static names from the zones, and writes the response ([`response`]).
//! It never panics on input and never blocks.
//!
//! Behaviour follows BIND, Knot and NSD for an authoritative-only server: REFUSED outside our
//! zones, AA on authoritative answers, NXDOMAIN/NODATA with the SOA (RFC 2308), CNAMEs chased
//! inside our zones, referrals below delegations, minimal ANY answers (RFC 8482), BADVERS for
//! EDNS versions above 0 (RFC 6891), NSID (RFC 5001) and client subnet (RFC 7871). Before any
//! answer: NOTIMP for opcodes other than QUERY (RFC 8906 §3.1.3), FORMERR with an OPT when the
//! query had one (RFC 6891 §7), NOTAUTH/BADKEY for TSIG-signed queries since no key is
//! configured (RFC 8945 §5.2), and DNS cookies on every answer (RFC 7873, RFC 9018, [`cookie`]).

pub mod cache;
pub mod cookie;
pub mod response;
pub mod rrl;
pub mod tcp;
pub mod udp;
pub mod wire;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

use crate::health::HealthView;
use crate::metrics::Metrics;
use crate::policy::{Client, Family, Outcome};
use crate::snapshot::{Dynamic, Snapshot, name_to_wire};
use crate::zone::{Found, Zone};
use response::{Answer, Head, Opt, Sections};
use wire::{Query, Reject};

/// How many CNAMEs are followed inside our zones before giving up (BIND follows 16; answers
/// this deep are a misconfiguration).
const MAX_CNAME_CHAIN: usize = 8;

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
pub enum Transport {
    /// UDP: responses are limited to the client's (or 512-byte) payload size.
    Udp,
    /// TCP: no size limit but 65535.
    Tcp,
}

impl Transport {
    fn index(self) -> usize {
        match self {
            Transport::Udp => 0,
            Transport::Tcp => 1,
        }
    }
}

/// Answers queries from the current snapshot and health view.
#[derive(Debug, Clone)]
pub struct Answerer {
    /// The current configuration, zones, GeoIP and services.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// The current health view.
    pub health: Arc<ArcSwap<HealthView>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Answerer {
    /// Writes the response to `query` (from `client`, over `transport`) into `out`. Returns
    /// false when nothing should be sent (runts and responses are dropped).
    pub fn respond(
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
                let rcode = answer_guarded(&snap, &health, &q, client, transport, out);
                (q.qtype, rcode)
            }
        };
        self.metrics.dns.count(transport.index(), qtype, rcode);
        true
    }
}

/// Answers a parsed query like [`answer`], but turns a panic into SERVFAIL.
fn answer_guarded(
    snap: &Snapshot,
    health: &HealthView,
    q: &Query<'_>,
    client: SocketAddr,
    transport: Transport,
    out: &mut Vec<u8>,
) -> u16 {
    // Defence in depth: a bug here must cost one SERVFAIL, never a listener task.
    let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        answer(snap, health, q, client.ip(), transport, out)
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

/// Answers a parsed query; returns the RCODE written.
fn answer(
    snap: &Snapshot,
    health: &HealthView,
    q: &Query<'_>,
    client: IpAddr,
    transport: Transport,
    out: &mut Vec<u8>,
) -> u16 {
    let mut head = Head::answering(q);
    let nsid = snap.config.server.nsid.as_deref().map(str::as_bytes);
    let mut opt = Opt::for_query(q, nsid, client, cookie::secrets(&snap.config));
    // RFC 7871 §7.2.1: echo the option; scope 0 unless the answer depended on the subnet.
    let echo_ecs = |opt: &mut Option<Opt<'_>>, scope: u8| {
        if let (Some(o), Some(ecs)) = (opt.as_mut(), q.edns.as_ref().and_then(|e| e.ecs)) {
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
    };
    echo_ecs(&mut opt, 0);

    let reply = |out: &mut Vec<u8>, head: Head, s: &Sections, opt: &Option<Opt<'_>>| -> u16 {
        let mut head = head;
        let empty = Sections::default();
        if !response::write(out, head, Some(q.question), s, opt.as_ref()) {
            head.rcode = rcode::SERVFAIL;
            head.aa = false;
            response::write(out, head, Some(q.question), &empty, opt.as_ref());
        }
        if transport == Transport::Udp && out.len() > response::udp_limit(q) {
            // RFC 2181 §9 / RFC 6891 §7: too large for UDP: send TC with the question and the
            // OPT, so the client retries over TCP.
            head.tc = true;
            response::write(out, head, Some(q.question), &empty, opt.as_ref());
        }
        head.rcode
    };
    let error = |out: &mut Vec<u8>, mut head: Head, rcode: u16, opt: &Option<Opt<'_>>| -> u16 {
        head.rcode = rcode;
        reply(out, head, &Sections::default(), opt)
    };

    // Other opcodes never get here (wire::Reject::NotImp).
    if let Some(tsig) = &q.tsig {
        // RFC 8945 §5.2.1: no key is configured, so every key is unknown: NOTAUTH, and the
        // TSIG back, unsigned, with BADKEY (§5.3.2).
        head.rcode = error(out, head, rcode::NOTAUTH, &opt);
        if out.get(2).is_some_and(|f| f & 0x02 == 0) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            response::append_tsig_error(out, tsig, rcode::BADKEY, now);
            if transport == Transport::Udp && out.len() > response::udp_limit(q) {
                head.tc = true;
                response::write(
                    out,
                    head,
                    Some(q.question),
                    &Sections::default(),
                    opt.as_ref(),
                );
            }
        }
        return head.rcode;
    }
    if q.edns.as_ref().is_some_and(|e| e.version > 0) {
        // RFC 6891 §6.1.3: BADVERS, with an OPT of our version.
        let o = opt.clone().or_else(|| Some(Opt::default()));
        return error(out, head, rcode::BADVERS, &o);
    }
    match q.qtype {
        // OPT and TKEY/TSIG are not questions; AXFR/IXFR are not offered.
        41 => return error(out, head, rcode::FORMERR, &opt),
        249..=252 => return error(out, head, rcode::REFUSED, &opt),
        253 | 254 => return error(out, head, rcode::NOTIMP, &opt),
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
            return reply(out, head, &s, &opt);
        }
    }
    if q.qclass != 1 {
        // Only class IN is served; other CH names, HS and ANY get REFUSED, never an IN answer.
        return error(out, head, rcode::REFUSED, &opt);
    }
    let qtype = RecordType::from(q.qtype);
    let mut s = Sections::default();

    // A dynamic name: looked up from the query's bytes, answered without building a name
    // unless the answer is negative (which needs the zone's SOA). Every service name is inside
    // a zone (checked when the snapshot is built), so AA holds.
    if let Some(service) = snap.services.by_wire(&q.qname_lower)
        && matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY)
    {
        head.aa = true;
        head.rcode = dynamic(
            snap,
            health,
            service,
            q,
            client,
            qtype,
            None,
            &mut s,
            &mut |scope| echo_ecs(&mut opt, scope),
        );
        if head.rcode == rcode::SERVFAIL {
            head.aa = false;
        } else if s.answer.is_empty()
            && let Some(zone) = wire_to_name(&q.qname_lower).and_then(|n| snap.zones.zone_for(&n))
        {
            negative(zone, &mut s);
        }
        return reply(out, head, &s, &opt);
    }

    let Some(qname) = wire_to_name(&q.qname_lower) else {
        return error(out, head, rcode::FORMERR, &opt);
    };
    let Some(zone) = snap.zones.zone_for(&qname) else {
        return error(out, head, rcode::REFUSED, &opt);
    };
    head.aa = true;

    // Static records, following CNAMEs inside our zones.
    let mut name = qname.clone();
    let mut zone: &Zone = zone;
    let mut first = true;
    for _ in 0..=MAX_CNAME_CHAIN {
        if qtype == RecordType::ANY {
            match zone.find_any(&name) {
                Some(records) => {
                    s.answer
                        .extend(records.iter().map(|r| Answer::Record(r.clone(), first)));
                }
                None if zone.contains(&name) => negative(zone, &mut s),
                None => {
                    head.rcode = rcode::NXDOMAIN;
                    negative(zone, &mut s);
                }
            }
            break;
        }
        match zone.find(&name, qtype) {
            Found::Records(records) => {
                additional_for(zone, &records, &mut s);
                s.answer
                    .extend(records.into_iter().map(|r| Answer::Record(r, first)));
                break;
            }
            Found::Cname(c) => {
                s.answer.push(Answer::Record(c.clone(), first));
                first = false;
                let RData::CNAME(target) = &c.data else { break };
                let target_lower = LowerName::new(&target.0);
                match snap.zones.zone_for(&target_lower) {
                    Some(z) => {
                        zone = z;
                        name = target_lower;
                        if matches!(qtype, RecordType::A | RecordType::AAAA)
                            && let Some(service) = name_to_wire(&target.0.to_ascii())
                                .and_then(|w| snap.services.by_wire(&w))
                        {
                            let rc = dynamic(
                                snap,
                                health,
                                service,
                                q,
                                client,
                                qtype,
                                Some(&target.0),
                                &mut s,
                                &mut |scope| echo_ecs(&mut opt, scope),
                            );
                            head.rcode = rc;
                            if rc == rcode::NOERROR
                                && s.answer.iter().all(|a| {
                                    matches!(a, Answer::Record(r, _) if r.record_type() == RecordType::CNAME)
                                })
                            {
                                negative(zone, &mut s);
                            }
                            break;
                        }
                    }
                    // Outside our zones: the resolver follows it.
                    None => break,
                }
            }
            Found::NoData => {
                negative(zone, &mut s);
                break;
            }
            Found::NxDomain => {
                // RFC 6604: the RCODE is that of the last name in the chain.
                head.rcode = rcode::NXDOMAIN;
                negative(zone, &mut s);
                break;
            }
            Found::Referral(ns) => {
                if first {
                    head.aa = false;
                }
                s.authority.extend(ns.iter().cloned());
                additional_for(zone, ns, &mut s);
                break;
            }
        }
    }
    reply(out, head, &s, &opt)
}

/// Answers a service name into `s`; returns the RCODE. `owner` is the name the addresses are
/// for when it is not the query name (the end of a CNAME chain).
#[allow(clippy::too_many_arguments)]
fn dynamic(
    snap: &Snapshot,
    health: &HealthView,
    dynamic: &Dynamic,
    q: &Query<'_>,
    resolver: IpAddr,
    qtype: RecordType,
    owner: Option<&Name>,
    s: &mut Sections,
    echo_ecs: &mut dyn FnMut(u8),
) -> u16 {
    let family = if qtype == RecordType::AAAA {
        Family::V6
    } else {
        Family::V4
    };
    let ecs = q
        .edns
        .as_ref()
        .and_then(|e| e.ecs)
        .filter(|e| e.source > 0 && dynamic.service().service().ecs);
    let located = snap.geo.locate(ecs.map_or(resolver, |e| e.addr));
    let client = Client {
        located: &located,
        ecs_source_prefix: ecs.map(|e| e.source),
    };
    let decision = dynamic
        .service()
        .decide(&client, family, health, rand::random());
    if ecs.is_some() {
        echo_ecs(decision.scope);
    }
    match decision.outcome {
        Outcome::Addresses(addrs) => {
            dynamic.count(&addrs);
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
            rcode::NOERROR
        }
        Outcome::NoData => rcode::NOERROR,
        Outcome::ServFail => rcode::SERVFAIL,
    }
}

/// Adds the SOA for a negative answer (RFC 2308 §3: TTL is min(SOA TTL, MINIMUM)).
fn negative(zone: &Zone, s: &mut Sections) {
    let mut soa = zone.soa().clone();
    soa.ttl = zone.negative_ttl();
    s.authority.push(soa);
}

/// Adds in-zone addresses of the names that NS, MX and SRV records point at.
fn additional_for(zone: &Zone, records: &[Record], s: &mut Sections) {
    for r in records {
        let target = match &r.data {
            RData::NS(ns) => &ns.0,
            RData::MX(mx) => &mx.exchange,
            RData::SRV(srv) => &srv.target,
            _ => continue,
        };
        let lower = LowerName::new(target);
        if zone.origin().zone_of(&lower) {
            for a in zone.addresses(&lower) {
                if !s.additional.iter().any(|x| x == a) {
                    s.additional.push(a.clone());
                }
            }
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
