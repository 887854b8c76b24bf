//! Process metrics under the names every Prometheus client library uses (`process_*`), read
//! from `/proc/self` at scrape time: CPU time, resident and virtual memory, open and maximum
//! file descriptors, and the start time.
//!
//! Linux only (the server is); on a system without `/proc` the collector writes nothing.
//! Hand-written rather than taken from a crate: the `prometheus` crate's process collector
//! does not plug into `prometheus-client`'s registry, and the reading is a few lines of
//! `/proc` parsing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Total user and system CPU time, seconds.
pub(crate) const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
/// Resident memory, bytes.
pub(crate) const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
/// Virtual memory, bytes.
pub(crate) const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "process_virtual_memory_bytes";
/// Open file descriptors.
pub(crate) const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The open-file limit (soft `RLIMIT_NOFILE`).
pub(crate) const PROCESS_MAX_FDS: &str = "process_max_fds";
/// Start time of the process, Unix seconds.
pub(crate) const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub(crate) cpu_seconds: f64,
    /// Resident set size, bytes.
    pub(crate) resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub(crate) virtual_bytes: u64,
    /// Open file descriptors.
    pub(crate) open_fds: u64,
    /// Soft limit on open file descriptors.
    pub(crate) max_fds: u64,
    /// Start time, Unix seconds.
    pub(crate) start_time_seconds: f64,
}

/// Reads the current process's statistics; `None` when `/proc` is not there or not as
/// expected.
pub(crate) fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if ticks <= 0 || page <= 0 {
        return None;
    }
    let fields = parse_stat(&stat)?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; RLIMIT_NOFILE is a valid resource.
    let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    };
    let ticks = ticks as f64;
    Some(ProcessStats {
        cpu_seconds: (fields.utime + fields.stime) as f64 / ticks,
        resident_bytes: fields.rss_pages.saturating_mul(page as u64),
        virtual_bytes: fields.vsize,
        // One descriptor is the directory being read.
        open_fds: open_fds.saturating_sub(1),
        max_fds,
        start_time_seconds: boot_time as f64 + fields.starttime as f64 / ticks,
    })
}

/// The fields of `/proc/self/stat` that matter here (proc(5) numbering).
#[derive(Debug, PartialEq, Eq)]
struct StatFields {
    /// (14) user time, clock ticks.
    utime: u64,
    /// (15) system time, clock ticks.
    stime: u64,
    /// (22) start time after boot, clock ticks.
    starttime: u64,
    /// (23) virtual memory, bytes.
    vsize: u64,
    /// (24) resident set, pages.
    rss_pages: u64,
}

/// Parses `/proc/self/stat`. The command name (field 2) may contain spaces and parentheses,
/// so fields are counted from its closing parenthesis, the last one in the line.
fn parse_stat(text: &str) -> Option<StatFields> {
    let rest = &text[text.rfind(')')? + 1..];
    // `rest` starts with field 3 (state).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(StatFields {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// Writes the `process_*` metrics at scrape time.
#[derive(Debug)]
pub(crate) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(p) = read() else {
            return Ok(());
        };
        let metric = encoder.encode_descriptor(
            PROCESS_CPU_SECONDS_TOTAL.trim_end_matches("_total"),
            "Total user and system CPU time spent in seconds.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(p.cpu_seconds).encode(metric)?;
        let gauges: [(&str, &str, f64); 5] = [
            (
                PROCESS_RESIDENT_MEMORY_BYTES,
                "Resident memory size in bytes.",
                p.resident_bytes as f64,
            ),
            (
                PROCESS_VIRTUAL_MEMORY_BYTES,
                "Virtual memory size in bytes.",
                p.virtual_bytes as f64,
            ),
            (
                PROCESS_OPEN_FDS,
                "Number of open file descriptors.",
                p.open_fds as f64,
            ),
            (
                PROCESS_MAX_FDS,
                "Maximum number of open file descriptors.",
                p.max_fds as f64,
            ),
            (
                PROCESS_START_TIME_SECONDS,
                "Start time of the process since unix epoch in seconds.",
                p.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value).encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis_of_the_command() {
        let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 125 0 0 20 0 9 0 98765 123456789 2048 18446744073709551615 0";
        assert_eq!(
            parse_stat(line),
            Some(StatFields {
                utime: 250,
                stime: 125,
                starttime: 98765,
                vsize: 123_456_789,
                rss_pages: 2048,
            })
        );
        assert_eq!(parse_stat("4242 (cmd) S 1 2"), None);
    }

    #[test]
    fn this_process_has_memory_descriptors_and_started_in_the_past() {
        let p = read().expect("/proc is readable on Linux");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes,
            "{p:?}"
        );
        assert!(p.open_fds >= 3 && p.max_fds >= p.open_fds, "{p:?}");
        assert!(
            p.start_time_seconds > 1.0e9 && p.start_time_seconds <= now + 1.0,
            "{p:?}"
        );
        assert!(p.cpu_seconds >= 0.0, "{p:?}");
    }
}
