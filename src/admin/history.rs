//! What the status page shows over time, kept in memory by the admin port: each target's
//! transitions of the last hour ([`HISTORY_WINDOW`]), and samples of the answer counters
//! every [`SHARE_SAMPLE_INTERVAL`] over the last [`SHARE_WINDOW`], from which the share of
//! answers by region is computed. Nothing here is persisted: a restart starts empty.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::health::{State, TransitionEvent};

/// How far back the transition timeline goes.
pub(super) const HISTORY_WINDOW: Duration = Duration::from_secs(3600);
/// How often the answer counters are sampled.
pub(super) const SHARE_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// The window over which answer shares are computed.
pub(super) const SHARE_WINDOW: Duration = Duration::from_secs(300);
/// Transitions kept per target at most (a flapping target cannot grow memory without bound).
const MAX_TRANSITIONS: usize = 256;

/// Answer counts by (service, region), summed over families.
pub(super) type AnswerCounts = BTreeMap<(String, String), u64>;

/// One transition: when, from, to.
type Change = (SystemTime, State, State);

/// One stretch of a target's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Segment {
    pub(super) from: SystemTime,
    pub(super) to: SystemTime,
    pub(super) state: State,
}

/// The admin port's memory of the recent past.
#[derive(Debug, Default)]
pub(super) struct History {
    /// (address, check) -> (when, from, to), oldest first.
    transitions: Mutex<HashMap<(IpAddr, String), VecDeque<Change>>>,
    /// (when, counts), oldest first.
    answers: Mutex<VecDeque<(SystemTime, AnswerCounts)>>,
}

impl History {
    /// Remembers a transition (and forgets those older than the window).
    pub(super) fn record(&self, e: &TransitionEvent) {
        let mut t = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        let list = t.entry((e.address, e.check.clone())).or_default();
        list.push_back((e.at, e.from, e.to));
        while list.len() > MAX_TRANSITIONS
            || list
                .front()
                .is_some_and(|(at, _, _)| age(*at, e.at) > HISTORY_WINDOW)
        {
            list.pop_front();
        }
    }

    /// Returns the transitions of a target within the window, oldest first.
    pub(super) fn transitions(
        &self,
        address: IpAddr,
        check: &str,
        now: SystemTime,
    ) -> Vec<(SystemTime, State, State)> {
        let t = self.transitions.lock().unwrap_or_else(|p| p.into_inner());
        t.get(&(address, check.to_string()))
            .map(|l| {
                l.iter()
                    .filter(|(at, _, _)| age(*at, now) <= HISTORY_WINDOW)
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Returns the timeline of a target over the last hour, now in `current` state: one
    /// segment per state, oldest first, covering the whole window.
    pub(super) fn timeline(
        &self,
        address: IpAddr,
        check: &str,
        current: State,
        now: SystemTime,
    ) -> Vec<Segment> {
        let start = now
            .checked_sub(HISTORY_WINDOW)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let events = self.transitions(address, check, now);
        let mut out = Vec::new();
        let mut from = start;
        let mut state = events.first().map_or(current, |(_, f, _)| *f);
        for (at, _, to) in events {
            let at = at.max(start);
            if at > from {
                out.push(Segment {
                    from,
                    to: at,
                    state,
                });
            }
            from = at;
            state = to;
        }
        out.push(Segment {
            from,
            to: now,
            state,
        });
        out
    }

    /// Stores a sample of the answer counters taken `now`.
    pub(super) fn sample_answers(&self, now: SystemTime, counts: AnswerCounts) {
        let mut a = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        a.push_back((now, counts));
        while a
            .front()
            .is_some_and(|(at, _)| age(*at, now) > SHARE_WINDOW + SHARE_SAMPLE_INTERVAL)
        {
            a.pop_front();
        }
    }

    /// Returns, per service, the answers by region since the oldest sample of the window up
    /// to `latest` (the counters now), and how long that window is.
    pub(super) fn answers_since(
        &self,
        latest: &AnswerCounts,
        now: SystemTime,
    ) -> (AnswerCounts, Duration) {
        let a = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = a.iter().find(|(at, _)| age(*at, now) <= SHARE_WINDOW);
        let (since, base) = match oldest {
            Some((at, counts)) => (age(*at, now), Some(counts)),
            None => (Duration::ZERO, None),
        };
        let delta = latest
            .iter()
            .map(|(k, v)| {
                let before = base.and_then(|b| b.get(k)).copied().unwrap_or(0);
                (k.clone(), v.saturating_sub(before))
            })
            .collect();
        (delta, since)
    }
}

/// How long before `now` the instant `at` was (zero when it is not before).
fn age(at: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(at).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: SystemTime, from: State, to: State) -> TransitionEvent {
        TransitionEvent {
            address: "192.0.2.1".parse().unwrap(),
            check: "web".into(),
            regions: vec!["us-east".into()],
            from,
            to,
            reason: crate::health::state::Reason::Rise { successes: 2 },
            at,
        }
    }

    #[test]
    fn the_timeline_covers_the_hour_with_one_segment_per_state() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        let h = History::default();
        let ip = "192.0.2.1".parse().unwrap();
        // Never changed: one segment in the current state.
        assert_eq!(
            h.timeline(ip, "web", State::Up, now),
            vec![Segment {
                from: now - HISTORY_WINDOW,
                to: now,
                state: State::Up
            }]
        );
        // An old transition is forgotten; two recent ones split the hour in three.
        h.record(&event(
            now - Duration::from_secs(7200),
            State::Unknown,
            State::Up,
        ));
        h.record(&event(
            now - Duration::from_secs(600),
            State::Up,
            State::Down,
        ));
        h.record(&event(
            now - Duration::from_secs(60),
            State::Down,
            State::Up,
        ));
        let t = h.timeline(ip, "web", State::Up, now);
        let states: Vec<State> = t.iter().map(|s| s.state).collect();
        assert_eq!(states, vec![State::Up, State::Down, State::Up]);
        assert_eq!(t[1].from, now - Duration::from_secs(600));
        assert_eq!(t[1].to, now - Duration::from_secs(60));
        assert_eq!(t[0].from, now - HISTORY_WINDOW);
    }

    #[test]
    fn answer_shares_are_deltas_over_the_window() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        let h = History::default();
        let k = |r: &str| ("api.".to_string(), r.to_string());
        h.sample_answers(
            now - Duration::from_secs(1000),
            AnswerCounts::from([(k("us"), 1)]),
        );
        h.sample_answers(
            now - Duration::from_secs(200),
            AnswerCounts::from([(k("us"), 10), (k("eu"), 5)]),
        );
        let latest = AnswerCounts::from([(k("us"), 40), (k("eu"), 15)]);
        let (d, since) = h.answers_since(&latest, now);
        assert_eq!(since, Duration::from_secs(200));
        assert_eq!(d[&k("us")], 30);
        assert_eq!(d[&k("eu")], 10);
    }
}
