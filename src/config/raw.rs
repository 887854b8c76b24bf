//! Raw serde structs: the shape of the TOML file, nothing more.
//!
//! Every struct denies unknown fields so that a typo is an error, not a silently ignored key.
//! Values are checked and converted into typed ones by `validate` ([`super::load`]).

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) dns_listen: Option<Vec<String>>,
    pub(crate) admin_listen: Option<String>,
    pub(crate) admin_token_file: Option<String>,
    pub(crate) state_file: Option<String>,
    pub(crate) geoip: Option<String>,
    pub(crate) ipv6_transition: Option<bool>,
    pub(crate) nat64_prefixes: Option<Vec<String>>,
    pub(crate) nsid: Option<String>,
    pub(crate) cookie_secret_file: Option<String>,
    pub(crate) udp_workers: Option<usize>,
    pub(crate) udp_receive_buffer: Option<u64>,
    pub(crate) probe_threads: Option<usize>,
    pub(crate) tcp_idle_timeout: Option<String>,
    pub(crate) tcp_max_connections: Option<usize>,
    pub(crate) tcp_max_connections_per_network: Option<usize>,
    pub(crate) watch_interval: Option<String>,
    pub(crate) tls_listen: Option<Vec<String>>,
    pub(crate) tls_certificate: Option<String>,
    pub(crate) tls_key: Option<String>,
    pub(crate) admin_tls_certificate: Option<String>,
    pub(crate) admin_tls_key: Option<String>,
    pub(crate) admin_client_ca: Option<String>,
    pub(crate) quic_listen: Option<Vec<String>>,
}

/// `[notify]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNotify {
    pub(crate) webhook_url: String,
    pub(crate) timeout: Option<String>,
    pub(crate) retries: Option<u32>,
    pub(crate) format: Option<String>,
    pub(crate) routing_key_file: Option<String>,
}

/// `[query_log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueryLog {
    pub(crate) file: Option<String>,
    pub(crate) sample: Option<f64>,
    pub(crate) max_per_second: Option<u32>,
    pub(crate) max_size_mb: Option<u64>,
    pub(crate) keep: Option<u32>,
}

/// `[rate_limit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub(crate) responses_per_second: u32,
    pub(crate) slip: Option<u32>,
    pub(crate) ipv4_prefix: Option<u8>,
    pub(crate) ipv6_prefix: Option<u8>,
}

/// One `[[zone]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawZone {
    pub(crate) origin: String,
    pub(crate) file: String,
    pub(crate) dnssec: Option<RawDnssec>,
}

/// A zone's `dnssec = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDnssec {
    pub(crate) keys: Vec<String>,
    pub(crate) published: Option<Vec<String>>,
    pub(crate) algorithm: Option<String>,
    pub(crate) signature_validity: Option<String>,
    pub(crate) inception_offset: Option<String>,
    pub(crate) signatures_per_second: Option<u32>,
}

/// One `[region.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRegion {
    pub(crate) latitude: f64,
    pub(crate) longitude: f64,
    pub(crate) bias: Option<f64>,
}

/// One `[check.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub kind: String,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub host: Option<String>,
    pub interval: Option<String>,
    pub fast_interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub expect_status: Option<Vec<String>>,
    pub body_contains: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub tls_verify: Option<bool>,
    pub source: Option<String>,
    pub initial_state: Option<String>,
    pub load: Option<RawLoad>,
}

/// A check's `load = { header = "X-Load" }` or `load = { json = "/load", capacity = 1000 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoad {
    pub header: Option<String>,
    pub json: Option<String>,
    pub capacity: Option<f64>,
}

/// One `[[service]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub(crate) name: String,
    pub(crate) policy: String,
    pub(crate) ttl: Option<u32>,
    pub(crate) max_answers: Option<usize>,
    pub(crate) when_all_down: Option<String>,
    pub(crate) check: Option<String>,
    pub(crate) ecs: Option<bool>,
    pub(crate) sticky: Option<bool>,
    pub(crate) geo: Option<toml::Table>,
    pub(crate) high_watermark: Option<f64>,
    pub(crate) endpoints: Vec<RawEndpoint>,
}

/// One entry of a service's `endpoints`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEndpoint {
    pub(crate) region: String,
    pub(crate) addresses: Vec<String>,
    pub(crate) weight: Option<u32>,
    pub(crate) priority: Option<u32>,
    pub(crate) check: Option<String>,
    pub(crate) high_watermark: Option<f64>,
}
