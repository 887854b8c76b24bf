//! Policy: which addresses a service answers with. Pure: no I/O, no clock.
//!
//! (service, client location, health view) -> [`Decision`].
//!
//! STUB: replaced by the policy work (issue 3).

use std::net::IpAddr;

use crate::config::{Config, Service};
use crate::geo::Located;
use crate::health::{HealthView, State};

/// The address family a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// A records.
    V4,
    /// AAAA records.
    V6,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// NOERROR with these addresses (never empty).
    Addresses(Vec<IpAddr>),
    /// NOERROR with no address (NODATA).
    NoData,
    /// SERVFAIL.
    ServFail,
}

/// A decision for one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to answer.
    pub outcome: Outcome,
    /// TTL of the answer, seconds.
    pub ttl: u32,
    /// ECS scope prefix: 0 when the answer does not depend on the client's address.
    pub scope: u8,
}

/// A service compiled against its config: region coordinates resolved, targets listed.
#[derive(Debug, Clone)]
pub struct CompiledService {
    service: Service,
}

impl CompiledService {
    /// Compiles `service` (which belongs to `config`).
    pub fn new(service: &Service, _config: &Config) -> Self {
        Self {
            service: service.clone(),
        }
    }

    /// Returns the service's config.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Decides the answer for `client` asking for `family`. `random` is a uniformly random
    /// number supplied by the caller (used by `weighted`).
    pub fn decide(
        &self,
        _client: &Client<'_>,
        family: Family,
        health: &HealthView,
        _random: u64,
    ) -> Decision {
        let mut addrs = Vec::new();
        for ep in &self.service.endpoints {
            for a in &ep.addresses {
                let fam_ok = matches!(
                    (family, a),
                    (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
                );
                if fam_ok
                    && health.state(*a, ep.check.as_deref()) != State::Down
                    && addrs.len() < self.service.max_answers
                {
                    addrs.push(*a);
                }
            }
        }
        Decision {
            outcome: if addrs.is_empty() {
                Outcome::NoData
            } else {
                Outcome::Addresses(addrs)
            },
            ttl: self.service.ttl,
            scope: 0,
        }
    }
}
