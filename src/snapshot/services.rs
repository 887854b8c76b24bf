//! The dynamic names of a snapshot: every service compiled, keyed by the lowercase wire form of
//! its name, so that the answer path finds a service straight from the query's bytes without
//! building a name. Owns the per-region answer counters of each service.
//!
//! Key types: [`Services`], [`Dynamic`]. Knows nothing of DNS messages: `dns/` looks names up
//! here and writes the answer.

use crate::names::name_to_wire;
use std::collections::HashMap;
use std::net::IpAddr;

use crate::config::Config;
use crate::metrics::{AnswerCounter, Metrics};
use crate::policy::CompiledService;

/// The dynamic names of a snapshot, keyed by their lowercase wire form.
#[derive(Debug, Default)]
pub(crate) struct Services {
    by_wire: HashMap<Vec<u8>, Dynamic>,
}

/// One dynamic name: its compiled service and its answer counters by region.
#[derive(Debug)]
pub(crate) struct Dynamic {
    service: CompiledService,
    /// `meridian_dns_answers_total{service,region,family}`, one per endpoint region, for A
    /// and AAAA (empty until [`Services::count_answers_in`]).
    answers: Vec<(String, [AnswerCounter; 2])>,
}

impl Dynamic {
    /// Returns the compiled service.
    pub(crate) fn service(&self) -> &CompiledService {
        &self.service
    }

    /// Counts an answer once for each region its addresses come from.
    pub(crate) fn count(&self, addrs: &[IpAddr]) {
        for (i, a) in addrs.iter().enumerate() {
            let Some(region) = self.service.region_of(*a) else {
                continue;
            };
            let seen = addrs[..i]
                .iter()
                .any(|b| self.service.region_of(*b) == Some(region));
            if !seen && let Some((_, c)) = self.answers.iter().find(|(r, _)| r == region) {
                c[usize::from(a.is_ipv6())].inc();
            }
        }
    }
}

impl Services {
    /// Compiles every service of `config`.
    pub(crate) fn new(config: &Config) -> Self {
        let mut by_wire: HashMap<Vec<u8>, Dynamic> = config
            .services
            .iter()
            .filter_map(|s| {
                let service = CompiledService::new(s, config);
                Some((
                    name_to_wire(&s.name)?,
                    Dynamic {
                        service,
                        answers: Vec::new(),
                    },
                ))
            })
            .collect();
        crate::policy::share_scope_maps(by_wire.values_mut().map(|d| &mut d.service));
        Self { by_wire }
    }

    /// Obtains the answer counters of every service and region from `metrics` (this takes a
    /// lock: done once per snapshot, never per query).
    pub(crate) fn count_answers_in(&mut self, metrics: &Metrics) {
        for d in self.by_wire.values_mut() {
            let s = d.service.service();
            d.answers = s
                .endpoints
                .iter()
                .map(|e| {
                    let region = &e.region.name;
                    let counter = |family| metrics.answer_counter(&s.name, region, family);
                    (region.clone(), [counter("A"), counter("AAAA")])
                })
                .collect();
        }
    }

    /// Returns the service whose name has the lowercase wire form `wire`.
    pub(crate) fn by_wire(&self, wire: &[u8]) -> Option<&Dynamic> {
        self.by_wire.get(wire)
    }

    /// Returns the service answering `name` (any case, with or without the final dot).
    pub(crate) fn get(&self, name: &str) -> Option<&CompiledService> {
        self.by_wire.get(&name_to_wire(name)?).map(|d| &d.service)
    }
    /// Returns every service.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &CompiledService> {
        self.by_wire.values().map(|d| &d.service)
    }
}
