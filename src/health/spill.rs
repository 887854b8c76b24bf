//! Load and spill-over (issue 16): the load each probe read, the load of each service's
//! regions, and the share of a region's clients sent to their next region.
//!
//! Owns [`LoadState`] (the supervisor's record of loads and the controller's state, updated
//! off the DNS path once per probe round) and [`LoadView`] (what a round publishes inside the
//! [`HealthView`], read lock-free by the policy, `/status` and the gauges). The controller
//! itself, [`next_fraction`], is pure: no clock, no I/O.
//!
//! # The controller
//!
//! A region's measured load already reflects the clients moved away, so the fraction is a
//! feedback loop. Each round it moves toward a model-based estimate: if load is proportional
//! to the clients kept, a load `L` measured with a fraction `f` moved means `L / (1 - f)`
//! unspilled, and keeping `1 - f*` of the clients gives the set point `S` when
//! `f* = 1 - S (1 - f) / L`. The `f` in force while `L` was measured is not the last one
//! answered: resolvers keep an answer for its TTL, so it is the mean of the fractions of the
//! last TTL ([`window`] rounds). Estimating from that mean (not from the latest fraction)
//! is what keeps the loop from overshooting when the TTL spans several probe rounds. The fraction moves by [`SPILL_GAIN`] of the gap, at most
//! [`MAX_STEP`] per round, within `0..=`[`MAX_FRACTION`]. The set point is half a dead band
//! below the high watermark; inside the band `[high - DEAD_BAND, high]` the fraction holds.
//! So a region above its mark sheds clients in bounded steps, settles inside the band and
//! stays there (no flip-flop on noise smaller than the band), and gives clients back only
//! once its load falls below the band. An unknown load (not reported, unparsable, every
//! target down or drained) drifts the fraction back to 0 in the same bounded steps.
//!
//! # Which clients move
//!
//! The policy hashes the client's subnet (/24, /56: the sticky hash of the service) to a point
//! in [0, 1); a client whose point is below a region's fraction is answered with its next
//! usable region instead. The same clients move while the fraction holds, and a growing
//! fraction moves more clients without bringing back any that moved. Instances of a fleet
//! compute their fractions from their own probes: with the same loads they step to the same
//! fractions, and the hash is the same everywhere, so they move the same clients.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::view::{HealthView, TargetKey, withdrawal};
use crate::config::{Config, Policy};

/// Share of the gap between the fraction and its estimate closed per round.
pub(crate) const SPILL_GAIN: f64 = 0.5;
/// Largest change of a fraction in one round.
pub(crate) const MAX_STEP: f64 = 0.1;
/// Smallest change of a fraction in one round (unless the gap is smaller): the last few
/// clients come back in a round or two, not asymptotically.
pub(crate) const MIN_STEP: f64 = 0.01;
/// Width of the band under the high watermark where the fraction holds.
pub(crate) const DEAD_BAND: f64 = 0.05;
/// Largest share of a region's clients moved away (a region keeps some clients, and so a
/// meaningful load signal).
pub(crate) const MAX_FRACTION: f64 = 0.9;
/// Most rounds the effective fraction averages over (a TTL far longer than the probe
/// interval still steps, on a shorter memory).
pub(crate) const MAX_WINDOW: usize = 240;
/// The step bound shrinks by this factor at each change of direction of a fraction (an
/// overshoot: the clients' caches answered slower than the TTL says), down to an eighth of
/// [`MIN_STEP`]; it is back to [`MAX_STEP`] once the fraction is 0 again.
pub(crate) const REVERSAL_DAMPING: f64 = 0.5;
/// Smoothing of the load behind a weighted region's free capacity (share of a new sample).
pub(crate) const FREE_SMOOTHING: f64 = 0.5;

/// Returns the next spill fraction of a region from the `previous` one, the fraction
/// `effective` while its `load` was measured (the mean of the fractions answered over the
/// last TTL: resolvers keep an answer that long) and its `high` watermark. `load` is `None`
/// when unknown.
pub(crate) fn next_fraction(
    previous: f64,
    effective: f64,
    load: Option<f64>,
    high: f64,
    max_step: f64,
) -> f64 {
    let clean = |f: f64| {
        if f.is_finite() {
            f.clamp(0.0, MAX_FRACTION)
        } else {
            0.0
        }
    };
    let (previous, effective) = (clean(previous), clean(effective));
    let band_low = (high - DEAD_BAND).max(0.0);
    let set_point = (high - DEAD_BAND / 2.0).max(high / 2.0);
    let estimate = match load {
        Some(l) if l.is_finite() && l >= band_low && l <= high => return previous,
        Some(l) if l.is_finite() && l > 0.0 => 1.0 - set_point * (1.0 - effective) / l,
        _ => 0.0,
    };
    let estimate = estimate.clamp(0.0, MAX_FRACTION);
    let gap = estimate - previous;
    // A gap under half a minimum step is estimation noise (a few subnets): hold, unless
    // the last clients are coming home.
    if gap.abs() < MIN_STEP / 2.0 && estimate > 0.0 {
        return previous;
    }
    let max_step = max_step.clamp(MIN_STEP / 8.0, MAX_STEP);
    let size = (SPILL_GAIN * gap.abs())
        .clamp(MIN_STEP.min(max_step), max_step)
        .min(gap.abs());
    let next = (previous + size.copysign(gap)).clamp(0.0, MAX_FRACTION);
    // Below a thousandth, nobody worth counting moves: snap to exactly 0 (spill off).
    if next < 1e-3 { 0.0 } else { next }
}

/// Returns how many rounds of fractions the effective fraction averages: the answers of the
/// last `ttl` (resolvers keep them that long) plus the round the load was measured in.
pub(crate) fn window(ttl: Duration, period: Duration) -> usize {
    let rounds = ttl.as_secs_f64() / period.as_secs_f64().max(1e-3);
    (rounds.ceil() as usize + 1).clamp(1, MAX_WINDOW)
}

/// Returns the point in [0, 1) of a client's spill hash: spilled from a region when below its
/// fraction.
pub(crate) fn spill_point(hash: u64) -> f64 {
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

/// The load side of a [`HealthView`]: what the last round published.
#[derive(Debug, Default)]
pub struct LoadView {
    /// The last load each probed target reported (targets whose check reads load).
    targets: HashMap<TargetKey, f64>,
    /// Per service name: its regions, in endpoint order.
    services: HashMap<Box<str>, ServiceLoad>,
}

impl LoadView {
    /// Returns the last load `address` reported under `check`, when known.
    pub(crate) fn target(&self, address: IpAddr, check: &str) -> Option<f64> {
        self.targets
            .get(&TargetKey {
                address,
                check: Arc::from(check),
            })
            .copied()
    }

    /// Returns the regions of `service` (by name) when some endpoint of it reads load.
    pub(crate) fn service(&self, service: &str) -> Option<&ServiceLoad> {
        self.services.get(service)
    }
}

/// The regions of one service whose endpoints read load, in endpoint order.
#[derive(Debug, Clone)]
pub struct ServiceLoad {
    /// One per endpoint, in config order (the policy checks the names match its own).
    pub(crate) regions: Box<[RegionLoad]>,
}

impl ServiceLoad {
    /// Returns the `i`-th endpoint's entry when it is `name` (the view may come from another
    /// config than the caller's for a moment during a reload).
    pub(crate) fn region(&self, i: usize, name: &str) -> Option<&RegionLoad> {
        self.regions.get(i).filter(|r| &*r.region == name)
    }
}

/// One region of a service: its load and how many of its clients move.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionLoad {
    /// The region's name.
    pub region: Box<str>,
    /// Whether the endpoint's check reads load at all.
    pub has_load: bool,
    /// The mean load of its usable targets that reported one (`None`: unknown).
    pub load: Option<f64>,
    /// The load above which clients spill.
    pub high_watermark: f64,
    /// The share of its clients answered with their next region (0 when off).
    pub spill_fraction: f64,
    /// `weighted`: the share of the weight kept, 1 - smoothed load in 0..=1 (`None`:
    /// unknown, the configured weight stands).
    pub free: Option<f64>,
}

/// One (service, endpoint) whose check reads load.
#[derive(Debug, Clone)]
struct PlanEntry {
    service: Box<str>,
    region: Box<str>,
    index: usize,
    policy: Policy,
    high_watermark: f64,
    /// The service's TTL: how long a moved client may still use its old answer.
    ttl: Duration,
    /// The interval of the endpoint's check: how often its region gets a fresh load (and so
    /// a step).
    interval: Duration,
    targets: Vec<TargetKey>,
}

/// The controller's memory of one (service, region).
#[derive(Debug, Clone, Default)]
struct Control {
    /// The fractions of the last rounds, newest last (at most the window).
    history: std::collections::VecDeque<f64>,
    /// The fraction before the oldest one kept (0 for a new region): it stands in for the
    /// rounds of a window not yet seen.
    before: f64,
    /// The load behind `free` (`weighted`), smoothed.
    smoothed: Option<f64>,
    /// The step bound now ([`MAX_STEP`], less after changes of direction); 0 means new.
    max_step: f64,
    /// The direction of the last move (-1, 0 none yet, 1).
    direction: i8,
}

impl Control {
    fn fraction(&self) -> f64 {
        self.history.back().copied().unwrap_or(0.0)
    }

    /// Returns the mean fraction answered over the last `window` rounds.
    fn effective(&self, window: usize) -> f64 {
        let window = window.max(1);
        let kept = self.history.iter().rev().take(window);
        let missing = window.saturating_sub(self.history.len());
        (kept.sum::<f64>() + missing as f64 * self.before) / window as f64
    }

    /// Steps the fraction over a `load` measured now (see [`next_fraction`]).
    fn step(&mut self, load: Option<f64>, high: f64, window: usize) {
        if self.max_step == 0.0 {
            self.max_step = MAX_STEP;
        }
        let previous = self.fraction();
        let next = next_fraction(previous, self.effective(window), load, high, self.max_step);
        let direction = if next > previous {
            1
        } else if next < previous {
            -1
        } else {
            0
        };
        if direction != 0 {
            if self.direction != 0 && direction != self.direction {
                self.max_step = (self.max_step * REVERSAL_DAMPING).max(MIN_STEP / 8.0);
            }
            self.direction = direction;
        }
        if next == 0.0 {
            self.max_step = MAX_STEP;
            self.direction = 0;
        }
        self.push(next, window);
    }

    fn push(&mut self, fraction: f64, window: usize) {
        self.history.push_back(fraction);
        while self.history.len() > window.max(1) {
            if let Some(old) = self.history.pop_front() {
                self.before = old;
            }
        }
    }
}

/// What the supervisor keeps about loads between rounds.
#[derive(Debug, Default)]
pub(crate) struct LoadState {
    /// Last load of every target of a load-reading check, and whether a probe reported since
    /// the last round.
    targets: HashMap<TargetKey, (Option<f64>, bool)>,
    /// Every service's endpoints: (service, endpoint count, entries of those that read load).
    plan: Vec<(Box<str>, usize, Vec<PlanEntry>)>,
    /// The round period: the shortest interval of a load-reading check (`None`: no load).
    period: Option<Duration>,
    /// Controller state per (service, region).
    control: HashMap<(Box<str>, Box<str>), Control>,
}

impl LoadState {
    /// Takes the services and checks of `config` (start and reload); controller state of the
    /// (service, region) pairs that remain is kept.
    pub(crate) fn configure(&mut self, config: &Config) {
        let mut plan = Vec::new();
        let mut period: Option<Duration> = None;
        let mut wanted: HashMap<TargetKey, ()> = HashMap::new();
        for s in &config.services {
            let mut entries = Vec::new();
            for (index, e) in s.endpoints.iter().enumerate() {
                let Some(check) = e.check.as_ref().filter(|c| c.load.is_some()) else {
                    continue;
                };
                period = Some(period.map_or(check.interval, |p| p.min(check.interval)));
                let name: Arc<str> = Arc::from(check.name.as_str());
                let targets: Vec<TargetKey> = e
                    .addresses
                    .iter()
                    .map(|&address| TargetKey {
                        address,
                        check: name.clone(),
                    })
                    .collect();
                for t in &targets {
                    wanted.insert(t.clone(), ());
                }
                entries.push(PlanEntry {
                    service: s.name.as_str().into(),
                    region: e.region.name.as_str().into(),
                    index,
                    policy: s.policy,
                    high_watermark: e.high_watermark,
                    ttl: Duration::from_secs(u64::from(s.ttl)),
                    interval: check.interval,
                    targets,
                });
            }
            if !entries.is_empty() {
                plan.push((s.name.as_str().into(), s.endpoints.len(), entries));
            }
        }
        self.targets.retain(|k, _| wanted.contains_key(k));
        let keep: HashMap<(Box<str>, Box<str>), ()> = plan
            .iter()
            .flat_map(|(_, _, es)| es.iter())
            .map(|e| ((e.service.clone(), e.region.clone()), ()))
            .collect();
        self.control.retain(|k, _| keep.contains_key(k));
        self.plan = plan;
        self.period = period;
    }

    /// Returns how often rounds run (`None`: no check reads load, no round is needed).
    pub(crate) fn period(&self) -> Option<Duration> {
        self.period
    }

    /// Records the load one probe of `key` read (`None`: unknown or failed).
    pub(crate) fn record(&mut self, key: &TargetKey, load: Option<f64>) {
        self.targets.insert(key.clone(), (load, true));
    }

    /// Runs one round over the health `view` in force: each region's load is the mean of
    /// its usable targets' loads (down and drained ones left out); each region with a fresh
    /// sample steps its controller. Returns the view to publish (`None` when no check reads
    /// load).
    pub(crate) fn round(&mut self, view: &HealthView) -> Option<Arc<LoadView>> {
        if self.plan.is_empty() {
            self.targets.clear();
            return None;
        }
        let mut out = LoadView::default();
        for (service, endpoints, entries) in &self.plan {
            let mut regions: Vec<RegionLoad> = Vec::with_capacity(*endpoints);
            for e in entries {
                let mut sum = 0.0;
                let mut n = 0u32;
                let mut fresh = false;
                for t in &e.targets {
                    let Some((load, is_fresh)) = self.targets.get(t) else {
                        continue;
                    };
                    fresh |= *is_fresh;
                    let w = withdrawal(view, &e.region, t.address, Some(&t.check));
                    if let (Some(l), false) = (load, w.is_withdrawn()) {
                        sum += l;
                        n += 1;
                    }
                }
                let load = (n > 0).then(|| sum / f64::from(n));
                let c = self
                    .control
                    .entry((e.service.clone(), e.region.clone()))
                    .or_default();
                // A region steps when its targets report, once per interval of its check.
                let window = window(e.ttl, e.interval.max(self.period.unwrap_or(e.interval)));
                if fresh {
                    if matches!(e.policy, Policy::Nearest | Policy::Geo | Policy::Failover) {
                        c.step(load, e.high_watermark, window);
                    }
                    c.smoothed = match (c.smoothed, load) {
                        (Some(s), Some(l)) => Some(s + FREE_SMOOTHING * (l - s)),
                        (_, l) => l,
                    };
                }
                let (fraction, smoothed) = (c.fraction(), c.smoothed);
                // Endpoints before this one that read no load get a placeholder each.
                while regions.len() < e.index {
                    regions.push(RegionLoad {
                        region: "".into(),
                        has_load: false,
                        load: None,
                        high_watermark: 1.0,
                        spill_fraction: 0.0,
                        free: None,
                    });
                }
                regions.push(RegionLoad {
                    region: e.region.clone(),
                    has_load: true,
                    load,
                    high_watermark: e.high_watermark,
                    spill_fraction: fraction,
                    free: (e.policy == Policy::Weighted)
                        .then_some(smoothed)
                        .flatten()
                        .map(|s| (1.0 - s).clamp(0.0, 1.0)),
                });
            }
            out.services.insert(
                service.clone(),
                ServiceLoad {
                    regions: regions.into(),
                },
            );
        }
        for (key, (load, fresh)) in self.targets.iter_mut() {
            *fresh = false;
            if let Some(l) = load {
                out.targets.insert(key.clone(), *l);
            }
        }
        Some(Arc::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: spreads client numbers over the hash space as subnet hashes are.
    fn mix(x: u64) -> u64 {
        let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A table of (previous fraction, load, expected next fraction) at the default mark 0.8.
    #[test]
    fn one_step_over_a_table_of_loads() {
        let table: &[(f64, Option<f64>, f64)] = &[
            // Under the band: nothing moves, a fraction gives clients back in bounded steps.
            (0.0, Some(0.10), 0.0),
            (0.0, Some(0.74), 0.0),
            (0.30, Some(0.10), 0.20),
            (0.05, Some(0.50), 0.025),
            (0.01, Some(0.50), 0.0),
            // Inside the band [0.75, 0.80]: hold, whatever the fraction.
            (0.0, Some(0.75), 0.0),
            (0.0, Some(0.80), 0.0),
            (0.14, Some(0.78), 0.14),
            // Above the mark: half the gap to the estimate, at most 0.1 per round.
            // 0.85 with nothing moved: estimate 1 - 0.775/0.85 = 0.0882, step 0.0441.
            (0.0, Some(0.85), 0.0441),
            (0.0, Some(0.93), 0.0833),
            (0.0, Some(1.50), 0.10),
            (
                0.10,
                Some(0.90),
                0.10 + (1.0 - 0.775 * 0.9 / 0.9 - 0.10) / 2.0,
            ),
            // Never past the cap.
            (0.89, Some(5.0), MAX_FRACTION),
            // Unknown load: back toward 0 in bounded steps.
            (0.35, None, 0.25),
            (0.04, None, 0.02),
            (0.008, None, 0.0),
            (f64::NAN, Some(0.5), 0.0),
        ];
        for &(prev, load, want) in table {
            let got = next_fraction(prev, prev, load, 0.8, MAX_STEP);
            assert!(
                (got - want).abs() < 1e-3,
                "next_fraction({prev}, {prev}, {load:?}, 0.8) = {got}, want {want}"
            );
        }
    }

    /// A simulated backend behind resolvers: 2,000 client subnets, each with its hash point
    /// and a resolver that asks again every `ttl` rounds (at its own phase) and keeps the
    /// answer meanwhile; a subnet loads the region while its last answer was the region. The
    /// load is `demand` times the share of subnets at home (plus alternating `noise`). The
    /// controller assumes the TTL is `assumed` rounds. Returns (load, fraction) per round.
    fn simulate(
        demand: f64,
        ttl: usize,
        assumed: usize,
        rounds: usize,
        noise: f64,
    ) -> Vec<(f64, f64)> {
        let n = 2000u64;
        let clients: Vec<(f64, usize)> = (0..n)
            .map(|i| (spill_point(mix(i)), (mix(i + n) % ttl as u64) as usize))
            .collect();
        let mut home = vec![true; clients.len()];
        let mut c = Control::default();
        let mut trace = Vec::new();
        for round in 0..rounds {
            let f = c.fraction();
            for (i, (point, phase)) in clients.iter().enumerate() {
                if (round + phase) % ttl == 0 {
                    home[i] = *point >= f;
                }
            }
            let at_home = home.iter().filter(|&&h| h).count();
            let jitter = if round % 2 == 0 { noise } else { -noise };
            let load = demand * at_home as f64 / n as f64 + jitter;
            c.step(Some(load), 0.8, assumed);
            trace.push((load, c.fraction()));
        }
        trace
    }

    fn print_trace(name: &str, trace: &[(f64, f64)]) {
        println!("{name}: round load fraction");
        for (i, (l, f)) in trace.iter().enumerate() {
            println!("  {i:2} {l:.3} {f:.3}");
        }
    }

    /// Counts the changes of direction of the fraction (up then down, or down then up).
    fn reversals(trace: &[(f64, f64)]) -> usize {
        let mut last = 0.0f64;
        let mut n = 0;
        for w in trace.windows(2) {
            let d = w[1].1 - w[0].1;
            if d.abs() < 1e-9 {
                continue;
            }
            if last != 0.0 && d.signum() != last.signum() {
                n += 1;
            }
            last = d;
        }
        n
    }

    #[test]
    fn the_fraction_converges_without_flip_flopping_under_a_load_that_reacts() {
        // (demand, TTL in rounds, TTL the controller assumes, noise)
        for (demand, ttl, assumed, noise) in [
            (0.9, 1, 1, 0.0),
            (1.2, 1, 1, 0.0),
            (1.6, 1, 1, 0.0),
            (1.2, 3, 3, 0.0),
            (1.2, 15, 15, 0.0),
            (0.93, 6, 6, 0.01),
            (1.2, 6, 6, 0.02),
        ] {
            let trace = simulate(demand, ttl, assumed, 80, noise);
            print_trace(
                &format!("demand {demand}, ttl {ttl} rounds (assumed {assumed}), noise {noise}"),
                &trace,
            );
            let tail = &trace[60..];
            let (_, last) = trace[trace.len() - 1];
            if noise == 0.0 {
                // Settled: the fraction no longer moves and the load is in the band; on the
                // way it only ever moved one way (no overshoot to correct, never a swing).
                assert!(
                    tail.iter().all(|(_, f)| (f - last).abs() < 1e-9),
                    "still moving: {tail:?}"
                );
                for (l, _) in tail {
                    assert!(*l <= 0.805 && *l >= 0.745, "load {l} outside the band");
                }
                assert_eq!(
                    reversals(&trace),
                    0,
                    "flip-flop at demand {demand}, ttl {ttl}"
                );
            } else {
                // Noise (+-1 or 2 % of load, every other round) at the band's edges may nudge
                // it by a minimum step (1 % of clients) now and then: never a swing.
                let settled = &trace[20..];
                let lo = settled.iter().map(|t| t.1).fold(1.0, f64::min);
                let hi = settled.iter().map(|t| t.1).fold(0.0, f64::max);
                assert!(
                    hi - lo <= 0.03,
                    "swing {lo}..{hi} at demand {demand}, ttl {ttl}"
                );
                for w in settled.windows(2) {
                    assert!((w[1].1 - w[0].1).abs() <= MIN_STEP * 1.5, "big step {w:?}");
                }
            }
            let want = 1.0 - 0.775 / demand;
            assert!(
                (last - want).abs() < 0.05,
                "fraction {last} far from {want}"
            );
        }
    }

    #[test]
    fn a_ttl_longer_than_assumed_is_damped_and_settles() {
        for (ttl, assumed) in [(6, 3), (10, 1), (3, 1)] {
            let trace = simulate(1.2, ttl, assumed, 120, 0.0);
            print_trace(&format!("demand 1.2, ttl {ttl}, assumed {assumed}"), &trace);
            let (_, last) = trace[trace.len() - 1];
            let settled = trace[100..].iter().all(|(_, f)| (f - last).abs() < 1e-9);
            assert!(settled, "still moving at ttl {ttl}, assumed {assumed}");
            assert!(reversals(&trace) <= 4, "{trace:?}");
        }
    }

    #[test]
    fn demand_falling_back_gives_every_client_back() {
        let mut f = 0.0;
        for _ in 0..20 {
            f = next_fraction(f, f, Some(1.2 * (1.0 - f)), 0.8, MAX_STEP);
        }
        assert!(f > 0.3);
        let mut steps = 0;
        while f > 0.0 && steps < 50 {
            f = next_fraction(f, f, Some(0.3 * (1.0 - f)), 0.8, MAX_STEP);
            steps += 1;
        }
        assert_eq!(f, 0.0);
        assert!(steps <= 10, "took {steps} rounds");
    }

    #[test]
    fn spill_points_spread_over_the_unit_interval() {
        let n = 10_000;
        let below = (0..n)
            .map(|i| spill_point(mix(i)))
            .filter(|&p| p < 0.25)
            .count();
        assert!((2300..2700).contains(&below), "{below} of {n} below 0.25");
    }

    fn config(policy: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("z"), "").unwrap();
        let text = format!(
            r#"[[zone]]
origin = "example.net."
file = "z"
[region.a]
latitude = 1.0
longitude = 2.0
[region.b]
latitude = 3.0
longitude = 4.0
[check.web]
kind = "http"
interval = "1s"
timeout = "500ms"
load = {{ header = "X-Load" }}
[check.plain]
kind = "http"
[[service]]
name = "api.example.net."
policy = "{policy}"
ttl = 3
endpoints = [
  {{ region = "a", addresses = ["192.0.2.1", "192.0.2.2", "192.0.2.3"], check = "web" }},
  {{ region = "b", addresses = ["192.0.2.9"], check = "plain" }},
]
"#
        );
        crate::config::parse_str(&dir.path().join("m.toml"), &text).unwrap()
    }

    fn key(last: u8) -> TargetKey {
        TargetKey {
            address: IpAddr::from([192, 0, 2, last]),
            check: Arc::from("web"),
        }
    }

    #[test]
    fn a_round_averages_usable_targets_and_steps_only_on_fresh_samples() {
        let mut st = LoadState::default();
        st.configure(&config("nearest"));
        assert_eq!(st.period(), Some(Duration::from_secs(1)));
        // 192.0.2.3 is down: its (high) load is left out; 192.0.2.2 reports nothing.
        let view = HealthView::empty().with_state(key(3).address, "web", super::super::State::Down);
        st.record(&key(1), Some(0.9));
        st.record(&key(2), None);
        st.record(&key(3), Some(5.0));
        let lv = st.round(&view).unwrap();
        let svc = lv.service("api.example.net.").unwrap();
        let a = svc.region(0, "a").unwrap();
        assert_eq!(a.load, Some(0.9));
        assert!(a.spill_fraction > 0.0, "{a:?}");
        assert_eq!(a.free, None, "free capacity is for weighted only");
        // The endpoint without load has a placeholder that matches no name.
        assert!(svc.region(1, "b").is_none());
        assert_eq!(lv.target(key(1).address, "web"), Some(0.9));
        assert_eq!(lv.target(key(2).address, "web"), None);
        // No probe since: the fraction holds.
        let before = a.spill_fraction;
        let lv = st.round(&view).unwrap();
        assert_eq!(
            lv.service("api.example.net.").unwrap().regions[0].spill_fraction,
            before
        );
        // The region drained: every target left out, load unknown, the fraction shrinks.
        let drained = view.clone().with_drained("a");
        st.record(&key(1), Some(0.9));
        let lv = st.round(&drained).unwrap();
        let a = &lv.service("api.example.net.").unwrap().regions[0];
        assert_eq!(a.load, None);
        assert!(a.spill_fraction < before);
    }

    #[test]
    fn weighted_regions_get_free_capacity_and_no_fraction() {
        let mut st = LoadState::default();
        st.configure(&config("weighted"));
        st.record(&key(1), Some(0.6));
        let lv = st.round(&HealthView::empty()).unwrap();
        let a = &lv.service("api.example.net.").unwrap().regions[0];
        assert_eq!((a.spill_fraction, a.free), (0.0, Some(0.4)));
        st.record(&key(1), Some(1.0));
        let lv = st.round(&HealthView::empty()).unwrap();
        let a = &lv.service("api.example.net.").unwrap().regions[0];
        // Smoothed: half way from 0.6 to 1.0.
        assert!((a.free.unwrap() - 0.2).abs() < 1e-9, "{a:?}");
    }

    #[test]
    fn without_load_nothing_is_published() {
        let mut st = LoadState::default();
        let mut c = config("nearest");
        for s in &mut c.services {
            for e in &mut s.endpoints {
                e.check = None;
            }
        }
        st.configure(&c);
        assert_eq!(st.period(), None);
        assert!(st.round(&HealthView::empty()).is_none());
    }
}
