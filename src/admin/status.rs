//! The `/status` document: services -> regions -> targets, built from the current config, the
//! health view and the health subsystem's table.
//!
//! Pure: [`StatusReport::build`] takes the config, the view and the targets' status and does
//! no I/O.
//!
//! Shape (every key always present; `null` where noted):
//!
//! ```json
//! {
//!   "version": "0.1.0",
//!   "ready": true,
//!   "config_file": "zones/meridian.toml",
//!   "drained_regions": ["eu-west"],
//!   "services": [
//!     {
//!       "name": "api.example.net.",
//!       "policy": "nearest",
//!       "ttl": 30,
//!       "when_all_down": "all",
//!       "regions": [
//!         {
//!           "name": "eu-west",
//!           "drained": true,
//!           "weight": 1,
//!           "priority": 1,
//!           "targets": [
//!             {
//!               "address": "127.0.0.12",
//!               "check": "web",
//!               "state": "up",
//!               "forced": true,
//!               "usable": false,
//!               "withdrawn": "region_drained",
//!               "since": "2024-05-01T12:00:00.123Z",
//!               "last_check": {
//!                 "ok": true,
//!                 "at": "2024-05-01T12:00:04.456Z",
//!                 "latency_ms": 1.2,
//!                 "error": null
//!               }
//!             }
//!           ]
//!         }
//!       ]
//!     }
//!   ]
//! }
//! ```
//!
//! - `fleet` (only with `[cluster]`): `{"agreed", "local", "basis": "quorum"|"fallback",
//!   "observers", "down", "needed", "views": {"instance": "up"|"down"|"unknown"}, "why"}`:
//!   this instance's own probed state, every instance's view of the target and the state the
//!   fleet agreed on. In a fleet `state` (and so `usable` and `withdrawn`) is the agreed state,
//!   the one answers use.
//! - `state`: the probed state, `up`, `down` or `unknown` (not probed yet, answered as up). A
//!   target without a check is always `up`, with `check`, `since` and `last_check` null.
//! - `forced`: an operator override withdraws the target (its region is drained); `state`
//!   still shows what the probes see.
//! - `usable`: the target can be answered: not forced and not down.
//! - `withdrawn`: why it cannot (`region_drained`, `target_drained` or `down`), null when
//!   usable: [`crate::health::withdrawal`], the rule the answers follow.
//! - `since`: when the current state began (null while unknown); `last_check`: the last probe
//!   result (null before the first).
//! - `load` (issue 16, only where the check reads load): on a target, the load its last probe
//!   read (absent when unknown); on a region, `{"load", "high_watermark", "spill_fraction",
//!   "free"}`: the mean load of its usable targets (null when unknown), the mark, the share
//!   of its clients answered with their next region, and (`weighted`) the share of its
//!   weight kept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::config::Config;
use crate::health::{HealthView, Observation, State, TargetStatus, withdrawal};

/// The whole `/status` document.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StatusReport {
    /// The server's version.
    pub(crate) version: &'static str,
    /// True once the first health round is done (what `/ready` answers).
    pub(crate) ready: bool,
    /// The config file the server runs on.
    pub(crate) config_file: String,
    /// Regions an operator drained, sorted.
    pub(crate) drained_regions: Vec<String>,
    /// Target addresses an operator drained, sorted.
    pub(crate) drained_targets: Vec<IpAddr>,
    /// Services, in config order.
    pub(crate) services: Vec<ServiceReport>,
}

/// One service in `/status`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServiceReport {
    /// The service's name, fully qualified.
    pub(crate) name: String,
    /// `nearest`, `failover`, `weighted`, `geo` or `all`.
    pub(crate) policy: &'static str,
    /// TTL of answers, seconds.
    pub(crate) ttl: u32,
    /// `all`, `empty` or `servfail`.
    pub(crate) when_all_down: &'static str,
    /// The service's endpoints, in config order.
    pub(crate) regions: Vec<RegionReport>,
}

/// One endpoint (a region's addresses) of a service in `/status`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RegionReport {
    /// The region's name.
    pub(crate) name: String,
    /// True when an operator drained the region.
    pub(crate) drained: bool,
    /// The endpoint's weight (`weighted`).
    pub(crate) weight: u32,
    /// The endpoint's priority (`failover`, lower first).
    pub(crate) priority: u32,
    /// The endpoint's addresses, in config order.
    pub(crate) targets: Vec<TargetReport>,
    /// Load and spill-over, when the endpoint's check reads load (issue 16).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) load: Option<RegionLoadReport>,
}

/// A region's load in `/status` (issue 16).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RegionLoadReport {
    /// The mean load of its usable targets that reported one; `None`: unknown.
    pub(crate) load: Option<f64>,
    /// The load above which clients spill (`nearest`, `geo`, `failover`).
    pub(crate) high_watermark: f64,
    /// The share of the region's clients answered with their next region.
    pub(crate) spill_fraction: f64,
    /// `weighted`: the share of its weight kept (1 - smoothed load); `None`: unknown.
    pub(crate) free: Option<f64>,
}

/// One target (address) of an endpoint in `/status`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TargetReport {
    /// The target's address.
    pub(crate) address: IpAddr,
    /// The check probing it; `None` when it is not probed (always up).
    pub(crate) check: Option<String>,
    /// The probed state.
    pub(crate) state: State,
    /// True when an operator override withdraws it (its region is drained).
    pub(crate) forced: bool,
    /// True when answers may use it: not forced and not down.
    pub(crate) usable: bool,
    /// Why answers do not use it (`region_drained`, `target_drained`, `down`); `None` when
    /// usable.
    pub(crate) withdrawn: Option<&'static str>,
    /// When the current state began.
    #[serde(serialize_with = "crate::health::serialize_opt_time")]
    pub(crate) since: Option<SystemTime>,
    /// The last probe result.
    pub last_check: Option<Observation>,
    /// In a fleet (`[cluster]`): each instance's view and the agreed state, which answers use
    /// (absent without a fleet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::health::quorum::Agreement>,
    /// The load its last probe read (0 idle, 1 full; absent when unknown or not read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) load: Option<f64>,
}

impl StatusReport {
    /// Builds the document from `config`, the health `view` (states and drains: whether a
    /// target is withdrawn is [`withdrawal`]'s rule, the one the answers follow) and every
    /// probed target's `targets` status from `Health::status` (for `since` and `last_check`).
    pub(crate) fn build(
        config: &Config,
        config_file: &Path,
        ready: bool,
        view: &HealthView,
        targets: &[TargetStatus],
    ) -> Self {
        let by_key: HashMap<(IpAddr, &str), &TargetStatus> = targets
            .iter()
            .map(|t| ((t.address, t.check.as_str()), t))
            .collect();
        let services = config
            .services
            .iter()
            .map(|s| ServiceReport {
                name: s.name.clone(),
                policy: s.policy.as_str(),
                ttl: s.ttl,
                when_all_down: s.when_all_down.as_str(),
                regions: s
                    .endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, e)| RegionReport {
                        load: e.has_load().then(|| {
                            let r = view
                                .service_load(&s.name)
                                .and_then(|l| l.region(i, &e.region.name));
                            RegionLoadReport {
                                load: r.and_then(|r| r.load),
                                high_watermark: e.high_watermark,
                                spill_fraction: r.map_or(0.0, |r| r.spill_fraction),
                                free: r.and_then(|r| r.free),
                            }
                        }),
                        name: e.region.name.clone(),
                        drained: view.is_drained(&e.region.name),
                        weight: e.weight,
                        priority: e.priority,
                        targets: e
                            .addresses
                            .iter()
                            .map(|&address| {
                                let check = e.check_name();
                                let w = withdrawal(view, &e.region.name, address, check);
                                let status = check.and_then(|c| by_key.get(&(address, c)));
                                TargetReport {
                                    address,
                                    check: check.map(str::to_string),
                                    state: w.state,
                                    forced: w.drain.is_some(),
                                    usable: !w.is_withdrawn(),
                                    withdrawn: w.reason(),
                                    since: status.and_then(|t| t.since),
                                    last_check: status.and_then(|t| t.last_check.clone()),
                                    fleet: status.and_then(|t| t.fleet.clone()),
                                    load: check.and_then(|c| {
                                        view.load().and_then(|l| l.target(address, c))
                                    }),
                                }
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        StatusReport {
            version: env!("CARGO_PKG_VERSION"),
            ready,
            config_file: config_file.display().to_string(),
            drained_regions: view.drained_regions(),
            drained_targets: view.drained_targets(),
            services,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config() -> Config {
        // The repository's example zone file exists; nothing else is read.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("zones");
        let text = "[server]\nadmin_listen = \"\"\n\
            [[zone]]\norigin = \"example.net.\"\nfile = \"example.net.zone\"\n\
            [region.us-east]\nlatitude = 38.9\nlongitude = -77.4\n\
            [region.eu-west]\nlatitude = 53.3\nlongitude = -6.3\n\
            [check.web]\nkind = \"tcp\"\nport = 80\n\
            [[service]]\nname = \"api.example.net.\"\npolicy = \"failover\"\ncheck = \"web\"\n\
            endpoints = [{ region = \"us-east\", addresses = [\"192.0.2.1\", \"192.0.2.2\"] }, \
                         { region = \"eu-west\", addresses = [\"198.51.100.1\"], priority = 2 }]\n\
            [[service]]\nname = \"cdn.example.net.\"\npolicy = \"all\"\n\
            endpoints = [{ region = \"eu-west\", addresses = [\"198.51.100.9\"] }]\n";
        crate::config::parse_str(&dir.join("meridian.toml"), text)
            .unwrap_or_else(|e| panic!("test config: {e}"))
    }

    fn status(address: &str, state: State) -> TargetStatus {
        TargetStatus {
            address: address.parse().unwrap(),
            check: "web".to_string(),
            kind: "tcp",
            regions: vec![],
            state,
            forced: false,
            since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            last_check: None,
            fleet: None,
        }
    }

    #[test]
    fn services_regions_and_targets_follow_config_order_with_health_and_drains() {
        let targets = [
            status("192.0.2.1", State::Up),
            status("192.0.2.2", State::Down),
            status("198.51.100.1", State::Up),
        ];
        let mut view = HealthView::empty().with_drained("eu-west");
        for t in &targets {
            view = view.with_state(t.address, &t.check, t.state);
        }
        let r = StatusReport::build(&config(), Path::new("meridian.toml"), true, &view, &targets);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["ready"], true);
        assert_eq!(j["drained_regions"], serde_json::json!(["eu-west"]));
        let api = &j["services"][0];
        assert_eq!(api["name"], "api.example.net.");
        assert_eq!(api["policy"], "failover");
        assert_eq!(api["when_all_down"], "all");
        let us = &api["regions"][0];
        assert_eq!(
            (us["name"].as_str(), us["drained"].as_bool()),
            (Some("us-east"), Some(false))
        );
        assert_eq!(us["targets"][0]["state"], "up");
        assert_eq!(us["targets"][0]["usable"], true);
        assert_eq!(us["targets"][0]["since"], "2023-11-14T22:13:20.000Z");
        assert_eq!(us["targets"][1]["state"], "down");
        assert_eq!(us["targets"][1]["usable"], false);
        assert_eq!(us["targets"][1]["withdrawn"], "down");
        assert_eq!(us["targets"][0]["withdrawn"], serde_json::Value::Null);
        let eu = &api["regions"][1];
        assert_eq!(
            (eu["drained"].as_bool(), eu["priority"].as_u64()),
            (Some(true), Some(2))
        );
        assert_eq!(eu["targets"][0]["state"], "up");
        assert_eq!(eu["targets"][0]["forced"], true);
        assert_eq!(eu["targets"][0]["usable"], false);
        assert_eq!(eu["targets"][0]["withdrawn"], "region_drained");
        // No check: always up, nothing probed.
        let cdn = &j["services"][1]["regions"][0]["targets"][0];
        assert_eq!(cdn["check"], serde_json::Value::Null);
        assert_eq!(cdn["state"], "up");
        assert_eq!(cdn["last_check"], serde_json::Value::Null);
        assert_eq!(cdn["forced"], true, "its region is drained");
    }

    #[test]
    fn a_target_missing_from_the_health_table_is_unknown() {
        let r = StatusReport::build(
            &config(),
            Path::new("m.toml"),
            false,
            &HealthView::empty(),
            &[],
        );
        let t = &r.services[0].regions[0].targets[0];
        assert_eq!((t.state, t.usable, t.since), (State::Unknown, true, None));
    }
}
