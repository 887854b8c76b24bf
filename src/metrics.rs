//! Metric names and the Prometheus registry.
//!
//! STUB: replaced by the admin work (issue 5).

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
