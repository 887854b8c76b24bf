//! Explaining a decision: the same code path as `decide`, with a sink that records every step.
//!
//! [`Explanation`] serializes to the JSON of `GET /explain` and displays as the multi-line text
//! of `meridian explain`. It is built only on request; `decide` never pays for it.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use super::geometry::{arc_km, chord2, sticky_prefix, sticky_subnet, unit_vector};
use super::{
    Client, CompiledRegion, CompiledService, Decision, Family, GeoMatch, HealthSource, Outcome,
    Pass, Sink, SkipReason,
};
use crate::config::Policy;
use crate::geo::LocationSource;
use crate::health::State;

/// Why a client got its answer: the input, every step, and the decision.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The service name (`api.example.net.`).
    pub service: String,
    /// The policy's config spelling (`nearest`, `failover`, ...).
    pub policy: &'static str,
    /// The queried family (`A` or `AAAA`).
    pub family: Family,
    /// Addresses per answer.
    pub max_answers: usize,
    /// The config spelling of `when_all_down`.
    pub when_all_down: &'static str,
    /// What is known about the client.
    pub client: ClientTrace,
    /// The sticky subnet (`203.0.113.0/24`) when the service is sticky.
    pub sticky_subnet: Option<String>,
    /// The client's spill hash in [0, 1) when a region of the service reads load and the
    /// policy spills (`nearest`, `geo`, `failover`; issue 16): the client is moved from a
    /// region whose spill fraction exceeds it. Its subnet (/24, /56) is `spill_subnet`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_hash: Option<f64>,
    /// The subnet the spill hash is taken over (`87.32.21.0/24`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spill_subnet: Option<String>,
    /// The `geo` entry the client matched (`country:DE`, `EU`, `default`), for policy `geo`.
    pub geo_match: Option<String>,
    /// The candidate regions in policy order (`weighted`: config order, drawn by weight).
    pub order: Vec<RegionTrace>,
    /// Each answering pass that ran, with its steps.
    pub passes: Vec<PassTrace>,
    /// Remarks that are not tied to a region (e.g. no target of the family).
    pub notes: Vec<&'static str>,
    /// The decision, identical to what `decide` returns for the same input.
    pub decision: Decision,
}

/// What is known about the client.
#[derive(Debug, Clone, Serialize)]
pub struct ClientTrace {
    /// The queried address (the ECS subnet address, or the resolver's address).
    pub queried: IpAddr,
    /// Which rule located it: `the address itself`, or the IPv4-mapped, IPv4-compatible,
    /// NAT64, 6to4 or Teredo network whose embedded IPv4 address was located.
    pub located_by: String,
    /// The located address: `queried`, or the IPv4 address it embeds.
    pub ip: IpAddr,
    /// Which source placed the client: `nets`, `database` or `none`.
    pub source: LocationSource,
    /// The ECS source prefix, when the address came from a client-subnet option.
    pub ecs_source_prefix: Option<u8>,
    /// The network around `ip` on which the location is the same, in bits.
    pub prefix_len: u8,
    /// The region of a matching `[nets]` override.
    pub nets_region: Option<String>,
    /// ISO 3166 country code.
    pub country: Option<String>,
    /// Continent code.
    pub continent: Option<String>,
    /// Degrees north.
    pub latitude: Option<f64>,
    /// Degrees east.
    pub longitude: Option<f64>,
    /// True when the scope came from the service's widest-scope map (false: the matched
    /// network's scope, before the map is built or where it cannot tell).
    pub scope_map: bool,
}

/// One candidate region, in policy order.
#[derive(Debug, Clone, Serialize)]
pub struct RegionTrace {
    /// The region's name.
    pub region: String,
    /// Great-circle distance from the client (or from its `[nets]` region), km; `nearest` only.
    pub distance_km: Option<f64>,
    /// The region's bias, km (subtracted from the distance).
    pub bias_km: f64,
    /// `distance_km - bias_km`: what `nearest` orders by.
    pub effective_km: Option<f64>,
    /// `failover` priority (lower first).
    pub priority: u32,
    /// `weighted` weight.
    pub weight: u32,
    /// True when a `[nets]` override put this region first.
    pub nets_override: bool,
}

/// One answering pass and its steps, in order.
#[derive(Debug, Clone, Serialize)]
pub struct PassTrace {
    /// Which pass.
    pub pass: Pass,
    /// What happened.
    pub steps: Vec<Step>,
}

/// One step of a pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A region was passed over.
    SkipRegion {
        /// The region.
        region: String,
        /// Why.
        reason: SkipReason,
    },
    /// A target was passed over.
    SkipTarget {
        /// The target's region.
        region: String,
        /// The target.
        address: IpAddr,
        /// Why.
        reason: SkipReason,
    },
    /// A target was added to the answer.
    Pick {
        /// The target's region.
        region: String,
        /// The target.
        address: IpAddr,
        /// Its health state (`unknown` counts as up).
        state: State,
    },
    /// Sticky `all`: the walk over the family's targets (config order) starts here.
    Rotate {
        /// The first position, 0-based.
        start: usize,
    },
    /// A region above its high watermark spills a share of its clients to their next region
    /// (issue 16); `moved` says whether this client is one of them.
    Spill {
        /// The region.
        region: String,
        /// Its load (mean of its usable targets that reported one); `None`: unknown.
        load: Option<f64>,
        /// The load above which it spills.
        high_watermark: f64,
        /// The share of its clients moved.
        fraction: f64,
        /// This client's subnet hash in [0, 1): moved when below `fraction`.
        client_hash: f64,
        /// True when this client is answered with its next region instead (the region is
        /// taken only if no later one is usable).
        moved: bool,
        /// The same in words: "eu-west at 0.93 > 0.80, 14 % of its clients moved; this
        /// client's hash 0.07 < 0.14: answered with its next usable region".
        why: String,
    },
}

/// Records steps into passes.
struct TraceSink<'a> {
    regions: &'a [CompiledRegion],
    passes: Vec<PassTrace>,
    notes: Vec<&'static str>,
}

impl TraceSink<'_> {
    fn push(&mut self, step: Step) {
        if let Some(p) = self.passes.last_mut() {
            p.steps.push(step);
        }
    }

    fn name(&self, i: usize) -> String {
        self.regions[i].name.to_string()
    }
}

impl Sink for TraceSink<'_> {
    fn pass(&mut self, pass: Pass) {
        self.passes.push(PassTrace {
            pass,
            steps: Vec::new(),
        });
    }

    fn region_skipped(&mut self, region: usize, reason: SkipReason) {
        let region = self.name(region);
        self.push(Step::SkipRegion { region, reason });
    }

    fn target_skipped(&mut self, region: usize, address: IpAddr, reason: SkipReason) {
        let region = self.name(region);
        self.push(Step::SkipTarget {
            region,
            address,
            reason,
        });
    }

    fn picked(&mut self, region: usize, address: IpAddr, state: State) {
        let region = self.name(region);
        self.push(Step::Pick {
            region,
            address,
            state,
        });
    }

    fn rotated(&mut self, start: usize) {
        self.push(Step::Rotate { start });
    }

    fn spilled(
        &mut self,
        region: usize,
        load: &crate::health::RegionLoad,
        point: f64,
        moved: bool,
    ) {
        let region = self.name(region);
        let why = spill_why(&region, load, point, moved);
        self.push(Step::Spill {
            region,
            why,
            load: load.load,
            high_watermark: load.high_watermark,
            fraction: load.spill_fraction,
            client_hash: point,
            moved,
        });
    }

    fn note(&mut self, note: &'static str) {
        self.notes.push(note);
    }
}

/// Says in words why a client was or was not moved from a spilling region.
fn spill_why(region: &str, load: &crate::health::RegionLoad, point: f64, moved: bool) -> String {
    let (high, fraction) = (load.high_watermark, load.spill_fraction);
    let at = match load.load {
        Some(l) if l > high => format!("at {l:.2} > {high:.2}"),
        Some(l) => {
            format!("at {l:.2} <= {high:.2} (under its mark again: the share holds or shrinks)")
        }
        None => "load unknown (the share shrinks back to 0)".to_string(),
    };
    let pct = fraction * 100.0;
    if moved {
        format!(
            "{region} {at}, {pct:.0} % of its clients moved; this client's hash {point:.2} < \
             {fraction:.2}: answered with its next usable region"
        )
    } else {
        format!(
            "{region} {at}, {pct:.0} % of its clients moved; this client's hash {point:.2} >= \
             {fraction:.2}: stays"
        )
    }
}

/// Decides for `client` and records why (see [`CompiledService::explain`]).
pub(super) fn explain<H: HealthSource + ?Sized>(
    svc: &CompiledService,
    client: &Client<'_>,
    family: Family,
    health: &H,
    random: u64,
) -> Explanation {
    let mut sink = TraceSink {
        regions: &svc.regions,
        passes: Vec::new(),
        notes: Vec::new(),
    };
    let decision = svc.run(client, family, health, random, None, &mut sink);
    if sink
        .passes
        .iter()
        .flat_map(|p| &p.steps)
        .any(|s| matches!(s, Step::Spill { .. }))
    {
        sink.notes.push(
            "a region spills (load above its high watermark): the answer depends on the \
             client's /24 or /56, so the ECS scope is at least that",
        );
    }
    let located = client.located;
    let service = &svc.service;
    let loc = located.location.as_ref();

    let nets = svc.nets_order(located);
    let order: Vec<usize> = match service.policy {
        Policy::Weighted | Policy::All => svc.config_order.to_vec(),
        _ => {
            let mut keys = vec![0.0; svc.regions.len()];
            svc.order(located, &mut keys).collect()
        }
    };
    // Distances only matter to `nearest`: from the `[nets]` region, else from the client.
    let origin = match (service.policy, nets) {
        (Policy::Nearest, Some(o)) => Some(unit_vector(o.latitude, o.longitude)),
        (Policy::Nearest, None) => super::position(located).map(|(a, b)| unit_vector(a, b)),
        _ => None,
    };
    let nets_first = match service.policy {
        Policy::Nearest | Policy::Geo => nets.and_then(|o| o.endpoint),
        _ => None,
    };
    let order = order
        .into_iter()
        .map(|i| {
            let r = &svc.regions[i];
            let distance_km = origin.map(|o| arc_km(chord2(&o, &r.unit)));
            RegionTrace {
                region: r.name.to_string(),
                distance_km,
                bias_km: r.bias_km,
                effective_km: distance_km.map(|d| d - r.bias_km),
                priority: r.priority,
                weight: r.weight,
                nets_override: nets_first == Some(i),
            }
        })
        .collect();
    let geo_match = (service.policy == Policy::Geo).then(|| match svc.geo_match(located).0 {
        GeoMatch::Country(i) | GeoMatch::Continent(i) => svc.geo.entries[i].label.clone(),
        GeoMatch::Default => "default".to_string(),
    });
    let spills = matches!(
        service.policy,
        Policy::Nearest | Policy::Geo | Policy::Failover
    ) && service.endpoints.iter().any(|e| e.has_load());
    let spill_hash = spills.then(|| {
        crate::health::spill::spill_point(super::geometry::sticky_hash(
            svc.sticky_basis,
            located.ip,
        ))
    });
    let spill_subnet = spills.then(|| {
        format!(
            "{}/{}",
            sticky_subnet(located.ip),
            sticky_prefix(located.ip)
        )
    });
    let sticky_subnet = service.sticky.then(|| {
        format!(
            "{}/{}",
            sticky_subnet(located.ip),
            sticky_prefix(located.ip)
        )
    });
    Explanation {
        service: service.name.clone(),
        policy: service.policy.as_str(),
        family,
        max_answers: service.max_answers,
        when_all_down: service.when_all_down.as_str(),
        client: ClientTrace {
            queried: located.via.queried,
            located_by: located.via.to_string(),
            ip: located.ip,
            source: located.source,
            ecs_source_prefix: client.ecs_source_prefix,
            prefix_len: located.prefix_len,
            nets_region: super::nets_region(located).map(str::to_string),
            country: loc.and_then(super::country_str).map(str::to_string),
            continent: loc.and_then(super::continent_str).map(str::to_string),
            latitude: loc.and_then(|l| l.latitude),
            longitude: loc.and_then(|l| l.longitude),
            scope_map: svc.has_scope_map(),
        },
        sticky_subnet,
        spill_hash,
        spill_subnet,
        geo_match,
        order,
        passes: sink.passes,
        notes: sink.notes,
        decision,
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {}: policy {}, max_answers {}, when_all_down {}",
            self.service,
            self.family.as_str(),
            self.policy,
            self.max_answers,
            self.when_all_down
        )?;
        let c = &self.client;
        write!(f, "client {}", c.queried)?;
        if let Some(p) = c.ecs_source_prefix {
            write!(f, " (ECS /{p})")?;
        }
        if c.queried != c.ip {
            write!(f, ", located by {} as {}", c.located_by, c.ip)?;
        }
        write!(f, ": source {}", format!("{:?}", c.source).to_lowercase())?;
        if let Some(r) = &c.nets_region {
            write!(f, ", nets region {r}")?;
        }
        if let Some(x) = &c.country {
            write!(f, ", country {x}")?;
        }
        if let Some(x) = &c.continent {
            write!(f, ", continent {x}")?;
        }
        if let (Some(lat), Some(lon)) = (c.latitude, c.longitude) {
            write!(f, ", at {lat:.2},{lon:.2}")?;
        }
        writeln!(f, ", network /{}", c.prefix_len)?;
        if let Some(s) = &self.sticky_subnet {
            writeln!(f, "sticky subnet {s}")?;
        }
        if let (Some(h), Some(n)) = (self.spill_hash, &self.spill_subnet) {
            writeln!(
                f,
                "spill hash {h:.3} (of {n}): moved from a region over its high watermark once \
                 more than {:.1} % of its clients are",
                h * 100.0
            )?;
        }
        if let Some(g) = &self.geo_match {
            writeln!(f, "geo entry {g}")?;
        }
        let how = match self.policy {
            "weighted" => " (drawn by weight)",
            "failover" => " (by priority)",
            _ => "",
        };
        writeln!(f, "regions{how}:")?;
        for (n, r) in self.order.iter().enumerate() {
            write!(f, "  {}. {}", n + 1, r.region)?;
            if let (Some(d), Some(e)) = (r.distance_km, r.effective_km) {
                write!(f, " {e:.0} km")?;
                if r.bias_km != 0.0 {
                    write!(f, " ({d:.0} km, bias {:.0} km)", r.bias_km)?;
                }
            }
            match self.policy {
                "failover" => write!(f, " priority {}", r.priority)?,
                "weighted" => write!(f, " weight {}", r.weight)?,
                _ => {}
            }
            if r.nets_override {
                write!(f, " [nets override]")?;
            }
            writeln!(f)?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        for p in &self.passes {
            writeln!(f, "pass: {}", p.pass.describe())?;
            for s in &p.steps {
                match s {
                    Step::SkipRegion { region, reason } => {
                        writeln!(f, "  skip region {region}: {}", reason.describe())?
                    }
                    Step::SkipTarget {
                        region,
                        address,
                        reason,
                    } => writeln!(f, "  skip {address} ({region}): {}", reason.describe())?,
                    Step::Pick {
                        region,
                        address,
                        state,
                    } => writeln!(
                        f,
                        "  pick {address} ({region}, {})",
                        format!("{state:?}").to_lowercase()
                    )?,
                    Step::Rotate { start } => {
                        writeln!(f, "  start at target {} (sticky rotation)", start + 1)?
                    }
                    Step::Spill { why, .. } => writeln!(f, "  spill: {why}")?,
                }
            }
        }
        let d = &self.decision;
        match &d.outcome {
            Outcome::Addresses(a) => {
                let list: Vec<String> = a.iter().map(ToString::to_string).collect();
                write!(f, "answer: {}", list.join(" "))?
            }
            Outcome::NoData => write!(f, "answer: NODATA")?,
            Outcome::ServFail => write!(f, "answer: SERVFAIL")?,
        }
        write!(f, ", ttl {}, scope /{}", d.ttl, d.scope)?;
        if d.scope != 0 && self.sticky_subnet.is_none() {
            if c.scope_map {
                write!(f, " (widest on which the region order is the same)")?;
            } else {
                write!(f, " (the matched network)")?;
            }
        }
        Ok(())
    }
}
