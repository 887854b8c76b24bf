//! Prebuilt wire answers for static names, one cache per UDP thread and per TCP runtime
//! worker thread.
//!
//! An answer from the zone files depends only on the snapshot and on (query name, type): not on
//! the client, the health view or the transport. [`AnswerCache`] keeps, per (lowercased name,
//! type), the response as written for a plain query (no EDNS, ID 0, RD/CD clear) and patches it
//! per query: ID, RD and CD, the question copied from the query (so its case is kept), and an
//! OPT built fresh (NSID, ECS echoed with scope 0, RFC 7871 §7.2.1, and a server cookie made
//! for this client's cookie and address) when the query has EDNS: nothing in an entry belongs
//! to one client.
//! A patched answer too large for the client's UDP size goes through [`Answerer::respond`],
//! which sets TC.
//!
//! Not cached (always answered by [`Answerer::respond`]): queries with DO set when a zone is
//! signed (they get signatures, issue 14), anything that may reach a service
//! (A/AAAA/ANY for a service name or through a CNAME: such answers depend on location and
//! health), other opcodes, classes and EDNS versions, errors other than NXDOMAIN, and
//! meta-types. Each cache belongs to one thread (no lock, no sharing) and holds the snapshot it
//! was built from: a reload swaps the snapshot and the next query empties the cache.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_proto::rr::RecordType;

use super::response::{self, Opt};
use super::wire::{self, HEADER_LEN, Query};
use super::{Answerer, Transport, rcode};
use crate::snapshot::Snapshot;

/// Entries kept per cache; when full, the cache is emptied (a flood of random names cannot
/// grow it without bound, and the hot names come back on their next query).
pub(crate) const MAX_ENTRIES: usize = 4096;

/// Prebuilt static answers for one thread; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct AnswerCache {
    /// The snapshot the entries were built from.
    snapshot: Option<Arc<Snapshot>>,
    /// Lowercased wire name followed by QTYPE -> the response to the plain query, or `None`
    /// when that answer is not static.
    entries: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Scratch buffer for the plain query built on a miss.
    plain: Vec<u8>,
}

impl AnswerCache {
    /// Returns an empty cache.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    /// Returns how many (name, type) pairs are known, cacheable or not.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Answerer {
    /// Like [`Answerer::respond`], but answers static names from `cache` when it can, and
    /// fills it.
    pub(crate) fn respond_cached(
        &self,
        query: &[u8],
        client: SocketAddr,
        transport: Transport,
        out: &mut Vec<u8>,
        cache: &mut AnswerCache,
    ) -> bool {
        let snap = self.snapshot.load_full();
        if !cache
            .snapshot
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &snap))
        {
            cache.entries.clear();
            cache.snapshot = Some(snap.clone());
        }
        let q = match wire::parse(query) {
            // A DO=1 query for a signed zone needs signatures: answered by `respond`, which
            // signs (the signature cache makes that cheap).
            Ok(q)
                if is_cacheable_query(&q)
                    && !(q.edns.as_ref().is_some_and(|e| e.dnssec_ok)
                        && super::signed::any_signed(&snap)) =>
            {
                q
            }
            _ => return self.respond(query, client, transport, out),
        };
        let mut key_buf = [0u8; 258];
        let Some(key) = key(&q, &mut key_buf) else {
            return self.respond(query, client, transport, out);
        };
        let entry = cache.entries.get(key);
        if let Some(Some(body)) = entry
            && patch(body, &q, &snap, client.ip(), out)
            && out.len()
                <= match transport {
                    Transport::Udp => response::udp_limit(&q),
                    // The 16-bit length prefix: longer gets TC from `answer_guarded`.
                    Transport::Tcp | Transport::Tls | Transport::Quic => usize::from(u16::MAX),
                }
        {
            let rcode = u16::from(out[3] & 0x0F);
            self.metrics.dns.count(transport.index(), q.qtype, rcode);
            self.metrics
                .count_ecs(q.edns.as_ref().is_some_and(|e| e.ecs.is_some()));
            return true;
        }
        let known = entry.is_some();
        // What `respond` does with a parsed query (panics become SERVFAIL), without parsing again.
        let health = self.health.load();
        let rc = super::answer_guarded(&snap, &health, &q, client, transport, out);
        self.metrics.dns.count(transport.index(), q.qtype, rc);
        self.metrics
            .count_ecs(q.edns.as_ref().is_some_and(|e| e.ecs.is_some()));
        if !known && out.get(2).is_some_and(|f| f & 0x02 == 0) {
            if cache.entries.len() >= MAX_ENTRIES {
                cache.entries.clear();
            }
            // Judge from the answer just sent; only a static one is answered again in its plain
            // form (a dynamic answer twice would count twice and draw another random number).
            if !is_cacheable_answer(&snap, &q, rc, out) {
                cache.entries.insert(key.to_vec(), None);
                return true;
            }
            // Build the entry from the plain form of the query: header, lowercased question.
            let plain = &mut cache.plain;
            plain.clear();
            plain.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
            plain.extend_from_slice(&q.qname_lower);
            plain.extend_from_slice(&q.qtype.to_be_bytes());
            plain.extend_from_slice(&q.qclass.to_be_bytes());
            if let Ok(pq) = wire::parse(plain) {
                let mut body = Vec::with_capacity(512);
                let rc =
                    super::answer_guarded(&snap, &health, &pq, client, Transport::Tcp, &mut body);
                // Answers that may change without a new snapshot are remembered as such
                // (None), so that the next query for the name skips this step.
                let value = is_cacheable_answer(&snap, &q, rc, &body).then_some(body);
                cache.entries.insert(key.to_vec(), value);
            }
        }
        true
    }
}

/// Writes the cache key of `q` (lowercased wire name, then QTYPE) into `buf`; returns it.
fn key<'b>(q: &Query<'_>, buf: &'b mut [u8; 258]) -> Option<&'b [u8]> {
    let n = q.qname_lower.len();
    buf.get_mut(..n)?.copy_from_slice(&q.qname_lower);
    buf.get_mut(n..n + 2)?
        .copy_from_slice(&q.qtype.to_be_bytes());
    buf.get(..n + 2)
}

/// Returns true when the answer to `q` may come from the cache: a standard query of class IN,
/// EDNS absent or version 0, unsigned, not a meta-type nor ANY.
fn is_cacheable_query(q: &Query<'_>) -> bool {
    q.opcode == 0
        && q.tsig.is_none()
        && q.qclass == 1
        && q.edns.as_ref().is_none_or(|e| e.version == 0)
        && !matches!(q.qtype, 41 | 249..=255)
}

/// Returns true when `body` (the plain answer to `q`, RCODE `rc`) depends on nothing but the
/// snapshot: NOERROR (data, NODATA, referral) or NXDOMAIN, not truncated, and for A/AAAA
/// neither a service name nor a CNAME (which may lead to one).
fn is_cacheable_answer(snap: &Snapshot, q: &Query<'_>, rc: u16, body: &[u8]) -> bool {
    if !matches!(rc, rcode::NOERROR | rcode::NXDOMAIN)
        || body.len() < HEADER_LEN + q.question.len()
        || body[2] & 0x02 != 0
    {
        return false;
    }
    if !matches!(RecordType::from(q.qtype), RecordType::A | RecordType::AAAA) {
        return true;
    }
    let is_service = snap.services.by_wire(&q.qname_lower).is_some();
    !is_service
        && answer_types(body, HEADER_LEN + q.question.len()).is_some_and(|t| !t.contains(&5))
}

/// Returns the types of the answer section of `msg`, whose first record starts at `pos`;
/// `None` if the message cannot be walked.
fn answer_types(msg: &[u8], mut pos: usize) -> Option<Vec<u16>> {
    let ancount = u16::from_be_bytes([*msg.get(6)?, *msg.get(7)?]);
    let mut types = Vec::with_capacity(ancount as usize);
    for _ in 0..ancount {
        loop {
            let len = *msg.get(pos)?;
            match len {
                0 => {
                    pos += 1;
                    break;
                }
                1..=63 => pos += 1 + len as usize,
                0xC0..=0xFF => {
                    pos += 2;
                    break;
                }
                _ => return None,
            }
        }
        types.push(u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]));
        let rdlen = u16::from_be_bytes([*msg.get(pos + 8)?, *msg.get(pos + 9)?]) as usize;
        pos += 10 + rdlen;
    }
    Some(types)
}

/// Writes into `out` the cached `body` patched for `q` from `client`; returns false if it does
/// not fit `q`.
fn patch(body: &[u8], q: &Query<'_>, snap: &Snapshot, client: IpAddr, out: &mut Vec<u8>) -> bool {
    let qend = HEADER_LEN + q.question.len();
    if body.len() < qend {
        return false;
    }
    out.clear();
    out.extend_from_slice(body);
    out[0..2].copy_from_slice(&q.id.to_be_bytes());
    if q.rd {
        out[2] |= 0x01;
    }
    if q.cd {
        out[3] |= 0x10;
    }
    // Same lowercased name, so the same length: only the case differs.
    out[HEADER_LEN..qend].copy_from_slice(q.question);
    if let Some(e) = &q.edns {
        let arcount = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
        out[10..12].copy_from_slice(&arcount.to_be_bytes());
        let nsid = snap.config.server.nsid.as_deref().map(str::as_bytes);
        let secrets = super::cookie::secrets(&snap.config);
        let Some(mut opt) = Opt::for_query(q, nsid, client, secrets) else {
            return false;
        };
        opt.ecs = e.ecs.map(|ecs| match ecs.addr {
            IpAddr::V4(a) => {
                let mut o = [0u8; 16];
                o[..4].copy_from_slice(&a.octets());
                (1, ecs.source, 0, o)
            }
            IpAddr::V6(a) => (2, ecs.source, 0, a.octets()),
        });
        response::write_opt(out, u16::from(out[3] & 0x0F), &opt);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthView;
    use crate::metrics::Metrics;
    use arc_swap::ArcSwap;
    use std::path::Path;

    fn answerer() -> Answerer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/meridian.toml");
        let snap = crate::snapshot::load(&path).expect("bench config loads");
        Answerer {
            snapshot: Arc::new(ArcSwap::from_pointee(snap)),
            health: Arc::new(ArcSwap::from_pointee(HealthView::empty())),
            metrics: Arc::new(Metrics::default()),
            query_log: Default::default(),
        }
    }

    /// A query for `name`/`qtype` with ID 0xBEEF and RD; `opt` is the OPT RDATA, if any.
    fn query(name: &str, qtype: u16, udp_size: u16, opt: Option<&[u8]>) -> Vec<u8> {
        let mut q = vec![
            0xBE,
            0xEF,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(opt.is_some()),
        ];
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend(qtype.to_be_bytes());
        q.extend(1u16.to_be_bytes());
        if let Some(o) = opt {
            q.push(0);
            q.extend(41u16.to_be_bytes());
            q.extend(udp_size.to_be_bytes());
            q.extend([0, 0, 0, 0]);
            q.extend((o.len() as u16).to_be_bytes());
            q.extend_from_slice(o);
        }
        q
    }

    const NSID_AND_ECS: &[u8] = &[0, 3, 0, 0, 0, 8, 0, 7, 0, 1, 24, 0, 198, 51, 100];

    #[test]
    fn cached_answers_are_byte_identical_to_uncached_ones() {
        let a = answerer();
        let client: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        let mut cache = AnswerCache::new();
        let cases = [
            ("example.net", 6, 1232, None),
            ("Example.NET", 2, 1232, Some(NSID_AND_ECS)),
            ("example.net", 15, 1232, Some(&[][..])),
            ("NS1.example.net", 1, 1232, Some(NSID_AND_ECS)),
            ("ns1.example.net", 28, 0, None),
            ("nope.example.net", 1, 1232, Some(&[][..])),
            ("b.example.net", 16, 1232, None),
            ("host.USER.example.net", 16, 1232, None),
            ("lab.example.net", 1, 1232, None),
            ("_sip._udp.example.net", 33, 1232, None),
            // 512 bytes without EDNS: too big, TC; with 1232 it fits.
            ("big.example.net", 16, 0, None),
            ("big.example.net", 16, 1232, Some(&[][..])),
            ("big.example.net", 16, 512, Some(&[][..])),
            // dynamic: never cached, still answered
            ("api.example.net", 1, 1232, Some(NSID_AND_ECS)),
            ("www.example.net", 1, 1232, None),
            ("api.example.net", 16, 1232, None),
        ];
        for (name, qtype, size, opt) in cases {
            let q = query(name, qtype, size, opt);
            for transport in [Transport::Udp, Transport::Tcp] {
                let mut want = Vec::new();
                assert!(a.respond(&q, client, transport, &mut want));
                for round in 0..2 {
                    let mut got = Vec::new();
                    assert!(a.respond_cached(&q, client, transport, &mut got, &mut cache));
                    assert_eq!(got, want, "{name} {qtype} {transport:?} round {round}");
                }
            }
        }
        // Static names are cached (once per name and type), service answers are not.
        let cached = |name: &[u8], qtype: u16| {
            let mut k = name.to_vec();
            k.extend(qtype.to_be_bytes());
            cache.entries.get(&k).map(Option::is_some)
        };
        assert_eq!(cached(b"\x07example\x03net\x00", 6), Some(true));
        assert_eq!(cached(b"\x03ns1\x07example\x03net\x00", 1), Some(true));
        assert_eq!(cached(b"\x03api\x07example\x03net\x00", 16), Some(true));
        assert_eq!(cached(b"\x03api\x07example\x03net\x00", 1), Some(false));
        assert_eq!(cached(b"\x03www\x07example\x03net\x00", 1), Some(false));
    }

    /// Returns the COOKIE option of response `r` (the OPT is its last record).
    fn response_cookie(r: &[u8]) -> Option<Vec<u8>> {
        let opt = crate::dns::wire::opt_rdata(r)?;
        let mut i = 0;
        while i + 4 <= opt.len() {
            let code = u16::from_be_bytes([opt[i], opt[i + 1]]);
            let len = usize::from(u16::from_be_bytes([opt[i + 2], opt[i + 3]]));
            if code == 10 {
                return Some(opt[i + 4..i + 4 + len].to_vec());
            }
            i += 4 + len;
        }
        None
    }

    #[test]
    fn rfc7873_cached_answers_carry_each_clients_own_cookie() {
        let a = answerer();
        let mut cache = AnswerCache::new();
        let secrets = crate::dns::cookie::secrets(&a.snapshot.load().config).to_vec();
        let clients: [(SocketAddr, [u8; 8]); 3] = [
            ("192.0.2.1:5300".parse().unwrap(), [1; 8]),
            ("192.0.2.2:5300".parse().unwrap(), [2; 8]),
            ("[2001:db8::7]:5300".parse().unwrap(), [1; 8]),
        ];
        for round in 0..3 {
            for (peer, client_cookie) in clients {
                let mut o = vec![0, 10, 0, 8];
                o.extend(client_cookie);
                let q = query("example.net", 6, 1232, Some(&o));
                let mut out = Vec::new();
                assert!(a.respond_cached(&q, peer, Transport::Udp, &mut out, &mut cache));
                let c = response_cookie(&out).expect("a cookie in every answer");
                assert_eq!(c.len(), 24);
                assert_eq!(c[..8], client_cookie, "round {round}");
                let now = crate::dns::cookie::now();
                assert!(
                    crate::dns::cookie::is_valid(&secrets, &client_cookie, &c[8..], peer.ip(), now),
                    "round {round}: {peer}'s cookie is made for {peer}"
                );
                for (other, _) in clients.iter().filter(|(p, _)| *p != peer) {
                    assert!(!crate::dns::cookie::is_valid(
                        &secrets,
                        &client_cookie,
                        &c[8..],
                        other.ip(),
                        now
                    ));
                }
            }
        }
        assert_eq!(cache.len(), 1, "one entry served all three clients");
    }

    #[test]
    fn a_new_snapshot_empties_the_cache() {
        let a = answerer();
        let client: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        let mut cache = AnswerCache::new();
        let mut out = Vec::new();
        let q = query("example.net", 6, 0, None);
        a.respond_cached(&q, client, Transport::Udp, &mut out, &mut cache);
        assert_eq!(cache.len(), 1);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/meridian.toml");
        a.snapshot
            .store(Arc::new(crate::snapshot::load(&path).unwrap()));
        let q = query("example.net", 2, 0, None);
        a.respond_cached(&q, client, Transport::Udp, &mut out, &mut cache);
        assert_eq!(cache.len(), 1);
        assert!(
            cache
                .entries
                .contains_key(&b"\x07example\x03net\x00\x00\x02"[..])
        );
    }
}
