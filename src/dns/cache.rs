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
//! meta-types. Each cache belongs to one thread (no lock, no sharing) and remembers the snapshot
//! it was built from (weakly: an idle thread does not keep a replaced snapshot alive): a reload
//! swaps the snapshot and the next query empties the cache.
//!
//! Behind the per-thread caches sits one table per snapshot ([`build_static_answers`]): the
//! same plain answers for every RRset of the zone files (and A/AAAA at a CNAME that does not
//! lead to a service), built once on a background thread started by the first thread that meets
//! the snapshot, then read without a lock. A zone of 100,000 records would otherwise miss the
//! 4,096-entry caches on almost every query, and a miss answers twice (issue 18). NODATA and
//! NXDOMAIN answers stay in the per-thread caches, where an entry is built on the second miss
//! of its (name, type) only: a name asked once (a random name) is answered once and evicts
//! nothing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};

use hickory_proto::rr::RecordType;

use super::response::{self, Opt};
use super::wire::{self, HEADER_LEN, Query};
use super::{Answerer, Transport, rcode};
use crate::health::HealthView;
use crate::snapshot::{AnswerTable, Snapshot};

/// Entries kept per cache; when full, the cache is emptied (a flood of random names cannot
/// grow it without bound, and the hot names come back on their next query).
pub(crate) const MAX_ENTRIES: usize = 4096;

/// Prebuilt static answers for one thread; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct AnswerCache {
    /// The snapshot the entries were built from: weak, so that an idle thread does not keep a
    /// replaced snapshot alive (with a large zone, hundreds of MB); it still holds the
    /// allocation, so no later snapshot can have the same address.
    snapshot: Weak<Snapshot>,
    /// Lowercased wire name followed by QTYPE -> the response to the plain query, or `None`
    /// when that answer is not static.
    entries: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Scratch buffer for the plain query built on a miss.
    plain: Vec<u8>,
    /// Tags of keys that missed once ([`AnswerCache::seen_before`]); empty until the first.
    seen: Box<[u32]>,
}

/// Slots of [`AnswerCache::seen_before`]'s table of keys that missed once.
const SEEN_SLOTS: usize = 2048;

impl AnswerCache {
    /// Returns an empty cache.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Returns true when `key` missed before (its tag is in its slot), else remembers it.
    ///
    /// An entry is built on a key's second miss, not its first: building one answers the
    /// query again in its plain form, and a name asked once (random names, which get NXDOMAIN,
    /// or NODATA for one of 67,000 names in a large zone) would pay twice and take a slot never
    /// used again; 4,096 of them empty the cache of the names that are asked again (issue 18).
    fn seen_before(&mut self, key: &[u8]) -> bool {
        use std::hash::BuildHasher;
        let h = self.entries.hasher().hash_one(key);
        if self.seen.is_empty() {
            self.seen = vec![0; SEEN_SLOTS].into_boxed_slice();
        }
        // Never 0, the empty slot.
        let tag = (h >> 32) as u32 | 1;
        let slot = &mut self.seen[h as usize % SEEN_SLOTS];
        let seen = *slot == tag;
        *slot = tag;
        seen
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
        // A guard, not a clone of the `Arc`: a clone per query would have every UDP thread
        // write the one reference count (a cache line bouncing between cores, issue 18).
        let snap = self.snapshot.load();
        if !std::ptr::eq(cache.snapshot.as_ptr(), Arc::as_ptr(&snap)) {
            cache.entries.clear();
            cache.snapshot = Arc::downgrade(&snap);
            if snap.static_answers.claim_build() {
                spawn_static_answers(Arc::clone(&snap));
            }
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
        // The addresses of a service are never a static answer: answered at once, without the
        // key's copy, the static table's lookup and an entry that says so (with 10,000
        // services, such entries filled the cache and emptied it every few thousand
        // queries: issue 18).
        if matches!(RecordType::from(q.qtype), RecordType::A | RecordType::AAAA)
            && let Some(service) = snap.services.by_wire(&q.qname_lower)
        {
            let health = self.health.load();
            let rc =
                super::answer_guarded(&snap, &health, &q, Some(service), client, transport, out);
            self.metrics.dns.count(transport.index(), q.qtype, rc);
            self.metrics
                .count_ecs(q.edns.as_ref().is_some_and(|e| e.ecs.is_some()));
            return true;
        }
        let mut key_buf = [0u8; 258];
        let Some(key) = key(&q, &mut key_buf) else {
            return self.respond(query, client, transport, out);
        };
        let entry = cache.entries.get(key);
        let body = match entry {
            Some(known) => known.as_deref(),
            None => snap.static_answers.get().and_then(|t| t.get(key)),
        };
        if let Some(body) = body
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
        let rc = super::answer_guarded(&snap, &health, &q, None, client, transport, out);
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
            if !cache.seen_before(key) {
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
                let mut body: Vec<u8> = Vec::with_capacity(512);
                let rc = super::answer_guarded(
                    &snap,
                    &health,
                    &pq,
                    None,
                    client,
                    Transport::Tcp,
                    &mut body,
                );
                // Answers that may change without a new snapshot are remembered as such
                // (None), so that the next query for the name skips this step.
                let value = is_cacheable_answer(&snap, &q, rc, &body).then_some(body);
                cache.entries.insert(key.to_vec(), value);
            }
        }
        true
    }
}

/// Builds the snapshot's table of static answers on a thread of its own and installs it; a
/// snapshot replaced meanwhile stops the build (nobody would read the table).
fn spawn_static_answers(snap: Arc<Snapshot>) {
    let weak = Arc::downgrade(&snap);
    drop(snap);
    let spawned = std::thread::Builder::new()
        .name("static-answers".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let Some(table) = build_static_answers(&weak) else {
                return;
            };
            let entries = table.len();
            let bytes = table.bytes();
            crate::snapshot::release_freed_memory();
            if let Some(snap) = weak.upgrade() {
                snap.static_answers.install(table);
                tracing::info!(
                    entries,
                    bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    "static answers prebuilt"
                );
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the static answer thread: answers are cached per thread");
    }
}

/// Returns the plain answer of every static (name, type) of the snapshot's zones, keyed as the
/// per-thread cache keys them; `None` when the snapshot was replaced before the end.
pub(crate) fn build_static_answers(snap: &Weak<Snapshot>) -> Option<AnswerTable> {
    let snap = snap.upgrade()?;
    let health = HealthView::empty();
    let client = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut table = AnswerTable::new();
    let mut plain = Vec::new();
    let mut body: Vec<u8> = Vec::with_capacity(512);
    for (i, (name, rtype)) in snap.zones.static_questions().enumerate() {
        // Checked now and then, not per name: an upgrade is two atomic operations.
        if i % 4096 == 4095 && Arc::strong_count(&snap) == 1 {
            return None;
        }
        // A CNAME that leads to a service: the answer depends on the client (and the policy
        // would count it), so it is never cached and not even asked.
        if snap
            .zones
            .lookup(name, rtype)
            .is_none_or(|l| matches!(l.end, crate::zone::End::Service { .. }))
        {
            continue;
        }
        let Some(wire_name) = crate::names::name_to_wire(&name.to_string()) else {
            continue;
        };
        let qtype = u16::from(rtype);
        plain.clear();
        plain.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        plain.extend_from_slice(&wire_name);
        plain.extend_from_slice(&qtype.to_be_bytes());
        plain.extend_from_slice(&1u16.to_be_bytes());
        let Ok(pq) = wire::parse(&plain) else {
            continue;
        };
        if !is_cacheable_query(&pq) {
            continue;
        }
        body.clear();
        let rc =
            super::answer_guarded(&snap, &health, &pq, None, client, Transport::Tcp, &mut body);
        if is_cacheable_answer(&snap, &pq, rc, &body) {
            let mut key = pq.qname_lower.to_vec();
            key.extend_from_slice(&qtype.to_be_bytes());
            table.insert(&key, &body);
        }
    }
    table.shrink_to_fit();
    Some(table)
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

    /// The bench config's snapshot, its table of static answers claimed so that no thread
    /// builds it behind the test's back: these tests see the per-thread cache alone.
    fn bench_snapshot() -> Snapshot {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/meridian.toml");
        let snap = crate::snapshot::load(&path).expect("bench config loads");
        assert!(snap.static_answers.claim_build());
        snap
    }

    fn answerer() -> Answerer {
        let snap = bench_snapshot();
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
        // A service's addresses skip the cache: not even an entry saying they are dynamic.
        assert_eq!(cached(b"\x03api\x07example\x03net\x00", 1), None);
        assert_eq!(cached(b"\x03www\x07example\x03net\x00", 1), Some(false));
    }

    /// Issue 18: with 100,000 static records the per-thread caches (4,096 entries) missed most
    /// queries; the snapshot's prebuilt table answers every static name, byte for byte as
    /// `respond` does, and leaves out whatever depends on the client.
    #[test]
    fn prebuilt_static_answers_are_byte_identical_to_uncached_ones() {
        let a = answerer();
        let snap = a.snapshot.load_full();
        let table = build_static_answers(&Arc::downgrade(&snap)).expect("snapshot alive");
        let has = |name: &[u8], qtype: u16| {
            let mut k = name.to_vec();
            k.extend(qtype.to_be_bytes());
            table.contains_key(&k)
        };
        assert!(has(b"\x07example\x03net\x00", 6));
        assert!(has(b"\x03ns1\x07example\x03net\x00", 28));
        assert!(has(b"\x03big\x07example\x03net\x00", 16));
        assert!(!has(b"\x03api\x07example\x03net\x00", 1), "a service's A");
        assert!(
            !has(b"\x03www\x07example\x03net\x00", 1),
            "a CNAME to a service"
        );
        assert!(
            !has(b"\x01*\x04user\x07example\x03net\x00", 16),
            "a wildcard owner"
        );
        snap.static_answers.install(table);

        let client: SocketAddr = "192.0.2.7:5300".parse().unwrap();
        let mut cache = AnswerCache::new();
        let cases = [
            ("example.net", 6, 1232, Some(NSID_AND_ECS)),
            ("EXAMPLE.net", 15, 0, None),
            ("ns1.example.net", 28, 1232, Some(&[][..])),
            ("_sip._udp.example.net", 33, 1232, None),
            ("big.example.net", 16, 0, None),
            ("big.example.net", 16, 1232, Some(&[][..])),
            ("api.example.net", 16, 1232, None),
        ];
        for (name, qtype, size, opt) in cases {
            let q = query(name, qtype, size, opt);
            for transport in [Transport::Udp, Transport::Tcp] {
                let mut want = Vec::new();
                assert!(a.respond(&q, client, transport, &mut want));
                let mut got = Vec::new();
                assert!(a.respond_cached(&q, client, transport, &mut got, &mut cache));
                assert_eq!(got, want, "{name} {qtype} {transport:?}");
            }
        }
        // All from the table but big TXT over UDP without EDNS (TC: answered afresh, never
        // cached) and the NODATA of api TXT (no RRset: the per-thread cache keeps it).
        assert_eq!(cache.len(), 1, "{:?}", cache.entries.keys());
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

    /// Issue 18: a name asked once (random names get NXDOMAIN) is answered once, and takes
    /// no entry; asked again, it is cached, and the cached answer is the one `respond` gives.
    #[test]
    fn names_are_cached_on_their_second_miss() {
        let a = answerer();
        let client: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        let mut cache = AnswerCache::new();
        for i in 0..100 {
            let q = query(&format!("nx{i}.example.net"), 1, 1232, Some(&[][..]));
            let mut out = Vec::new();
            assert!(a.respond_cached(&q, client, Transport::Udp, &mut out, &mut cache));
            assert_eq!(out[3] & 0x0F, 3, "NXDOMAIN");
        }
        assert_eq!(cache.len(), 0, "no entry for names asked once");
        let q = query("nx7.example.net", 1, 1232, Some(&[][..]));
        let mut want = Vec::new();
        assert!(a.respond(&q, client, Transport::Udp, &mut want));
        let mut got = Vec::new();
        assert!(a.respond_cached(&q, client, Transport::Udp, &mut got, &mut cache));
        assert_eq!(cache.len(), 1, "asked twice: cached");
        got.clear();
        assert!(a.respond_cached(&q, client, Transport::Udp, &mut got, &mut cache));
        assert_eq!(got, want);
    }

    #[test]
    fn the_static_table_keeps_each_answer_with_its_key() {
        let mut t = AnswerTable::new();
        t.insert(b"\x01a\x00\x00\x01", b"answer a");
        t.insert(b"\x01b\x00\x00\x01", b"");
        t.insert(b"\x01a\x00\x00\x01", b"answer a, again");
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(b"\x01a\x00\x00\x01"), Some(&b"answer a, again"[..]));
        assert_eq!(t.get(b"\x01b\x00\x00\x01"), Some(&b""[..]));
        assert_eq!(t.get(b"\x01a\x00\x00\x1c"), None);
        assert_eq!(t.bytes(), 2 * 5 + 15);
        // Past several doublings, every key still finds its own answer, and no other key does.
        for i in 0..5000u32 {
            t.insert(format!("k{i}").as_bytes(), &i.to_le_bytes());
        }
        assert_eq!(t.len(), 5002);
        for i in 0..5000u32 {
            assert_eq!(
                t.get(format!("k{i}").as_bytes()),
                Some(&i.to_le_bytes()[..])
            );
            assert_eq!(t.get(format!("x{i}").as_bytes()), None);
        }
        assert_eq!(t.get(b"\x01a\x00\x00\x01"), Some(&b"answer a, again"[..]));
        assert_eq!(AnswerTable::new().get(b"anything"), None);
    }

    #[test]
    fn a_new_snapshot_empties_the_cache() {
        let a = answerer();
        let client: SocketAddr = "127.0.0.1:5300".parse().unwrap();
        let mut cache = AnswerCache::new();
        let mut out = Vec::new();
        // Entries are built on a name's second miss.
        let q = query("example.net", 6, 0, None);
        a.respond_cached(&q, client, Transport::Udp, &mut out, &mut cache);
        assert_eq!(cache.len(), 0);
        a.respond_cached(&q, client, Transport::Udp, &mut out, &mut cache);
        assert_eq!(cache.len(), 1);
        a.snapshot.store(Arc::new(bench_snapshot()));
        let q = query("example.net", 2, 0, None);
        for _ in 0..2 {
            a.respond_cached(&q, client, Transport::Udp, &mut out, &mut cache);
        }
        assert_eq!(cache.len(), 1);
        assert!(
            cache
                .entries
                .contains_key(&b"\x07example\x03net\x00\x00\x02"[..])
        );
    }
}
