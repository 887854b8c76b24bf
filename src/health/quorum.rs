//! The fleet's vote on each target: pure, no I/O, no clock.
//!
//! Every instance probes every target and publishes its own state of it (`up`/`down`; an
//! instance that has not probed a target yet does not vote on it). [`PeerVotes`] holds the
//! latest states of the *fresh* peers (those whose lease in the store is alive), and
//! [`PeerVotes::agree`] combines them with this instance's own state:
//!
//! - the observers are the instances with a vote, this one included;
//! - with fewer observers than the quorum needs (`majority` needs two, a number `n` needs `n`,
//!   `any` needs one) the instance falls back to its own view and says so ([`Basis::Fallback`]);
//! - otherwise the target is down when at least the quorum's count of observers see it down:
//!   more than half of them for `majority`, `n` for a number, one for `any`.

use std::collections::{BTreeMap, HashMap};

use crate::config::Quorum;
use crate::health::{State, TargetKey};

/// How the agreed state was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Basis {
    /// No fleet: this instance's own probes decide.
    Local,
    /// Enough fresh observers voted: the quorum decides.
    Quorum,
    /// Too few fresh observers for the quorum: this instance's own probes decide.
    Fallback,
}

/// The agreed state of one target and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Agreement {
    /// The state answers use.
    pub agreed: State,
    /// This instance's own probed state.
    pub local: State,
    /// How it was reached.
    pub basis: Basis,
    /// Observers (instances with a vote, this one included).
    pub observers: usize,
    /// Observers that see the target down.
    pub down: usize,
    /// Down votes that withdraw the target (0 when the quorum could not be reached).
    pub needed: usize,
    /// Each instance's view, this one included.
    pub views: BTreeMap<String, State>,
    /// One line saying why, e.g. `2 of 3 fresh observers see it down (quorum majority: 2)`.
    pub why: String,
}

/// The latest votes of the fresh peers (this instance excluded).
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerVotes {
    /// The quorum rule; `None` without a fleet (own view only).
    pub quorum: Option<Quorum>,
    /// This instance's name.
    pub me: String,
    /// Peer instance -> target -> its state.
    pub peers: BTreeMap<String, HashMap<TargetKey, State>>,
}

impl PeerVotes {
    /// Returns the state answers use for `key`, given this instance's own `local` state.
    pub(crate) fn agreed_state(&self, key: &TargetKey, local: State) -> State {
        let Some(quorum) = self.quorum else {
            return local;
        };
        let (observers, down) = self.count(key, local);
        decide(quorum, local, observers, down).0
    }

    /// Returns the agreed state of `key` with every instance's view and the reason.
    pub(crate) fn agree(&self, key: &TargetKey, local: State) -> Agreement {
        let mut views = BTreeMap::new();
        if !self.me.is_empty() {
            views.insert(self.me.clone(), local);
        }
        for (name, votes) in &self.peers {
            views.insert(
                name.clone(),
                votes.get(key).copied().unwrap_or(State::Unknown),
            );
        }
        let Some(quorum) = self.quorum else {
            return Agreement {
                agreed: local,
                local,
                basis: Basis::Local,
                observers: usize::from(local != State::Unknown),
                down: usize::from(local == State::Down),
                needed: 0,
                views,
                why: "no fleet: own probes decide".into(),
            };
        };
        let (observers, down) = self.count(key, local);
        let (agreed, basis, needed) = decide(quorum, local, observers, down);
        let why = match basis {
            Basis::Fallback => format!(
                "only {observers} fresh observer(s), quorum {quorum} needs {}: own probes decide",
                min_observers(quorum)
            ),
            _ => format!(
                "{down} of {observers} fresh observers see it down (quorum {quorum}: {needed})"
            ),
        };
        Agreement {
            agreed,
            local,
            basis,
            observers,
            down,
            needed,
            views,
            why,
        }
    }

    fn count(&self, key: &TargetKey, local: State) -> (usize, usize) {
        let mut observers = usize::from(local != State::Unknown);
        let mut down = usize::from(local == State::Down);
        for votes in self.peers.values() {
            match votes.get(key) {
                Some(State::Down) => {
                    observers += 1;
                    down += 1;
                }
                Some(State::Up) => observers += 1,
                Some(State::Unknown) | None => {}
            }
        }
        (observers, down)
    }
}

fn min_observers(quorum: Quorum) -> usize {
    match quorum {
        Quorum::Majority => 2,
        Quorum::AtLeast(n) => n as usize,
        Quorum::Any => 1,
    }
}

/// Returns (agreed state, basis, down votes needed).
fn decide(quorum: Quorum, local: State, observers: usize, down: usize) -> (State, Basis, usize) {
    if observers < min_observers(quorum) {
        return (local, Basis::Fallback, 0);
    }
    let needed = match quorum {
        Quorum::Majority => observers / 2 + 1,
        Quorum::AtLeast(n) => n as usize,
        Quorum::Any => 1,
    };
    let state = if down >= needed {
        State::Down
    } else {
        State::Up
    };
    (state, Basis::Quorum, needed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::{Down, Unknown, Up};

    fn key() -> TargetKey {
        TargetKey {
            address: "192.0.2.10".parse().unwrap(),
            check: "web".into(),
        }
    }

    fn votes(quorum: Quorum, peers: &[(&str, Option<State>)]) -> PeerVotes {
        PeerVotes {
            quorum: Some(quorum),
            me: "a".into(),
            peers: peers
                .iter()
                .map(|(n, s)| {
                    let mut m = HashMap::new();
                    if let Some(s) = s {
                        m.insert(key(), *s);
                    }
                    (n.to_string(), m)
                })
                .collect(),
        }
    }

    #[test]
    fn without_a_fleet_the_own_view_decides() {
        let v = PeerVotes::default();
        for s in [Up, Down, Unknown] {
            assert_eq!(v.agreed_state(&key(), s), s);
            assert_eq!(v.agree(&key(), s).basis, Basis::Local);
        }
    }

    #[test]
    fn majority_of_three_ignores_one_dissenter_and_follows_two() {
        let one_down = votes(Quorum::Majority, &[("b", Some(Up)), ("c", Some(Up))]);
        assert_eq!(one_down.agreed_state(&key(), Down), Up);
        let two_down = votes(Quorum::Majority, &[("b", Some(Down)), ("c", Some(Down))]);
        // This instance's own probes pass, yet two of three see it down.
        let a = two_down.agree(&key(), Up);
        assert_eq!(
            (a.agreed, a.basis, a.down, a.observers, a.needed),
            (Down, Basis::Quorum, 2, 3, 2)
        );
        assert_eq!(a.views.len(), 3);
    }

    #[test]
    fn majority_of_two_needs_both() {
        let v = votes(Quorum::Majority, &[("b", Some(Down))]);
        assert_eq!(v.agreed_state(&key(), Up), Up);
        assert_eq!(v.agreed_state(&key(), Down), Down);
    }

    #[test]
    fn too_few_observers_fall_back_to_the_own_view_and_say_so() {
        let v = votes(Quorum::Majority, &[("b", None)]);
        let a = v.agree(&key(), Down);
        assert_eq!((a.agreed, a.basis), (Down, Basis::Fallback));
        assert!(a.why.contains("only 1 fresh observer"), "{}", a.why);
        let v = votes(Quorum::AtLeast(3), &[("b", Some(Down))]);
        assert_eq!(v.agree(&key(), Down).basis, Basis::Fallback);
        assert_eq!(v.agreed_state(&key(), Up), Up);
    }

    #[test]
    fn unprobed_instances_do_not_vote() {
        let v = votes(Quorum::Majority, &[("b", Some(Down)), ("c", Some(Unknown))]);
        let a = v.agree(&key(), Down);
        assert_eq!((a.agreed, a.observers), (Down, 2));
        assert_eq!(a.views["c"], Unknown);
    }

    #[test]
    fn any_withdraws_on_one_down_and_a_number_counts_down_votes() {
        let v = votes(Quorum::Any, &[("b", Some(Down)), ("c", Some(Up))]);
        assert_eq!(v.agreed_state(&key(), Up), Down);
        let v = votes(
            Quorum::AtLeast(2),
            &[("b", Some(Down)), ("c", Some(Up)), ("d", Some(Up))],
        );
        assert_eq!(v.agreed_state(&key(), Up), Up);
        assert_eq!(v.agreed_state(&key(), Down), Down);
    }
}
