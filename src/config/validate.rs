//! Turns the raw TOML into a typed [`Config`], collecting every problem at once.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;

use super::raw::{
    RawCheck, RawDnssec, RawEndpoint, RawLoad, RawNotify, RawQueryLog, RawRateLimit, RawRegion,
    RawServer, RawService, RawZone,
};
use super::*;
use super::{
    Algorithm, DEFAULT_INCEPTION_OFFSET, DEFAULT_SIGNATURE_VALIDITY, DEFAULT_SIGNATURES_PER_SECOND,
};

/// Top-level keys the file may have.
const TOP_LEVEL_KEYS: &[&str] = &[
    "server",
    "notify",
    "rate_limit",
    "cluster",
    "query_log",
    "zone",
    "region",
    "nets",
    "check",
    "service",
];

/// Reads and validates the config file at `path`.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            path,
            "",
            format!("cannot read config file: {e}"),
        )])
    })?;
    parse_str(path, &text)
}

/// Validates config `text` as if read from `path` (relative paths resolve against its directory).
pub fn parse_str(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let e: toml::de::Error = e;
            let line = e.span().map(|s| line_of(text, s.start));
            let mut err = ConfigError::new(path, "", format!("invalid TOML: {}", e.message()));
            err.line = line;
            return Err(ConfigErrors(vec![err]));
        }
    };
    let mut v = Validator {
        file: path.to_path_buf(),
        dir: path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        errors: Vec::new(),
    };
    let config = v.config(table);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(v.errors))
    }
}

/// Returns the 1-based line of byte offset `pos` in `text`.
fn line_of(text: &str, pos: usize) -> usize {
    text[..pos.min(text.len())].matches('\n').count() + 1
}

/// Parses a duration such as `500ms`, `2s`, `1m`, `1h`, `14d` (a bare number is seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. \"500ms\", \"2s\", \"1m\""))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 86_400.0 * 365.0 {
        return Err(format!("invalid duration {s:?}: too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Returns the path inside `value` (`.ttl`, `.endpoints[1].weight`) whose value keeps `value`
/// from deserializing as `T`: the deepest one whose removal makes the error go away or
/// change. serde's error from a `toml::Value` does not say
/// where it is; this runs only on the error path.
fn culprit<T: DeserializeOwned>(value: &toml::Value) -> Option<String> {
    fn paths(value: &toml::Value, prefix: &mut Vec<PathPart>, out: &mut Vec<Vec<PathPart>>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    prefix.push(PathPart::Key(k.clone()));
                    paths(v, prefix, out);
                    out.push(prefix.clone());
                    prefix.pop();
                }
            }
            toml::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    prefix.push(PathPart::Index(i));
                    paths(v, prefix, out);
                    out.push(prefix.clone());
                    prefix.pop();
                }
            }
            _ => {}
        }
    }
    fn remove(value: &mut toml::Value, path: &[PathPart]) {
        let Some((last, parents)) = path.split_last() else {
            return;
        };
        let mut v = value;
        for p in parents {
            let next = match (p, v) {
                (PathPart::Key(k), toml::Value::Table(t)) => t.get_mut(k),
                (PathPart::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
                _ => None,
            };
            let Some(n) = next else { return };
            v = n;
        }
        match (last, v) {
            (PathPart::Key(k), toml::Value::Table(t)) => {
                t.remove(k);
            }
            (PathPart::Index(i), toml::Value::Array(a)) if *i < a.len() => {
                a.remove(*i);
            }
            _ => {}
        }
    }
    let mut all = Vec::new();
    paths(value, &mut Vec::new(), &mut all);
    // Deepest first: `endpoints[1].weight` before `endpoints[1]` before `endpoints`.
    all.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let original = T::deserialize(value.clone()).err()?.message().to_string();
    all.into_iter().find_map(|path| {
        let mut v = value.clone();
        remove(&mut v, &path);
        // serde stops at the first error: if it is gone, or another one comes first now, the
        // removed value was the one it stopped at.
        let fixed = match T::deserialize(v) {
            Ok(_) => true,
            Err(e) => e.message() != original,
        };
        fixed.then(|| {
            path.iter()
                .map(|p| match p {
                    PathPart::Key(k) => format!(".{k}"),
                    PathPart::Index(i) => format!("[{i}]"),
                })
                .collect()
        })
    })
}

#[derive(Debug, Clone)]
enum PathPart {
    Key(String),
    Index(usize),
}

/// Rewrites serde's type errors in the words of a TOML file: `invalid type: string "30",
/// expected u32` becomes `expected an integer, found string "30"`.
fn plain_serde_message(msg: &str) -> String {
    let Some(rest) = msg
        .strip_prefix("invalid type: ")
        .or_else(|| msg.strip_prefix("invalid value: "))
    else {
        return msg.to_string();
    };
    let Some((found, expected)) = rest.split_once(", expected ") else {
        return msg.to_string();
    };
    let expected = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            "an integer".to_string()
        }
        "f32" | "f64" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a sequence" => "an array".to_string(),
        "a map" => "a table".to_string(),
        e if e.starts_with("struct ") => "a table".to_string(),
        e => e.to_string(),
    };
    let found = found
        .replace("floating point", "number")
        .replace("map", "table");
    format!("expected {expected}, found {found}")
}

struct Validator {
    file: PathBuf,
    dir: PathBuf,
    errors: Vec<ConfigError>,
}

impl Validator {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(&self.file, key, message));
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    /// Deserializes one table, recording an error on failure under `key` and the key inside
    /// the table that is wrong (`service["api.example.net."].ttl`), with the expected type.
    fn section<T: DeserializeOwned>(&mut self, key: &str, value: toml::Value) -> Option<T> {
        match T::deserialize(value.clone()) {
            Ok(v) => Some(v),
            Err(e) => {
                let msg = plain_serde_message(e.message().trim());
                let mut path = culprit::<T>(&value).unwrap_or_default();
                // An unknown key is named by the message: the key is its table.
                if msg.starts_with("unknown field") {
                    let end = path.rfind(['.', '[']).unwrap_or(0);
                    path.truncate(end);
                }
                self.err(format!("{key}{path}"), msg);
                None
            }
        }
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(s) => match parse_duration(s) {
                Ok(d) if d.is_zero() => {
                    self.err(key, "must be greater than zero");
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.err(key, e);
                    default
                }
            },
        }
    }

    fn config(&mut self, mut table: toml::Table) -> Config {
        for key in table.keys() {
            if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
                let msg = format!(
                    "unknown top-level key `{key}`, expected one of: {}",
                    TOP_LEVEL_KEYS.join(", ")
                );
                self.errors
                    .push(ConfigError::new(&self.file, key.clone(), msg));
            }
        }
        let server = self.server(table.remove("server"));
        let notify = table.remove("notify").and_then(|v| self.notify(v));
        let rate_limit = table.remove("rate_limit").and_then(|v| self.rate_limit(v));
        let cluster = table
            .remove("cluster")
            .and_then(|v| super::cluster::validate(&self.file, &self.dir, v, &mut self.errors));
        let query_log = table.remove("query_log").and_then(|v| self.query_log(v));
        let zones = self.zones(table.remove("zone"));
        let regions: Vec<Arc<Region>> = (self.regions(table.remove("region")).into_iter())
            .map(Arc::new)
            .collect();
        let region_names: HashSet<String> = regions.iter().map(|r| r.name.clone()).collect();
        let nets = self.nets(table.remove("nets"), &region_names);
        let checks: Vec<Arc<Check>> = (self.checks(table.remove("check")).into_iter())
            .map(Arc::new)
            .collect();
        let services = self.services(table.remove("service"), &zones, &regions, &checks);
        Config {
            source: self.file.clone(),
            server,
            notify,
            rate_limit,
            cluster,
            query_log,
            zones,
            regions,
            nets,
            checks,
            services,
        }
    }

    fn server(&mut self, value: Option<toml::Value>) -> Server {
        let raw: Option<RawServer> = value.and_then(|v| self.section("server", v));
        let raw = raw.unwrap_or(RawServer {
            dns_listen: None,
            admin_listen: None,
            admin_token_file: None,
            state_file: None,
            geoip: None,
            ipv6_transition: None,
            nat64_prefixes: None,
            nsid: None,
            cookie_secret_file: None,
            udp_workers: None,
            udp_receive_buffer: None,
            probe_threads: None,
            tcp_idle_timeout: None,
            tcp_max_connections: None,
            tcp_max_connections_per_network: None,
            watch_interval: None,
            tls_listen: None,
            tls_certificate: None,
            tls_key: None,
            admin_tls_certificate: None,
            admin_tls_key: None,
            admin_client_ca: None,
            quic_listen: None,
        });
        let listen = raw
            .dns_listen
            .unwrap_or_else(|| vec![DEFAULT_DNS_LISTEN.to_string()]);
        let mut dns_listen = Vec::new();
        if listen.is_empty() {
            self.err("server.dns_listen", "must list at least one address");
        }
        for (i, a) in listen.iter().enumerate() {
            match a.parse::<SocketAddr>() {
                Ok(sa) if dns_listen.contains(&sa) => {
                    self.err(format!("server.dns_listen[{i}]"), format!("duplicate address {a:?}"))
                }
                Ok(sa) => dns_listen.push(sa),
                Err(_) => self.err(
                    format!("server.dns_listen[{i}]"),
                    format!("invalid socket address {a:?}: expected IP:PORT, e.g. \"127.0.0.1:5353\" or \"[::1]:5353\""),
                ),
            }
        }
        let admin = raw
            .admin_listen
            .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_string());
        let admin_listen = if admin.is_empty() {
            None
        } else {
            match admin.parse::<SocketAddr>() {
                Ok(sa) => Some(sa),
                Err(_) => {
                    self.err(
                        "server.admin_listen",
                        format!(
                            "invalid socket address {admin:?}: expected IP:PORT, or \"\" to disable"
                        ),
                    );
                    None
                }
            }
        };
        let admin_token_file = raw.admin_token_file.map(|p| self.resolve(&p));
        if let Some(p) = &admin_token_file {
            match std::fs::read_to_string(p) {
                Ok(t) if t.trim().is_empty() => self.err(
                    "server.admin_token_file",
                    format!("token file {} is empty", p.display()),
                ),
                Ok(_) => {}
                Err(e) => self.err(
                    "server.admin_token_file",
                    format!("cannot read {}: {e}", p.display()),
                ),
            }
        }
        let state_file = raw.state_file.map(|p| self.resolve(&p));
        let geoip = raw.geoip.map(|p| self.resolve(&p));
        if let Some(p) = &geoip
            && !p.is_file()
        {
            self.err(
                "server.geoip",
                format!("GeoIP database {} does not exist", p.display()),
            );
        }
        let mut nat64_prefixes: Vec<ipnet::Ipv6Net> = Vec::new();
        for (i, p) in raw.nat64_prefixes.iter().flatten().enumerate() {
            let key = format!("server.nat64_prefixes[{i}]");
            match p.parse::<ipnet::Ipv6Net>() {
                Ok(n) if n.trunc() != n => self.err(
                    key,
                    format!("{p} has host bits set (did you mean {}?)", n.trunc()),
                ),
                Ok(n) if ![32, 40, 48, 56, 64, 96].contains(&n.prefix_len()) => self.err(
                    key,
                    format!("{p}: a NAT64 prefix is 32, 40, 48, 56, 64 or 96 bits long (RFC 6052)"),
                ),
                Ok(n) if nat64_prefixes.contains(&n) => {
                    self.err(key, format!("duplicate prefix {p}"))
                }
                Ok(n) => nat64_prefixes.push(n),
                Err(_) => self.err(key, format!("{p:?} is not an IPv6 network")),
            }
        }
        if let Some(n) = &raw.nsid
            && (n.is_empty() || n.len() > 255)
        {
            self.err("server.nsid", "must be 1 to 255 bytes long");
        }
        let cookie_secret_file = raw.cookie_secret_file.map(|p| self.resolve(&p));
        let cookie_secrets = match &cookie_secret_file {
            Some(path) => self.cookie_secrets(path),
            None => Vec::new(),
        };
        if raw.udp_workers == Some(0) {
            self.err("server.udp_workers", "must be at least 1");
        }
        if raw
            .udp_receive_buffer
            .is_some_and(|b| b > MAX_UDP_RECEIVE_BUFFER)
        {
            self.err(
                "server.udp_receive_buffer",
                format!("must be at most {MAX_UDP_RECEIVE_BUFFER} bytes (0: the system's default)"),
            );
        }
        if raw.probe_threads == Some(0) {
            self.err("server.probe_threads", "must be at least 1");
        }
        if raw.tcp_max_connections == Some(0) {
            self.err("server.tcp_max_connections", "must be at least 1");
        }
        let tcp_max_connections = raw
            .tcp_max_connections
            .unwrap_or(DEFAULT_TCP_MAX_CONNECTIONS);
        if raw.tcp_max_connections_per_network == Some(0) {
            self.err(
                "server.tcp_max_connections_per_network",
                "must be at least 1",
            );
        }
        let tcp_idle_timeout = self.duration(
            "server.tcp_idle_timeout",
            raw.tcp_idle_timeout.as_deref(),
            DEFAULT_TCP_IDLE_TIMEOUT,
        );
        // "0s" turns the watcher off.
        let watch_interval = match raw.watch_interval.as_deref().map(parse_duration) {
            None => Some(DEFAULT_WATCH_INTERVAL),
            Some(Ok(d)) if d.is_zero() => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                self.err("server.watch_interval", e);
                None
            }
        };
        let mut tls_listen = Vec::new();
        for (i, a) in raw.tls_listen.iter().flatten().enumerate() {
            match a.parse::<SocketAddr>() {
                Ok(sa)
                    if sa.port() != 0 && (tls_listen.contains(&sa) || dns_listen.contains(&sa)) =>
                {
                    self.err(
                        format!("server.tls_listen[{i}]"),
                        format!(
                            "duplicate address {a:?} (also in server.dns_listen or earlier here)"
                        ),
                    )
                }
                Ok(sa) => tls_listen.push(sa),
                Err(_) => self.err(
                    format!("server.tls_listen[{i}]"),
                    format!(
                        "invalid socket address {a:?}: expected IP:PORT, e.g. \"127.0.0.1:853\""
                    ),
                ),
            }
        }
        // DoQ listens on UDP: its addresses may equal DoT's (853/tcp and 853/udp), not a DNS
        // (UDP) listener's.
        let mut quic_listen = Vec::new();
        for (i, a) in raw.quic_listen.iter().flatten().enumerate() {
            match a.parse::<SocketAddr>() {
                Ok(sa)
                    if sa.port() != 0
                        && (quic_listen.contains(&sa) || dns_listen.contains(&sa)) =>
                {
                    self.err(
                        format!("server.quic_listen[{i}]"),
                        format!(
                            "duplicate address {a:?} (also in server.dns_listen or earlier here)"
                        ),
                    )
                }
                Ok(sa) => quic_listen.push(sa),
                Err(_) => self.err(
                    format!("server.quic_listen[{i}]"),
                    format!(
                        "invalid socket address {a:?}: expected IP:PORT, e.g. \"127.0.0.1:853\""
                    ),
                ),
            }
        }
        let tls_certificate = raw.tls_certificate.map(|p| self.resolve(&p));
        let tls_key = raw.tls_key.map(|p| self.resolve(&p));
        match (&tls_certificate, &tls_key) {
            (Some(_), None) => self.err("server.tls_key", "missing: server.tls_certificate is set"),
            (None, Some(_)) => self.err("server.tls_certificate", "missing: server.tls_key is set"),
            (None, None) if !tls_listen.is_empty() => self.err(
                "server.tls_listen",
                "needs server.tls_certificate and server.tls_key (PEM files)",
            ),
            _ => {}
        }
        let admin_tls_certificate = raw.admin_tls_certificate.map(|p| self.resolve(&p));
        let admin_tls_key = raw.admin_tls_key.map(|p| self.resolve(&p));
        let admin_client_ca = raw.admin_client_ca.map(|p| self.resolve(&p));
        match (&admin_tls_certificate, &admin_tls_key) {
            (Some(_), None) => self.err(
                "server.admin_tls_key",
                "missing: server.admin_tls_certificate is set",
            ),
            (None, Some(_)) => self.err(
                "server.admin_tls_certificate",
                "missing: server.admin_tls_key is set",
            ),
            (None, None) if admin_client_ca.is_some() => self.err(
                "server.admin_client_ca",
                "needs server.admin_tls_certificate and server.admin_tls_key: client certificates are asked for over HTTPS only",
            ),
            _ => {}
        }
        let wants_quic = raw.quic_listen.as_ref().is_some_and(|l| !l.is_empty());
        if tls_certificate.is_none() && tls_key.is_none() && wants_quic {
            self.err(
                "server.quic_listen",
                "needs server.tls_certificate and server.tls_key (PEM files)",
            );
        }
        Server {
            admin_tls_certificate,
            admin_tls_key,
            admin_client_ca,
            cookie_secret_file,
            tls_listen,
            quic_listen,
            tls_certificate,
            tls_key,
            dns_listen,
            admin_listen,
            admin_token_file,
            state_file,
            geoip,
            ipv6_transition: raw.ipv6_transition.unwrap_or(true),
            nat64_prefixes,
            nsid: raw.nsid,
            cookie_secrets,
            udp_workers: raw.udp_workers,
            udp_receive_buffer: raw
                .udp_receive_buffer
                .filter(|b| *b <= MAX_UDP_RECEIVE_BUFFER)
                .and_then(|b| usize::try_from(b).ok())
                .unwrap_or(DEFAULT_UDP_RECEIVE_BUFFER),
            probe_threads: raw.probe_threads.unwrap_or(DEFAULT_PROBE_THREADS),
            tcp_idle_timeout,
            tcp_max_connections,
            tcp_max_connections_per_network: raw
                .tcp_max_connections_per_network
                .unwrap_or((tcp_max_connections / DEFAULT_TCP_NETWORK_SHARE).max(1)),
            watch_interval,
        }
    }

    /// Reads the DNS cookie secrets from `path`: one secret per line, 32 hex digits (16
    /// octets), the one in use first; blank lines and `#` comments are skipped. Messages never
    /// quote the file's content (it is a secret).
    fn cookie_secrets(&mut self, path: &std::path::Path) -> Vec<[u8; 16]> {
        const KEY: &str = "server.cookie_secret_file";
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.err(KEY, format!("cannot read {}: {e}", path.display()));
                return Vec::new();
            }
        };
        let mut secrets = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_secret(line) {
                Some(s) => secrets.push(s),
                None => self.err(
                    KEY,
                    format!(
                        "{} line {}: expected 32 hex digits (a 16-octet secret), found {} characters",
                        path.display(),
                        i + 1,
                        line.chars().count()
                    ),
                ),
            }
        }
        if secrets.is_empty() {
            self.err(
                KEY,
                format!(
                    "{} holds no secret (32 hex digits per line)",
                    path.display()
                ),
            );
        }
        secrets
    }

    fn notify(&mut self, value: toml::Value) -> Option<Notify> {
        let raw: RawNotify = self.section("notify", value)?;
        if !(raw.webhook_url.starts_with("http://") || raw.webhook_url.starts_with("https://")) {
            self.err(
                "notify.webhook_url",
                format!("{:?} is not an http:// or https:// URL", raw.webhook_url),
            );
        }
        let timeout = self.duration(
            "notify.timeout",
            raw.timeout.as_deref(),
            DEFAULT_WEBHOOK_TIMEOUT,
        );
        let format = match raw.format.as_deref().unwrap_or("json") {
            "json" => NotifyFormat::Json,
            "slack" => NotifyFormat::Slack,
            "pagerduty" => NotifyFormat::PagerDuty,
            other => {
                self.err(
                    "notify.format",
                    format!("{other:?} is not one of \"json\", \"slack\", \"pagerduty\""),
                );
                NotifyFormat::Json
            }
        };
        let routing_key = match (&raw.routing_key_file, format) {
            (Some(p), NotifyFormat::PagerDuty) => {
                let path = self.resolve(p);
                // Messages never quote the file's content (it is a secret).
                match std::fs::read_to_string(&path) {
                    Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                    Ok(_) => {
                        self.err(
                            "notify.routing_key_file",
                            format!("{} is empty", path.display()),
                        );
                        None
                    }
                    Err(e) => {
                        self.err(
                            "notify.routing_key_file",
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, NotifyFormat::PagerDuty) => {
                self.err(
                    "notify.routing_key_file",
                    "format \"pagerduty\" needs the file holding the Events API v2 routing key",
                );
                None
            }
            (Some(_), _) => {
                self.err(
                    "notify.routing_key_file",
                    "is only used with format = \"pagerduty\"",
                );
                None
            }
            (None, _) => None,
        };
        Some(Notify {
            webhook_url: raw.webhook_url,
            timeout,
            retries: raw.retries.unwrap_or(DEFAULT_WEBHOOK_RETRIES),
            format,
            routing_key,
        })
    }

    fn query_log(&mut self, value: toml::Value) -> Option<QueryLog> {
        let raw: RawQueryLog = self.section("query_log", value)?;
        let file = match raw.file.as_deref() {
            None | Some("-") => None,
            Some("") => {
                self.err(
                    "query_log.file",
                    "must be a path, or \"-\" for standard output",
                );
                None
            }
            Some(p) => Some(self.resolve(p)),
        };
        let sample = raw.sample.unwrap_or(1.0);
        if !(sample > 0.0 && sample <= 1.0) {
            self.err(
                "query_log.sample",
                format!("{sample} is not within (0, 1]: the fraction of answers logged"),
            );
        }
        let max_per_second = raw
            .max_per_second
            .unwrap_or(DEFAULT_QUERY_LOG_MAX_PER_SECOND);
        if max_per_second == 0 {
            self.err(
                "query_log.max_per_second",
                "must be at least 1 (remove [query_log] to turn the log off)",
            );
        }
        let max_size_mb = raw.max_size_mb.unwrap_or(DEFAULT_QUERY_LOG_MAX_SIZE_MB);
        if max_size_mb == 0 {
            self.err("query_log.max_size_mb", "must be at least 1");
        }
        let keep = raw.keep.unwrap_or(DEFAULT_QUERY_LOG_KEEP);
        if keep == 0 {
            self.err("query_log.keep", "must be at least 1");
        }
        Some(QueryLog {
            file,
            sample,
            max_per_second,
            max_size: max_size_mb.saturating_mul(1 << 20),
            keep,
        })
    }

    fn rate_limit(&mut self, value: toml::Value) -> Option<RateLimit> {
        let raw: RawRateLimit = self.section("rate_limit", value)?;
        if raw.responses_per_second == 0 {
            self.err(
                "rate_limit.responses_per_second",
                "must be at least 1 (remove [rate_limit] to turn limiting off)",
            );
        }
        let ipv4_prefix = raw.ipv4_prefix.unwrap_or(DEFAULT_RRL_IPV4_PREFIX);
        if ipv4_prefix > 32 {
            self.err(
                "rate_limit.ipv4_prefix",
                format!("{ipv4_prefix} is not within 0..=32"),
            );
        }
        let ipv6_prefix = raw.ipv6_prefix.unwrap_or(DEFAULT_RRL_IPV6_PREFIX);
        if ipv6_prefix > 128 {
            self.err(
                "rate_limit.ipv6_prefix",
                format!("{ipv6_prefix} is not within 0..=128"),
            );
        }
        Some(RateLimit {
            responses_per_second: raw.responses_per_second.max(1),
            slip: raw.slip.unwrap_or(DEFAULT_RRL_SLIP),
            ipv4_prefix: ipv4_prefix.min(32),
            ipv6_prefix: ipv6_prefix.min(128),
        })
    }

    /// Checks a domain name; returns it lowercase and fully qualified.
    fn domain(&mut self, key: &str, name: &str) -> Option<String> {
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let ok = !lower.is_empty()
            && lower.len() <= 253
            && lower.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*')
            });
        if ok {
            Some(format!("{lower}."))
        } else {
            self.err(key, format!("invalid domain name {name:?}"));
            None
        }
    }

    fn zones(&mut self, value: Option<toml::Value>) -> Vec<ZoneSpec> {
        let Some(value) = value else {
            self.err("zone", "no [[zone]] is configured: at least one is needed");
            return Vec::new();
        };
        let toml::Value::Array(items) = value else {
            self.err("zone", "must be an array of tables ([[zone]])");
            return Vec::new();
        };
        let mut zones: Vec<ZoneSpec> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let key = format!("zone[{i}]");
            let Some(raw) = self.section::<RawZone>(&key, item) else {
                continue;
            };
            let Some(origin) = self.domain(&format!("{key}.origin"), &raw.origin) else {
                continue;
            };
            if zones.iter().any(|z| z.origin == origin) {
                self.err(
                    format!("{key}.origin"),
                    format!("zone {origin} is configured twice"),
                );
                continue;
            }
            let file = self.resolve(&raw.file);
            if !file.is_file() {
                self.err(
                    format!("{key}.file"),
                    format!("zone file {} does not exist", file.display()),
                );
            }
            let dnssec = raw.dnssec.map(|d| self.dnssec(&format!("{key}.dnssec"), d));
            zones.push(ZoneSpec {
                origin,
                file,
                dnssec,
            });
        }
        zones
    }

    fn dnssec(&mut self, key: &str, raw: RawDnssec) -> DnssecSpec {
        let algorithm = match raw.algorithm.as_deref() {
            None => Algorithm::default(),
            Some(name) => Algorithm::from_name(name).unwrap_or_else(|| {
                self.err(
                    format!("{key}.algorithm"),
                    format!("unknown algorithm {name:?}: use \"ecdsap256sha256\" or \"ed25519\""),
                );
                Algorithm::default()
            }),
        };
        if raw.keys.is_empty() {
            self.err(
                format!("{key}.keys"),
                "at least one key is needed (make one with `meridian dnssec keygen`)",
            );
        }
        let mut files = |list: &[String], name: &str| -> Vec<PathBuf> {
            let mut out = Vec::new();
            for (i, p) in list.iter().enumerate() {
                let path = self.resolve(p);
                if !path.is_file() {
                    self.err(
                        format!("{key}.{name}[{i}]"),
                        format!("key file {} does not exist", path.display()),
                    );
                }
                out.push(path);
            }
            out
        };
        let keys = files(&raw.keys, "keys");
        let published = files(raw.published.as_deref().unwrap_or_default(), "published");
        let signature_validity = self.duration(
            &format!("{key}.signature_validity"),
            raw.signature_validity.as_deref(),
            DEFAULT_SIGNATURE_VALIDITY,
        );
        let inception_offset = match raw.inception_offset.as_deref() {
            None => DEFAULT_INCEPTION_OFFSET,
            Some(s) => parse_duration(s).unwrap_or_else(|e| {
                self.err(format!("{key}.inception_offset"), e);
                DEFAULT_INCEPTION_OFFSET
            }),
        };
        if signature_validity < Duration::from_secs(3_600) {
            self.err(
                format!("{key}.signature_validity"),
                "must be at least 1h (signatures are reused for a quarter of it)",
            );
        }
        if raw.signatures_per_second == Some(0) {
            self.err(format!("{key}.signatures_per_second"), "must be at least 1");
        }
        DnssecSpec {
            keys,
            published,
            algorithm,
            signature_validity,
            inception_offset,
            signatures_per_second: raw
                .signatures_per_second
                .unwrap_or(DEFAULT_SIGNATURES_PER_SECOND)
                .max(1),
        }
    }

    fn regions(&mut self, value: Option<toml::Value>) -> Vec<Region> {
        let Some(value) = value else {
            return Vec::new();
        };
        let toml::Value::Table(table) = value else {
            self.err("region", "must be a table of regions ([region.NAME])");
            return Vec::new();
        };
        let mut regions = Vec::new();
        for (name, item) in table {
            let key = format!("region.{name}");
            let Some(raw) = self.section::<RawRegion>(&key, item) else {
                continue;
            };
            if !(-90.0..=90.0).contains(&raw.latitude) {
                self.err(
                    format!("{key}.latitude"),
                    format!("{} is not within -90..=90", raw.latitude),
                );
            }
            if !(-180.0..=180.0).contains(&raw.longitude) {
                self.err(
                    format!("{key}.longitude"),
                    format!("{} is not within -180..=180", raw.longitude),
                );
            }
            let bias_km = raw.bias.unwrap_or(0.0);
            if !bias_km.is_finite() || bias_km.abs() > 20_000.0 {
                self.err(
                    format!("{key}.bias"),
                    "must be a distance in km within -20000..=20000",
                );
            }
            regions.push(Region {
                name,
                latitude: raw.latitude,
                longitude: raw.longitude,
                bias_km,
            });
        }
        regions
    }

    fn nets(&mut self, value: Option<toml::Value>, regions: &HashSet<String>) -> Vec<NetOverride> {
        let Some(value) = value else {
            return Vec::new();
        };
        let toml::Value::Table(table) = value else {
            self.err("nets", "must be a table of \"CIDR\" = \"region\"");
            return Vec::new();
        };
        let mut nets: Vec<NetOverride> = Vec::new();
        for (cidr, region) in table {
            let key = format!("nets.\"{cidr}\"");
            let net = match cidr.parse::<IpNet>() {
                Ok(n) if n.trunc() != n => {
                    self.err(
                        &key,
                        format!("{cidr:?} has host bits set (did you mean {}?)", n.trunc()),
                    );
                    continue;
                }
                Ok(n) => n,
                Err(_) => match cidr.parse::<IpAddr>() {
                    Ok(a) => IpNet::from(a),
                    Err(_) => {
                        self.err(&key, format!("{cidr:?} is not a network in CIDR notation"));
                        continue;
                    }
                },
            };
            let toml::Value::String(region) = region else {
                self.err(&key, "must be a region name (a string)");
                continue;
            };
            if !regions.contains(&region) {
                self.err(&key, format!("unknown region {region:?}"));
                continue;
            }
            if nets.iter().any(|n| n.net == net) {
                self.err(&key, format!("network {net} is listed twice"));
                continue;
            }
            nets.push(NetOverride { net, region });
        }
        nets
    }

    fn checks(&mut self, value: Option<toml::Value>) -> Vec<Check> {
        let Some(value) = value else {
            return Vec::new();
        };
        let toml::Value::Table(table) = value else {
            self.err("check", "must be a table of checks ([check.NAME])");
            return Vec::new();
        };
        let mut checks = Vec::new();
        for (name, item) in table {
            let key = format!("check.{name}");
            let Some(raw) = self.section::<RawCheck>(&key, item) else {
                continue;
            };
            if let Some(c) = self.check(&key, name, raw) {
                checks.push(c);
            }
        }
        checks
    }

    fn check(&mut self, key: &str, name: String, raw: RawCheck) -> Option<Check> {
        let kind = match raw.kind.as_str() {
            "http" => CheckKind::Http,
            "https" => CheckKind::Https,
            "tcp" => CheckKind::Tcp,
            other => {
                self.err(
                    format!("{key}.kind"),
                    format!("unknown check kind {other:?}, expected one of: http, https, tcp"),
                );
                return None;
            }
        };
        let is_http = kind != CheckKind::Tcp;
        let port = match raw.port {
            Some(0) => {
                self.err(format!("{key}.port"), "must be 1..=65535");
                return None;
            }
            Some(p) => p,
            None if kind == CheckKind::Http => 80,
            None if kind == CheckKind::Https => 443,
            None => {
                self.err(format!("{key}.port"), "is required for a tcp check");
                return None;
            }
        };
        if !is_http {
            for (field, set) in [
                ("path", raw.path.is_some()),
                ("host", raw.host.is_some()),
                ("expect_status", raw.expect_status.is_some()),
                ("body_contains", raw.body_contains.is_some()),
                ("headers", raw.headers.is_some()),
                ("tls_verify", raw.tls_verify.is_some()),
                ("load", raw.load.is_some()),
            ] {
                if set {
                    self.err(
                        format!("{key}.{field}"),
                        "applies only to http and https checks",
                    );
                }
            }
        }
        let path = raw.path.unwrap_or_else(|| "/".to_string());
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            self.err(
                format!("{key}.path"),
                format!("{path:?} must start with '/' and contain no spaces"),
            );
        }
        if let Some(h) = &raw.host
            && (h.is_empty() || h.contains(|c: char| c.is_whitespace() || c == '/'))
        {
            self.err(format!("{key}.host"), format!("{h:?} is not a host name"));
        }
        let interval = self.duration(
            &format!("{key}.interval"),
            raw.interval.as_deref(),
            DEFAULT_PROBE_INTERVAL,
        );
        let timeout = self.duration(
            &format!("{key}.timeout"),
            raw.timeout.as_deref(),
            DEFAULT_PROBE_TIMEOUT.min(interval / 2),
        );
        if timeout >= interval {
            self.err(
                format!("{key}.timeout"),
                format!("timeout ({timeout:?}) must be less than interval ({interval:?})"),
            );
        }
        let fast_interval = self.duration(
            &format!("{key}.fast_interval"),
            raw.fast_interval.as_deref(),
            interval / DEFAULT_FAST_INTERVAL_DIVISOR,
        );
        if fast_interval > interval {
            self.err(
                format!("{key}.fast_interval"),
                format!(
                    "fast_interval ({fast_interval:?}) must not be more than interval ({interval:?})"
                ),
            );
        }
        let initial_state = match raw.initial_state.as_deref() {
            None | Some("unknown") => InitialState::Unknown,
            Some("down") => InitialState::Down,
            Some(other) => {
                self.err(
                    format!("{key}.initial_state"),
                    format!("unknown initial state {other:?}, expected one of: unknown, down"),
                );
                InitialState::Unknown
            }
        };
        let mut count =
            |field: &str, v: Option<u32>, default: u32| match NonZeroU32::new(v.unwrap_or(default))
            {
                Some(n) if n.get() <= 100 => n,
                _ => {
                    self.err(format!("{key}.{field}"), "must be 1..=100");
                    NonZeroU32::MIN
                }
            };
        let rise = count("rise", raw.rise, DEFAULT_RISE);
        let fall = count("fall", raw.fall, DEFAULT_FALL);
        let mut expect_status = Vec::new();
        for (i, s) in raw
            .expect_status
            .unwrap_or_else(|| vec!["2xx".into()])
            .iter()
            .enumerate()
        {
            match parse_status(s) {
                Some(m) => expect_status.push(m),
                None => self.err(
                    format!("{key}.expect_status[{i}]"),
                    format!("{s:?} is not a status code (100..=599) or class (\"2xx\")"),
                ),
            }
        }
        if expect_status.is_empty() && is_http {
            self.err(
                format!("{key}.expect_status"),
                "must list at least one status",
            );
        }
        if let Some(b) = &raw.body_contains
            && b.is_empty()
        {
            self.err(format!("{key}.body_contains"), "must not be empty");
        }
        let headers: Vec<(String, String)> = raw.headers.unwrap_or_default().into_iter().collect();
        for (h, v) in &headers {
            let name_ok = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !name_ok {
                self.err(
                    format!("{key}.headers"),
                    format!("{h:?} is not a valid header name"),
                );
            }
            if v.contains(['\r', '\n']) {
                self.err(
                    format!("{key}.headers"),
                    format!("value of {h:?} contains a line break"),
                );
            }
        }
        let source = match raw.source.as_deref().map(str::parse::<IpAddr>) {
            None => None,
            Some(Ok(ip)) => Some(ip),
            Some(Err(_)) => {
                self.err(
                    format!("{key}.source"),
                    format!(
                        "{:?} is not an IP address (the local address probes are sent from)",
                        raw.source.as_deref().unwrap_or("")
                    ),
                );
                None
            }
        };
        let load = match raw.load {
            Some(l) if is_http => self.load_signal(&format!("{key}.load"), l),
            _ => None,
        };
        Some(Check {
            name,
            kind,
            port,
            path,
            host: raw.host,
            interval,
            fast_interval,
            timeout,
            rise,
            fall,
            expect_status,
            body_contains: raw.body_contains,
            headers,
            tls_verify: raw.tls_verify.unwrap_or(true),
            source,
            initial_state,
            load,
        })
    }

    /// Validates a check's `load = { header | json, capacity }` (issue 16).
    fn load_signal(&mut self, key: &str, raw: RawLoad) -> Option<LoadSignal> {
        let before = self.errors.len();
        let source = match (raw.header, raw.json) {
            (Some(h), None) => {
                let ok = !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !ok {
                    self.err(
                        format!("{key}.header"),
                        format!("{h:?} is not a valid header name"),
                    );
                }
                LoadSource::Header(h)
            }
            (None, Some(p)) => {
                if let Err(e) = check_json_pointer(&p) {
                    self.err(
                        format!("{key}.json"),
                        format!("{p:?} is not a JSON pointer (RFC 6901): {e}"),
                    );
                }
                LoadSource::Json(p)
            }
            (Some(_), Some(_)) => {
                self.err(key, "set either header or json, not both");
                return None;
            }
            (None, None) => {
                self.err(
                    key,
                    "needs header = \"NAME\" or json = \"/pointer\": where the health response carries the load",
                );
                return None;
            }
        };
        if let Some(c) = raw.capacity
            && !(c.is_finite() && c > 0.0)
        {
            self.err(
                format!("{key}.capacity"),
                format!("{c} must be a number greater than zero (the figure at full load)"),
            );
        }
        (self.errors.len() == before).then_some(LoadSignal {
            source,
            capacity: raw.capacity,
        })
    }

    /// Validates a `high_watermark` (a load in (0, 1]) at `key`.
    fn high_watermark(&mut self, key: &str, value: Option<f64>) -> Option<f64> {
        let w = value?;
        if w.is_finite() && w > 0.0 && w <= 1.0 {
            Some(w)
        } else {
            self.err(
                key,
                format!(
                    "{w} is outside (0, 1]: the load (0 idle, 1 full) above which clients spill"
                ),
            );
            None
        }
    }

    fn services(
        &mut self,
        value: Option<toml::Value>,
        zones: &[ZoneSpec],
        regions: &[Arc<Region>],
        checks: &[Arc<Check>],
    ) -> Vec<Service> {
        let Some(value) = value else {
            return Vec::new();
        };
        let toml::Value::Array(items) = value else {
            self.err("service", "must be an array of tables ([[service]])");
            return Vec::new();
        };
        let mut services: Vec<Service> = Vec::new();
        // The names seen, for the duplicate check (a scan of `services` per service was
        // quadratic: 50 million comparisons for 10,000 services, issue 18).
        let mut names: HashSet<String> = HashSet::new();
        for (i, item) in items.into_iter().enumerate() {
            let key = service_key(i, item.get("name").and_then(toml::Value::as_str));
            let Some(raw) = self.section::<RawService>(&key, item) else {
                continue;
            };
            if let Some(s) = self.service(&key, raw, zones, regions, checks) {
                if !names.insert(s.name.clone()) {
                    self.err(
                        format!("{key}.name"),
                        format!("service {} is defined twice", s.name),
                    );
                    continue;
                }
                services.push(s);
            }
        }
        services
    }

    fn service(
        &mut self,
        key: &str,
        raw: RawService,
        zones: &[ZoneSpec],
        regions: &[Arc<Region>],
        checks: &[Arc<Check>],
    ) -> Option<Service> {
        let before = self.errors.len();
        let name = self.domain(&format!("{key}.name"), &raw.name);
        if let Some(n) = &name
            && !zones.iter().any(|z| is_subdomain(n, &z.origin))
        {
            self.err(
                format!("{key}.name"),
                format!("{n} is not inside any configured zone"),
            );
        }
        let policy = match raw.policy.as_str() {
            "nearest" => Policy::Nearest,
            "failover" => Policy::Failover,
            "weighted" => Policy::Weighted,
            "geo" => Policy::Geo,
            "all" => Policy::All,
            other => {
                self.err(
                    format!("{key}.policy"),
                    format!("unknown policy {other:?}, expected one of: nearest, failover, weighted, geo, all"),
                );
                Policy::Nearest
            }
        };
        let when_all_down = match raw.when_all_down.as_deref() {
            None | Some("all") => WhenAllDown::All,
            Some("empty") => WhenAllDown::Empty,
            Some("servfail") => WhenAllDown::Servfail,
            Some(other) => {
                self.err(
                    format!("{key}.when_all_down"),
                    format!("unknown value {other:?}, expected one of: all, empty, servfail"),
                );
                WhenAllDown::All
            }
        };
        let ttl = raw.ttl.unwrap_or(DEFAULT_SERVICE_TTL);
        if ttl > 86_400 {
            self.err(
                format!("{key}.ttl"),
                format!("{ttl} is more than a day (86400)"),
            );
        }
        let max_answers = raw.max_answers.unwrap_or(1);
        if !(1..=64).contains(&max_answers) {
            self.err(format!("{key}.max_answers"), "must be 1..=64");
        }
        let check = raw
            .check
            .as_deref()
            .and_then(|c| self.resolve_check(&format!("{key}.check"), c, checks));
        let sticky = raw.sticky.unwrap_or(false);
        if sticky && !matches!(policy, Policy::Weighted | Policy::All) {
            self.err(
                format!("{key}.sticky"),
                "applies only to the weighted and all policies",
            );
        }
        if raw.endpoints.is_empty() {
            self.err(
                format!("{key}.endpoints"),
                "must list at least one endpoint",
            );
        }
        let spills = matches!(policy, Policy::Nearest | Policy::Geo | Policy::Failover);
        let has_watermark = raw.high_watermark.is_some()
            || raw.endpoints.iter().any(|e| e.high_watermark.is_some());
        if has_watermark && !spills {
            self.err(
                format!("{key}.high_watermark"),
                "applies only to the nearest, geo and failover policies (weighted scales weights by free capacity)",
            );
        }
        let watermark = self
            .high_watermark(&format!("{key}.high_watermark"), raw.high_watermark)
            .unwrap_or(DEFAULT_HIGH_WATERMARK);
        let mut endpoints = Vec::new();
        for (j, ep) in raw.endpoints.into_iter().enumerate() {
            let ekey = format!("{key}.endpoints[{j}]");
            let endpoint = self.endpoint(&ekey, ep, check.as_ref(), watermark, regions, checks);
            if let Some(e) = endpoint {
                if endpoints
                    .iter()
                    .any(|o: &Endpoint| o.region.name == e.region.name)
                {
                    self.err(
                        format!("{ekey}.region"),
                        format!("region {:?} has two endpoints in this service: list all its addresses in one", e.region.name),
                    );
                }
                endpoints.push(e);
            }
        }
        let geo = match (policy, raw.geo) {
            (Policy::Geo, Some(t)) => self.geo_map(&format!("{key}.geo"), t, &endpoints),
            (Policy::Geo, None) => {
                self.err(format!("{key}.geo"), "is required for policy \"geo\"");
                GeoMap::default()
            }
            (_, Some(_)) => {
                self.err(format!("{key}.geo"), "applies only to policy \"geo\"");
                GeoMap::default()
            }
            (_, None) => GeoMap::default(),
        };
        if self.errors.len() > before {
            return None;
        }
        Some(Service {
            name: name?,
            policy,
            ttl,
            max_answers,
            when_all_down,
            check,
            ecs: raw.ecs.unwrap_or(true),
            sticky,
            geo,
            endpoints,
        })
    }

    fn endpoint(
        &mut self,
        key: &str,
        raw: RawEndpoint,
        service_check: Option<&Arc<Check>>,
        service_watermark: f64,
        regions: &[Arc<Region>],
        checks: &[Arc<Check>],
    ) -> Option<Endpoint> {
        let region = regions.iter().find(|r| r.name == raw.region).cloned();
        if region.is_none() {
            self.err(
                format!("{key}.region"),
                format!("unknown region {:?}", raw.region),
            );
        }
        let mut addresses = Vec::new();
        if raw.addresses.is_empty() {
            self.err(format!("{key}.addresses"), "must list at least one address");
        }
        for (k, a) in raw.addresses.iter().enumerate() {
            match a.parse::<IpAddr>() {
                Ok(ip) if addresses.contains(&ip) => self.err(
                    format!("{key}.addresses[{k}]"),
                    format!("duplicate address {a:?}"),
                ),
                Ok(ip) => addresses.push(ip),
                Err(_) => self.err(
                    format!("{key}.addresses[{k}]"),
                    format!("invalid IP address {a:?}"),
                ),
            }
        }
        let check = match raw.check.as_deref() {
            Some(c) => self.resolve_check(&format!("{key}.check"), c, checks),
            None => service_check.cloned(),
        };
        let high_watermark = self
            .high_watermark(&format!("{key}.high_watermark"), raw.high_watermark)
            .unwrap_or(service_watermark);
        Some(Endpoint {
            region: region?,
            addresses,
            weight: raw.weight.unwrap_or(1),
            priority: raw.priority.unwrap_or(1),
            check,
            high_watermark,
        })
    }

    /// Returns the check called `name`, or records an error at `key`.
    fn resolve_check(
        &mut self,
        key: &str,
        name: &str,
        checks: &[Arc<Check>],
    ) -> Option<Arc<Check>> {
        let found = checks.iter().find(|c| c.name == name).cloned();
        if found.is_none() {
            self.err(key, format!("unknown check {name:?}"));
        }
        found
    }

    fn geo_map(&mut self, key: &str, table: toml::Table, endpoints: &[Endpoint]) -> GeoMap {
        let mut map = GeoMap::default();
        let mut has_default = false;
        for (k, v) in table {
            let ekey = format!("{key}.{k}");
            let list: Option<Vec<String>> = match v {
                toml::Value::Array(a) => a
                    .into_iter()
                    .map(|x| match x {
                        toml::Value::String(s) => Some(s),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            };
            let Some(list) = list else {
                self.err(&ekey, "must be a list of region names");
                continue;
            };
            if list.is_empty() {
                self.err(&ekey, "must list at least one region");
            }
            let mut indices = Vec::with_capacity(list.len());
            for r in &list {
                match endpoints.iter().position(|e| e.region.name == *r) {
                    // A region listed twice would only repeat itself.
                    Some(i) if indices.contains(&i) => {}
                    Some(i) => indices.push(i),
                    None => self.err(
                        &ekey,
                        format!("region {r:?} has no endpoint in this service"),
                    ),
                }
            }
            let list = indices;
            if k == "default" {
                has_default = true;
                map.default = list;
                continue;
            }
            let gk = if let Some(c) = k.strip_prefix("country:") {
                valid_code(c).then(|| GeoKey::Country(c.to_ascii_uppercase()))
            } else if let Some(c) = k.strip_prefix("continent:") {
                let c = c.to_ascii_uppercase();
                ["AF", "AN", "AS", "EU", "NA", "OC", "SA"]
                    .contains(&c.as_str())
                    .then_some(GeoKey::Continent(c))
            } else {
                valid_code(&k).then(|| GeoKey::Either(k.to_ascii_uppercase()))
            };
            match gk {
                Some(gk) => map.entries.push((gk, list)),
                None => self.err(
                    &ekey,
                    format!("{k:?} is not a country or continent code (\"DE\", \"country:AS\", \"continent:EU\") or \"default\""),
                ),
            }
        }
        if !has_default {
            self.err(
                format!("{key}.default"),
                "is required: the regions for clients no entry matches",
            );
        }
        map
    }
}

/// Checks a JSON pointer (RFC 6901 §3): empty, or `/`-separated tokens where `~` is
/// followed only by `0` or `1`.
fn check_json_pointer(p: &str) -> Result<(), &'static str> {
    if !p.is_empty() && !p.starts_with('/') {
        return Err("it must be empty or start with '/'");
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err("'~' must be followed by 0 or 1");
        }
    }
    Ok(())
}

/// Returns true for a two-letter code.
fn valid_code(c: &str) -> bool {
    c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic())
}

/// Returns true when `name` equals `origin` or is below it (both lowercase, fully qualified).
pub(crate) fn is_subdomain(name: &str, origin: &str) -> bool {
    origin == "." || name == origin || name.ends_with(&format!(".{origin}"))
}

/// Parses `"200"` or `"2xx"`.
fn parse_status(s: &str) -> Option<StatusMatch> {
    let s = s.trim().to_ascii_lowercase();
    if let Some(d) = s.strip_suffix("xx") {
        let c: u16 = d.parse().ok()?;
        (1..=5).contains(&c).then_some(StatusMatch::Class(c))
    } else {
        let c: u16 = s.parse().ok()?;
        (100..=599).contains(&c).then_some(StatusMatch::Code(c))
    }
}

/// Parses 32 hex digits into a 16-octet secret.
fn parse_secret(hex: &str) -> Option<[u8; 16]> {
    let digits = hex.as_bytes();
    if digits.len() != 32 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(digits.chunks(2)) {
        *o = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse_str(Path::new("/nonexistent/m.toml"), text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    const MIN: &str = r#"
[server]
dns_listen = ["127.0.0.1:0"]
[region.a]
latitude = 1.0
longitude = 2.0
[check.web]
kind = "http"
port = 8080
interval = "2s"
timeout = "1s"
"#;

    #[test]
    fn udp_receive_buffer_defaults_and_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("z"), "").unwrap();
        let file = dir.path().join("m.toml");
        let with = |line: &str| {
            let text = MIN.replace("[server]\n", &format!("[server]\n{line}\n"));
            parse_str(
                &file,
                &format!("{text}\n[[zone]]\norigin = \"example.net.\"\nfile = \"z\"\n"),
            )
        };
        let c = with("").unwrap();
        assert_eq!(c.server.udp_receive_buffer, DEFAULT_UDP_RECEIVE_BUFFER);
        assert_eq!(
            with("udp_receive_buffer = 0")
                .unwrap()
                .server
                .udp_receive_buffer,
            0
        );
        let e: Vec<String> = with("udp_receive_buffer = 2000000000")
            .unwrap_err()
            .0
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(
            e.iter().any(|e| e.contains("m.toml")
                && e.contains("server.udp_receive_buffer: must be at most 1073741824 bytes")),
            "{e:?}"
        );
    }

    #[test]
    fn probe_threads_must_be_at_least_one() {
        let e = errors(&MIN.replace("[server]\n", "[server]\nprobe_threads = 0\n"));
        assert!(
            e.iter()
                .any(|e| e.contains("server.probe_threads: must be at least 1")),
            "{e:?}"
        );
    }

    #[test]
    fn notify_format_must_be_known_and_pagerduty_needs_a_routing_key_file() {
        let e = errors(&format!(
            "{MIN}\n[notify]\nwebhook_url = \"http://127.0.0.1:9/\"\nformat = \"teams\"\n"
        ));
        assert!(
            e.iter().any(|e| e.contains(
                "notify.format: \"teams\" is not one of \"json\", \"slack\", \"pagerduty\""
            )),
            "{e:?}"
        );
        let e = errors(&format!(
            "{MIN}\n[notify]\nwebhook_url = \"http://127.0.0.1:9/\"\nformat = \"pagerduty\"\n"
        ));
        assert!(
            e.iter()
                .any(|e| e.contains("notify.routing_key_file: format \"pagerduty\" needs")),
            "{e:?}"
        );
        let e = errors(&format!(
            "{MIN}\n[notify]\nwebhook_url = \"http://127.0.0.1:9/\"\nformat = \"pagerduty\"\n\
             routing_key_file = \"missing.key\"\n"
        ));
        assert!(
            e.iter()
                .any(|e| e.contains("notify.routing_key_file: cannot read")),
            "{e:?}"
        );
    }

    #[test]
    fn fast_interval_defaults_to_a_quarter_and_initial_state_to_unknown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("z"), "").unwrap();
        let file = dir.path().join("m.toml");
        let c = parse_str(
            &file,
            &format!("{MIN}\n[[zone]]\norigin = \"example.net.\"\nfile = \"z\"\n[check.probe]\nkind = \"tcp\"\nport = 1\ninterval = \"2s\"\n"),
        )
        .unwrap();
        let web = &c.checks[1];
        assert_eq!(web.fast_interval, Duration::from_millis(500));
        assert_eq!(web.initial_state, InitialState::Unknown);
        let c = parse_str(
            &file,
            &format!(
                "{MIN}\n[[zone]]\norigin = \"example.net.\"\nfile = \"z\"\n[check.probe]\nkind = \"tcp\"\nport = 1\nfast_interval = \"100ms\"\n\
                 initial_state = \"down\"\n"
            ),
        )
        .unwrap();
        assert_eq!(c.checks[1].fast_interval, Duration::from_millis(100));
        assert_eq!(c.checks[1].initial_state, InitialState::Down);
    }

    #[test]
    fn fast_interval_above_interval_and_unknown_initial_state_are_rejected() {
        let err = parse_str(
            Path::new("/nonexistent/m.toml"),
            &format!(
                "{MIN}\n[[zone]]\norigin = \"example.net.\"\nfile = \"z\"\n[check.probe]\nkind = \"tcp\"\nport = 1\ninterval = \"1s\"\n\
                 fast_interval = \"2s\"\ninitial_state = \"up\"\n"
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("check.probe.fast_interval: fast_interval"),
            "{err}"
        );
        assert!(
            err.contains("check.probe.initial_state: unknown initial state \"up\", expected one of: unknown, down"),
            "{err}"
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn status_matches_codes_and_classes() {
        assert_eq!(parse_status("2xx"), Some(StatusMatch::Class(2)));
        assert_eq!(parse_status("204"), Some(StatusMatch::Code(204)));
        assert_eq!(parse_status("9xx"), None);
        assert_eq!(parse_status("abc"), None);
        assert!(StatusMatch::Class(2).matches(299));
        assert!(!StatusMatch::Class(2).matches(301));
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let text = format!(
            "{MIN}\n[check.bad]\nkind = \"icmp\"\n[check.slow]\nkind = \"tcp\"\nport = 1\ninterval = \"1s\"\ntimeout = \"2s\"\nrise = 0\n"
        );
        let errs = errors(&text);
        let joined = errs.join("\n");
        assert!(
            joined.contains("check.bad.kind: unknown check kind \"icmp\""),
            "{joined}"
        );
        assert!(joined.contains("check.slow.timeout: timeout"), "{joined}");
        assert!(
            joined.contains("check.slow.rise: must be 1..=100"),
            "{joined}"
        );
        assert!(joined.contains("zone: no [[zone]]"), "{joined}");
        assert!(
            errs.iter().all(|e| e.starts_with("/nonexistent/m.toml: ")),
            "{joined}"
        );
    }

    #[test]
    fn issue_13_nat64_prefixes_must_be_rfc6052_networks() {
        let text = MIN.replace(
            "dns_listen = [\"127.0.0.1:0\"]",
            "dns_listen = [\"127.0.0.1:0\"]\nnat64_prefixes = [\"2001:db8:64::/96\", \"2001:db8::/44\", \"2001:db8::1/96\", \"10.0.0.0/8\", \"2001:db8:64::/96\"]",
        );
        let errs = errors(&text).join("\n");
        assert!(!errs.contains("nat64_prefixes[0]"), "{errs}");
        assert!(
            errs.contains("server.nat64_prefixes[1]: 2001:db8::/44: a NAT64 prefix is 32, 40, 48, 56, 64 or 96 bits long"),
            "{errs}"
        );
        assert!(
            errs.contains("server.nat64_prefixes[2]: 2001:db8::1/96 has host bits set (did you mean 2001:db8::/96?)"),
            "{errs}"
        );
        assert!(
            errs.contains("server.nat64_prefixes[3]: \"10.0.0.0/8\" is not an IPv6 network"),
            "{errs}"
        );
        assert!(
            errs.contains("server.nat64_prefixes[4]: duplicate prefix"),
            "{errs}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_in_every_table() {
        let errs = errors(&format!("bogus = 1\n{MIN}\n[nothing]\n")).join("\n");
        assert!(errs.contains("unknown top-level key `bogus`"), "{errs}");
        assert!(errs.contains("unknown top-level key `nothing`"), "{errs}");
        let errs = errors(&MIN.replace("latitude = 1.0", "latitude = 1.0\nlatitud = 3")).join("\n");
        assert!(errs.contains("region.a: unknown field `latitud`"), "{errs}");
    }

    #[test]
    fn toml_syntax_errors_carry_a_line() {
        let errs = errors("[server]\ndns_listen = [\n\"x\"\n= 3\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("/nonexistent/m.toml:"), "{errs:?}");
        assert!(errs[0].contains("invalid TOML"), "{errs:?}");
    }

    #[test]
    fn subdomain_matching_is_label_aware() {
        assert!(is_subdomain("api.example.net.", "example.net."));
        assert!(is_subdomain("example.net.", "example.net."));
        assert!(!is_subdomain("badexample.net.", "example.net."));
    }
}
