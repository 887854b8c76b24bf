//! Configuration: the TOML file an operator writes, turned into typed values.
//!
//! Loading has two stages (ripgrep's low/high args): [`raw`] holds serde structs that deny unknown
//! keys, and `validate` turns them into a [`Config`] whose values cannot express an invalid
//! state (`Duration`, `SocketAddr`, `IpNet`, resolved region and check names). Every problem is
//! collected and reported at once as a list of [`ConfigError`]s, each naming the file, the key and
//! what is wrong. This module does no network I/O; it reads only the config file itself. Zone
//! files and the GeoIP database are checked when the snapshot is built (`crate::app`).

pub(crate) mod cluster;
mod dnssec;
#[cfg(test)]
mod load_tests;
pub mod raw;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

pub(crate) use cluster::{Cluster, Quorum};
pub use dnssec::{
    Algorithm, DEFAULT_INCEPTION_OFFSET, DEFAULT_SIGNATURE_VALIDITY, DEFAULT_SIGNATURES_PER_SECOND,
};
pub use validate::parse_str;
pub(crate) use validate::{load, parse_duration};

/// Default DNS listen address when `server.dns_listen` is absent.
pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.1:5353";
/// Default admin listen address when `server.admin_listen` is absent.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8053";
/// Default TTL of dynamic answers, in seconds.
pub const DEFAULT_SERVICE_TTL: u32 = 30;
/// Default interval between two probes of one target.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Default time a probe may take before it counts as failed.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `fast_interval` of a check, as a divisor of its `interval` (HAProxy's `fastinter`).
pub const DEFAULT_FAST_INTERVAL_DIVISOR: u32 = 4;
/// Default consecutive successes for a target to go up.
pub const DEFAULT_RISE: u32 = 2;
/// Default consecutive failures for a target to go down.
pub const DEFAULT_FALL: u32 = 3;
/// Default idle time after which a DNS TCP connection is closed.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default worker threads of the runtime of probes, the admin port and the webhook: one
/// thread carries 10,000 probes a second (bench/README.md, issue #17).
pub const DEFAULT_PROBE_THREADS: usize = 1;

/// Default `server.udp_receive_buffer`: the receive buffer asked for each DNS UDP socket, in
/// bytes (Linux doubles it for its bookkeeping, and caps what it grants at
/// `net.core.rmem_max` unless the process may raise it).
pub const DEFAULT_UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Largest `server.udp_receive_buffer` accepted.
pub const MAX_UDP_RECEIVE_BUFFER: u64 = 1 << 30;
/// Default cap on concurrent DNS TCP connections.
pub const DEFAULT_TCP_MAX_CONNECTIONS: usize = 1024;
/// The default cap per client network is `tcp_max_connections` divided by this: one network
/// can take a sixteenth of the connections (64 of the default 1024).
pub const DEFAULT_TCP_NETWORK_SHARE: usize = 16;
/// Default interval between two looks at the watched files (`server.watch_interval`).
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(5);
/// Default time a webhook POST may take.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of retries of a failed webhook POST.
pub const DEFAULT_WEBHOOK_RETRIES: u32 = 3;
/// Default `high_watermark` of a region whose check reports load (issue 16): above this load,
/// `nearest`, `geo` and `failover` move a share of its clients to their next region.
pub const DEFAULT_HIGH_WATERMARK: f64 = 0.8;

/// Returns the key of the `index`-th `[[service]]`: by its name (`service["api.example.net."]`)
/// when it has one, else by position (`service[0]`).
pub fn service_key(index: usize, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("service[{n:?}]"),
        None => format!("service[{index}]"),
    }
}

/// One problem found in the configuration (or in a file it names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// The line in that file, where known (zone files).
    pub line: Option<usize>,
    /// The key, as a dotted path (`service["api.example.net."].endpoints[1].region`); empty for
    /// whole-file errors.
    pub key: String,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl ConfigError {
    /// Returns an error for `key` in `file`.
    pub fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Returns the same error with a line number.
    pub fn at_line(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A list of config errors, displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file this was read from; relative paths below are already resolved against
    /// its directory.
    pub source: PathBuf,
    /// `[server]`.
    pub server: Server,
    /// `[notify]`, if present.
    pub notify: Option<Notify>,
    /// `[rate_limit]`, if present: response rate limiting on UDP.
    pub rate_limit: Option<RateLimit>,
    /// `[cluster]`, if present: drains and health shared by a fleet through etcd.
    pub cluster: Option<Cluster>,
    /// `[query_log]`, if present: one JSON line per (sampled) answer.
    pub query_log: Option<QueryLog>,
    /// `[[zone]]`, in file order.
    pub zones: Vec<ZoneSpec>,
    /// `[region.*]`, in file order.
    pub regions: Vec<Arc<Region>>,
    /// `[nets]`: client network -> region name, in file order (lookups use longest prefix).
    pub nets: Vec<NetOverride>,
    /// `[check.*]`, in file order.
    pub checks: Vec<Arc<Check>>,
    /// `[[service]]`, in file order.
    pub services: Vec<Service>,
}

impl Config {
    /// Returns the region called `name`.
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name).map(|r| &**r)
    }

    /// Returns what is valid but probably not meant, one line each (`meridian check` prints
    /// them, `serve` logs them at WARN): an admin port reachable from other hosts without TLS,
    /// geo keys that are both a country and a continent code, TTLs so long that they, not
    /// the health checks, decide how long a failover takes, and a `high_watermark` on a region
    /// whose check reads no load.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let file = self.source.display();
        if let Some(admin) = self.server.admin_listen
            && !admin.ip().is_loopback()
            && self.server.admin_tls_certificate.is_none()
        {
            out.push(format!(
                "{file}: server.admin_listen: {admin} is reachable from other hosts over plain HTTP: \
                 the bearer token and every answer travel in clear; set server.admin_tls_certificate \
                 and server.admin_tls_key (and server.admin_client_ca to require client certificates)"
            ));
        }
        for s in &self.services {
            let service = service_key(0, Some(&s.name));
            for (key, _) in &s.geo.entries {
                if let GeoKey::Either(code) = key
                    && let Some((country, continent)) = ambiguous_code(code)
                {
                    out.push(format!(
                        "{file}: {service}.geo.{code}: {code:?} is the country code of {country} and the continent code of {continent}; \
                         it matches the country first: write \"country:{code}\" or \"continent:{code}\" to say which"
                    ));
                }
            }
            for (j, e) in s.endpoints.iter().enumerate() {
                let reads_load = e.check.as_ref().is_some_and(|c| c.load.is_some());
                let set = e.high_watermark != DEFAULT_HIGH_WATERMARK;
                if set && !reads_load {
                    let why = match e.check_name() {
                        Some(c) => format!("its check {c:?} reads no load (set `load` on it)"),
                        None => "it has no check, so no load is read".to_string(),
                    };
                    out.push(format!(
                        "{file}: {service}.endpoints[{j}].high_watermark: {} has no effect: {why}",
                        e.high_watermark
                    ));
                }
            }
            let slowest = s
                .endpoints
                .iter()
                .filter_map(|e| e.check.as_deref())
                .map(|c| c.interval * c.fall.get() + c.timeout)
                .max();
            if let Some(detect) = slowest
                && u64::from(s.ttl) > 10 * detect.as_secs().max(1)
            {
                out.push(format!(
                    "{file}: {service}.ttl: {}s is more than ten times the {}s it takes to withdraw a failed target \
                     (interval × fall + timeout): resolvers may keep a dead address for up to {}s",
                    s.ttl,
                    detect.as_secs(),
                    u64::from(s.ttl) + detect.as_secs()
                ));
            }
        }
        out
    }
}

/// Returns (country, continent) when `code` is both an ISO 3166 country code and a continent
/// code.
fn ambiguous_code(code: &str) -> Option<(&'static str, &'static str)> {
    match code {
        "AF" => Some(("Afghanistan", "Africa")),
        "AS" => Some(("American Samoa", "Asia")),
        "NA" => Some(("Namibia", "North America")),
        "SA" => Some(("Saudi Arabia", "South America")),
        _ => None,
    }
}

/// `[server]`: sockets, files and identity.
#[derive(Debug, Clone)]
pub struct Server {
    /// DNS listen addresses; UDP and TCP are bound on each. Port 0 picks a free port.
    pub dns_listen: Vec<SocketAddr>,
    /// Admin HTTP listen address (loopback by default); `None` when set to `""` (disabled).
    pub admin_listen: Option<SocketAddr>,
    /// File holding the bearer token for mutating admin calls.
    pub admin_token_file: Option<PathBuf>,
    /// PEM certificate chain of the admin port (leaf first): set, the admin port speaks HTTPS
    /// only. Re-read on every reload (new connections get the new certificate).
    pub admin_tls_certificate: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `admin_tls_certificate`.
    pub admin_tls_key: Option<PathBuf>,
    /// PEM CA bundle: set, the admin port requires a client certificate signed by one of
    /// these CAs (needs `admin_tls_certificate`).
    pub admin_client_ca: Option<PathBuf>,
    /// File where operator overrides (drains) are persisted.
    pub state_file: Option<PathBuf>,
    /// MaxMind-format GeoIP database.
    pub geoip: Option<PathBuf>,
    /// Locate NAT64, 6to4 and Teredo clients by the IPv4 address they embed (default true).
    pub ipv6_transition: bool,
    /// NAT64 prefixes besides `64:ff9b::/96` (RFC 6052 lengths: 32, 40, 48, 56, 64, 96).
    pub nat64_prefixes: Vec<ipnet::Ipv6Net>,
    /// RFC 5001 name server identifier, returned when a query asks for it.
    pub nsid: Option<String>,
    /// DNS cookie secrets (RFC 9018 §4.4) from `cookie_secret_file`: the first makes server
    /// cookies, every one is accepted (so a secret can be rolled over). Empty: each process
    /// draws a random secret at start.
    pub cookie_secrets: Vec<[u8; 16]>,
    /// The file `cookie_secrets` was read from (watched for changes by `crate::watch`).
    pub cookie_secret_file: Option<PathBuf>,
    /// UDP sockets (SO_REUSEPORT) per listen address; default: one per CPU.
    pub udp_workers: Option<usize>,
    /// Receive buffer asked for each DNS UDP socket, in bytes; 0: the system's default
    /// (`net.core.rmem_default`). Large: a burst queues (and waits); small: it is dropped (and
    /// retried by the resolver). Default [`DEFAULT_UDP_RECEIVE_BUFFER`]. Takes effect at the
    /// next restart.
    pub udp_receive_buffer: usize,
    /// Worker threads of the runtime that runs probes, the admin port and the webhook (apart
    /// from DNS); default [`DEFAULT_PROBE_THREADS`]. Takes effect at the next restart.
    pub probe_threads: usize,
    /// Idle time after which a DNS TCP connection is closed.
    pub tcp_idle_timeout: Duration,
    /// Cap on concurrent DNS TCP connections; more are closed at accept.
    pub tcp_max_connections: usize,
    /// Cap on concurrent DNS TCP connections from one client network (/24 or /56); default
    /// `tcp_max_connections / 16` (at least 1).
    pub tcp_max_connections_per_network: usize,
    /// How often the config file, the zone files and the GeoIP database are checked for
    /// changes, which reload them (`crate::watch`); `None` (`watch_interval = "0s"`) turns the
    /// watcher off. Default [`DEFAULT_WATCH_INTERVAL`].
    pub watch_interval: Option<Duration>,
    /// DNS-over-TLS (RFC 7858) listen addresses; empty: no DoT.
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain served on `tls_listen` (leaf first); re-read on every reload.
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_certificate`.
    pub tls_key: Option<PathBuf>,
    /// DNS-over-QUIC (RFC 9250) listen addresses (UDP), served with `tls_certificate`;
    /// empty: no DoQ.
    pub quic_listen: Vec<SocketAddr>,
}

/// `[notify]`: where state changes are posted.
#[derive(Debug, Clone)]
pub struct Notify {
    /// `http://` or `https://` URL that receives a JSON POST per target state change.
    pub webhook_url: String,
    /// Time one POST may take.
    pub timeout: Duration,
    /// Retries after a failed POST (with backoff).
    pub retries: u32,
    /// The shape of the POSTed body (default `json`).
    pub format: NotifyFormat,
    /// `pagerduty`: the Events API v2 routing (integration) key, read from
    /// `notify.routing_key_file` when the config is loaded.
    pub routing_key: Option<String>,
}

/// `notify.format`: who receives the notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    /// Meridian's own JSON documents (`crate::notify`).
    Json,
    /// A Slack incoming webhook: `text` plus `blocks`.
    Slack,
    /// PagerDuty Events API v2: trigger and resolve, one `dedup_key` per target or service.
    PagerDuty,
}

impl NotifyFormat {
    /// Returns the config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyFormat::Json => "json",
            NotifyFormat::Slack => "slack",
            NotifyFormat::PagerDuty => "pagerduty",
        }
    }
}

/// `[query_log]`: one JSON line per answer (sampled and rate-capped) for log aggregation,
/// written by its own thread (`crate::query_log`), never by the threads that answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryLog {
    /// Where the lines go: a file (rotated by size), or standard output when `None` (`"-"`).
    pub file: Option<PathBuf>,
    /// The fraction of answers logged, in (0, 1].
    pub sample: f64,
    /// At most this many lines per second; more are dropped and counted.
    pub max_per_second: u32,
    /// A file is rotated when it would grow beyond this many bytes.
    pub max_size: u64,
    /// Rotated files kept (`file.1` the newest ... `file.N`).
    pub keep: u32,
}

/// Default `query_log.max_per_second`.
pub const DEFAULT_QUERY_LOG_MAX_PER_SECOND: u32 = 10_000;
/// Default `query_log.max_size_mb`.
pub const DEFAULT_QUERY_LOG_MAX_SIZE_MB: u64 = 100;
/// Default `query_log.keep`.
pub const DEFAULT_QUERY_LOG_KEEP: u32 = 5;

/// `[rate_limit]`: response rate limiting on UDP, per client network (the idea of BIND's
/// RRL). Spoofed floods cannot turn the server into an amplifier, while a real client whose
/// answers are dropped still gets every `slip`-th one as a truncated answer and retries over
/// TCP, which is never limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Responses per second to one client network (also the burst), at least 1.
    pub responses_per_second: u32,
    /// Every `slip`-th limited response is sent truncated (TC) instead of dropped; 0 never.
    pub slip: u32,
    /// Prefix length grouping IPv4 clients into one network.
    pub ipv4_prefix: u8,
    /// Prefix length grouping IPv6 clients into one network.
    pub ipv6_prefix: u8,
}

/// Default `rate_limit.slip`: every second limited response is sent truncated (BIND's default).
pub const DEFAULT_RRL_SLIP: u32 = 2;
/// Default `rate_limit.ipv4_prefix`.
pub const DEFAULT_RRL_IPV4_PREFIX: u8 = 24;
/// Default `rate_limit.ipv6_prefix`.
pub const DEFAULT_RRL_IPV6_PREFIX: u8 = 56;

/// One `[[zone]]`.
#[derive(Debug, Clone)]
pub struct ZoneSpec {
    /// Zone origin, lowercase, fully qualified (`example.net.`).
    pub origin: String,
    /// Zone file (RFC 1035 master file), resolved.
    pub file: PathBuf,
    /// Online DNSSEC signing, when configured (`dnssec = { keys = [...] }`).
    pub dnssec: Option<DnssecSpec>,
}

/// A zone's `dnssec` table: online signing (issue 14).
#[derive(Debug, Clone)]
pub struct DnssecSpec {
    /// PKCS#8 PEM key files that sign (and are published, and listed in CDS/CDNSKEY), resolved.
    pub keys: Vec<PathBuf>,
    /// Key files only published in the DNSKEY RRset (key rollover), resolved.
    pub published: Vec<PathBuf>,
    /// The algorithm every key must have (default ECDSA P-256 SHA-256, 13).
    pub algorithm: Algorithm,
    /// How long signatures are valid (default 14 days, at least 1 hour).
    pub signature_validity: Duration,
    /// How far before now inception is set (default 1 hour).
    pub inception_offset: Duration,
    /// The signing budget: new signatures each answering thread may make per second (and in
    /// a burst) for this zone, at least 1 (default [`DEFAULT_SIGNATURES_PER_SECOND`]). Past
    /// it an answer that needs a new signature is SERVFAIL.
    pub signatures_per_second: u32,
}

/// One `[region.NAME]`: where a region's endpoints live.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// The region's name (the table key).
    pub name: String,
    /// Degrees north, -90..=90.
    pub latitude: f64,
    /// Degrees east, -180..=180.
    pub longitude: f64,
    /// Kilometres subtracted from the distance to this region by `nearest` (negative: farther).
    pub bias_km: f64,
}

/// One `[nets]` entry: clients in `net` are treated as located in `region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOverride {
    /// Client network (host bits cleared).
    pub net: IpNet,
    /// Region name (exists in `regions`).
    pub region: String,
}

/// The kind of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// HTTP GET.
    Http,
    /// HTTP GET over TLS.
    Https,
    /// TCP connect.
    Tcp,
}

impl CheckKind {
    /// Returns the config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Http => "http",
            CheckKind::Https => "https",
            CheckKind::Tcp => "tcp",
        }
    }
}

/// One accepted HTTP status: an exact code or a class (`2` for "2xx").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusMatch {
    /// An exact code, e.g. 204.
    Code(u16),
    /// A class: the hundreds digit, e.g. 2 for "2xx".
    Class(u16),
}

impl StatusMatch {
    /// Returns true when `status` is accepted by this entry.
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(c) => c == status,
            StatusMatch::Class(c) => status / 100 == c,
        }
    }
}

/// One `[check.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Check {
    /// The check's name (the table key).
    pub name: String,
    /// http, https or tcp.
    pub kind: CheckKind,
    /// Port probed on each target address.
    pub port: u16,
    /// HTTP path (http/https only), starting with `/`.
    pub path: String,
    /// Host header and TLS SNI (http/https); default: the target address.
    pub host: Option<String>,
    /// Time between two probes of one target.
    pub interval: Duration,
    /// Time between two probes of one target while its results disagree with its state (after
    /// a first failure of an up target, a first success of a down one); default
    /// `interval / 4`, at most `interval`.
    pub fast_interval: Duration,
    /// Time a probe may take; always less than `interval`.
    pub timeout: Duration,
    /// Consecutive successes to go up.
    pub rise: NonZeroU32,
    /// Consecutive failures to go down.
    pub fall: NonZeroU32,
    /// Accepted statuses (http/https); default `["2xx"]`.
    pub expect_status: Vec<StatusMatch>,
    /// Text the body must contain (http/https), searched in the first bytes of the body.
    pub body_contains: Option<String>,
    /// Extra request headers (http/https), in key order.
    pub headers: Vec<(String, String)>,
    /// Verify the server certificate (https); default true.
    pub tls_verify: bool,
    /// Local address probes are sent from (default: chosen by the system).
    pub source: Option<IpAddr>,
    /// The state of a target before its first result; default `unknown`.
    pub initial_state: InitialState,
    /// Where the probe reads the target's load (http/https; issue 16); `None`: no load.
    pub load: Option<LoadSignal>,
}

/// Where a check reads a target's load from its health response (`load = { ... }`): the
/// same response that decides health, no second request.
#[derive(Debug, Clone)]
pub struct LoadSignal {
    /// The header or the JSON pointer into the body.
    pub source: LoadSource,
    /// When set, the figure read is raw (connections, requests per second) and the load is
    /// figure / capacity; without it the figure is the load itself (0 idle, 1 full).
    pub capacity: Option<f64>,
}

impl PartialEq for LoadSignal {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
            && self.capacity.map(f64::to_bits) == other.capacity.map(f64::to_bits)
    }
}

impl Eq for LoadSignal {}

impl std::hash::Hash for LoadSignal {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.source.hash(state);
        self.capacity.map(f64::to_bits).hash(state);
    }
}

impl LoadSignal {
    /// Returns the load a read `figure` stands for: figure / capacity, or the figure itself;
    /// `None` (unknown) for a negative or non-finite figure.
    pub fn load_of(&self, figure: f64) -> Option<f64> {
        let load = match self.capacity {
            Some(c) => figure / c,
            None => figure,
        };
        (load.is_finite() && load >= 0.0).then_some(load)
    }
}

/// Which part of the health response carries the load.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LoadSource {
    /// A response header (`load = { header = "X-Load" }`), matched case-insensitively.
    Header(String),
    /// A JSON pointer (RFC 6901) into the body (`load = { json = "/load" }`).
    Json(String),
}

/// The state of a target before its first probe result (`initial_state` of a check).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum InitialState {
    /// Answered as up; a first success makes it up, only `fall` consecutive failures make it
    /// down (no target is withdrawn on its first result alone).
    #[default]
    Unknown,
    /// Withdrawn until its first success, which makes it up at once.
    Down,
}

impl InitialState {
    /// Returns the config spelling (`unknown`, `down`).
    pub fn as_str(self) -> &'static str {
        match self {
            InitialState::Unknown => "unknown",
            InitialState::Down => "down",
        }
    }
}

/// How a service orders its regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// By great-circle distance from the client (minus each region's bias).
    Nearest,
    /// By endpoint priority (lower first), then config order.
    Failover,
    /// Randomly by weight among healthy endpoints.
    Weighted,
    /// By the service's country/continent map.
    Geo,
    /// Every healthy target, up to `max_answers`.
    All,
}

impl Policy {
    /// Returns the config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Nearest => "nearest",
            Policy::Failover => "failover",
            Policy::Weighted => "weighted",
            Policy::Geo => "geo",
            Policy::All => "all",
        }
    }
}

/// What a service answers when no target is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WhenAllDown {
    /// Fail open: answer as if every target were up.
    All,
    /// NOERROR with no address (NODATA).
    Empty,
    /// SERVFAIL.
    Servfail,
}

impl WhenAllDown {
    /// Returns the config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            WhenAllDown::All => "all",
            WhenAllDown::Empty => "empty",
            WhenAllDown::Servfail => "servfail",
        }
    }
}

/// A key of a `geo` map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GeoKey {
    /// `country:XX`: an ISO 3166 country code (uppercase).
    Country(String),
    /// `continent:XX`: a continent code (AF AN AS EU NA OC SA).
    Continent(String),
    /// A bare two-letter code: matched as a country first, then as a continent.
    Either(String),
}

/// A `geo` policy map: location keys -> ordered region lists, with a default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GeoMap {
    /// Entries in file order, each with its regions as indices into the service's
    /// `endpoints` (validation resolved the names; no index repeats).
    pub entries: Vec<(GeoKey, Vec<usize>)>,
    /// Regions for clients no entry matches (and clients with no location), as indices
    /// into the service's `endpoints`.
    pub default: Vec<usize>,
}

/// One `[[service]]`: a dynamic name and how it is answered.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Owner name, lowercase, fully qualified (`api.example.net.`); inside one of the zones.
    pub name: String,
    /// How regions are ordered.
    pub policy: Policy,
    /// TTL of answers, seconds.
    pub ttl: u32,
    /// Addresses per answer (at least 1).
    pub max_answers: usize,
    /// What to answer when no target is usable.
    pub when_all_down: WhenAllDown,
    /// Default check of the endpoints (one of `checks`); `None`: targets are always up.
    pub check: Option<Arc<Check>>,
    /// Use the EDNS Client Subnet option when present (default true).
    pub ecs: bool,
    /// `weighted`/`all`: the same client subnet (/24, /56) gets the same choice.
    pub sticky: bool,
    /// The map of a `geo` policy (empty otherwise).
    pub geo: GeoMap,
    /// Endpoints in file order.
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint of a service: a region's addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The region (one of `regions`, resolved by validation).
    pub region: Arc<Region>,
    /// Target addresses (IPv4 answer A queries, IPv6 answer AAAA).
    pub addresses: Vec<IpAddr>,
    /// `weighted`: relative weight (default 1; 0 = only when nothing else is up).
    pub weight: u32,
    /// `failover`: lower is preferred (default 1).
    pub priority: u32,
    /// The check probing this endpoint's targets: its own `check`, else the service's (one
    /// of `checks`, resolved by validation); `None`: the targets are always up.
    pub check: Option<Arc<Check>>,
    /// Load above which clients spill to their next region (0 < w <= 1; issue 16): the
    /// endpoint's own `high_watermark`, else the service's, else
    /// [`DEFAULT_HIGH_WATERMARK`]. Used only when the check reports load.
    pub high_watermark: f64,
}

impl Endpoint {
    /// Returns the name of the check probing this endpoint's targets, if any.
    pub fn check_name(&self) -> Option<&str> {
        self.check.as_ref().map(|c| c.name.as_str())
    }

    /// Returns true when the endpoint's check reads a load from its targets.
    pub fn has_load(&self) -> bool {
        self.check.as_ref().is_some_and(|c| c.load.is_some())
    }
}
