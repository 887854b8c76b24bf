//! The dynamic names of a snapshot: every service compiled, keyed by the lowercase wire form of
//! its name, so that the answer path finds a service straight from the query's bytes without
//! building a name. Owns the per-region answer counters of each service.
//!
//! Key types: [`Services`], [`Dynamic`]. Knows nothing of DNS messages: `dns/` looks names up
//! here and writes the answer.

use crate::names::name_to_wire;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::config::Config;
use crate::metrics::{AnswerCounter, Metrics};
use crate::policy::{CompiledService, Compiler};

/// The dynamic names of a snapshot, keyed by their lowercase wire form.
#[derive(Debug, Default)]
pub(crate) struct Services {
    by_wire: HashMap<WireKey, Dynamic>,
}

/// A lowercase wire name as a key, inline up to 48 bytes: comparing the query's name with it
/// reads the table's own memory, not one more allocation (issue 18: with 10,000 services that
/// was a cache miss per query).
type WireKey = SmallVec<[u8; 48]>;

/// One dynamic name: its compiled service and its answer counters by region.
#[derive(Debug)]
pub(crate) struct Dynamic {
    service: CompiledService,
    /// `meridian_dns_answers_total{service,region,family}` for A and AAAA, one entry per
    /// endpoint in config order, with the index of the first endpoint of the same region (the
    /// one counted for both); empty until [`Services::count_answers_in`]. Inline up to four
    /// endpoints: one allocation less to read per answer (issue 18).
    answers: SmallVec<[(usize, [AnswerCounter; 2]); 4]>,
}

impl Dynamic {
    /// Returns the compiled service.
    pub(crate) fn service(&self) -> &CompiledService {
        &self.service
    }

    /// Counts an answer once for each region its addresses come from.
    pub(crate) fn count(&self, addrs: &[IpAddr]) {
        let region = |a: &IpAddr| {
            let i = self.service.endpoint_of(*a)?;
            self.answers.get(i).map(|(first, _)| *first)
        };
        for (i, a) in addrs.iter().enumerate() {
            let Some(r) = region(a) else {
                continue;
            };
            if !addrs[..i].iter().any(|b| region(b) == Some(r))
                && let Some((_, c)) = self.answers.get(r)
            {
                c[usize::from(a.is_ipv6())].inc();
            }
        }
    }
}

impl Services {
    /// Compiles every service of `config`.
    pub(crate) fn new(config: &Config) -> Self {
        let compiler = Compiler::new(config);
        let mut by_wire: HashMap<WireKey, Dynamic> = config
            .services
            .iter()
            .filter_map(|s| {
                let service = CompiledService::compile(s, &compiler);
                Some((
                    WireKey::from_slice(&name_to_wire(&s.name)?),
                    Dynamic {
                        service,
                        answers: SmallVec::new(),
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
        // One shared copy of each region's name for every counter.
        let mut regions: HashSet<Arc<str>> = HashSet::new();
        for d in self.by_wire.values_mut() {
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
                    (first, metrics.answer_counters(&service, &region))
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
        self.by_wire
            .get(&name_to_wire(name)?[..])
            .map(|d| &d.service)
    }
    /// Returns every service.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &CompiledService> {
        self.by_wire.values().map(|d| &d.service)
    }
}
