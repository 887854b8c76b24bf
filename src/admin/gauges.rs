//! Gauges computed at scrape time from the current snapshot and health view (nothing is kept
//! between scrapes): `meridian_target_up`, `meridian_target_drained`,
//! `meridian_service_all_down`, `meridian_service_failing_open`, `meridian_check_targets` and
//! `meridian_geoip_build_timestamp_seconds`, and where checks read load (issue 16)
//! `meridian_target_load`, `meridian_region_load` and `meridian_region_spill_fraction`.
//!
//! `meridian_target_up` is the probe result alone (1 up or not probed yet, 0 down) and
//! `meridian_target_drained` the operator's drain, so that an alert on targets down does not
//! fire for planned maintenance.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::health::{HealthView, State, withdrawal};
use crate::metrics::{
    CHECK_TARGETS, GEOIP_BUILD_TIMESTAMP_SECONDS, REGION_LOAD, REGION_SPILL_FRACTION,
    SERVICE_ALL_DOWN, SERVICE_FAILING_OPEN, TARGET_DRAINED, TARGET_LOAD, TARGET_UP,
};
use crate::outage::assess;
use crate::snapshot::SnapshotCell;

/// Writes the health gauges from the snapshot and view in force at scrape time.
#[derive(Debug)]
pub(super) struct HealthCollector {
    pub(super) snapshot: SnapshotCell,
    pub(super) view: Arc<ArcSwap<HealthView>>,
}

impl Collector for HealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.snapshot.load();
        let view = self.view.load();
        let config = &snapshot.config;
        let targets: Vec<(&str, &str, IpAddr, Option<&str>)> = config
            .services
            .iter()
            .flat_map(|s| {
                s.endpoints.iter().flat_map(move |e| {
                    e.addresses
                        .iter()
                        .map(move |a| (s.name.as_str(), e.region.name.as_str(), *a, e.check_name()))
                })
            })
            .collect();
        if !targets.is_empty() {
            for (name, help, drained) in [
                (
                    TARGET_UP,
                    "1 when the probes find a target up (or it is not probed yet), 0 when down; drains do not change it.",
                    false,
                ),
                (
                    TARGET_DRAINED,
                    "1 when an operator drained the target (its region or its address).",
                    true,
                ),
            ] {
                let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for (service, region, address, check) in &targets {
                    let w = withdrawal(&**view, region, *address, *check);
                    let value = if drained {
                        w.drain.is_some()
                    } else {
                        w.state != State::Down
                    };
                    let address = address.to_string();
                    let labels = [
                        ("service", *service),
                        ("region", *region),
                        ("address", address.as_str()),
                    ];
                    ConstGauge::new(i64::from(value)).encode(metric.encode_family(&labels)?)?;
                }
            }
        }

        if let Some(load) = view.load() {
            let mut metric = encoder.encode_descriptor(
                TARGET_LOAD,
                "The load a target's last probe read (0 idle, 1 full); only targets that reported one.",
                None,
                MetricType::Gauge,
            )?;
            for (service, region, address, check) in &targets {
                if let Some(l) = check.and_then(|c| load.target(*address, c)) {
                    let address = address.to_string();
                    let labels = [
                        ("service", *service),
                        ("region", *region),
                        ("address", address.as_str()),
                    ];
                    ConstGauge::new(l).encode(metric.encode_family(&labels)?)?;
                }
            }
            let regions: Vec<(&str, &crate::health::RegionLoad)> = config
                .services
                .iter()
                .filter_map(|s| Some((s.name.as_str(), load.service(&s.name)?)))
                .flat_map(|(s, l)| l.regions.iter().filter(|r| r.has_load).map(move |r| (s, r)))
                .collect();
            let mut metric = encoder.encode_descriptor(
                REGION_LOAD,
                "The load of a region: the mean of its usable targets that reported one.",
                None,
                MetricType::Gauge,
            )?;
            for (service, r) in &regions {
                if let Some(l) = r.load {
                    let labels = [("service", *service), ("region", &*r.region)];
                    ConstGauge::new(l).encode(metric.encode_family(&labels)?)?;
                }
            }
            let mut metric = encoder.encode_descriptor(
                REGION_SPILL_FRACTION,
                "The share of a region's clients answered with their next region (load above its high_watermark).",
                None,
                MetricType::Gauge,
            )?;
            for (service, r) in &regions {
                let labels = [("service", *service), ("region", &*r.region)];
                ConstGauge::new(r.spill_fraction).encode(metric.encode_family(&labels)?)?;
            }
        }

        let outages = assess(config, &view);
        if !outages.is_empty() {
            for (name, help, failing_open) in [
                (
                    SERVICE_ALL_DOWN,
                    "1 while a service has no usable target of a family (each down or drained).",
                    false,
                ),
                (
                    SERVICE_FAILING_OPEN,
                    "1 while a service answers with every target of a family down or drained (when_all_down = all).",
                    true,
                ),
            ] {
                let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                for o in &outages {
                    let value = if failing_open {
                        o.is_failing_open()
                    } else {
                        o.is_all_down()
                    };
                    let labels = [
                        ("service", o.service.as_str()),
                        ("family", o.family.as_str()),
                    ];
                    ConstGauge::new(i64::from(value)).encode(metric.encode_family(&labels)?)?;
                }
            }
        }

        // Each probed (address, check) once, however many services share it.
        let mut probed: BTreeMap<(&str, IpAddr), State> = BTreeMap::new();
        for (_, _, address, check) in &targets {
            if let Some(check) = check {
                probed.insert((check, *address), view.state(*address, Some(check)));
            }
        }
        if !probed.is_empty() {
            let mut counts: BTreeMap<&str, [i64; 3]> = config
                .checks
                .iter()
                .filter(|c| probed.keys().any(|(name, _)| *name == c.name))
                .map(|c| (c.name.as_str(), [0; 3]))
                .collect();
            for ((check, _), state) in &probed {
                let slot = match state {
                    State::Up => 0,
                    State::Down => 1,
                    State::Unknown => 2,
                };
                if let Some(c) = counts.get_mut(check) {
                    c[slot] += 1;
                }
            }
            let mut metric = encoder.encode_descriptor(
                CHECK_TARGETS,
                "Probed targets per check, by probed state (up, down, unknown).",
                None,
                MetricType::Gauge,
            )?;
            for (check, c) in counts {
                for (state, n) in ["up", "down", "unknown"].into_iter().zip(c) {
                    let labels = [("check", check), ("state", state)];
                    ConstGauge::new(n).encode(metric.encode_family(&labels)?)?;
                }
            }
        }

        if let Some(info) = snapshot.geo.database_info() {
            let metric = encoder.encode_descriptor(
                GEOIP_BUILD_TIMESTAMP_SECONDS,
                "Build time of the GeoIP database in use (its build_epoch), Unix seconds.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(info.build_epoch as i64).encode(metric)?;
        }
        Ok(())
    }
}
