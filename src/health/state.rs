//! The rise/fall state machine of one target: pure, no I/O, never reads the clock.
//!
//! A [`TargetState`] takes probe results ([`Observation`]s, each stamped with a caller-supplied
//! wall time) and decides the target's [`State`]. It owns no timers and knows nothing about how
//! probes are made; the scheduler feeds it.
//!
//! Rules (`rise`, `fall` and `initial_state` come from the check):
//!
//! - **Unknown** (`initial_state = "unknown"`, the default; never decided): answered as up. A
//!   success makes it `Up`; `fall` consecutive failures make it `Down`. No target is withdrawn
//!   on its first result alone (issue #17: at start, probes that time out while the process is
//!   busy starting would otherwise withdraw healthy targets by the thousand).
//! - With `initial_state = "down"` a target starts `Down` (withdrawn) and its first success
//!   makes it `Up` at once; after that the usual rules apply.
//! - **Up**: `fall` consecutive failures make it `Down`; a success resets the failure count.
//! - **Down**: `rise` consecutive successes make it `Up`; a failure resets the success count.
//! - A result that is our own error ([`ProbeError::Ours`]: no file descriptor, TLS setup, a
//!   starved timer) says nothing about the target: it is recorded as the last result but
//!   neither raises nor lowers the target, and leaves the counts as they were.
//!
//! Every change returns a [`Transition`] naming the old and new state and the [`Reason`].

use std::fmt;
use std::num::NonZeroU32;
use std::time::{Duration, SystemTime};

use super::State;
use super::probe::ProbeError;
pub(crate) use crate::config::InitialState;

/// How many consecutive results change a known state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thresholds {
    /// Consecutive successes for a `Down` target to go `Up`.
    pub(crate) rise: NonZeroU32,
    /// Consecutive failures for an `Up` (or never decided) target to go `Down`.
    pub(crate) fall: NonZeroU32,
    /// The state before the first result.
    pub(crate) initial: InitialState,
}

/// The result of one probe, as the state machine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observation {
    /// True when the probe passed.
    pub(crate) ok: bool,
    /// Wall time at which the probe finished (supplied by the caller).
    pub(crate) at: SystemTime,
    /// How long the probe took.
    pub(crate) latency: Duration,
    /// Why the probe failed (`None` when it passed).
    pub(crate) error: Option<ProbeError>,
}

impl serde::Serialize for Observation {
    /// `{ok, result, at, latency_ms, error}`: `result` is `pass`, `fail` or `error` (ours).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Observation", 5)?;
        st.serialize_field("ok", &self.ok)?;
        st.serialize_field("result", self.result())?;
        st.serialize_field("at", &super::format_rfc3339(self.at))?;
        let ms = (self.latency.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
        st.serialize_field("latency_ms", &ms)?;
        st.serialize_field("error", &self.error.as_ref().map(|e| e.to_string()))?;
        st.end()
    }
}

impl Observation {
    /// Returns a passing observation.
    pub(crate) fn success(at: SystemTime, latency: Duration) -> Self {
        Self {
            ok: true,
            at,
            latency,
            error: None,
        }
    }

    /// Returns `pass`, `fail`, or `error` (our own trouble: says nothing about the target).
    pub(crate) fn result(&self) -> &'static str {
        match &self.error {
            None => "pass",
            Some(e) if e.own().is_some() => "error",
            Some(_) => "fail",
        }
    }

    /// Returns true when the probe failed because of our own trouble, not the target's.
    pub(crate) fn is_own_error(&self) -> bool {
        self.error.as_ref().is_some_and(|e| e.own().is_some())
    }

    /// Returns a failing observation.
    pub(crate) fn failure(at: SystemTime, latency: Duration, error: ProbeError) -> Self {
        Self {
            ok: false,
            at,
            latency,
            error: Some(error),
        }
    }
}

/// Why a target changed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The first probe result of a target decided its state.
    FirstProbe {
        /// The failure, when the first probe failed.
        error: Option<ProbeError>,
    },
    /// `rise` consecutive successes.
    Rise {
        /// The number of consecutive successes (equal to `rise`).
        successes: u32,
    },
    /// `fall` consecutive failures.
    Fall {
        /// The number of consecutive failures (equal to `fall`).
        failures: u32,
        /// The last failure.
        error: ProbeError,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::FirstProbe { error: None } => write!(f, "first probe passed"),
            Reason::FirstProbe { error: Some(e) } => write!(f, "first probe failed: {e}"),
            Reason::Rise { successes } => write!(f, "{successes} consecutive successes"),
            Reason::Fall { failures, error } => {
                write!(f, "{failures} consecutive failures, last: {error}")
            }
        }
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A change of state, returned by [`TargetState::observe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transition {
    /// The state before.
    pub(crate) from: State,
    /// The state after.
    pub(crate) to: State,
    /// Why.
    pub(crate) reason: Reason,
    /// When (the observation's time).
    pub(crate) at: SystemTime,
}

/// The health of one target: its state, since when, and the counters behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetState {
    state: State,
    since: Option<SystemTime>,
    last: Option<Observation>,
    /// Consecutive results that disagree with the current state (failures while up,
    /// successes while down).
    streak: u32,
    thresholds: Thresholds,
}

impl TargetState {
    /// Returns a target that was never probed: `Unknown`, or `Down` when the check says
    /// `initial_state = "down"`.
    pub(crate) fn new(thresholds: Thresholds) -> Self {
        let state = match thresholds.initial {
            InitialState::Unknown => State::Unknown,
            InitialState::Down => State::Down,
        };
        Self {
            state,
            since: None,
            last: None,
            streak: 0,
            thresholds,
        }
    }

    /// Returns true while results disagree with the state without having changed it yet
    /// (failures of an up or unknown target, successes of a down one): the scheduler then
    /// probes at `fast_interval`.
    pub(crate) fn is_deciding(&self) -> bool {
        self.streak > 0
    }

    /// Returns the current state.
    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// Returns when the current state began (`None` while unknown).
    pub(crate) fn since(&self) -> Option<SystemTime> {
        self.since
    }

    /// Returns the last observation.
    pub(crate) fn last(&self) -> Option<&Observation> {
        self.last.as_ref()
    }

    /// Returns true once the target has at least one result.
    pub(crate) fn has_result(&self) -> bool {
        self.last.is_some()
    }

    /// Changes `rise`/`fall` (after a reload) without touching the state. A streak already at or
    /// beyond a lowered threshold changes the state on the next disagreeing result.
    pub(crate) fn set_thresholds(&mut self, thresholds: Thresholds) {
        self.thresholds = thresholds;
    }

    /// Records one probe result and returns the transition it causes, if any. Our own errors
    /// are recorded as the last result and change nothing else.
    pub(crate) fn observe(&mut self, observation: Observation) -> Option<Transition> {
        let at = observation.at;
        let ok = observation.ok;
        let own = observation.is_own_error();
        let error = observation.error.clone();
        self.last = Some(observation);
        if own {
            return None;
        }
        // `initial_state = "down"`: the first success of a never-decided target decides.
        let undecided_down = self.state == State::Down && self.since.is_none();
        let (to, reason) = match (self.state, ok) {
            (State::Unknown, true) => (State::Up, Reason::FirstProbe { error: None }),
            (State::Down, true) if undecided_down => {
                (State::Up, Reason::FirstProbe { error: None })
            }
            (State::Up, true) | (State::Down, false) => {
                self.streak = 0;
                return None;
            }
            (State::Up | State::Unknown, false) => {
                self.streak += 1;
                if self.streak < self.thresholds.fall.get() {
                    return None;
                }
                let error = error.unwrap_or(ProbeError::Unspecified);
                (
                    State::Down,
                    Reason::Fall {
                        failures: self.streak,
                        error,
                    },
                )
            }
            (State::Down, true) => {
                self.streak += 1;
                if self.streak < self.thresholds.rise.get() {
                    return None;
                }
                (
                    State::Up,
                    Reason::Rise {
                        successes: self.streak,
                    },
                )
            }
        };
        let from = self.state;
        self.state = to;
        self.since = Some(at);
        self.streak = 0;
        Some(Transition {
            from,
            to,
            reason,
            at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn th(rise: u32, fall: u32) -> Thresholds {
        Thresholds {
            rise: NonZeroU32::new(rise).unwrap(),
            fall: NonZeroU32::new(fall).unwrap(),
            initial: InitialState::Unknown,
        }
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn obs(ok: bool, secs: u64) -> Observation {
        if ok {
            Observation::success(t(secs), Duration::from_millis(5))
        } else {
            Observation::failure(t(secs), Duration::from_millis(5), ProbeError::Refused)
        }
    }

    /// Feeds `seq` ('+' success, '-' failure, 'e' our own error) and returns the state after
    /// each result.
    fn run(rise: u32, fall: u32, seq: &str) -> String {
        run_from(th(rise, fall), seq)
    }

    fn run_from(thresholds: Thresholds, seq: &str) -> String {
        let mut s = TargetState::new(thresholds);
        seq.chars()
            .enumerate()
            .map(|(i, c)| {
                let o = match c {
                    'e' => Observation::failure(
                        t(i as u64),
                        Duration::ZERO,
                        ProbeError::Ours(crate::health::probe::OwnError::FileDescriptors(
                            "too many open files".into(),
                        )),
                    ),
                    c => obs(c == '+', i as u64),
                };
                s.observe(o);
                match s.state() {
                    State::Unknown => '?',
                    State::Up => 'U',
                    State::Down => 'D',
                }
            })
            .collect()
    }

    #[test]
    fn state_follows_rise_and_fall_over_a_table_of_sequences() {
        // (rise, fall, results, states after each result)
        let table = [
            (2, 3, "", ""),
            (2, 3, "+", "U"),
            // Never withdrawn on the first result alone: `fall` failures are needed.
            (2, 3, "-", "?"),
            (2, 3, "--", "??"),
            (2, 3, "---", "??D"),
            (2, 3, "--+", "??U"),
            (2, 3, "-+", "?U"),
            (2, 3, "+--", "UUU"),
            (2, 3, "+---", "UUUD"),
            (2, 3, "+--+---", "UUUUUUD"),
            (2, 3, "---+", "??DD"),
            (2, 3, "---++", "??DDU"),
            (2, 3, "---+-+", "??DDDD"),
            (2, 3, "---+-++", "??DDDDU"),
            (2, 3, "+---++---", "UUUDDUUUD"),
            (1, 1, "+-+-", "UDUD"),
            (1, 1, "--++", "DDUU"),
            (3, 1, "+-++-+++", "UDDDDDDU"),
            (1, 3, "---+", "??DU"),
            (5, 2, "+--+++++", "UUDDDDDU"),
            (2, 2, "+-+-+-", "UUUUUU"),
            // Our own errors neither raise nor lower, nor break a streak.
            (2, 3, "eee", "???"),
            (2, 3, "+-e-e-", "UUUUUD"),
            (2, 3, "+---+e+", "UUUDDDU"),
            (1, 1, "+eee", "UUUU"),
        ];
        for (rise, fall, seq, want) in table {
            assert_eq!(
                run(rise, fall, seq),
                want,
                "rise={rise} fall={fall} seq={seq:?}"
            );
        }
    }

    #[test]
    fn never_probed_target_is_unknown_with_no_since() {
        let s = TargetState::new(th(2, 3));
        assert_eq!(s.state(), State::Unknown);
        assert_eq!(s.since(), None);
        assert!(!s.has_result());
    }

    #[test]
    fn issue_17_unknown_target_goes_down_only_after_fall_failures() {
        // https://github.com/meridian/meridian/issues/17
        let mut s = TargetState::new(th(2, 3));
        assert_eq!(s.observe(obs(false, 7)), None);
        assert!(s.is_deciding());
        assert_eq!(s.observe(obs(false, 8)), None);
        let tr = s.observe(obs(false, 9)).expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Unknown, State::Down));
        assert_eq!(
            tr.reason.to_string(),
            "3 consecutive failures, last: connection refused"
        );
        assert_eq!(s.since(), Some(t(9)));
        assert!(!s.is_deciding());
    }

    #[test]
    fn initial_state_down_starts_withdrawn_and_comes_up_on_the_first_success() {
        let down = Thresholds {
            initial: InitialState::Down,
            ..th(3, 3)
        };
        assert_eq!(TargetState::new(down).state(), State::Down);
        assert_eq!(run_from(down, "--+"), "DDU");
        assert_eq!(run_from(down, "+-"), "UU");
        // Once decided, the usual rise applies.
        assert_eq!(run_from(down, "+---+++"), "UUUDDDU");
        let mut s = TargetState::new(down);
        let tr = s.observe(obs(true, 4)).expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Down, State::Up));
        assert_eq!(tr.reason.to_string(), "first probe passed");
    }

    #[test]
    fn own_error_is_recorded_as_the_last_result_but_changes_nothing() {
        let mut s = TargetState::new(th(2, 1));
        s.observe(obs(true, 0));
        let own = ProbeError::Ours(crate::health::probe::OwnError::TlsSetup(
            "no CA certificates".into(),
        ));
        assert_eq!(
            s.observe(Observation::failure(t(1), Duration::ZERO, own.clone())),
            None
        );
        assert_eq!(s.state(), State::Up);
        let last = s.last().unwrap();
        assert_eq!(last.result(), "error");
        assert_eq!(last.error, Some(own));
    }

    #[test]
    fn fall_after_three_consecutive_failures_reports_the_last_error() {
        let mut s = TargetState::new(th(2, 3));
        assert!(s.observe(obs(true, 0)).is_some());
        assert!(!s.is_deciding());
        assert_eq!(s.observe(obs(false, 1)), None);
        assert_eq!(s.observe(obs(false, 2)), None);
        let tr = s
            .observe(Observation::failure(
                t(3),
                Duration::from_secs(1),
                ProbeError::TimedOut(Duration::from_secs(1)),
            ))
            .expect("a transition");
        assert_eq!((tr.from, tr.to, tr.at), (State::Up, State::Down, t(3)));
        assert_eq!(
            tr.reason.to_string(),
            "3 consecutive failures, last: timed out after 1s"
        );
        assert_eq!(s.since(), Some(t(3)));
    }

    #[test]
    fn rise_after_two_consecutive_successes() {
        let mut s = TargetState::new(th(2, 1));
        s.observe(obs(false, 0));
        assert_eq!(s.observe(obs(true, 1)), None);
        let tr = s.observe(obs(true, 2)).expect("a transition");
        assert_eq!((tr.from, tr.to), (State::Down, State::Up));
        assert_eq!(tr.reason.to_string(), "2 consecutive successes");
    }

    #[test]
    fn since_does_not_move_without_a_transition_but_last_does() {
        let mut s = TargetState::new(th(2, 3));
        s.observe(obs(true, 10));
        s.observe(obs(true, 20));
        s.observe(obs(false, 30));
        assert_eq!(s.since(), Some(t(10)));
        let last = s.last().unwrap();
        assert_eq!((last.ok, last.at), (false, t(30)));
        assert_eq!(last.error, Some(ProbeError::Refused));
    }

    #[test]
    fn lowered_fall_takes_effect_on_the_next_failure() {
        let mut s = TargetState::new(th(2, 3));
        s.observe(obs(true, 0));
        s.observe(obs(false, 1));
        s.observe(obs(false, 2));
        s.set_thresholds(th(2, 1));
        assert_eq!(s.state(), State::Up);
        let tr = s.observe(obs(false, 3)).expect("a transition");
        assert_eq!(tr.to, State::Down);
    }

    #[test]
    fn observation_serializes_with_latency_in_milliseconds_and_error_text() {
        let o = Observation::failure(t(0), Duration::from_micros(1500), ProbeError::Status(503));
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["result"], "fail");
        assert_eq!(v["latency_ms"], 1.5);
        assert_eq!(v["at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["error"], "status 503 not in expect_status");
    }
}
