//! Metric names, the lock-free counters of the answer path, and the Prometheus registry.
//!
//! Every metric name is a `pub const` that tests import. The DNS path counts into fixed arrays
//! of atomics indexed by (transport, qtype, rcode): no lock and no allocation per query; the
//! admin port turns them into OpenMetrics text at scrape time ([`Metrics::registry`]).
//! Per-answer counters ([`Metrics::answer_counters`]) are looked up once, when a snapshot is
//! built, and then incremented with one atomic add. Everything else (transitions, reloads) is
//! counted off the answer path; probe results and durations are counted by the health
//! subsystem itself and collected by the admin port.
//!
//! This module does not know about snapshots or health: gauges computed from them
//! (`meridian_target_up`, `meridian_service_failing_open`, ...) are collected by the admin port
//! (`crate::admin`). Process metrics (`process_*`, read from `/proc/self`) are in [`process`];
//! the two exposition formats (OpenMetrics and the Prometheus text format 0.0.4) and the
//! negotiation between them are in [`text`].

pub(crate) mod process;
pub(crate) mod text;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Queries answered, by transport, qtype and rcode.
pub const DNS_QUERIES_TOTAL: &str = "meridian_dns_queries_total";
/// Dynamic answers, by service, region and family (`A`, `AAAA`).
pub const DNS_ANSWERS_TOTAL: &str = "meridian_dns_answers_total";
/// Queries answered, by whether they carried an EDNS Client Subnet option (`ecs`: `yes`, `no`).
pub const DNS_ECS_QUERIES_TOTAL: &str = "meridian_dns_ecs_queries_total";
/// 1 when the probes find a target up (or not probed yet), 0 when down; drains do not change
/// it. By service, region and address.
pub const TARGET_UP: &str = "meridian_target_up";
/// The load a target's last probe read (0 idle, 1 full), by service, region and address;
/// only targets whose check reads load and that reported one (issue 16).
pub const TARGET_LOAD: &str = "meridian_target_load";
/// The load of a region (mean of its usable targets that reported one), by service and region.
pub const REGION_LOAD: &str = "meridian_region_load";
/// The share of a region's clients answered with their next region (spill-over, issue 16),
/// by service and region.
pub const REGION_SPILL_FRACTION: &str = "meridian_region_spill_fraction";
/// 1 when an operator drained a target (its region or the address), by service, region and
/// address.
pub const TARGET_DRAINED: &str = "meridian_target_drained";
/// 1 while a service has no usable target of a family (every one down or drained), by service
/// and family, whatever `when_all_down` answers.
pub const SERVICE_ALL_DOWN: &str = "meridian_service_all_down";
/// 1 while a service with `when_all_down = "all"` answers with every target of a family down
/// or drained (fails open), by service and family.
pub const SERVICE_FAILING_OPEN: &str = "meridian_service_failing_open";
/// Probed targets per check and probed state (`up`, `down`, `unknown`).
pub const CHECK_TARGETS: &str = "meridian_check_targets";
/// Health transitions, by address and new state.
pub const HEALTH_TRANSITIONS_TOTAL: &str = "meridian_health_transitions_total";
/// Probe duration histogram, by check and region (of the target, the first in config order).
pub const PROBE_DURATION_SECONDS: &str = "meridian_probe_duration_seconds";
/// Probe results, by check and result (`pass`, `fail`, `error`: our own trouble).
pub const PROBES_TOTAL: &str = "meridian_probes_total";
/// Build time of the GeoIP database in use (its metadata's `build_epoch`), Unix seconds.
pub const GEOIP_BUILD_TIMESTAMP_SECONDS: &str = "meridian_geoip_build_timestamp_seconds";
/// Always 1, labelled with the server's `version` and the git `commit` it was built from.
pub const BUILD_INFO: &str = "meridian_build_info";
/// Probes that failed because of our own trouble (not the target's), by reason.
pub const PROBE_ERRORS_TOTAL: &str = "meridian_probe_errors_total";
/// Query log lines written (`[query_log]`).
pub const QUERY_LOG_LINES_TOTAL: &str = "meridian_query_log_lines_total";
/// Query log lines dropped, by reason (`queue_full`: the writer was behind, `rate_cap`:
/// over `max_per_second`, `write_error`).
pub const QUERY_LOG_DROPPED_TOTAL: &str = "meridian_query_log_dropped_total";
/// Config reloads, by result.
pub const CONFIG_RELOADS_TOTAL: &str = "meridian_config_reloads_total";
/// When the config in force was loaded (start or successful reload), Unix seconds.
pub const CONFIG_LOADED_TIMESTAMP_SECONDS: &str = "meridian_config_loaded_timestamp_seconds";
/// UDP responses held back by `[rate_limit]`, by action (`drop` or `slip`).
pub const DNS_RATE_LIMITED_TOTAL: &str = "meridian_dns_rate_limited_total";
/// New DNSSEC signatures made (the per-thread signature caches missed), every signed zone.
pub const DNSSEC_SIGNATURES_TOTAL: &str = "meridian_dnssec_signatures_total";
/// DNSSEC signatures refused because the zone's signing budget
/// (`dnssec.signatures_per_second`) was spent: each is an answer sent as SERVFAIL.
pub const DNSSEC_BUDGET_EXHAUSTED_TOTAL: &str = "meridian_dnssec_budget_exhausted_total";

/// Transport labels, in index order.
pub(crate) const TRANSPORTS: [&str; 4] = ["udp", "tcp", "tls", "quic"];
/// Query types counted by name, in index order; anything else is "other".
pub(crate) const QTYPES: [(u16, &str); 15] = [
    (1, "A"),
    (28, "AAAA"),
    (5, "CNAME"),
    (2, "NS"),
    (6, "SOA"),
    (15, "MX"),
    (16, "TXT"),
    (33, "SRV"),
    (257, "CAA"),
    (12, "PTR"),
    (65, "HTTPS"),
    (64, "SVCB"),
    (255, "ANY"),
    (43, "DS"),
    (48, "DNSKEY"),
];
/// Response codes counted by name, in index order; anything else is "other".
pub(crate) const RCODES: [(u16, &str); 8] = [
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
    (9, "NOTAUTH"),
    (16, "BADVERS"),
];

const NQ: usize = QTYPES.len() + 1;
const NR: usize = RCODES.len() + 1;

/// Query counters by (transport, qtype, rcode).
#[derive(Debug)]
pub(crate) struct DnsCounters {
    counts: Vec<AtomicU64>,
}

impl Default for DnsCounters {
    fn default() -> Self {
        Self {
            counts: (0..TRANSPORTS.len() * NQ * NR)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl DnsCounters {
    /// Counts one answered query; `transport` is an index into [`TRANSPORTS`].
    pub(crate) fn count(&self, transport: usize, qtype: u16, rcode: u16) {
        let q = QTYPES
            .iter()
            .position(|(t, _)| *t == qtype)
            .unwrap_or(NQ - 1);
        let r = RCODES
            .iter()
            .position(|(c, _)| *c == rcode)
            .unwrap_or(NR - 1);
        if let Some(c) = self.counts.get((transport * NQ + q) * NR + r) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Returns every non-zero counter as (transport, qtype, rcode, count) labels.
    pub(crate) fn snapshot(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (t, tname) in TRANSPORTS.iter().enumerate() {
            for q in 0..NQ {
                for r in 0..NR {
                    let n = self.counts[(t * NQ + q) * NR + r].load(Ordering::Relaxed);
                    if n > 0 {
                        let qn = QTYPES.get(q).map_or("other", |x| x.1);
                        let rn = RCODES.get(r).map_or("other", |x| x.1);
                        out.push((*tname, qn, rn, n));
                    }
                }
            }
        }
        out
    }
}

/// A counter the answer path increments once per answer: one relaxed atomic add, no lock.
/// Clones share the count.
pub(crate) type AnswerCounter = Counter;

/// Labels of `meridian_dns_answers_total`: service, region and family. The names are shared
/// with the other counters of the service and region (issue 18: with 10,000 services of 4
/// regions, owned strings were 29 MiB of the metrics).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct ServiceRegionFamily {
    service: Arc<str>,
    region: Arc<str>,
    family: &'static str,
}

impl prometheus_client::encoding::EncodeLabelSet for ServiceRegionFamily {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        [
            ("service", &*self.service),
            ("region", &*self.region),
            ("family", self.family),
        ]
        .encode(encoder)
    }
}
/// The A and AAAA answer counters of one (service, region).
type AnswerHandle = (Arc<str>, Arc<str>, [Counter; 2]);
/// Labels of `meridian_health_transitions_total`: address and new state.
type AddressTo = [(&'static str, String); 2];
/// One label: `check` or `result`.
type OneLabel = [(&'static str, String); 1];

/// Answers counted where the answer path reads anyway (a snapshot's services) and added to
/// their `meridian_dns_answers_total` counters later: when the counters are read
/// ([`Metrics::flush_answers`]) and when the holder is dropped.
pub(crate) trait PendingAnswers: Send + Sync {
    /// Adds the counts not yet added to their counters, and zeroes them.
    fn flush_answers(&self);
}

/// Every metric the process keeps.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// `meridian_dns_queries_total`.
    pub(crate) dns: DnsCounters,
    answers: Family<ServiceRegionFamily, Counter>,
    /// Holders of answer counts not yet added to `answers` (live snapshots), flushed before
    /// the counters are read.
    pending_answers: std::sync::Mutex<Vec<std::sync::Weak<dyn PendingAnswers>>>,
    /// Every answer counter handed out, to read them all (the status page's traffic share).
    answer_handles: std::sync::Mutex<Vec<AnswerHandle>>,
    /// `meridian_dns_ecs_queries_total{ecs="yes"}`: one atomic add, no lock.
    pub(crate) ecs_yes: Counter,
    /// `meridian_dns_ecs_queries_total{ecs="no"}`: one atomic add, no lock.
    pub(crate) ecs_no: Counter,
    ecs: Family<OneLabel, Counter>,
    transitions: Family<AddressTo, Counter>,
    reloads: Family<OneLabel, Counter>,
    query_log_lines: Counter,
    query_log_dropped: Family<OneLabel, Counter>,
    /// Unix seconds (as f64 bits) of the last successful config load.
    config_loaded: AtomicU64,
    rate_limited: Family<OneLabel, Counter>,
    /// `meridian_dns_rate_limited_total{action="drop"}`: one atomic add, no lock.
    pub(crate) rate_limited_drop: Counter,
    /// `meridian_dns_rate_limited_total{action="slip"}`: one atomic add, no lock.
    pub(crate) rate_limited_slip: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let reloads = Family::<OneLabel, Counter>::default();
        // Both results exist from the start, so that a rate() over them is defined.
        for result in ["ok", "error"] {
            let _ = reloads.get_or_create(&[("result", result.to_string())]);
        }
        let rate_limited = Family::<OneLabel, Counter>::default();
        let action = |a: &str| rate_limited.get_or_create_owned(&[("action", a.to_string())]);
        let (rate_limited_drop, rate_limited_slip) = (action("drop"), action("slip"));
        let ecs = Family::<OneLabel, Counter>::default();
        let with = |a: &str| ecs.get_or_create_owned(&[("ecs", a.to_string())]);
        let (ecs_yes, ecs_no) = (with("yes"), with("no"));
        let metrics = Self {
            dns: DnsCounters::default(),
            answers: Family::default(),
            pending_answers: std::sync::Mutex::new(Vec::new()),
            answer_handles: std::sync::Mutex::new(Vec::new()),
            ecs_yes,
            ecs_no,
            ecs,
            transitions: Family::default(),
            reloads,
            query_log_lines: Counter::default(),
            query_log_dropped: {
                let f = Family::<OneLabel, Counter>::default();
                // Every reason exists from the start, so that a rate() over them is defined.
                for reason in ["queue_full", "rate_cap", "write_error"] {
                    let _ = f.get_or_create(&[("reason", reason.to_string())]);
                }
                f
            },
            config_loaded: AtomicU64::new(0),
            rate_limited,
            rate_limited_drop,
            rate_limited_slip,
        };
        metrics.set_config_loaded();
        metrics
    }
}

impl Metrics {
    /// Returns the counter of answers for `service` from `region` for `family` (`A` or
    /// `AAAA`). Takes a lock: call it when a snapshot is built and keep the handle, not per
    /// query. Counters of services removed by a reload keep their last value (Prometheus
    /// counters never go back).
    #[cfg(test)]
    pub(crate) fn answer_counter(
        &self,
        service: &str,
        region: &str,
        family: &str,
    ) -> AnswerCounter {
        let [a, aaaa] = self.answer_counters(&service.into(), &region.into());
        if family == "AAAA" { aaaa } else { a }
    }

    /// Returns the counters of answers for `service` from `region`, for A and AAAA (as
    /// `answer_counter`; the names are shared, not copied).
    pub(crate) fn answer_counters(
        &self,
        service: &Arc<str>,
        region: &Arc<str>,
    ) -> [AnswerCounter; 2] {
        let labels = |family| ServiceRegionFamily {
            service: service.clone(),
            region: region.clone(),
            family,
        };
        let (a, aaaa) = (labels("A"), labels("AAAA"));
        let is_new = self.answers.get(&a).is_none();
        let counters = [
            self.answers.get_or_create_owned(&a),
            self.answers.get_or_create_owned(&aaaa),
        ];
        if is_new {
            let mut handles = self
                .answer_handles
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            handles.push((service.clone(), region.clone(), counters.clone()));
        }
        counters
    }

    /// Has [`Metrics::flush_answers`] flush `holder` as long as it lives.
    pub(crate) fn watch_pending_answers(&self, holder: std::sync::Weak<dyn PendingAnswers>) {
        let mut all = self
            .pending_answers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.retain(|h| h.strong_count() > 0);
        all.push(holder);
    }

    /// Adds every pending answer count to its counter: called before the counters are read.
    pub(crate) fn flush_answers(&self) {
        let holders: Vec<_> = {
            let mut all = self
                .pending_answers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            all.retain(|h| h.strong_count() > 0);
            all.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        // Outside the lock: a holder dropped here flushes in its `Drop`, which takes no lock.
        for h in holders {
            h.flush_answers();
        }
    }

    /// Returns the answers so far by (service, region), both families together.
    pub(crate) fn answer_counts(&self) -> std::collections::BTreeMap<(String, String), u64> {
        self.flush_answers();
        let handles = self
            .answer_handles
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut out = std::collections::BTreeMap::new();
        for (service, region, [a, aaaa]) in handles.iter() {
            *out.entry((service.to_string(), region.to_string()))
                .or_insert(0) += a.get() + aaaa.get();
        }
        out
    }

    /// Counts one answered query that carried an EDNS Client Subnet option (`true`) or not.
    pub(crate) fn count_ecs(&self, with_ecs: bool) {
        if with_ecs {
            self.ecs_yes.inc();
        } else {
            self.ecs_no.inc();
        }
    }

    /// Counts one query log line written.
    pub(crate) fn count_query_log_line(&self) {
        self.query_log_lines.inc();
    }

    /// Counts one query log line dropped for `reason` (`queue_full`, `rate_cap`,
    /// `write_error`).
    pub(crate) fn count_query_log_drop(&self, reason: &str) {
        self.query_log_dropped
            .get_or_create(&[("reason", reason.to_string())])
            .inc();
    }

    /// Records the current time as when the config in force was loaded.
    pub(crate) fn set_config_loaded(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.config_loaded.store(now.to_bits(), Ordering::Relaxed);
    }

    /// Counts a target state change of `address` to `to` (`up`, `down`, `unknown`).
    pub(crate) fn count_transition(&self, address: &str, to: &str) {
        self.transitions
            .get_or_create(&[("address", address.to_string()), ("to", to.to_string())])
            .inc();
    }

    /// Counts one config reload (SIGHUP or `POST /reload`) that succeeded or failed.
    pub(crate) fn count_reload(&self, ok: bool) {
        if ok {
            self.set_config_loaded();
        }
        let result = if ok { "ok" } else { "error" };
        self.reloads
            .get_or_create(&[("result", result.to_string())])
            .inc();
    }

    /// Returns a registry holding every metric of this process; `extra` collectors (gauges
    /// computed at scrape time) are added to it. Encode it with
    /// `prometheus_client::encoding::text::encode`.
    pub(crate) fn registry(self: &Arc<Self>, extra: Vec<Box<dyn Collector>>) -> Registry {
        let mut registry = Registry::default();
        // prometheus-client appends `_total` to counters itself.
        registry.register_collector(Box::new(DnsCollector(self.clone())));
        registry.register(
            counter_name(DNS_ANSWERS_TOTAL),
            "Dynamic answers, by service, region and family",
            self.answers.clone(),
        );
        registry.register(
            counter_name(DNS_ECS_QUERIES_TOTAL),
            "Queries answered, by whether they carried an EDNS Client Subnet option",
            self.ecs.clone(),
        );
        registry.register(
            counter_name(HEALTH_TRANSITIONS_TOTAL),
            "Target health state changes, by address and new state",
            self.transitions.clone(),
        );
        registry.register(
            counter_name(CONFIG_RELOADS_TOTAL),
            "Config reloads (SIGHUP or POST /reload), by result",
            self.reloads.clone(),
        );
        registry.register(
            counter_name(QUERY_LOG_LINES_TOTAL),
            "Query log lines written ([query_log])",
            self.query_log_lines.clone(),
        );
        registry.register(
            counter_name(QUERY_LOG_DROPPED_TOTAL),
            "Query log lines dropped, by reason (queue_full, rate_cap, write_error)",
            self.query_log_dropped.clone(),
        );
        registry.register(
            counter_name(DNS_RATE_LIMITED_TOTAL),
            "UDP responses held back by [rate_limit], by action (drop, slip)",
            self.rate_limited.clone(),
        );
        registry.register_collector(Box::new(DnssecCollector));
        registry.register_collector(Box::new(ProcessInfoCollector(self.clone())));
        registry.register_collector(Box::new(process::ProcessCollector));
        for c in extra {
            registry.register_collector(c);
        }
        registry
    }
}

/// Strips `_total`: prometheus-client registers counters by their base name.
fn counter_name(name: &'static str) -> &'static str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// The git commit this binary was built from (`build.rs`), or `unknown`.
pub(crate) const BUILD_COMMIT: &str = env!("MERIDIAN_BUILD_COMMIT");

/// Writes `meridian_build_info` and `meridian_config_loaded_timestamp_seconds`.
#[derive(Debug)]
struct ProcessInfoCollector(Arc<Metrics>);

impl Collector for ProcessInfoCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // A gauge rather than an OpenMetrics info metric, so that both exposition formats
        // carry the same name and type (as `prometheus_build_info` does).
        let mut metric = encoder.encode_descriptor(
            BUILD_INFO,
            "Always 1, labelled with the version and the git commit of the build.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let labels = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", BUILD_COMMIT),
        ];
        ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)?;
        let loaded = f64::from_bits(self.0.config_loaded.load(Ordering::Relaxed));
        let metric = encoder.encode_descriptor(
            CONFIG_LOADED_TIMESTAMP_SECONDS,
            "When the config in force was loaded (start or successful reload), Unix seconds.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(loaded).encode(metric)?;
        Ok(())
    }
}

/// Reads the signing counters of [`crate::dnssec::cache`] at scrape time.
#[derive(Debug)]
struct DnssecCollector;

impl Collector for DnssecCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (signed, refused) = crate::dnssec::cache::counts();
        for (name, help, n) in [
            (
                DNSSEC_SIGNATURES_TOTAL,
                "New DNSSEC signatures made (signature cache misses).",
                signed,
            ),
            (
                DNSSEC_BUDGET_EXHAUSTED_TOTAL,
                "DNSSEC signatures refused because the signing budget was spent (answered SERVFAIL).",
                refused,
            ),
        ] {
            let metric = encoder.encode_descriptor(
                counter_name(name),
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            ConstCounter::new(n).encode(metric)?;
        }
        Ok(())
    }
}

/// Reads [`DnsCounters`] at scrape time.
#[derive(Debug)]
struct DnsCollector(Arc<Metrics>);

impl Collector for DnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let counts = self.0.dns.snapshot();
        if counts.is_empty() {
            return Ok(());
        }
        let mut metric = encoder.encode_descriptor(
            counter_name(DNS_QUERIES_TOTAL),
            "DNS queries answered, by transport, query type and response code.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (transport, qtype, rcode, n) in counts {
            let labels = [("transport", transport), ("qtype", qtype), ("rcode", rcode)];
            ConstCounter::new(n).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Arc<Metrics>) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry(Vec::new())).unwrap();
        out
    }

    #[test]
    fn exposition_uses_the_contract_names() {
        let m = Arc::new(Metrics::default());
        m.dns.count(0, 1, 0);
        m.dns.count(1, 28, 3);
        m.answer_counter("api.example.net.", "eu-west", "A").inc();
        m.count_transition("192.0.2.1", "down");
        m.count_reload(false);
        let text = render(&m);
        let text = text
            .replace(BUILD_COMMIT, "COMMIT")
            .replace(env!("CARGO_PKG_VERSION"), "VERSION");
        for line in [
            r#"meridian_dns_queries_total{transport="udp",qtype="A",rcode="NOERROR"} 1"#,
            r#"meridian_dns_queries_total{transport="tcp",qtype="AAAA",rcode="NXDOMAIN"} 1"#,
            r#"meridian_dns_answers_total{service="api.example.net.",region="eu-west",family="A"} 1"#,
            r#"meridian_health_transitions_total{address="192.0.2.1",to="down"} 1"#,
            r#"meridian_dns_ecs_queries_total{ecs="no"} 0"#,
            r#"meridian_build_info{version="VERSION",commit="COMMIT"} 1"#,
            r#"meridian_config_reloads_total{result="ok"} 0"#,
            r#"meridian_config_reloads_total{result="error"} 1"#,
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("_total_total"), "{text}");
    }

    #[test]
    fn answer_counters_for_one_pair_share_the_count() {
        let m = Metrics::default();
        let a = m.answer_counter("api.example.net.", "us-east", "A");
        let b = m.answer_counter("api.example.net.", "us-east", "A");
        a.inc();
        b.inc();
        assert_eq!(a.get(), 2);
        assert_eq!(
            m.answer_counter("api.example.net.", "eu-west", "A").get(),
            0
        );
    }
}
