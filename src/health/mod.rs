//! Health: probes, the rise/fall state machine, operator overrides.
//!
//! Publishes an immutable [`HealthView`] that the answer path loads without locking.
//!
//! STUB: replaced by the health work (issue 4).

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

/// One probed target: an address and the check that probes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
}

impl HealthView {
    /// Returns a view where nothing is probed yet and nothing is drained.
    pub fn empty() -> Self {
        Self::default()
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
}
