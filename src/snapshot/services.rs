//! The dynamic names of a snapshot: every service compiled, keyed by the lowercase wire form of
//! its name, so that the answer path finds a service straight from the query's bytes without
//! building a name. Owns the per-region answer counters of each service.
//!
//! Key types: [`Services`], [`Dynamic`]. Knows nothing of DNS messages: `dns/` looks names up
//! here and writes the answer.

use crate::names::name_to_wire;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use smallvec::SmallVec;

use crate::config::Config;
use crate::metrics::{AnswerCounter, Metrics};
use crate::policy::{CompiledService, Compiler};

/// The dynamic names of a snapshot, keyed by their lowercase wire form.
///
/// A set of [`Dynamic`]s found by their key, not a map from key to value: the table's slot
/// then holds the key and the hot fields of the service in one `repr(C)` record, in adjacent
/// cache lines, where a map's (key, value) pair may be laid out in any order (issue 18).
#[derive(Debug, Default)]
pub(crate) struct Services {
    by_wire: HashSet<Dynamic>,
}

/// A lowercase wire name as a key, inline up to 48 bytes: comparing the query's name with it
/// reads the table's own memory, not one more allocation (issue 18: with 10,000 services that
/// was a cache miss per query).
type WireKey = SmallVec<[u8; 48]>;

/// One dynamic name: its key, its compiled service and its answer counters by region.
///
/// `repr(C)` and aligned to a cache line: the key (read to find the record), the answer
/// counters and the service's hot fields follow each other from the start of a line.
#[derive(Debug)]
#[repr(C, align(64))]
pub(crate) struct Dynamic {
    key: WireKey,
    /// `meridian_dns_answers_total{service,region,family}` for A and AAAA, one entry per
    /// endpoint in config order; empty until [`Services::count_answers_in`]. Inline up to four
    /// endpoints: one allocation less to read per answer (issue 18).
    answers: SmallVec<[Answers; 4]>,
    service: CompiledService,
}

/// The answer counts of one endpoint of a service.
///
/// An answer adds to `pending`, in the service's own record, which the answer path has just
/// read: no cache miss for a counter elsewhere (issue 18: with 10,000 services each counter
/// was one, per query). [`Services::flush_answers`] moves them to the counters before anyone
/// reads those, and when the snapshot is dropped.
#[derive(Debug)]
struct Answers {
    /// The index of the first endpoint of the same region: the one counted for both.
    first: usize,
    /// Answers not yet added to `counters`: A, AAAA.
    pending: [AtomicU64; 2],
    counters: [AnswerCounter; 2],
}

impl Answers {
    /// Adds the pending counts to the counters.
    fn flush(&self) {
        for (p, c) in self.pending.iter().zip(&self.counters) {
            // Read first: most endpoints have nothing pending, and a swap would write the
            // line the answer path reads.
            if p.load(Ordering::Relaxed) > 0 {
                c.inc_by(p.swap(0, Ordering::Relaxed));
            }
        }
    }
}

impl std::borrow::Borrow<[u8]> for Dynamic {
    fn borrow(&self) -> &[u8] {
        &self.key
    }
}

impl std::hash::Hash for Dynamic {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `[u8]` hashes: `Borrow` requires the owned and the borrowed form to agree.
        self.key[..].hash(state);
    }
}

impl PartialEq for Dynamic {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Dynamic {}

impl Dynamic {
    /// Returns the compiled service.
    pub(crate) fn service(&self) -> &CompiledService {
        &self.service
    }

    /// Counts an answer once for each region its addresses come from.
    pub(crate) fn count(&self, addrs: &[IpAddr]) {
        let region = |a: &IpAddr| {
            let i = self.service.endpoint_of(*a)?;
            self.answers.get(i).map(|e| e.first)
        };
        for (i, a) in addrs.iter().enumerate() {
            let Some(r) = region(a) else {
                continue;
            };
            if !addrs[..i].iter().any(|b| region(b) == Some(r))
                && let Some(e) = self.answers.get(r)
            {
                e.pending[usize::from(a.is_ipv6())].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        // Counts of a replaced snapshot's last answers are not lost.
        self.flush_answers();
    }
}

impl Services {
    /// Compiles every service of `config`.
    pub(crate) fn new(config: &Config) -> Self {
        let compiler = Compiler::new(config);
        let mut all: Vec<Dynamic> = config
            .services
            .iter()
            .filter_map(|s| {
                let service = CompiledService::compile(s, &compiler);
                Some(Dynamic {
                    key: WireKey::from_slice(&name_to_wire(&s.name)?),
                    answers: SmallVec::new(),
                    service,
                })
            })
            .collect();
        crate::policy::share_scope_maps(all.iter_mut().map(|d| &mut d.service));
        Self {
            by_wire: all.into_iter().collect(),
        }
    }

    /// Obtains the answer counters of every service and region from `metrics` (this takes a
    /// lock: done once per snapshot, never per query).
    pub(crate) fn count_answers_in(&mut self, metrics: &Metrics) {
        // One shared copy of each region's name for every counter.
        let mut regions: HashSet<Arc<str>> = HashSet::new();
        // A set hands out no `&mut` to its elements: taken out, changed, put back (once per
        // snapshot).
        let mut all: Vec<Dynamic> = std::mem::take(&mut self.by_wire).into_iter().collect();
        for d in &mut all {
            let s = d.service.service();
            let service: Arc<str> = s.name.as_str().into();
            d.answers = s
                .endpoints
                .iter()
                .map(|e| {
                    let name = e.region.name.as_str();
                    let first = s
                        .endpoints
                        .iter()
                        .position(|f| f.region.name == name)
                        .unwrap_or_default();
                    let region = match regions.get(name) {
                        Some(r) => r.clone(),
                        None => {
                            let r: Arc<str> = name.into();
                            regions.insert(r.clone());
                            r
                        }
                    };
                    Answers {
                        first,
                        pending: Default::default(),
                        counters: metrics.answer_counters(&service, &region),
                    }
                })
                .collect();
        }
        self.by_wire = all.into_iter().collect();
    }

    /// Adds every pending answer count to its counter ([`Answers`]).
    pub(crate) fn flush_answers(&self) {
        for d in &self.by_wire {
            for a in &d.answers {
                a.flush();
            }
        }
    }

    /// Returns the service whose name has the lowercase wire form `wire`.
    pub(crate) fn by_wire(&self, wire: &[u8]) -> Option<&Dynamic> {
        self.by_wire.get(wire)
    }

    /// Returns the service answering `name` (any case, with or without the final dot).
    pub(crate) fn get(&self, name: &str) -> Option<&CompiledService> {
        self.by_wire
            .get(&name_to_wire(name)?[..])
            .map(|d| &d.service)
    }
    /// Returns every service.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &CompiledService> {
        self.by_wire.iter().map(|d| &d.service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Issue 18: answers are counted in the service's record and reach
    /// `meridian_dns_answers_total` when the counters are read, and when the snapshot goes
    /// (a reload loses no count); an answer from two endpoints of one region counts once.
    #[test]
    fn answer_counts_reach_the_counters_when_read_and_when_the_snapshot_goes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/meridian.toml");
        let metrics = Metrics::default();
        let snap = crate::snapshot::load(&path).expect("bench config loads");
        let snap = crate::snapshot::activate(snap, &metrics);
        let d = snap
            .services
            .by_wire(b"\x03api\x07example\x03net\x00")
            .expect("api is a service");
        let us: IpAddr = "192.0.2.10".parse().unwrap();
        let us6: IpAddr = "2001:db8:10::1".parse().unwrap();
        let eu: IpAddr = "198.51.100.10".parse().unwrap();
        d.count(&[us]);
        d.count(&[us, eu]);
        d.count(&[us6]);
        let key = |r: &str| ("api.example.net.".to_string(), r.to_string());
        let counts = metrics.answer_counts();
        assert_eq!(counts.get(&key("us-east")), Some(&3));
        assert_eq!(counts.get(&key("eu-west")), Some(&1));
        assert_eq!(
            metrics
                .answer_counter("api.example.net.", "us-east", "AAAA")
                .get(),
            1
        );
        d.count(&[eu]);
        drop(snap);
        assert_eq!(metrics.answer_counts().get(&key("eu-west")), Some(&2));
        assert_eq!(
            metrics
                .answer_counter("api.example.net.", "eu-west", "A")
                .get(),
            2
        );
    }
}
