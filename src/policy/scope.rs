//! Widest ECS scopes for services: which services share a scope map, and building the maps.
//!
//! A service's decision function maps a location to its region order before health (what
//! `nearest` or `geo` would walk). Services with the same function (same regions, coordinates,
//! biases, `geo` map and `[nets]` orders) share one [`ScopeMap`]; [`share_scope_maps`] hands
//! them one slot. [`ScopeJobs::run`] walks the GeoIP database once for all distinct functions,
//! interns the orders as class numbers and fills the slots; until a slot is filled the service
//! answers with the matched network's scope. Pure: no I/O, no clock, no threads (the caller runs
//! it in the background and times it).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use super::CompiledService;
use crate::geo::{Geo, GeoError, Located, ScopeMap};

/// A built scope map and the region order of each of its classes: with both, a decision needs
/// no database lookup ([`CompiledService::decide_at`]).
#[derive(Debug)]
pub(crate) struct Decisions {
    pub(crate) map: ScopeMap,
    /// Class number -> region order (endpoint indices), as `order` gives it.
    pub(crate) orders: Vec<Box<[usize]>>,
}

/// A service's slot for its [`Decisions`], filled once by [`ScopeJobs::run`].
pub(crate) type Slot = OnceLock<Decisions>;

/// Gives services with the same decision function one shared scope-map slot, so that the map
/// is built and held once.
pub(crate) fn share_scope_maps<'a>(services: impl IntoIterator<Item = &'a mut CompiledService>) {
    let mut slots: HashMap<String, Arc<Slot>> = HashMap::new();
    for s in services {
        if let Some(fingerprint) = s.decision_fingerprint() {
            let slot = slots
                .entry(fingerprint)
                .or_insert_with(|| s.scope_map.clone());
            s.scope_map = slot.clone();
        }
    }
}

/// The scope maps a set of services needs, one per distinct decision function.
#[derive(Debug, Default)]
pub(crate) struct ScopeJobs {
    jobs: Vec<Job>,
}

/// One decision function: a service that has it (its own slot detached) and the slot to fill.
#[derive(Debug)]
struct Job {
    service: CompiledService,
    /// Weak, so that a replaced snapshot's build notices and stops.
    slot: Weak<Slot>,
}

/// What [`ScopeJobs::run`] built.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ScopeReport {
    /// Distinct decision functions (maps built).
    pub(crate) maps: usize,
    /// Database networks walked.
    pub(crate) networks: usize,
    /// Distinct database records classified.
    pub(crate) records: usize,
    /// Distinct region orders, summed over the maps.
    pub(crate) decisions: usize,
    /// Runs of equal decisions, summed over the maps: IPv4.
    pub(crate) runs_v4: usize,
    /// The same for IPv6.
    pub(crate) runs_v6: usize,
    /// Heap memory of the maps, bytes.
    pub(crate) bytes: usize,
}

impl ScopeJobs {
    /// Collects the distinct slots of `services` that are still empty.
    pub(crate) fn new<'a>(services: impl IntoIterator<Item = &'a CompiledService>) -> Self {
        let mut jobs: Vec<Job> = Vec::new();
        for s in services {
            if s.decision_fingerprint().is_none() || s.scope_map.get().is_some() {
                continue;
            }
            let slot = Arc::downgrade(&s.scope_map);
            if jobs.iter().any(|j| j.slot.ptr_eq(&slot)) {
                continue;
            }
            let mut service = s.clone();
            service.scope_map = Arc::default();
            jobs.push(Job { service, slot });
        }
        ScopeJobs { jobs }
    }

    /// Returns true when no map is needed.
    pub(crate) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Builds every map in one walk over `geo` and installs each in its slot. Returns `None`
    /// when every service that would use them is gone (the walk stops early).
    pub(crate) fn run(&self, geo: &Geo) -> Result<Option<ScopeReport>, GeoError> {
        let n = self.jobs.len();
        let mut interned: Vec<HashMap<Vec<usize>, u32>> = vec![HashMap::new(); n];
        let most = self
            .jobs
            .iter()
            .map(|j| j.service.regions.len())
            .max()
            .unwrap_or(0);
        let mut keys = vec![0.0f64; most];
        let mut order: Vec<usize> = Vec::with_capacity(most);
        let mut classify = |located: &Located, out: &mut [u32]| {
            for ((job, ids), slot) in self.jobs.iter().zip(interned.iter_mut()).zip(out) {
                let s = &job.service;
                s.decision_key(located, &mut keys[..s.regions.len()], &mut order);
                let next = ids.len() as u32;
                *slot = *ids.entry(order.clone()).or_insert(next);
            }
        };
        let cancelled = || self.jobs.iter().all(|j| j.slot.strong_count() == 0);
        let Some((maps, stats)) = geo.scope_maps(n, &mut classify, &cancelled)? else {
            return Ok(None);
        };
        let mut report = ScopeReport {
            maps: n,
            networks: stats.networks,
            records: stats.records,
            decisions: interned.iter().map(HashMap::len).sum(),
            ..ScopeReport::default()
        };
        for ((job, map), ids) in self.jobs.iter().zip(maps).zip(interned) {
            let (v4, v6) = map.runs();
            report.runs_v4 += v4;
            report.runs_v6 += v6;
            let mut orders: Vec<Box<[usize]>> = vec![Box::default(); ids.len()];
            for (order, id) in ids {
                report.bytes += order.len() * std::mem::size_of::<usize>();
                orders[id as usize] = order.into();
            }
            report.bytes += map.heap_bytes();
            if let Some(slot) = job.slot.upgrade() {
                // Only this build fills the slot; a second set would be the same map.
                let _ = slot.set(Decisions { map, orders });
            }
        }
        Ok(Some(report))
    }
}
