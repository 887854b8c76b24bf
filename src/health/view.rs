//! The immutable health picture that the answer path reads: [`HealthView`].
//!
//! A view is built by the supervisor on every state change or drain and swapped in whole; readers
//! load an `Arc<HealthView>` and never lock. Lookups do not allocate.

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

/// An immutable picture of every target's health and the operator's drains.
#[derive(Debug, Clone, Default)]
pub struct HealthView {
    /// check name -> address -> state (two levels so that lookups by `&str` do not allocate).
    states: HashMap<String, HashMap<IpAddr, State>>,
    drained: HashSet<String>,
    drained_targets: HashSet<IpAddr>,
}

impl HealthView {
    /// Returns a view where nothing is probed yet and nothing is drained.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Returns this view with `address` under `check` in `state` (for building views in
    /// tests and benchmarks; the supervisor builds its own).
    pub fn with_state(mut self, address: IpAddr, check: &str, state: State) -> Self {
        self.set_state(address, check, state);
        self
    }

    /// Returns this view with `region` drained.
    pub fn with_drained(mut self, region: &str) -> Self {
        self.drained.insert(region.to_string());
        self
    }

    pub(super) fn set_state(&mut self, address: IpAddr, check: &str, state: State) {
        match self.states.get_mut(check) {
            Some(m) => {
                m.insert(address, state);
            }
            None => {
                self.states
                    .insert(check.to_string(), HashMap::from([(address, state)]));
            }
        }
    }

    /// Returns this view with the target `address` drained.
    pub fn with_drained_target(mut self, address: IpAddr) -> Self {
        self.drained_targets.insert(address);
        self
    }

    pub(super) fn set_drained_targets(&mut self, drained: impl IntoIterator<Item = IpAddr>) {
        self.drained_targets = drained.into_iter().collect();
    }

    pub(super) fn set_drained(&mut self, drained: impl IntoIterator<Item = String>) {
        self.drained = drained.into_iter().collect();
    }

    /// Returns the state of `address` under `check`: `Up` without a check, `Unknown` before
    /// the first probe.
    pub fn state(&self, address: IpAddr, check: Option<&str>) -> State {
        let Some(check) = check else {
            return State::Up;
        };
        self.states
            .get(check)
            .and_then(|m| m.get(&address))
            .copied()
            .unwrap_or(State::Unknown)
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
