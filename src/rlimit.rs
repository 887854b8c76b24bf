//! The open-file limit (`RLIMIT_NOFILE`): how many descriptors the configuration needs, and
//! raising the soft limit towards it at start (issue 9).
//!
//! Every DNS TCP connection, admin connection, probe, UDP socket and open file takes a
//! descriptor. Many systems start services with a soft limit of 1024, less than the default
//! `tcp_max_connections` alone; past the limit `accept` fails with EMFILE and probes cannot
//! open sockets. So `serve` raises the soft limit to what the config needs (never above the
//! hard limit, which only root can raise) and logs both, and `serve` and `meridian check` warn
//! when even the hard limit is too low. Key items: [`needed`], [`raise`], [`shortfall`].

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;

use crate::config::Config;

/// Descriptors kept for everything that is not a connection: the runtime, log and state
/// files, the GeoIP database, webhook and notify connections, listeners.
pub const RESERVE: u64 = 128;

/// The open-file limits of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The limit in force.
    pub soft: u64,
    /// The ceiling an unprivileged process may raise `soft` to.
    pub hard: u64,
}

/// Returns the descriptors `config` can use at once with `udp_workers` sockets per listen
/// address: every DNS TCP connection allowed on every listener, the admin connections, one
/// socket per probe target (a distinct address and check, as the health engine probes them;
/// an endpoint without a check is never probed), the UDP sockets, and [`RESERVE`].
pub fn needed(config: &Config, udp_workers: usize) -> u64 {
    let listeners = config.server.dns_listen.len() as u64;
    let tcp = listeners * config.server.tcp_max_connections as u64;
    let udp = listeners * udp_workers as u64;
    let admin = if config.server.admin_listen.is_some() {
        crate::admin::MAX_OPEN_CONNECTIONS as u64
    } else {
        0
    };
    let probes: HashSet<(IpAddr, &str)> = config
        .services
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter_map(|e| Some((e.check_name()?, &e.addresses)))
        .flat_map(|(check, addresses)| addresses.iter().map(move |a| (*a, check)))
        .collect();
    tcp + udp + admin + probes.len() as u64 + RESERVE
}

/// Returns the process's current limits.
pub fn current() -> io::Result<FileLimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // rlim_t is u64 on Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    Ok(FileLimit {
        soft: r.rlim_cur as u64,
        hard: r.rlim_max as u64,
    })
}

/// Raises the soft limit to `needed` (capped at the hard limit; never lowers it). Returns the
/// limits before and after.
pub fn raise(needed: u64) -> io::Result<(FileLimit, FileLimit)> {
    let before = current()?;
    let target = needed.min(before.hard);
    if target <= before.soft {
        return Ok((before, before));
    }
    let r = libc::rlimit {
        rlim_cur: target as libc::rlim_t,
        rlim_max: before.hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads one rlimit we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((before, current()?))
}

/// Returns a warning when `needed` descriptors exceed the hard limit `limit.hard`.
pub fn shortfall(config: &Config, needed: u64, limit: FileLimit) -> Option<String> {
    (needed > limit.hard).then(|| {
        format!(
            "{}: server.tcp_max_connections: {} TCP connections per listener (with the admin \
             port, probes and sockets: {needed} open files) exceed the hard open-file limit {}: \
             connections past it fail at accept; raise the limit (systemd LimitNOFILE=, \
             ulimit -Hn) or lower server.tcp_max_connections",
            config.source.display(),
            config.server.tcp_max_connections,
            limit.hard
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18: 10,000 services without checks were counted as 80,000 probe sockets, and
    /// `meridian check` warned about an open-file limit nothing would reach.
    #[test]
    fn only_probed_targets_count_once_per_address_and_check() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("z"), "").unwrap();
        let text = r#"
[server]
dns_listen = ["127.0.0.1:0"]
admin_listen = ""
udp_workers = 1
tcp_max_connections = 10
[[zone]]
origin = "example.net."
file = "z"
[region.a]
latitude = 0.0
longitude = 0.0
[check.web]
kind = "tcp"
port = 80
[[service]]
name = "plain.example.net."
policy = "nearest"
endpoints = [{ region = "a", addresses = ["192.0.2.1", "192.0.2.2", "2001:db8::1"] }]
[[service]]
name = "one.example.net."
policy = "nearest"
check = "web"
endpoints = [{ region = "a", addresses = ["192.0.2.3", "2001:db8::3"] }]
[[service]]
name = "two.example.net."
policy = "nearest"
check = "web"
endpoints = [{ region = "a", addresses = ["192.0.2.3", "192.0.2.4"] }]
"#;
        let config = crate::config::parse_str(&dir.path().join("m.toml"), text).unwrap();
        // 10 TCP + 1 UDP + 3 probe targets (192.0.2.3 once, .4, 2001:db8::3) + the reserve.
        assert_eq!(needed(&config, 1), 10 + 1 + 3 + RESERVE);
    }

    #[test]
    fn raising_to_the_current_soft_limit_changes_nothing() {
        let now = current().unwrap();
        let (before, after) = raise(now.soft).unwrap();
        assert_eq!(before, now);
        assert_eq!(after, now);
        assert!(now.soft <= now.hard);
    }
}
