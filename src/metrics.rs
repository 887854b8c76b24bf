//! Metric names and the lock-free counters of the answer path.
//!
//! Every metric name is a `pub const` that tests import. The DNS path counts into fixed arrays
//! of atomics indexed by (transport, qtype, rcode): no lock and no allocation per query; the
//! admin port turns them into Prometheus text at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Queries answered, by transport, qtype and rcode.
pub const DNS_QUERIES_TOTAL: &str = "meridian_dns_queries_total";
/// Dynamic answers, by service and region.
pub const DNS_ANSWERS_TOTAL: &str = "meridian_dns_answers_total";
/// 1 when a target is usable, by service, region and address.
pub const TARGET_UP: &str = "meridian_target_up";
/// Health transitions, by address and new state.
pub const HEALTH_TRANSITIONS_TOTAL: &str = "meridian_health_transitions_total";
/// Probe duration histogram, by check.
pub const PROBE_DURATION_SECONDS: &str = "meridian_probe_duration_seconds";
/// Config reloads, by result.
pub const CONFIG_RELOADS_TOTAL: &str = "meridian_config_reloads_total";

/// Transport labels, in index order.
pub const TRANSPORTS: [&str; 2] = ["udp", "tcp"];
/// Query types counted by name, in index order; anything else is "other".
pub const QTYPES: [(u16, &str); 15] = [
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
pub const RCODES: [(u16, &str); 8] = [
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
pub struct DnsCounters {
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
    pub fn count(&self, transport: usize, qtype: u16, rcode: u16) {
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
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
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

/// Every metric the process keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `meridian_dns_queries_total`.
    pub dns: DnsCounters,
}
