//! Policy: which addresses a service answers with. Pure: no I/O, no clock, no locks.
//!
//! (service, client location, health view) -> [`Decision`]. [`CompiledService::new`] turns a
//! configured [`Service`] into lookup-ready data (region unit vectors, per-family target lists,
//! the failover order, the `geo` map keyed by two-letter codes, and for every region a
//! precomputed order used when a `[nets]` override places the client there), so that
//! [`CompiledService::decide`] allocates nothing but the returned address list.
//! [`CompiledService::explain`] runs the same code with a recording sink and returns an
//! [`Explanation`] (serde-serializable, and `Display` for the CLI).
//!
//! Key types: [`CompiledService`], [`Client`], [`Family`], [`Decision`], [`Outcome`],
//! [`Explanation`]. Whether a target is withdrawn (drained or down) is
//! [`crate::health::withdrawal`]'s rule, asked of any [`HealthSource`] (the [`HealthView`] in
//! production). Locating the client is `crate::geo`'s job; probing is `crate::health`'s; the
//! DNS wire format is `crate::dns`'s. Nothing here fails, so there is no error type.
//!
//! # Order of regions
//!
//! - `nearest`: by great-circle distance from the client minus each region's `bias_km` (ties in
//!   config order). A `[nets]` override region goes first, then the rest by distance from that
//!   region's coordinates. Without a location: config order.
//! - `failover`: by endpoint `priority`, lower first, ties in config order.
//! - `weighted`: drawn at random by `weight` among usable endpoints, without replacement; weight
//!   0 endpoints are drawn (uniformly) only when no endpoint of positive weight is usable.
//! - `geo`: the list of the client's country entry, else its continent entry, else `default`
//!   (a bare `XX` key matches as a country first, then as a continent; the first entry in file
//!   order wins). Only the listed regions are candidates (a map may encode data residency). A
//!   `[nets]` override region goes first.
//! - `all`: every usable target in config order (sticky: starting at a per-subnet position).
//!
//! # Filling the answer
//!
//! Addresses are taken from the first region in that order, then from the next ones, until
//! `max_answers` are collected: a failed region is spread over the next ones. A query for A uses
//! only IPv4 targets and AAAA only IPv6; a region without a target of the family is no candidate.
//! A family without any target in the service (or in the `geo` list) is NODATA, whatever the
//! health. A target is usable when its region is not drained and its state is not `Down`
//! (`Unknown`, before the first probe, counts as up).
//!
//! When nothing of the family is usable, `when_all_down` decides: `empty` is NODATA, `servfail`
//! is SERVFAIL, and `all` (fail open) answers in passes, each only if the previous found nothing:
//! every non-drained target as if up; then, when every candidate region is drained, the targets
//! of drained regions that are not down; then every target. Meridian never causes the outage.
//!
//! # Sticky answers
//!
//! With `sticky`, `weighted` and `all` take their randomness from a hash of the client's subnet
//! (/24 of an IPv4 address, /56 of an IPv6 one) and the service name instead of the caller's
//! random number: FNV-1a 64 over the service name, 0xff, the family tag (4 or 6) and the masked
//! address octets, finished by splitmix64. It is fixed and documented so that every instance and
//! every version give a subnet the same answer while health stays the same. `all` starts its walk
//! over the configured targets at a position drawn from that hash, so load spreads but each
//! subnet sticks. Both draw over the configuration, then pass over what is unusable, so a subnet's
//! answer moves only when one of its own targets or regions fails, not when another one does.
//!
//! # ECS scope (RFC 7871 §7.2.1)
//!
//! The scope prefix is the network on which the answer stays the same, never wider:
//! - 0 when the answer does not depend on the client's address: `failover`, `weighted` and
//!   `all` without `sticky`, and `nearest`, `geo` or sticky `weighted` with a single endpoint;
//! - `nearest`, `geo`: the widest prefix around the client on which the service's region order
//!   (before health) is the same for every address, from the service's scope map ([`scope`])
//!   once it is built; until then `located.prefix_len`, the network on which the location
//!   (GeoIP network, narrowed by any `[nets]` entry inside it) stays the same;
//! - sticky `weighted`, `all`: the sticky subnet, 24 for IPv4 and 56 for IPv6, which may be
//!   longer than the ECS source prefix: §7.2.1 allows that where the source subnet is split
//!   between answers (the DNS layer may clamp it for caching).
//!
//! Both are converted for the queried address when it embeds the IPv4 address that located
//! it ([`crate::geo::Via::scope`]): an IPv4 /s is /(96 + s) for an IPv4-mapped client.

mod explain;
mod geometry;
pub(crate) mod scope;
#[cfg(test)]
mod spill_tests;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use smallvec::SmallVec;

use crate::config::{Config, Policy, Service, WhenAllDown};
use crate::geo::{Geo, Located, Location, LocationSource, Via};
use crate::health::spill::spill_point;
use crate::health::{HealthSource, HealthView, RegionLoad, ServiceLoad, State, withdrawal};

pub use explain::{ClientTrace, Explanation, PassTrace, RegionTrace, Step};
use geometry::{Unit, arc_km, below, chord2, splitmix64, unit_vector};
pub(crate) use scope::{ScopeJobs, share_scope_maps};

/// Regions up to this count are ordered in stack buffers; more use one heap buffer per query.
const INLINE_REGIONS: usize = 32;

/// The address family a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Family {
    /// A records.
    #[serde(rename = "A")]
    V4,
    /// AAAA records.
    #[serde(rename = "AAAA")]
    V6,
}

impl Family {
    /// Returns the record type name: `A` or `AAAA`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "A",
            Family::V6 => "AAAA",
        }
    }

    /// Returns the family of `ip`.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
}

/// What the client is, as far as a decision goes.
#[derive(Debug, Clone)]
pub struct Client<'a> {
    /// Where the client is (from ECS or the resolver's address).
    pub located: &'a Located,
    /// The ECS source prefix when the location came from a client-subnet option.
    pub ecs_source_prefix: Option<u8>,
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "addresses", rename_all = "lowercase")]
pub enum Outcome {
    /// NOERROR with these addresses (never empty).
    Addresses(Vec<IpAddr>),
    /// NOERROR with no address (NODATA).
    NoData,
    /// SERVFAIL.
    ServFail,
}

/// A decision for one query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// What to answer.
    pub outcome: Outcome,
    /// TTL of the answer, seconds.
    pub ttl: u32,
    /// ECS scope prefix: 0 when the answer does not depend on the client's address.
    pub scope: u8,
}

/// One answering pass; later passes run only when the earlier ones found nothing and the
/// service fails open (`when_all_down = "all"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    /// Targets of non-drained regions that are not down.
    Healthy,
    /// Fail open: every target of non-drained regions, as if up.
    FailOpen,
    /// Fail open, every candidate region drained: their targets that are not down.
    FailOpenDrained,
    /// Fail open over everything.
    FailOpenAll,
}

impl Pass {
    const ALL: [Pass; 4] = [
        Pass::Healthy,
        Pass::FailOpen,
        Pass::FailOpenDrained,
        Pass::FailOpenAll,
    ];

    fn skips_drained(self) -> bool {
        matches!(self, Pass::Healthy | Pass::FailOpen)
    }

    fn skips_down(self) -> bool {
        matches!(self, Pass::Healthy | Pass::FailOpenDrained)
    }

    /// Returns a short human description.
    pub fn describe(self) -> &'static str {
        match self {
            Pass::Healthy => "usable targets (region not drained, target not down)",
            Pass::FailOpen => "fail open: every target of non-drained regions, as if up",
            Pass::FailOpenDrained => "fail open, all regions drained: targets not down",
            Pass::FailOpenAll => "fail open: every target",
        }
    }
}

/// Why a region or target was passed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The region has no target of the queried family.
    NoTargetOfFamily,
    /// The operator drained the region.
    Drained,
    /// The target's check says down.
    Down,
    /// Every target of the family in the region is down.
    AllTargetsDown,
}

impl SkipReason {
    /// Returns a short human description.
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::NoTargetOfFamily => "no target of the family",
            SkipReason::Drained => "drained",
            SkipReason::Down => "down",
            SkipReason::AllTargetsDown => "every target down",
        }
    }
}

/// Receives what the decision does; `decide` uses the no-op [`NoTrace`], `explain` records.
trait Sink {
    fn pass(&mut self, _pass: Pass) {}
    fn region_skipped(&mut self, _region: usize, _reason: SkipReason) {}
    fn target_skipped(&mut self, _region: usize, _address: IpAddr, _reason: SkipReason) {}
    fn picked(&mut self, _region: usize, _address: IpAddr, _state: State) {}
    fn rotated(&mut self, _start: usize) {}
    /// A region above its high watermark was met: the client's spill point is `point`;
    /// `moved` when it is answered with its next region instead.
    fn spilled(&mut self, _region: usize, _load: &RegionLoad, _point: f64, _moved: bool) {}
    fn note(&mut self, _note: &'static str) {}
}

/// The sink of the hot path: records nothing, compiles away.
struct NoTrace;

impl Sink for NoTrace {}

/// One endpoint of the service, compiled. `repr(C)`: what an answer reads (targets, then the
/// name and check whose pointers health lookups take) comes first, the ordering data after.
#[derive(Debug, Clone)]
#[repr(C)]
struct CompiledRegion {
    /// IPv4 targets, then IPv6 targets, each in config order: inline up to two per family, so
    /// that an answer reads no allocation of its own (issue 18: with 10,000 services each one
    /// was a cache miss per query).
    targets: [SmallVec<[IpAddr; 2]>; 2],
    name: Box<str>,
    check: Option<Box<str>>,
    bias_km: f64,
    unit: Unit,
    weight: u32,
    priority: u32,
}

/// Endpoints kept inside the compiled service rather than in an allocation of their own: an
/// answer then reads the service's own memory, not one more pointer (issue 18).
const INLINE_ENDPOINTS: usize = 4;

/// The regions of the config, where a `[nets]` override may place a client: one list shared
/// by every service compiled with the same [`Compiler`] (issue 18: a copy per service was
/// about 3 KB of a 10,000-service configuration's 12 KB per service).
#[derive(Debug)]
struct ConfigRegion {
    name: Box<str>,
    latitude: f64,
    longitude: f64,
    unit: Unit,
}

/// What compiling services against one config shares: the config's region list.
#[derive(Debug, Clone)]
pub(crate) struct Compiler {
    regions: Arc<[ConfigRegion]>,
}

impl Compiler {
    /// Prepares to compile the services of `config`.
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            regions: config
                .regions
                .iter()
                .map(|r| ConfigRegion {
                    name: r.name.as_str().into(),
                    latitude: r.latitude,
                    longitude: r.longitude,
                    unit: unit_vector(r.latitude, r.longitude),
                })
                .collect(),
        }
    }
}

/// The order used when a `[nets]` override places a client in a region (a view into the
/// service's compiled data).
#[derive(Debug, Clone, Copy)]
struct NetsOrder<'a> {
    latitude: f64,
    longitude: f64,
    /// The service's endpoint in that region, if it has one.
    endpoint: Option<usize>,
    /// For `nearest`: that endpoint first, then the others by biased distance from the region
    /// (empty for the other policies, which do not use it).
    order: &'a [usize],
}

/// One entry of a `geo` map, compiled.
#[derive(Debug, Clone)]
struct GeoEntry {
    label: String,
    regions: Box<[usize]>,
}

/// A `geo` map, compiled: two-letter codes (as `u16`) sorted for binary search.
#[derive(Debug, Clone, Default)]
struct GeoTable {
    countries: Vec<(u16, usize)>,
    continents: Vec<(u16, usize)>,
    entries: Vec<GeoEntry>,
    default: Box<[usize]>,
}

/// Which `geo` entry a client matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GeoMatch {
    Country(usize),
    Continent(usize),
    Default,
}

/// A service compiled against its config: region coordinates resolved, targets listed.
///
/// `repr(C)`, hot fields first: what an answer reads (the scope map, the service's settings,
/// its endpoints inline) lies in a few adjacent cache lines, next to the key of the snapshot's
/// table that holds it; the config's `Service` is behind a pointer, read by the slow paths
/// only (issue 18: with 10,000 services, each separate piece was a cache miss per query).
#[derive(Debug, Clone)]
#[repr(C)]
pub struct CompiledService {
    /// The widest-scope map, once built; shared by services with the same decision function
    /// ([`share_scope_maps`]).
    scope_map: Arc<scope::Slot>,
    /// Number of targets per family (index: [`Family::index`]).
    family_targets: [usize; 2],
    /// Copies of the service's settings that every answer reads.
    max_answers: usize,
    ttl: u32,
    policy: Policy,
    when_all_down: WhenAllDown,
    sticky: bool,
    ecs: bool,
    /// The answer never depends on the client's address (ECS scope 0).
    location_independent: bool,
    /// Some region has a non-zero bias: order by biased km instead of chord length.
    has_bias: bool,
    /// FNV-1a state after the service name and a 0xff separator.
    sticky_basis: u64,
    regions: SmallVec<[CompiledRegion; INLINE_ENDPOINTS]>,
    service: Arc<Service>,
    /// Per family: (region index, target) in config order, for `all`.
    flat_targets: [Box<[(usize, IpAddr)]>; 2],
    config_order: Box<[usize]>,
    failover_order: Box<[usize]>,
    /// The config's regions (shared), for `[nets]` overrides.
    config_regions: Arc<[ConfigRegion]>,
    /// `nearest` only: for each config region in turn, the service's regions in the order
    /// used when a `[nets]` override places the client there (`regions.len()` each).
    nets_orders: Box<[usize]>,
    geo: GeoTable,
}

impl CompiledService {
    /// Compiles `service` (which belongs to `config`).
    pub fn new(service: &Service, config: &Config) -> Self {
        Self::compile(service, &Compiler::new(config))
    }

    /// Compiles `service` with what it shares with the other services of its config.
    pub(crate) fn compile(service: &Service, shared: &Compiler) -> Self {
        let regions: SmallVec<[CompiledRegion; INLINE_ENDPOINTS]> = service
            .endpoints
            .iter()
            .map(|ep| {
                let r = &ep.region;
                let (latitude, longitude, bias_km) =
                    (r.latitude, r.longitude, finite_or_zero(r.bias_km));
                let family = |f: Family| -> SmallVec<[IpAddr; 2]> {
                    ep.addresses
                        .iter()
                        .copied()
                        .filter(|a| Family::of(*a) == f)
                        .collect()
                };
                CompiledRegion {
                    name: ep.region.name.as_str().into(),
                    bias_km,
                    unit: unit_vector(latitude, longitude),
                    weight: ep.weight,
                    priority: ep.priority,
                    check: ep.check_name().map(Into::into),
                    targets: [family(Family::V4), family(Family::V6)],
                }
            })
            .collect();
        let n = regions.len();
        let family_targets = [
            regions.iter().map(|r| r.targets[0].len()).sum(),
            regions.iter().map(|r| r.targets[1].len()).sum(),
        ];
        let flat = |f: usize| -> Box<[(usize, IpAddr)]> {
            regions
                .iter()
                .enumerate()
                .flat_map(|(i, r)| r.targets[f].iter().map(move |&a| (i, a)))
                .collect()
        };
        let flat_targets = [flat(0), flat(1)];
        let config_order: Box<[usize]> = (0..n).collect();
        let mut failover_order: Vec<usize> = (0..n).collect();
        // Stable sort: ties stay in config order.
        failover_order.sort_by_key(|&i| regions[i].priority);
        let nets_orders: Box<[usize]> = if service.policy == Policy::Nearest {
            shared
                .regions
                .iter()
                .flat_map(|r| {
                    let endpoint = regions.iter().position(|c| *c.name == *r.name);
                    let mut rest: Vec<usize> = (0..n).filter(|&i| Some(i) != endpoint).collect();
                    rest.sort_by(|&a, &b| {
                        let ka = arc_km(chord2(&r.unit, &regions[a].unit)) - regions[a].bias_km;
                        let kb = arc_km(chord2(&r.unit, &regions[b].unit)) - regions[b].bias_km;
                        ka.total_cmp(&kb)
                    });
                    endpoint.into_iter().chain(rest)
                })
                .collect()
        } else {
            Box::default()
        };
        let geo = compile_geo(service);
        let has_bias = regions.iter().any(|r| r.bias_km != 0.0);
        let sticky_basis = geometry::fnv1a(
            geometry::fnv1a(geometry::FNV_OFFSET, service.name.as_bytes()),
            &[0xff],
        );
        let location_independent = match service.policy {
            Policy::Failover => true,
            Policy::Weighted => !service.sticky || n == 1,
            Policy::All => !service.sticky,
            Policy::Nearest | Policy::Geo => n == 1,
        };
        Self {
            scope_map: Arc::default(),
            family_targets,
            max_answers: service.max_answers,
            ttl: service.ttl,
            policy: service.policy,
            when_all_down: service.when_all_down,
            sticky: service.sticky,
            ecs: service.ecs,
            location_independent,
            has_bias,
            sticky_basis,
            regions,
            service: Arc::new(service.clone()),
            flat_targets,
            config_order,
            failover_order: failover_order.into(),
            config_regions: shared.regions.clone(),
            nets_orders,
            geo,
        }
    }

    /// Returns the service's config.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Returns the service's `ecs` setting (as `service().ecs`, from the hot fields).
    pub(crate) fn ecs(&self) -> bool {
        self.ecs
    }

    /// Returns the region whose endpoint lists `address` (for per-region answer metrics).
    pub(crate) fn region_of(&self, address: IpAddr) -> Option<&str> {
        self.endpoint_of(address).map(|i| &*self.regions[i].name)
    }

    /// Returns the index (in config order) of the first endpoint that lists `address`.
    pub(crate) fn endpoint_of(&self, address: IpAddr) -> Option<usize> {
        let f = Family::of(address).index();
        self.regions
            .iter()
            .position(|r| r.targets[f].contains(&address))
    }

    /// Decides the answer for `client` asking for `family`. `random` is a uniformly random
    /// number supplied by the caller (used by `weighted` without `sticky`).
    pub fn decide(
        &self,
        client: &Client<'_>,
        family: Family,
        health: &HealthView,
        random: u64,
    ) -> Decision {
        self.run(client, family, health, random, None, &mut NoTrace)
    }

    /// Decides for the client at `addr` (the ECS address, or the resolver's): like locating
    /// `addr` in `geo` and calling [`CompiledService::decide`], but once the service's scope
    /// map is built, its class and scope come from the map and the region order from the
    /// class, without a database lookup (the same answer and scope, by construction).
    pub(crate) fn decide_at<H: HealthSource + ?Sized>(
        &self,
        geo: &Geo,
        addr: IpAddr,
        ecs_source_prefix: Option<u8>,
        family: Family,
        health: &H,
        random: u64,
    ) -> Decision {
        if let Some(d) = self.scope_map.get()
            && let Some((class, scope)) = geo.class_of(&d.map, addr)
            && let Some(order) = d.orders.get(class as usize)
        {
            // Only the order and the scope depend on the location for these services
            // (nearest or geo, not sticky): the rest of the client is a placeholder.
            let located = Located {
                ip: addr,
                location: None,
                region: None,
                source: LocationSource::None,
                prefix_len: scope,
                via: Via::direct(addr),
            };
            let client = Client {
                located: &located,
                ecs_source_prefix,
            };
            let known = Some((&order[..], scope));
            return self.run(&client, family, health, random, known, &mut NoTrace);
        }
        let located = geo.locate(addr);
        let client = Client {
            located: &located,
            ecs_source_prefix,
        };
        self.run(&client, family, health, random, None, &mut NoTrace)
    }

    /// Like [`CompiledService::decide`], with any [`HealthSource`].
    pub fn decide_with<H: HealthSource + ?Sized>(
        &self,
        client: &Client<'_>,
        family: Family,
        health: &H,
        random: u64,
    ) -> Decision {
        self.run(client, family, health, random, None, &mut NoTrace)
    }

    /// Decides like [`CompiledService::decide`] and records why: the client's location, the
    /// region order with distances, every skipped region and target, and the answer. Slower
    /// than `decide` (it allocates); meant for `meridian explain` and `/explain`.
    pub fn explain(
        &self,
        client: &Client<'_>,
        family: Family,
        health: &HealthView,
        random: u64,
    ) -> Explanation {
        self.explain_with(client, family, health, random)
    }

    /// Like [`CompiledService::explain`], with any [`HealthSource`].
    pub fn explain_with<H: HealthSource + ?Sized>(
        &self,
        client: &Client<'_>,
        family: Family,
        health: &H,
        random: u64,
    ) -> Explanation {
        explain::explain(self, client, family, health, random)
    }

    /// The decision itself, generic over what records it. `known` is the region order and
    /// scope when the scope map already gave them (nearest and geo only).
    fn run<H: HealthSource + ?Sized, S: Sink>(
        &self,
        client: &Client<'_>,
        family: Family,
        health: &H,
        random: u64,
        known: Option<(&[usize], u8)>,
        sink: &mut S,
    ) -> Decision {
        let located = client.located;
        // Spill-over (issue 16) makes the answer depend on the client's subnet hash: every
        // answer that looked at a spilling region is scoped to that subnet (/24, /56) at most.
        let decision = |outcome, spill_seen: bool| {
            let scope = known.map_or_else(|| self.scope(located), |(_, scope)| scope);
            Decision {
                outcome,
                ttl: self.ttl,
                scope: if spill_seen {
                    scope.max(geometry::sticky_prefix(located.ip))
                } else {
                    scope
                },
            }
        };
        let fam = family.index();
        if self.family_targets[fam] == 0 {
            sink.note("the service has no target of this family");
            return decision(Outcome::NoData, false);
        }
        // The name lives with the service's config, a cache line the answer need not read
        // when no check reads load (issue 18).
        let load = if health.has_loads() {
            health.service_load(&self.service.name)
        } else {
            None
        };
        let spill = match (load, self.policy) {
            (Some(l), Policy::Nearest | Policy::Geo | Policy::Failover)
                if l.regions.iter().any(|r| r.spill_fraction > 0.0) =>
            {
                Some(Spill {
                    load: l,
                    point: spill_point(geometry::sticky_hash(self.sticky_basis, located.ip)),
                })
            }
            _ => None,
        };
        let mut spill_seen = false;
        let seed = if self.sticky {
            geometry::sticky_hash(self.sticky_basis, located.ip)
        } else {
            random
        };
        let max = self.max_answers.max(1);
        let mut out = Vec::with_capacity(max.min(self.family_targets[fam]));
        // `all`: where the walk over the targets starts (sticky services only).
        let start = if self.policy == Policy::All && self.sticky {
            below(seed, self.family_targets[fam] as u64) as usize
        } else {
            0
        };
        let mut inline = [0.0f64; INLINE_REGIONS];
        let mut heap;
        let keys: &mut [f64] = if self.regions.len() <= INLINE_REGIONS {
            &mut inline[..self.regions.len()]
        } else {
            heap = vec![0.0f64; self.regions.len()];
            &mut heap
        };
        for pass in Pass::ALL {
            if pass != Pass::Healthy && self.when_all_down != WhenAllDown::All {
                break;
            }
            sink.pass(pass);
            let mut p = Pick {
                fam,
                pass,
                health,
                max,
                out: &mut out,
                sink: &mut *sink,
                load,
                spill_seen: &mut spill_seen,
            };
            let has_candidate = match self.policy {
                Policy::Weighted => {
                    self.fill_weighted(seed, &mut p);
                    true
                }
                Policy::All => {
                    self.fill_all(start, &mut p);
                    true
                }
                _ => {
                    let order = match known {
                        Some((order, _)) => Order::list(None, order),
                        None => self.order(located, &mut *keys),
                    };
                    match (&spill, pass) {
                        // Spill-over only moves clients between usable regions: fail-open
                        // passes (nothing usable) keep the plain order.
                        (Some(sp), Pass::Healthy) => self.fill_spilling(order, sp, &mut p),
                        _ => self.fill_ordered(order, &mut p),
                    }
                }
            };
            if !has_candidate {
                sink.note("no candidate region has a target of this family");
                return decision(Outcome::NoData, spill_seen);
            }
            if !out.is_empty() {
                return decision(Outcome::Addresses(out), spill_seen);
            }
        }
        match self.when_all_down {
            WhenAllDown::Servfail => decision(Outcome::ServFail, spill_seen),
            // `All` reaches here only if the last pass found nothing, which cannot happen once
            // a candidate has a target; NODATA is the safe answer either way.
            WhenAllDown::Empty | WhenAllDown::All => decision(Outcome::NoData, spill_seen),
        }
    }

    /// Returns the ECS scope prefix for a client (see the module docs).
    fn scope(&self, located: &Located) -> u8 {
        if self.location_independent {
            0
        } else if self.sticky {
            located.via.scope(geometry::sticky_prefix(located.ip))
        } else if let Some(widest) = self.scope_map.get().and_then(|d| d.map.scope(located)) {
            widest
        } else {
            let bits = if located.ip.is_ipv4() { 32 } else { 128 };
            located.via.scope(located.prefix_len.min(bits))
        }
    }

    /// Returns true once the widest-scope map is in use.
    pub(crate) fn has_scope_map(&self) -> bool {
        self.scope_map.get().is_some()
    }

    /// Returns a text that is equal for two services exactly when they order regions the same
    /// for every location (their decision functions), or `None` when the service needs no
    /// scope map (its scope does not come from the location, or it ignores ECS).
    fn decision_fingerprint(&self) -> Option<String> {
        if self.location_independent || self.sticky || !self.ecs {
            return None;
        }
        let nets: Vec<(&str, Option<usize>, &[usize])> = (0..self.config_regions.len())
            .map(|i| {
                let o = self.nets_order_at(i);
                (&*self.config_regions[i].name, o.endpoint, o.order)
            })
            .collect();
        match self.policy {
            Policy::Nearest => {
                let regions: Vec<(&str, Unit, f64)> = self
                    .regions
                    .iter()
                    .map(|r| (&*r.name, r.unit, r.bias_km))
                    .collect();
                Some(format!("nearest {regions:?} {nets:?}"))
            }
            Policy::Geo => {
                let names: Vec<&str> = self.regions.iter().map(|r| &*r.name).collect();
                let g = &self.geo;
                let entries: Vec<&[usize]> = g.entries.iter().map(|e| &*e.regions).collect();
                Some(format!(
                    "geo {names:?} {:?} {:?} {entries:?} {:?} {nets:?}",
                    g.countries, g.continents, g.default
                ))
            }
            Policy::Failover | Policy::Weighted | Policy::All => None,
        }
    }

    /// Writes the region order (before health) for `located` into `out`: the decision the
    /// scope map classifies. `keys` holds one slot per region.
    fn decision_key(&self, located: &Located, keys: &mut [f64], out: &mut Vec<usize>) {
        out.clear();
        out.extend(self.order(located, keys));
    }

    /// Returns the precomputed order for a client placed by a `[nets]` override.
    fn nets_order(&self, located: &Located) -> Option<NetsOrder<'_>> {
        let name = nets_region(located)?;
        let i = self.config_regions.iter().position(|r| *r.name == *name)?;
        Some(self.nets_order_at(i))
    }

    /// Returns the order for a client placed in the config's `i`th region.
    fn nets_order_at(&self, i: usize) -> NetsOrder<'_> {
        let r = &self.config_regions[i];
        let n = self.regions.len();
        NetsOrder {
            latitude: r.latitude,
            longitude: r.longitude,
            endpoint: self.regions.iter().position(|c| *c.name == *r.name),
            order: self.nets_orders.get(i * n..(i + 1) * n).unwrap_or_default(),
        }
    }

    /// Returns the region order of the ordered policies (all but `weighted`) for a client.
    /// `keys` (one slot per region) is scratch space for `nearest`.
    fn order<'a>(&'a self, located: &Located, keys: &'a mut [f64]) -> Order<'a> {
        match self.policy {
            Policy::Nearest => {
                if let Some(o) = self.nets_order(located) {
                    return Order::list(None, o.order);
                }
                let Some(client) = position(located).map(|(lat, lon)| unit_vector(lat, lon)) else {
                    return Order::list(None, &self.config_order);
                };
                for (k, r) in keys.iter_mut().zip(self.regions.iter()) {
                    let c2 = chord2(&client, &r.unit);
                    // Without bias the chord length orders regions as well as the arc does,
                    // and skips one asin per region.
                    *k = if self.has_bias {
                        arc_km(c2) - r.bias_km
                    } else {
                        c2
                    };
                }
                let left = keys.len();
                Order::Nearest { keys, left }
            }
            Policy::Failover => Order::list(None, &self.failover_order),
            Policy::Geo => {
                let first = self.nets_order(located).and_then(|o| o.endpoint);
                let (_, list) = self.geo_match(located);
                Order::list(first, list)
            }
            Policy::Weighted | Policy::All => Order::list(None, &self.config_order),
        }
    }

    /// Returns the `geo` entry a client matches and its region list.
    fn geo_match(&self, located: &Located) -> (GeoMatch, &[usize]) {
        let geo = &self.geo;
        if let Some(loc) = &located.location {
            if let Some(i) = country_code(loc).and_then(|c| lookup(&geo.countries, c)) {
                return (GeoMatch::Country(i), &geo.entries[i].regions);
            }
            if let Some(i) = continent_code(loc).and_then(|c| lookup(&geo.continents, c)) {
                return (GeoMatch::Continent(i), &geo.entries[i].regions);
            }
        }
        (GeoMatch::Default, &geo.default)
    }

    /// Fills `out` from regions in `order`; returns whether some region had a target of the
    /// family.
    fn fill_ordered<H: HealthSource + ?Sized, S: Sink>(
        &self,
        order: Order<'_>,
        p: &mut Pick<'_, H, S>,
    ) -> bool {
        let mut seen = false;
        for i in order {
            if !self.may_serve(i, p, &mut seen) {
                continue;
            }
            if self.fill_region(i, p) {
                break;
            }
        }
        seen
    }

    /// Like [`CompiledService::fill_ordered`] while some region spills (issue 16): a region
    /// whose spill fraction is above the client's spill point is passed over at first and
    /// taken only after every later region, so the client gets its next usable region, and
    /// the spilled region still when nothing else is usable (down beats load, load never
    /// empties an answer).
    fn fill_spilling<H: HealthSource + ?Sized, S: Sink>(
        &self,
        order: Order<'_>,
        spill: &Spill<'_>,
        p: &mut Pick<'_, H, S>,
    ) -> bool {
        let mut seen = false;
        // Spilled regions, in order: a few on the stack (no allocation per answer), the rest
        // (a client spilled from more than 8 regions at once) on the heap.
        let mut inline = [0usize; 8];
        let mut spilled = 0;
        let mut more: Vec<usize> = Vec::new();
        for i in order {
            if !self.may_serve(i, p, &mut seen) {
                continue;
            }
            let region = &self.regions[i];
            if let Some(r) = spill
                .load
                .region(i, &region.name)
                .filter(|r| r.spill_fraction > 0.0)
            {
                *p.spill_seen = true;
                let moved = spill.point < r.spill_fraction;
                p.sink.spilled(i, r, spill.point, moved);
                if moved {
                    match inline.get_mut(spilled) {
                        Some(slot) => {
                            *slot = i;
                            spilled += 1;
                        }
                        None => more.push(i),
                    }
                    continue;
                }
            }
            if self.fill_region(i, p) {
                return seen;
            }
        }
        for &i in inline[..spilled].iter().chain(&more) {
            if self.fill_region(i, p) {
                break;
            }
        }
        seen
    }

    /// Returns whether region `i` may serve this pass: it has targets of the family (then
    /// `seen` is set: the family exists in this order) and is not drained when the pass skips
    /// drained regions. A region passed over is told to the sink with the reason.
    fn may_serve<H: HealthSource + ?Sized, S: Sink>(
        &self,
        i: usize,
        p: &mut Pick<'_, H, S>,
        seen: &mut bool,
    ) -> bool {
        let region = &self.regions[i];
        if region.targets[p.fam].is_empty() {
            p.sink.region_skipped(i, SkipReason::NoTargetOfFamily);
            return false;
        }
        *seen = true;
        if p.pass.skips_drained() && p.health.is_drained(&region.name) {
            p.sink.region_skipped(i, SkipReason::Drained);
            return false;
        }
        true
    }

    /// Appends the region's targets of the family that the pass allows; returns true once
    /// `out` holds `max` addresses.
    fn fill_region<H: HealthSource + ?Sized, S: Sink>(
        &self,
        i: usize,
        p: &mut Pick<'_, H, S>,
    ) -> bool {
        let region = &self.regions[i];
        for &address in region.targets[p.fam].iter() {
            if p.out.len() >= p.max {
                return true;
            }
            self.offer_target(i, address, p);
        }
        p.out.len() >= p.max
    }

    /// Takes `address` of region `i` into `out` unless `pass` passes it over (withdrawn by a
    /// drain or down, as far as the pass looks); reports either to `sink`.
    fn offer_target<H: HealthSource + ?Sized, S: Sink>(
        &self,
        i: usize,
        address: IpAddr,
        p: &mut Pick<'_, H, S>,
    ) {
        match self.skip_reason(i, address, p) {
            Err(reason) => p.sink.target_skipped(i, address, reason),
            Ok(state) => {
                p.out.push(address);
                p.sink.picked(i, address, state);
            }
        }
    }

    /// Returns the state of `address` of region `i` when `pass` may take it, or why it
    /// passes it over: [`withdrawal`] decides, the pass chooses which of its reasons count.
    fn skip_reason<H: HealthSource + ?Sized, S: Sink>(
        &self,
        i: usize,
        address: IpAddr,
        p: &Pick<'_, H, S>,
    ) -> Result<State, SkipReason> {
        let region = &self.regions[i];
        let w = withdrawal(p.health, &region.name, address, region.check.as_deref());
        if p.pass.skips_drained() && w.drain.is_some() {
            Err(SkipReason::Drained)
        } else if p.pass.skips_down() && w.state == State::Down {
            Err(SkipReason::Down)
        } else {
            Ok(w.state)
        }
    }

    /// `weighted`: draws regions by weight without replacement, passing over the unusable
    /// ones, and fills `out` from each region drawn. Weight 0 regions are drawn (uniformly)
    /// only when no region of positive weight is usable.
    ///
    /// Drawing first and checking health after costs one health lookup in the healthy case,
    /// and draws from exactly the distribution of "by weight among the usable". It also keeps
    /// sticky clients in place when an unrelated region fails: the first draw of a subnet
    /// depends only on the configured weights.
    fn fill_weighted<H: HealthSource + ?Sized, S: Sink>(
        &self,
        mut seed: u64,
        p: &mut Pick<'_, H, S>,
    ) {
        let n = self.regions.len();
        let mut inline = [false; INLINE_REGIONS];
        let mut heap;
        // Per region: still to be drawn in the current round.
        let open: &mut [bool] = if n <= INLINE_REGIONS {
            &mut inline[..n]
        } else {
            heap = vec![false; n];
            &mut heap
        };
        let mut any_usable = false;
        let fam = p.fam;
        for zero_round in [false, true] {
            if zero_round && any_usable {
                break;
            }
            // The weight a region has in this round (0: not drawn in it). With load (issue
            // 16) each weight is scaled by its region's free capacity, in thousandths: a full
            // region weighs 0, drawn only when no region with free capacity is usable.
            let load = p.load;
            let scaled = |i: usize, r: &CompiledRegion| -> u64 {
                let Some(l) = load else {
                    return u64::from(r.weight);
                };
                let free = l.region(i, &r.name).and_then(|x| x.free).unwrap_or(1.0);
                (f64::from(r.weight) * 1000.0 * free).round() as u64
            };
            let weight = |i: usize, r: &CompiledRegion| -> u64 {
                match (zero_round, scaled(i, r)) {
                    (_, _) if r.targets[fam].is_empty() => 0,
                    (false, w) => w,
                    (true, 0) => 1,
                    (true, _) => 0,
                }
            };
            let mut total = 0u64;
            for (i, (o, r)) in open.iter_mut().zip(self.regions.iter()).enumerate() {
                let w = weight(i, r);
                *o = w > 0;
                total += w;
            }
            while total > 0 && p.out.len() < p.max {
                let mut x = below(seed, total);
                seed = splitmix64(seed);
                let mut chosen = None;
                for (i, r) in self.regions.iter().enumerate() {
                    let w = if open[i] { weight(i, r) } else { 0 };
                    if x < w {
                        chosen = Some(i);
                        break;
                    }
                    x -= w;
                }
                // `x < total`, the sum of the open weights: some region is always chosen.
                let Some(i) = chosen else { break };
                open[i] = false;
                total -= weight(i, &self.regions[i]);
                let region = &self.regions[i];
                if p.pass.skips_drained() && p.health.is_drained(&region.name) {
                    p.sink.region_skipped(i, SkipReason::Drained);
                    continue;
                }
                if region.targets[p.fam]
                    .iter()
                    .all(|&a| self.skip_reason(i, a, p).is_err())
                {
                    p.sink.region_skipped(i, SkipReason::AllTargetsDown);
                    continue;
                }
                any_usable = true;
                if self.fill_region(i, p) {
                    break;
                }
            }
        }
    }

    /// `all`: walks the family's targets in config order, starting at `start` and wrapping,
    /// and takes the usable ones up to `max`.
    ///
    /// Sticky services start at a position drawn from the subnet hash over the configured
    /// targets (not the usable ones), so a subnet's answer moves only when one of its own
    /// targets fails.
    fn fill_all<H: HealthSource + ?Sized, S: Sink>(&self, start: usize, p: &mut Pick<'_, H, S>) {
        let flat = &self.flat_targets[p.fam];
        if start > 0 {
            p.sink.rotated(start);
        }
        let (tail, head) = flat.split_at(start.min(flat.len()));
        for &(i, address) in head.iter().chain(tail) {
            if p.out.len() >= p.max {
                return;
            }
            self.offer_target(i, address, p);
        }
    }
}

/// A decision's spill-over (issue 16): the service's region loads and the client's point.
struct Spill<'a> {
    load: &'a ServiceLoad,
    /// The client's subnet hash in [0, 1): spilled from a region when below its fraction.
    point: f64,
}

/// One pass of a decision being filled: what every step reads, and where it writes.
struct Pick<'a, H: ?Sized, S> {
    /// The family's index ([`Family::index`]).
    fam: usize,
    pass: Pass,
    health: &'a H,
    /// Addresses wanted (`max_answers`).
    max: usize,
    /// The addresses taken so far.
    out: &'a mut Vec<IpAddr>,
    sink: &'a mut S,
    /// The service's region loads, when some endpoint reads load (`weighted` scales by them).
    load: Option<&'a ServiceLoad>,
    /// Set when a spilling region was met: the answer depends on the client's subnet.
    spill_seen: &'a mut bool,
}

/// Region indices in policy order.
enum Order<'a> {
    /// `first` (a `[nets]` region), then `rest` without `first`.
    List {
        first: Option<usize>,
        skip: Option<usize>,
        rest: std::slice::Iter<'a, usize>,
    },
    /// The nearest region not yet yielded, found lazily: a healthy answer usually needs one
    /// scan, not a sort. Yielded slots are set to infinity (every real key is finite).
    Nearest { keys: &'a mut [f64], left: usize },
}

impl<'a> Order<'a> {
    fn list(first: Option<usize>, rest: &'a [usize]) -> Self {
        Order::List {
            first,
            skip: None,
            rest: rest.iter(),
        }
    }
}

impl Iterator for Order<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Order::List { first, skip, rest } => {
                if let Some(f) = first.take() {
                    *skip = Some(f);
                    return Some(f);
                }
                rest.find(|&&i| Some(i) != *skip).copied()
            }
            Order::Nearest { keys, left } => {
                if *left == 0 {
                    return None;
                }
                let mut best = None;
                let mut best_key = f64::INFINITY;
                for (i, &k) in keys.iter().enumerate() {
                    if k < best_key {
                        best_key = k;
                        best = Some(i);
                    }
                }
                let i = best?;
                keys[i] = f64::INFINITY;
                *left -= 1;
                Some(i)
            }
        }
    }
}

/// Compiles the `geo` map: names to endpoint indices, two-letter keys to sorted codes.
fn compile_geo(service: &Service) -> GeoTable {
    // Validation resolved the names to endpoint indices, without repeats.
    let indices = |list: &[usize]| -> Box<[usize]> { list.into() };
    let mut table = GeoTable {
        default: indices(&service.geo.default),
        ..GeoTable::default()
    };
    for (key, list) in &service.geo.entries {
        let entry = table.entries.len();
        let (label, country, continent) = match key {
            crate::config::GeoKey::Country(c) => (format!("country:{c}"), Some(c), None),
            crate::config::GeoKey::Continent(c) => (format!("continent:{c}"), None, Some(c)),
            crate::config::GeoKey::Either(c) => (c.clone(), Some(c), Some(c)),
        };
        table.entries.push(GeoEntry {
            label,
            regions: indices(list),
        });
        // The first entry for a code, in file order, wins.
        for (code, map) in [
            (country, &mut table.countries),
            (continent, &mut table.continents),
        ] {
            if let Some(code) = code.and_then(|c| code2(c))
                && !map.iter().any(|(c, _)| *c == code)
            {
                map.push((code, entry));
            }
        }
    }
    table.countries.sort_unstable();
    table.continents.sort_unstable();
    table
}

/// Returns a two-letter code as a number (case-insensitive), or `None` for anything else.
fn code2(s: &str) -> Option<u16> {
    match s.as_bytes() {
        [a, b] => Some(u16::from_be_bytes([
            a.to_ascii_uppercase(),
            b.to_ascii_uppercase(),
        ])),
        _ => None,
    }
}

/// Finds `code` in a sorted code table.
fn lookup(table: &[(u16, usize)], code: u16) -> Option<usize> {
    table
        .binary_search_by_key(&code, |&(c, _)| c)
        .ok()
        .map(|i| table[i].1)
}

fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

// The only places that read `geo`'s types: kept together so that a change of field types
// there (e.g. codes as `[u8; 2]`) is a change here only.

/// Returns the client's `[nets]` override region.
fn nets_region(located: &Located) -> Option<&str> {
    located.region.as_deref()
}

/// Returns the client's coordinates in degrees, when known and finite.
fn position(located: &Located) -> Option<(f64, f64)> {
    let (lat, lon) = located.location.as_ref()?.coordinates()?;
    (lat.is_finite() && lon.is_finite()).then_some((lat, lon))
}

fn country_code(loc: &Location) -> Option<u16> {
    loc.country.as_deref().and_then(code2)
}

fn continent_code(loc: &Location) -> Option<u16> {
    loc.continent.as_deref().and_then(code2)
}

fn country_str(loc: &Location) -> Option<&str> {
    loc.country.as_deref()
}

fn continent_str(loc: &Location) -> Option<&str> {
    loc.continent.as_deref()
}
