//! Raw serde structs: the shape of the TOML file, nothing more.
//!
//! Every struct denies unknown fields so that a typo is an error, not a silently ignored key.
//! Values are checked and converted into typed ones by `validate` ([`super::load`]).

use std::collections::BTreeMap;

use serde::Deserialize;

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub dns_listen: Option<Vec<String>>,
    pub admin_listen: Option<String>,
    pub admin_token_file: Option<String>,
    pub state_file: Option<String>,
    pub geoip: Option<String>,
    pub ipv6_transition: Option<bool>,
    pub nat64_prefixes: Option<Vec<String>>,
    pub nsid: Option<String>,
    pub cookie_secret_file: Option<String>,
    pub udp_workers: Option<usize>,
    pub tcp_idle_timeout: Option<String>,
    pub tcp_max_connections: Option<usize>,
    pub tcp_max_connections_per_network: Option<usize>,
    pub watch_interval: Option<String>,
}

/// `[notify]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    pub webhook_url: String,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub format: Option<String>,
    pub routing_key_file: Option<String>,
}

/// `[query_log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueryLog {
    pub file: Option<String>,
    pub sample: Option<f64>,
    pub max_per_second: Option<u32>,
    pub max_size_mb: Option<u64>,
    pub keep: Option<u32>,
}

/// `[rate_limit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub responses_per_second: u32,
    pub slip: Option<u32>,
    pub ipv4_prefix: Option<u8>,
    pub ipv6_prefix: Option<u8>,
}

/// One `[[zone]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZone {
    pub origin: String,
    pub file: String,
}

/// One `[region.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegion {
    pub latitude: f64,
    pub longitude: f64,
    pub bias: Option<f64>,
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
    pub initial_state: Option<String>,
}

/// One `[[service]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub policy: String,
    pub ttl: Option<u32>,
    pub max_answers: Option<usize>,
    pub when_all_down: Option<String>,
    pub check: Option<String>,
    pub ecs: Option<bool>,
    pub sticky: Option<bool>,
    pub geo: Option<toml::Table>,
    pub endpoints: Vec<RawEndpoint>,
}

/// One entry of a service's `endpoints`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub region: String,
    pub addresses: Vec<String>,
    pub weight: Option<u32>,
    pub priority: Option<u32>,
    pub check: Option<String>,
}
