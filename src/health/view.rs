//! The immutable health picture that the answer path reads: [`HealthView`].
//!
//! A view is swapped in whole by the supervisor on every state change or drain; readers load an
//! `Arc<HealthView>` and never lock. Lookups do not allocate.
//!
//! Target states are split into shards by address (about 64 targets each), each behind its own
//! `Arc`: a new view after one state change shares every shard but the changed one, so a burst
//! of 10,000 transitions costs 10,000 small copies rather than 10,000 rebuilds of the whole
//! table (issue #17).
//!
//! [`withdrawal`] is the one rule for "is this target withdrawn from answers, and why": the
//! policy, `/status`, `meridian_target_up` and webhook notifications all ask it, over any
//! [`HealthSource`] (the view in production, tables in tests).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::spill::{LoadView, ServiceLoad};

/// The health state of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not probed yet: treated as up.
    Unknown,
    /// Passing its check.
    Up,
    /// Failing its check.
    Down,
}

impl State {
    /// Returns the lowercase name (`up`, `down`, `unknown`), as in `/status` and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
        }
    }
}

/// One probed target: an address and the check that probes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TargetKey {
    /// The target's address.
    pub(crate) address: IpAddr,
    /// The check's name.
    pub(crate) check: Arc<str>,
}

/// The health questions asked about targets. [`HealthView`] answers them in production; tests
/// and tools may supply their own.
pub trait HealthSource {
    /// Returns the state of `address` probed by `check` (`None`: no check, always up).
    fn state(&self, address: IpAddr, check: Option<&str>) -> State;
    /// Returns true when the operator drained `region`.
    fn is_drained(&self, region: &str) -> bool;
    /// Returns true when the operator drained the target `address` (default: never). A
    /// drained target counts as a one-target drained region.
    fn is_target_drained(&self, _address: IpAddr) -> bool {
        false
    }
    /// Returns the loads and spill fractions of `service`'s regions when some endpoint of it
    /// reads load (default: none, issue 16).
    fn service_load(&self, _service: &str) -> Option<&ServiceLoad> {
        None
    }
    /// Returns false when [`HealthSource::service_load`] is `None` for every service: the
    /// caller then skips reading the service's name (default: true, ask).
    fn has_loads(&self) -> bool {
        true
    }
}

/// Which operator drain withdraws a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Drain {
    /// Its region is drained (`POST /regions/{region}/drain`).
    Region,
    /// The target itself is drained (`POST /targets/{address}/drain`), in every service.
    Target,
}

/// Whether a target is withdrawn from answers and why: what [`withdrawal`] returns.
///
/// Both facts are kept (not just the first reason) because fail-open passes of the policy
/// look at them separately: one takes drained targets that are not down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Withdrawal {
    /// The operator drain in force, if any (a region drain wins over a target drain).
    pub(crate) drain: Option<Drain>,
    /// The probed state (`Up` without a check, `Unknown` before the first probe).
    pub(crate) state: State,
}

impl Withdrawal {
    /// Returns true when answers must not use the target: drained, or down. `Unknown`
    /// counts as up.
    pub(crate) fn is_withdrawn(&self) -> bool {
        self.drain.is_some() || self.state == State::Down
    }

    /// Returns why the target is withdrawn (`region_drained`, `target_drained`, `down`), or
    /// `None` when it is not.
    pub(crate) fn reason(&self) -> Option<&'static str> {
        match (self.drain, self.state) {
            (Some(Drain::Region), _) => Some("region_drained"),
            (Some(Drain::Target), _) => Some("target_drained"),
            (None, State::Down) => Some("down"),
            (None, _) => None,
        }
    }
}

/// Returns whether the target `address` of an endpoint in `region`, probed by `check`, is
/// withdrawn from answers, and why. The one place this rule lives.
pub(crate) fn withdrawal<H: HealthSource + ?Sized>(
    health: &H,
    region: &str,
    address: IpAddr,
    check: Option<&str>,
) -> Withdrawal {
    let drain = if health.is_drained(region) {
        Some(Drain::Region)
    } else if health.is_target_drained(address) {
        Some(Drain::Target)
    } else {
        None
    };
    Withdrawal {
        drain,
        state: health.state(address, check),
    }
}

/// Targets per shard the supervisor aims for when it builds a view.
const TARGETS_PER_SHARD: usize = 64;

/// address -> the states of that address under each check that probes it (usually one).
type Shard = HashMap<IpAddr, Vec<(Arc<str>, State)>>;

/// An immutable picture of every target's health and the operator's drains.
#[derive(Debug, Clone)]
pub struct HealthView {
    /// Target states, sharded by address; the length is a power of two.
    shards: Vec<Arc<Shard>>,
    drained: Arc<HashSet<String>>,
    drained_targets: Arc<HashSet<IpAddr>>,
    /// Loads and spill fractions (issue 16); `None` when no check reads load, so that the
    /// answer path pays one branch for the feature it does not use.
    load: Option<Arc<LoadView>>,
}

impl Default for HealthView {
    fn default() -> Self {
        Self {
            shards: vec![Arc::default()],
            drained: Arc::default(),
            drained_targets: Arc::default(),
            load: None,
        }
    }
}

/// Returns the shard of `address` among `count` (a power of two).
fn shard_of(address: IpAddr, count: usize) -> usize {
    let bits: u64 = match address {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => {
            let x = u128::from(v6);
            (x as u64) ^ ((x >> 64) as u64)
        }
    };
    // Fibonacci hashing: the high bits of a multiplication mix every input bit.
    (bits.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & (count - 1)
}

impl HealthView {
    /// Returns a view where nothing is probed yet and nothing is drained.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Returns an empty view sized for about `targets` targets.
    pub(super) fn with_capacity(targets: usize) -> Self {
        let count = (targets / TARGETS_PER_SHARD).max(1).next_power_of_two();
        Self {
            shards: (0..count).map(|_| Arc::default()).collect(),
            ..Self::default()
        }
    }

    /// Returns this view with `address` under `check` in `state` (for building views in
    /// tests and benchmarks; the supervisor builds its own).
    pub fn with_state(mut self, address: IpAddr, check: &str, state: State) -> Self {
        self.set_state(address, &Arc::from(check), state);
        self
    }

    /// Returns this view with `region` drained.
    pub fn with_drained(mut self, region: &str) -> Self {
        Arc::make_mut(&mut self.drained).insert(region.to_string());
        self
    }

    /// Sets one target's state, copying only its shard when other views share it.
    pub(super) fn set_state(&mut self, address: IpAddr, check: &Arc<str>, state: State) {
        let i = shard_of(address, self.shards.len());
        let checks = Arc::make_mut(&mut self.shards[i])
            .entry(address)
            .or_default();
        match checks.iter_mut().find(|(c, _)| **c == **check) {
            Some((_, s)) => *s = state,
            None => checks.push((check.clone(), state)),
        }
    }

    /// Returns this view with the target `address` drained.
    pub fn with_drained_target(mut self, address: IpAddr) -> Self {
        Arc::make_mut(&mut self.drained_targets).insert(address);
        self
    }

    pub(super) fn set_drained_targets(&mut self, drained: impl IntoIterator<Item = IpAddr>) {
        self.drained_targets = Arc::new(drained.into_iter().collect());
    }

    pub(super) fn set_drained(&mut self, drained: impl IntoIterator<Item = String>) {
        self.drained = Arc::new(drained.into_iter().collect());
    }

    /// Returns the state of `address` under `check`: `Up` without a check, `Unknown` before
    /// the first probe.
    pub(crate) fn state(&self, address: IpAddr, check: Option<&str>) -> State {
        let Some(check) = check else {
            return State::Up;
        };
        self.shards[shard_of(address, self.shards.len())]
            .get(&address)
            .and_then(|checks| checks.iter().find(|(c, _)| &**c == check))
            .map_or(State::Unknown, |(_, s)| *s)
    }

    /// Returns true when the operator drained `region`.
    pub(crate) fn is_drained(&self, region: &str) -> bool {
        // Most views drain nothing: skip hashing then (this runs per target per query).
        !self.drained.is_empty() && self.drained.contains(region)
    }

    /// Returns the drained regions, sorted.
    pub(crate) fn drained_regions(&self) -> Vec<String> {
        let mut v: Vec<String> = self.drained.iter().cloned().collect();
        v.sort();
        v
    }

    /// Returns the drained target addresses, sorted.
    pub(crate) fn drained_targets(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.drained_targets.iter().copied().collect();
        v.sort();
        v
    }

    /// Returns the loads published by the last probe round (`None`: no check reads load).
    pub(crate) fn load(&self) -> Option<&Arc<LoadView>> {
        self.load.as_ref()
    }

    /// Sets the loads (the supervisor's probe round; tests).
    pub(crate) fn set_load(&mut self, load: Option<Arc<LoadView>>) {
        self.load = load;
    }

    /// Returns the loads and spill fractions of `service`'s regions, if it reads load.
    pub(crate) fn service_load(&self, service: &str) -> Option<&ServiceLoad> {
        self.load.as_ref()?.service(service)
    }

    /// Returns true when the operator drained the target `address` (in every service).
    pub(crate) fn is_target_drained(&self, address: IpAddr) -> bool {
        // Most views drain no target: skip hashing then (this runs per target per query).
        !self.drained_targets.is_empty() && self.drained_targets.contains(&address)
    }
}

impl HealthSource for HealthView {
    fn state(&self, address: IpAddr, check: Option<&str>) -> State {
        HealthView::state(self, address, check)
    }

    fn is_drained(&self, region: &str) -> bool {
        HealthView::is_drained(self, region)
    }

    fn is_target_drained(&self, address: IpAddr) -> bool {
        HealthView::is_target_drained(self, address)
    }

    fn service_load(&self, service: &str) -> Option<&ServiceLoad> {
        HealthView::service_load(self, service)
    }

    fn has_loads(&self) -> bool {
        self.load.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_check_is_up_and_unprobed_is_unknown() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let v = HealthView::empty().with_state(a, "web", State::Down);
        assert_eq!(v.state(a, None), State::Up);
        assert_eq!(v.state(a, Some("web")), State::Down);
        assert_eq!(v.state(a, Some("other")), State::Unknown);
        assert_eq!(
            v.state("192.0.2.2".parse().unwrap(), Some("web")),
            State::Unknown
        );
    }

    #[test]
    fn a_state_change_copies_one_shard_and_shares_the_others() {
        let mut v = HealthView::with_capacity(1000);
        let check: Arc<str> = Arc::from("web");
        let addr = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..1000 {
            v.set_state(addr(i), &check, State::Up);
        }
        let before = v.clone();
        v.set_state(addr(7), &check, State::Down);
        let shared = v
            .shards
            .iter()
            .zip(&before.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, v.shards.len() - 1);
        assert_eq!(before.state(addr(7), Some("web")), State::Up);
        assert_eq!(v.state(addr(7), Some("web")), State::Down);
        for i in (0..1000).filter(|&i| i != 7) {
            assert_eq!(v.state(addr(i), Some("web")), State::Up);
        }
        assert_eq!(v.state(addr(1000), Some("web")), State::Unknown);
    }

    #[test]
    fn drained_regions_are_reported() {
        let v = HealthView::empty().with_drained("eu-west");
        assert!(v.is_drained("eu-west"));
        assert!(!v.is_drained("us-east"));
    }

    #[test]
    fn withdrawal_names_the_drain_first_and_keeps_the_state() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let v = HealthView::empty()
            .with_state(a, "web", State::Down)
            .with_drained("eu-west")
            .with_drained_target(b);
        let w = withdrawal(&v, "us-east", a, Some("web"));
        assert_eq!((w.is_withdrawn(), w.reason()), (true, Some("down")));
        let w = withdrawal(&v, "eu-west", a, Some("web"));
        assert_eq!((w.drain, w.state), (Some(Drain::Region), State::Down));
        assert_eq!(w.reason(), Some("region_drained"));
        let w = withdrawal(&v, "us-east", b, Some("web"));
        assert_eq!(
            (w.reason(), w.state),
            (Some("target_drained"), State::Unknown)
        );
        let w = withdrawal(&v, "us-east", b, None);
        assert_eq!(w.state, State::Up);
        let up = withdrawal(&v, "us-east", "192.0.2.3".parse().unwrap(), Some("web"));
        assert_eq!((up.is_withdrawn(), up.reason()), (false, None));
    }

    #[test]
    fn state_serializes_lowercase() {
        assert_eq!(
            serde_json::to_string(&State::Unknown).unwrap(),
            "\"unknown\""
        );
        assert_eq!(serde_json::to_string(&State::Down).unwrap(), "\"down\"");
    }
}
