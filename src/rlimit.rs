//! The open-file limit (`RLIMIT_NOFILE`): how many descriptors the configuration needs, and
//! raising the soft limit towards it at start (issue 9).
//!
//! Every DNS TCP connection, admin connection, probe, UDP socket and open file takes a
//! descriptor. Many systems start services with a soft limit of 1024, less than the default
//! `tcp_max_connections` alone; past the limit `accept` fails with EMFILE and probes cannot
//! open sockets. So `serve` raises the soft limit to what the config needs (never above the
//! hard limit, which only root can raise) and logs both, and `serve` and `meridian check` warn
//! when even the hard limit is too low. Key items: [`needed`], [`raise`], [`shortfall`].

use std::io;

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
/// socket per probed address, the UDP sockets, and [`RESERVE`].
pub fn needed(config: &Config, udp_workers: usize) -> u64 {
    let listeners = config.server.dns_listen.len() as u64;
    let tcp = listeners * config.server.tcp_max_connections as u64;
    let udp = listeners * udp_workers as u64;
    let admin = if config.server.admin_listen.is_some() {
        crate::admin::MAX_OPEN_CONNECTIONS as u64
    } else {
        0
    };
    let probes: u64 = config
        .services
        .iter()
        .flat_map(|s| &s.endpoints)
        .map(|e| e.addresses.len() as u64)
        .sum();
    tcp + udp + admin + probes + RESERVE
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

    #[test]
    fn raising_to_the_current_soft_limit_changes_nothing() {
        let now = current().unwrap();
        let (before, after) = raise(now.soft).unwrap();
        assert_eq!(before, now);
        assert_eq!(after, now);
        assert!(now.soft <= now.hard);
    }
}
