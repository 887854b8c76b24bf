//! Health: probes, the rise/fall state machine, operator overrides.
//!
//! Publishes an immutable [`HealthView`] that the answer path loads without locking.
//!
//! - [`state`]: the pure rise/fall state machine ([`state::TargetState`]); no I/O, caller passes `now`.
//! - [`probe`]: HTTP, HTTPS and TCP probes ([`probe::Prober`], [`probe::ProbeError`]).
//! - [`overrides`]: region and target drains (with who/when/why/expiry) persisted atomically to
//!   `server.state_file` (in a fleet: the cache of the drains in etcd).
//! - [`quorum`]: the fleet's vote on each target ([`quorum::PeerVotes`]); pure.
//! - [`view`]: [`HealthView`], [`State`], [`view::TargetKey`], and [`withdrawal`], the one rule for
//!   "is this target withdrawn from answers, and why".
//! - [`spill`]: loads read by the probes and the spill-over controller (issue 16):
//!   [`spill::LoadState`] (updated once per probe round) and [`LoadView`] (published in the
//!   [`HealthView`]); the controller [`spill::next_fraction`] is pure.
//! - [`supervisor`]: [`Health`], the handle that runs one probe task per distinct
//!   (address, check), feeds the state machines, publishes views, and answers `/status`.
//!
//! This module does not know about services or DNS beyond reading which (address, check) pairs
//! and regions the config names.

pub(crate) mod overrides;
pub(crate) mod probe;
pub(crate) mod quorum;
pub(crate) mod spill;
pub(crate) mod state;
pub(crate) mod supervisor;
pub(crate) mod view;

use std::time::SystemTime;

pub use overrides::OverridesError;
pub(crate) use overrides::{DrainEvent, Overrides};
pub use spill::{LoadView, RegionLoad, ServiceLoad};
pub(crate) use state::Observation;
pub use supervisor::HealthError;
pub(crate) use supervisor::{Health, PROBE_RESULTS, TargetStatus, TransitionEvent};
pub use view::{HealthSource, HealthView, State};
pub(crate) use view::{TargetKey, withdrawal};

/// Formats a wall time as RFC 3339 in UTC with milliseconds (`2024-05-01T12:00:00.123Z`).
pub(crate) fn format_rfc3339(t: SystemTime) -> String {
    let (secs, millis) = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_millis()),
        // Before 1970: only a broken clock gets here; report the epoch rather than panic.
        Err(_) => (0, 0),
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(crate) fn serialize_time<S: serde::Serializer>(
    t: &SystemTime,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*t))
}

pub(crate) fn serialize_opt_time<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_rfc3339(*t)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        let at = |s: u64, ms: u64| {
            format_rfc3339(
                SystemTime::UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms),
            )
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }
}
