//! The immutable health picture that the answer path reads: [`HealthView`].
//!
//! A view is swapped in whole by the supervisor on every state change or drain; readers load an
//! `Arc<HealthView>` and never lock. Lookups do not allocate.
//!
//! Target states are split into shards by address (about 64 targets each), each behind its own
//! `Arc`: a new view after one state change shares every shard but the changed one, so a burst
//! of 10,000 transitions costs 10,000 small copies rather than 10,000 rebuilds of the whole
//! table (issue #17).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

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
pub struct TargetKey {
    /// The target's address.
    pub address: IpAddr,
    /// The check's name.
    pub check: Arc<str>,
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
}

impl Default for HealthView {
    fn default() -> Self {
        Self {
            shards: vec![Arc::default()],
            drained: Arc::default(),
            drained_targets: Arc::default(),
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
    pub fn state(&self, address: IpAddr, check: Option<&str>) -> State {
        let Some(check) = check else {
            return State::Up;
        };
        self.shards[shard_of(address, self.shards.len())]
            .get(&address)
            .and_then(|checks| checks.iter().find(|(c, _)| &**c == check))
            .map_or(State::Unknown, |(_, s)| *s)
    }

    /// Returns true when the operator drained `region`.
    pub fn is_drained(&self, region: &str) -> bool {
        self.drained.contains(region)
    }

    /// Returns true when the operator drained the target `address` (in every service).
    pub fn is_target_drained(&self, address: IpAddr) -> bool {
        // Most views drain no target: skip hashing then (this runs per target per query).
        !self.drained_targets.is_empty() && self.drained_targets.contains(&address)
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
    fn state_serializes_lowercase() {
        assert_eq!(
            serde_json::to_string(&State::Unknown).unwrap(),
            "\"unknown\""
        );
        assert_eq!(serde_json::to_string(&State::Down).unwrap(), "\"down\"");
    }
}
