//! `[cluster]`: where a fleet of instances shares drains and health (an etcd v3 store).
//!
//! Without the table nothing changes: the state file is the one instance's store of drains.
//! With it, drains live in etcd and the state file becomes this instance's cache of them
//! (`crate::cluster` runs the synchronization).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// Default lease of an instance's keys in the store: when it stops renewing it (killed,
/// partitioned) its votes vanish this long after.
pub(crate) const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    store: String,
    endpoints: Vec<String>,
    prefix: String,
    instance: Option<String>,
    quorum: Option<toml::Value>,
    lease_ttl: Option<String>,
    ca_file: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    advertise_admin: Option<String>,
    admin_urls: Option<Vec<String>>,
}

/// How many fresh observers must see a target down before the fleet withdraws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// More than half of the fresh observers (at least two observers, else each instance
    /// falls back to its own view).
    Majority,
    /// At least this many fresh observers.
    AtLeast(u32),
    /// One fresh observer is enough.
    Any,
}

impl std::fmt::Display for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quorum::Majority => f.write_str("majority"),
            Quorum::AtLeast(n) => write!(f, "{n}"),
            Quorum::Any => f.write_str("any"),
        }
    }
}

/// TLS to the store: a CA to trust and an optional client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// PEM CA bundle that signed the store's certificate (default: the system roots are not
    /// used; without it the endpoints must be `http://`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// `[cluster]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Store endpoints, `http://host:port` or `https://host:port` (etcd client URLs).
    pub endpoints: Vec<String>,
    /// Key prefix of this fleet, without a trailing `/` (e.g. `/meridian/prod`).
    pub prefix: String,
    /// This instance's name in the fleet (default: the host name).
    pub instance: String,
    /// How many fresh observers must agree that a target is down.
    pub quorum: Quorum,
    /// Lease of this instance's keys (votes, presence).
    pub lease_ttl: Duration,
    /// TLS files, when any is set.
    pub tls: Option<ClusterTls>,
    /// The admin URL other instances and `meridian ctl` use to reach this one (default:
    /// `http://` + the bound admin address).
    pub advertise_admin: Option<String>,
    /// Admin URLs of the fleet for `meridian ctl` when the store cannot be asked.
    pub admin_urls: Vec<String>,
}

/// Returns the host name (the default instance name), or `"meridian"` when it cannot be read.
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "meridian".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).into_owned();
    if is_valid_instance(&name) {
        name
    } else {
        "meridian".into()
    }
}

fn is_valid_instance(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn is_url(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len()
}

/// Validates `[cluster]`; relative paths resolve against `dir`. Problems go to `errors`.
pub(super) fn validate(
    file: &Path,
    dir: &Path,
    value: toml::Value,
    errors: &mut Vec<ConfigError>,
) -> Option<Cluster> {
    let mut err = |key: &str, msg: String| {
        errors.push(ConfigError::new(file, format!("cluster.{key}"), msg));
    };
    let raw = match RawCluster::deserialize(value) {
        Ok(r) => r,
        Err(e) => {
            errors.push(ConfigError::new(file, "cluster", e.message().trim()));
            return None;
        }
    };
    if raw.store != "etcd" {
        err(
            "store",
            format!("unknown store {:?}: the only store is \"etcd\"", raw.store),
        );
    }
    if raw.endpoints.is_empty() {
        err(
            "endpoints",
            "must list at least one etcd client URL, e.g. \"http://127.0.0.1:2379\"".into(),
        );
    }
    for (i, e) in raw.endpoints.iter().enumerate() {
        if !is_url(e) {
            err(
                &format!("endpoints[{i}]"),
                format!("{e:?} is not an http:// or https:// URL"),
            );
        }
    }
    let prefix = raw.prefix.trim_end_matches('/').to_string();
    if !prefix.starts_with('/') || prefix.len() < 2 {
        err(
            "prefix",
            format!(
                "{:?} must start with / and name the fleet, e.g. \"/meridian/prod\"",
                raw.prefix
            ),
        );
    }
    let instance = raw.instance.unwrap_or_else(hostname);
    if !is_valid_instance(&instance) {
        err(
            "instance",
            format!("{instance:?}: use 1 to 64 letters, digits, '-', '_' or '.'"),
        );
    }
    let quorum = match &raw.quorum {
        None => Quorum::Majority,
        Some(toml::Value::String(s)) if s == "majority" => Quorum::Majority,
        Some(toml::Value::String(s)) if s == "any" => Quorum::Any,
        Some(toml::Value::Integer(n)) if *n >= 1 && *n <= 1000 => Quorum::AtLeast(*n as u32),
        Some(other) => {
            err(
                "quorum",
                format!("{other}: expected \"majority\", \"any\" or a number from 1 to 1000"),
            );
            Quorum::Majority
        }
    };
    let lease_ttl = match raw.lease_ttl.as_deref().map(super::parse_duration) {
        None => DEFAULT_LEASE_TTL,
        Some(Ok(d)) if d >= Duration::from_secs(2) && d <= Duration::from_secs(3600) => {
            Duration::from_secs(d.as_secs())
        }
        Some(Ok(_)) => {
            err("lease_ttl", "must be from 2s to 1h".into());
            DEFAULT_LEASE_TTL
        }
        Some(Err(e)) => {
            err("lease_ttl", e);
            DEFAULT_LEASE_TTL
        }
    };
    let resolve = |p: &str| {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let mut tls = None;
    if raw.ca_file.is_some() || raw.cert_file.is_some() || raw.key_file.is_some() {
        let t = ClusterTls {
            ca_file: raw.ca_file.as_deref().map(resolve),
            cert_file: raw.cert_file.as_deref().map(resolve),
            key_file: raw.key_file.as_deref().map(resolve),
        };
        if t.cert_file.is_some() != t.key_file.is_some() {
            err(
                "cert_file",
                "cert_file and key_file go together (a client certificate and its key)".into(),
            );
        }
        for (key, p) in [
            ("ca_file", &t.ca_file),
            ("cert_file", &t.cert_file),
            ("key_file", &t.key_file),
        ] {
            if let Some(p) = p
                && !p.is_file()
            {
                err(key, format!("{} does not exist", p.display()));
            }
        }
        tls = Some(t);
    }
    if let Some(a) = &raw.advertise_admin
        && !is_url(a)
    {
        err(
            "advertise_admin",
            format!("{a:?} is not an http:// or https:// URL"),
        );
    }
    let admin_urls = raw.admin_urls.unwrap_or_default();
    for (i, a) in admin_urls.iter().enumerate() {
        if !is_url(a) {
            err(
                &format!("admin_urls[{i}]"),
                format!("{a:?} is not an http:// or https:// URL"),
            );
        }
    }
    Some(Cluster {
        endpoints: raw.endpoints,
        prefix,
        instance,
        quorum,
        lease_ttl,
        tls,
        advertise_admin: raw
            .advertise_admin
            .map(|a| a.trim_end_matches('/').to_string()),
        admin_urls: admin_urls
            .into_iter()
            .map(|a| a.trim_end_matches('/').to_string())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<Cluster>, Vec<String>) {
        let value: toml::Value = toml::from_str::<toml::Table>(text).unwrap().into();
        let mut errors = Vec::new();
        let c = validate(Path::new("m.toml"), Path::new("."), value, &mut errors);
        (c, errors.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn a_minimal_cluster_table_gets_defaults() {
        let (c, errors) = parse(
            "store = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/meridian/prod/\"\ninstance = \"ns1\"\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let c = c.unwrap();
        assert_eq!(c.prefix, "/meridian/prod");
        assert_eq!(c.quorum, Quorum::Majority);
        assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
        assert_eq!(c.instance, "ns1");
    }

    #[test]
    fn every_bad_key_is_reported_at_once() {
        let (_, errors) = parse(
            "store = \"zookeeper\"\nendpoints = [\"127.0.0.1:2379\"]\nprefix = \"meridian\"\ninstance = \"a/b\"\nquorum = \"most\"\nlease_ttl = \"1s\"\ncert_file = \"c.pem\"\n",
        );
        let text = errors.join("\n");
        for key in [
            "cluster.store",
            "cluster.endpoints[0]",
            "cluster.prefix",
            "cluster.instance",
            "cluster.quorum",
            "cluster.lease_ttl",
            "cluster.cert_file",
        ] {
            assert!(text.contains(key), "{key} missing in:\n{text}");
        }
    }

    #[test]
    fn quorum_takes_a_number_or_any() {
        let base = "store = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/m\"\n";
        let (c, _) = parse(&format!("{base}quorum = 2\n"));
        assert_eq!(c.unwrap().quorum, Quorum::AtLeast(2));
        let (c, _) = parse(&format!("{base}quorum = \"any\"\n"));
        assert_eq!(c.unwrap().quorum, Quorum::Any);
        let (_, errors) = parse(&format!("{base}quorum = 0\n"));
        assert_eq!(errors.len(), 1, "{errors:?}");
    }
}
