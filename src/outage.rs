//! Service-level outages: which (service, family) has no usable target left, and whether it
//! fails open because of it; and the watcher that logs a WARN when such an outage begins and
//! ends and hands it to the webhook (`crate::notify`).
//!
//! A target is usable when [`crate::health::withdrawal`] (the one rule the answers follow) does
//! not withdraw it: not drained (its region or its address), not down. A (service, family) with at least one target of the family
//! and none usable is *all down*: `when_all_down` then decides the answer, and with `all` the
//! service *fails open* (answers with targets that are down or drained). [`assess`] is pure
//! (config and health view in, states out); `meridian_service_all_down` and
//! `meridian_service_failing_open` are computed from it at scrape time, and [`watch`] polls it.
//!
//! Key types: [`ServiceOutage`], [`OutageEvent`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::config::{Config, WhenAllDown};
use crate::health::{HealthView, State, withdrawal};
use crate::policy::Family;
use crate::snapshot::SnapshotCell;

/// How often [`watch`] re-assesses the services (drains, reloads and transitions all show
/// within this time).
pub(crate) const OUTAGE_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The outage state of one service for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceOutage {
    /// The service's name.
    pub(crate) service: String,
    /// The family (`A` or `AAAA`).
    pub(crate) family: Family,
    /// Targets of the family in the service.
    pub(crate) targets: usize,
    /// Of them, usable.
    pub(crate) usable: usize,
    /// Of them, down (and not drained).
    pub(crate) down: usize,
    /// Of them, drained.
    pub(crate) drained: usize,
    /// What the service answers when nothing is usable.
    pub(crate) when_all_down: WhenAllDown,
}

impl ServiceOutage {
    /// Returns true when no target of the family is usable.
    pub(crate) fn is_all_down(&self) -> bool {
        self.usable == 0
    }

    /// Returns true when the service answers with targets that are down or drained.
    pub(crate) fn is_failing_open(&self) -> bool {
        self.is_all_down() && self.when_all_down == WhenAllDown::All
    }
}

/// Returns the outage state of every (service, family) with at least one target of the
/// family, in config order (A before AAAA).
pub(crate) fn assess(config: &Config, view: &HealthView) -> Vec<ServiceOutage> {
    assess_where(config, view, |_| true)
}

/// [`assess`], keeping only the outage states for which `keep` is true; the others cost no
/// allocation (the watch below runs twice a second over every service: with 10,000 services,
/// 40,000 name copies a second, issue 18).
fn assess_where(
    config: &Config,
    view: &HealthView,
    keep: impl Fn(&ServiceOutage) -> bool,
) -> Vec<ServiceOutage> {
    let mut out = Vec::new();
    for s in &config.services {
        for family in [Family::V4, Family::V6] {
            let mut o = ServiceOutage {
                service: String::new(),
                family,
                targets: 0,
                usable: 0,
                down: 0,
                drained: 0,
                when_all_down: s.when_all_down,
            };
            for e in &s.endpoints {
                for a in e.addresses.iter().filter(|a| Family::of(**a) == family) {
                    o.targets += 1;
                    let w = withdrawal(view, &e.region.name, *a, e.check_name());
                    if w.drain.is_some() {
                        o.drained += 1;
                    } else if w.state == State::Down {
                        o.down += 1;
                    } else {
                        o.usable += 1;
                    }
                }
            }
            if o.targets > 0 && keep(&o) {
                o.service.clone_from(&s.name);
                out.push(o);
            }
        }
    }
    out
}

/// An outage that began or ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct OutageEvent {
    /// The service.
    pub(crate) service: String,
    /// `A` or `AAAA`.
    pub(crate) family: Family,
    /// `all`, `empty` or `servfail`: what the service answers meanwhile.
    pub(crate) when_all_down: &'static str,
    /// True when it began, false when it ended.
    pub(crate) active: bool,
    /// Targets of the family, down, drained.
    pub(crate) targets: usize,
    /// Down (not drained) targets.
    pub(crate) down: usize,
    /// Drained targets.
    pub(crate) drained: usize,
    /// When the watcher saw the change.
    #[serde(serialize_with = "crate::health::serialize_time")]
    pub(crate) at: SystemTime,
}

/// Capacity of the outage event channel (outages change rarely).
const OUTAGE_CHANNEL_CAPACITY: usize = 64;

/// Spawns [`watch`] over the live snapshot and health view on `tasks` until `token` is
/// cancelled; returns the sender of its events, to subscribe to.
pub(crate) fn start(
    snapshot: SnapshotCell,
    view: Arc<ArcSwap<HealthView>>,
    tasks: &tokio_util::task::TaskTracker,
    token: CancellationToken,
) -> broadcast::Sender<OutageEvent> {
    let (events, _) = broadcast::channel(OUTAGE_CHANNEL_CAPACITY);
    tasks.spawn(watch(snapshot, view, events.clone(), token));
    events
}

/// Polls [`assess`] every [`OUTAGE_POLL_INTERVAL`] until `token` is cancelled; logs a WARN
/// when a (service, family) becomes all down (failing open or not) and when it recovers, and
/// sends each change on `events`.
pub(crate) async fn watch(
    snapshot: SnapshotCell,
    view: Arc<ArcSwap<HealthView>>,
    events: broadcast::Sender<OutageEvent>,
    token: CancellationToken,
) {
    let mut active: BTreeMap<(String, &'static str), ServiceOutage> = BTreeMap::new();
    let mut tick = tokio::time::interval(OUTAGE_POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What the last assessment read: the same config and view give the same states, so they
    // are not assessed again (with 10,000 services, a pass looks up 80,000 targets: issue 18).
    let mut assessed: Option<(Arc<Config>, Arc<HealthView>)> = None;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let config = snapshot.load().config.clone();
        let current = view.load_full();
        if let Some((c, v)) = &assessed
            && Arc::ptr_eq(c, &config)
            && Arc::ptr_eq(v, &current)
        {
            continue;
        }
        let now: BTreeMap<_, _> = assess_where(&config, &current, ServiceOutage::is_all_down)
            .into_iter()
            .map(|o| ((o.service.clone(), o.family.as_str()), o))
            .collect();
        for (key, o) in &now {
            if !active.contains_key(key) {
                if o.is_failing_open() {
                    warn!(service = %o.service, family = o.family.as_str(), down = o.down, drained = o.drained,
                        "service fails open: every target is down or drained, answering with all of them");
                } else {
                    warn!(service = %o.service, family = o.family.as_str(), down = o.down, drained = o.drained,
                        when_all_down = o.when_all_down.as_str(),
                        "service has no usable target: answering {}",
                        if o.when_all_down == WhenAllDown::Servfail { "SERVFAIL" } else { "NODATA" });
                }
                let _ = events.send(event(o, true));
            }
        }
        for (key, o) in &active {
            if !now.contains_key(key) {
                // Gone from the config, or a target is usable again.
                warn!(service = %o.service, family = o.family.as_str(),
                    "service recovered: a target is usable again{}",
                    if o.is_failing_open() { ", no longer failing open" } else { "" });
                let _ = events.send(event(o, false));
            }
        }
        active = now;
        assessed = Some((config, current));
    }
}

fn event(o: &ServiceOutage, active: bool) -> OutageEvent {
    OutageEvent {
        service: o.service.clone(),
        family: o.family,
        when_all_down: o.when_all_down.as_str(),
        active,
        targets: o.targets,
        down: o.down,
        drained: o.drained,
        at: SystemTime::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::path::Path;

    fn config(when_all_down: &str) -> Config {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones");
        let text = format!(
            "[server]\nadmin_listen = \"\"\n\
            [[zone]]\norigin = \"example.net.\"\nfile = \"example.net.zone\"\n\
            [region.us-east]\nlatitude = 38.9\nlongitude = -77.4\n\
            [region.eu-west]\nlatitude = 53.3\nlongitude = -6.3\n\
            [check.web]\nkind = \"tcp\"\nport = 80\n\
            [[service]]\nname = \"api.example.net.\"\npolicy = \"failover\"\ncheck = \"web\"\n\
            when_all_down = \"{when_all_down}\"\n\
            endpoints = [{{ region = \"us-east\", addresses = [\"192.0.2.1\", \"2001:db8::1\"] }}, \
                         {{ region = \"eu-west\", addresses = [\"198.51.100.1\"], priority = 2 }}]\n"
        );
        crate::config::parse_str(&dir.join("meridian.toml"), &text)
            .unwrap_or_else(|e| panic!("test config: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_family_fails_open_only_when_every_target_of_it_is_down_or_drained() {
        let c = config("all");
        let healthy = assess(&c, &HealthView::empty());
        assert_eq!(healthy.len(), 2, "A and AAAA");
        assert!(healthy.iter().all(|o| !o.is_all_down()));

        let v = HealthView::empty()
            .with_state(ip("192.0.2.1"), "web", State::Down)
            .with_drained("eu-west");
        let o = assess(&c, &v);
        let a = o.iter().find(|o| o.family == Family::V4).unwrap();
        assert_eq!((a.targets, a.usable, a.down, a.drained), (2, 0, 1, 1));
        assert!(a.is_all_down() && a.is_failing_open());
        let aaaa = o.iter().find(|o| o.family == Family::V6).unwrap();
        assert!(
            !aaaa.is_all_down(),
            "the IPv6 target is still unknown, i.e. usable"
        );

        let o = assess(&config("servfail"), &v);
        let a = o.iter().find(|o| o.family == Family::V4).unwrap();
        assert!(a.is_all_down() && !a.is_failing_open());
    }
}
