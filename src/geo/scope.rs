//! Widest ECS scopes (RFC 7871 §7.2.1): for a decision function (a caller's mapping from a
//! location to an answer, as a class number), the whole address space cut into runs of
//! consecutive addresses with the same class.
//!
//! The scope of an address is then the widest aligned prefix around it that lies inside its
//! run: adjacent database networks and `[nets]` entries with the same decision are merged, and
//! nothing with another decision is ever inside the scope. The runs mirror
//! [`super::Geo::locate`] exactly: the database networks (one walk, classified once per
//! distinct record), then non-public blocks, embedding networks and `[nets]` entries painted
//! over them in `locate`'s order of precedence.
//!
//! Memory: per family a sorted vector of run starts and one of class numbers (IPv4: 8 bytes per
//! run, IPv6: 20), after merging adjacent runs of the same class, plus an index by the top
//! bits of the address (about 4 bytes per run; at most 256 KiB for IPv4, 4 MiB for IPv6).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv6Network};
use maxminddb::{Mmap, Reader, WithinOptions};

use super::prefix::{Net, Rule};
use super::{GeoError, Inner, Located, Location, LocationSource, Via};
use crate::geo::record::Record;

/// Class of addresses whose decision the map does not know: no widening there.
const OPAQUE: u32 = u32::MAX;

/// Networks walked between two polls of `cancelled`.
const POLL_EVERY: usize = 1 << 16;

/// At most this many top bits of the address index the runs: IPv4 /16 blocks (256 KiB of
/// index), IPv6 /20 blocks (4 MiB), so that a lookup searches a few runs in one place instead
/// of a million (a plain binary search over the runs cost 17% of the CPU of a UDP benchmark
/// with ECS on every query; issue 13). Fewer runs get a smaller index: about one block per run
/// (IPv6: eight, as only 2000::/3 is in use).
const INDEX_BITS_V4: u8 = 16;
const INDEX_BITS_V6: u8 = 20;

/// Returns the index width for `runs` runs: about log2(runs) + `extra` bits, within 1..=`most`.
fn index_bits(runs: usize, extra: u8, most: u8) -> u8 {
    let log2 = (usize::BITS - runs.max(1).leading_zeros()) as u8;
    (log2 + extra).clamp(1, most)
}

/// Runs over one family: `starts` ascending, the first one 0; run `i` ends where run `i + 1`
/// starts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Runs<T> {
    starts: Vec<T>,
    ids: Vec<u32>,
    /// For each block of the top `index_bits` bits, the first run starting in or after it;
    /// one more entry holds the number of runs.
    index: Vec<u32>,
    index_bits: u8,
}

impl<T: Copy + Ord + Into<u128>> Runs<T> {
    /// Returns the runs with their index, for a family of `width` bits.
    fn new(starts: Vec<T>, ids: Vec<u32>, width: u8, index_bits: u8) -> Self {
        let shift = u32::from(width - index_bits);
        let blocks = 1usize << index_bits;
        let mut index = Vec::with_capacity(blocks + 1);
        let mut i = 0usize;
        for b in 0..blocks {
            let first = (b as u128) << shift;
            while i < starts.len() && starts[i].into() < first {
                i += 1;
            }
            // Run counts stay far below u32::MAX (a run per database network at most).
            index.push(i as u32);
        }
        index.push(starts.len() as u32);
        Runs {
            starts,
            ids,
            index,
            index_bits,
        }
    }

    /// Returns the index of the run holding `x`.
    fn find(&self, x: T, width: u8) -> Option<usize> {
        let (from, to) = if self.index.is_empty() {
            (0, self.starts.len())
        } else {
            let b = (x.into() >> u32::from(width - self.index_bits)) as usize;
            (
                *self.index.get(b)? as usize,
                *self.index.get(b + 1)? as usize,
            )
        };
        let pp = self.starts.get(from..to)?.partition_point(|&s| s <= x);
        // pp == 0: the run started before this block (from >= 1 then: the first run starts
        // at 0, in block 0).
        (from + pp).checked_sub(1)
    }

    /// Returns the widest prefix length (in a family of `width` bits) of an aligned block
    /// around `x` inside `x`'s run, or `None` when the run is opaque.
    fn widest(&self, x: T, width: u8) -> Option<u8> {
        let i = self.find(x, width)?;
        self.widest_at(i, x, width)
    }

    /// Like [`Runs::widest`] for the run `i` that holds `x`.
    fn widest_at(&self, i: usize, x: T, width: u8) -> Option<u8> {
        let id = *self.ids.get(i)?;
        if id == OPAQUE {
            return None;
        }
        let lo: u128 = self.starts[i].into();
        let hi: u128 = match self.starts.get(i + 1) {
            Some(&next) => next.into() - 1,
            None => max_value(width),
        };
        let x: u128 = x.into();
        // The block around x of prefix length p lies inside [lo, hi]: true for p = width,
        // and once true for p, true for every longer p. Binary search for the first p.
        let inside = |p: u8| {
            let host = u32::from(width - p);
            let low = if host >= 128 {
                u128::MAX
            } else {
                (1u128 << host) - 1
            };
            let base = x & !low;
            base >= lo && (base | low) <= hi
        };
        let (mut a, mut b) = (0u8, width);
        while a < b {
            let mid = a + (b - a) / 2;
            if inside(mid) { b = mid } else { a = mid + 1 }
        }
        Some(a)
    }

    fn heap_bytes(&self) -> usize {
        self.starts.capacity() * std::mem::size_of::<T>()
            + self.ids.capacity() * 4
            + self.index.capacity() * 4
    }
}

/// The largest value of a family of `width` bits.
fn max_value(width: u8) -> u128 {
    if width >= 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
}

/// The widest ECS scopes of one decision function over both families. Built by
/// [`super::Geo::scope_maps`]; cheap to query (an index, then a short binary search).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ScopeMap {
    v4: Runs<u32>,
    v6: Runs<u128>,
}

impl ScopeMap {
    /// Returns the widest scope for `located` in bits of the queried address's family: the
    /// widest prefix around it on which the decision function gives the same class
    /// everywhere. `None` where the map cannot tell (then use `located.prefix_len`).
    pub(crate) fn scope(&self, located: &Located) -> Option<u8> {
        let inner = match located.ip {
            IpAddr::V4(a) => self.v4.widest(u32::from(a), 32)?,
            IpAddr::V6(a) => self.v6.widest(u128::from(a), 128)?,
        };
        Some(located.via.scope(inner))
    }

    /// Returns the class of `ip` itself and the widest scope around it, or `None` where the map
    /// cannot tell (an embedding network, or a gap the walk did not see).
    pub(super) fn lookup(&self, ip: IpAddr) -> Option<(u32, u8)> {
        match ip {
            IpAddr::V4(a) => {
                let x = u32::from(a);
                let i = self.v4.find(x, 32)?;
                let widest = self.v4.widest_at(i, x, 32)?;
                Some((self.v4.ids[i], widest))
            }
            IpAddr::V6(a) => {
                let x = u128::from(a);
                let i = self.v6.find(x, 128)?;
                let widest = self.v6.widest_at(i, x, 128)?;
                Some((self.v6.ids[i], widest))
            }
        }
    }

    /// Returns the number of runs: (IPv4, IPv6).
    pub(crate) fn runs(&self) -> (usize, usize) {
        (self.v4.starts.len(), self.v6.starts.len())
    }

    /// Returns the heap memory the map holds, in bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.v4.heap_bytes() + self.v6.heap_bytes()
    }
}

/// What a build walked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ScopeStats {
    /// Database networks walked.
    pub(crate) networks: usize,
    /// Distinct database records classified.
    pub(crate) records: usize,
}

/// Builds runs in ascending order, merging a run into the previous one of the same class.
#[derive(Debug, Default)]
struct Builder {
    starts: Vec<u128>,
    ids: Vec<u32>,
}

impl Builder {
    fn push(&mut self, start: u128, id: u32) {
        if self.ids.last() != Some(&id) {
            self.starts.push(start);
            self.ids.push(id);
        }
    }
}

/// What an overlay paints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paint {
    /// No location (non-public block).
    Nowhere,
    /// Located by another rule (an embedding network).
    Opaque,
    /// The `[nets]` entry with this index.
    Nets(usize),
}

/// Paints `[lo, hi]` with `paint` over a sorted list of disjoint intervals.
fn paint(list: &mut Vec<(u128, u128, Paint)>, lo: u128, hi: u128, what: Paint) {
    let mut out = Vec::with_capacity(list.len() + 2);
    for &(a, b, p) in list.iter() {
        if b < lo || a > hi {
            out.push((a, b, p));
            continue;
        }
        if a < lo {
            out.push((a, lo - 1, p));
        }
        if b > hi {
            out.push((hi + 1, b, p));
        }
    }
    out.push((lo, hi, what));
    out.sort_unstable_by_key(|&(a, _, _)| a);
    *list = out;
}

/// Returns a network as an interval of its family's values.
fn interval(net: &Net) -> (u128, u128) {
    if net.v6 {
        let low = max_value(128 - net.len);
        (net.bits, net.bits | low)
    } else {
        let lo = net.bits >> 96;
        (lo, lo | max_value(32 - net.len))
    }
}

/// Overlays `paints` (ids per function already resolved, sorted, disjoint) on `base`; both
/// cover the family of `width` bits.
fn overlay(base: &Builder, paints: &[(u128, u128, u32)], width: u8) -> Builder {
    let mut out = Builder::default();
    let mut p = 0;
    // Each base run, cut by the paints inside it.
    for (i, (&start, &id)) in base.starts.iter().zip(&base.ids).enumerate() {
        let end = base
            .starts
            .get(i + 1)
            .map_or(max_value(width), |&next| next - 1);
        let mut at = start;
        loop {
            while p < paints.len() && paints[p].1 < at {
                p += 1;
            }
            match paints.get(p) {
                Some(&(lo, hi, pid)) if lo <= end => {
                    if lo > at {
                        out.push(at, id);
                    }
                    out.push(lo.max(at), pid);
                    if hi >= end {
                        // The paint may go on over the next base run.
                        break;
                    }
                    at = hi + 1;
                    p += 1;
                }
                _ => {
                    out.push(at, id);
                    break;
                }
            }
        }
    }
    out
}

/// Walks the database and builds the maps; see [`super::Geo::scope_maps`].
pub(super) fn build(
    g: &Inner,
    n: usize,
    classify: &mut dyn FnMut(&Located, &mut [u32]),
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<(Vec<ScopeMap>, ScopeStats)>, GeoError> {
    let located = |ip: IpAddr, location: Option<Location>, region, source| Located {
        ip,
        location,
        region,
        source,
        prefix_len: 0,
        via: Via::direct(ip),
    };
    let mut nowhere = vec![0u32; n];
    classify(
        &located(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            None,
            None,
            LocationSource::None,
        ),
        &mut nowhere,
    );
    let nets = g.nets.entries();
    let mut nets_ids = vec![0u32; n * nets.len()];
    for (k, o) in nets.iter().enumerate() {
        classify(
            &located(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                None,
                Some(o.region.clone()),
                LocationSource::Nets,
            ),
            &mut nets_ids[k * n..(k + 1) * n],
        );
    }

    let mut stats = ScopeStats::default();
    let mut walk = Walk {
        n,
        classify,
        cancelled,
        cache: HashMap::new(),
        classes: Vec::new(),
        nowhere: &nowhere,
        stats: &mut stats,
    };
    let mut v4: Vec<Builder> = (0..n).map(|_| Builder::default()).collect();
    let mut v6: Vec<Builder> = (0..n).map(|_| Builder::default()).collect();
    match &g.reader {
        None => {
            // Without a database every address outside the overlays has no location.
            for (j, b) in v4.iter_mut().enumerate() {
                b.push(0, nowhere[j]);
            }
            for (j, b) in v6.iter_mut().enumerate() {
                b.push(0, nowhere[j]);
            }
        }
        Some(reader) => {
            let all4 = IpNetwork::V4("0.0.0.0/0".parse().expect("valid network literal"));
            if !walk.family(reader, &[all4], false, &mut v4)? {
                return Ok(None);
            }
            if reader.metadata().ip_version == 4 {
                // IPv6 addresses in an IPv4 database have no location.
                for (j, b) in v6.iter_mut().enumerate() {
                    b.push(0, nowhere[j]);
                }
            } else {
                // Every network but ::/96 (the IPv4 subtree, located as IPv4-compatible),
                // in ascending order: the siblings of the path to ::/96, deepest first.
                let siblings: Vec<IpNetwork> = (0..96u8)
                    .rev()
                    .map(|d| {
                        let ip = Ipv6Addr::from(1u128 << (127 - u32::from(d)));
                        IpNetwork::V6(Ipv6Network::new(ip, d + 1).expect("prefix within 128"))
                    })
                    .collect();
                if !walk.family(reader, &siblings, true, &mut v6)? {
                    return Ok(None);
                }
            }
        }
    }

    // Overlays, lowest precedence first, as `locate` decides.
    let mut paints4: Vec<(u128, u128, Paint)> = Vec::new();
    let mut paints6: Vec<(u128, u128, Paint)> = Vec::new();
    for block in &g.non_public {
        let (lo, hi) = interval(block);
        let list = if block.v6 { &mut paints6 } else { &mut paints4 };
        paint(list, lo, hi, Paint::Nowhere);
    }
    for e in g.embeddings.iter().rev() {
        let (lo, hi) = interval(&e.net);
        paint(&mut paints6, lo, hi, Paint::Opaque);
    }
    // `entries` is longest first, file order among equals: painting in reverse leaves the
    // longest (and among equals the first) on top.
    for (k, o) in nets.iter().enumerate().rev() {
        let (lo, hi) = interval(&o.net);
        let list = if o.net.v6 { &mut paints6 } else { &mut paints4 };
        paint(list, lo, hi, Paint::Nets(k));
    }
    // IPv4-mapped addresses are located as IPv4 before `[nets]` sees them.
    for e in g.embeddings.iter().filter(|e| e.rule == Rule::Ipv4Mapped) {
        let (lo, hi) = interval(&e.net);
        paint(&mut paints6, lo, hi, Paint::Opaque);
    }

    let resolve = |paints: &[(u128, u128, Paint)], j: usize| -> Vec<(u128, u128, u32)> {
        paints
            .iter()
            .map(|&(lo, hi, p)| {
                let id = match p {
                    Paint::Nowhere => nowhere[j],
                    Paint::Opaque => OPAQUE,
                    Paint::Nets(k) => nets_ids[k * n + j],
                };
                (lo, hi, id)
            })
            .collect()
    };
    let maps = (0..n)
        .map(|j| {
            let b4 = overlay(&v4[j], &resolve(&paints4, j), 32);
            let b6 = overlay(&v6[j], &resolve(&paints6, j), 128);
            ScopeMap {
                v4: Runs::new(
                    // Values of the IPv4 family fit in 32 bits.
                    b4.starts.iter().map(|&s| s as u32).collect(),
                    b4.ids,
                    32,
                    index_bits(b4.starts.len(), 0, INDEX_BITS_V4),
                ),
                v6: {
                    let bits = index_bits(b6.starts.len(), 3, INDEX_BITS_V6);
                    Runs::new(b6.starts, b6.ids, 128, bits)
                },
            }
        })
        .collect();
    Ok(Some((maps, stats)))
}

/// One walk over the database's networks.
struct Walk<'a> {
    n: usize,
    classify: &'a mut dyn FnMut(&Located, &mut [u32]),
    cancelled: &'a dyn Fn() -> bool,
    /// Record offset -> index of its classes in `classes`.
    cache: HashMap<usize, usize>,
    classes: Vec<u32>,
    nowhere: &'a [u32],
    stats: &'a mut ScopeStats,
}

impl Walk<'_> {
    /// Walks `cidrs` (ascending, disjoint) of one family into `builders`; gaps (aliases the
    /// reader skips) are opaque. Returns false when cancelled.
    fn family(
        &mut self,
        reader: &Reader<Mmap>,
        cidrs: &[IpNetwork],
        v6: bool,
        builders: &mut [Builder],
    ) -> Result<bool, GeoError> {
        let err = |e: maxminddb::MaxMindDbError| GeoError::Walk {
            message: e.to_string(),
        };
        let width = if v6 { 128 } else { 32 };
        // The next address not yet covered; None once the family is covered.
        let mut next: Option<u128> = Some(0);
        let opts = WithinOptions::default().include_networks_without_data();
        for cidr in cidrs {
            for item in reader.within(*cidr, opts).map_err(err)? {
                let found = item.map_err(err)?;
                self.stats.networks += 1;
                if self.stats.networks.is_multiple_of(POLL_EVERY) && (self.cancelled)() {
                    return Ok(false);
                }
                let (start, len) = match (found.network().map_err(err)?, v6) {
                    (IpNetwork::V4(net), false) => (u128::from(u32::from(net.ip())), net.prefix()),
                    // Above the IPv4 subtree of an IPv6 database: all of IPv4 is one record.
                    (IpNetwork::V6(_), false) => (0, 0),
                    (IpNetwork::V6(net), true) => (u128::from(net.ip()), net.prefix()),
                    // The IPv4 subtree seen from IPv6 (::/96): located as IPv4-compatible.
                    (IpNetwork::V4(_), true) => continue,
                };
                let end = start | max_value(width - len.min(width));
                let Some(at) = next else {
                    return Err(GeoError::Walk {
                        message: "networks beyond the end of the address space".into(),
                    });
                };
                if start < at {
                    return Err(GeoError::Walk {
                        message: "networks out of order".into(),
                    });
                }
                if start > at {
                    for b in builders.iter_mut() {
                        b.push(at, OPAQUE);
                    }
                }
                let ids = match found.offset() {
                    None => self.nowhere,
                    Some(offset) => {
                        let at = match self.cache.get(&offset) {
                            Some(&at) => at,
                            None => {
                                let at = self.classes.len();
                                self.classes.resize(at + self.n, 0);
                                let location = found
                                    .decode::<Record>()
                                    .ok()
                                    .flatten()
                                    .and_then(Location::from_record);
                                let ip = if v6 {
                                    IpAddr::V6(Ipv6Addr::from(start))
                                } else {
                                    IpAddr::V4(Ipv4Addr::from(start as u32))
                                };
                                let source = if location.is_some() {
                                    LocationSource::Database
                                } else {
                                    LocationSource::None
                                };
                                let l = Located {
                                    ip,
                                    location,
                                    region: None,
                                    source,
                                    prefix_len: len,
                                    via: Via::direct(ip),
                                };
                                (self.classify)(&l, &mut self.classes[at..at + self.n]);
                                self.cache.insert(offset, at);
                                self.stats.records += 1;
                                at
                            }
                        };
                        &self.classes[at..at + self.n]
                    }
                };
                for (b, &id) in builders.iter_mut().zip(ids) {
                    b.push(start, id);
                }
                next = end.checked_add(1).filter(|_| end < max_value(width));
            }
        }
        if let Some(at) = next {
            for b in builders.iter_mut() {
                b.push(at, OPAQUE);
            }
        }
        Ok(true)
    }
}
