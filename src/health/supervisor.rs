//! The health supervisor: [`Health`] runs the probes and publishes [`HealthView`]s.
//!
//! One task probes each distinct (address, check) pair, however many services or regions name
//! it. First probes are spread at random over the first interval, and every later start is
//! re-jittered by up to [`RESCHEDULE_JITTER`] of the period (earlier, never later), so that
//! targets that started together drift apart instead of probing in bursts. After a result that disagrees with the
//! target's state (a failure of an up target, a success of a down one) extra probes run every
//! `fast_interval` until the state is decided (HAProxy's `fastinter`), between the regular
//! probes, which keep their grid (see `run_probe`).
//!
//! Each result goes to that target's [`TargetState`]. A result that is our own error
//! ([`ProbeError::Ours`](super::probe::ProbeError::Ours)) changes no state; it is counted by
//! reason ([`Health::probe_errors`], `meridian_probe_errors_total{reason}`) and logged once
//! per reason.
//!
//! On a change, the published view is updated incrementally: only the shard holding the
//! target is copied ([`HealthView`]), under a lock of its own, after the table lock is
//! released. The transition is logged at INFO and sent to every subscriber
//! ([`Health::subscribe`]) over an unbounded channel, so that a burst of transitions is
//! counted and notified exactly (a bounded broadcast channel lost events once 1024 were
//! pending). Every probe result is counted in its target's [`ProbeStats`] (one handle per
//! check and region, resolved when the target is added; read at scrape time through
//! [`Health::probe_stats`]), with a few relaxed atomic adds: no channel, no lookup per probe.
//!
//! Locking: a `std::sync::Mutex` guards the table of targets. Only probe tasks (once per probe),
//! reloads and admin calls take it, never the answer path, and nothing awaits while holding it.
//! The view lock is taken after the table lock (never the other way round); a full rebuild
//! (start, reload) bumps an epoch under both, and an incremental change computed before it is
//! then dropped (the rebuild includes it). Drains additionally take an async mutex so that two
//! concurrent drains write the state file in order; the file is written before the view
//! changes, so a failed write changes nothing.
//!
//! The probe tasks run on the runtime given to [`Health::begin_on`] (the server gives them a
//! runtime of their own, so that a probe storm does not delay DNS over TCP), or on the current
//! one.
//!
//! Reload ([`Health::reload`]) keeps the state of targets that remain, restarts the task of a
//! target whose check changed (other than `rise`/`fall`, which apply in place), starts new
//! targets and stops removed ones. A result from a stopped task is ignored (each task carries
//! a generation number).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::overrides::{Drain, DrainEvent, Overrides, OverridesError, Subject};
use super::probe::{OwnError, ProbeOutcome, Prober};
use super::quorum::{Agreement, PeerVotes};
use super::spill::LoadState;
use super::state::{Observation, Reason, TargetState, Thresholds};
use super::view::{HealthView, State, TargetKey};
use crate::config::{Check, Config};

/// How much earlier than its period each probe may start, at random, as a share of the period
/// (never later, so that the withdrawal bound `interval + timeout + …` holds).
pub(crate) const RESCHEDULE_JITTER: f64 = 0.05;

/// An error of the health subsystem.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The overrides state file is unreadable or corrupt (at start), or cannot be written.
    #[error(transparent)]
    StateFile(#[from] OverridesError),
    /// A drain named a region the config does not define.
    #[error("unknown region {0:?}")]
    UnknownRegion(String),
    /// A drain named an address that no endpoint of the config has.
    #[error("unknown target {0}: no endpoint has this address")]
    UnknownTarget(IpAddr),
}

/// A target state change, as sent to subscribers (metrics, webhook).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct TransitionEvent {
    /// The target's address.
    pub(crate) address: IpAddr,
    /// The check's name.
    pub(crate) check: String,
    /// The regions whose endpoints list this target (with this check), in config order.
    pub(crate) regions: Vec<String>,
    /// The state before.
    pub(crate) from: State,
    /// The state after.
    pub(crate) to: State,
    /// Why the state changed.
    pub(crate) reason: Reason,
    /// When (wall time of the deciding probe).
    #[serde(serialize_with = "super::serialize_time")]
    pub(crate) at: SystemTime,
}

/// Upper bounds of the probe-duration histogram buckets, in seconds
/// (`meridian_probe_duration_seconds`).
pub(crate) const PROBE_DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The results of [`ProbeStats`], in counting order (`result` of `meridian_probes_total`).
pub(crate) const PROBE_RESULTS: [&str; 3] = ["pass", "fail", "error"];

/// Probe results and durations of the targets of one (check, region), counted by the probe
/// tasks with relaxed atomic adds (no channel, no label lookup per probe: at 10,000 probes a
/// second, finding the region per probe was a scan of every endpoint) and read at scrape time
/// by the admin port. A target shared by regions is counted under the first in config order.
#[derive(Debug, Default)]
pub(crate) struct ProbeStats {
    /// Probes by result, in [`PROBE_RESULTS`] order.
    results: [AtomicU64; 3],
    /// Probes per bucket of [`PROBE_DURATION_BUCKETS`] (not cumulative); the last is +Inf.
    buckets: [AtomicU64; PROBE_DURATION_BUCKETS.len() + 1],
    /// The sum of the durations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl ProbeStats {
    /// Counts one probe: `result` is an index into [`PROBE_RESULTS`].
    fn record(&self, result: usize, latency: Duration) {
        self.results[result].fetch_add(1, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        let bucket = PROBE_DURATION_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(PROBE_DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Returns the probes counted by result, in [`PROBE_RESULTS`] order.
    pub(crate) fn results(&self) -> [u64; 3] {
        std::array::from_fn(|i| self.results[i].load(Ordering::Relaxed))
    }

    /// Returns the sum of the durations in seconds, the count, and the (upper bound, count)
    /// of every bucket, not cumulative, the last being +Inf.
    pub(crate) fn histogram(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = PROBE_DURATION_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.buckets)
            .map(|(b, n)| (b, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

/// The state of one target, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct TargetStatus {
    /// The target's address.
    pub(crate) address: IpAddr,
    /// The check's name.
    pub(crate) check: String,
    /// The check's kind (`http`, `https`, `tcp`).
    pub(crate) kind: &'static str,
    /// The regions whose endpoints list this target (with this check), in config order.
    pub(crate) regions: Vec<String>,
    /// The probed state (drains do not change it; see `forced`).
    pub(crate) state: State,
    /// True when an operator override withdraws the target (one of its regions is drained).
    pub(crate) forced: bool,
    /// When the current state began (`None` while unknown).
    #[serde(serialize_with = "super::serialize_opt_time")]
    pub(crate) since: Option<SystemTime>,
    /// The last probe result (`None` before the first).
    pub last_check: Option<Observation>,
    /// In a fleet: each instance's view and the agreed state (what answers use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Agreement>,
}

/// What a reload changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReloadSummary {
    /// Targets that were new and got a probe task.
    pub(crate) added: usize,
    /// Targets that are gone; their tasks were stopped.
    pub(crate) removed: usize,
    /// Targets whose check changed; their tasks were restarted, their state kept.
    pub(crate) restarted: usize,
    /// Targets left as they were (their `rise`/`fall` may have changed in place).
    pub(crate) kept: usize,
}

/// The running health subsystem. Cheap to clone; all clones share one set of probe tasks.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    view: Arc<ArcSwap<HealthView>>,
    /// Taken to change the view; holds the epoch of the last full rebuild.
    view_lock: Mutex<u64>,
    /// The fleet's votes (empty without `[cluster]`): published views hold the agreed state.
    peers: ArcSwap<PeerVotes>,
    table: Mutex<Table>,
    /// Serializes state-file writes (drain/undrain).
    write_lock: tokio::sync::Mutex<()>,
    events: Subscribers<TransitionEvent>,
    /// Probe counts by (check, region): one shared handle per pair, given to each target.
    probe_stats: Mutex<HashMap<StatsKey, Arc<ProbeStats>>>,
    drain_events: Subscribers<DrainEvent>,
    /// Our own probe errors, by [`OwnError::index`].
    own_errors: [AtomicU64; OwnError::REASONS.len()],
    /// Whether each reason was logged already.
    own_logged: [AtomicBool; OwnError::REASONS.len()],
    ready: watch::Sender<bool>,
    token: CancellationToken,
    tracker: TaskTracker,
    /// Where probe tasks run (`None`: the current runtime).
    runtime: Mutex<Option<Handle>>,
    /// Loads and the spill controller (issue 16); never taken while `view_lock` is held.
    loads: Mutex<LoadState>,
    /// Wakes the load round task when a reload changed its period.
    loads_changed: tokio::sync::Notify,
}

/// A check's name and a region: what [`ProbeStats`] are kept by.
type StatsKey = (Arc<str>, String);

/// Unbounded channels to every subscriber: nothing is lost while a subscriber catches up.
#[derive(Debug)]
struct Subscribers<T>(Mutex<Vec<mpsc::UnboundedSender<T>>>);

impl<T: Clone> Subscribers<T> {
    fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<mpsc::UnboundedSender<T>>> {
        // Sending cannot panic half-way through a change of the list.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscribe(&self) -> mpsc::UnboundedReceiver<T> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().push(tx);
        rx
    }

    /// Sends `item` to every live subscriber and forgets those that are gone.
    fn send(&self, item: impl FnOnce() -> T) {
        let mut subs = self.lock();
        subs.retain(|s| !s.is_closed());
        if subs.is_empty() {
            return;
        }
        let item = item();
        for s in subs.iter() {
            let _ = s.send(item.clone());
        }
    }
}

#[derive(Debug)]
struct Table {
    targets: HashMap<TargetKey, Target>,
    known_regions: HashSet<String>,
    /// Every endpoint address of the config, probed or not (drainable targets).
    known_addresses: HashSet<IpAddr>,
    /// The operator's drains with their records.
    overrides: Overrides,
    state_file: Option<PathBuf>,
    next_generation: u64,
    /// Bumped by every full rebuild of the view.
    epoch: u64,
    /// Targets without a probe result yet (the first round is done when none is left).
    unresolved: usize,
}

#[derive(Debug)]
struct Target {
    check: Arc<Check>,
    regions: Vec<String>,
    /// Where this target's probes are counted (its check and first region).
    stats: Arc<ProbeStats>,
    state: TargetState,
    generation: u64,
    stop: CancellationToken,
}

/// The targets a config asks for: (address, check) -> (check, regions in config order).
fn desired_targets(config: &Config) -> HashMap<TargetKey, (Arc<Check>, Vec<String>)> {
    let mut names: HashMap<&str, Arc<str>> = HashMap::new();
    let mut out: HashMap<TargetKey, (Arc<Check>, Vec<String>)> = HashMap::new();
    for service in &config.services {
        for endpoint in &service.endpoints {
            let Some(check) = &endpoint.check else {
                continue;
            };
            let name = check.name.as_str();
            let name = names.entry(name).or_insert_with(|| Arc::from(name)).clone();
            for &address in &endpoint.addresses {
                let key = TargetKey {
                    address,
                    check: name.clone(),
                };
                let entry = out
                    .entry(key)
                    .or_insert_with(|| (check.clone(), Vec::new()));
                if !entry.1.contains(&endpoint.region.name) {
                    entry.1.push(endpoint.region.name.clone());
                }
            }
        }
    }
    out
}

fn thresholds(check: &Check) -> Thresholds {
    Thresholds {
        rise: check.rise,
        fall: check.fall,
        initial: check.initial_state,
    }
}

/// Returns true when two check definitions probe differently (not just decide differently).
fn probes_differ(a: &Check, b: &Check) -> bool {
    let mut b = b.clone();
    b.rise = a.rise;
    b.fall = a.fall;
    *a != b
}

impl Health {
    #[cfg(test)]
    /// Loads the overrides from `config.server.state_file` and starts one probe task per
    /// distinct (address, check) on the current tokio runtime. The tasks stop when `token` is
    /// cancelled (or on [`Health::shutdown`]). Fails when the state file is unreadable or
    /// corrupt; a missing file means nothing is drained. Must be called within a tokio
    /// runtime; the tasks hold the subsystem alive until `token` is cancelled.
    pub(crate) fn start(config: &Config, token: CancellationToken) -> Result<Health, HealthError> {
        let health = Self::new(config, token)?;
        health.begin(config);
        Ok(health)
    }

    /// Like `Health::start` (tests), but starts no probe until [`Health::begin`]: subscribers
    /// ([`Health::subscribe`]) attached in between see every transition, the first ones too.
    pub(crate) fn new(config: &Config, token: CancellationToken) -> Result<Health, HealthError> {
        let overrides = match &config.server.state_file {
            Some(path) => Overrides::load(path)?,
            None => Overrides::empty(),
        };
        if !overrides.drained_regions.is_empty() || !overrides.drained_targets.is_empty() {
            info!(
                regions = ?overrides.drained_regions,
                targets = ?overrides.drained_targets,
                "drains loaded from state file"
            );
        }
        let inner = Arc::new(Inner {
            view: Arc::new(ArcSwap::from_pointee(HealthView::empty())),
            view_lock: Mutex::new(0),
            peers: ArcSwap::from_pointee(PeerVotes::default()),
            table: Mutex::new(Table {
                targets: HashMap::new(),
                known_regions: HashSet::new(),
                known_addresses: HashSet::new(),
                overrides,
                state_file: config.server.state_file.clone(),
                next_generation: 0,
                epoch: 0,
                unresolved: 0,
            }),
            write_lock: tokio::sync::Mutex::new(()),
            events: Subscribers::new(),
            probe_stats: Mutex::new(HashMap::new()),
            drain_events: Subscribers::new(),
            own_errors: Default::default(),
            own_logged: Default::default(),
            ready: watch::Sender::new(false),
            token,
            tracker: TaskTracker::new(),
            runtime: Mutex::new(None),
            loads: Mutex::new(LoadState::default()),
            loads_changed: tokio::sync::Notify::new(),
        });
        Ok(Health { inner })
    }

    /// Starts the probes of `config` (the config given to [`Health::new`]) on the current
    /// runtime.
    pub(crate) fn begin(&self, config: &Config) {
        let summary = self.apply(config, false);
        self.spawn_load_rounds();
        info!(targets = summary.added, "health probes started");
    }

    /// Like [`Health::begin`], but runs the probe tasks (those of later reloads too) on
    /// `runtime`.
    pub(crate) fn begin_on(&self, config: &Config, runtime: Handle) {
        *self.inner.runtime.lock().unwrap_or_else(|p| p.into_inner()) = Some(runtime);
        self.begin(config);
    }

    /// Returns how many probes failed because of our own trouble, by reason
    /// ([`OwnError::REASONS`]), since start.
    pub(crate) fn probe_errors(&self) -> Vec<(&'static str, u64)> {
        OwnError::REASONS
            .iter()
            .zip(&self.inner.own_errors)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Returns the current view (one atomic load and a reference count increment).
    pub(crate) fn view(&self) -> Arc<HealthView> {
        self.inner.view.load_full()
    }

    /// Returns the shared cell holding the current view, for readers that load it per query
    /// (`cell.load()` does not even touch the reference count).
    pub(crate) fn view_cell(&self) -> Arc<ArcSwap<HealthView>> {
        self.inner.view.clone()
    }

    /// Applies a new config: keeps the state of targets that remain, restarts those whose
    /// check changed, starts new ones and stops removed ones. Drains are kept; a changed
    /// `state_file` gets the current drains written to it.
    pub(crate) fn reload(&self, config: &Config) -> ReloadSummary {
        let summary = self.apply(config, true);
        info!(
            added = summary.added,
            removed = summary.removed,
            restarted = summary.restarted,
            kept = summary.kept,
            "health targets reloaded"
        );
        summary
    }

    /// Withdraws `region` from every answer and persists it. Returns whether anything changed.
    #[cfg(test)]
    pub(crate) async fn drain(&self, region: &str) -> Result<bool, HealthError> {
        let subject = Subject::Region(region.to_string());
        self.set_drain(&subject, Some(Drain::now(""))).await
    }

    /// Puts `region` back into answers and persists it. Returns whether anything changed.
    #[cfg(test)]
    pub(crate) async fn undrain(&self, region: &str) -> Result<bool, HealthError> {
        self.set_drain(&Subject::Region(region.to_string()), None)
            .await
    }

    /// Returns an error when `subject` cannot be drained: a region the config does not define
    /// or an address no endpoint has.
    pub(crate) fn check_drainable(&self, subject: &Subject) -> Result<(), HealthError> {
        let table = self.inner.lock();
        match subject {
            Subject::Region(r) if !table.known_regions.contains(r) => {
                Err(HealthError::UnknownRegion(r.clone()))
            }
            Subject::Target(a) if !table.known_addresses.contains(a) => {
                Err(HealthError::UnknownTarget(*a))
            }
            _ => Ok(()),
        }
    }

    /// Drains `subject` with `record` (`Some`, after [`Health::check_drainable`]) or undrains
    /// it (`None`), writes the state file, then publishes. Returns whether it changed.
    pub(crate) async fn set_drain(
        &self,
        subject: &Subject,
        record: Option<Drain>,
    ) -> Result<bool, HealthError> {
        if record.is_some() {
            self.check_drainable(subject)?;
        }
        let drained = record.is_some();
        let changed = self
            .update_overrides(SystemTime::now(), |o| o.set(subject, record))
            .await?;
        if changed {
            let what = if drained { "drained" } else { "undrained" };
            info!(%subject, "{what}");
        }
        Ok(changed)
    }

    /// Replaces every drain with `overrides` (the fleet's, read from the store), writes the
    /// state file (the cache) and publishes. Returns whether any drain changed.
    pub(crate) async fn replace_drains(&self, overrides: Overrides) -> Result<bool, HealthError> {
        self.update_overrides(SystemTime::now(), move |o| {
            let changed = o.drained_regions != overrides.drained_regions
                || o.drained_targets != overrides.drained_targets;
            *o = overrides;
            changed
        })
        .await
    }

    /// Ends the drains whose expiry has passed at `now`; returns what ended.
    pub(crate) async fn expire_drains(&self, now: SystemTime) -> Result<Vec<Subject>, HealthError> {
        let mut gone = Vec::new();
        self.update_overrides(now, |o| {
            gone = o.expire(now);
            !gone.is_empty()
        })
        .await?;
        for s in &gone {
            info!(subject = %s, "drain expired");
        }
        Ok(gone)
    }

    /// Returns the drains with their records.
    pub(crate) fn drains(&self) -> Overrides {
        self.inner.lock().overrides.clone()
    }

    /// Returns the drained regions, sorted.
    pub(crate) fn drained_regions(&self) -> Vec<String> {
        let table = self.inner.lock();
        table.overrides.drained_regions.iter().cloned().collect()
    }

    /// Sets the fleet's votes and republishes the view with the agreed states.
    pub(crate) fn set_peer_votes(&self, votes: PeerVotes) {
        self.inner.peers.store(Arc::new(votes));
        let mut table = self.inner.lock();
        self.inner.publish(&mut table);
    }

    /// Returns this instance's own state of every probed target (for publishing to the fleet).
    pub(crate) fn local_states(&self) -> Vec<(TargetKey, State, Option<SystemTime>)> {
        let table = self.inner.lock();
        table
            .targets
            .iter()
            .map(|(k, t)| (k.clone(), t.state.state(), t.state.since()))
            .collect()
    }

    /// Returns every target's state, sorted by check name, then address.
    pub(crate) fn status(&self) -> Vec<TargetStatus> {
        let peers = self.inner.peers.load();
        let table = self.inner.lock();
        let mut out: Vec<TargetStatus> = table
            .targets
            .iter()
            .map(|(key, t)| TargetStatus {
                address: key.address,
                check: key.check.to_string(),
                kind: t.check.kind.as_str(),
                regions: t.regions.clone(),
                state: t.state.state(),
                forced: table.overrides.drained_targets.contains(&key.address)
                    || t.regions
                        .iter()
                        .any(|r| table.overrides.drained_regions.contains(r)),
                since: t.state.since(),
                last_check: t.state.last().cloned(),
                fleet: peers
                    .quorum
                    .is_some()
                    .then(|| peers.agree(key, t.state.state())),
            })
            .collect();
        out.sort_by(|a, b| (&a.check, a.address).cmp(&(&b.check, b.address)));
        out
    }

    /// Returns a receiver of every target state change from now on (unbounded: none is lost).
    pub(crate) fn subscribe(&self) -> mpsc::UnboundedReceiver<TransitionEvent> {
        self.inner.events.subscribe()
    }

    /// Returns the probe counts of every (check, region) probed since start, sorted.
    pub(crate) fn probe_stats(&self) -> Vec<(Arc<str>, String, Arc<ProbeStats>)> {
        let stats = self
            .inner
            .probe_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = stats
            .iter()
            .map(|((c, r), s)| (c.clone(), r.clone(), s.clone()))
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// Returns a receiver of every change of the drains from now on, whatever made it (an
    /// operator, an expiry, the fleet's store), in the order they were applied (unbounded: a
    /// drain that begins and ends at once is two events).
    pub(crate) fn subscribe_drains(&self) -> mpsc::UnboundedReceiver<DrainEvent> {
        self.inner.drain_events.subscribe()
    }

    /// Returns true once every target present at start has at least one probe result. Stays
    /// true afterwards (targets added by a reload do not make the process unready).
    pub(crate) fn first_round_done(&self) -> bool {
        *self.inner.ready.borrow()
    }

    #[cfg(test)]
    /// Waits until [`Health::first_round_done`] is true.
    pub(crate) async fn wait_first_round(&self) {
        let mut rx = self.inner.ready.subscribe();
        // The sender lives in `inner`, which `self` keeps alive: the wait cannot fail.
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Stops every probe task and waits for them to finish.
    pub(crate) async fn shutdown(&self) {
        self.inner.token.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }

    /// Changes the drains with `change` (which returns whether anything changed) on a copy,
    /// writes the copy to the state file first (so a failed write changes nothing), then
    /// publishes it and sends its [`DrainEvent`]s (made at `now`) to the subscribers. Returns
    /// whether the drained sets changed.
    async fn update_overrides(
        &self,
        now: SystemTime,
        change: impl FnOnce(&mut Overrides) -> bool,
    ) -> Result<bool, HealthError> {
        let _write = self.inner.write_lock.lock().await;
        let (next, path) = {
            let table = self.inner.lock();
            let mut next = table.overrides.clone();
            let changed = change(&mut next);
            if !changed && next == table.overrides {
                return Ok(false);
            }
            (next, table.state_file.clone())
        };
        if let Some(path) = path {
            let overrides = next.clone();
            tokio::task::spawn_blocking(move || overrides.save(&path))
                .await
                .map_err(|e| OverridesError::Write {
                    path: PathBuf::new(),
                    source: std::io::Error::other(e),
                })??;
        }
        let mut table = self.inner.lock();
        let changed = table.overrides.drained_regions != next.drained_regions
            || table.overrides.drained_targets != next.drained_targets;
        let events = table.overrides.changes(&next, now);
        table.overrides = next;
        self.inner.publish_drains(&table);
        drop(table);
        // Still under the write lock: subscribers get the changes in the order they were made.
        for e in events {
            self.inner.drain_events.send(|| e);
        }
        Ok(changed)
    }

    fn apply(&self, config: &Config, is_reload: bool) -> ReloadSummary {
        let desired = desired_targets(config);
        let mut summary = ReloadSummary::default();
        let mut guard = self.inner.lock();
        let table: &mut Table = &mut guard;
        table.known_regions = config.regions.iter().map(|r| r.name.clone()).collect();
        table.known_addresses = config
            .services
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .flat_map(|e| e.addresses.iter().copied())
            .collect();

        let removed: Vec<TargetKey> = table
            .targets
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in removed {
            if let Some(t) = table.targets.remove(&key) {
                if !t.state.has_result() {
                    table.unresolved -= 1;
                }
                t.stop.cancel();
                summary.removed += 1;
            }
        }
        for (key, (check, regions)) in desired {
            let generation = table.next_generation;
            match table.targets.get_mut(&key) {
                Some(t) => {
                    t.stats = self.inner.stats_for(&key.check, &regions);
                    t.regions = regions;
                    t.state.set_thresholds(thresholds(&check));
                    if probes_differ(&t.check, &check) {
                        t.stop.cancel();
                        t.stop = self.inner.token.child_token();
                        t.generation = generation;
                        t.check = check;
                        self.spawn_probe(key, t);
                        table.next_generation += 1;
                        summary.restarted += 1;
                    } else {
                        t.check = check;
                        summary.kept += 1;
                    }
                }
                None => {
                    let mut t = Target {
                        state: TargetState::new(thresholds(&check)),
                        stats: self.inner.stats_for(&key.check, &regions),
                        check,
                        regions,
                        generation,
                        stop: self.inner.token.child_token(),
                    };
                    self.spawn_probe(key.clone(), &mut t);
                    table.targets.insert(key, t);
                    table.unresolved += 1;
                    table.next_generation += 1;
                    summary.added += 1;
                }
            }
        }
        if is_reload && table.state_file != config.server.state_file {
            table.state_file = config.server.state_file.clone();
            if let Some(path) = &table.state_file {
                let overrides = table.overrides.clone();
                // Reload is rare; a short blocking write keeps the new file in step at once.
                if let Err(error) = overrides.save(path) {
                    warn!(%error, "cannot write drains to the new state file");
                }
            }
        }
        self.inner.publish(table);
        self.inner.check_ready(table);
        drop(guard);
        self.inner.configure_loads(config);
        summary
    }

    /// Starts the task that runs a load round (issue 16) every period of the load-reading
    /// checks; it sleeps while no check reads load.
    fn spawn_load_rounds(&self) {
        let inner = self.inner.clone();
        let task = async move {
            loop {
                let period = inner.lock_loads().period();
                let wait = async {
                    match period {
                        Some(p) => tokio::time::sleep(p).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = inner.token.cancelled() => return,
                    _ = inner.loads_changed.notified() => continue,
                    _ = wait => inner.load_round(),
                }
            }
        };
        let runtime = self
            .inner
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match runtime {
            Some(handle) => drop(self.inner.tracker.spawn_on(task, &handle)),
            None => drop(self.inner.tracker.spawn(task)),
        }
    }

    fn spawn_probe(&self, key: TargetKey, target: &mut Target) {
        let inner = self.inner.clone();
        let check = target.check.clone();
        let generation = target.generation;
        let stop = target.stop.clone();
        let task = run_probe(inner, key, check, generation, stop);
        let runtime = self
            .inner
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match runtime {
            Some(handle) => drop(self.inner.tracker.spawn_on(task, &handle)),
            None => drop(self.inner.tracker.spawn(task)),
        }
    }
}

impl Inner {
    /// Returns the probe counts of `check` in the first of `regions` (config order).
    fn stats_for(&self, check: &Arc<str>, regions: &[String]) -> Arc<ProbeStats> {
        let region = regions.first().map_or("unknown", String::as_str);
        let mut stats = self.probe_stats.lock().unwrap_or_else(|p| p.into_inner());
        stats
            .entry((check.clone(), region.to_string()))
            .or_default()
            .clone()
    }

    fn lock_loads(&self) -> MutexGuard<'_, LoadState> {
        // Each update is one call on the state: a panic cannot leave it half-written.
        self.loads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a new config's load-reading endpoints, publishes the loads at once (none, when
    /// no check reads load any more) and wakes the round task for the new period.
    fn configure_loads(&self, config: &Config) {
        self.lock_loads().configure(config);
        self.load_round();
        self.loads_changed.notify_one();
    }

    /// One load round: steps the spill controllers over the view in force and publishes the
    /// loads in a copy of it (target states shared).
    fn load_round(&self) {
        let view = self.view.load_full();
        let load = self.lock_loads().round(&view);
        if load.is_none() && view.load().is_none() {
            return;
        }
        let _epoch = self.lock_view();
        let mut next = HealthView::clone(&self.view.load());
        next.set_load(load);
        self.view.store(Arc::new(next));
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves consistent data (each update is one call
        // into the state machine), so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_view(&self) -> MutexGuard<'_, u64> {
        // The epoch is one integer: a panic cannot leave it half-written.
        self.view_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds a whole view from the table and swaps it in (start, reload: O(targets)).
    fn publish(&self, table: &mut Table) {
        let peers = self.peers.load();
        let mut view = HealthView::with_capacity(table.targets.len());
        for (key, t) in &table.targets {
            // In a fleet the view holds the agreed state: the one withdrawal rule follows it.
            let state = peers.agreed_state(key, t.state.state());
            if state != State::Unknown {
                view.set_state(key.address, &key.check, state);
            }
        }
        view.set_drained(table.overrides.drained_regions.iter().cloned());
        view.set_drained_targets(table.overrides.drained_targets.iter().copied());
        let mut epoch = self.lock_view();
        // The loads are the round's: kept until the next round (issue 16).
        view.set_load(self.view.load().load().cloned());
        table.epoch += 1;
        *epoch = table.epoch;
        self.view.store(Arc::new(view));
    }

    /// Swaps in the current view with the drains of `table` (target states are shared).
    fn publish_drains(&self, table: &Table) {
        let _epoch = self.lock_view();
        let mut view = HealthView::clone(&self.view.load());
        view.set_drained(table.overrides.drained_regions.iter().cloned());
        view.set_drained_targets(table.overrides.drained_targets.iter().copied());
        self.view.store(Arc::new(view));
    }

    /// Swaps in the current view with one target changed, unless a full rebuild after
    /// `epoch` already included the change.
    fn publish_change(&self, key: &TargetKey, state: State, epoch: u64) {
        let current = self.lock_view();
        if *current != epoch {
            return;
        }
        let state = self.peers.load().agreed_state(key, state);
        let mut view = HealthView::clone(&self.view.load());
        view.set_state(key.address, &key.check, state);
        self.view.store(Arc::new(view));
    }

    /// Counts our own error and logs its first occurrence per reason.
    fn count_own_error(&self, key: &TargetKey, error: &OwnError) {
        let i = error.index();
        self.own_errors[i].fetch_add(1, Ordering::Relaxed);
        if !self.own_logged[i].swap(true, Ordering::Relaxed) {
            warn!(
                reason = error.reason(),
                address = %key.address,
                check = %key.check,
                %error,
                "a probe could not run (our trouble, not the target's): no target changes state \
                 on it; later ones are only counted in meridian_probe_errors_total"
            );
        } else {
            debug!(address = %key.address, check = %key.check, %error, "probe error");
        }
    }

    fn check_ready(&self, table: &Table) {
        if table.unresolved == 0 {
            self.set_ready(table.targets.len());
        }
    }

    /// Marks the first round done (once).
    fn set_ready(&self, targets: usize) {
        let changed = self
            .ready
            .send_if_modified(|ready| !std::mem::replace(ready, true));
        if changed {
            info!(targets, "first health round complete");
        }
    }

    /// Records one probe result of `key` from the task of `generation`. Returns true while
    /// the target is deciding (the next probe is due after `fast_interval`).
    fn report(
        &self,
        key: &TargetKey,
        generation: u64,
        outcome: ProbeOutcome,
        now: SystemTime,
    ) -> bool {
        let own = outcome.result.as_ref().err().and_then(|e| e.own());
        if let Some(own) = own {
            self.count_own_error(key, own);
        }
        let result = match (&outcome.result, own.is_some()) {
            (Ok(()), _) => 0,
            (Err(_), false) => 1,
            (Err(_), true) => 2,
        };
        let observation = match outcome.result {
            Ok(()) => Observation::success(now, outcome.latency),
            Err(error) => {
                debug!(address = %key.address, check = %key.check, %error, "probe failed");
                Observation::failure(now, outcome.latency, error)
            }
        };
        let mut table = self.lock();
        let Some(target) = table.targets.get_mut(key) else {
            return false;
        };
        if target.generation != generation {
            return false;
        }
        target.stats.record(result, observation.latency);
        let first = !target.state.has_result();
        let transition = target.state.observe(observation);
        let deciding = target.state.is_deciding();
        let Some(tr) = transition else {
            if first {
                table.unresolved -= 1;
                self.check_ready(&table);
            }
            return deciding;
        };
        let event = TransitionEvent {
            address: key.address,
            check: key.check.to_string(),
            regions: target.regions.clone(),
            from: tr.from,
            to: tr.to,
            reason: tr.reason,
            at: tr.at,
        };
        let epoch = table.epoch;
        let round_done = first && {
            table.unresolved -= 1;
            table.unresolved == 0
        };
        let targets = table.targets.len();
        drop(table);
        self.publish_change(key, event.to, epoch);
        // Ready only once the view holds this first result too.
        if round_done {
            self.set_ready(targets);
        }
        info!(
            address = %event.address,
            check = %event.check,
            from = ?event.from,
            to = ?event.to,
            reason = %event.reason,
            "target state changed"
        );
        self.events.send(|| event);
        deciding
    }
}

/// Probes one target every `check.interval` until `stop` is cancelled; while the target is
/// deciding, the next probe runs `check.fast_interval` after the last one instead.
///
/// The probes keep a grid of one point per interval (each re-jittered), and a fast probe
/// takes the place of the next grid point: the grid point it stands for is skipped. So a
/// target gets exactly one probe per grid point, as without `fast_interval`, only some of them
/// earlier: at random probe loss it sees the same sequence of results and flaps no more often
/// (adding fast probes between grid points made about 20 % more withdrawals at 20 % loss, rise
/// and fall 2: every extra probe is one more chance for a run of failures). A real failure
/// is confirmed `fast_interval` after the first failed probe (or when that probe times out)
/// instead of an interval later. The price: after a failed probe and a passing fast one, the
/// next probe is at the grid point after the skipped one, up to `2 × interval −
/// fast_interval` later.
async fn run_probe(
    inner: Arc<Inner>,
    key: TargetKey,
    check: Arc<Check>,
    generation: u64,
    stop: CancellationToken,
) {
    let mut prober = Prober::new(key.address, &check);
    let jitter = || RESCHEDULE_JITTER * rand::random::<f64>();
    let mut schedule = Schedule::new(&check, Instant::now(), rand::random::<f64>());
    // One cancellation wait and one timer for the life of the task, not one per probe.
    let cancelled = stop.cancelled();
    let sleep = tokio::time::sleep_until(schedule.grid);
    tokio::pin!(cancelled, sleep);
    loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => return,
            _ = &mut sleep => {}
        }
        let started = Instant::now();
        schedule.start(started, jitter);
        let outcome = tokio::select! {
            biased;
            _ = &mut cancelled => return,
            outcome = prober.probe() => outcome,
        };
        if check.load.is_some() {
            inner.lock_loads().record(&key, prober.take_load());
        }
        let deciding = inner.report(&key, generation, outcome, SystemTime::now());
        let next = schedule.next(started, deciding, jitter());
        // A probe longer than the period is followed at once.
        sleep.as_mut().reset(next.max(Instant::now()));
    }
}

/// When the probes of one target run (see [`run_probe`]): a grid of one point per interval,
/// each step shortened by a random share of up to [`RESCHEDULE_JITTER`] (earlier, never
/// later); a fast probe stands for the next grid point.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// The next grid point.
    grid: Instant,
    interval: Duration,
    fast: Duration,
}

impl Schedule {
    /// Returns the schedule of a target started at `now`, its first probe at `phase` (0..1)
    /// of the first interval (spreading the first probes of all targets over it).
    fn new(check: &Check, now: Instant, phase: f64) -> Self {
        let interval = check.interval.max(Duration::from_millis(1));
        Self {
            grid: now + interval.mul_f64(phase),
            interval,
            fast: check
                .fast_interval
                .clamp(Duration::from_millis(1), interval),
        }
    }

    /// Moves the grid past a probe that starts at `started`: a regular probe (at or after
    /// its grid point) moves it past `started`; a fast probe (before the grid point) takes
    /// the place of the next grid point, which is skipped. `jitter` gives each step's share.
    fn start(&mut self, started: Instant, mut jitter: impl FnMut() -> f64) {
        if started < self.grid {
            self.grid += self.interval.mul_f64(1.0 - jitter());
        }
        while self.grid <= started {
            self.grid += self.interval.mul_f64(1.0 - jitter());
        }
    }

    /// Returns when the probe after the one started at `started` is due: `fast_interval`
    /// later while the target is `deciding`, else (or if the grid point comes first) at the
    /// next grid point.
    fn next(&self, started: Instant, deciding: bool, jitter: f64) -> Instant {
        if deciding {
            self.grid.min(started + self.fast.mul_f64(1.0 - jitter))
        } else {
            self.grid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::probe::tests::{Backend, Reply};
    use std::path::Path;
    use std::time::Instant;

    /// A scratch directory with an (empty) zone file, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "meridian-health-{name}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("example.net.zone"), "").unwrap();
            Self(dir)
        }

        /// Parses a config whose `[[zone]]` and `[region.*]` are supplied here.
        fn config(&self, rest: &str) -> Config {
            let text = format!(
                "[[zone]]\norigin = \"example.net.\"\nfile = \"example.net.zone\"\n\
                 [region.us-east]\nlatitude = 38.9\nlongitude = -77.4\n\
                 [region.eu-west]\nlatitude = 53.3\nlongitude = -6.3\n{rest}"
            );
            crate::config::parse_str(&self.0.join("meridian.toml"), &text)
                .unwrap_or_else(|e| panic!("test config: {e}"))
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn check_toml(name: &str, port: u16, extra: &str) -> String {
        format!(
            "[check.{name}]\nkind = \"http\"\nport = {port}\npath = \"/healthz\"\n\
             interval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 3\n{extra}\n"
        )
    }

    fn service_toml(name: &str, check: &str, endpoints: &[(&str, &str)]) -> String {
        let eps: Vec<String> = endpoints
            .iter()
            .map(|(r, a)| format!("{{ region = \"{r}\", addresses = [\"{a}\"] }}"))
            .collect();
        format!(
            "[[service]]\nname = \"{name}\"\npolicy = \"nearest\"\ncheck = \"{check}\"\n\
             endpoints = [{}]\n",
            eps.join(", ")
        )
    }

    /// Polls `f` every 20 ms for up to 10 s.
    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lo(last_octet: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last_octet])
    }

    /// Runs the schedule and state machine of one target in virtual time (probes take no
    /// time) for `count` probes; `fails(n)` says whether probe `n` fails. Returns when the last
    /// probe ran, the transitions to down, and when the first one happened (seconds).
    fn simulate(
        fast_interval: Duration,
        count: u64,
        mut fails: impl FnMut(u64) -> bool,
    ) -> (f64, u64, Option<f64>) {
        use crate::health::probe::ProbeError;
        use crate::health::probe::tests::http_check;
        let mut check = http_check(80);
        check.interval = Duration::from_secs(1);
        check.fast_interval = fast_interval;
        check.rise = std::num::NonZeroU32::new(2).unwrap();
        check.fall = std::num::NonZeroU32::new(2).unwrap();
        let t0 = tokio::time::Instant::now();
        let mut schedule = Schedule::new(&check, t0, 0.0);
        let mut state = TargetState::new(thresholds(&check));
        let (mut downs, mut first_down) = (0, None);
        let (mut next, mut last) = (schedule.grid, schedule.grid);
        let at = SystemTime::UNIX_EPOCH;
        for n in 0..count {
            schedule.start(next, || 0.0);
            let observation = if fails(n) {
                Observation::failure(at, Duration::ZERO, ProbeError::Refused)
            } else {
                Observation::success(at, Duration::ZERO)
            };
            if let Some(t) = state.observe(observation)
                && t.to == State::Down
            {
                downs += 1;
                first_down.get_or_insert((next - t0).as_secs_f64());
            }
            last = next;
            next = schedule.next(next, state.is_deciding(), 0.0);
        }
        ((last - t0).as_secs_f64(), downs, first_down)
    }

    #[test]
    fn issue_17_fast_probes_take_the_place_of_regular_ones_so_random_loss_flaps_no_more() {
        // One pseudo-random loss pattern (20 %), the same for both schedules: probe n gets the
        // same result under each, so with one probe per grid point the same transitions
        // happen in the same hour.
        let loss = |n: u64| {
            let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
            x ^= x >> 31;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 29;
            x.is_multiple_of(5)
        };
        let before = simulate(Duration::from_secs(1), 3600, loss);
        let now = simulate(Duration::from_millis(250), 3600, loss);
        assert!(before.1 > 50, "the loss pattern flaps: {before:?}");
        assert_eq!(now.1, before.1, "withdrawals in 3,600 probes at 20 % loss");
        assert!(
            now.0 >= before.0 - 1.0,
            "3,600 probes took {:.2} s with fast probes, {:.2} s without",
            now.0,
            before.0
        );

        // A real failure from the 10th probe on: fast_interval decides 750 ms sooner.
        let dead = |n: u64| n >= 10;
        let before = simulate(Duration::from_secs(1), 60, dead);
        let now = simulate(Duration::from_millis(250), 60, dead);
        assert_eq!(before.2, Some(11.0));
        assert_eq!(now.2, Some(10.25));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_services_sharing_a_target_get_one_probe_stream() {
        let b = Backend::start(Reply::ok()).await;
        let s = Scratch::new("shared");
        let config = s.config(&format!(
            "{}{}{}",
            check_toml("web", b.addr.port(), ""),
            service_toml("api.example.net.", "web", &[("us-east", "127.0.0.1")]),
            service_toml("www.example.net.", "web", &[("eu-west", "127.0.0.1")]),
        ));
        let health = Health::start(&config, CancellationToken::new()).unwrap();
        let status = health.status();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].regions, ["us-east", "eu-west"]);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let hits = b.hits();
        health.shutdown().await;
        // One stream at 200 ms makes at most 6 probes in 1.1 s; two streams would make ~11.
        assert!((3..=7).contains(&hits), "{hits} probes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn target_goes_down_after_fall_failures_and_up_after_rise_successes() {
        let b = Backend::start(Reply::ok()).await;
        let s = Scratch::new("fall");
        let config = s.config(&format!(
            "{}{}",
            check_toml("web", b.addr.port(), ""),
            service_toml("api.example.net.", "web", &[("us-east", "127.0.0.1")]),
        ));
        let health = Health::start(&config, CancellationToken::new()).unwrap();
        let mut events = health.subscribe();
        let state = || health.view().state(lo(1), Some("web"));
        eventually("up", || state() == State::Up).await;
        // The first transition (unknown -> up) may precede `subscribe`; later ones cannot.
        let mut next_to = async |to: State| loop {
            let e = events.recv().await.unwrap();
            if e.to == to {
                return e;
            }
        };

        b.set(Reply {
            status: 503,
            ..Reply::ok()
        });
        let hits_before = b.hits();
        eventually("down", || state() == State::Down).await;
        // fall = 3: at least three failed probes happened before the view changed.
        assert!(b.hits() - hits_before >= 3);
        let down = next_to(State::Down).await;
        assert_eq!((down.from, down.to), (State::Up, State::Down));
        assert_eq!(
            down.reason.to_string(),
            "3 consecutive failures, last: status 503 not in expect_status"
        );
        assert_eq!(down.regions, ["us-east"]);
        let st = &health.status()[0];
        assert_eq!(st.state, State::Down);
        let last = st.last_check.as_ref().unwrap();
        assert!(!last.ok);
        assert_eq!(st.since, Some(down.at));

        b.set(Reply::ok());
        eventually("up again", || state() == State::Up).await;
        let up = next_to(State::Up).await;
        assert_eq!(up.reason.to_string(), "2 consecutive successes");
        health.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn first_round_completes_when_every_target_has_a_result() {
        let b = Backend::start(Reply::ok()).await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let s = Scratch::new("ready");
        let config = s.config(&format!(
            "{}{}{}{}",
            check_toml("web", b.addr.port(), ""),
            check_toml("dead", closed, ""),
            service_toml("api.example.net.", "web", &[("us-east", "127.0.0.1")]),
            service_toml("www.example.net.", "dead", &[("eu-west", "127.0.0.2")]),
        ));
        let health = Health::new(&config, CancellationToken::new()).unwrap();
        let mut events = health.subscribe();
        health.begin(&config);
        assert!(!health.first_round_done());
        assert_eq!(health.view().state(lo(1), Some("web")), State::Unknown);
        tokio::time::timeout(Duration::from_secs(10), health.wait_first_round())
            .await
            .expect("first round within 10 s");
        assert!(health.first_round_done());
        assert_eq!(health.view().state(lo(1), Some("web")), State::Up);
        // Issue #17: the first result alone withdraws nothing; `fall` (3) failures do.
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("two transitions within 10 s")
                .unwrap();
            seen.push((e.check, e.from, e.to, e.reason.to_string()));
        }
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            seen,
            [
                (
                    "dead".to_string(),
                    State::Unknown,
                    State::Down,
                    "3 consecutive failures, last: connection refused".to_string()
                ),
                (
                    "web".to_string(),
                    State::Unknown,
                    State::Up,
                    "first probe passed".to_string()
                ),
            ]
        );
        assert_eq!(health.view().state(lo(2), Some("dead")), State::Down);
        let dead = health
            .status()
            .into_iter()
            .find(|t| t.check == "dead")
            .unwrap();
        let json = serde_json::to_value(&dead).unwrap();
        assert_eq!(json["state"], "down");
        assert_eq!(json["last_check"]["error"], "connection refused");
        assert_eq!(json["last_check"]["result"], "fail");
        assert_eq!(json["forced"], false);
        health.shutdown().await;
    }

    #[tokio::test]
    async fn no_targets_means_the_first_round_is_done_at_once() {
        let s = Scratch::new("none");
        let health = Health::start(&s.config(""), CancellationToken::new()).unwrap();
        assert!(health.first_round_done());
        assert!(health.status().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reload_keeps_state_of_remaining_targets_and_stops_removed_ones() {
        let a = Backend::start(Reply::ok()).await;
        let b = Backend::start(Reply::ok()).await;
        let s = Scratch::new("reload");
        let both = s.config(&format!(
            "{}{}{}{}",
            check_toml("a", a.addr.port(), ""),
            check_toml("b", b.addr.port(), ""),
            service_toml("api.example.net.", "a", &[("us-east", "127.0.0.1")]),
            service_toml("www.example.net.", "b", &[("eu-west", "127.0.0.1")]),
        ));
        let health = Health::start(&both, CancellationToken::new()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), health.wait_first_round())
            .await
            .unwrap();
        let since_a = health.status()[0].since;
        assert!(since_a.is_some());

        let only_a = s.config(&format!(
            "{}{}",
            check_toml("a", a.addr.port(), ""),
            service_toml("api.example.net.", "a", &[("us-east", "127.0.0.1")]),
        ));
        let summary = health.reload(&only_a);
        assert_eq!(
            summary,
            ReloadSummary {
                added: 0,
                removed: 1,
                restarted: 0,
                kept: 1
            }
        );
        let status = health.status();
        assert_eq!(status.len(), 1);
        assert_eq!((status[0].check.as_str(), status[0].since), ("a", since_a));
        assert_eq!(health.view().state(lo(1), Some("b")), State::Unknown);
        // A probe of b may be in flight at the reload; after it, b sees no more requests.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b_hits = b.hits();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(b.hits(), b_hits, "removed target still probed");

        // A changed check restarts the probe but keeps the state.
        let a_slower = s.config(&format!(
            "{}{}",
            check_toml("a", a.addr.port(), "headers = { \"X-Reload\" = \"1\" }"),
            service_toml("api.example.net.", "a", &[("us-east", "127.0.0.1")]),
        ));
        let summary = health.reload(&a_slower);
        assert_eq!((summary.restarted, summary.kept), (1, 0));
        assert_eq!(health.status()[0].state, State::Up);
        assert_eq!(health.status()[0].since, since_a);
        eventually("a probed with the new header", || {
            a.last_head
                .lock()
                .unwrap()
                .to_ascii_lowercase()
                .contains("x-reload: 1")
        })
        .await;
        health.shutdown().await;
    }

    #[tokio::test]
    async fn every_drain_change_is_an_event_even_one_that_begins_and_ends_at_once() {
        use crate::health::overrides::DrainChange;
        let s = Scratch::new("drain-events");
        let config = s.config(&format!(
            "{}{}",
            check_toml("web", 9, ""),
            service_toml("api.example.net.", "web", &[("eu-west", "127.0.0.1")]),
        ));
        let health = Health::start(&config, CancellationToken::new()).unwrap();
        let mut rx = health.subscribe_drains();
        let now = SystemTime::now();
        let mut d = Drain::now("alice@ops");
        d.reason = Some("kernel upgrade".into());
        d.expires = Some(now + Duration::from_secs(60));
        let eu = Subject::Region("eu-west".into());
        let target = Subject::Target("127.0.0.1".parse().unwrap());
        // Drained and lifted back to back: both are events, in order.
        assert!(health.set_drain(&eu, Some(d.clone())).await.unwrap());
        assert!(health.set_drain(&eu, None).await.unwrap());
        assert!(health.set_drain(&target, Some(d.clone())).await.unwrap());
        // The same record again is no news.
        assert!(!health.set_drain(&target, Some(d.clone())).await.unwrap());
        let gone = health
            .expire_drains(now + Duration::from_secs(61))
            .await
            .unwrap();
        assert_eq!(gone, std::slice::from_ref(&target));
        // The fleet's store brings a drain made elsewhere.
        let mut fleet = Overrides::empty();
        fleet.set(&eu, Some(Drain::now("bob@ops-2")));
        assert!(health.replace_drains(fleet).await.unwrap());
        let mut seen = Vec::new();
        while let Ok(e) = rx.try_recv() {
            let who = e.record.as_ref().map(|r| r.who.clone());
            seen.push((e.subject, e.change, who));
        }
        let alice = Some("alice@ops".to_string());
        assert_eq!(
            seen,
            [
                ("regions/eu-west".into(), DrainChange::Set, alice.clone()),
                ("regions/eu-west".into(), DrainChange::Lifted, alice.clone()),
                ("targets/127.0.0.1".into(), DrainChange::Set, alice.clone()),
                ("targets/127.0.0.1".into(), DrainChange::Expired, alice),
                (
                    "regions/eu-west".into(),
                    DrainChange::Set,
                    Some("bob@ops-2".into())
                ),
            ]
        );
        health.shutdown().await;
    }

    #[tokio::test]
    async fn drains_persist_in_the_state_file_and_survive_a_restart() {
        let s = Scratch::new("drain");
        let config = s.config(&format!(
            "[server]\nstate_file = \"state/overrides.json\"\n{}{}",
            check_toml("web", 9, ""),
            service_toml("api.example.net.", "web", &[("eu-west", "127.0.0.1")]),
        ));
        let health = Health::start(&config, CancellationToken::new()).unwrap();
        assert!(!health.view().is_drained("eu-west"));
        assert!(health.drain("eu-west").await.unwrap());
        assert!(
            !health.drain("eu-west").await.unwrap(),
            "second drain changes nothing"
        );
        assert!(health.view().is_drained("eu-west"));
        assert!(health.status()[0].forced);
        let err = health.drain("mars").await.unwrap_err();
        assert_eq!(err.to_string(), "unknown region \"mars\"");
        health.shutdown().await;

        let state_dir = s.path().join("state");
        let names: Vec<_> = std::fs::read_dir(&state_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["overrides.json"], "no temporary files left");

        let restarted = Health::start(&config, CancellationToken::new()).unwrap();
        assert!(restarted.view().is_drained("eu-west"));
        assert_eq!(restarted.drained_regions(), ["eu-west"]);
        assert!(restarted.undrain("eu-west").await.unwrap());
        assert!(!restarted.view().is_drained("eu-west"));
        restarted.shutdown().await;
        let again = Health::start(&config, CancellationToken::new()).unwrap();
        assert!(!again.view().is_drained("eu-west"));
        again.shutdown().await;
    }

    #[tokio::test]
    async fn corrupt_state_file_refuses_to_start_and_names_the_file() {
        let s = Scratch::new("corrupt");
        std::fs::write(s.path().join("overrides.json"), "not json").unwrap();
        let config = s.config("[server]\nstate_file = \"overrides.json\"\n");
        let err = Health::start(&config, CancellationToken::new()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("overrides.json") && msg.contains("corrupt"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn cancelling_the_token_stops_every_probe_task() {
        let s = Scratch::new("cancel");
        let config = s.config(&format!(
            "{}{}",
            check_toml("web", 9, ""),
            service_toml("api.example.net.", "web", &[("us-east", "127.0.0.1")]),
        ));
        let token = CancellationToken::new();
        let health = Health::start(&config, token.clone()).unwrap();
        token.cancel();
        tokio::time::timeout(Duration::from_secs(2), health.shutdown())
            .await
            .expect("tasks stop promptly");
    }
}
