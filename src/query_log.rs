//! The query log (`[query_log]`): one JSON line per answer, for log aggregation, sampled and
//! rate-capped, to standard output or to a file rotated by size.
//!
//! The threads that answer never wait for it. [`QueryLog::offer`] costs one relaxed atomic
//! load when the log is off; when it is on, a random draw against `sample`, and for a sampled
//! answer a copy of the response bytes put on a bounded channel ([`QUERY_LOG_QUEUE`]) with
//! `try_send`: when the channel is full the line is dropped and counted
//! (`meridian_query_log_dropped_total{reason="queue_full"}`). Everything else happens on the
//! writer thread: parsing the response back (question, rcode, addresses, ECS and its scope),
//! finding the service and region and why, the `max_per_second` cap (drops counted with
//! `reason="rate_cap"`), formatting, writing, and rotating (`file` -> `file.1` -> ... ->
//! `file.{keep}`). The writer reads `[query_log]` from the snapshot in force every second, so
//! a reload turns the log on, off, or moves it.
//!
//! One line (keys always present, `null` when not applicable):
//!
//! ```json
//! {"time":"2024-05-01T12:00:00.123Z","client":"192.0.2.53","transport":"udp",
//!  "name":"api.example.net.","type":"A","rcode":"NOERROR","ecs":"198.51.100.0/24","scope":24,
//!  "service":"api.example.net.","answers":["127.0.0.12"],"region":"eu-west",
//!  "why":"nearest from the ECS subnet, located by GeoIP in DE (EU)"}
//! ```
//!
//! `region` is the region of the first address answered; `why` is how the client was placed
//! (ECS subnet or resolver address; `[nets]` override, GeoIP country and continent, or not
//! located) under the service's policy, and says `fail open` when every address answered is
//! down or drained. Service, region and why are worked out by the writer from the snapshot and
//! health view in force when it writes the line (within about 50 ms of the answer: the writer
//! drains the queue in batches, so logging a line never wakes a thread).

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use hickory_proto::op::Message;
use hickory_proto::rr::RData;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use tracing::warn;

use crate::config::QueryLog as Settings;
use crate::geo::LocationSource;
use crate::health::{HealthView, withdrawal};
use crate::metrics::Metrics;
use crate::snapshot::{Snapshot, SnapshotCell};

/// Answers waiting for the writer; more are dropped and counted.
pub(crate) const QUERY_LOG_QUEUE: usize = 8192;
/// How often the writer re-reads `[query_log]`.
const REFRESH: Duration = Duration::from_secs(1);
/// How long the writer sleeps after it has drained the queue and flushed: lines reach the
/// file within about this, and at this period the queue holds
/// [`QUERY_LOG_QUEUE`] / `BATCH` = 160k lines a second before it is drained without sleeping.
const BATCH: Duration = Duration::from_millis(50);

/// One answer handed to the writer.
#[derive(Debug)]
struct Entry {
    at: SystemTime,
    client: SocketAddr,
    /// `udp` or `tcp`.
    transport: &'static str,
    response: Vec<u8>,
}

/// The answering threads' handle on the query log. Cheap to clone; a default handle is off
/// and stays off (no writer).
#[derive(Debug, Clone, Default)]
pub(crate) struct QueryLog {
    inner: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Shared {
    /// 0: off; `u64::MAX`: every answer; else an answer is logged when a random `u64` is
    /// below it.
    threshold: AtomicU64,
    /// `try_send` never blocks (and takes no lock: the channel is a bounded array).
    tx: SyncSender<Entry>,
    metrics: Arc<Metrics>,
}

/// Returns the sampling threshold of `settings` (see [`Shared::threshold`]).
fn threshold(settings: Option<&Settings>) -> u64 {
    match settings {
        None => 0,
        Some(s) if s.sample >= 1.0 => u64::MAX,
        // At least 1: a sample that small still logs now and then rather than never.
        Some(s) => ((s.sample * u64::MAX as f64) as u64).max(1),
    }
}

impl QueryLog {
    /// Starts the writer thread over the live `snapshot` and health `view`; it counts into
    /// `metrics`. Returns the handle for the answering threads.
    pub(crate) fn start(
        snapshot: SnapshotCell,
        view: Arc<ArcSwap<HealthView>>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<QueryLog> {
        let (tx, rx) = sync_channel(QUERY_LOG_QUEUE);
        let shared = Arc::new(Shared {
            threshold: AtomicU64::new(threshold(snapshot.load().config.query_log.as_ref())),
            tx,
            metrics,
        });
        let writer = Writer {
            snapshot,
            view,
            shared: shared.clone(),
            out: None,
            settings: None,
            written: 0,
            second: Instant::now(),
            in_second: 0,
        };
        std::thread::Builder::new()
            .name("query-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(QueryLog {
            inner: Some(shared),
        })
    }

    /// Offers one answer to the log: `response` as sent to `client` over `transport`. Never
    /// blocks; drops (and counts) when the writer is behind.
    pub(crate) fn offer(&self, client: SocketAddr, transport: &'static str, response: &[u8]) {
        let Some(shared) = &self.inner else {
            return;
        };
        let t = shared.threshold.load(Ordering::Relaxed);
        if t == 0 || (t != u64::MAX && rand::random::<u64>() >= t) {
            return;
        }
        let entry = Entry {
            at: SystemTime::now(),
            client,
            transport,
            response: response.to_vec(),
        };
        let sent = shared.tx.try_send(entry);
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => shared.metrics.count_query_log_drop("queue_full"),
            // The writer is gone (it could not start, or the process is stopping).
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Where lines go: a file or standard output, buffered.
type Output = BufWriter<Box<dyn Write + Send>>;

/// The writer thread's state.
struct Writer {
    snapshot: SnapshotCell,
    view: Arc<ArcSwap<HealthView>>,
    shared: Arc<Shared>,
    /// The open output and what it is.
    out: Option<(Option<PathBuf>, Output)>,
    settings: Option<Settings>,
    /// Bytes in the current file.
    written: u64,
    /// The current second of the rate cap, and lines written in it.
    second: Instant,
    in_second: u32,
}

impl Writer {
    fn run(mut self, rx: Receiver<Entry>) {
        let mut last_refresh = Instant::now() - REFRESH;
        loop {
            if last_refresh.elapsed() >= REFRESH {
                self.refresh();
                last_refresh = Instant::now();
            }
            let mut taken = 0;
            loop {
                match rx.try_recv() {
                    Ok(entry) => {
                        self.write(entry);
                        taken += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.flush();
                        return;
                    }
                }
            }
            self.flush();
            // The writer sleeps instead of waiting on the channel: a waiting receiver makes
            // every `try_send` on the DNS threads a wake-up (a system call and a context switch
            // per logged line, 18.5 µs a line at sample 0.01). A queue that filled by a quarter
            // or more is drained again at once.
            // With the log off nothing is offered: sleep until the next look at the config.
            if self.settings.is_none() {
                std::thread::sleep(REFRESH.saturating_sub(last_refresh.elapsed()).max(BATCH));
            } else if taken < QUERY_LOG_QUEUE / 4 {
                std::thread::sleep(BATCH);
            }
        }
    }

    /// Re-reads `[query_log]`: the sampling threshold, and the output when it moved.
    fn refresh(&mut self) {
        let settings = self.snapshot.load().config.query_log.clone();
        self.shared
            .threshold
            .store(threshold(settings.as_ref()), Ordering::Relaxed);
        let target = settings.as_ref().map(|s| s.file.clone());
        let current = self.out.as_ref().map(|(f, _)| f.clone());
        if target != current {
            self.flush();
            self.out = None;
            if let Some(file) = target {
                self.open(file);
            }
        }
        self.settings = settings;
    }

    fn open(&mut self, file: Option<PathBuf>) {
        let writer: Box<dyn Write + Send> = match &file {
            None => Box::new(std::io::stdout()),
            Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => {
                    self.written = f.metadata().map_or(0, |m| m.len());
                    Box::new(f)
                }
                Err(error) => {
                    warn!(file = %path.display(), %error, "cannot open the query log; lines are dropped");
                    return;
                }
            },
        };
        self.out = Some((file, BufWriter::with_capacity(64 * 1024, writer)));
    }

    fn flush(&mut self) {
        if let Some((_, w)) = &mut self.out
            && let Err(error) = w.flush()
        {
            warn!(%error, "cannot write the query log");
        }
    }

    fn write(&mut self, entry: Entry) {
        let Some(settings) = &self.settings else {
            return;
        };
        if self.second.elapsed() >= Duration::from_secs(1) {
            self.second = Instant::now();
            self.in_second = 0;
        }
        if self.in_second >= settings.max_per_second {
            self.shared.metrics.count_query_log_drop("rate_cap");
            return;
        }
        self.in_second += 1;
        let snapshot = self.snapshot.load();
        let view = self.view.load();
        let Some(line) = line(&entry, &snapshot, &view) else {
            return;
        };
        let (max_size, keep) = (settings.max_size, settings.keep);
        let Some((file, _)) = &self.out else {
            self.shared.metrics.count_query_log_drop("write_error");
            return;
        };
        if let Some(path) = file.clone()
            && self.written > 0
            && self.written + line.len() as u64 > max_size
        {
            self.flush();
            self.out = None;
            rotate(&path, keep);
            self.written = 0;
            self.open(Some(path));
        }
        let Some((_, w)) = &mut self.out else {
            self.shared.metrics.count_query_log_drop("write_error");
            return;
        };
        match w.write_all(line.as_bytes()) {
            Ok(()) => {
                self.written += line.len() as u64;
                self.shared.metrics.count_query_log_line();
            }
            Err(error) => {
                self.shared.metrics.count_query_log_drop("write_error");
                warn!(%error, "cannot write the query log");
            }
        }
    }
}

/// Renames `path` to `path.1`, `path.1` to `path.2`, ..., dropping `path.{keep}`.
fn rotate(path: &Path, keep: u32) {
    let numbered = |n: u32| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    for n in (1..keep).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    if let Err(error) = std::fs::rename(path, numbered(1)) {
        warn!(file = %path.display(), %error, "cannot rotate the query log");
    }
}

/// One line of the log.
#[derive(Debug, serde::Serialize)]
struct Line<'a> {
    #[serde(serialize_with = "crate::health::serialize_time")]
    time: SystemTime,
    client: IpAddr,
    transport: &'static str,
    name: Option<String>,
    #[serde(rename = "type")]
    qtype: Option<String>,
    rcode: String,
    ecs: Option<String>,
    scope: Option<u8>,
    service: Option<&'a str>,
    answers: Vec<IpAddr>,
    region: Option<&'a str>,
    why: Option<String>,
}

/// Formats the line of `entry` (with its newline); `None` when the response cannot be read
/// back (it was written by this server, so only a bug gets here).
fn line(entry: &Entry, snapshot: &Snapshot, view: &HealthView) -> Option<String> {
    let m = Message::from_vec(&entry.response).ok()?;
    let question = m.queries.first();
    let ecs = m
        .edns
        .as_ref()
        .and_then(|e| match e.option(EdnsCode::Subnet) {
            Some(EdnsOption::Subnet(s)) => Some(*s),
            _ => None,
        });
    let answers: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    // The service: the question's name, or the last name of a CNAME chain that answered.
    let service = question.and_then(|q| {
        let asked = q.name().to_ascii();
        let owner = m
            .answers
            .iter()
            .rev()
            .find(|r| matches!(r.data, RData::A(_) | RData::AAAA(_)))
            .map(|r| r.name.to_ascii());
        [Some(asked), owner]
            .into_iter()
            .flatten()
            .find_map(|n| snapshot.services.get(&n))
    });
    let region = service.and_then(|s| answers.first().and_then(|a| s.region_of(*a)));
    let why = service.map(|s| {
        let svc = s.service();
        let (who, ip) = match &ecs {
            Some(e) if svc.ecs && e.source_prefix() > 0 => ("the ECS subnet", e.addr()),
            _ => ("the resolver's address", entry.client.ip()),
        };
        let located = snapshot.geo.locate(ip);
        let place = match located.source {
            LocationSource::Nets => format!(
                "placed in {} by [nets]",
                located.region.as_deref().unwrap_or("?")
            ),
            LocationSource::Database => {
                let loc = located.location.as_ref();
                let code = |c: Option<&crate::geo::Code>| {
                    c.map_or("?".to_string(), |c| c.as_str().to_string())
                };
                format!(
                    "located by GeoIP in {} ({})",
                    code(loc.and_then(|l| l.country.as_ref())),
                    code(loc.and_then(|l| l.continent.as_ref()))
                )
            }
            LocationSource::None => "not located (config order or default)".to_string(),
        };
        let mut why = format!("{} from {who}, {place}", svc.policy.as_str());
        if ecs.is_some() && !svc.ecs {
            why.push_str("; ECS ignored (ecs = false)");
        }
        let failing_open = !answers.is_empty()
            && answers.iter().all(|a| {
                svc.endpoints
                    .iter()
                    .filter(|e| e.addresses.contains(a))
                    .all(|e| withdrawal(view, &e.region.name, *a, e.check_name()).is_withdrawn())
            });
        if failing_open {
            why.push_str("; fail open: every address answered is down or drained");
        }
        if answers.is_empty() {
            why.push_str("; no address answered");
        }
        why
    });
    let l = Line {
        time: entry.at,
        client: entry.client.ip(),
        transport: entry.transport,
        name: question.map(|q| q.name().to_ascii()),
        qtype: question.map(|q| q.query_type().to_string()),
        rcode: rcode_name(u16::from(m.metadata.response_code)),
        ecs: ecs
            .as_ref()
            .map(|e| format!("{}/{}", e.addr(), e.source_prefix())),
        scope: ecs.as_ref().map(|e| e.scope_prefix()),
        service: service.map(|s| s.service().name.as_str()),
        region,
        answers,
        why,
    };
    let mut text = serde_json::to_string(&l).ok()?;
    text.push('\n');
    Some(text)
}

/// Returns the mnemonic of an RCODE (`NOERROR`, `SERVFAIL`, ...), or its number.
fn rcode_name(code: u16) -> String {
    crate::metrics::RCODES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or_else(|| code.to_string(), |(_, n)| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_thresholds_cover_off_all_and_a_fraction() {
        let s = |sample| Settings {
            file: None,
            sample,
            max_per_second: 1,
            max_size: 1,
            keep: 1,
        };
        assert_eq!(threshold(None), 0);
        assert_eq!(threshold(Some(&s(1.0))), u64::MAX);
        let t = threshold(Some(&s(0.01)));
        assert!((t as f64 / u64::MAX as f64 - 0.01).abs() < 1e-9, "{t}");
        assert!(threshold(Some(&s(1e-30))) >= 1);
    }

    #[test]
    fn rotation_shifts_numbered_files_and_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("q.log");
        for (name, text) in [("q.log", "new"), ("q.log.1", "one"), ("q.log.2", "two")] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        rotate(&p, 2);
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).ok();
        assert_eq!(read("q.log"), None);
        assert_eq!(read("q.log.1").as_deref(), Some("new"));
        assert_eq!(read("q.log.2").as_deref(), Some("one"));
        assert_eq!(read("q.log.3"), None);
    }
}
